"""``python -m shm trace``: the trace table, once or followed (``--follow``), as text or JSON.

``shm/__main__.py`` parses the command line and finds the port
(``shm.discovery``); ``trace_command`` reads the rings (``shm.trace_reader``)
and prints the diagram (``inspector.trace_view``) as wide as the terminal
(``COLUMNS`` when set), or one JSON object per event.  Like ``inspect
--watch``, ``--follow`` attaches the trace segment for each read only, so a
stopped server's segment disappears from ``ipcs`` at once.
"""

from __future__ import annotations

import json
import shutil
import sys
import time

from inspector.trace_view import TraceView
from shm.trace_reader import TraceRecord, TraceUnavailable, UndoTracker, open_trace, with_undo
from syscalls import programs

#: Seconds between two reads of the rings with --follow.  The rings have
#: nothing to wait on (their writers never block and never signal anyone, on
#: purpose), so following is a modest refresh; it is a viewer, not the server.
FOLLOW_INTERVAL = 0.2
#: With --follow, events are shown once they are this much older than the
#: read: one written meanwhile into a ring read earlier in the same pass
#: then still comes out in time order.
HOLD_BACK_NS = 20_000_000


def _order(event: TraceRecord) -> tuple[int, int, int]:
    return (event.t_ns, event.ring, event.seq)


def trace_command(port: int, follow: bool, as_json: bool) -> int:
    """Run the command as parsed; the exit status (1 when there is no trace table)."""
    view = TraceView()

    def show(events: list[TraceRecord]) -> None:
        # The terminal's size, read again each time: a pane resized while
        # following gets a new layout and header at its next event.
        size = shutil.get_terminal_size((120, 40))
        view.width, view.height = size.columns, size.lines if follow else None
        if as_json:
            for event in events:
                print(json.dumps(event.as_json()))
        else:
            for line in view.feed(events):
                print(line)
        sys.stdout.flush()

    try:
        reader = open_trace(port)
    except TraceUnavailable as exc:
        print(f"{programs.command('shm')} trace: {exc}", file=sys.stderr)
        return 1
    seen: dict[int, int] = {}  # ring -> the last seq read from it
    kernel_undo = reader.kernel_undo  # System V: derive SEM_UNDO's returns; POSIX has none
    try:
        events = reader.read(seen)
    finally:
        reader.release()
    if not follow:
        if not events:
            print(f"the trace table of port {port} has no events yet", file=sys.stderr)
        events = with_undo(events, kernel_undo=kernel_undo)
        for event in events:  # every process known at once: one header
            view.know(event)
        show(events)
        return 0
    tracker = UndoTracker(kernel_undo)
    waiting = events
    try:
        while True:
            horizon = time.monotonic_ns() - HOLD_BACK_NS
            show(tracker.feed([e for e in waiting if e.t_ns < horizon]))
            waiting = [e for e in waiting if e.t_ns >= horizon]
            time.sleep(FOLLOW_INTERVAL)
            try:
                reader = open_trace(port)
            except TraceUnavailable:
                show(tracker.feed(waiting) + tracker.finish())
                print(
                    f"{programs.command('shm')} trace: the server on port {port} has stopped", file=sys.stderr
                )
                return 0
            try:
                waiting = sorted(waiting + reader.read(seen), key=_order)
            finally:
                reader.release()
    except KeyboardInterrupt:
        return 0
