"""A safe, read-only copy of a running server's tables (for the inspector).

``take_snapshot(port)`` reads a running server's System V objects the way any
other process could and copies what it finds into plain dataclasses: the
client and group tables, each mailbox's counters and the headers of its
oldest pending records, the two semaphores, and the objects as ``ipcs``
lists them.  Nothing here draws; ``inspector/`` turns a ``Snapshot`` into
text or JSON.

How it stays out of the way
---------------------------
* The segments are attached with ``SHM_RDONLY``: the kernel itself refuses
  any write, so a bug here could crash the inspector, never the chat.
* Each table is read under its lock, taken once for that one read (a few
  record copies) and given back at once.  The lock is only ever *tried*
  (``IPC_NOWAIT``); if it stays busy for ``LOCK_PATIENCE`` seconds the table is
  reported as locked instead of waited for, so a wedged server cannot hang
  the inspector either.  The semaphores are read (``GETVAL``, ``GETPID``)
  before any lock is taken, so "last semop by" shows the server's processes.
* Every call attaches, reads and detaches, so a watching inspector never
  keeps a removed segment alive: when the server stops, ``ipcs`` is clean at
  once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import sysv_ipc

from shm import layout
from shm.backend import MISSING, Region, backend
from shm.directory import ClientInfo, Directory, GroupInfo
from shm.discovery import SHM_DIR, IpcEntry, list_objects
from shm.layout import IpcObject
from shm.locks import BinaryLock, HeldByBlock
from shm.mailboxes import MailboxStats, MessageTable
from syscalls.processes import process_state

#: How long a table lock may stay busy before the table is reported as locked.
LOCK_PATIENCE = 1.0
#: Pending record headers shown per mailbox.
PEEK_RECORDS = 4


class NotRunning(Exception):
    """No server's objects for this port (or they vanished mid-read)."""


class LockBusy(Exception):
    """A table lock stayed held for longer than LOCK_PATIENCE."""


class PatientLock(HeldByBlock):
    """A table lock that is only ever tried, for ``patience`` seconds at most.

    The reads the inspector makes (``Directory.snapshot``,
    ``MessageTable.stats``) take their lock with ``lock.held()``; handing the
    tables this instead of the server's ``BinaryLock`` is what makes the
    inspector unable to wait on a lock forever.
    """

    def __init__(self, lock: BinaryLock, patience: float = LOCK_PATIENCE) -> None:
        self.lock = lock
        self.patience = patience

    def reserve(self) -> None:
        """Take the lock, or raise LockBusy once it stayed busy for ``patience`` s.

        A timed wait in the kernel (semtimedop), not a loop of tries: the
        inspector sleeps while it waits, like any other waiter.
        """
        if not self.lock.reserve_within(self.patience):
            raise LockBusy(f"held for over {self.patience:g} s by another process")

    def release(self) -> None:
        self.lock.release()


@dataclass
class SemaphoreView:
    """One table lock as ``semctl`` (System V) or ``sem_getvalue`` and the header (POSIX) report it.

    Read before any lock is taken.  A POSIX semaphore tells only its value:
    ``waiting`` is -1 (unknown), ``last_pid`` is the holder recorded in the
    segment header (0 when free), ``changed_at`` the file's modification time.
    """

    obj: IpcObject
    key: int
    id: int
    value: int
    waiting: int  # processes blocked waiting to take it (-1: POSIX cannot tell)
    last_pid: int
    changed_at: float
    mode: int
    name: str = ""  # POSIX name
    #: With --watch, the last process before this inspector's own reads.
    earlier_pid: int = 0
    earlier_at: float = 0.0


@dataclass
class Snapshot:
    """Everything the inspector shows, copied out of shared memory at ``taken_at``.

    A table whose lock stayed busy is ``None``, with the reason in its
    ``*_error`` field, so that one wedged lock still leaves the rest readable.
    """

    port: int
    taken_at: float
    server_pid: int
    server_started: float
    server_state: str | None  # from /proc, None if the pid is gone
    objects: list[IpcEntry]
    modes: dict[int | str, int]  # IPC id (System V) or name (POSIX) -> permission bits
    semaphores: list[SemaphoreView]
    capacity: int
    group_capacity: int
    mailbox_bytes: int
    clients: list[ClientInfo] | None = None
    groups: list[GroupInfo] | None = None
    directory_error: str | None = None
    mailboxes: list[MailboxStats] | None = None
    messages_error: str | None = None
    processes: dict[int, str | None] = field(default_factory=dict)  # pid -> state letter
    api: str = "sysv"

    def mailbox_of(self, client: ClientInfo) -> MailboxStats | None:
        """The client's own mailbox, not one left open by the slot's previous owner."""
        if self.mailboxes is None or client.slot >= len(self.mailboxes):
            return None
        box = self.mailboxes[client.slot]
        return box if box.open and box.generation == client.generation else None

    def who(self, pid: int) -> str:
        """What a pid is to this server: the parent, a worker, or someone else."""
        if pid == self.server_pid:
            return "server parent"
        if pid == os.getpid():
            return "this inspector"
        for client in self.clients or []:
            if client.online and client.pid == pid:
                return f"worker of {client.client_id}"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                words = cmdline.read().split(b"\0")
        except OSError:
            return "exited"
        if b"inspect" in words:
            return "an inspector"
        return "other process"


def _read_header(view: memoryview) -> tuple:
    fields = layout.SEGMENT_HEADER.unpack_from(view, 0)
    if fields[0] != layout.SEGMENT_MAGIC or fields[1] != layout.LAYOUT_VERSION:
        raise NotRunning(f"a segment is not a shmchat v{layout.LAYOUT_VERSION} segment")
    return fields


def _sysv_semaphore(obj: IpcObject, entry: IpcEntry) -> SemaphoreView:
    sem = sysv_ipc.Semaphore(entry.key)
    return SemaphoreView(
        obj, sem.key, sem.id, sem.value, sem.waiting_for_nonzero, sem.last_pid, sem.o_time, sem.mode
    )


def _posix_semaphore(obj: IpcObject, entry: IpcEntry, headers: dict[IpcObject, memoryview]) -> SemaphoreView:
    lock = backend("posix").attach_lock(entry.port, obj)
    try:
        value = lock.value
    finally:
        lock.close()
    holder = layout.LOCK_HOLDER.unpack_from(headers[layout.LOCK_HOME[obj]], layout.LOCK_HOLDER_OFFSET)[0]
    info = os.stat(f"{SHM_DIR}/sem.{entry.name.lstrip('/')}")
    return SemaphoreView(obj, 0, 0, value, -1, holder, info.st_mtime, info.st_mode & 0o777, entry.name)


def take_snapshot(port: int, patience: float = LOCK_PATIENCE, peek: int = PEEK_RECORDS) -> Snapshot:
    """Read everything there is to show about the server on ``port``."""
    objects = list_objects(port)
    apis = {e.api for e in objects}
    api = "posix" if apis == {"posix"} else "sysv"
    objects = [e for e in objects if e.api == api]
    segments = {e.obj: e for e in objects if e.kind == "shm"}
    sems = {e.obj: e for e in objects if e.kind == "sem"}
    missing = [o.name for o in (*layout.SEGMENTS, *layout.SEMAPHORES) if o not in segments and o not in sems]
    if missing:
        first = layout.ipc_key(port, IpcObject.CLIENTS_SEGMENT)
        raise NotRunning(
            f"no shmchat server on port {port}: no IPC objects with keys 0x{first:08x}..0x{first + 4:08x}"
            f" or names /shmchat-{port}-*"
            if len(missing) == 5
            else f"the server on port {port} is incomplete or going away (missing {', '.join(missing)})"
        )
    ipc = backend(api)
    attached: dict[IpcObject, Region] = {}
    try:
        try:
            for obj in layout.SEGMENTS:
                attached[obj] = ipc.open_readonly(segments[obj].ident)
            # The semaphores before any lock is taken: taking one would make us its last user.
            if api == "sysv":
                views = [_sysv_semaphore(obj, sems[obj]) for obj in layout.SEMAPHORES]
            else:
                headers = {obj: region.view for obj, region in attached.items()}
                views = [_posix_semaphore(obj, sems[obj], headers) for obj in layout.SEMAPHORES]
            modes: dict[int | str, int] = {segments[obj].ident: attached[obj].mode for obj in layout.SEGMENTS}
            for view in views:
                modes[view.name or view.id] = view.mode
            return _read_tables(port, api, objects, modes, views, attached, patience, peek)
        finally:
            for region in attached.values():
                region.close()
    except (*MISSING, FileNotFoundError) as exc:
        raise NotRunning(f"the server on port {port} went away while it was being read ({exc})") from None


def _read_tables(
    port: int,
    api: str,
    objects: list[IpcEntry],
    modes: dict[int | str, int],
    semaphores: list[SemaphoreView],
    attached: dict[IpcObject, Region],
    patience: float,
    peek: int,
) -> Snapshot:
    header = _read_header(attached[IpcObject.CLIENTS_SEGMENT].view)
    for obj in (IpcObject.MESSAGES_SEGMENT, IpcObject.GROUPS_SEGMENT):
        _read_header(attached[obj].view)
    server_pid, started = header[3], header[4]
    ipc = backend(api)
    plain = {obj: ipc.attach_lock(port, obj) for obj in layout.SEMAPHORES}
    locks = {obj: PatientLock(lock, patience) for obj, lock in plain.items()}
    directory = Directory(
        attached[IpcObject.CLIENTS_SEGMENT].view,
        attached[IpcObject.GROUPS_SEGMENT].view,
        locks[IpcObject.DIRECTORY_SEMAPHORE],  # a TableLock: the inspector's reads only call .held()
    )
    try:
        messages = MessageTable(
            attached[IpcObject.MESSAGES_SEGMENT].view, locks[IpcObject.MESSAGES_SEMAPHORE]
        )
    except BaseException:
        directory.release()
        raise
    snap = Snapshot(
        port=port,
        taken_at=time.time(),
        server_pid=server_pid,
        server_started=started,
        server_state=process_state(server_pid),
        objects=objects,
        modes=modes,
        semaphores=semaphores,
        capacity=directory.capacity,
        group_capacity=directory.group_capacity,
        mailbox_bytes=messages.mailbox_bytes,
        api=api,
    )
    try:
        try:
            clients, groups = directory.snapshot()  # one hold of the directory lock
            snap.clients = clients
            snap.groups = sorted(groups, key=lambda g: g.created_at)
        except LockBusy as exc:
            snap.directory_error = f"directory lock {exc}; table not read"
        try:
            snap.mailboxes = messages.stats(peek=peek)  # one hold of the messages lock
        except LockBusy as exc:
            snap.messages_error = f"messages lock {exc}; table not read"
    finally:
        directory.release()
        messages.release()
        for lock in plain.values():
            lock.close()
    for client in snap.clients or []:
        if client.online and client.pid:
            snap.processes[client.pid] = process_state(client.pid)
    return snap
