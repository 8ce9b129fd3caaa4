"""The trace as a sequence diagram: events in, lines of text out.

One column per process (the parent first, then each worker, labelled with
its client id and pid, in the order they first appear), one row per event in
time order (ms since the first one shown), and for every doorbell an arrow
from the ``ring`` to the ``wake`` it caused, labelled with the µs between
them (a real run, cut short)::

      t (ms)   parent pid 30760          │ 24203 pid 30771           │ 24376 pid 30772
    ───────────────────────────────────────────────────────────────────────────────────
     326.792                             │ recv 18 B                 │
     327.272                             │ lock messages 5 µs        │
     327.350                             │ post →24376 @0 29 B       │
     327.355                             │ unlock messages           │
     327.384                             │ ring →24376               │
     327.482                             │───────── 97.5 µs ──────────▶ wake doorbell
     327.653                             │                           │ take 1 rec 29 B
     327.725                             │                           │ send 23 B

Nothing here reads shared memory or the clock: ``TraceView.feed`` takes
``shm.trace_reader.TraceRecord``s, so the drawing is tested without a server, and
``--follow`` feeds it each refresh's new events.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

from shm.layout import TraceEvent, WakeSource
from shm.trace_reader import LOCK_NAMES, POST_RESULTS, SOURCE_NAMES, TraceRecord

TIME_WIDTH = 12
MIN_CELL = 16
MAX_CELL = 30
ARROW = "─"


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        return name
    if os.WIFEXITED(status):
        return f"exit {os.WEXITSTATUS(status)}"
    return f"status {status}"


def event_text(e: TraceRecord) -> str:
    """What one event says in its cell."""
    lock = LOCK_NAMES.get(e.lock, str(e.lock))
    match e.event:
        case TraceEvent.ACCEPT:
            return f"accept slot {e.slot} {e.to}"
        case TraceEvent.FORK:
            return f"fork pid {e.child} ({e.to})"
        case TraceEvent.REAP:
            return f"reap {e.child} {_exit_text(e.status)}"
        case TraceEvent.RECV:
            return f"recv {e.bytes} B"
        case TraceEvent.LOCK:
            return f"lock {lock} {e.waited_us} µs"
        case TraceEvent.UNLOCK:
            return f"unlock {lock}"
        case TraceEvent.POST:
            result = "" if e.status == 0 else f" {POST_RESULTS[e.status].upper()}"
            return f"post →{e.to} @{e.offset} {e.bytes} B{result}"
        case TraceEvent.RING:
            return f"ring →{e.to}"
        case TraceEvent.WAKE:
            return f"wake {SOURCE_NAMES.get(e.source, '?')}"
        case TraceEvent.TAKE:
            return f"take {e.records} rec {e.bytes} B"
        case TraceEvent.SEND:
            return f"send {e.bytes} B"
        case TraceEvent.UNDO:
            return f"✝ SEM_UNDO {lock}"
        case TraceEvent.RELEASED:
            return f"✝ released by parent {lock}"
    return e.event.name.lower()


class TraceView:
    """Turns events into diagram rows, remembering columns and rings between calls."""

    def __init__(self, width: int = 120) -> None:
        self.width = width
        self.columns: list[int] = []  # pids, the parent first
        self.labels: dict[int, str] = {}
        self.t0: int | None = None
        self.cell = MAX_CELL
        self._drawn: tuple[int, ...] = ()  # the columns of the last header drawn
        self._rings: dict[int, list[TraceRecord]] = {}  # receiver id -> rings not yet answered
        self._reaped: set[int] = set()  # workers the parent has reaped: their columns may go

    def add_column(self, e: TraceRecord) -> int:
        if e.pid not in self.columns:
            # A new process: the columns of reaped workers make room for it, so that a
            # pane left open through many clients (the demo, the lessons) stays readable.
            self.columns = [pid for pid in self.columns if pid not in self._reaped]
            parent = e.ring == 0
            self.labels[e.pid] = f"parent pid {e.pid}" if parent else f"{e.who} pid {e.pid}"
            if parent:
                self.columns.insert(0, e.pid)
            else:
                self.columns.append(e.pid)
        return self.columns.index(e.pid)

    def _header(self) -> list[str]:
        count = max(len(self.columns), 1)
        self.cell = max(MIN_CELL, min(MAX_CELL, (self.width - TIME_WIDTH) // count - 1))
        self._drawn = tuple(self.columns)
        names = [self._fit(self.labels[pid]) for pid in self.columns]
        line = f"{'t (ms)':>{TIME_WIDTH - 2}}  " + "│".join(names)
        return [line.rstrip(), "─" * min(len(line), self.width)]

    def _fit(self, text: str) -> str:
        return " " + text[: self.cell - 2].ljust(self.cell - 2) + " "

    def _time(self, t_ns: int) -> str:
        start = t_ns if self.t0 is None else self.t0
        return f"{(t_ns - start) / 1_000_000:>{TIME_WIDTH - 2},.3f}  "

    def _row(self, e: TraceRecord) -> str:
        cells = [" " * self.cell for _ in self.columns]
        seps = ["│"] * (len(self.columns) - 1)
        column = self.columns.index(e.pid)
        text = event_text(e)
        ring = self._answered_ring(e)
        if ring is not None and ring.pid in self.columns and ring.pid != e.pid:
            origin = self.columns.index(ring.pid)
            label = f" {(e.t_ns - ring.t_ns) / 1000:.1f} µs "
            lo, hi = sorted((origin, column))
            for c in range(lo, hi + 1):
                if c != column:
                    cells[c] = ARROW * self.cell
            for s in range(lo, hi):
                seps[s] = ARROW
            middle = cells[origin]
            start = max(0, (len(middle) - len(label)) // 2)
            cells[origin] = middle[:start] + label + middle[start + len(label) :]
            if origin < column:
                cells[column] = ("▶ " + text)[: self.cell].ljust(self.cell)
            else:
                cells[column] = (" " + text + " ◀").ljust(self.cell, ARROW)[: self.cell]
        else:
            if ring is not None:
                text += f" ({(e.t_ns - ring.t_ns) / 1000:.1f} µs after ring)"
            cells[column] = self._fit(text)
        line = self._time(e.t_ns)
        for index, cell in enumerate(cells):
            line += cell + (seps[index] if index < len(seps) else "")
        return line.rstrip()

    def _answered_ring(self, e: TraceRecord) -> TraceRecord | None:
        """For a doorbell wake: the first ring it answers (the one that made the eventfd readable)."""
        if e.event is TraceEvent.RING:
            self._rings.setdefault(e.to, []).append(e)
            return None
        if e.event is TraceEvent.WAKE and e.source == WakeSource.DOORBELL and e.who:
            pending = self._rings.pop(e.who, [])
            return pending[0] if pending else None
        return None

    def feed(self, events: Iterable[TraceRecord]) -> list[str]:
        """The lines for these events (oldest first); a new header when a process appears."""
        lines: list[str] = []
        for e in events:
            if self.t0 is None:
                self.t0 = e.t_ns
            self.add_column(e)
            if e.event is TraceEvent.REAP:
                self._reaped.add(e.child)
            if tuple(self.columns) != self._drawn:
                if self._drawn:
                    lines.append("")
                lines += self._header()
            lines.append(self._row(e))
        return lines


def render(events: Iterable[TraceRecord], width: int = 120) -> list[str]:
    """The whole diagram of these events, under one header naming every process."""
    events = list(events)
    view = TraceView(width)
    for event in events:
        view.add_column(event)
    return view.feed(events)
