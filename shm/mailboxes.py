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

import struct
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from shm import layout
from shm.layout import (
    MAILBOX_HEAD_TAIL,
    MAILBOX_HEADER,
    MAILBOX_HEADER_SIZE,
    MAILBOX_TAIL_OFFSET,
    MAX_CLIENTS_LIMIT,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER,
    RecordKind,
)
from shm.locks import TableLock


class Record(NamedTuple):
    """One message in a mailbox.

    Records and postings are named tuples rather than frozen dataclasses:
    several are built for every message, and a tuple is built several times
    faster, with the same immutability.
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


class Posting(NamedTuple):
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


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: The first fields of a mailbox header, in order: head, tail, delivered,
#: generation, pending count.  ``take`` reads and writes them as one piece.
_TAKE_FIELDS = struct.Struct("<QQQII")
#: The same, then the full events and the open flag: what a post looks at,
#: read in one ``unpack_from`` (``_post_one``).
_POST_FIELDS = struct.Struct("<QQQIIIB")
_FIELD_OFFSETS = (
    layout.MAILBOX_DELIVERED_OFFSET,
    layout.MAILBOX_GENERATION_OFFSET,
    layout.MAILBOX_COUNT_OFFSET,
    layout.MAILBOX_FULL_EVENTS_OFFSET,
    layout.MAILBOX_OPEN_OFFSET,
)
assert _FIELD_OFFSETS == (16, 24, 28, 32, 36), "_TAKE_FIELDS and _POST_FIELDS no longer match the header"
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
    # Looked up once, not once per record: this loop runs for every message
    # received, and each global or attribute lookup in it is paid that often.
    unpack_from, make, kinds, add = RECORD_HEADER.unpack_from, tuple.__new__, _KINDS, records.append
    while position + RECORD_HEADER_SIZE <= end:
        size, kind, _flags, sender_slot, sender_id, group_id, posted_at = unpack_from(data, position)
        if size < RECORD_HEADER_SIZE:  # never written that way; stop rather than loop
            break
        payload = data[position + RECORD_HEADER_SIZE : position + size]
        sender = sender_slot if sender_slot != 0xFFFF else -1
        # make(Record, ...), tuple.__new__, is Record(...) without the named
        # tuple's own __new__, a Python function: the extra call was a fifth of
        # the loop's time.
        add(make(Record, (kinds[kind], sender, sender_id, group_id, payload, posted_at)))
        position += size
    return records


def _runs(postings: list[Posting]) -> list[list[Posting]]:
    """Split postings into runs of consecutive ones for the same slot and generation."""
    runs: list[list[Posting]] = []
    last = None
    for posting in postings:
        key = (posting.slot, posting.generation)
        if key == last:
            runs[-1].append(posting)
        else:
            runs.append([posting])
            last = key
    return runs


class MessageTable:
    """The mailboxes of every slot in the messages segment."""

    def __init__(self, segment: memoryview, lock: TableLock) -> None:
        self._view = memoryview(segment)
        self.lock = lock
        self.capacity = SEGMENT_HEADER.unpack_from(self._view, 0)[2]
        usable = len(self._view) - layout.SEGMENT_HEADER_SIZE
        self.mailbox_bytes = usable // max(self.capacity, 1) - MAILBOX_HEADER_SIZE
        # Where each mailbox starts, worked out once: the hot paths index this list.
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

    def _header(self, slot: int) -> list:
        return list(MAILBOX_HEADER.unpack_from(self._view, self._bases[slot]))

    def _put_header(self, slot: int, header: list) -> None:
        # Pack, then one copy.  pack_into zero-fills the header before writing its
        # fields, so a worker killed inside it (SIGKILL) left another client's
        # mailbox with generation 0 and closed: every later post was GONE.
        base = self._bases[slot]
        self._view[base : base + MAILBOX_HEADER_SIZE] = MAILBOX_HEADER.pack(*header)

    # Header fields, by position in MAILBOX_HEADER.
    HEAD, TAIL, DELIVERED, GENERATION, COUNT, FULL_EVENTS, OPEN, WAITERS = range(8)

    def _ring_write(self, slot: int, position: int, data: bytes) -> None:
        start = self._bases[slot] + MAILBOX_HEADER_SIZE
        offset = position % self.mailbox_bytes
        first = min(len(data), self.mailbox_bytes - offset)
        self._view[start + offset : start + offset + first] = data[:first]
        if first < len(data):
            self._view[start : start + len(data) - first] = data[first:]

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
            self._put_header(slot, [0, 0, 0, generation, 0, 0, 1, bytes(MAX_CLIENTS_LIMIT // 8)])

    def close(self, slot: int, generation: int) -> tuple[list[Record], list[int]]:
        """Close a departed client's mailbox; return its unread mail and its waiters."""
        view = self._view
        base = self._bases[slot]
        with self.lock.held():
            gen = _U32.unpack_from(view, base + layout.MAILBOX_GENERATION_OFFSET)[0]
            if gen != generation or not view[base + layout.MAILBOX_OPEN_OFFSET]:
                return [], []
            view[base + layout.MAILBOX_OPEN_OFFSET] = 0  # from now on every post is GONE
            head, tail = MAILBOX_HEAD_TAIL.unpack_from(view, base)
            data = self._ring_read(slot, head, tail - head)
            view[base : base + 8] = _U64.pack(tail)
            self._finish_take(base)
            waiters = self._take_waiters(base)
        return _decode_records(data), waiters

    # -- posting (any worker, and the parent) ----------------------------------

    def post(self, postings: list[Posting]) -> list[PostResult]:
        """Post several records under one lock acquisition (a batch, a broadcast).

        Each distinct record is packed once, before the lock is taken: a
        broadcast is one record for many receivers, and packing is no business
        of the critical section.  Under the lock a posting costs a look at the
        receiver's header and one or two copies.
        """
        now = time.time()
        if len(postings) == 1:
            return [self._post_alone(postings[0], now)]
        packed: dict[int, bytes] = {}  # id(record) -> header + payload
        for posting in postings:
            record = posting.record
            if id(record) not in packed:
                packed[id(record)] = self._pack(record, now)
        results: list[PostResult] = []
        full: set[int] = set()  # once a mailbox is full, later posts to it wait too (order)
        # reserve/release rather than ``with lock.held()``: this runs for every
        # message, and the generator-based context manager cost about a microsecond.
        self.lock.reserve()
        try:
            for run in _runs(postings):
                first = run[0]
                if len(run) > 1 and first.slot not in full and self.tracer is None:
                    # Consecutive records for one mailbox (a read of many lines to one
                    # receiver) go in as one piece: one header check, one copy, one
                    # commit, instead of one each.  None: not all fit, go one by one.
                    data = b"".join([packed[id(posting.record)] for posting in run])
                    result = self._post_run(first.slot, first.generation, data, len(run))
                    if result is not None:
                        results += [result] * len(run)
                        continue
                for posting in run:
                    if posting.slot in full:
                        results.append(PostResult.FULL)
                        continue
                    record = posting.record
                    result = self._post_one(
                        posting.slot, posting.generation, record.sender_slot, packed[id(record)]
                    )
                    if self.tracer is not None:  # the lock is held: the new tail is the record's end
                        self._trace_post(posting.slot, result, len(packed[id(record)]))
                    if result is PostResult.FULL:
                        full.add(posting.slot)
                    results.append(result)
        finally:
            self.lock.release()
        return results

    def _post_alone(self, posting: Posting, now: float) -> PostResult:
        """``post`` of a single record: what a round trip or a quiet chat posts.

        The same steps without the batch's bookkeeping (the packed records by
        id, the runs, the full set), which cost as much as the post itself
        when there is one message per read.
        """
        record = posting.record
        data = self._pack(record, now)
        self.lock.reserve()
        try:
            result = self._post_one(posting.slot, posting.generation, record.sender_slot, data)
            if self.tracer is not None:
                self._trace_post(posting.slot, result, len(data))
        finally:
            self.lock.release()
        return result

    def _trace_post(self, slot: int, result: PostResult, size: int) -> None:
        tail = _U64.unpack_from(self._view, self._bases[slot] + MAILBOX_TAIL_OFFSET)[0]
        self.tracer.post(slot, (tail - size) % self.mailbox_bytes, size, result.value)

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

    def _gone(self, base: int, generation: int) -> bool:
        """The mailbox at ``base`` is closed, or now serves another client (caller holds the lock)."""
        view = self._view
        return (
            not view[base + layout.MAILBOX_OPEN_OFFSET]
            or _U32.unpack_from(view, base + layout.MAILBOX_GENERATION_OFFSET)[0] != generation
        )

    def _post_one(self, slot: int, generation: int, sender: int, data: bytes) -> PostResult:
        """Copy one packed record into a ring, then store ``tail``: the commit.

        The pending count is added after ``tail``.  That is safe: the count is a
        statistic (the inspector's), read by nobody to find records, so a
        poster killed between the two stores leaves a record that is there and
        a count one short, never a count for bytes that are not.
        """
        view = self._view
        base = self._bases[slot]
        # The header's fields in one read, rather than _gone() and a read per
        # field: this runs for every message that is alone in its read.
        head, tail, _delivered, gen, count, _full_events, is_open = _POST_FIELDS.unpack_from(view, base)
        if not is_open or gen != generation:  # what _gone() tells
            return PostResult.GONE
        size = len(data)
        if tail - head + size > self.mailbox_bytes:
            self._add_u32(base + layout.MAILBOX_FULL_EVENTS_OFFSET, 1)
            if 0 <= sender < MAX_CLIENTS_LIMIT:
                bit = base + layout.MAILBOX_WAITERS_OFFSET + sender // 8
                view[bit] |= 1 << (sender % 8)
            return PostResult.FULL
        offset = tail % self.mailbox_bytes
        ring = base + MAILBOX_HEADER_SIZE
        if offset + size <= self.mailbox_bytes:  # the usual case: one copy
            # A store into shared memory: this slice assignment copies the record into the ring.
            view[ring + offset : ring + offset + size] = data
        else:
            self._ring_write(slot, tail, data)
        view[base + MAILBOX_TAIL_OFFSET : base + MAILBOX_TAIL_OFFSET + 8] = _U64.pack(tail + size)
        count_at = base + layout.MAILBOX_COUNT_OFFSET
        view[count_at : count_at + 4] = _U32.pack((count + 1) & 0xFFFFFFFF)
        return PostResult.DELIVERED

    def _post_run(self, slot: int, generation: int, data: bytes, count: int) -> PostResult | None:
        """Copy ``count`` packed records, joined in ``data``, into one ring at once.

        DELIVERED or GONE for them all, or None when they do not all fit (the
        caller then posts them one by one, so that as many as fit go in, in order).
        """
        view = self._view
        base = self._bases[slot]
        if self._gone(base, generation):
            return PostResult.GONE
        size = len(data)
        head, tail = MAILBOX_HEAD_TAIL.unpack_from(view, base)
        if tail - head + size > self.mailbox_bytes:
            return None
        self._ring_write(slot, tail, data)
        view[base + MAILBOX_TAIL_OFFSET : base + MAILBOX_TAIL_OFFSET + 8] = _U64.pack(tail + size)
        self._add_u32(base + layout.MAILBOX_COUNT_OFFSET, count)
        return PostResult.DELIVERED

    def _add_u32(self, offset: int, amount: int) -> None:
        value = _U32.unpack_from(self._view, offset)[0]
        self._view[offset : offset + 4] = _U32.pack((value + amount) & 0xFFFFFFFF)

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
            # One read and one store of the header's first 32 bytes, rather than
            # one per field (this runs for every wake-up with mail): the new head,
            # tail unchanged, the pending count moved to the delivered count.
            head, tail, delivered, gen, count = _TAKE_FIELDS.unpack_from(view, base)
            if gen != generation or head == tail:
                return [], []
            data = self._ring_read(slot, head, tail - head)
            # The store of head is the commit: the bytes are free again.
            view[base : base + _TAKE_FIELDS.size] = _TAKE_FIELDS.pack(tail, tail, delivered + count, gen, 0)
            waiters = self._take_waiters(base)
        finally:
            self.lock.release()
        return _decode_records(data), waiters

    def _finish_take(self, base: int) -> None:
        """Move the pending count to the delivered count (caller holds the lock)."""
        view = self._view
        pending = _U32.unpack_from(view, base + layout.MAILBOX_COUNT_OFFSET)[0]
        delivered = _U64.unpack_from(view, base + layout.MAILBOX_DELIVERED_OFFSET)[0] + pending
        view[base + layout.MAILBOX_DELIVERED_OFFSET : base + layout.MAILBOX_DELIVERED_OFFSET + 8] = _U64.pack(
            delivered
        )
        view[base + layout.MAILBOX_COUNT_OFFSET : base + layout.MAILBOX_COUNT_OFFSET + 4] = _U32.pack(0)

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
            pending = [self._peek(slot, h, peek) for slot, h in enumerate(headers)]
        return [
            MailboxStats(
                slot=slot,
                open=bool(h[self.OPEN]),
                generation=h[self.GENERATION],
                pending_records=h[self.COUNT],
                pending_bytes=h[self.TAIL] - h[self.HEAD],
                delivered=h[self.DELIVERED],
                full_events=h[self.FULL_EVENTS],
                waiters=_bitmap_slots(h[self.WAITERS]),
                pending=pending[slot],
            )
            for slot, h in enumerate(headers)
        ]

    def _peek(self, slot: int, header: list, limit: int) -> tuple[PendingRecord, ...]:
        """Headers of the first ``limit`` pending records (caller holds the lock)."""
        found: list[PendingRecord] = []
        position = header[self.HEAD]
        while position < header[self.TAIL] and len(found) < limit:
            raw = self._ring_read(slot, position, RECORD_HEADER_SIZE)
            size, kind, _flags, _slot, sender_id, group_id, posted_at = RECORD_HEADER.unpack(raw)
            if size < RECORD_HEADER_SIZE:  # never written that way; stop rather than loop
                break
            found.append(PendingRecord(RecordKind(kind), sender_id, group_id, size, posted_at))
            position += size
        return tuple(found)
