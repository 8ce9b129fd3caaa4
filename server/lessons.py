"""Hooks for the classroom lessons and the tests: off unless ``--lesson-hooks``.

``/holdlock directory`` or ``/holdlock messages`` makes this client's worker
take that table lock and keep it until the process is killed: the way to
show, on a running server, what a stuck or killed lock holder does to the
others, and how the kernel's SEM_UNDO hands the lock back when the holder
dies.  A server started without ``--lesson-hooks`` answers these like any
unknown command.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from protocol import replies
from shm.layout import IpcObject
from shm.segments import ServerIpc

log = logging.getLogger(__name__)

HOLD_LOCK = "/holdlock"
LOCKS = {"directory": IpcObject.DIRECTORY_SEMAPHORE, "messages": IpcObject.MESSAGES_SEMAPHORE}


def is_hook(line: str) -> bool:
    return line.split(" ", 1)[0] == HOLD_LOCK


def run_hook(line: str, ipc: ServerIpc, say: Callable[[str], None]) -> None:
    """Run a lesson hook; it only comes back if its arguments are wrong."""
    which = line.split()[1:]
    if len(which) != 1 or which[0] not in LOCKS:
        say(replies.error(f"usage: {HOLD_LOCK} {'|'.join(LOCKS)}"))
        return
    # The tables' own lock (a TracedLock on a traced server, so the trace shows it taken).
    lock = ipc.directory.lock if LOCKS[which[0]] == IpcObject.DIRECTORY_SEMAPHORE else ipc.messages.lock
    log.warning("lesson hook: worker %d takes the %s lock and keeps it", os.getpid(), which[0])
    lock.reserve()  # semop P with SEM_UNDO: given back by the kernel when this process dies
    while True:
        signal.pause()  # nothing wakes it for good: only SIGKILL (or SIGTERM) ends it
