"""What every lesson needs: a narrator, chat clients of its own, and eyes on the server.

The lessons watch the server from outside, the way the inspector does: the
shared tables through ``shm.snapshot`` (attached read-only, locks only
tried), the trace table through ``shm.trace_reader`` (no lock at all), the
semaphores through ``semctl`` and the objects through ``/proc/sysvipc``.
None of these can notify a watcher, so ``wait_until`` looks again every
few tens of milliseconds for a bounded time, as ``inspect --watch`` and
``trace --follow`` do; the server itself never polls.
"""

from __future__ import annotations

import queue
import re
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from typing import TextIO, TypeVar

from protocol import replies
from shm import discovery
from shm.discovery import list_objects, live_server_pid
from shm.layout import IpcObject, TraceEvent
from shm.snapshot import NotRunning, take_snapshot
from shm.trace_reader import TraceRecord, TraceUnavailable, open_trace, with_undo
from syscalls import processes, programs
from syscalls.processes import pid_alive

T = TypeVar("T")

#: Seconds a lesson waits for something it caused before it gives up and says so.
PATIENCE = 15.0
#: Seconds between two looks at state that cannot be waited on (see the module docstring).
LOOK_INTERVAL = 0.02


class LessonFailed(Exception):
    """Something the lesson expected did not happen; the message says what."""


def wait_until(what: str, look: Callable[[], T | None], timeout: float = PATIENCE) -> T:
    """Look until ``look()`` returns something other than None (or False); return it."""
    deadline = time.monotonic() + timeout
    while True:
        found = look()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise LessonFailed(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(LOOK_INTERVAL)


# -- the narration -----------------------------------------------------------------------


class Narrator:
    """Prints the lesson one step at a time; on a terminal, waits for Enter between steps."""

    def __init__(self, out: TextIO = sys.stdout, pause: bool = False, width: int = 88) -> None:
        self.out = out
        self.pause = pause
        self.width = width
        self.steps = 0

    def title(self, text: str) -> None:
        self._print(f"\n== {text} ==")

    def step(self, heading: str, text: str = "") -> None:
        """A new step: say what is about to happen and where to look, then (with ``pause``) wait.

        The reader reads first, looks at the pane named, and presses Enter to see it happen.
        """
        self.steps += 1
        self._print(f"\n{self.steps}. {heading}")
        if text:
            self.say(text)
        if self.pause:
            self.out.write("   [press Enter]")
            self.out.flush()
            sys.stdin.readline()

    def say(self, text: str) -> None:
        """A paragraph in plain words, wrapped."""
        self._print(
            textwrap.fill(" ".join(text.split()), self.width, initial_indent="   ", subsequent_indent="   ")
        )

    def show(self, lines: Iterable[str]) -> None:
        """Evidence, as read from the server: indented, never wrapped."""
        for line in lines:
            self._print(f"     {line}")

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


# -- clients of the lesson's own ---------------------------------------------------------


class ChatClient:
    """A plain TCP chat client; a thread reads its lines into a queue.

    ``read=False`` makes a client that never reads after its welcome: its
    socket's receive buffer fills, then the server's send buffer, then the
    worker's output backlog (the backpressure lesson).
    """

    def __init__(self, port: int, name: str, read: bool = True) -> None:
        self.name = name
        self.sock = socket.socket()
        if not read:  # before connect: the window offered to the server follows it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(PATIENCE)
        try:
            self.sock.connect(("127.0.0.1", port))
        except OSError as exc:
            self.sock.close()
            raise LessonFailed(f"client {name} of the lesson cannot connect to port {port}: {exc}") from None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._rest = b""
        first = self._read_line()
        parsed = replies.parse_welcome(first)
        if parsed is None:
            self.sock.close()
            if first == replies.CONNECTION_LIMIT:
                raise LessonFailed(
                    f"the server is full, so client {name} of the lesson cannot connect: let a client "
                    "leave (Ctrl-D in its pane), or use the demo, which has room for 8"
                )
            raise LessonFailed(f"the server did not welcome {name}: {first!r}")
        self.id = parsed[0]
        if read:
            threading.Thread(target=self._reader, name=f"lesson client {name}", daemon=True).start()

    def _read_line(self) -> str:
        while b"\n" not in self._rest:
            chunk = self.sock.recv(4096)
            if not chunk:
                return self._rest.decode(errors="replace")
            self._rest += chunk
        line, _, self._rest = self._rest.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")

    def _reader(self) -> None:
        self.sock.settimeout(None)
        try:
            while True:
                line = self._read_line()
                if not line and not self._rest:
                    break
                self.lines.put(line)
        except OSError:
            pass
        self.lines.put(None)  # the connection ended

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def expect(self, pattern: str, timeout: float = PATIENCE) -> str:
        """The first line from now on that matches ``pattern`` (earlier lines stay in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise LessonFailed(f"{self.name} never got a line like {pattern!r}") from None
            if line is None:
                raise LessonFailed(f"{self.name}'s connection ended before a line like {pattern!r}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def close(self) -> None:
        """Leave with /quit (the others see "left", not a lost connection), then close."""
        try:
            self.sock.settimeout(1.0)
            self.send("/quit")
        except OSError:
            pass  # already disconnected, or a socket nobody reads that is full
        self.sock.close()


def connect_all(port: int, names: str, settle: list[ChatClient] | None = None) -> list[ChatClient]:
    """One client per letter of ``names``; returns once each has seen the later ones join.

    The parent posts a join notice under the messages lock for each new
    client: waiting until they arrived means the lesson starts with that
    lock free and nobody's notice still on its way.
    """
    clients: list[ChatClient] = []
    try:
        for name in names:
            clients.append(ChatClient(port, name))
        for i, client in enumerate(clients):
            for later in clients[i + 1 :]:
                client.expect(rf"client {later.id} joined")
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


# -- eyes on the server ------------------------------------------------------------------


def demo_command() -> str:
    """What starts the demo's server where the user is: ./dev demo, or the server with the demo's flags.

    An installed copy has no demo script (it is tmux and a checkout's .venv), so
    there the lessons name the server command with what the demo gives it.
    """
    if programs.from_checkout():
        return f"{programs.dev_script()} demo"
    return f"{programs.command('server')} --trace --lesson-hooks --no-flood-control --max-clients 8"


def find_port(port: int | None, command: str) -> int:
    """The demo's port, or LessonFailed saying how to start the demo."""
    if port is None:
        servers = discovery.running_servers()
        if not servers:
            raise LessonFailed(
                f"no shmchat server of yours is running. The lessons run against the demo's server: "
                f"start it with '{demo_command()}' (in another terminal), then run '{command}' again"
            )
        if len(servers) > 1:
            listed = "; ".join(discovery.describe(s) for s in servers)
            raise LessonFailed(
                f"{len(servers)} shmchat servers are running ({listed}); choose one with --port"
            )
        port = servers[0].port
    objects = list_objects(port)
    if not objects:
        raise LessonFailed(
            f"no shmchat server on port {port}. The lessons run against the demo's server: start it "
            f"with '{demo_command()} --port {port}' (in another terminal), then run '{command}' again"
        )
    if not any(e.obj == IpcObject.TRACE_SEGMENT for e in objects):
        raise LessonFailed(
            f"the server on port {port} runs without --trace. The lessons need the demo's server: "
            f"stop this one and start '{demo_command()}'"
        )
    return port


def server_pid(port: int) -> int:
    pid = live_server_pid(port)
    if pid is None:
        raise LessonFailed(f"no live server on port {port}")
    return pid


def worker_pid(port: int, client_id: int) -> int:
    """The pid of a client's worker, from the client table."""

    def look() -> int | None:
        try:
            snap = take_snapshot(port)
        except NotRunning:
            return None
        return next((c.pid for c in snap.clients or [] if c.online and c.client_id == client_id), None)

    return wait_until(f"client {client_id}'s row in the client table", look)


def slot_of(port: int, client_id: int) -> int:
    snap = take_snapshot(port)
    return next(c.slot for c in snap.clients or [] if c.online and c.client_id == client_id)


class TraceTail:
    """The trace table's events since this was made (or since the last ``new``)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[int, int] = {}
        self.events: list[TraceRecord] = []
        self._read()
        self.events = []  # what was there before the lesson is not the lesson's

    def _read(self) -> list[TraceRecord]:
        try:
            reader = open_trace(self.port)
        except TraceUnavailable as exc:
            raise LessonFailed(str(exc)) from None
        try:
            fresh = reader.read(self.seen)
        finally:
            reader.release()
        self.events += fresh
        return fresh

    def wait_for(self, what: str, match: Callable[[TraceRecord], bool]) -> TraceRecord:
        """Read until an event that ``match`` es is in; return it."""

        def look() -> TraceRecord | None:
            self._read()
            return next((e for e in self.events if match(e)), None)

        return wait_until(f"{what} in the trace", look)

    def with_undo(self) -> list[TraceRecord]:
        return with_undo(self.events)


def describe_event(event: TraceRecord) -> str:
    """One trace row in the words of ``python -m shm trace``."""
    js = event.as_json()
    kind = event.event
    if kind is TraceEvent.LOCK:
        return f"lock {js['lock']} (waited {event.waited_us} µs)"
    if kind is TraceEvent.UNDO:
        return f"✝ SEM_UNDO {js['lock']}"
    if kind is TraceEvent.UNLOCK:
        return f"unlock {js['lock']}"
    if kind is TraceEvent.POST:
        return f"post →{event.to} @{event.offset} {event.bytes} B"
    if kind is TraceEvent.RING:
        return f"ring →{event.to}"
    if kind is TraceEvent.WAKE:
        return f"wake {js['source']}"
    if kind is TraceEvent.TAKE:
        return f"take {event.records} rec {event.bytes} B"
    if kind in (TraceEvent.RECV, TraceEvent.SEND):
        return f"{js['event']} {event.bytes} B"
    if kind in (TraceEvent.FORK, TraceEvent.REAP, TraceEvent.ACCEPT):
        return f"{js['event']} {event.child or ''}".rstrip()
    return str(js["event"])


def process_state(pid: int) -> str:
    """The state letter of a process, as ps shows it (R, S, T...); '-' when it is gone."""
    return processes.process_state(pid) or "-"


alive = pid_alive  # the lessons read better with the short name
