"""Line mode: stdin is a pipe or a file, so read commands and print lines.

Made for scripts and tests: every line from the server is printed to stdout
at once (flushed), with control characters made visible; no colours, no
escape sequences.  End of input means /quit, once any upload in flight has
been sent.  The exit status is 0 when the session ended that way, 1 when
the server ended it (shutting down) or the connection was lost, 2 when the
server was full.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

from client.display import printable
from client.session import ClientSession
from protocol.framing import MAX_LINE_BYTES


def run_line_mode(sock: socket.socket, download_dir: str, download_quota: int | None = None) -> int:
    def emit(line: str) -> None:
        sys.stdout.write(printable(line) + "\n")
        sys.stdout.flush()

    session = ClientSession(sock, download_dir, emit, download_quota=download_quota)
    sock.setblocking(False)
    stdin_fd = sys.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    # poll, not epoll (the DefaultSelector): epoll refuses a regular file or
    # /dev/null with EPERM, and `./dev client < commands.txt` is line mode too.
    selector = selectors.PollSelector()
    selector.register(sock, selectors.EVENT_READ, "socket")
    selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
    typed = bytearray()
    stdin_open = True
    try:
        while not session.closed:
            if not stdin_open and not session.busy and not session.quit_sent:
                session.send_user_line("/quit")
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.wants_write() else 0)
            selector.modify(sock, events, "socket")
            for key, mask in selector.select():
                if key.data == "stdin":
                    chunk = os.read(stdin_fd, 65536)
                    if not chunk:
                        stdin_open = False
                        selector.unregister(stdin_fd)
                        if typed:
                            session.send_user_line(typed.decode("utf-8", "replace"))
                            typed.clear()
                        continue
                    typed += chunk
                    while (newline := typed.find(b"\n")) >= 0:
                        raw = bytes(typed[:newline])
                        del typed[: newline + 1]
                        session.send_user_line(raw.decode("utf-8", "replace"))
                    if len(typed) > MAX_LINE_BYTES:  # let the server judge an over-long line
                        session.out += bytes(typed)
                        typed.clear()
                else:
                    if mask & selectors.EVENT_WRITE:
                        session.on_writable()
                    if mask & selectors.EVENT_READ:
                        session.on_readable()
    except KeyboardInterrupt:
        session.close()
        return 130
    finally:
        selector.close()
        os.set_blocking(stdin_fd, True)
    if session.refused:
        return 2
    # 0 when the session ended as asked (/quit, or end of input); 1 when the
    # server ended it or the connection was lost, as in interactive mode.
    return 0 if session.quit_sent else 1
