"""The client's connection: its socket and the output queued for it.

Output is written at once when the socket takes it, and queued in ``out``
when it does not (EPOLLOUT then brings the worker's loop back).  A write
that fails, or a read that does, ends the session through ``on_lost``; the
worker decides what that means for the client.  The socket calls go through
the fault-injection wrappers of ``syscalls.faults`` (the bound methods themselves
unless a test set SHMCHAT_FAULTS).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from protocol.framing import queue_unsent
from shm.trace import TraceWriter
from syscalls import faults

log = logging.getLogger(__name__)

#: Queued output past which ``say`` tries the socket before queueing more.
EAGER_WRITE = 64 * 1024


class Connection:
    def __init__(self, sock: socket.socket, client_id: int, on_lost: Callable[[], None]) -> None:
        self.sock = sock
        self.client_id = client_id
        self.out = bytearray()
        #: True once the session is over: nothing more is streamed to it.
        self.closed = False
        self._on_lost = on_lost
        #: Records each write in the worker's trace ring (None without --trace).
        self.tracer: TraceWriter | None = None
        self._recv_into = faults.wrap("recv", sock.recv_into)
        self._send = faults.wrap("send", sock.send)
        self._sendmsg = faults.wrap("send", sock.sendmsg)

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet taken by its socket."""
        return len(self.out)

    def recv_into(self, buffer: memoryview, want: int) -> int | None:
        """Read up to ``want`` bytes (recv(2)); None if there are none now, 0 at end of stream."""
        try:
            return self._recv_into(buffer, want)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            log.info("client %d: connection error: %s", self.client_id, exc)
            self._on_lost()
            return None

    def say(self, *lines: str) -> None:
        """Queue lines for the client, in one piece; a newline inside a line becomes a space."""
        self.queue("".join([line.replace("\n", " ") + "\n" for line in lines]).encode("utf-8"))

    def queue(self, data: bytes) -> None:
        """Queue bytes already on the wire's terms (whole lines), as ``say`` does a line."""
        self.out += data
        if len(self.out) > EAGER_WRITE:
            self.write_some()

    def write_some(self) -> None:
        if not self.out:
            return
        try:
            sent = self._send(self.out)  # send(2), non-blocking
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._failed(exc)
            return
        if self.tracer is not None:
            self.tracer.send(sent)
        del self.out[:sent]

    def send_frame(self, header: bytes, body: memoryview) -> None:
        """Queue one data frame: straight to the socket if nothing is queued before it.

        Only what the socket does not take is copied into ``out``, so a download
        moves from the spool to the socket without a new buffer per chunk.
        """
        sent = 0
        if not self.out:
            try:
                sent = self._sendmsg([header, body])  # sendmsg(2): header and chunk in one call
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._failed(exc)
                return
            if self.tracer is not None:
                self.tracer.send(sent)
        queue_unsent(self.out, header, body, sent)

    def _failed(self, exc: OSError) -> None:
        """The client's socket refused a write: the session is over."""
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            log.info("client %d: write failed: %s", self.client_id, exc)
        self.out.clear()
        self._on_lost()

    def send_rest(self) -> bool:
        """Write what is queued, waiting at most a second; True if it all went."""
        if not self.out:
            return True
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(self.out)
        except OSError:
            return False
        self.out.clear()
        return True

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
