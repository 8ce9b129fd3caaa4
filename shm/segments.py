"""Creating, attaching, finding and removing one server's System V objects.

The creator is the destroyer (TLPI's rule): the server parent creates the
three segments and two semaphores (and, with ``--trace``, the trace segment)
before its first fork and removes them when it stops.  Workers inherit the
attachments through ``fork``.  A server killed with SIGKILL cannot clean
up, so ``create`` first looks for objects with the same keys and removes
them when nobody is using them any more; ``python -m shm cleanup`` does the
same for every port.

A segment is *stale* when no process is attached to it or when the server
pid written in its header is no longer alive.  Workers die with their parent
(they ask the kernel for SIGKILL on parent death, with prctl PR_SET_PDEATHSIG),
so a killed server's segments quickly drop to zero attachments.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

import sysv_ipc

from shm import layout
from shm.directory import Directory
from shm.discovery import live_server_pid, remove_stale
from shm.layout import IpcObject
from shm.locks import BinaryLock, TableLock
from shm.mailboxes import MessageTable
from shm.trace import TracedLock, TraceTable, TraceWriter, forget_writer_after_fork, format_segment
from syscalls import faults

log = logging.getLogger(__name__)


class IpcInUse(Exception):
    """Another live server owns the objects for this port."""


def create_segment(key: int, size: int, mode: int = 0o600) -> sysv_ipc.SharedMemory:
    """Create a zero-filled segment without touching its pages.

    ``sysv_ipc.SharedMemory`` fills a new segment byte by byte with its
    ``init_character``, which makes every page resident in the creator at
    once (64 MiB of mailboxes at 256 clients).  The kernel already hands out
    new segments zero-filled, page by page as they are first used, so the
    segment is created with ``shmget`` directly and then attached.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
    faults.check("shmget")
    if libc.shmget(key, size, sysv_ipc.IPC_CREX | mode) < 0:  # shmget(2): the segment is created here
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise sysv_ipc.ExistentialError(f"a segment with key 0x{key:08x} already exists")
        raise OSError(code, f"shmget(0x{key:08x}, {size}): {os.strerror(code)}")
    return sysv_ipc.SharedMemory(key)


class ServerIpc:
    """The five objects of one server: three segments and two locks.

    ``directory`` (client and group tables) and ``messages`` (the mailboxes)
    are the tables built on them.  A traced server has a sixth object, the
    trace segment (``trace``, a ``shm.trace.TraceTable``); the tables then get
    ``TracedLock``s, and each process records its steps through the writer
    that ``tracer_for`` gives it.
    """

    def __init__(
        self,
        port: int,
        segments: dict[IpcObject, sysv_ipc.SharedMemory],
        locks: dict[IpcObject, BinaryLock],
        owner: bool,
    ) -> None:
        self.port = port
        self.segments = segments
        self.locks = locks
        self.owner = owner
        self.trace: TraceTable | None = None
        # The tables take any TableLock: the plain locks, or traced ones wrapping them.
        directory_lock: TableLock = locks[IpcObject.DIRECTORY_SEMAPHORE]
        messages_lock: TableLock = locks[IpcObject.MESSAGES_SEMAPHORE]
        if IpcObject.TRACE_SEGMENT in segments:
            self.trace = TraceTable(segments[IpcObject.TRACE_SEGMENT])
            directory_lock = TracedLock(
                locks[IpcObject.DIRECTORY_SEMAPHORE], IpcObject.DIRECTORY_SEMAPHORE, self.trace
            )
            messages_lock = TracedLock(
                locks[IpcObject.MESSAGES_SEMAPHORE], IpcObject.MESSAGES_SEMAPHORE, self.trace
            )
            forget_writer_after_fork(self, ServerIpc._forget_writer)
        self.directory = Directory(
            segments[IpcObject.CLIENTS_SEGMENT],
            segments[IpcObject.GROUPS_SEGMENT],
            directory_lock,
        )
        self.messages = MessageTable(segments[IpcObject.MESSAGES_SEGMENT], messages_lock)
        self._closed = False

    def tracer_for(self, ring: int, client_id: int | None = None) -> TraceWriter | None:
        """This process's trace writer, or None when the server is not traced.

        The parent calls ``ipc.tracer_for(0)`` once after ``create``; a worker
        calls ``ipc.tracer_for(1 + slot, client_id)`` first thing after the
        fork.  The writer becomes the one the locks and ``messages.post`` of
        this process record into; call its other methods from the server
        code, each behind ``if tracer is not None`` (see ``TraceWriter``).
        A forked child starts with no writer at all, so it can never write
        into its parent's ring.
        """
        if self.trace is None:
            return None
        writer = self.trace.open_ring(ring, client_id)
        self.trace.writer = writer
        self.messages.tracer = writer
        return writer

    def _forget_writer(self) -> None:
        if self.trace is not None and not self._closed:
            self.trace.writer = None
            self.messages.tracer = None

    @classmethod
    def create(
        cls,
        port: int,
        max_clients: int = layout.DEFAULT_MAX_CLIENTS,
        max_groups: int = layout.DEFAULT_MAX_GROUPS,
        mailbox_bytes: int = layout.DEFAULT_MAILBOX_BYTES,
        trace: bool = False,
        trace_records: int = layout.TRACE_RECORDS_PER_RING,
    ) -> ServerIpc:
        """Create a server's objects, reclaiming a dead server's first.

        With ``trace`` also the trace segment: one ring of ``trace_records``
        events for the parent and one per client slot.  Without it exactly
        the three segments and two semaphores, as always (a trace segment a
        dead traced server left behind is reclaimed with the rest).
        """
        if not 1 <= max_clients <= layout.MAX_CLIENTS_LIMIT:
            raise ValueError(f"max clients must be 1..{layout.MAX_CLIENTS_LIMIT}")
        if mailbox_bytes < layout.RECORD_HEADER_SIZE + layout.MAX_RECORD_PAYLOAD:
            raise ValueError("mailbox too small for one full-length record")
        pid = live_server_pid(port)
        if pid is not None:
            raise IpcInUse(f"server pid {pid} still uses the IPC objects of port {port}")
        for entry in remove_stale(port):
            log.warning(
                "removed stale %s id %d (key 0x%08x) left by a server that died",
                entry.kind,
                entry.id,
                entry.key,
            )
        sizes = {
            IpcObject.CLIENTS_SEGMENT: layout.clients_segment_size(max_clients),
            IpcObject.MESSAGES_SEGMENT: layout.messages_segment_size(max_clients, mailbox_bytes),
            IpcObject.GROUPS_SEGMENT: layout.groups_segment_size(max_groups),
        }
        if trace:
            sizes[IpcObject.TRACE_SEGMENT] = layout.trace_segment_size(max_clients, trace_records)
        segments: dict[IpcObject, sysv_ipc.SharedMemory] = {}
        locks: dict[IpcObject, BinaryLock] = {}
        try:
            for obj, size in sizes.items():
                segments[obj] = create_segment(layout.ipc_key(port, obj), size)
            for obj in layout.SEMAPHORES:
                locks[obj] = BinaryLock.create_available(layout.ipc_key(port, obj))
        except BaseException:
            _destroy(segments, locks)
            raise
        me = os.getpid()
        Directory.format(
            segments[IpcObject.CLIENTS_SEGMENT],
            segments[IpcObject.GROUPS_SEGMENT],
            max_clients,
            max_groups,
            me,
        )
        MessageTable.format(segments[IpcObject.MESSAGES_SEGMENT], max_clients, me)
        if trace:
            format_segment(
                segments[IpcObject.TRACE_SEGMENT], layout.trace_rings(max_clients), trace_records, me
            )
        return cls(port, segments, locks, owner=True)

    @classmethod
    def attach(cls, port: int) -> ServerIpc:
        """Attach to a running server's objects (tests), its trace segment too if it has one."""
        segments = {obj: sysv_ipc.SharedMemory(layout.ipc_key(port, obj)) for obj in layout.SEGMENTS}
        try:
            segments[IpcObject.TRACE_SEGMENT] = sysv_ipc.SharedMemory(
                layout.ipc_key(port, IpcObject.TRACE_SEGMENT)
            )
        except sysv_ipc.ExistentialError:
            pass  # an untraced server
        for obj, segment in segments.items():
            magic, version, *_ = layout.SEGMENT_HEADER.unpack(segment.read(layout.SEGMENT_HEADER.size, 0))
            if magic != layout.SEGMENT_MAGIC or version != layout.LAYOUT_VERSION:
                for seg in segments.values():
                    seg.detach()
                raise ValueError(
                    f"segment {obj.name} of port {port} is not a shmchat v{layout.LAYOUT_VERSION} segment"
                )
        locks = {obj: BinaryLock.attach(layout.ipc_key(port, obj)) for obj in layout.SEMAPHORES}
        return cls(port, segments, locks, owner=False)

    def close(self) -> None:
        """Detach; the owner also removes every object.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.directory.release()
        self.messages.release()
        if self.trace is not None:
            self.trace.release()
        if self.owner:
            _destroy(self.segments, self.locks)
        else:
            for segment in self.segments.values():
                segment.detach()

    def __enter__(self) -> ServerIpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _destroy(segments: dict, locks: dict) -> None:
    for segment in segments.values():
        try:
            segment.remove()
        except sysv_ipc.ExistentialError:
            pass
        try:
            segment.detach()
        except sysv_ipc.Error:
            pass
    for lock in locks.values():
        try:
            lock.remove()
        except sysv_ipc.ExistentialError:
            pass
