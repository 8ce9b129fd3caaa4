"""Fault injection for tests: make the Nth call of an OS function fail.

SQLite runs its test suite again and again with the Nth I/O call made to
fail, for every N, and checks each time that nothing broke and the error was
reported.  This module gives shmchat the same lever.  A test starts the
server with, for example::

    SHMCHAT_FAULTS="fork:2:EAGAIN,link:1:ENOSPC,recv:3:ECONNRESET@0"

Each entry is ``point:N:ERRNO`` with an optional ``@slot``: the Nth call of
that kind fails with that errno.  Calls are counted per process: the parent
counts its own, and every worker starts counting from zero when it is forked
(``enter_worker``); ``@slot`` restricts the entry to the worker of one client
slot.  The points are the calls on the server's failure-prone paths:

=========  ==========================================================
point      the call that fails
=========  ==========================================================
fork       ``os.fork`` in the parent, for a new client's worker
accept     ``socket.accept`` on the listening socket
eventfd    ``os.eventfd`` for the doorbells, at start
shmget     creating a System V segment, at start
semget     creating a System V semaphore, at start
semop      taking or giving back a table lock (P or V)
shm_open   creating a POSIX shared-memory object, at start (--ipc posix)
sem_open   creating a POSIX named semaphore, at start (--ipc posix)
sem_wait   taking a POSIX table lock (P; --ipc posix)
recv       a worker's read from its client's socket
send       a worker's write to its client's socket
open       opening a spool file (an upload, or a download's link)
write      writing an upload into the spool
link       linking a finished upload once per receiver
unlink     removing a spool file
=========  ==========================================================

The setting is read once, when this module is imported.  Without it,
``wrap`` returns the function it was given, unchanged: the hot paths call the
same bound methods they would without this module, at no cost at all.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

POINTS = (
    "fork",
    "accept",
    "eventfd",
    "shmget",
    "semget",
    "semop",
    "shm_open",
    "sem_open",
    "sem_wait",
    "recv",
    "send",
    "open",
    "write",
    "link",
    "unlink",
)

ENVIRONMENT = "SHMCHAT_FAULTS"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Fault:
    point: str
    nth: int
    code: int
    slot: int | None = None  # None: any process (the parent, or any worker)


def parse(text: str) -> list[Fault]:
    """Read a fault plan; a mistake in it is a ValueError naming the entry."""
    faults = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        spec, _, slot = entry.partition("@")
        parts = spec.split(":")
        if len(parts) != 3 or parts[0] not in POINTS or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"{ENVIRONMENT}: bad entry {entry!r}; expected point:N:ERRNO[@slot]")
        code = getattr(errno, parts[2], None)
        if not isinstance(code, int):
            raise ValueError(f"{ENVIRONMENT}: unknown errno {parts[2]!r} in {entry!r}")
        if slot and not slot.isdigit():
            raise ValueError(f"{ENVIRONMENT}: bad slot in {entry!r}")
        faults.append(Fault(parts[0], int(parts[1]), code, int(slot) if slot else None))
    return faults


_plan: list[Fault] = parse(os.environ.get(ENVIRONMENT, ""))
_points = {fault.point for fault in _plan}
_counts: dict[str, int] = {}
_slot: int | None = None  # the slot this process serves; None in the parent


def active() -> bool:
    return bool(_plan)


def enter_worker(slot: int) -> None:
    """Called in a freshly forked worker: its counts start from zero."""
    global _slot
    _slot = slot
    _counts.clear()


def _due(point: str) -> int:
    """The errno to fail this call with, or 0 to let it run."""
    count = _counts.get(point, 0) + 1
    _counts[point] = count
    for fault in _plan:
        if fault.point == point and fault.nth == count and fault.slot in (None, _slot):
            return fault.code
    return 0


def wrap(
    point: str, func: Callable[P, R], error: Callable[[int], BaseException] | None = None
) -> Callable[P, R]:
    """``func`` itself, or, when a fault is planned for ``point``, a stand-in that fails on cue.

    ``error`` builds the exception a real failure of ``func`` raises (sysv_ipc
    raises its own classes rather than OSError); by default an OSError.
    """
    if point not in _points:
        return func
    make = error or (lambda code: OSError(code, os.strerror(code)))

    def faulty(*args: P.args, **kwargs: P.kwargs) -> R:
        code = _due(point)
        if code:
            raise make(code)
        return func(*args, **kwargs)

    return faulty


def check(point: str) -> None:
    """Fail here if a fault is due (for calls made through ctypes, which ``wrap`` cannot reach)."""
    if point in _points:
        code = _due(point)
        if code:
            raise OSError(code, os.strerror(code))
