"""Questions about other processes, asked of the kernel: is it alive, what state is it in.

One place for them, because the server, the tables' cleanup, the inspector
and the lessons all ask: a pid read from a segment or a semaphore may belong
to a process that is gone, to another user's process, or to one stopped by a
signal, and each caller must tell these apart the same way.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Is there a process with this pid?

    ``kill(pid, 0)`` sends nothing and only checks: ESRCH means no such
    process, EPERM means there is one but it belongs to someone else (alive,
    all the same).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_state(pid: int) -> str | None:
    """The state letter of a process as ``ps`` shows it (R, S, T, Z...), None if there is none.

    Read from ``/proc/PID/stat``; the command name in parentheses may itself
    hold spaces and parentheses, so the fields are counted from the last ``)``.
    """
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
