"""System V IPC behind the tables: segments (shmget, shmat) and semaphores (semget, semop).

The card's design and the default (``--ipc sysv``).  Objects are named by
numeric keys derived from the port (``layout.ipc_key``), listed by ``ipcs``
and ``/proc/sysvipc``, and stay until ``IPC_RMID`` (a segment marked for
removal lingers until its last process detaches).

The lock is a System V semaphore with ``undo`` on for every handle, so the
kernel adds back what a process took when that process dies: a worker killed
with SIGKILL inside a critical section never leaves the lock held.  Undo
restores the count, not the data: critical sections are kept to a few record
copies and the parent repairs a dead worker's rows.  A blocked ``acquire()``
that a signal interrupts raises the base ``sysv_ipc.Error`` ("Signaled while
waiting"); it is retried.  The bounded wait is ``semtimedop``, through ctypes:
the sysv_ipc wheel on Linux has no semaphore timeouts.

``shm.posix`` is the same interface on POSIX IPC; ``shm.backend`` names both.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

import sysv_ipc

from shm import layout
from shm.layout import IpcObject
from shm.locks import BinaryLock
from syscalls import faults

NAME = "sysv"
#: What this API raises when an object is missing, and for any failure.
Missing = sysv_ipc.ExistentialError
Error = sysv_ipc.Error


def _sysv_error(code: int) -> BaseException:
    """What sysv_ipc raises when semop fails with ``code`` (for syscalls.faults)."""
    if code == errno.EINTR:
        return sysv_ipc.Error("Signaled while waiting")
    if code in (errno.EIDRM, errno.EINVAL):
        return sysv_ipc.ExistentialError(f"the semaphore is gone ({os.strerror(code)})")
    if code == errno.EACCES:
        return sysv_ipc.PermissionsError("permission denied")
    return sysv_ipc.Error(os.strerror(code))


def _interrupted(exc: sysv_ipc.Error) -> bool:
    """sysv_ipc reports EINTR as its base Error with this text, and nothing else so."""
    return type(exc) is sysv_ipc.Error and str(exc).startswith("Signaled")


_semget = faults.wrap("semget", sysv_ipc.Semaphore, _sysv_error)


class _Sembuf(ctypes.Structure):
    _fields_ = (("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short))


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_libc = ctypes.CDLL(None, use_errno=True)
_SEM_UNDO = 0x1000  # <sys/sem.h>


def _semtimedop(semid: int, op: _Sembuf, limit: _Timespec) -> int:
    """semtimedop(2): 0, or the errno it failed with."""
    try:
        faults.check("semop")
    except OSError as exc:  # an injected failure takes the same path as a real one (EINTR: retried)
        return exc.errno or errno.EIO
    if _libc.semtimedop(semid, ctypes.byref(op), 1, ctypes.byref(limit)) == 0:
        return 0
    return ctypes.get_errno()


def _timed_p(semid: int, seconds: float) -> bool:
    """semop P with SEM_UNDO that gives up after ``seconds``; False on time-out."""
    op = _Sembuf(0, -1, _SEM_UNDO)
    whole = int(seconds)
    limit = _Timespec(whole, int((seconds - whole) * 1e9))
    while True:
        code = _semtimedop(semid, op, limit)
        if code == 0:
            return True
        if code == errno.EAGAIN:
            return False
        if code != errno.EINTR:  # EINTR: a signal came (SIGCHLD); wait again
            raise _sysv_error(code)


class SysvLock(BinaryLock):
    """A mutex backed by one System V semaphore, SEM_UNDO on."""

    def __init__(self, semaphore: sysv_ipc.Semaphore) -> None:
        super().__init__()
        semaphore.undo = True
        semaphore.block = True
        self._sem = semaphore
        # semop, through the fault-injection wrapper (the bound methods themselves
        # unless a test set SHMCHAT_FAULTS).
        self._acquire = faults.wrap("semop", semaphore.acquire, _sysv_error)
        self._release = faults.wrap("semop", semaphore.release, _sysv_error)

    @classmethod
    def create_available(cls, key: int, mode: int = 0o600) -> SysvLock:
        """Create a new semaphore whose lock is free (value 1)."""
        return cls(_semget(key, sysv_ipc.IPC_CREX, mode=mode, initial_value=1))  # semget(2) + semctl SETVAL

    @classmethod
    def attach(cls, key: int) -> SysvLock:
        """Open an existing semaphore by key (for the inspector and tests)."""
        return cls(sysv_ipc.Semaphore(key))

    def acquire(self) -> None:
        """semop P with SEM_UNDO; retried after signals."""
        while True:
            try:
                self._acquire()
                return
            except sysv_ipc.Error as exc:
                if not _interrupted(exc):
                    raise
                # "Signaled while waiting": EINTR.  Nothing was taken; wait again.

    def reserve_within(self, seconds: float) -> bool:
        """semtimedop P with SEM_UNDO: no polling, however long the wait."""
        return _timed_p(self._sem.id, seconds)

    def try_reserve(self) -> bool:
        self._sem.block = False
        try:
            self._sem.acquire()
            return True
        except sysv_ipc.BusyError:
            return False
        finally:
            self._sem.block = True

    def release(self) -> None:
        """semop V with SEM_UNDO; retried after signals."""
        while True:
            try:
                self._release()
                return
            except sysv_ipc.Error as exc:
                if not _interrupted(exc):
                    raise
                # EINTR: nothing was given back yet; try again.

    def holder(self) -> int:
        """semctl GETPID: the last pid to operate on it, which for a held lock is its holder."""
        return self._sem.last_pid

    def reclaim_from(self, dead: int, before_v: Callable[[], None] | None = None) -> bool:
        return False  # the kernel's SEM_UNDO gave it back when ``dead`` died

    @property
    def value(self) -> int:
        return self._sem.value

    @property
    def label(self) -> str:
        return f"key 0x{self._sem.key:08x}"

    @property
    def id(self) -> int:
        return self._sem.id

    @property
    def key(self) -> int:
        return self._sem.key

    def remove(self) -> None:
        try:
            self._sem.remove()  # semctl IPC_RMID
        except sysv_ipc.ExistentialError:
            pass  # removed already (ipcrm)


class SysvRegion:
    """One attached segment: ``view`` is its bytes."""

    def __init__(self, segment: sysv_ipc.SharedMemory) -> None:
        self.segment = segment
        self.view = memoryview(segment)
        self.label = f"key 0x{segment.key:08x}"
        self.mode = segment.mode

    def close(self) -> None:
        """Detach (shmdt).  Every view of the bytes must be released first: detaching under one segfaults."""
        self.view.release()
        try:
            self.segment.detach()
        except sysv_ipc.Error:
            pass

    def remove(self) -> None:
        """Mark for removal (IPC_RMID); it goes when the last process detaches."""
        try:
            self.segment.remove()
        except sysv_ipc.ExistentialError:
            pass


def _create_segment(key: int, size: int, mode: int = 0o600) -> sysv_ipc.SharedMemory:
    """Create a zero-filled segment without touching its pages.

    ``sysv_ipc.SharedMemory`` fills a new segment byte by byte with its
    ``init_character``, which makes every page resident in the creator at
    once (64 MiB of mailboxes at 256 clients).  The kernel already hands out
    new segments zero-filled, page by page as they are first used, so the
    segment is created with ``shmget`` directly and then attached.
    """
    _libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
    faults.check("shmget")
    if _libc.shmget(key, size, sysv_ipc.IPC_CREX | mode) < 0:  # shmget(2): the segment is created here
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise sysv_ipc.ExistentialError(f"a segment with key 0x{key:08x} already exists")
        raise OSError(code, f"shmget(0x{key:08x}, {size}): {os.strerror(code)}")
    return sysv_ipc.SharedMemory(key)  # shmat(2)


# -- the backend interface (shm.backend.Backend) ----------------------------------


def create_region(port: int, obj: IpcObject, size: int) -> SysvRegion:
    return SysvRegion(_create_segment(layout.ipc_key(port, obj), size))


def attach_region(port: int, obj: IpcObject) -> SysvRegion:
    return SysvRegion(sysv_ipc.SharedMemory(layout.ipc_key(port, obj)))


def open_readonly(ident: int | str) -> SysvRegion:
    """Attach a segment by id with SHM_RDONLY: the kernel refuses any write through it."""
    return SysvRegion(sysv_ipc.attach(int(ident), None, sysv_ipc.SHM_RDONLY))


def create_lock(port: int, obj: IpcObject) -> SysvLock:
    return SysvLock.create_available(layout.ipc_key(port, obj))


def attach_lock(port: int, obj: IpcObject) -> SysvLock:
    return SysvLock.attach(layout.ipc_key(port, obj))


def remove_object(kind: str, ident: int | str) -> bool:
    """Remove a segment or semaphore set by id (for cleanup); False if it was already gone."""
    try:
        if kind == "shm":
            sysv_ipc.remove_shared_memory(int(ident))
        else:
            sysv_ipc.remove_semaphore(int(ident))
    except sysv_ipc.ExistentialError:
        return False
    return True
