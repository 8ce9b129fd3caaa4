"""One eventfd per client slot: how a worker learns it has mail.

The shared tables hold the mail; a doorbell only says "look now".  An eventfd
is a kernel counter with a file descriptor, so a worker can wait for its
socket and its doorbell in the same ``epoll_wait``; ringing adds one, reading
returns the sum and resets it, so a burst of posts costs the receiver one
wake-up.  The parent creates every doorbell before its first fork and every
worker inherits all of them: it reads its own and rings the others.

Why not a POSIX message queue (``posix_ipc``) or a signal?  Both work; an
eventfd is the fastest of the three here, has no name that a crash could
leak, and needs no cleanup beyond closing it (see ``docs/design.md``).
"""

from __future__ import annotations

import os

from shm.trace import TraceTable
from syscalls import faults

_eventfd = faults.wrap("eventfd", os.eventfd)


class Doorbells:
    def __init__(self, count: int) -> None:
        self._fds: list[int] = []
        #: The trace table of a traced server: each ring is then recorded, by
        #: the ringing process's writer, before the eventfd write.
        self.trace: TraceTable | None = None
        try:
            for _ in range(count):
                self._fds.append(_eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))  # eventfd(2)
        except OSError:
            self.close()  # EMFILE halfway: close the ones made, and say why
            raise

    def fileno(self, slot: int) -> int:
        return self._fds[slot]

    def ring(self, slot: int) -> None:
        """Wake the worker of ``slot``.  Never blocks."""
        if self.trace is not None and self.trace.writer is not None:
            self.trace.writer.ring(slot)  # first: the wake it causes must come after it
        try:
            os.eventfd_write(self._fds[slot], 1)  # write(2) of 1 to the slot's eventfd
        except BlockingIOError:
            pass  # the counter is saturated: the worker is certainly awake

    def clear(self, slot: int) -> None:
        """Consume the rings of ``slot`` (its worker does this before taking mail)."""
        try:
            os.eventfd_read(self._fds[slot])  # read(2): returns the count and resets it
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
