"""POSIX IPC behind the tables: ``shm_open`` + ``mmap``, and named semaphores (``sem_open``).

``--ipc posix``.  The same tables, in the same bytes, as ``shm.sysv``; what
differs is only how the objects are made, found, locked and removed:

* **Names, not keys.**  ``/shmchat-5000-clients`` (``layout.posix_name``),
  created with ``O_CREAT | O_EXCL`` and mode 0600, shows as a file in
  ``/dev/shm`` (a semaphore as ``/dev/shm/sem.shmchat-5000-…-lock``), owned by
  the creator: ``ls -l /dev/shm`` shows what ``ipcs`` shows for System V.
* **Removal is unlinking a name.**  The memory and the semaphore stay usable by
  every process that has them open or mapped; like a System V object, a name
  outlives a server killed with SIGKILL, until someone unlinks it.
* **No undo.**  A POSIX semaphore has no SEM_UNDO: a worker killed while it
  holds a lock would leave it at 0 for ever and stall everybody.  So the
  holder stores its pid in the header of the segment the lock guards
  (``layout.LOCK_HOLDER``) right after P, and clears it right before V; the
  parent, when it reaps a worker, calls ``reclaim_from`` on each lock, which
  posts V for a holder that is dead.  A worker killed between P and that store
  leaves no pid: the parent's bounded wait (``sem_timedwait``) then finds the
  lock held by nobody it can name (``holder`` 0); see docs/design.md, "POSIX
  IPC: what SEM_UNDO gave for free".
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections.abc import Callable

import posix_ipc

from shm import layout
from shm.layout import LOCK_HOLDER, LOCK_HOLDER_OFFSET, IpcObject
from shm.locks import BinaryLock
from syscalls import faults

NAME = "posix"
#: What this API raises when an object is missing, and for any failure.
Missing = posix_ipc.ExistentialError
Error = posix_ipc.Error
#: Where the kernel shows the names (a tmpfs).
SHM_DIR = "/dev/shm"


def _posix_error(code: int) -> BaseException:
    """What posix_ipc raises when a call fails with ``code`` (for syscalls.faults)."""
    if code == errno.EINTR:
        return posix_ipc.SignalError("The wait was interrupted by a signal")
    if code == errno.EEXIST:
        return posix_ipc.ExistentialError(os.strerror(code))
    if code == errno.EACCES:
        return posix_ipc.PermissionsError(os.strerror(code))
    if code == errno.EINVAL:
        return posix_ipc.ExistentialError(f"the semaphore is gone ({os.strerror(code)})")
    return posix_ipc.Error(os.strerror(code))


_shm_open = faults.wrap("shm_open", posix_ipc.SharedMemory, _posix_error)
_sem_open = faults.wrap("sem_open", posix_ipc.Semaphore, _posix_error)


class PosixLock(BinaryLock):
    """A mutex backed by one POSIX named semaphore that records its holder's pid."""

    def __init__(self, semaphore: posix_ipc.Semaphore) -> None:
        super().__init__()
        self._sem = semaphore
        self._wait = faults.wrap("sem_wait", semaphore.acquire, _posix_error)
        self._holder: memoryview | None = None

    def keep_holder_in(self, header: memoryview) -> None:
        """Record the holder in the ``LOCK_HOLDER`` field of this segment header."""
        self._holder = header[LOCK_HOLDER_OFFSET : LOCK_HOLDER_OFFSET + LOCK_HOLDER.size]

    def _record(self, pid: int) -> None:
        if self._holder is not None:
            self._holder[:] = LOCK_HOLDER.pack(pid)  # a store into shared memory: one aligned word

    def acquire(self) -> None:
        """sem_wait, then store this pid as the holder; retried after signals."""
        while True:
            try:
                self._wait()
                break
            except posix_ipc.SignalError:
                continue  # EINTR: nothing was taken; wait again
        self._record(os.getpid())

    def reserve_within(self, seconds: float) -> bool:
        """sem_timedwait: sleeps in the kernel; False once ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._wait(max(0.0, deadline - time.monotonic()))
                break
            except posix_ipc.BusyError:
                return False
            except posix_ipc.SignalError:
                continue  # EINTR (SIGCHLD in the parent): wait out the rest
        self._record(os.getpid())
        return True

    def try_reserve(self) -> bool:
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            return False
        self._record(os.getpid())
        return True

    def release(self) -> None:
        """Clear the holder, then sem_post (which no signal interrupts)."""
        self._record(0)
        self._sem.release()

    def holder(self) -> int:
        """The pid the holder recorded; 0 when free, or when it died before storing it."""
        if self._holder is None:
            return 0
        return int(LOCK_HOLDER.unpack(self._holder)[0])

    def reclaim_from(self, dead: int, before_v: Callable[[], None] | None = None) -> bool:
        """Post V for ``dead`` if it is the recorded holder: what SEM_UNDO does on System V."""
        if dead <= 0 or self.holder() != dead:
            return False
        self._record(0)
        if before_v is not None:
            before_v()
        self._sem.release()
        return True

    @property
    def value(self) -> int:
        return int(self._sem.value)

    @property
    def label(self) -> str:
        return self._sem.name

    def close(self) -> None:
        if self._holder is not None:
            self._holder.release()
            self._holder = None
        self._sem.close()  # sem_close

    def remove(self) -> None:
        try:
            self._sem.unlink()  # sem_unlink: the name goes; open handles keep working
        except posix_ipc.ExistentialError:
            pass


class PosixRegion:
    """One mapped shared-memory object: ``view`` is its bytes."""

    def __init__(self, name: str, mapping: mmap.mmap, mode: int) -> None:
        self.name = self.label = name
        self.mode = mode
        self._mapping = mapping
        self.view = memoryview(mapping)

    def close(self) -> None:
        """munmap.  Every view of the bytes must be released first (mmap refuses otherwise)."""
        self.view.release()
        self._mapping.close()

    def remove(self) -> None:
        """shm_unlink: the name goes; the memory stays while anyone has it mapped."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass


def _map(name: str, memory: posix_ipc.SharedMemory, writable: bool = True) -> PosixRegion:
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        mode = os.fstat(memory.fd).st_mode & 0o777
        return PosixRegion(name, mmap.mmap(memory.fd, memory.size, prot=prot), mode)  # mmap(2), MAP_SHARED
    finally:
        memory.close_fd()  # the mapping keeps the memory; the descriptor is no longer needed


# -- the backend interface (shm.backend.Backend) ----------------------------------


def create_region(port: int, obj: IpcObject, size: int) -> PosixRegion:
    """shm_open(O_CREAT | O_EXCL, 0600) and ftruncate: zero-filled, no page touched yet."""
    name = layout.posix_name(port, obj)
    memory = _shm_open(name, posix_ipc.O_CREX, mode=0o600, size=size)
    return _map(name, memory)


def attach_region(port: int, obj: IpcObject) -> PosixRegion:
    name = layout.posix_name(port, obj)
    return _map(name, posix_ipc.SharedMemory(name))


def open_readonly(ident: int | str) -> PosixRegion:
    """Open by name O_RDONLY and map PROT_READ: the kernel refuses any write through it."""
    name = str(ident)
    return _map(name, posix_ipc.SharedMemory(name, read_only=True), writable=False)


def create_lock(port: int, obj: IpcObject) -> PosixLock:
    """sem_open(O_CREAT | O_EXCL, 0600, 1): a lock that starts free."""
    return PosixLock(_sem_open(layout.posix_name(port, obj), posix_ipc.O_CREX, mode=0o600, initial_value=1))


def attach_lock(port: int, obj: IpcObject) -> PosixLock:
    return PosixLock(posix_ipc.Semaphore(layout.posix_name(port, obj)))


def remove_object(kind: str, ident: int | str) -> bool:
    """Unlink a segment or semaphore name (for cleanup); False if it was already gone."""
    try:
        if kind == "shm":
            posix_ipc.unlink_shared_memory(str(ident))
        else:
            posix_ipc.unlink_semaphore(str(ident))
    except posix_ipc.ExistentialError:
        return False
    return True
