"""``python -m shm inspect``: one snapshot, or a live redraw with ``--watch``.

``shm/__main__.py`` parses the command line (the command is part of the
``python -m shm`` tool) and hands the choices to ``inspect_command``.

With ``--watch`` every refresh takes a new snapshot, which attaches, reads
and detaches, so the inspector never keeps a removed segment alive: when the
server stops, ``ipcs`` is clean at once, and the inspector waits for the next
server on that port.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from inspector import views
from inspector.json_view import snapshot_json
from shm.layout import IpcObject
from shm.snapshot import NotRunning, take_snapshot
from syscalls import programs


def inspect_command(port: int, watch: float | None, as_json: bool, color_choice: str) -> int:
    """Run the command as parsed: the exit status (2 for a bad combination of flags)."""
    if watch is not None and as_json:
        print(f"{programs.command('shm')} inspect: --watch and --json do not go together", file=sys.stderr)
        return 2
    color = use_color(color_choice, sys.stdout)
    if watch is not None:
        return run_watch(port, max(watch, 0.1), color)
    return run_once(port, as_json, color)


def use_color(choice: str, stream: object) -> bool:
    """``--color auto`` means a terminal that is not ``dumb``, unless ``NO_COLOR`` is set."""
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def run_once(port: int, as_json: bool, color: bool) -> int:
    """Print one snapshot; exit status 1 if no server's objects are there."""
    try:
        snap = take_snapshot(port)
    except NotRunning as exc:
        print(f"{programs.command('shm')} inspect: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(snapshot_json(snap) + "\n" if as_json else views.render_text(snap, color))
    return 0


def run_watch(port: int, interval: float, color: bool) -> int:
    """Redraw in place every ``interval`` seconds until Ctrl-C."""
    out = sys.stdout
    tty = out.isatty()
    if tty:
        out.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
    earlier: dict[IpcObject, tuple[int, float]] = {}  # the last semop that was not ours
    try:
        while True:
            size = shutil.get_terminal_size((120, 40))
            try:
                snap = take_snapshot(port)
                for sem in snap.semaphores:
                    if sem.last_pid != os.getpid():
                        earlier[sem.obj] = (sem.last_pid, sem.changed_at)
                    elif sem.obj in earlier:
                        sem.earlier_pid, sem.earlier_at = earlier[sem.obj]
                screen = views.render(snap, color, size.columns)
            except NotRunning as exc:
                earlier.clear()
                screen = views.waiting_screen(port, str(exc), color, size.columns)
            lines = screen.render(size.lines if tty else None)
            if tty:
                out.write(
                    "\x1b[H" + "".join(line + "\x1b[K\n" for line in lines[:-1]) + lines[-1] + "\x1b[K\x1b[J"
                )
            else:
                out.write("\n".join(lines) + "\n\n")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if tty:
            out.write("\x1b[?25h\n")
            out.flush()
