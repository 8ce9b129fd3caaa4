"""The trace table: every process writes its IPC steps into its own ring.

With ``python -m server --trace`` the server creates a fourth segment, the
trace table (``layout.TRACE_RECORD``, drawn in ``docs/design.md``).  Ring 0
belongs to the parent, ring ``1 + slot`` to the worker of that slot.  Each
process appends fixed-size records to its own ring: who it is, a
CLOCK_MONOTONIC timestamp, which step it took (``layout.TraceEvent``) and a
few numbers (which lock, how long it waited, which mailbox offset...).
``python -m shm trace`` reads every ring and draws the steps as a sequence
diagram.

Why a ring needs no lock
------------------------
The mailboxes need the messages lock because *many* workers write into the
same ring.  A trace ring has exactly *one* writer: the process it belongs
to.  (The parent forks the next worker of a slot only after it has reaped
the previous one, so a slot's ring never has two live writers.)  With one
writer, the only race left is between the writer and a reader, and a
sequence number settles it, the way Linux's seqlocks do:

1. the writer stores ``seq = 0`` in the record it is about to reuse
   ("being written");
2. it stores the fields;
3. it stores the record's new ``seq`` last.  That store is the commit point.

The reader reads ``seq``, copies the record, and reads ``seq`` again.  If
the two differ, or ``seq`` is 0, or it names another position of the ring,
the writer was inside that record meanwhile and the copy may be torn: the
reader skips it.  The reader never waits and the writer never waits for the
reader, so tracing cannot stall the server.  A writer killed between two
fields leaves ``seq = 0`` behind: that record is simply never shown.

This relies on the stores of one process becoming visible to others in the
order they were made, which x86-64 guarantees (TSO).  On a weakly ordered
CPU (ARM) a C version would need a release store for ``seq`` and an acquire
load in the reader; Python gives no way to say so.

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

import os
import struct
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import sysv_ipc

from shm import layout
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
from shm.locks import BinaryLock

#: The record without its ``seq``: the part the writer stores before the commit.
_BODY = struct.Struct("<" + TRACE_RECORD.format[2:])
assert _BODY.size == TRACE_RECORD_SIZE - 8
#: The body split in two stores, so that a test can stop a writer between them.
_BODY_HEAD = struct.Struct("<QiIH")  # t_ns, pid, who, event
_BODY_HEAD_SIZE = _BODY_HEAD.size
_ZERO_SEQ = bytes(8)
_OWNER = struct.Struct("<I")  # client id, first field of a ring header

LOCK_NAMES = {
    IpcObject.DIRECTORY_SEMAPHORE: "directory",
    IpcObject.MESSAGES_SEMAPHORE: "messages",
}
SOURCE_NAMES = {WakeSource.DOORBELL: "doorbell", WakeSource.SOCKET: "socket"}
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


def format_segment(segment: sysv_ipc.SharedMemory, rings: int, records: int, server_pid: int) -> None:
    """Write the header and the ring headers of a fresh (zero-filled) trace segment."""
    segment.write(
        SEGMENT_HEADER.pack(layout.SEGMENT_MAGIC, layout.LAYOUT_VERSION, rings, server_pid, time.time(), 0), 0
    )
    for ring in range(rings):
        segment.write(TRACE_RING_HEADER.pack(0, 0, records), layout.trace_ring_offset(ring, records))


class TraceTable:
    """One server's trace segment, attached: its rings and this process's writer.

    ``writer`` is the ring this process writes to, or None.  The locks and
    the message table of a traced server look it up at each step
    (``TracedLock``, ``MessageTable.tracer``), so that after a ``fork`` the
    child writes into its own ring, never its parent's (``ServerIpc`` clears
    ``writer`` in every child, see ``os.register_at_fork``).
    """

    def __init__(self, segment: sysv_ipc.SharedMemory) -> None:
        self._view = memoryview(segment)
        magic, version, self.rings, self.server_pid, _created, _ = SEGMENT_HEADER.unpack_from(self._view, 0)
        if magic != layout.SEGMENT_MAGIC or version != layout.LAYOUT_VERSION:
            raise ValueError(f"not a shmchat v{layout.LAYOUT_VERSION} trace segment")
        first = layout.trace_ring_offset(0, 0)
        self.records = TRACE_RING_HEADER.unpack_from(self._view, first)[2]
        self.writer: TraceWriter | None = None

    def ring_offset(self, ring: int) -> int:
        return layout.trace_ring_offset(ring, self.records)

    def owner(self, ring: int) -> int:
        """The client id named in a ring's header (0: the parent, or nobody yet)."""
        if not 0 <= ring < self.rings:
            return 0
        return _OWNER.unpack_from(self._view, self.ring_offset(ring))[0]

    def ring_header(self, ring: int) -> tuple[int, int, int]:
        """(client id, writer pid, records) of one ring."""
        return TRACE_RING_HEADER.unpack_from(self._view, self.ring_offset(ring))

    def name_ring(self, ring: int, client_id: int, pid: int = 0) -> None:
        """Say whose ring it is.  Only while it has no live writer, or by its writer."""
        self._view[self.ring_offset(ring) : self.ring_offset(ring) + TRACE_RING_HEADER_SIZE] = (
            TRACE_RING_HEADER.pack(client_id, pid, self.records)
        )

    def open_ring(self, ring: int, client_id: int | None = None) -> TraceWriter:
        """A writer for ``ring``, for the calling process (which must be its only writer)."""
        if not 0 <= ring < self.rings:
            raise ValueError(f"no trace ring {ring} (the table has {self.rings})")
        if client_id is None:
            client_id = self.owner(ring)
        self.name_ring(ring, client_id, os.getpid())
        return TraceWriter(self, ring, client_id)

    def reader(self) -> TraceReader:
        return TraceReader(self._view, self.rings, self.records)

    def release(self) -> None:
        self.writer = None
        self._view.release()


class TraceWriter:
    """Appends events to one ring.  Not shared: one process, one ring, one writer.

    Wiring (what the server calls, each guarded by one ``if tracer is not
    None``, so an untraced server pays one attribute test per step):

    parent, ``tracer = ipc.tracer_for(0)`` once after ``ServerIpc.create``:
        ``tracer.accept(slot, client_id)`` after ``claim_slot`` and *before*
        the fork (it also names ring ``1 + slot`` after the new client);
        ``tracer.fork(pid, slot, client_id)`` in the parent after ``fork``;
        ``tracer.reap(pid, slot, client_id, status)`` after ``waitpid``.
    worker, ``tracer = ipc.tracer_for(1 + slot, client_id)`` first thing
    after ``fork`` in the child:
        ``tracer.wake(WakeSource.DOORBELL or SOCKET)`` when epoll returns,
        once per ready descriptor; ``tracer.recv(n)`` after each ``recv``;
        ``tracer.ring(slot)`` after each ``doorbells.ring(slot)``;
        ``tracer.take(records, nbytes)`` after ``messages.take`` returned
        mail; ``tracer.send(n)`` after each socket write (``n`` written).
    any process: ``lock``/``unlock`` come from the ``TracedLock``s that
    ``ServerIpc`` hands the tables, and ``post`` from ``MessageTable.post``.
    """

    def __init__(self, table: TraceTable, ring: int, client_id: int) -> None:
        self._table = table
        self._view = table._view
        self.ring_index = ring
        self.who = client_id
        self.pid = os.getpid()
        self._base = table.ring_offset(ring) + TRACE_RING_HEADER_SIZE
        self._records = table.records
        self._seq = self._last_seq()
        #: Test hook: called between the first and the second store of a
        #: record's fields, to stop a writer there and kill it.
        self.between_fields: Callable[[], None] | None = None

    def _last_seq(self) -> int:
        """Where the ring's previous writer (an earlier worker of this slot) stopped."""
        last = 0
        for index in range(self._records):
            last = max(last, TRACE_SEQ.unpack_from(self._view, self._base + index * TRACE_RECORD_SIZE)[0])
        return last

    def _write(
        self,
        event: TraceEvent,
        lock: int = 0,
        source: int = 0,
        to: int = 0,
        nbytes: int = 0,
        waited_us: int = 0,
        offset: int = 0,
        records: int = 0,
        child: int = 0,
        status: int = 0,
        slot: int = 0,
    ) -> None:
        seq = self._seq + 1
        at = self._base + ((seq - 1) % self._records) * TRACE_RECORD_SIZE
        view = self._view
        body = _BODY.pack(
            time.monotonic_ns(),
            self.pid,
            self.who,
            event,
            lock,
            source,
            to,
            nbytes & 0xFFFFFFFF,
            min(waited_us, 0xFFFFFFFF),
            offset,
            records,
            child,
            status,
            slot,
        )
        view[at : at + 8] = _ZERO_SEQ  # 1. "being written": readers skip it from now on
        if self.between_fields is None:
            view[at + 8 : at + TRACE_RECORD_SIZE] = body  # 2. the fields
        else:
            middle = at + 8 + _BODY_HEAD_SIZE
            view[at + 8 : middle] = body[:_BODY_HEAD_SIZE]
            self.between_fields()
            view[middle : at + TRACE_RECORD_SIZE] = body[_BODY_HEAD_SIZE:]
        view[at : at + 8] = TRACE_SEQ.pack(seq)  # 3. the commit point
        self._seq = seq

    # -- the parent ------------------------------------------------------------

    def accept(self, slot: int, client_id: int) -> None:
        """A connection got ``slot``; names the slot's ring (call before the fork)."""
        self._table.name_ring(1 + slot, client_id)
        self._write(TraceEvent.ACCEPT, to=client_id, slot=slot)

    def fork(self, child: int, slot: int, client_id: int) -> None:
        self._write(TraceEvent.FORK, child=child, to=client_id, slot=slot)

    def reap(self, child: int, slot: int, client_id: int, status: int) -> None:
        self._write(TraceEvent.REAP, child=child, to=client_id, slot=slot, status=status)

    # -- any process -------------------------------------------------------------

    def lock(self, which: int, waited_us: int) -> None:
        self._write(TraceEvent.LOCK, lock=which, waited_us=waited_us)

    def unlock(self, which: int) -> None:
        self._write(TraceEvent.UNLOCK, lock=which)

    def post(self, slot: int, offset: int, nbytes: int, result: int = 0) -> None:
        """A record for ``slot`` (``result``: 0 delivered, 1 gone, 2 full)."""
        self._write(
            TraceEvent.POST,
            to=self._table.owner(1 + slot),
            slot=slot,
            offset=offset,
            nbytes=nbytes,
            status=result,
        )

    def ring(self, slot: int) -> None:
        self._write(TraceEvent.RING, to=self._table.owner(1 + slot), slot=slot)

    # -- a worker --------------------------------------------------------------------

    def wake(self, source: WakeSource) -> None:
        self._write(TraceEvent.WAKE, source=source)

    def recv(self, nbytes: int) -> None:
        self._write(TraceEvent.RECV, nbytes=nbytes)

    def take(self, records: int, nbytes: int) -> None:
        self._write(TraceEvent.TAKE, records=records, nbytes=nbytes)

    def send(self, nbytes: int) -> None:
        self._write(TraceEvent.SEND, nbytes=nbytes)


class TraceReader:
    """Reads every ring without any lock, skipping records caught mid-write."""

    def __init__(self, view: memoryview, rings: int, records: int) -> None:
        self._view = view
        self.rings = rings
        self.records = records
        self.segment: sysv_ipc.SharedMemory | None = None  # detached by release (open_trace)

    @classmethod
    def of_segment(cls, segment: sysv_ipc.SharedMemory) -> TraceReader:
        """A reader over a segment attached read-only (``SHM_RDONLY``) or not."""
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
        if self.segment is not None:
            self.segment.detach()
            self.segment = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UndoTracker:
    """Finds the locks a dead process never gave back (SEM_UNDO did), as events arrive.

    A ``lock`` with no later ``unlock`` of the same lock by the same pid,
    from a pid the parent then reaps (or that no longer exists), was returned
    by the kernel's SEM_UNDO when that process died.  ``feed`` passes events
    through and adds an ``undo`` at each such ``reap`` (the kernel undid it
    at the exit, just before); ``finish`` adds one for the dead processes the
    trace has no reap for, just after their last event.
    """

    def __init__(self) -> None:
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
            elif event.event is TraceEvent.REAP:
                self._reaped.add(event.child)
                out.extend(self._undo(event.child, event.t_ns))
        return out

    def finish(self, alive: Callable[[int], bool] = _alive) -> list[TraceRecord]:
        out = []
        for pid in list(self._held):
            if self._held[pid] and not alive(pid):
                out.extend(self._undo(pid, self._last[pid].t_ns + 1))
        return out

    def _undo(self, pid: int, t_ns: int) -> list[TraceRecord]:
        locks = self._held.pop(pid, {})
        return [
            taken._replace(seq=0, t_ns=t_ns, event=TraceEvent.UNDO, waited_us=0) for taken in locks.values()
        ]


def with_undo(events: Iterable[TraceRecord], alive: Callable[[int], bool] = _alive) -> list[TraceRecord]:
    """The events, oldest first, plus an ``undo`` for every lock SEM_UNDO gave back."""
    tracker = UndoTracker()
    out = tracker.feed(sorted(events, key=lambda r: (r.t_ns, r.ring, r.seq)))
    out += tracker.finish(alive)
    return sorted(out, key=lambda r: (r.t_ns, r.ring, r.seq))


class TracedLock:
    """A ``BinaryLock`` that records ``lock`` (with µs waited) and ``unlock``.

    Same interface as ``shm.locks.BinaryLock``; the tables cannot tell the
    difference.  It writes into the calling process's ring (``table.writer``)
    and does nothing more than the plain lock when that is None.  ``unlock``
    is recorded just *before* the semaphore is given back, so that in the
    trace a lock's next holder always takes it after the previous one let go.
    """

    def __init__(self, lock: BinaryLock, which: IpcObject, table: TraceTable) -> None:
        self._lock = lock
        self._which = int(which)
        self._table = table

    def reserve(self) -> None:
        writer = self._table.writer
        if writer is None:
            self._lock.reserve()
            return
        start = time.monotonic_ns()
        self._lock.reserve()
        writer.lock(self._which, (time.monotonic_ns() - start) // 1000)

    def release(self) -> None:
        writer = self._table.writer
        if writer is not None:
            writer.unlock(self._which)
        self._lock.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        self.reserve()
        try:
            yield
        finally:
            self.release()

    def try_reserve(self) -> bool:
        taken = self._lock.try_reserve()
        writer = self._table.writer
        if taken and writer is not None:
            writer.lock(self._which, 0)
        return taken

    @property
    def value(self) -> int:
        return self._lock.value

    @property
    def id(self) -> int:
        return self._lock.id

    @property
    def key(self) -> int:
        return self._lock.key

    def remove(self) -> None:
        self._lock.remove()


def forget_writer_after_fork(owner: object, forget: Callable[[object], None]) -> None:
    """Call ``forget(owner)`` in every child forked from now on (while ``owner`` lives).

    A child must never write into its parent's ring (a ring has one writer),
    so each child starts with no writer until it opens its own ring.
    """
    ref = weakref.ref(owner)

    def in_child() -> None:
        target = ref()
        if target is not None:
            forget(target)

    os.register_at_fork(after_in_child=in_child)


class TraceUnavailable(Exception):
    """No trace table to read on that port; the message says why, in one line."""


def open_trace(port: int) -> TraceReader:
    """A reader over the trace segment of the server on ``port``, attached read-only.

    ``release()`` the reader to detach.  Raises ``TraceUnavailable`` when the
    port has no server, or a server started without ``--trace``.
    """
    from shm.segments import list_objects  # not at the top: shm.segments imports this module

    objects = {e.obj: e for e in list_objects(port) if e.kind == "shm"}
    if IpcObject.TRACE_SEGMENT not in objects:
        if IpcObject.CLIENTS_SEGMENT in objects:
            raise TraceUnavailable(
                f"the server on port {port} runs without --trace, so it has no trace table "
                "(start it with: python -m server --trace)"
            )
        raise TraceUnavailable(f"no shmchat server on port {port}")
    try:
        segment = sysv_ipc.attach(objects[IpcObject.TRACE_SEGMENT].id, None, sysv_ipc.SHM_RDONLY)
    except sysv_ipc.Error as exc:
        raise TraceUnavailable(f"the trace table of port {port} went away ({exc})") from None
    try:
        reader = TraceReader.of_segment(segment)
    except BaseException:
        segment.detach()
        raise
    reader.segment = segment
    return reader
