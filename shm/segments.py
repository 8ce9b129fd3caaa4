"""Creating, attaching and removing one server's objects, on either IPC API.

The creator is the destroyer (TLPI's rule): the server parent creates the
three segments and two semaphores (and, with ``--trace``, the trace segment)
before its first fork and removes them when it stops.  Workers inherit the
attachments (or mappings) through ``fork``.  A server killed with SIGKILL
cannot clean up, so ``create`` first looks for objects of the same port and
removes them when nobody is using them any more (``shm.discovery``);
``python -m shm cleanup`` does the same for every port.

Which API makes the objects (``--ipc sysv``, the default, or ``--ipc
posix``) is the ``api`` argument; ``shm.backend`` names the module that does
it.  Everything above this module is the same on both.

Workers die with their parent (they ask the kernel for SIGKILL on parent
death, with prctl PR_SET_PDEATHSIG), so a killed server's segments quickly
drop to zero attachments.
"""

from __future__ import annotations

import logging
import os

from shm import layout
from shm.backend import APIS, MISSING, Region, backend
from shm.directory import Directory
from shm.discovery import list_objects, live_server_pid, remove_stale
from shm.layout import IpcObject
from shm.locks import BinaryLock, TableLock
from shm.mailboxes import MessageTable
from shm.trace import TracedLock, TraceTable, TraceWriter, forget_writer_after_fork, format_segment

log = logging.getLogger(__name__)


class IpcInUse(Exception):
    """Another live server owns the objects for this port."""


class ServerIpc:
    """The five objects of one server: three regions and two locks.

    ``directory`` (client and group tables) and ``messages`` (the mailboxes)
    are the tables built on them.  A traced server has a sixth object, the
    trace segment (``trace``, a ``shm.trace.TraceTable``); the tables then get
    ``TracedLock``s, and each process records its steps through the writer
    that ``tracer_for`` gives it.
    """

    def __init__(
        self,
        port: int,
        api: str,
        regions: dict[IpcObject, Region],
        locks: dict[IpcObject, BinaryLock],
        owner: bool,
    ) -> None:
        self.port = port
        self.api = api
        self.regions = regions
        self.locks = locks
        self.owner = owner
        for obj, lock in locks.items():
            lock.keep_holder_in(regions[layout.LOCK_HOME[obj]].view)
        self.trace: TraceTable | None = None
        # The tables take any TableLock: the plain locks, or traced ones wrapping them.
        directory_lock: TableLock = locks[IpcObject.DIRECTORY_SEMAPHORE]
        messages_lock: TableLock = locks[IpcObject.MESSAGES_SEMAPHORE]
        if IpcObject.TRACE_SEGMENT in regions:
            self.trace = TraceTable(regions[IpcObject.TRACE_SEGMENT].view)
            directory_lock = TracedLock(
                locks[IpcObject.DIRECTORY_SEMAPHORE], IpcObject.DIRECTORY_SEMAPHORE, self.trace
            )
            messages_lock = TracedLock(
                locks[IpcObject.MESSAGES_SEMAPHORE], IpcObject.MESSAGES_SEMAPHORE, self.trace
            )
            forget_writer_after_fork(self, ServerIpc._forget_writer)
        self.directory = Directory(
            regions[IpcObject.CLIENTS_SEGMENT].view,
            regions[IpcObject.GROUPS_SEGMENT].view,
            directory_lock,
        )
        self.messages = MessageTable(regions[IpcObject.MESSAGES_SEGMENT].view, messages_lock)
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
        api: str = APIS[0],
    ) -> ServerIpc:
        """Create a server's objects with ``api`` ("sysv" or "posix"), reclaiming a dead server's first.

        With ``trace`` also the trace segment: one ring of ``trace_records``
        events for the parent and one per client slot.  Without it exactly
        the three segments and two semaphores, as always (a trace segment a
        dead traced server left behind is reclaimed with the rest).
        """
        ipc = backend(api)
        if not 1 <= max_clients <= layout.MAX_CLIENTS_LIMIT:
            raise ValueError(f"max clients must be 1..{layout.MAX_CLIENTS_LIMIT}")
        if mailbox_bytes < layout.RECORD_HEADER_SIZE + layout.MAX_RECORD_PAYLOAD:
            raise ValueError("mailbox too small for one full-length record")
        pid = live_server_pid(port)
        if pid is not None:
            raise IpcInUse(f"server pid {pid} still uses the IPC objects of port {port}")
        removed = remove_stale(port)
        if removed:  # one line, however many objects the dead server left
            log.warning(
                "removed stale IPC objects of port %d, left by a server that died (%d): %s",
                port,
                len(removed),
                ", ".join(e.label for e in removed),
            )
        sizes = {
            IpcObject.CLIENTS_SEGMENT: layout.clients_segment_size(max_clients),
            IpcObject.MESSAGES_SEGMENT: layout.messages_segment_size(max_clients, mailbox_bytes),
            IpcObject.GROUPS_SEGMENT: layout.groups_segment_size(max_groups),
        }
        if trace:
            sizes[IpcObject.TRACE_SEGMENT] = layout.trace_segment_size(max_clients, trace_records)
        regions: dict[IpcObject, Region] = {}
        locks: dict[IpcObject, BinaryLock] = {}
        try:
            for obj, size in sizes.items():
                regions[obj] = ipc.create_region(port, obj, size)
            for obj in layout.SEMAPHORES:
                locks[obj] = ipc.create_lock(port, obj)
        except BaseException:
            _destroy(regions, locks)
            raise
        me = os.getpid()
        Directory.format(
            regions[IpcObject.CLIENTS_SEGMENT].view,
            regions[IpcObject.GROUPS_SEGMENT].view,
            max_clients,
            max_groups,
            me,
        )
        MessageTable.format(regions[IpcObject.MESSAGES_SEGMENT].view, max_clients, me)
        if trace:
            format_segment(
                regions[IpcObject.TRACE_SEGMENT].view, layout.trace_rings(max_clients), trace_records, me
            )
        return cls(port, api, regions, locks, owner=True)

    @classmethod
    def attach(cls, port: int) -> ServerIpc:
        """Attach to a running server's objects (tests), its trace segment too if it has one."""
        apis = {e.api for e in list_objects(port) if e.obj is IpcObject.CLIENTS_SEGMENT}
        if len(apis) != 1:
            raise ValueError(f"no one shmchat server's objects on port {port}")
        api = apis.pop()
        ipc = backend(api)
        regions: dict[IpcObject, Region] = {}
        try:
            for obj in (*layout.SEGMENTS, IpcObject.TRACE_SEGMENT):
                try:
                    regions[obj] = ipc.attach_region(port, obj)
                except MISSING:
                    if obj is not IpcObject.TRACE_SEGMENT:  # an untraced server has none
                        raise
            for obj, region in regions.items():
                magic, version, *_ = layout.SEGMENT_HEADER.unpack_from(region.view, 0)
                if magic != layout.SEGMENT_MAGIC or version != layout.LAYOUT_VERSION:
                    raise ValueError(
                        f"segment {obj.name} of port {port} is not a shmchat v{layout.LAYOUT_VERSION} segment"
                    )
        except BaseException:
            for region in regions.values():
                region.close()
            raise
        locks = {obj: ipc.attach_lock(port, obj) for obj in layout.SEMAPHORES}
        return cls(port, api, regions, locks, owner=False)

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
            _destroy(self.regions, self.locks)
        else:
            _detach(self.regions, self.locks)

    def __enter__(self) -> ServerIpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detach(regions: dict[IpcObject, Region], locks: dict[IpcObject, BinaryLock]) -> None:
    """Let go of this process's handles; the objects stay."""
    for lock in locks.values():
        lock.close()
    for region in regions.values():
        region.close()


def _destroy(regions: dict[IpcObject, Region], locks: dict[IpcObject, BinaryLock]) -> None:
    """Remove every object (the creator, at the end), then let go of the handles."""
    for region in regions.values():
        region.remove()
    for lock in locks.values():
        lock.remove()
    _detach(regions, locks)
