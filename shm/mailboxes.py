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

import sysv_ipc

from shm import layout
from shm.layout import (
    MAILBOX_HEADER,
    MAILBOX_HEADER_SIZE,
    MAX_CLIENTS_LIMIT,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER,
    RecordKind,
)
from shm.locks import BinaryLock


@dataclass(frozen=True)
class Record:
    """One message in a mailbox."""

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


@dataclass(frozen=True)
class Posting:
    """A record addressed to one slot of a given generation."""

    slot: int
    generation: int
    record: Record


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


def _bitmap_slots(bitmap: bytes) -> list[int]:
    slots = []
    for index, byte in enumerate(bitmap):
        for bit in range(8):
            if byte & (1 << bit):
                slots.append(index * 8 + bit)
    return slots


class MessageTable:
    """The mailboxes of every slot in the messages segment."""

    def __init__(self, segment: sysv_ipc.SharedMemory, lock: BinaryLock) -> None:
        self._view = memoryview(segment)
        self.lock = lock
        _magic, _version, self.capacity, _pid, _created = SEGMENT_HEADER.unpack_from(self._view, 0)
        usable = len(self._view) - layout.SEGMENT_HEADER_SIZE
        self.mailbox_bytes = usable // max(self.capacity, 1) - MAILBOX_HEADER_SIZE

    @staticmethod
    def format(segment: sysv_ipc.SharedMemory, max_clients: int, server_pid: int) -> None:
        """Write the header of a freshly created (zero-filled) segment."""
        header = SEGMENT_HEADER.pack(
            layout.SEGMENT_MAGIC, layout.LAYOUT_VERSION, max_clients, server_pid, time.time()
        )
        segment.write(header, 0)

    def release(self) -> None:
        self._view.release()

    # -- header access (caller holds the lock) -------------------------------

    def _base(self, slot: int) -> int:
        return layout.mailbox_offset(slot, self.mailbox_bytes)

    def _header(self, slot: int) -> list:
        return list(MAILBOX_HEADER.unpack_from(self._view, self._base(slot)))

    def _put_header(self, slot: int, header: list) -> None:
        MAILBOX_HEADER.pack_into(self._view, self._base(slot), *header)

    # Header fields, by position in MAILBOX_HEADER.
    HEAD, TAIL, DELIVERED, GENERATION, COUNT, FULL_EVENTS, OPEN, WAITERS = range(8)

    def _ring_write(self, slot: int, position: int, data: bytes) -> None:
        start = self._base(slot) + MAILBOX_HEADER_SIZE
        offset = position % self.mailbox_bytes
        first = min(len(data), self.mailbox_bytes - offset)
        self._view[start + offset : start + offset + first] = data[:first]
        if first < len(data):
            self._view[start : start + len(data) - first] = data[first:]

    def _ring_read(self, slot: int, position: int, length: int) -> bytes:
        start = self._base(slot) + MAILBOX_HEADER_SIZE
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
        with self.lock.held():
            header = self._header(slot)
            if header[self.GENERATION] != generation or not header[self.OPEN]:
                return [], []
            records = self._take_all(slot, header)
            waiters = _bitmap_slots(header[self.WAITERS])
            header[self.OPEN] = 0
            header[self.WAITERS] = bytes(MAX_CLIENTS_LIMIT // 8)
            self._put_header(slot, header)
        return records, waiters

    # -- posting (any worker, and the parent) ----------------------------------

    def post(self, postings: list[Posting]) -> list[PostResult]:
        """Post several records under one lock acquisition (a broadcast, a batch)."""
        results = []
        now = time.time()
        full: set[int] = set()  # once a mailbox is full, later posts to it wait too (order)
        with self.lock.held():
            for posting in postings:
                if posting.slot in full:
                    results.append(PostResult.FULL)
                    continue
                result = self._post_one(posting, now)
                if result is PostResult.FULL:
                    full.add(posting.slot)
                results.append(result)
        return results

    def _post_one(self, posting: Posting, now: float) -> PostResult:
        slot, record = posting.slot, posting.record
        header = self._header(slot)
        if not header[self.OPEN] or header[self.GENERATION] != posting.generation:
            return PostResult.GONE
        size = record.size
        if size > self.mailbox_bytes:
            raise ValueError(f"record of {size} bytes cannot fit a {self.mailbox_bytes}-byte mailbox")
        used = header[self.TAIL] - header[self.HEAD]
        if used + size > self.mailbox_bytes:
            header[self.FULL_EVENTS] += 1
            if 0 <= record.sender_slot < MAX_CLIENTS_LIMIT:
                waiters = bytearray(header[self.WAITERS])
                waiters[record.sender_slot // 8] |= 1 << (record.sender_slot % 8)
                header[self.WAITERS] = bytes(waiters)
            self._put_header(slot, header)
            return PostResult.FULL
        head = RECORD_HEADER.pack(
            size,
            int(record.kind),
            0,
            record.sender_slot & 0xFFFF,
            record.sender_id,
            record.group_id,
            record.posted_at or now,
        )
        self._ring_write(slot, header[self.TAIL], head + record.payload)
        header[self.TAIL] += size
        header[self.COUNT] += 1
        self._put_header(slot, header)
        return PostResult.DELIVERED

    # -- taking mail (the owning worker) ---------------------------------------

    def take(self, slot: int, generation: int) -> tuple[list[Record], list[int]]:
        """Take every pending record of one's own mailbox.

        Returns the records in posting order and the slots that were waiting
        for room (their doorbells should be rung now that there is some).
        """
        with self.lock.held():
            header = self._header(slot)
            if header[self.GENERATION] != generation or header[self.COUNT] == 0:
                return [], []
            records = self._take_all(slot, header)
            waiters = _bitmap_slots(header[self.WAITERS])
            header[self.WAITERS] = bytes(MAX_CLIENTS_LIMIT // 8)
            self._put_header(slot, header)
        return records, waiters

    def _take_all(self, slot: int, header: list) -> list[Record]:
        records = []
        position = header[self.HEAD]
        while position < header[self.TAIL]:
            raw_header = self._ring_read(slot, position, RECORD_HEADER_SIZE)
            size, kind, _flags, sender_slot, sender_id, group_id, posted_at = RECORD_HEADER.unpack(raw_header)
            payload = self._ring_read(slot, position + RECORD_HEADER_SIZE, size - RECORD_HEADER_SIZE)
            sender = sender_slot if sender_slot != 0xFFFF else -1
            records.append(Record(RecordKind(kind), sender, sender_id, group_id, payload, posted_at))
            position += size
        header[self.HEAD] = position
        header[self.DELIVERED] += header[self.COUNT]
        header[self.COUNT] = 0
        return records

    # -- inspection --------------------------------------------------------------

    def stats(self) -> list[MailboxStats]:
        """A consistent snapshot of every mailbox header (one lock hold)."""
        with self.lock.held():
            headers = [self._header(slot) for slot in range(self.capacity)]
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
            )
            for slot, h in enumerate(headers)
        ]
