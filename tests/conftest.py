"""Fixtures: a real server process, real sockets, real clients, and an ipcs check.

Every test runs under ``ipcs_unchanged``: the IPC objects of the servers the
test started, and of the tables it made itself, must be the same after the
test as before it (servers get a few seconds to clean up after they are
stopped).  Other servers on the machine, a classmate's or another test run's,
are never judged: see ``TestObjects``.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

import pytest

from shm import layout

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-soak", action="store_true", help="run the long soak tests")


# -- the IPC API a server runs on ----------------------------------------------------

#: ``--ipc`` values.  A module marked ``pytest.mark.both_ipc_apis`` runs each of its
#: tests that starts a server once per API (a test marked ``only_ipc_api("sysv")``
#: on that one only); every other test uses the default.
IPC_APIS = ("sysv", "posix")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_ipc_apis: run each server test on System V and on POSIX IPC")
    config.addinivalue_line("markers", "only_ipc_api(api): in a both_ipc_apis module, run on this API only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_ipc_apis") and "ipc_api" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("only_ipc_api")
        metafunc.parametrize("ipc_api", only.args if only else IPC_APIS, indirect=True)


@pytest.fixture
def ipc_api(request: pytest.FixtureRequest) -> str:
    """The ``--ipc`` of the servers this test starts (System V unless parametrised)."""
    return getattr(request, "param", IPC_APIS[0])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-soak"):
        return
    skip = pytest.mark.skip(reason="long soak: run with --run-soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


# -- the IPC objects of this test's servers --------------------------------------------


class IpcObject(NamedTuple):
    """One IPC object on the machine, as the leak check compares it."""

    kind: str  # "shm" or "sem" (System V), "posix-shm" or "posix-sem" (/dev/shm)
    key: int | str  # the System V key (a POSIX object would give its name)
    ident: int  # the System V id (0 where a kind has none)
    port: int | None  # the shmchat server port the key encodes; None: not shmchat's
    creator: int | None  # the pid that created it, where the kernel records one (segments)


def sysv_listing() -> list[IpcObject]:
    """Every System V segment and semaphore set on the machine, from /proc/sysvipc."""
    found = []
    for kind, path in (("shm", "/proc/sysvipc/shm"), ("sem", "/proc/sysvipc/sem")):
        with open(path) as table:
            columns = table.readline().split()
            for line in table:
                row = dict(zip(columns, line.split(), strict=False))
                key = int(row["key"])
                ident = int(row["shmid" if kind == "shm" else "semid"])
                creator = int(row["cpid"]) if kind == "shm" else None  # /proc/sysvipc/sem has no pid
                found.append(IpcObject(kind, key, ident, _port_of(key), creator))
    return found


def posix_listing() -> list[IpcObject]:
    """Every shmchat POSIX object in /dev/shm: shared memory, and named semaphores (``sem.`` files).

    The kernel records no creator for these; tables a test makes in-process
    on POSIX add their port to ``STARTED_PORTS`` (``tablekit.small_tables``).
    """
    found = []
    for name in os.listdir("/dev/shm"):
        kind, bare = ("posix-sem", name[4:]) if name.startswith("sem.") else ("posix-shm", name)
        parsed = layout.split_posix_name(bare)
        if parsed is not None:
            found.append(IpcObject(kind, name, 0, parsed[0], None))
    return found


def posix_objects() -> set[tuple[str, int, str]]:
    """(kind, port, name) of every shmchat POSIX object in /dev/shm, for tests that look at one port."""
    return {(o.kind, o.port, str(o.key)) for o in posix_listing() if o.port is not None}


def _port_of(key: int) -> int | None:
    parsed = layout.split_key(key)
    return parsed[0] if parsed else None


#: The kinds of IPC object the leak check compares: one function each that
#: lists every object of its kind on the machine with the port it belongs to.
#: Another kind is one more function here.
OBJECT_KINDS: list[Callable[[], Iterable[IpcObject]]] = [sysv_listing, posix_listing]

#: Ports of the servers the running test started (emptied as each test begins):
#: ``ServerProcess`` adds its own; code that starts a server another way adds it.
STARTED_PORTS: set[int] = set()


def machine_objects() -> set[IpcObject]:
    """Every IPC object on the machine, of every kind the leak check knows."""
    return {o for kind in OBJECT_KINDS for o in kind()}


class TestObjects:
    """The IPC objects the running test answers for, and nothing else.

    What it leaves behind: the new objects keyed by a port of a server the
    test started (``STARTED_PORTS``), and those this test process created
    itself (the tables unit tests make in-process, found by their creator
    pid) with the rest of their port.  What it loses: objects this process
    created before the test.  Stale objects that a crashed server (anyone's)
    left on a port the test's server then gets are reclaimed by that server,
    rightly.  On a lab machine other users' and other runs' servers start
    and stop all the time; their objects are never judged, and no setting is
    needed for that.
    """

    __test__ = False  # a helper, not a test class for pytest to collect

    def __init__(self) -> None:
        self.before = machine_objects()

    def compare(self) -> tuple[set[IpcObject], set[IpcObject]]:
        """(what the test left behind, what it made before and lost) since ``__init__``."""
        after = machine_objects()
        me = os.getpid()
        made_here = {o.port for o in self.before | after if o.creator == me and o.port is not None}
        started = STARTED_PORTS | made_here
        leaked = {o for o in after - self.before if o.port in started or o.creator == me}
        lost = {o for o in self.before - after if o.port in made_here or o.creator == me}
        return leaked, lost


def sysv_objects() -> set[tuple[str, int, int]]:
    """(kind, key, id) of every System V segment and semaphore set on the machine."""
    return {(o.kind, int(o.key), o.ident) for o in sysv_listing()}


def port_objects(port: int) -> set[tuple[str, int, int]]:
    """(kind, key, id) of the shmchat segments and semaphores keyed by ``port``."""
    return {(o.kind, int(o.key), o.ident) for o in sysv_listing() if o.port == port}


@pytest.fixture(autouse=True)
def ipcs_unchanged() -> Iterator[None]:
    """Fail a test whose servers leave an IPC object behind (see ``TestObjects``)."""
    STARTED_PORTS.clear()
    objects = TestObjects()
    yield
    deadline = time.monotonic() + 5  # servers get a few seconds to clean up after a stop
    while (changes := objects.compare()) != (set(), set()) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked, lost = changes
    assert not leaked and not lost, f"IPC objects leaked: {leaked}, lost: {lost}"


# -- the server -------------------------------------------------------------------


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def piped(stream: IO[str] | None) -> IO[str]:
    """A pipe of a process started with ``subprocess.PIPE``.

    Popen types its ``stdin``/``stdout``/``stderr`` as Optional (None when not
    piped); this says, and checks, that the one asked for was piped.
    """
    assert stream is not None, "this stream of the process is not a pipe"
    return stream


class ServerProcess:
    """``python -m server`` on a free port of 127.0.0.1."""

    def __init__(self, *args: str, spool: Path | None = None, env: dict[str, str] | None = None) -> None:
        """``env``: variables added to the server's environment (e.g. SHMCHAT_FAULTS)."""
        command = [sys.executable, "-m", "server", "--port", "0", "--log-level", "DEBUG", *args]
        if spool is not None:
            command += ["--spool-dir", str(spool)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**python_env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []
        self.killed = False
        first = piped(self.proc.stdout).readline()
        match = re.search(r"listening on ([\d.]+):(\d+)", first)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {first!r} {piped(self.proc.stderr).read()}")
        self.host, self.port = match.group(1), int(match.group(2))
        STARTED_PORTS.add(self.port)
        threading.Thread(target=self._collect_stderr, daemon=True).start()

    def _collect_stderr(self) -> None:
        for line in piped(self.proc.stderr):
            self.stderr_lines.append(line)

    def kill(self) -> None:
        """SIGKILL the parent, as a crash would; its teardown then expects -9."""
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop in time") from None

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


@pytest.fixture
def start_server(tmp_path: Path, ipc_api: str) -> Iterator:
    """Factory: ``start_server("--max-clients", "8")`` returns a running ServerProcess.

    ``env={"SHMCHAT_FAULTS": ...}`` adds variables to the server's environment.
    The server runs on ``ipc_api`` unless the arguments name an ``--ipc``.
    """
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        api = () if "--ipc" in args else ("--ipc", ipc_api)
        server = ServerProcess(*args, *api, spool=tmp_path / f"spool-{len(servers)}", env=env)
        servers.append(server)
        return server

    yield start
    failures = []
    for server in servers:
        code = server.stop()
        if code != 0 and not server.killed:
            failures.append(f"server on port {server.port} exited with {code}:\n{server.log()}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def server(start_server, request: pytest.FixtureRequest) -> ServerProcess:
    """The test's server; ``@pytest.mark.server_args("--no-flood-control")`` adds options."""
    marker = request.node.get_closest_marker("server_args")
    return start_server(*(marker.args if marker else ()))


# -- clients -------------------------------------------------------------------------


class LineReader:
    """Collects lines from a stream in a thread, for ``expect`` with a timeout."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._id: int | None = None

    @property
    def id(self) -> int:
        """The client's id, from its welcome line (set by ``welcome()``)."""
        assert self._id is not None, "no welcome line read yet"
        return self._id

    @id.setter
    def id(self, value: int) -> None:
        self._id = value

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        """Wait for a line matching ``pattern`` (re.search); lines before it are kept in ``seen``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; saw {self.recent()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise AssertionError(f"connection closed before {pattern!r}; saw {self.recent()}")
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match

    def seen_or_expect(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """A line matching ``pattern`` that was already skipped over, or the next one."""
        for line in self.seen:
            if re.search(pattern, line):
                return line
        return self.expect(pattern, timeout).string

    def recent(self, count: int = 15) -> list[str]:
        """The last lines seen, shortened for assertion messages."""
        return [
            line if len(line) < 160 else line[:150] + f"...({len(line)} chars)" for line in self.seen[-count:]
        ]

    def quiet(self, pattern: str, wait: float = 0.5) -> None:
        """Assert that no line matching ``pattern`` arrives within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        regex = re.compile(pattern)
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            self.seen.append(line)
            assert not regex.search(line), f"unexpected line {line!r}"

    def closed(self, timeout: float = TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                return False
            if line is None:
                self.lines.put(None)
                return True
            self.seen.append(line)
        return False


class RawClient(LineReader):
    """A bare TCP connection, as ``nc`` would make (from ``source``, if given); keeps every byte."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None) -> None:
        super().__init__()
        #: Every byte received, as it came (what a terminal would be given).
        self.raw = bytearray()
        self.sock = socket.create_connection(
            (host, port), timeout=TIMEOUT, source_address=(source, 0) if source else None
        )
        self.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        try:
            while chunk := self.sock.recv(65536):
                self.raw += chunk
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.lines.put(line.decode("utf-8", "replace"))
        except OSError:
            pass
        self.lines.put(None)

    def welcome(self) -> int:
        self.id = int(self.expect(r"^\[welcome\].*unique id is (\d{5})").group(1))
        return self.id

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\n")

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class LineModeClient(LineReader):
    """The real client, ``python -m client``, with stdin a pipe (line mode); ``extra``: more flags."""

    def __init__(self, port: int, download_dir: Path, *extra: str, cwd: Path | None = None) -> None:
        super().__init__()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client",
                "--port",
                str(port),
                "--download-dir",
                str(download_dir),
                *extra,
            ],
            cwd=cwd or ROOT,
            env=python_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.download_dir = download_dir
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in piped(self.proc.stdout):
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def welcome(self) -> int:
        self.id = int(self.expect(r"^\[welcome\].*unique id is (\d{5})").group(1))
        return self.id

    def send(self, line: str) -> None:
        stdin = piped(self.proc.stdin)
        stdin.write(line + "\n")
        stdin.flush()

    def end_input(self) -> None:
        piped(self.proc.stdin).close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                piped(self.proc.stdin).close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def connect(server: ServerProcess) -> Iterator:
    """Factory for raw connections to the default server; all closed afterwards."""
    clients: list[RawClient] = []

    def make(welcome: bool = True, target: ServerProcess | None = None) -> RawClient:
        client = RawClient((target or server).port)
        clients.append(client)
        if welcome:
            client.welcome()
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def line_client(server: ServerProcess, tmp_path: Path) -> Iterator:
    """Factory for real clients in line mode, each with its own download folder."""
    clients: list[LineModeClient] = []

    def make(name: str | None = None, target: ServerProcess | None = None) -> LineModeClient:
        folder = tmp_path / (name or f"client{len(clients)}")
        client = LineModeClient((target or server).port, folder / "downloads", cwd=None)
        clients.append(client)
        client.welcome()
        return client

    yield make
    for client in clients:
        client.close()
