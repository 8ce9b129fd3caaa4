"""Binary semaphores with undo: the four verbs of TLPI's ``binary_sems.c``.

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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sysv_ipc


class BinaryLock:
    """A mutex backed by one System V semaphore."""

    def __init__(self, semaphore: sysv_ipc.Semaphore) -> None:
        semaphore.undo = True
        semaphore.block = True
        self._sem = semaphore

    # The four verbs ------------------------------------------------------

    @classmethod
    def create_available(cls, key: int, mode: int = 0o600) -> BinaryLock:
        """Create a new semaphore whose lock is free (value 1)."""
        return cls(sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=mode, initial_value=1))

    @classmethod
    def create_in_use(cls, key: int, mode: int = 0o600) -> BinaryLock:
        """Create a new semaphore whose lock is already held (value 0)."""
        return cls(sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=mode, initial_value=0))

    def reserve(self) -> None:
        """Take the lock, waiting as long as needed; retried after signals."""
        while True:
            try:
                self._sem.acquire()
                return
            except (sysv_ipc.BusyError, sysv_ipc.ExistentialError, sysv_ipc.PermissionsError):
                raise
            except sysv_ipc.Error:
                # "Signaled while waiting": EINTR.  Nothing was taken; wait again.
                continue

    def release(self) -> None:
        """Give the lock back."""
        self._sem.release()

    # Conveniences ---------------------------------------------------------

    @classmethod
    def attach(cls, key: int) -> BinaryLock:
        """Open an existing semaphore by key (for the inspector and tests)."""
        return cls(sysv_ipc.Semaphore(key))

    @contextmanager
    def held(self) -> Iterator[None]:
        """``with lock.held():`` reserve, run the block, release."""
        self.reserve()
        try:
            yield
        finally:
            self.release()

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
