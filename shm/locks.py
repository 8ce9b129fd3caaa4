"""Binary semaphores with undo: three of the four verbs of TLPI's ``binary_sems.c``.

TLPI's fourth verb, ``initSemInUse``, creates a lock already held, for a
creator that must fill a table before anyone may read it.  shmchat's parent
fills its tables before its first fork, when nobody else can reach them, so
every lock starts available and that verb is not here.

Each lock is a System V semaphore used as a mutex (1 = available, 0 = held).
Two properties matter more than speed here:

* ``undo`` is switched on for every handle, so the kernel adds back what a
  process took when that process dies.  A worker killed with SIGKILL inside a
  critical section therefore never leaves the lock held.  Undo restores the
  count, not the data: critical sections are kept to a few record copies and
  the parent repairs a dead worker's rows.
* A blocked ``acquire()`` that a signal interrupts raises the base
  ``sysv_ipc.Error`` ("Signaled while waiting").  That is not a failure; the
  wait is simply retried, as ``binary_sems.c`` retries on EINTR.

The locks are not re-entrant and must never be taken in a signal handler.

**Bounded waits.**  A holder that is stopped (SIGSTOP, a debugger) rather than
killed keeps the lock, and everybody waiting for it waits too.  The parent
must never wait forever: it sets ``patience`` on its handles, waits at most
that long (``semtimedop``, through ctypes: the sysv_ipc wheel on Linux has no
semaphore timeouts), then calls ``on_stuck`` with the holder's pid (the last
pid to operate on the semaphore, which for a held lock is its holder).  The
parent kills that worker; SEM_UNDO hands the lock back; the wait goes on.
Workers wait without a bound: the parent is the one that breaks a stall.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import sysv_ipc

from syscalls import faults


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


class TableLock(Protocol):
    """What a table (``Directory``, ``MessageTable``) needs of its lock.

    The server hands its tables a ``BinaryLock``; the inspector hands them a
    ``shm.snapshot.PatientLock``, which only ever *tries* the semaphore.  Naming
    the three calls here lets mypy check that both kinds fit.
    """

    def reserve(self) -> None: ...

    def release(self) -> None: ...

    def held(self) -> AbstractContextManager[None]: ...


class HeldByBlock:
    """``with lock.held():`` for any lock with ``reserve`` and ``release``.

    Shared by the server's locks, the inspector's patient try-lock and the
    trace's recording wrapper, which differ in how they take a lock, not in
    how a block holds one.
    """

    def reserve(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    @contextmanager
    def held(self) -> Iterator[None]:
        """Reserve, run the block, release (also when it raises)."""
        self.reserve()
        try:
            yield
        finally:
            self.release()


class BinaryLock(HeldByBlock):
    """A mutex backed by one System V semaphore."""

    def __init__(self, semaphore: sysv_ipc.Semaphore) -> None:
        semaphore.undo = True
        semaphore.block = True
        self._sem = semaphore
        # semop, through the fault-injection wrapper (the bound methods themselves
        # unless a test set SHMCHAT_FAULTS).
        self._acquire = faults.wrap("semop", semaphore.acquire, _sysv_error)
        self._release = faults.wrap("semop", semaphore.release, _sysv_error)
        #: Seconds to wait before calling ``on_stuck`` (None: wait for ever).
        self.patience: float | None = None
        #: Called with the holder's pid when ``patience`` runs out.
        self.on_stuck: Callable[[int], None] | None = None

    # The verbs ------------------------------------------------------

    @classmethod
    def create_available(cls, key: int, mode: int = 0o600) -> BinaryLock:
        """Create a new semaphore whose lock is free (value 1)."""
        return cls(_semget(key, sysv_ipc.IPC_CREX, mode=mode, initial_value=1))  # semget(2) + semctl SETVAL

    def reserve(self) -> None:
        """Take the lock (semop P, SEM_UNDO); retried after signals."""
        if self.patience is not None:
            self._reserve_patiently(self.patience)
            return
        while True:
            try:
                self._acquire()
                return
            except sysv_ipc.Error as exc:
                if not _interrupted(exc):
                    raise
                # "Signaled while waiting": EINTR.  Nothing was taken; wait again.

    def reserve_within(self, seconds: float) -> bool:
        """Take the lock if it comes free within ``seconds`` (semtimedop); False if not.

        The wait sleeps in the kernel: no polling, however long it is.
        """
        return _timed_p(self._sem.id, seconds)

    def _reserve_patiently(self, patience: float) -> None:
        while not self.reserve_within(patience):
            holder = self._sem.last_pid  # semctl GETPID: for a held lock, its holder
            if self.on_stuck is not None and self._sem.value == 0:
                self.on_stuck(holder)  # kills the holder: SEM_UNDO hands the lock back

    def release(self) -> None:
        """Give the lock back (semop V, SEM_UNDO)."""
        while True:
            try:
                self._release()
                return
            except sysv_ipc.Error as exc:
                if not _interrupted(exc):
                    raise
                # EINTR: nothing was given back yet; try again.

    # Conveniences ---------------------------------------------------------

    @classmethod
    def attach(cls, key: int) -> BinaryLock:
        """Open an existing semaphore by key (for the inspector and tests)."""
        return cls(sysv_ipc.Semaphore(key))

    def try_reserve(self) -> bool:
        """Take the lock if it is free right now; never waits."""
        self._sem.block = False
        try:
            self._sem.acquire()
            return True
        except sysv_ipc.BusyError:
            return False
        finally:
            self._sem.block = True

    @property
    def value(self) -> int:
        """1 when free, 0 when held.  For display only: it may change at once."""
        return self._sem.value

    @property
    def id(self) -> int:
        return self._sem.id

    @property
    def key(self) -> int:
        return self._sem.key

    def remove(self) -> None:
        self._sem.remove()
