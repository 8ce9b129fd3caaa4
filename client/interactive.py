"""Interactive mode: a prompt at the bottom, incoming lines printed above it.

The network runs in a background thread with its own ``selectors`` loop;
the prompt runs in the main thread.  ``patch_stdout`` makes printing from
the network thread redraw the prompt below the new line, so what is being
typed is never broken.  Typed lines reach the network thread through a queue
and a wake-up pipe.
"""

from __future__ import annotations

import os
import queue
import selectors
import socket
import threading

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout

from client.display import printable
from client.session import ClientSession
from protocol import replies

STYLES = {
    "private": "ansigreen",
    "broadcast": "ansimagenta",
    "group": "ansicyan",
    "server": "ansiyellow",
    "error": "ansired bold",
    "ok": "ansiblue",
    "welcome": "bold",
    "bye": "bold",
    "saved": "ansiblue bold",
}


def show(line: str) -> None:
    kind = replies.classify(line).kind
    print_formatted_text(FormattedText([(STYLES.get(kind, ""), printable(line))]))


class NetworkThread(threading.Thread):
    def __init__(self, sock: socket.socket, download_dir: str) -> None:
        super().__init__(daemon=True, name="network")
        self.session = ClientSession(sock, download_dir, show)
        self.typed: queue.Queue[str] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        sock.setblocking(False)

    def send(self, line: str) -> None:
        self.typed.put(line)
        os.write(self._wake_w, b"x")

    def run(self) -> None:
        session = self.session
        selector = selectors.DefaultSelector()
        selector.register(session.sock, selectors.EVENT_READ, "socket")
        selector.register(self._wake_r, selectors.EVENT_READ, "typed")
        try:
            while not session.closed:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.wants_write() else 0)
                selector.modify(session.sock, events, "socket")
                for key, mask in selector.select():
                    if key.data == "typed":
                        os.read(self._wake_r, 4096)
                        while not self.typed.empty():
                            session.send_user_line(self.typed.get_nowait())
                    else:
                        if mask & selectors.EVENT_WRITE:
                            session.on_writable()
                        if mask & selectors.EVENT_READ:
                            session.on_readable()
        finally:
            selector.close()


def run_interactive(sock: socket.socket, download_dir: str, address: str) -> int:
    net = NetworkThread(sock, download_dir)
    net.start()
    prompt = PromptSession()
    with patch_stdout(raw=True):
        while net.is_alive():
            try:
                line = prompt.prompt("> ")
            except (EOFError, KeyboardInterrupt):
                line = "/quit"
            if not net.is_alive():
                break
            if line.strip():
                net.send(line)
            if line.strip().lower() in ("/quit", "exit"):
                net.join(timeout=3)
                break
    net.join(timeout=1)
    session = net.session
    if session.refused:
        return 2
    if session.said_goodbye or session.quit_sent:
        return 0
    print(f"Connection to the server at {address} was lost.")
    return 1
