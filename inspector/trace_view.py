"""The trace as a sequence diagram: events in, lines of text out.

One column per process (the parent first, then each worker, headed by its
client id and pid, in the order they first appear), one row per event in
time order (ms since the first one shown), and for every doorbell an arrow
from the ``ring`` to the ``wake`` it caused, labelled with the µs between
them (``render`` of the test's events at 84 columns)::

         t (ms)  parent               │ 10001                │ 20002
                 pid 100              │ pid 101              │ pid 102
    ────────────────────────────────────────────────────────────────────────────────
          0.000  accept slot 1 20002  │                      │
          0.010                       │ recv 18 B            │
          0.011                       │ lock messages 3 µs   │
          0.012                       │ post →20002 @512 29 B
          0.013                       │ unlock messages      │
          0.014                       │ ring →20002          │
          0.074                       │─────── 60.0 µs ───────▶ wake doorbell
          0.080                       │                      │ take 1 rec 29 B
          0.090                       │                      │ send 28 B

Everything fits the width it is given (the terminal's, for ``python -m shm
trace``): a row's text runs on over the blank columns to its right rather
than being cut, and when the processes do not all fit, the workers idle
longest share one last column, ``others`` (see ``TraceView``).

Nothing here reads shared memory or the clock: ``TraceView.feed`` takes
``shm.trace_reader.TraceRecord``s, so the drawing is tested without a server, and
``--follow`` feeds it each refresh's new events.
"""

from __future__ import annotations

import os
import signal
import unicodedata
from collections.abc import Iterable

from shm.layout import TraceEvent, WakeSource
from shm.trace_reader import LOCK_NAMES, POST_RESULTS, SOURCE_NAMES, TraceRecord

#: The time column and a space: ``999,999.999`` (16 minutes); it widens, under a new header, after that.
TIME_WIDTH = 12
#: A column's narrowest: its header ("pid 4194304": Linux's largest pid) between two spaces.
MIN_CELL = 13
MAX_CELL = 30
#: Columns the last column keeps for its text ("12345 lock messages 12 µs" fits).
LAST_ROOM = 26
ARROW = "─"
#: The note under a header with an "others" column, before the workers it holds.
OTHERS_NOTE = "others, the workers idle longest (a wider pane gives each a column):"
#: The words that follow a number in a row: a cut never keeps the number without them.
UNITS = ("µs", "B", "rec")


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


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: 2 for a wide (East Asian W/F) character, 0 for a combining one."""
    return sum(_char_width(char) for char in text)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(text: str, room: int) -> str:
    """``text`` if it fits in ``room`` columns, else its first whole words and `` …``.

    Whole words only, so a pid or an id is shown entirely or not at all; and
    not a number whose unit was left out (``lock directory 5120 …``).
    """
    if display_width(text) <= room:
        return text
    words = text.split(" ")
    kept: list[str] = []
    for word in words:
        if display_width(" ".join([*kept, word, "…"])) > room:
            break
        kept.append(word)
    if kept and words[len(kept)] in UNITS:
        kept.pop()  # "5120" without its "µs" would read as something else
    return " ".join([*kept, "…"]) if kept else "…" if room > 0 else ""


class _Canvas:
    """One line of the diagram, ``width`` terminal columns, written at column positions."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.slots = [" "] * width  # a wide character takes its slot and an empty one after it

    def put(self, at: int, text: str) -> int:
        """Write ``text`` from column ``at`` (clipped at the right edge); the column after it."""
        for char in text:
            size = _char_width(char)
            if at + size > self.width:
                break
            if size == 0:
                if at > 0:
                    self.slots[at - 1] += char
                continue
            self.slots[at] = char
            if size == 2:
                self.slots[at + 1] = ""
            at += size
        return at

    def line(self) -> str:
        return "".join(self.slots).rstrip()


class TraceView:
    """Turns events into diagram rows that fit ``width`` columns, remembering state between calls.

    Layout: the time, then one column per process, the parent first, then
    the workers in the order they appeared.  A row holds one event, so its
    text may run on over the blank columns to its right; a column only has to
    be wide enough for its header, and the last one keeps ``LAST_ROOM``
    columns for its text.  When the processes do not all fit, the parent and
    the workers active last keep their columns and the ones idle longest share
    a last column, ``others``, whose rows start with the client id; a note
    under the header names them.  A worker is active when it appears, when
    its client sends it something (``wake socket``, ``recv``), and when
    another worker rings it (a message for its client); the parent's rings
    (join and leave notices, to everyone) do not count, or every notice would
    reshuffle the columns.  With ``height`` (the pane's lines, for
    ``--follow``) the header is drawn again before it would scroll out of
    sight.
    """

    def __init__(self, width: int = 120, height: int | None = None) -> None:
        self.width = width
        self.height = height
        self.processes: list[int] = []  # pids in the order they appeared, the parent first
        self.labels: dict[int, tuple[str, str]] = {}  # pid -> (who, "pid N")
        self.who: dict[int, int] = {}  # pid -> client id (0: the parent)
        self.pid_of: dict[int, int] = {}  # client id -> pid of its worker
        self.active: dict[int, int] = {}  # pid -> t_ns of its last activity (see above)
        self.t0: int | None = None
        self.columns: list[int] = []  # the pids with a column of their own
        self.others: list[int] = []  # the pids whose rows go to the last column, "others"
        self.cell = MAX_CELL
        self.time_width = TIME_WIDTH
        self._drawn: tuple[object, ...] = ()  # what the last header drew
        self._header_lines: list[str] = []
        self._under_header = 0  # lines printed since the top of the last header
        self._rings: dict[int, list[TraceRecord]] = {}  # receiver id -> rings not yet answered
        self._reaped: set[int] = set()  # workers the parent has reaped: their columns may go

    def know(self, e: TraceRecord) -> None:
        """Make ``e``'s process known, and note the activity ``e`` shows (see the class)."""
        if (e.event is TraceEvent.WAKE and e.source == WakeSource.SOCKET) or e.event is TraceEvent.RECV:
            self._activity(e.pid, e.t_ns)
        elif e.event is TraceEvent.RING and e.who and e.to in self.pid_of:
            self._activity(self.pid_of[e.to], e.t_ns)
        if e.pid in self.labels:
            return
        # A new process: reaped workers make room for it, so that a pane left
        # open through many clients (the demo, the lessons) stays readable.
        self.processes = [pid for pid in self.processes if pid not in self._reaped]
        parent = e.ring == 0
        self.labels[e.pid] = ("parent" if parent else str(e.who), f"pid {e.pid}")
        self.who[e.pid] = e.who
        self.pid_of[e.who] = e.pid
        self.active.setdefault(e.pid, e.t_ns)
        if parent:
            self.processes.insert(0, e.pid)
        else:
            self.processes.append(e.pid)

    def _activity(self, pid: int, t_ns: int) -> None:
        # max: render() makes every event known before feeding them again
        self.active[pid] = max(t_ns, self.active.get(pid, t_ns))

    # -- the layout ----------------------------------------------------------------------

    def _fitting(self) -> int:
        """How many columns fit: each but the last at least MIN_CELL wide, the last LAST_ROOM."""
        return max(1, 1 + (self.width - self.time_width - LAST_ROOM) // (MIN_CELL + 1))

    def _lay_out(self) -> None:
        fitting = self._fitting()
        if len(self.processes) <= fitting:
            self.columns, self.others = list(self.processes), []
        else:
            pinned = self.processes[:1] if self.processes and self.who[self.processes[0]] == 0 else []
            workers = self.processes[len(pinned) :]
            keep = max(0, fitting - 1 - len(pinned))  # one column goes to "others"
            by_activity = sorted(workers, key=lambda pid: self.active[pid])  # stable: later ones win ties
            chosen = set(by_activity[len(workers) - keep :])
            self.columns = pinned + [pid for pid in workers if pid in chosen]
            self.others = [pid for pid in workers if pid not in chosen]
        count = len(self.columns) + (1 if self.others else 0)
        if count <= 1:
            self.cell = max(MIN_CELL, min(MAX_CELL, self.width - self.time_width))
        else:
            self.cell = max(
                MIN_CELL, min(MAX_CELL, (self.width - self.time_width - LAST_ROOM) // (count - 1) - 1)
            )

    def _start(self, column: int) -> int:
        return self.time_width + column * (self.cell + 1)

    def _column_of(self, pid: int) -> int:
        if pid in self.columns:
            return self.columns.index(pid)
        return len(self.columns)  # "others"

    def _header(self) -> list[str]:
        names = [self.labels[pid] for pid in self.columns]
        if self.others:
            names.append(("others", f"{len(self.others)} workers"))
        top, bottom = _Canvas(self.width), _Canvas(self.width)
        top.put(0, f"{'t (ms)':>{self.time_width - 1}}")
        for index, (who, pid) in enumerate(names):
            at = self._start(index)
            if index:
                top.put(at - 1, "│")
                bottom.put(at - 1, "│")
            top.put(at + 1, fit(who, self.cell - 1))
            bottom.put(at + 1, fit(pid, self.cell - 1))
        end = min(self.width, self._start(len(names)) - 1)
        lines = [top.line(), bottom.line(), "─" * end]
        if self.others:
            lines += self._note()
        return lines

    def _note(self) -> list[str]:
        """The workers in "others", each named whole (never split over two lines), wrapped at the width."""
        units = [*OTHERS_NOTE.split(" "), *(f"{self.who[pid]} (pid {pid})," for pid in self.others)]
        units[-1] = units[-1].rstrip(",")
        lines, line = [], ""
        for unit in units:
            if line and display_width(f"{line} {unit}") > self.width:
                lines.append(line)
                line = " "
            line = f"{line} {unit}"
        return [fit(line, self.width) for line in [*lines, line]]

    # -- the rows ------------------------------------------------------------------------

    def _time(self, t_ns: int) -> str:
        start = t_ns if self.t0 is None else self.t0
        return f"{(t_ns - start) / 1_000_000:>{self.time_width - 1},.3f}"

    def _row(self, e: TraceRecord) -> str:
        line = _Canvas(self.width)
        line.put(0, self._time(e.t_ns))
        count = len(self.columns) + (1 if self.others else 0)
        for index in range(1, count):
            line.put(self._start(index) - 1, "│")
        column = self._column_of(e.pid)
        text = event_text(e)
        if e.pid in self.others:
            text = f"{e.who} {text}"
        ring = self._answered_ring(e)
        origin = None if ring is None or ring.pid == e.pid else self._column_of(ring.pid)
        if ring is not None and (origin is None or origin == column):
            text += f" ({(e.t_ns - ring.t_ns) / 1000:.1f} µs after ring)"
            origin = None
        if ring is None or origin is None:
            end = line.put(self._start(column) + 1, fit(text, self.width - self._start(column) - 1))
            if end < self.width and line.slots[end] == "│":
                line.slots[end] = " "  # text that runs up to the next column keeps a space after it
            return line.line()
        waited = f"{(e.t_ns - ring.t_ns) / 1000:.1f} µs"
        rightward = origin < column
        if rightward:  # ───── 12.3 µs ─────▶ wake doorbell
            begin, end = self._start(origin), self._start(column)
        else:  # wake doorbell ◀───── 12.3 µs ─────
            begin = self._start(column) + display_width(f" {text} ◀")
            last = origin == len(self.columns) + (1 if self.others else 0) - 1
            end = min(self.width, self._start(origin) + (LAST_ROOM if last else self.cell))
        label = f" {waited} "
        if end - begin < display_width(label) + 2:  # no room in the arrow: the µs go with the text
            label = ""
            text += f" ({waited})"
            if not rightward:
                begin = self._start(column) + display_width(f" {text} ◀")
        if rightward:
            line.put(end, fit("▶ " + text, self.width - end))
        else:
            line.put(self._start(column), f" {text} ◀")
        if end > begin:
            arrow = ARROW * (end - begin)
            middle = (len(arrow) - len(label)) // 2
            line.put(begin, arrow[:middle] + label + arrow[middle + len(label) :])
        return line.line()

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
        """The lines for these events (oldest first); a header when the columns change.

        The header comes again when the columns change (a process appeared, the
        width changed) and, with ``height``, before it would scroll out of sight.
        """
        lines: list[str] = []
        for e in events:
            if self.t0 is None:
                self.t0 = e.t_ns
            self.know(e)
            if e.event is TraceEvent.REAP:
                self._reaped.add(e.child)
            self.time_width = max(self.time_width, len(self._time(e.t_ns).strip()) + 1)
            self._lay_out()
            shape = (tuple(self.columns), tuple(self.others), self.width, self.cell, self.time_width)
            if shape != self._drawn:
                if self._drawn:
                    lines.append("")
                self._drawn = shape
                self._header_lines = self._header()
                lines += self._header_lines
                self._under_header = len(self._header_lines)
            elif self.height is not None and self._under_header >= self._lines_per_screen():
                lines += self._header_lines[:3]  # the labels again; the note has been read
                self._under_header = 3
            lines.append(self._row(e))
            self._under_header += 1
        return lines

    def _lines_per_screen(self) -> int:
        """Lines a pane of ``height`` shows above the cursor's line (a header and a row at least)."""
        assert self.height is not None
        return max(4, self.height - 1)


def render(events: Iterable[TraceRecord], width: int = 120) -> list[str]:
    """The whole diagram of these events under one header, every process known from the start."""
    events = list(events)
    view = TraceView(width)
    for event in events:
        view.know(event)
    return view.feed(events)
