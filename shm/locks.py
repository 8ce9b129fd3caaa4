"""Binary semaphores as table locks: what every IPC API's lock must do.

A table lock is a semaphore used as a mutex (1 = available, 0 = held), with
three of the four verbs of TLPI's ``binary_sems.c``: create it available,
reserve (P), release (V).  TLPI's fourth verb, ``initSemInUse``, creates a
lock already held, for a creator that must fill a table before anyone may
read it.  shmchat's parent fills its tables before its first fork, when
nobody else can reach them, so every lock starts available and that verb is
not here.

``BinaryLock`` is the interface; ``shm.sysv.SysvLock`` (a System V
semaphore, SEM_UNDO on) and ``shm.posix.PosixLock`` (a POSIX named
semaphore, no undo: it records its holder instead) implement it.  What they
share lives here:

* A blocked wait that a signal interrupts is not a failure; it is retried,
  as ``binary_sems.c`` retries on EINTR.  The locks are not re-entrant and
  must never be taken in a signal handler.
* **Bounded waits.**  A holder that is stopped (SIGSTOP, a debugger) rather
  than killed keeps the lock, and everybody waiting for it waits too.  The
  parent must never wait forever: it sets ``patience`` on its handles, waits
  at most that long, then calls ``on_stuck`` with the holder's pid (``holder``:
  the semaphore's last pid on System V, the recorded pid on POSIX).  The
  parent kills that worker and gives its locks back (SEM_UNDO does it on
  System V; the parent itself on POSIX, ``reclaim_from``); the wait goes on.
  Workers wait without a bound: the parent is the one that breaks a stall.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


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
    """A mutex on one semaphore; ``shm.sysv`` and ``shm.posix`` say how P and V are made."""

    def __init__(self) -> None:
        #: Seconds to wait before calling ``on_stuck`` (None: wait for ever).
        self.patience: float | None = None
        #: Called with the holder's pid (0 if unknown) when ``patience`` runs out.
        self.on_stuck: Callable[[int], None] | None = None

    # -- what each API provides ----------------------------------------------

    def acquire(self) -> None:
        """P, waiting as long as it takes (retried after signals)."""
        raise NotImplementedError

    def reserve_within(self, seconds: float) -> bool:
        """P if the lock comes free within ``seconds``; False if not.  Sleeps in the kernel."""
        raise NotImplementedError

    def try_reserve(self) -> bool:
        """P if the lock is free right now; never waits."""
        raise NotImplementedError

    def release(self) -> None:
        """V (retried after signals)."""
        raise NotImplementedError

    def holder(self) -> int:
        """The pid holding the lock as far as this API can tell, 0 if unknown."""
        raise NotImplementedError

    def keep_holder_in(self, header: memoryview) -> None:
        """Record the holder's pid in this segment header after each P (``layout.LOCK_HOLDER``).

        Only a lock without undo needs to (``shm.posix``); on System V the
        kernel keeps the last pid and gives a dead holder's lock back itself.
        """

    def reclaim_from(self, dead: int, before_v: Callable[[], None] | None = None) -> bool:
        """Give back the lock if the dead process ``dead`` held it; True if this did.

        Only the parent calls it, for a worker it knows to be dead; ``before_v``
        runs just before the V (to trace it before the next holder can take
        the lock).  System V never needs to (SEM_UNDO did it when the process
        died).
        """
        raise NotImplementedError

    @property
    def value(self) -> int:
        """1 when free, 0 when held.  For display only: it may change at once."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How ``ipcs`` or ``ls /dev/shm`` names the semaphore, for messages."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of this process's handle (the semaphore stays)."""

    def remove(self) -> None:
        """Remove the semaphore from the system (the creator, at the end)."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------

    def reserve(self) -> None:
        """Take the lock; with ``patience`` set, call ``on_stuck`` each time it runs out."""
        if self.patience is None:
            self.acquire()
            return
        while not self.reserve_within(self.patience):
            if self.on_stuck is not None and self.value == 0:
                self.on_stuck(self.holder())
