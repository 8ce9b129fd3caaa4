"""The one small interface between the tables and an IPC API, and the two APIs behind it.

The tables (``Directory``, ``MessageTable``, ``TraceTable``) take a *region*
(bytes shared between processes, as a ``memoryview``) and a *lock* (a binary
semaphore with P, V and a bounded wait, ``shm.locks.BinaryLock``).  How the
regions and locks are created, found, locked and removed is all that differs
between System V (``shm.sysv``, the default) and POSIX (``shm.posix``,
``--ipc posix``); each module gives the functions of ``Backend``, and
``backend(name)`` picks one.  docs/design.md sets the two side by side.
"""

from __future__ import annotations

from typing import Protocol

import posix_ipc
import sysv_ipc

from shm import posix, sysv
from shm.layout import IpcObject
from shm.locks import BinaryLock

#: The APIs, by the name ``--ipc`` takes; the first is the default.
APIS = ("sysv", "posix")
#: What either API raises when an object is missing, and for any failure of a call.
MISSING = (sysv_ipc.ExistentialError, posix_ipc.ExistentialError)
IPC_ERRORS = (sysv_ipc.Error, posix_ipc.Error)


class Region(Protocol):
    """Shared bytes, attached or mapped in this process."""

    view: memoryview
    label: str  # how ipcs or /dev/shm names it
    mode: int  # permission bits

    def close(self) -> None:
        """Detach or unmap (after every view of ``view`` is released)."""

    def remove(self) -> None:
        """Remove it from the system; processes that have it keep it."""


class Backend(Protocol):
    """What ``shm.sysv`` and ``shm.posix`` each provide (mypy checks the modules against it)."""

    NAME: str

    def create_region(self, port: int, obj: IpcObject, size: int) -> Region: ...

    def attach_region(self, port: int, obj: IpcObject) -> Region: ...

    def open_readonly(self, ident: int | str) -> Region: ...

    def create_lock(self, port: int, obj: IpcObject) -> BinaryLock: ...

    def attach_lock(self, port: int, obj: IpcObject) -> BinaryLock: ...

    def remove_object(self, kind: str, ident: int | str) -> bool: ...


def backend(api: str) -> Backend:
    """The module that implements ``api`` ("sysv" or "posix")."""
    if api == "sysv":
        return sysv
    if api == "posix":
        return posix
    raise ValueError(f"unknown IPC API {api!r}; expected one of {', '.join(APIS)}")
