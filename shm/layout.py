"""Every byte layout and every IPC key of shmchat, declared in one place.

This module is the ``svshm_xfr.h`` of the project (see TLPI chapter 48): the
records, their ``struct`` formats and offsets, the semaphore indices and the
key scheme live here and nowhere else.  The tables in ``shm.directory``
(clients and groups) and ``shm.mailboxes`` (messages) use these declarations;
nothing else in the project slices shared-memory bytes.
``docs/design.md`` draws the same layouts as byte tables.

All integers are little-endian and the formats use explicit padding (``x``)
so that each field sits where the byte tables say, whatever the platform.

Key scheme
----------
A server owns five System V objects (six when it runs with ``--trace``: the
trace table is a fourth segment).  Their keys are derived from the TCP port
the server listens on, so that a restarted server (or ``python -m shm
cleanup``) can find what a killed one left behind without a state file::

    key = 0x5C4 << 20  |  port << 4  |  object index

``0x5C4`` marks the key as shmchat's; ``ipcs`` shows a server on port 5000
(0x1388) as keys ``0x5c413880`` to ``0x5c413884`` (and ``0x5c413885``, the
trace table, when traced).
"""

from __future__ import annotations

import struct
from enum import IntEnum

from protocol.wire import ID_MAX as ID_MAX  # re-exported: the tables draw ids from it
from protocol.wire import ID_MIN as ID_MIN

KEY_MAGIC = 0x5C4
KEY_MAGIC_SHIFT = 20
KEY_PORT_SHIFT = 4

#: Written at the start of every segment, checked by everything that attaches.
SEGMENT_MAGIC = b"SHMC"
#: Bumped whenever any record below changes shape.
LAYOUT_VERSION = 2


class IpcObject(IntEnum):
    """The low four bits of each key: which object of a server it names."""

    CLIENTS_SEGMENT = 0
    MESSAGES_SEGMENT = 1
    GROUPS_SEGMENT = 2
    DIRECTORY_SEMAPHORE = 3
    MESSAGES_SEMAPHORE = 4
    TRACE_SEGMENT = 5  # only with ``python -m server --trace``


#: The segments every server has.  The trace segment is not one of them: an
#: untraced server has exactly these three.
SEGMENTS = (IpcObject.CLIENTS_SEGMENT, IpcObject.MESSAGES_SEGMENT, IpcObject.GROUPS_SEGMENT)
SEMAPHORES = (IpcObject.DIRECTORY_SEMAPHORE, IpcObject.MESSAGES_SEMAPHORE)


def ipc_key(port: int, obj: IpcObject) -> int:
    """Return the System V key of one object of the server listening on ``port``."""
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return (KEY_MAGIC << KEY_MAGIC_SHIFT) | (port << KEY_PORT_SHIFT) | int(obj)


def split_key(key: int) -> tuple[int, IpcObject] | None:
    """Return ``(port, object)`` for a shmchat key, or None for anyone else's key."""
    key &= 0xFFFFFFFF
    if key >> KEY_MAGIC_SHIFT != KEY_MAGIC:
        return None
    index = key & 0xF
    if index not in IpcObject._value2member_map_:
        return None
    port = (key >> KEY_PORT_SHIFT) & 0xFFFF
    if port == 0:
        return None
    return port, IpcObject(index)


#: ``--ipc posix``: the same objects under names, ``/shmchat-PORT-WHAT``.  A
#: segment shows as ``/dev/shm/shmchat-PORT-WHAT``, a semaphore as
#: ``/dev/shm/sem.shmchat-PORT-WHAT`` (the locks end in ``-lock``).
POSIX_NAMES = {
    IpcObject.CLIENTS_SEGMENT: "clients",
    IpcObject.MESSAGES_SEGMENT: "messages",
    IpcObject.GROUPS_SEGMENT: "groups",
    IpcObject.DIRECTORY_SEMAPHORE: "directory-lock",
    IpcObject.MESSAGES_SEMAPHORE: "messages-lock",
    IpcObject.TRACE_SEGMENT: "trace",
}


def posix_name(port: int, obj: IpcObject) -> str:
    """Return the POSIX name of one object of the server listening on ``port``."""
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return f"/shmchat-{port}-{POSIX_NAMES[obj]}"


def split_posix_name(name: str) -> tuple[int, IpcObject] | None:
    """``(port, object)`` for a shmchat POSIX name (with or without its ``/``), else None."""
    parts = name.lstrip("/").split("-", 2)
    if len(parts) != 3 or parts[0] != "shmchat" or not parts[1].isdigit():
        return None
    port = int(parts[1])
    for obj, what in POSIX_NAMES.items():
        if what == parts[2] and 0 < port < 65536:
            return port, obj
    return None


# ---------------------------------------------------------------------------
# Limits.  Named once, used everywhere (the Redis habit).
# ---------------------------------------------------------------------------

#: Client ids and group ids are drawn from ID_MIN..ID_MAX, imported above from
#: the wire contract (protocol/wire.py) because clients parse ids too.
#: The spec's limit on connected clients.
DEFAULT_MAX_CLIENTS = 5
#: Rows of the group table unless the server is told otherwise (--max-groups).
DEFAULT_MAX_GROUPS = 16
#: The client table is sized at start; the waiters bitmap below caps it.
MAX_CLIENTS_LIMIT = 256
#: The spec's limit on members of a group, the admin included.
MAX_GROUP_MEMBERS = 5
#: Outstanding invitations and join requests kept per group.
MAX_GROUP_INVITES = 8
MAX_GROUP_REQUESTS = 8
#: Payload bytes of one mailbox record (a chat line is capped below this).
MAX_RECORD_PAYLOAD = 64 * 1024 + 256
#: Bytes of ring buffer per client mailbox.  Must hold at least one record.
DEFAULT_MAILBOX_BYTES = 256 * 1024


# ---------------------------------------------------------------------------
# Segment header: the first bytes of every segment.
# ---------------------------------------------------------------------------

#: magic, layout version, record count, server pid, created at (epoch seconds),
#: change counter (bumped under the lock whenever a client slot is claimed or
#: released, so that workers can cache the client list until it moves).
SEGMENT_HEADER = struct.Struct("<4sHHidI")
#: Then the pid of the process holding the lock that guards the segment
#: (clients segment: the directory lock; messages segment: the messages lock),
#: 0 when free.  Only POSIX locks write it (they have no undo: the parent reads
#: it to release the lock of a worker that died holding it, see shm.posix).
LOCK_HOLDER = struct.Struct("<i4x")
LOCK_HOLDER_OFFSET = 24
#: The segment whose header records each lock's holder.
LOCK_HOME = {
    IpcObject.DIRECTORY_SEMAPHORE: IpcObject.CLIENTS_SEGMENT,
    IpcObject.MESSAGES_SEMAPHORE: IpcObject.MESSAGES_SEGMENT,
}
SEGMENT_HEADER_SIZE = 32  # records start 8-aligned
assert SEGMENT_HEADER.size + LOCK_HOLDER.size == SEGMENT_HEADER_SIZE
SEGMENT_EPOCH = struct.Struct("<I")
SEGMENT_EPOCH_OFFSET = 20


# ---------------------------------------------------------------------------
# Client-details table: one fixed record per connection slot.
# ---------------------------------------------------------------------------


class SlotState(IntEnum):
    FREE = 0
    ONLINE = 1


#: state, client id, worker pid, generation, connected at, peer port,
#: peer host (NUL padded), messages sent, messages received.
CLIENT_RECORD = struct.Struct("<B3xIiIdH6x48sQQ")
CLIENT_RECORD_SIZE = CLIENT_RECORD.size  # 96
CLIENT_HOST_BYTES = 48


def clients_segment_size(max_clients: int) -> int:
    return SEGMENT_HEADER_SIZE + max_clients * CLIENT_RECORD_SIZE


# ---------------------------------------------------------------------------
# Group table: one fixed record per group slot.
# ---------------------------------------------------------------------------

#: state (0 free, 1 active), member count, invite count, request count,
#: group id, admin id, created at, members (join order, admin included),
#: invited ids, ids that asked the admin to join.
GROUP_RECORD = struct.Struct(f"<BBBBII4xd{MAX_GROUP_MEMBERS}I{MAX_GROUP_INVITES}I{MAX_GROUP_REQUESTS}I4x")
GROUP_RECORD_SIZE = GROUP_RECORD.size  # 112


def groups_segment_size(max_groups: int) -> int:
    return SEGMENT_HEADER_SIZE + max_groups * GROUP_RECORD_SIZE


# ---------------------------------------------------------------------------
# Message-info table: one mailbox per client slot, each a byte ring of records.
# ---------------------------------------------------------------------------

#: The header's counters: head (bytes consumed, ever), tail (bytes produced,
#: ever), records delivered (ever), owner generation, records pending, times a
#: sender found it full, open flag.  A post and a take read them with one
#: ``unpack_from``; a take writes its changes back with one store.
MAILBOX_FIELDS = struct.Struct("<QQQIIIB")
#: The whole header: the counters, then a bitmap of the slots waiting for room.
MAILBOX_HEADER = struct.Struct(f"{MAILBOX_FIELDS.format}3x{MAX_CLIENTS_LIMIT // 8}s")
MAILBOX_HEADER_SIZE = MAILBOX_HEADER.size  # 72
#: One field alone, where a post or a close changes only that field: each is
#: then a single aligned store, and ``tail`` (for a post) and ``head`` (for a
#: take) are written last, as the commit point, so a process killed halfway
#: leaves the mailbox consistent.
MAILBOX_U64 = struct.Struct("<Q")  # head, tail, delivered
MAILBOX_U32 = struct.Struct("<I")  # generation, pending, full events
MAILBOX_HEAD_OFFSET = 0
MAILBOX_TAIL_OFFSET = 8
MAILBOX_DELIVERED_OFFSET = 16
MAILBOX_GENERATION_OFFSET = 24
MAILBOX_COUNT_OFFSET = 28
MAILBOX_FULL_EVENTS_OFFSET = 32
MAILBOX_OPEN_OFFSET = 36  # one byte: 1 open, 0 closed
MAILBOX_WAITERS_OFFSET = 40
MAILBOX_WAITERS_BYTES = MAX_CLIENTS_LIMIT // 8
assert MAILBOX_FIELDS.size == MAILBOX_OPEN_OFFSET + 1
assert MAILBOX_WAITERS_OFFSET + MAILBOX_WAITERS_BYTES == MAILBOX_HEADER_SIZE


class RecordKind(IntEnum):
    """What a mailbox record carries; the receiving worker renders it."""

    PRIVATE = 1  # /send: bounced to the sender if never delivered
    BROADCAST = 2
    GROUP = 3
    NOTICE = 4  # a finished line from the server (joins, leaves, group news)
    BOUNCE = 5  # a message the receiver never got, returned to its sender
    FILE = 6  # a spooled file to stream to the receiver
    FILE_RESULT = 7  # a receiver's verdict on a file, for its sender
    SHUTDOWN = 8  # the server is going down: say goodbye and exit


#: total length (header included), kind, flags, sender slot, sender id,
#: group id (0 if none), posted at (epoch seconds).
RECORD_HEADER = struct.Struct("<IBBHIId")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 24


def messages_segment_size(max_clients: int, mailbox_bytes: int) -> int:
    return SEGMENT_HEADER_SIZE + max_clients * (MAILBOX_HEADER_SIZE + mailbox_bytes)


def mailbox_offset(slot: int, mailbox_bytes: int) -> int:
    return SEGMENT_HEADER_SIZE + slot * (MAILBOX_HEADER_SIZE + mailbox_bytes)


# ---------------------------------------------------------------------------
# Trace table (``--trace`` only): one ring of fixed-size event records per
# process.  Ring 0 belongs to the parent, ring 1 + slot to the worker of that
# slot.  Each ring has exactly one writer at any time, so it needs no lock:
# see ``shm.trace`` for the protocol (a sequence number written last).
# ---------------------------------------------------------------------------

#: Events kept per ring; the oldest is overwritten by the newest.  A /send
#: writes about six records into its sender's worker's ring (wake, recv,
#: lock, post, unlock, ring) and three into its receiver's (wake, take, send).
TRACE_RECORDS_PER_RING = 1024

#: client id of the ring's process (0 for the parent's ring; written by the
#: parent before it forks the slot's worker), writer pid (written by the
#: writer when it opens the ring), records in the ring.
TRACE_RING_HEADER = struct.Struct("<IiI4x")
TRACE_RING_HEADER_SIZE = TRACE_RING_HEADER.size  # 16

#: seq (1, 2, 3... per ring; 0 = empty or being written; stored LAST, the
#: commit point), then the body: t_ns (CLOCK_MONOTONIC), pid, who (client
#: id, 0 = parent), event, lock (the semaphore's object index: 3 directory,
#: 4 messages), source (of a wake: 1 doorbell, 2 socket), to (receiver's
#: client id), bytes, waited_us, offset (in the receiver's mailbox ring),
#: records, child (pid forked or reaped), status (wait status of a reaped
#: worker), slot (the receiver's, or the forked or reaped worker's).
TRACE_SEQ = struct.Struct("<Q")  # at offset 0 of a record
TRACE_BODY = struct.Struct("<QiIHBBIIIIIiiH6x")  # at offset TRACE_SEQ.size
TRACE_RECORD = struct.Struct(f"<Q{TRACE_BODY.format[1:]}")
TRACE_RECORD_SIZE = TRACE_RECORD.size  # 64
#: The body's first fields (t_ns, pid, who, event): the writer can store them
#: apart from the rest, so that a test can stop it between the two stores.
TRACE_BODY_SPLIT = struct.calcsize("<QiIH")
#: The first field of a ring header: whose ring it is (a client id, 0 for the parent).
TRACE_RING_OWNER = struct.Struct("<I")


class TraceEvent(IntEnum):
    """The ``event`` field of a trace record."""

    ACCEPT = 1  # parent: a connection accepted (slot, to = the new client id)
    FORK = 2  # parent: a worker forked (child, slot, to)
    REAP = 3  # parent: a worker reaped by waitpid (child, slot, to, status)
    RECV = 4  # worker: bytes read from its client's socket
    LOCK = 5  # any: a table lock taken (lock, waited_us)
    UNLOCK = 6  # any: a table lock given back (lock)
    POST = 7  # any: a record copied into a mailbox (to, slot, offset, bytes)
    RING = 8  # any: a doorbell rung (to, slot)
    WAKE = 9  # worker: epoll returned (source)
    TAKE = 10  # worker: mail taken out of its mailbox (records, bytes)
    SEND = 11  # worker: bytes written to its client's socket
    UNDO = 12  # never written: the reader derives it (a lock SEM_UNDO gave back)
    RELEASED = 13  # parent, POSIX only: it posted V for a lock a dead worker held (lock, child)


class WakeSource(IntEnum):
    DOORBELL = 1
    SOCKET = 2


def trace_rings(max_clients: int) -> int:
    """The parent's ring and one per client slot."""
    return 1 + max_clients


def trace_ring_offset(ring: int, records: int = TRACE_RECORDS_PER_RING) -> int:
    return SEGMENT_HEADER_SIZE + ring * (TRACE_RING_HEADER_SIZE + records * TRACE_RECORD_SIZE)


def trace_segment_size(max_clients: int, records: int = TRACE_RECORDS_PER_RING) -> int:
    return trace_ring_offset(trace_rings(max_clients), records)
