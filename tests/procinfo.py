"""What the fault tests read from /proc and from the server's IPC objects.

Small, dependency-free helpers: which worker process serves a connection,
which System V objects belong to a port, the values of a server's locks, and a
polling ``wait_until`` (the tests wait for events, never for fixed times).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from conftest import port_objects  # noqa: F401  (the fault tests import it from here)

from shm.segments import ServerIpc
from syscalls.processes import process_state

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "a condition") -> T:
    """Poll ``predicate`` until it returns something true (and return it); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _tcp_rows() -> list[list[str]]:
    rows = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as table:
                next(table)
                rows += [line.split() for line in table]
        except FileNotFoundError:
            pass
    return rows


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def server_side_inode(server_port: int, client_port: int) -> str | None:
    """The socket inode of the server's end of the connection from ``client_port``."""
    for row in _tcp_rows():
        if _port(row[1]) == server_port and _port(row[2]) == client_port:
            return row[9]
    return None


def worker_of(server, sock: socket.socket) -> int:
    """The pid of the worker that serves the connection ``sock`` (client side)."""
    client_port = sock.getsockname()[1]

    def find() -> int | None:
        inode = server_side_inode(server.port, client_port)
        if inode is None:
            return None
        target = f"socket:[{inode}]"
        for pid in server.worker_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except FileNotFoundError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        return None

    return wait_until(find, what=f"the worker of the connection from port {client_port}")


def listening_addresses(port: int) -> list[str]:
    """Hex local addresses of the LISTEN sockets on ``port`` (0100007F is 127.0.0.1)."""
    return [row[1].rsplit(":", 1)[0] for row in _tcp_rows() if row[3] == "0A" and _port(row[1]) == port]


def ipcs_counts(objects: set[tuple[str, int, int]]) -> str:
    shm = sum(1 for o in objects if o[0] == "shm")
    return f"{shm} shm / {len(objects) - shm} sem"


@contextmanager
def attached(port: int, patience: float = 10.0):
    """Attach to a running server's tables (detached again on exit).

    The test waits at most ``patience`` seconds for a table lock, then fails
    naming the holder: a worker that a test stopped with SIGSTOP while it held
    a lock would otherwise hold the test in semop for ever (until pytest's
    120 s timeout), since only the server's parent breaks such stalls.
    """
    ipc = ServerIpc.attach(port)
    for obj, lock in ipc.locks.items():
        lock.patience = patience
        lock.on_stuck = functools.partial(_lock_stuck, obj.name, patience)
    try:
        yield ipc
    finally:
        ipc.close()


def _lock_stuck(name: str, patience: float, holder: int) -> None:
    state = process_state(holder)
    raise AssertionError(f"the {name} lock has been held for {patience} s by pid {holder} (state {state})")


def lock_values(ipc: ServerIpc) -> dict[str, int]:
    return {obj.name: lock.value for obj, lock in ipc.locks.items()}


def locks_free(port: int, timeout: float = 10.0) -> dict[str, int]:
    """Wait until both of a server's locks read 1 (free); return the values seen."""
    with attached(port) as ipc:
        wait_until(
            lambda: all(v == 1 for v in lock_values(ipc).values()),
            timeout,
            what=f"both locks free (last seen {lock_values(ipc)})",
        )
        return lock_values(ipc)


def online_ids(port: int) -> list[int]:
    with attached(port) as ipc:
        return [c.client_id for c in ipc.directory.online()]


def open_mailboxes(port: int) -> int:
    with attached(port) as ipc:
        return sum(1 for m in ipc.messages.stats() if m.open)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def spool_files(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def spool_of(server) -> Path:
    """The spool folder a test server was started with (``--spool-dir``)."""
    args = list(server.proc.args)
    return Path(args[len(args) - 1 - args[::-1].index("--spool-dir") + 1])


def diagnose(server) -> str:
    """A snapshot for failure messages: processes, locks, slots, mailboxes, log tail."""
    lines = []
    for pid in [server.pid, *server.worker_pids()]:
        try:
            with open(f"/proc/{pid}/status") as status:
                state = next(line for line in status if line.startswith("State:")).split(None, 1)[1].strip()
            with open(f"/proc/{pid}/wchan") as wchan:
                state += f" wchan={wchan.read().strip()}"
        except (FileNotFoundError, StopIteration):
            state = "gone"
        lines.append(f"pid {pid}: {state}")
    try:
        with attached(server.port) as ipc:
            lines.append(f"locks: {lock_values(ipc)}")
            lines += [f"slot {c.slot}: {c}" for c in ipc.directory.snapshot()[0]]
            lines += [f"mailbox {m}" for m in ipc.messages.stats()]
    except Exception as exc:  # the diagnosis must never hide the failure
        lines.append(f"cannot attach: {exc!r}")
    lines.append("log tail:\n" + "".join(server.log().splitlines(keepends=True)[-25:]))
    return "\n".join(lines)


def record(case: str, **figures: object) -> None:
    """Append one case's figures to $SHMCHAT_RELIABILITY_REPORT (JSON lines), if set.

    docs/reliability.md is written from these; without the variable nothing happens.
    """
    path = os.environ.get("SHMCHAT_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"case": case, **figures}) + "\n")
