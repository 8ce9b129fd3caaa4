"""A table lock as the kernel reports it, for the lessons to print: value, waiters, holder.

The lessons read a lock and never operate on it: what they print must be
what the kernel says at that moment, on either API, without disturbing the
server they watch.
"""

from __future__ import annotations

from typing import NamedTuple

import sysv_ipc

from shm import layout
from shm.discovery import list_objects
from shm.layout import IpcObject
from shm.segments import ServerIpc


class LockState(NamedTuple):
    """One reading of a lock: its value, how many wait for it, and the pid of its last semop."""

    value: int
    waiting: int
    last_pid: int


class Semaphore:
    """One table lock as the kernel reports it; never operated on.

    System V: ``semctl`` GETVAL, GETNCNT, GETPID.  POSIX: ``sem_getvalue`` and
    the holder the lock recorded in its segment header; how many wait is not
    known there (``waiting`` is -1).
    """

    def __init__(self, port: int, which: IpcObject) -> None:
        self.port, self.which = port, which
        posix = any(e.api == "posix" and e.obj is which for e in list_objects(port))
        self.sem = None if posix else sysv_ipc.Semaphore(layout.ipc_key(port, which))

    def _posix(self) -> tuple[int, int]:
        ipc = ServerIpc.attach(self.port)
        try:
            return ipc.locks[self.which].value, ipc.locks[self.which].holder()
        finally:
            ipc.close()

    @property
    def value(self) -> int:
        return self.sem.value if self.sem is not None else self._posix()[0]

    @property
    def waiting(self) -> int:
        return self.sem.waiting_for_nonzero if self.sem is not None else -1

    @property
    def last_pid(self) -> int:
        return self.sem.last_pid if self.sem is not None else self._posix()[1]

    def state(self) -> LockState:
        """The three numbers, read until two readings agree (each is its own semctl call)."""
        before = LockState(self.value, self.waiting, self.last_pid)
        for _ in range(100):
            after = LockState(self.value, self.waiting, self.last_pid)
            if after == before:
                break
            before = after
        return before

    def describe(self, names: dict[int, str] | None = None, state: LockState | None = None) -> str:
        """The lock in words; ``names`` says whose a pid is.

        A binary lock reaches 0 only by a semop P (a release and SEM_UNDO's
        give-back both add 1), so while it is held the pid of its last semop
        is its holder's.
        """
        value, waiting, pid = state or self.state()
        whose = f"pid {pid}" + (f" ({names[pid]})" if names and pid in names else "")
        if value:
            return f"value 1 = free, {waiting} waiting, last semop by {whose}"
        return f"value 0 = held by {whose}, {waiting} waiting"
