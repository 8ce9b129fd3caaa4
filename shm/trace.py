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

Reading is ``shm.trace_reader``'s business, and so is showing a lock that
the kernel handed back (SEM_UNDO) after its holder died.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from shm import layout
from shm.layout import (
    SEGMENT_HEADER,
    TRACE_BODY,
    TRACE_BODY_SPLIT,
    TRACE_RECORD_SIZE,
    TRACE_RING_HEADER,
    TRACE_RING_HEADER_SIZE,
    TRACE_RING_OWNER,
    TRACE_SEQ,
    IpcObject,
    TraceEvent,
    WakeSource,
)
from shm.locks import BinaryLock, HeldByBlock
from shm.trace_reader import POST_RESULTS, TraceReader

Owner = TypeVar("Owner")

_ZERO_SEQ = bytes(TRACE_SEQ.size)


def format_segment(segment: memoryview, rings: int, records: int, server_pid: int) -> None:
    """Write the header and the ring headers of a fresh (zero-filled) trace segment."""
    SEGMENT_HEADER.pack_into(
        segment, 0, layout.SEGMENT_MAGIC, layout.LAYOUT_VERSION, rings, server_pid, time.time(), 0
    )
    for ring in range(rings):
        TRACE_RING_HEADER.pack_into(segment, layout.trace_ring_offset(ring, records), 0, 0, records)


class TraceTable:
    """One server's trace segment, attached: its rings and this process's writer.

    ``writer`` is the ring this process writes to, or None.  The locks and
    the message table of a traced server look it up at each step
    (``TracedLock``, ``MessageTable.tracer``), so that after a ``fork`` the
    child writes into its own ring, never its parent's (``ServerIpc`` clears
    ``writer`` in every child, see ``os.register_at_fork``).
    """

    def __init__(self, segment: memoryview) -> None:
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
        return TRACE_RING_OWNER.unpack_from(self._view, self.ring_offset(ring))[0]

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
        body = TRACE_BODY.pack(
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
        fields = at + TRACE_SEQ.size
        view[at:fields] = _ZERO_SEQ  # 1. "being written": readers skip it from now on
        if self.between_fields is None:
            view[fields : at + TRACE_RECORD_SIZE] = body  # 2. the fields
        else:
            middle = fields + TRACE_BODY_SPLIT
            view[fields:middle] = body[:TRACE_BODY_SPLIT]
            self.between_fields()
            view[middle : at + TRACE_RECORD_SIZE] = body[TRACE_BODY_SPLIT:]
        view[at:fields] = TRACE_SEQ.pack(seq)  # 3. the commit point
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

    def released(self, which: int, child: int) -> None:
        """POSIX: the parent posted V for a lock the dead worker ``child`` held (no SEM_UNDO)."""
        self._write(TraceEvent.RELEASED, lock=which, child=child)

    # -- any process -------------------------------------------------------------

    def lock(self, which: int, waited_us: int) -> None:
        self._write(TraceEvent.LOCK, lock=which, waited_us=waited_us)

    def unlock(self, which: int) -> None:
        self._write(TraceEvent.UNLOCK, lock=which)

    def post(self, slot: int, offset: int, nbytes: int, result: str = "delivered") -> None:
        """A record for ``slot`` (``result``: a ``PostResult`` value, delivered, gone or full)."""
        self._write(
            TraceEvent.POST,
            to=self._table.owner(1 + slot),
            slot=slot,
            offset=offset if result == "delivered" else 0,  # one that went nowhere has none
            nbytes=nbytes,
            status=POST_RESULTS.index(result),
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


class TracedLock(HeldByBlock):
    """A ``BinaryLock`` that records ``lock`` (with µs waited) and ``unlock``.

    Same interface as ``shm.locks.BinaryLock``: to the tables it is a
    ``shm.locks.TableLock``, as mypy checks, and they cannot tell the
    difference.  ``ServerIpc.locks`` keeps the plain locks; the tables of a
    traced server (``ipc.directory.lock``, ``ipc.messages.lock``) get these.
    It writes into the calling process's ring (``table.writer``) and does
    nothing more than the plain lock when that is None.  ``unlock`` is
    recorded just *before* the semaphore is given back, so that in the trace
    a lock's next holder always takes it after the previous one let go.
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

    def try_reserve(self) -> bool:
        taken = self._lock.try_reserve()
        writer = self._table.writer
        if taken and writer is not None:
            writer.lock(self._which, 0)
        return taken

    @property
    def value(self) -> int:
        return self._lock.value

    # The bounded wait of the plain lock (``BinaryLock.patience``, ``on_stuck``)
    # is the plain lock's: set here, it is set there.
    @property
    def patience(self) -> float | None:
        return self._lock.patience

    @patience.setter
    def patience(self, seconds: float | None) -> None:
        self._lock.patience = seconds

    @property
    def on_stuck(self) -> Callable[[int], None] | None:
        return self._lock.on_stuck

    @on_stuck.setter
    def on_stuck(self, call: Callable[[int], None] | None) -> None:
        self._lock.on_stuck = call

    @property
    def label(self) -> str:
        return self._lock.label

    def remove(self) -> None:
        self._lock.remove()


def forget_writer_after_fork(owner: Owner, forget: Callable[[Owner], None]) -> None:
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
