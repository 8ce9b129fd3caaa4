"""The message-info table: one mailbox per client slot, in one segment.

A mailbox is a ring of variable-length records (``layout.RECORD_HEADER``
followed by a payload).  Any worker may post into any mailbox; only the
owning worker takes mail out of its own.  One semaphore, the *messages lock*,
guards the whole segment; a post or a take is a couple of ``memcpy`` calls
under it, so contention stays low even though the lock is shared.

Three rules make delivery dependable:

* **Generations.**  Each client slot counts how many times it has been
  reused.  A post names the generation it expects, so mail meant for a
  client that has left can never reach the next client in the same slot.
* **Closing drains.**  When a client leaves, the parent closes its mailbox
  and receives every record still in it, so that private messages can be
  bounced to their senders ("disconnected, message discarded") instead of
  vanishing.  Posts to a closed mailbox fail at once with ``GONE``.
* **Full is not fatal.**  When a ring has no room, the post fails with
  ``FULL`` and the sender's slot is marked in the mailbox's waiters bitmap.
  The receiver's worker, after it has taken mail, returns the waiters so
  that its caller can ring their doorbells; the sender then retries.  A
  sender never blocks, and nothing is dropped; a receiver that never reads
  is disconnected by its own worker once its output backlog passes a bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from shm import layout
from shm.layout import (
    MAILBOX_COUNT_OFFSET,
    MAILBOX_FIELDS,
    MAILBOX_HEADER,
    MAILBOX_HEADER_SIZE,
    MAILBOX_TAIL_OFFSET,
    MAILBOX_U32,
    MAILBOX_U64,
    MAX_CLIENTS_LIMIT,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER,
    RecordKind,
)
from shm.locks import TableLock


@dataclass(slots=True)
class Record:
    """One message in a mailbox.

    Records and postings, like the outbox's deliveries, are plain slotted
    dataclasses: several are built for every message and none is changed
    once built.  A named tuple builds itself through a ``__new__`` written in
    Python, and a frozen dataclass sets each field the long way round, so
    both cost more per message than the immutability they add is worth here.
    """

    kind: RecordKind
    sender_slot: int
    sender_id: int
    group_id: int
    payload: bytes
    posted_at: float = 0.0

    @property
    def size(self) -> int:
        return RECORD_HEADER_SIZE + len(self.payload)


class PostResult(Enum):
    DELIVERED = "delivered"  # in the receiver's mailbox; its doorbell must be rung
    GONE = "gone"  # the receiver has left (mailbox closed or reused)
    FULL = "full"  # no room now; the sender was added to the waiters


@dataclass(slots=True)
class Posting:
    """A record addressed to one slot of a given generation."""

    slot: int
    generation: int
    record: Record


@dataclass(frozen=True)
class PendingRecord:
    """The header of a record still waiting in a mailbox (for the inspector)."""

    kind: RecordKind
    sender_id: int
    group_id: int
    size: int
    posted_at: float


@dataclass(frozen=True)
class MailboxStats:
    """What the inspector shows about one mailbox."""

    slot: int
    open: bool
    generation: int
    pending_records: int
    pending_bytes: int
    delivered: int
    full_events: int
    waiters: list[int]
    pending: tuple[PendingRecord, ...] = ()  # the oldest few, when stats(peek=n) asked


_NO_WAITERS = bytes(layout.MAILBOX_WAITERS_BYTES)
_KINDS = {kind.value: kind for kind in RecordKind}


def _bitmap_slots(bitmap: bytes) -> list[int]:
    slots = []
    for index, byte in enumerate(bitmap):
        for bit in range(8):
            if byte & (1 << bit):
                slots.append(index * 8 + bit)
    return slots


def _decode_records(data: bytes) -> list[Record]:
    """Split bytes copied out of a ring into records, in posting order."""
    records: list[Record] = []
    position = 0
    end = len(data)
    while position + RECORD_HEADER_SIZE <= end:
        size, kind, _flags, slot, sender_id, group_id, posted = RECORD_HEADER.unpack_from(data, position)
        if size < RECORD_HEADER_SIZE:  # never written that way; stop rather than loop
            break
        payload = data[position + RECORD_HEADER_SIZE : position + size]
        sender = slot if slot != 0xFFFF else -1  # 0xFFFF: the parent
        records.append(Record(_KINDS[kind], sender, sender_id, group_id, payload, posted))
        position += size
    return records


class MessageTable:
    """The mailboxes of every slot in the messages segment."""

    def __init__(self, segment: memoryview, lock: TableLock) -> None:
        self._view = memoryview(segment)
        self.lock = lock
        self.capacity = SEGMENT_HEADER.unpack_from(self._view, 0)[2]
        usable = len(self._view) - layout.SEGMENT_HEADER_SIZE
        self.mailbox_bytes = usable // max(self.capacity, 1) - MAILBOX_HEADER_SIZE
        # Where each mailbox starts, worked out once rather than at every post.
        self._bases = [layout.mailbox_offset(slot, self.mailbox_bytes) for slot in range(self.capacity)]
        self.tracer: Any = None  # a shm.trace.TraceWriter when traced (ServerIpc.tracer_for)

    @staticmethod
    def format(segment: memoryview, max_clients: int, server_pid: int) -> None:
        """Write the header of a freshly created (zero-filled) segment."""
        header = SEGMENT_HEADER.pack(
            layout.SEGMENT_MAGIC, layout.LAYOUT_VERSION, max_clients, server_pid, time.time(), 0
        )
        segment[: len(header)] = header

    def release(self) -> None:
        self._view.release()

    # -- header access (caller holds the lock) -------------------------------

    def _header(self, slot: int) -> tuple:
        return MAILBOX_HEADER.unpack_from(self._view, self._bases[slot])

    def _put_header(self, slot: int, header: tuple) -> None:
        # Pack, then one copy.  pack_into zero-fills the header before writing its
        # fields, so a worker killed inside it (SIGKILL) left another client's
        # mailbox with generation 0 and closed: every later post was GONE.
        base = self._bases[slot]
        self._view[base : base + MAILBOX_HEADER_SIZE] = MAILBOX_HEADER.pack(*header)

    def _ring_write(self, slot: int, position: int, data: bytes) -> None:
        """Copy ``data`` into a ring at ``position``: one store, two when it wraps."""
        start = self._bases[slot] + MAILBOX_HEADER_SIZE
        offset = position % self.mailbox_bytes
        end = offset + len(data)
        if end <= self.mailbox_bytes:
            # A store into shared memory: this slice assignment copies the bytes into the ring.
            self._view[start + offset : start + end] = data
        else:  # past the ring's end: the rest goes to its start
            first = self.mailbox_bytes - offset
            self._view[start + offset : start + self.mailbox_bytes] = data[:first]
            self._view[start : start + end - self.mailbox_bytes] = data[first:]

    def _ring_read(self, slot: int, position: int, length: int) -> bytes:
        start = self._bases[slot] + MAILBOX_HEADER_SIZE
        offset = position % self.mailbox_bytes
        first = min(length, self.mailbox_bytes - offset)
        data = bytes(self._view[start + offset : start + offset + first])
        if first < length:
            data += bytes(self._view[start : start + length - first])
        return data

    # -- life of a mailbox (the parent) ---------------------------------------

    def open(self, slot: int, generation: int) -> None:
        """Empty a slot's mailbox and address it to a new client."""
        with self.lock.held():
            self._put_header(slot, (0, 0, 0, generation, 0, 0, 1, _NO_WAITERS))

    def close(self, slot: int, generation: int) -> tuple[list[Record], list[int]]:
        """Close a departed client's mailbox; return its unread mail and its waiters."""
        view = self._view
        base = self._bases[slot]
        with self.lock.held():
            head, tail, delivered, gen, count, full_events, is_open = MAILBOX_FIELDS.unpack_from(view, base)
            if gen != generation or not is_open:
                return [], []
            data = self._ring_read(slot, head, tail - head)
            # Closed (from now on every post is GONE) and emptied, in one store.
            view[base : base + MAILBOX_FIELDS.size] = MAILBOX_FIELDS.pack(
                tail, tail, delivered + count, gen, 0, full_events, 0
            )
            waiters = self._take_waiters(base)
        return _decode_records(data), waiters

    # -- posting (any worker, and the parent) ----------------------------------

    def post(self, postings: list[Posting]) -> list[PostResult]:
        """Post records under one hold of the lock: a read's lines, a broadcast, or one message.

        Records are packed before the lock is taken, as packing is no business
        of the critical section; a broadcast, one record for many receivers
        posted one after the other, is packed once.  Under the lock, each run
        of consecutive postings to one mailbox (``_post_run``) costs one look
        at its header, one copy and one commit, whether it holds one record or
        hundreds.
        The results are in the order of ``postings``.
        """
        now = time.time()
        packed: list[bytes] = []  # each posting's record as it lies in a ring
        record: Record | None = None
        for posting in postings:
            if posting.record is not record:  # a broadcast's copies follow each other
                record = posting.record
                data = self._pack(record, now)
            packed.append(data)
        # Every result starts as DELIVERED, what nearly every post becomes; a
        # run that finds its receiver gone or its ring full writes over its own.
        results = [PostResult.DELIVERED] * len(postings)
        full: set[int] = set()  # once a mailbox is full, later posts to it wait too (order)
        # reserve/release is ``with lock.held()`` spelled out: this runs once for
        # every read of a client's socket, and the context manager adds a
        # generator and two calls to each.
        self.lock.reserve()
        try:
            start = 0
            while start < len(postings):
                slot, generation = postings[start].slot, postings[start].generation
                end = start + 1  # the run: postings[start:end], all for this mailbox
                while (
                    end < len(postings)
                    and postings[end].slot == slot
                    and postings[end].generation == generation
                ):
                    end += 1
                if slot in full:
                    results[start:end] = [PostResult.FULL] * (end - start)
                elif not self._post_run(postings, packed, start, end, results):
                    full.add(slot)
                start = end
        finally:
            self.lock.release()
        return results

    def _post_run(
        self, postings: list[Posting], packed: list[bytes], start: int, end: int, results: list[PostResult]
    ) -> bool:
        """Copy ``postings[start:end]``, a run for one mailbox, into its ring, in order.

        One read of the header; one copy of every record that fits (two when
        the ring wraps); then the store of ``tail``, the commit: a reader
        finds the records there only once it is made.  The pending count is
        added after ``tail``.  That is safe: the count is a statistic (the
        inspector's), read by nobody to find records, so a poster killed
        between the two stores leaves records that are there and a count
        short, never a count for bytes that are not.  The records that do not
        fit are FULL in ``results``: their senders are marked in the waiters
        bitmap.  Returns False when some did not fit.
        """
        view = self._view
        slot = postings[start].slot
        base = self._bases[slot]
        head, tail, _delivered, gen, count, full_events, is_open = MAILBOX_FIELDS.unpack_from(view, base)
        if not is_open or gen != postings[start].generation:
            results[start:end] = [PostResult.GONE] * (end - start)
            return True
        room = self.mailbox_bytes - (tail - head)
        fit = start  # postings[start:fit] fit, and take ``size`` bytes
        size = 0
        while fit < end and size + len(packed[fit]) <= room:
            size += len(packed[fit])
            fit += 1
        if fit > start:
            self._ring_write(slot, tail, b"".join(packed[start:fit]))
            at = base + MAILBOX_TAIL_OFFSET
            view[at : at + 8] = MAILBOX_U64.pack(tail + size)  # the commit
            at = base + MAILBOX_COUNT_OFFSET
            view[at : at + 4] = MAILBOX_U32.pack((count + fit - start) & 0xFFFFFFFF)
        if fit < end:
            at = base + layout.MAILBOX_FULL_EVENTS_OFFSET
            view[at : at + 4] = MAILBOX_U32.pack((full_events + 1) & 0xFFFFFFFF)
            for index in range(fit, end):
                results[index] = PostResult.FULL
                sender = postings[index].record.sender_slot
                if 0 <= sender < MAX_CLIENTS_LIMIT:
                    bit = base + layout.MAILBOX_WAITERS_OFFSET + sender // 8
                    view[bit] |= 1 << (sender % 8)
        if self.tracer is not None:  # each record that went in, and the first that found no room
            position = tail
            for index in range(start, min(fit + 1, end)):
                self.tracer.post(
                    slot, position % self.mailbox_bytes, len(packed[index]), results[index].value
                )
                position += len(packed[index])
        return fit == end

    def _pack(self, record: Record, now: float) -> bytes:
        """A record as it lies in a ring: its header, then its payload."""
        size = RECORD_HEADER_SIZE + len(record.payload)
        if size > self.mailbox_bytes:
            raise ValueError(f"record of {size} bytes cannot fit a {self.mailbox_bytes}-byte mailbox")
        header = RECORD_HEADER.pack(
            size,
            record.kind,
            0,
            record.sender_slot & 0xFFFF,
            record.sender_id,
            record.group_id,
            record.posted_at or now,
        )
        return header + record.payload

    # -- taking mail (the owning worker) ---------------------------------------

    def take(self, slot: int, generation: int) -> tuple[list[Record], list[int]]:
        """Take every pending record of one's own mailbox.

        Returns the records in posting order and the slots that were waiting
        for room (their doorbells should be rung now that there is some).  The
        pending bytes are copied out under the lock in one piece (two when
        they wrap) and decoded into records after it is released.
        """
        view = self._view
        base = self._bases[slot]
        self.lock.reserve()  # not ``with``: see post
        try:
            head, tail, delivered, gen, count, full_events, is_open = MAILBOX_FIELDS.unpack_from(view, base)
            if gen != generation or head == tail:
                return [], []
            data = self._ring_read(slot, head, tail - head)
            # One store of the counters: the new head (the commit: the bytes are
            # free again), tail unchanged, the pending count moved to delivered.
            view[base : base + MAILBOX_FIELDS.size] = MAILBOX_FIELDS.pack(
                tail, tail, delivered + count, gen, 0, full_events, is_open
            )
            waiters = self._take_waiters(base)
        finally:
            self.lock.release()
        return _decode_records(data), waiters

    def _take_waiters(self, base: int) -> list[int]:
        start = base + layout.MAILBOX_WAITERS_OFFSET
        bitmap = bytes(self._view[start : start + layout.MAILBOX_WAITERS_BYTES])
        if bitmap == _NO_WAITERS:
            return []
        self._view[start : start + layout.MAILBOX_WAITERS_BYTES] = _NO_WAITERS
        return _bitmap_slots(bitmap)

    # -- inspection --------------------------------------------------------------

    def stats(self, peek: int = 0) -> list[MailboxStats]:
        """A consistent snapshot of every mailbox header (one lock hold).

        With ``peek``, also the headers of up to that many pending records per
        mailbox, oldest first.  Nothing is taken or changed.
        """
        with self.lock.held():
            headers = [self._header(slot) for slot in range(self.capacity)]
            pending = [self._peek(slot, head, tail, peek) for slot, (head, tail, *_) in enumerate(headers)]
        return [
            MailboxStats(
                slot=slot,
                open=bool(is_open),
                generation=gen,
                pending_records=count,
                pending_bytes=tail - head,
                delivered=delivered,
                full_events=full_events,
                waiters=_bitmap_slots(waiters),
                pending=pending[slot],
            )
            for slot, (head, tail, delivered, gen, count, full_events, is_open, waiters) in enumerate(headers)
        ]

    def _peek(self, slot: int, head: int, tail: int, limit: int) -> tuple[PendingRecord, ...]:
        """Headers of the first ``limit`` pending records (caller holds the lock)."""
        found: list[PendingRecord] = []
        position = head
        while position < tail and len(found) < limit:
            raw = self._ring_read(slot, position, RECORD_HEADER_SIZE)
            size, kind, _flags, _slot, sender_id, group_id, posted_at = RECORD_HEADER.unpack(raw)
            if size < RECORD_HEADER_SIZE:  # never written that way; stop rather than loop
                break
            found.append(PendingRecord(RecordKind(kind), sender_id, group_id, size, posted_at))
            position += size
        return tuple(found)
