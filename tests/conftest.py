"""Fixtures: a real server process, real sockets, real clients, and an ipcs check.

Every test runs under ``ipcs_unchanged``: the System V segments and
semaphores on the machine must be the same after the test as before it
(servers get a few seconds to clean up after they are stopped).
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
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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


# -- ipcs ------------------------------------------------------------------------


def sysv_objects() -> set[tuple[str, int, int]]:
    """(kind, key, id) of every System V segment and semaphore set on the machine."""
    found = set()
    for kind, path in (("shm", "/proc/sysvipc/shm"), ("sem", "/proc/sysvipc/sem")):
        with open(path) as table:
            next(table)
            for line in table:
                fields = line.split()
                found.add((kind, int(fields[0]), int(fields[1])))
    return found


def posix_objects() -> set[tuple[str, int, str]]:
    """(kind, port, name) of every shmchat POSIX object in /dev/shm ("posix-shm" or "posix-sem")."""
    found = set()
    for name in os.listdir("/dev/shm"):
        kind, bare = ("posix-sem", name[4:]) if name.startswith("sem.") else ("posix-shm", name)
        parsed = layout.split_posix_name(bare)
        if parsed is not None:
            found.add((kind, parsed[0], name))
    return found


def all_objects() -> set[tuple]:
    """What the leak check compares: System V objects, and POSIX names in /dev/shm."""
    return sysv_objects() | posix_objects()


def port_objects(port: int) -> set[tuple[str, int, int]]:
    """(kind, key, id) of the shmchat segments and semaphores keyed by ``port``."""
    return {o for o in sysv_objects() if _port_of(o[1]) == port}


def _port_of(key: int) -> int | None:
    parsed = layout.split_key(key)
    return parsed[0] if parsed else None


def _object_port(obj: tuple) -> int | None:
    return obj[1] if obj[0].startswith("posix") else _port_of(obj[1])


#: Ports of the servers this test process started (for SHMCHAT_TEST_SHARED_MACHINE).
STARTED_PORTS: set[int] = set()


def visible_objects() -> set[tuple[str, int, int]]:
    """The objects a test may compare: every one on the machine, or with
    SHMCHAT_TEST_SHARED_MACHINE=1 only those of this process's servers."""
    return _visible(sysv_objects())


def _visible(objects: set[tuple]) -> set[tuple]:
    """What the leak check compares.

    Normally every object on the machine.  With SHMCHAT_TEST_SHARED_MACHINE=1
    (several test runs at once on one machine), only shmchat objects of ports
    this process used, since other runs' servers come and go meanwhile.
    """
    if not os.environ.get("SHMCHAT_TEST_SHARED_MACHINE"):
        return objects
    return {o for o in objects if _object_port(o) in STARTED_PORTS}


@pytest.fixture(autouse=True)
def ipcs_unchanged() -> Iterator[None]:
    before = all_objects()
    yield
    deadline = time.monotonic() + 5
    while _visible(all_objects()) != _visible(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    after, expected = _visible(all_objects()), _visible(before)
    assert after == expected, f"IPC objects leaked: {after - expected}, vanished: {expected - after}"


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
def server(start_server) -> ServerProcess:
    return start_server()


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
    """A bare TCP connection, as ``nc`` would make."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        try:
            while chunk := self.sock.recv(65536):
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
    """The real client, ``python -m client``, with stdin a pipe (line mode)."""

    def __init__(self, port: int, download_dir: Path, cwd: Path | None = None) -> None:
        super().__init__()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client", "--port", str(port), "--download-dir", str(download_dir)],
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
