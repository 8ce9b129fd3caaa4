"""Reading the trace table: every ring, no lock, torn records skipped.

The writer's protocol is in ``shm.trace``: a record's ``seq`` is stored
last, after ``seq = 0`` and the fields.  ``TraceReader`` reads ``seq``,
copies the record and reads ``seq`` again; a record whose ``seq`` changed,
is 0, or names another position of the ring was being written meanwhile
(or its writer was killed inside it) and is skipped.  Then the rings are
merged by their CLOCK_MONOTONIC timestamps, oldest first.

A lock handed back by the kernel
--------------------------------
Every table lock has SEM_UNDO on: when a process dies holding one, the
kernel gives it back.  Nobody runs any code at that moment, so nothing can
write an ``unlock``.  The reader therefore *derives* it: a process whose
last record for a lock is a ``lock`` (no ``unlock`` after it) and that is no
longer alive (the parent reaped it, or it does not exist) had that lock
returned by SEM_UNDO.  ``with_undo`` adds an ``undo`` event for it, at the
time of the parent's ``reap`` of that process when the trace has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from shm import layout
from shm.backend import IPC_ERRORS, Region, backend
from shm.discovery import list_objects
from shm.layout import (
    SEGMENT_HEADER,
    TRACE_RECORD,
    TRACE_RECORD_SIZE,
    TRACE_RING_HEADER,
    TRACE_RING_HEADER_SIZE,
    TRACE_SEQ,
    IpcObject,
    TraceEvent,
    WakeSource,
)
from syscalls import programs
from syscalls.processes import pid_alive

LOCK_NAMES: dict[int, str] = {
    IpcObject.DIRECTORY_SEMAPHORE: "directory",
    IpcObject.MESSAGES_SEMAPHORE: "messages",
}
SOURCE_NAMES: dict[int, str] = {WakeSource.DOORBELL: "doorbell", WakeSource.SOCKET: "socket"}
POST_RESULTS = ("delivered", "gone", "full")  # the ``status`` field of a post

#: The fields that mean something for each event (the JSON shows only these).
EVENT_FIELDS: dict[TraceEvent, tuple[str, ...]] = {
    TraceEvent.ACCEPT: ("slot", "to"),
    TraceEvent.FORK: ("child", "slot", "to"),
    TraceEvent.REAP: ("child", "slot", "to", "status"),
    TraceEvent.RECV: ("bytes",),
    TraceEvent.LOCK: ("lock", "waited_us"),
    TraceEvent.UNLOCK: ("lock",),
    TraceEvent.POST: ("to", "slot", "offset", "bytes", "result"),
    TraceEvent.RING: ("to", "slot"),
    TraceEvent.WAKE: ("source",),
    TraceEvent.TAKE: ("records", "bytes"),
    TraceEvent.SEND: ("bytes",),
    TraceEvent.UNDO: ("lock",),
    TraceEvent.RELEASED: ("lock", "child"),
}


class TraceRecord(NamedTuple):
    """One event as the reader found it (``ring`` and ``seq`` say where)."""

    ring: int
    seq: int
    t_ns: int
    pid: int
    who: int  # client id; 0 for the parent
    event: TraceEvent
    lock: int = 0
    source: int = 0
    to: int = 0
    bytes: int = 0
    waited_us: int = 0
    offset: int = 0
    records: int = 0
    child: int = 0
    status: int = 0
    slot: int = 0

    def as_json(self) -> dict:
        """The record as ``python -m shm trace --json`` prints it."""
        out: dict = {
            "t_ns": self.t_ns,
            "pid": self.pid,
            "who": self.who or "parent",
            "event": self.event.name.lower(),
            "ring": self.ring,
            "seq": self.seq,
        }
        for name in EVENT_FIELDS[self.event]:
            if name == "lock":
                out["lock"] = LOCK_NAMES.get(self.lock, str(self.lock))
            elif name == "source":
                out["source"] = SOURCE_NAMES.get(self.source, str(self.source))
            elif name == "result":
                out["result"] = POST_RESULTS[self.status] if self.status < len(POST_RESULTS) else "?"
            else:
                out[name] = getattr(self, name)
        if self.event is TraceEvent.UNDO:
            out["derived"] = True  # never written by anyone: see with_undo
        return out


class TraceReader:
    """Reads every ring without any lock, skipping records caught mid-write."""

    def __init__(self, view: memoryview, rings: int, records: int) -> None:
        self._view = view
        self.rings = rings
        self.records = records
        self.region: Region | None = None  # detached or unmapped by release (open_trace)
        #: False on a POSIX server: no kernel undo, so none is ever derived (the parent writes RELEASED).
        self.kernel_undo = True

    @classmethod
    def of_segment(cls, segment: memoryview) -> TraceReader:
        """A reader over a trace segment's bytes (attached or mapped read-only, or not)."""
        view = memoryview(segment)
        rings = SEGMENT_HEADER.unpack_from(view, 0)[2]
        records = TRACE_RING_HEADER.unpack_from(view, layout.trace_ring_offset(0, 0))[2]
        return cls(view, rings, records)

    def ring_records(self, ring: int, after: int = 0) -> list[TraceRecord]:
        """The committed records of one ring with ``seq > after``, oldest first."""
        view = self._view
        base = layout.trace_ring_offset(ring, self.records) + TRACE_RING_HEADER_SIZE
        found = []
        for index in range(self.records):
            at = base + index * TRACE_RECORD_SIZE
            seq = TRACE_SEQ.unpack_from(view, at)[0]
            if seq <= after or (seq - 1) % self.records != index:
                continue  # empty (0), being written (0), already seen, or torn
            raw = bytes(view[at : at + TRACE_RECORD_SIZE])
            if TRACE_SEQ.unpack_from(view, at)[0] != seq or TRACE_SEQ.unpack_from(raw)[0] != seq:
                continue  # the writer came back to this record while it was copied
            fields = TRACE_RECORD.unpack(raw)
            try:
                event = TraceEvent(fields[4])
            except ValueError:
                continue
            # seq, t_ns, pid, who, event, then the fields in TraceRecord's order
            found.append(TraceRecord(ring, seq, fields[1], fields[2], fields[3], event, *fields[5:]))
        found.sort(key=lambda r: r.seq)
        return found

    def read(self, after: dict[int, int] | None = None) -> list[TraceRecord]:
        """Every committed record of every ring, merged by time, oldest first.

        ``after`` maps a ring to the last ``seq`` already seen there (for
        ``--follow``); it is updated in place.
        """
        events: list[TraceRecord] = []
        for ring in range(self.rings):
            seen = after.get(ring, 0) if after is not None else 0
            records = self.ring_records(ring, seen)
            if records and after is not None:
                after[ring] = records[-1].seq
            events.extend(records)
        events.sort(key=lambda r: (r.t_ns, r.ring, r.seq))
        return events

    def release(self) -> None:
        self._view.release()
        if self.region is not None:
            self.region.close()
            self.region = None


class UndoTracker:
    """Finds the locks a dead process never gave back (SEM_UNDO did), as events arrive.

    A ``lock`` with no later ``unlock`` of the same lock by the same pid,
    from a pid the parent then reaps (or that no longer exists), was returned
    by the kernel's SEM_UNDO when that process died.  ``feed`` passes events
    through and adds an ``undo`` at each such ``reap`` (the kernel undid it
    at the exit, just before); ``finish`` adds one for the dead processes the
    trace has no reap for, just after their last event.
    """

    def __init__(self, kernel_undo: bool = True) -> None:
        self.kernel_undo = kernel_undo  # False on POSIX: a dead holder's lock stays held until RELEASED
        self._held: dict[int, dict[int, TraceRecord]] = {}  # pid -> lock -> its lock event
        self._last: dict[int, TraceRecord] = {}
        self._reaped: set[int] = set()

    def feed(self, events: Iterable[TraceRecord]) -> list[TraceRecord]:
        out = []
        for event in events:
            out.append(event)
            self._last[event.pid] = event
            if event.event is TraceEvent.LOCK:
                self._held.setdefault(event.pid, {})[event.lock] = event
            elif event.event is TraceEvent.UNLOCK:
                self._held.get(event.pid, {}).pop(event.lock, None)
            elif event.event is TraceEvent.RELEASED:  # POSIX: the parent gave it back, not the kernel
                self._held.get(event.child, {}).pop(event.lock, None)
            elif event.event is TraceEvent.REAP:
                self._reaped.add(event.child)
                out.extend(self._undo(event.child, event.t_ns))
        return out

    def finish(self, alive: Callable[[int], bool] = pid_alive) -> list[TraceRecord]:
        out = []
        for pid in list(self._held):
            if self._held[pid] and not alive(pid):
                out.extend(self._undo(pid, self._last[pid].t_ns + 1))
        return out

    def _undo(self, pid: int, t_ns: int) -> list[TraceRecord]:
        locks = self._held.pop(pid, {})
        if not self.kernel_undo:
            return []
        return [
            taken._replace(seq=0, t_ns=t_ns, event=TraceEvent.UNDO, waited_us=0) for taken in locks.values()
        ]


def with_undo(
    events: Iterable[TraceRecord], alive: Callable[[int], bool] = pid_alive, kernel_undo: bool = True
) -> list[TraceRecord]:
    """The events, oldest first, plus an ``undo`` for every lock SEM_UNDO gave back (System V only)."""
    tracker = UndoTracker(kernel_undo)
    out = tracker.feed(sorted(events, key=lambda r: (r.t_ns, r.ring, r.seq)))
    out += tracker.finish(alive)
    return sorted(out, key=lambda r: (r.t_ns, r.ring, r.seq))


class TraceUnavailable(Exception):
    """No trace table to read on that port; the message says why, in one line."""


def open_trace(port: int) -> TraceReader:
    """A reader over the trace segment of the server on ``port``, attached or mapped read-only.

    ``release()`` the reader to detach.  Raises ``TraceUnavailable`` when the
    port has no server, or a server started without ``--trace``.
    """
    objects = {e.obj: e for e in list_objects(port) if e.kind == "shm"}
    if IpcObject.TRACE_SEGMENT not in objects:
        if IpcObject.CLIENTS_SEGMENT in objects:
            raise TraceUnavailable(
                f"the server on port {port} runs without --trace, so it has no trace table "
                f"(start it with: {programs.command('server')} --trace)"
            )
        raise TraceUnavailable(f"no shmchat server on port {port}")
    entry = objects[IpcObject.TRACE_SEGMENT]
    try:
        region = backend(entry.api).open_readonly(entry.ident)
    except (*IPC_ERRORS, OSError) as exc:
        raise TraceUnavailable(f"the trace table of port {port} went away ({exc})") from None
    try:
        reader = TraceReader.of_segment(region.view)
    except BaseException:
        region.close()
        raise
    reader.region = region
    reader.kernel_undo = entry.api == "sysv"
    return reader
