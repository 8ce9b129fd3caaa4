"""The listening socket, and what the parent does when ``accept()`` fails.

Most accept failures concern one connection (ECONNABORTED: it is gone; try
the next).  The dangerous ones say the server is out of something: EMFILE
and ENFILE (descriptors), ENOBUFS and ENOMEM.  The connection that could not
be taken stays in the backlog and keeps the listener readable, so a loop
that simply goes back to ``select`` wakes again at once, for ever, at full
CPU, logging each time.  Two answers, as libev and libuv give them:

* a descriptor kept in reserve: give it up for a moment, accept the
  newcomer on it, tell it in one line why it cannot stay, close it, take the
  reserve back;
* when even that is not possible, stop watching the listener for a second.

Service resumes by itself when descriptors free up, and the log gets at most
one line a second (``Throttled``).

The socket is of the family of the address it is given (IPv4 or IPv6), and
``::`` takes IPv4 clients too where the system allows (``listening_socket``).
A newcomer whose address already holds --max-per-address connections is
turned away here too (``turned_away``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import selectors
import socket
import time
from collections.abc import Iterator

from protocol import replies
from protocol.framing import encode_line
from server.config import ServerConfig
from syscalls import faults

log = logging.getLogger(__name__)

#: accept() errors that mean "no resources now" (descriptors, buffers, memory).
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: How long the listener is left unwatched when even the reserve could not help.
PAUSE_SECONDS = 1.0
NO_DESCRIPTORS = "the server has no file descriptors left for you right now; try again later"
#: What a newcomer is told when its address already holds --max-per-address connections.
ADDRESS_FULL = (
    "connection limit per address reached: {host} already has {count} connection(s) "
    "(at most {limit} from one address); try again when one of them leaves"
)


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``, an IPv4 or IPv6 address or a name (``""``: every IPv4 one).

    The family is the address's own; only a name goes to the resolver
    (getaddrinfo, which also loads the ``idna`` codec: a server that drops
    its privileges after its imports may no longer be able to).  ``::``,
    every IPv6 address, also takes IPv4 clients where the system allows
    (IPV6_V6ONLY off): they appear as ``::ffff:a.b.c.d``, which ``peer_host``
    unwraps.
    """
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:  # a name, or "" for every address
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        literal = ipaddress.ip_address(address[0])
    else:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        address = (host, port)
    dual_stack = family == socket.AF_INET6 and literal.is_unspecified and socket.has_dualstack_ipv6()
    return socket.create_server(address, family=family, backlog=128, dualstack_ipv6=dual_stack)


def peer_host(host: str) -> str:
    """A peer's address as ``accept`` gives it; an IPv4 client of a dual-stack socket as plain IPv4."""
    mapped = getattr(ipaddress.ip_address(host), "ipv4_mapped", None)
    return str(mapped) if mapped is not None else host


def turned_away(conn: socket.socket, host: str, held: list[str], config: ServerConfig) -> bool:
    """Refuse ``conn`` if ``host`` already holds its --max-per-address connections.

    ``held`` has the peer host of every connection being served: the parent
    counts its own workers, so a connection is freed when its worker is
    reaped.  A full server gives the spec's refusal instead, so this is asked
    only when there is room.
    """
    limit = config.address_limit(host)
    if limit is None or len(held) >= config.max_clients:
        return False
    count = held.count(host)
    if count < limit:
        return False
    log.info("refused %s: it already has %d connections (--max-per-address %d)", host, count, limit)
    refuse(conn, replies.error(ADDRESS_FULL.format(host=host, count=count, limit=limit)))
    return True


class Throttled:
    """A log line that is written at most once a second, with a count of the ones held back."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._last = -1.0
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < 1.0:
            self._held += 1
            return
        if self._held:
            message += f" (and {self._held} more like it in the last second)"
        self._last, self._held = now, 0
        log.log(self.level, message, *args)


def refuse(conn: socket.socket, line: str = replies.CONNECTION_LIMIT) -> None:
    """Tell a connection in one line why it cannot stay, and close it."""
    conn.setblocking(False)
    try:
        conn.send(encode_line(line))
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def _open_reserve() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1  # taken by someone else meanwhile: the pause covers it


class Listener:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._accept = faults.wrap("accept", sock.accept)  # the bound method itself unless a test asks
        self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._selector: selectors.BaseSelector | None = None
        self._paused_until = 0.0
        self._failed = Throttled(logging.ERROR)

    def watch(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        selector.register(self.sock, selectors.EVENT_READ, "accept")

    def accept(self) -> Iterator[tuple[socket.socket, tuple[str, int]]]:
        """Every connection waiting now (accept4(2) until EAGAIN), with its peer's host and port."""
        while True:
            try:
                conn, addr = self._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._out_of_resources(exc)
                    return
                log.info("accept failed: %s", exc)  # that one connection is gone; the next may be fine
                continue
            yield conn, (peer_host(addr[0]), addr[1])

    def _out_of_resources(self, exc: OSError) -> None:
        self._failed("accept failed: %s; refusing newcomers until resources free up", exc)
        if exc.errno == errno.EMFILE and self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            try:
                conn, _ = self.sock.accept()
            except OSError:
                conn = None
            if conn is not None:
                refuse(conn, replies.error(NO_DESCRIPTORS))
            self._reserve_fd = _open_reserve()
            if conn is not None and self._reserve_fd >= 0:
                return
        if self._selector is not None:
            self._selector.unregister(self.sock)
        self._paused_until = time.monotonic() + PAUSE_SECONDS

    def timeout(self) -> float | None:
        """How long the parent may sleep before the listener must be watched again."""
        if not self._paused_until:
            return None
        return max(0.0, self._paused_until - time.monotonic())

    def resume_if_due(self) -> None:
        if self._paused_until and time.monotonic() >= self._paused_until:
            self._paused_until = 0.0
            if self._selector is not None:
                self._selector.register(self.sock, selectors.EVENT_READ, "accept")
            if self._reserve_fd < 0:
                self._reserve_fd = _open_reserve()

    def close(self, in_child: bool = False) -> None:
        """Stop listening: in the parent at shutdown, and in every forked worker.

        A forked worker must not unregister: the epoll instance is shared with
        the parent across fork, and epoll_ctl(DEL) there would remove the
        listener from the parent's interest list.  It only closes its copies.
        """
        if self._selector is not None and not self._paused_until and not in_child:
            try:
                self._selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self._selector = None
        self.sock.close()
        if self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            self._reserve_fd = -1
