"""The fault-injection matrix: every injection point of ``syscalls.faults`` x every errno it can return.

Each cell starts the real server with ``SHMCHAT_FAULTS=point:N:ERRNO[@slot]``,
runs the scenario that reaches that call (a start-up, connections, a few
chats, a small file transfer), and checks the promises of
``docs/reliability.md`` for that cell:

* the server process is alive at the end (a start-up cell: it exited 1 with
  one line on stderr and left nothing of its port in ``ipcs``);
* no ``Traceback`` in its log;
* two clients not concerned by the fault still chat with each other;
* no IPC object (the autouse ``ipcs_unchanged`` fixture) and no spool file is
  left once the server stops;
* the client concerned is told in one line, or, for a socket error on its own
  connection, sees its connection closed while the others are told it was
  lost; an EINTR or EAGAIN is transparent (retried, and everything arrives).

What each party sees is written down once, in ``OUTCOMES``; the table in
``docs/reliability.md`` ("Every failure path") is rendered from ``CELLS`` and
``OUTCOMES`` by ``matrix_table`` and checked against the file below, so the
document says exactly what this test asserts.

The N of each cell is chosen so the call is certainly reached: for the chat
points (``@2``) the worker of the third client counts its own calls, and its
first ``recv``, ``send`` (the welcome) and ``semop`` (the directory lock for
the welcome) happen in every session.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, STARTED_PORTS, RawClient, port_objects, posix_objects, python_env
from procinfo import spool_files, wait_until

from server.listener import NO_DESCRIPTORS
from server.parent import NO_WORKER


@dataclass(frozen=True)
class Outcome:
    """What each party sees when a fault of this kind happens."""

    server: str
    concerned: str
    others: str


OUTCOMES = {
    "start-fails": Outcome(
        "exits 1 with one line on stderr (`./dev server: cannot create ...`); nothing left in ipcs",
        "(nobody is connected yet)",
        "(nobody is connected yet)",
    ),
    "no-worker": Outcome(
        "logs the failed fork (at most once a second), releases the slot and the id",
        f"`[error] {NO_WORKER}`, then closed",
        "nothing (the newcomer never joined); they keep chatting",
    ),
    "no-descriptors": Outcome(
        "logs once; accepts the newcomer on its reserve descriptor to refuse it",
        f"`[error] {NO_DESCRIPTORS}`, then closed",
        "nothing; they keep chatting",
    ),
    "accept-paused": Outcome(
        "logs once and stops watching the listener for a second (no spin)",
        "waits in the backlog, then is welcomed",
        "nothing; they keep chatting",
    ),
    "accept-retried": Outcome(
        "logs the lost connection at INFO and accepts the next one at once",
        "welcomed (its connection is the next one accepted)",
        "nothing; they keep chatting",
    ),
    "transparent": Outcome(
        "retries the call; nothing logged",
        "nothing: every message arrives",
        "nothing: every message arrives",
    ),
    "connection-lost": Outcome(
        "logs the socket error; the worker exits CONNECTION_LOST (3)",
        "its connection is closed",
        "`[server] client N disconnected (connection lost)`",
    ),
    "tables-lost": Outcome(
        "logs the semaphore failure; the worker exits TABLES_LOST (8), SEM_UNDO hands back a held lock",
        "`[bye] the server lost its shared tables; closing the connection`, then closed",
        "`[server] client N disconnected (its worker could not use the shared tables)`",
    ),
    "upload-refused": Outcome(
        "logs a warning; the worker lives",
        "`[upload refused] NAME: the server cannot store it now (REASON)`",
        "the receiver sees nothing",
    ),
    "upload-failed": Outcome(
        "removes the partial file; the worker lives",
        "`[error] file T 'NAME' upload failed: REASON; nothing was sent`",
        "the receiver sees nothing",
    ),
    "not-linked": Outcome(
        "logs a warning; removes the upload; the worker lives",
        "`[error] file T 'NAME' not delivered to B: the server could not store a copy (REASON)`",
        "the receiver sees nothing",
    ),
    "download-failed": Outcome(
        "removes the receiver's link; the worker lives",
        "the sender: `[error] file T 'NAME' not delivered to B: server error: REASON`",
        "the receiver sees nothing (no file header was sent)",
    ),
    "unlink-failed": Outcome(
        "logs a warning; renames the file out of the way, removed when its owner leaves",
        "the sender: one `[ok] ... delivered to B`, never a second verdict",
        "the receiver gets the file",
    ),
}

#: The scenario that reaches each point's call.
SCENARIOS = {
    "eventfd": "start",
    "shmget": "start",
    "semget": "start",
    "fork": "connect",
    "accept": "connect",
    "semop": "chat",
    "shm_open": "start",
    "sem_open": "start",
    "sem_wait": "chat",
    "recv": "chat",
    "send": "chat",
    "open": "file",
    "write": "file",
    "link": "file",
    "unlink": "file",
}


@dataclass(frozen=True)
class Cell:
    point: str
    errno: str
    outcome: str
    nth: int = 1
    slot: int | None = None
    extra: bool = False  # another N or slot of a cell already in the matrix

    @property
    def plan(self) -> str:
        return f"{self.point}:{self.nth}:{self.errno}" + ("" if self.slot is None else f"@{self.slot}")

    @property
    def scenario(self) -> str:
        return SCENARIOS[self.point]

    @property
    def ipc(self) -> str:
        """The ``--ipc`` whose calls the point injects into (the other points: either; System V)."""
        return "posix" if self.point in POSIX_POINTS else "sysv"


#: The points of the POSIX API (``--ipc posix``), the System V ones' counterparts.
POSIX_POINTS = {"shm_open", "sem_open", "sem_wait"}


def _cells() -> list[Cell]:
    cells: list[Cell] = []

    def add(point: str, errnos: dict[str, str], nth: int = 1, slot: int | None = None) -> None:
        cells.extend(Cell(point, code, outcome, nth, slot) for code, outcome in errnos.items())

    def extra(point: str, code: str, outcome: str, nth: int, slot: int | None = None) -> None:
        cells.append(Cell(point, code, outcome, nth, slot, extra=True))

    fails = "start-fails"
    add("eventfd", dict.fromkeys(("EMFILE", "ENFILE", "ENOMEM", "ENODEV"), fails))
    extra("eventfd", "EMFILE", fails, 5)  # the last doorbell of five
    add("shmget", dict.fromkeys(("ENOSPC", "ENOMEM", "EACCES", "EINVAL"), fails))
    extra("shmget", "ENOSPC", fails, 3)  # two segments exist already
    add("semget", dict.fromkeys(("ENOSPC", "EACCES", "ENOMEM"), fails))
    extra("semget", "ENOSPC", fails, 2)  # the segments and one semaphore exist already
    # fork: the third client's worker, while two others are online.
    add("fork", dict.fromkeys(("EAGAIN", "ENOMEM"), "no-worker"), nth=3)
    extra("fork", "EAGAIN", "no-worker", 1)
    extra("fork", "ENOMEM", "no-worker", 1)
    # accept: the first connection (a worker's welcome does not say when the
    # parent's next accept() call, which finds nothing, has been made).
    add(
        "accept",
        {
            "EMFILE": "no-descriptors",
            "ENFILE": "accept-paused",
            "ENOBUFS": "accept-paused",
            "ENOMEM": "accept-paused",
            "ECONNABORTED": "accept-retried",
            "EPERM": "accept-retried",
        },
    )
    # The worker of the third client (slot 2): odd calls take a lock, even ones give it back.
    tables = "tables-lost"
    add("semop", {"EINTR": "transparent", "EIDRM": tables, "EINVAL": tables, "EACCES": tables}, slot=2)
    for code in ("EINTR", "EIDRM"):
        extra("semop", code, "transparent" if code == "EINTR" else tables, 2, 2)  # the lock is held
    for nth in range(3, 9):  # later in the session: the welcome's mail, the chats' posts and takes
        extra("semop", "EIDRM", tables, nth, 2)
    for nth in (1, 2, 3):  # no slot: the parent's calls too (its waits are bounded: semtimedop)
        extra("semop", "EINTR", "transparent", nth)
    # The same cells on a POSIX server (--ipc posix): its objects, then its locks' P.
    add("shm_open", dict.fromkeys(("ENOSPC", "EMFILE", "EACCES"), fails))
    extra("shm_open", "ENOSPC", fails, 3)  # two objects exist already
    add("sem_open", dict.fromkeys(("ENOSPC", "EMFILE", "EACCES"), fails))
    extra("sem_open", "EMFILE", fails, 2)  # the segments and one semaphore exist already
    add("sem_wait", {"EINTR": "transparent", "EINVAL": tables}, slot=2)
    for nth in (1, 2, 3):  # no slot: the parent's bounded waits (sem_timedwait)
        extra("sem_wait", "EINTR", "transparent", nth)
    lost = "connection-lost"
    add("recv", {"ECONNRESET": lost, "ETIMEDOUT": lost, "ENOMEM": lost, "EINTR": "transparent"}, slot=2)
    for nth in (2, 3):
        extra("recv", "ECONNRESET", lost, nth, 2)
    add(
        "send",
        {"EPIPE": lost, "ECONNRESET": lost, "ENOBUFS": lost, "EAGAIN": "transparent", "EINTR": "transparent"},
        slot=2,
    )
    for nth in (2, 3, 4):
        extra("send", "EPIPE", lost, nth, 2)
    # Files: the sender is slot 0, the receiver slot 1.
    add("open", dict.fromkeys(("ENOSPC", "EMFILE", "ENFILE", "EACCES", "EDQUOT"), "upload-refused"), slot=0)
    for code in ("EMFILE", "ENFILE", "EACCES"):  # what opening a file for reading can return
        extra("open", code, "download-failed", 1, 1)
    add("write", dict.fromkeys(("ENOSPC", "EDQUOT", "EIO", "EFBIG"), "upload-failed"), slot=0)
    extra("write", "ENOSPC", "upload-failed", 2, 0)  # the second frame of a two-frame file
    add("link", dict.fromkeys(("ENOSPC", "EMLINK", "ENOENT", "EDQUOT"), "not-linked"), slot=0)
    # unlink: the receiver removing its link after the download...
    add("unlink", dict.fromkeys(("EACCES", "EBUSY", "EIO"), "unlink-failed"), slot=1)
    extra("unlink", "EIO", "unlink-failed", 1, 0)  # ...and the sender removing its upload
    return cells


CELLS = _cells()


def matrix_size() -> tuple[int, int, int]:
    """(points, point x errno pairs, cells run): the figures docs/reliability.md gives."""
    main = [c for c in CELLS if not c.extra]
    return len({c.point for c in main}), len(main), len(CELLS)


# -- the test ----------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.plan)
def test_fault_cell(cell: Cell, start_server, tmp_path: Path) -> None:
    if cell.scenario == "start":
        check_start(cell, tmp_path)
        return
    server = start_server("--ipc", cell.ipc, env={"SHMCHAT_FAULTS": cell.plan})
    spool = tmp_path / "spool-0"  # start_server's --spool-dir for its first server
    clients: list[RawClient] = []
    try:
        if cell.scenario == "connect":
            check_connect(cell, server.port, clients)
        elif cell.scenario == "chat":
            check_chat(cell, server.port, clients)
        else:
            check_file(cell, server.port, clients, spool)
        assert server.proc.poll() is None, f"the server died:\n{server.log()}"
    finally:
        for each in clients:
            each.close()
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()
    assert spool_files(spool) == [], "spool files left after the server stopped"


def client(port: int, clients: list[RawClient], welcome: bool = True) -> RawClient:
    new = RawClient(port)
    clients.append(new)
    if welcome:
        new.welcome()
    return new


def chat(sender: RawClient, receiver: RawClient, text: str) -> None:
    """A /send that must go through."""
    sender.send(f"/send {receiver.id} {text}")
    receiver.expect(rf"^\[msg from {sender.id}\] {re.escape(text)}$")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- start-up: eventfd, shmget, semget --------------------------------------------------


def check_start(cell: Cell, tmp_path: Path) -> None:
    port = free_port()  # a fixed port, so that its keys are known
    STARTED_PORTS.add(port)
    spool = tmp_path / "spool"
    done = subprocess.run(
        [sys.executable, "-m", "server", "--port", str(port), "--spool-dir", str(spool), "--ipc", cell.ipc],
        cwd=ROOT,
        env={**python_env(), "SHMCHAT_FAULTS": cell.plan},
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done
    assert len(lines) == 1 and lines[0].startswith("./dev server: cannot create "), lines
    assert os.strerror(getattr(errno, cell.errno)).lower() in lines[0].lower(), lines
    assert port_objects(port) == set(), "the failed start left IPC objects behind"
    assert not [o for o in posix_objects() if o[1] == port], "the failed start left names in /dev/shm"
    assert spool_files(spool) == []


# -- connections: fork, accept ---------------------------------------------------------


def check_connect(cell: Cell, port: int, clients: list[RawClient]) -> None:
    others: list[RawClient] = []
    if cell.point == "fork" and cell.nth == 3:
        others = [client(port, clients), client(port, clients)]
    # else the first connection is the one concerned; the others come after
    newcomer = client(port, clients, welcome=False)
    if cell.outcome in ("no-worker", "no-descriptors"):
        line = f"[error] {NO_WORKER if cell.outcome == 'no-worker' else NO_DESCRIPTORS}"
        assert newcomer.closed(), f"the newcomer was not closed; saw {newcomer.seen}"
        assert newcomer.seen == [line]
    else:  # paused or retried: the newcomer is served
        newcomer.welcome()
    a, b = others or [client(port, clients), client(port, clients)]
    chat(a, b, "still chatting")
    later = client(port, clients)  # service goes on for newcomers
    chat(later, a, "me too")
    a.send("/active")  # the refused newcomer's slot and id were released
    online = 3 if cell.outcome in ("no-worker", "no-descriptors") else 4
    assert a.expect(r"^\[active\] ").string.startswith(f"[active] {online} online: ")


# -- chats: semop, recv, send (the worker of slot 2) ------------------------------------


def check_chat(cell: Cell, port: int, clients: list[RawClient]) -> None:
    a, b = client(port, clients), client(port, clients)
    x = client(port, clients, welcome=False)  # slot 2: the one concerned
    x_id = int(a.expect(rf"^\[server\] client (?!{b.id})(\d{{5}}) joined$").group(1))
    b.expect(rf"client {x_id} joined$")
    steps_done = 0
    try:
        x.welcome()
        for step in range(4):  # each step: a few recv, send and semop calls of x's worker
            x.send(f"/send {a.id} step {step}")
            x.send("/active")
            x.expect(r"^\[active\] ")
            chat(a, x, f"back {step}")  # x first: a dead x is seen at once, not after a time-out
            a.expect(rf"^\[msg from {x_id}\] step {step}$")
            steps_done += 1
    except (AssertionError, OSError):  # x's connection closed: x.expect failed, or x.send
        if cell.outcome == "transparent":
            raise
    if cell.outcome == "transparent":
        assert steps_done == 4
        chat(a, b, "still chatting")
        return
    assert x.closed(), f"the client concerned was not closed; saw {x.recent()}"
    how = "its worker could not use the shared tables"
    if cell.outcome == "connection-lost":
        how = "connection lost"
    for other in (a, b):
        other.seen_or_expect(rf"^\[server\] client {x_id} disconnected \({how}\)$")
    if cell.outcome == "tables-lost":
        assert x.seen[-1] == "[bye] the server lost its shared tables; closing the connection", x.seen
    else:
        assert not [line for line in x.seen if line.startswith(("[error]", "[bye]"))], x.seen
    chat(a, b, "still chatting")


# -- files: open, write, link, unlink (sender slot 0, receiver slot 1) -------------------

CONTENT = b"a small file for the fault matrix\n"  # ends with a newline: RawClient reads it as a line


def upload(sender: RawClient, receiver: RawClient, data: bytes, frames: int = 1) -> str | None:
    """Speak the wire protocol; return the transfer id, or None if the upload was refused."""
    sha = hashlib.sha256(data).hexdigest()
    sender.send(f"/sendfile {receiver.id} {len(data)} {sha} notes.txt")
    answer = sender.expect(r"^\[upload ").string
    ready = re.match(r"^\[upload (\S+) ready\] ", answer)
    if not ready:
        assert re.fullmatch(r"\[upload refused\] notes.txt: the server cannot store it now \(.+\)", answer)
        return None
    transfer = ready.group(1)
    size = -(-len(data) // frames)
    for start in range(0, len(data), size):
        part = data[start : start + size]
        sender.send_bytes(f"/data {transfer} {len(part)}\n".encode() + part)
    return transfer


def check_file(cell: Cell, port: int, clients: list[RawClient], spool: Path) -> None:
    a, b, c, d = (client(port, clients) for _ in range(4))
    data = CONTENT if not (cell.point == "write" and cell.nth == 2) else CONTENT * 2
    transfer = upload(a, b, data, frames=2 if len(data) > len(CONTENT) else 1)
    label = rf"file {transfer} 'notes.txt'"
    outcome = cell.outcome
    if outcome == "upload-refused":
        assert transfer is None
    elif outcome == "upload-failed":
        a.expect(rf"^\[error\] {label} upload failed: .+; nothing was sent$")
    elif outcome == "not-linked":
        a.expect(rf"^\[error\] {label} not delivered to {b.id}: the server could not store a copy \(.+\)$")
    else:
        a.expect(rf"^\[ok\] {label} uploaded \({len(data)} bytes\); delivering to {b.id}$")
        if outcome == "download-failed":
            a.expect(rf"^\[error\] {label} not delivered to {b.id}: server error: .+$")
        else:
            b.expect(rf"^\[file {transfer} from {a.id}\] {len(data)} ")
            b.expect(rf"^\[data {transfer}\] {len(data)}$")
            b.expect(rf"^{re.escape(data.decode().strip())}$")
            a.expect(rf"^\[ok\] {label} delivered to {b.id}$")
    chat(c, d, "still chatting")
    # Then the two concerned leave: still one verdict per receiver, and the spool empties.
    # The receiver first, and the sender only once told: a verdict the parent gives
    # for the receiver's leftovers reaches the sender before that notice.
    for leaving in (b, a):
        leaving.send("/quit")
        assert leaving.closed()
        for other in (c, d) if leaving is a else (a, c, d):
            other.expect(rf"^\[server\] client {leaving.id} left$")
    verdicts = [
        line for line in a.seen if re.match(rf"^\[(ok|error)\] file \S+ .*delivered to {b.id}\b", line)
    ]
    reached_b = outcome in ("not-linked", "download-failed", "unlink-failed")
    assert len(verdicts) == reached_b, f"verdicts for the receiver: {verdicts}"
    got_file = outcome == "unlink-failed"
    assert got_file == any(line.startswith("[file ") for line in b.seen), b.seen
    assert not [line for line in b.seen if line.startswith(("[error]", "[abort"))], b.seen
    wait_until(lambda: spool_files(spool) == [], what="an empty spool once sender and receiver left")
    chat(c, d, "and after")


# -- the document -----------------------------------------------------------------------

RELIABILITY = ROOT / "docs" / "reliability.md"


def matrix_table() -> str:
    """The matrix as docs/reliability.md shows it: one row per point and outcome."""
    rows = [
        "| point | errno | cell (`SHMCHAT_FAULTS`) | the server | the client concerned | the others |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, int, int | None], list[str]] = {}
    shown = {(c.point, c.outcome) for c in CELLS if not c.extra}
    for cell in CELLS:  # an extra cell gets a row only for an outcome the others do not show
        if not cell.extra or (cell.point, cell.outcome) not in shown:
            groups.setdefault((cell.point, cell.outcome, cell.nth, cell.slot), []).append(cell.errno)
    for (point, outcome, nth, slot), codes in groups.items():
        seen = OUTCOMES[outcome]
        plan = f"`{point}:{nth}:ERRNO{'' if slot is None else f'@{slot}'}`"
        rows.append(
            f"| `{point}` | {', '.join(codes)} | {plan} | {seen.server} | {seen.concerned} | {seen.others} |"
        )
    return "\n".join(rows) + "\n"


def extra_cells() -> str:
    """The further N and slots walked (beyond one cell per point and errno), for the document."""
    return ", ".join(f"`{cell.plan}`" for cell in CELLS if cell.extra)


def test_the_matrix_in_reliability_md_is_the_one_tested() -> None:
    text = RELIABILITY.read_text()
    assert matrix_table() in text, "docs/reliability.md: paste the output of matrix_table()"
    assert extra_cells() in text, "docs/reliability.md: paste the output of extra_cells()"
    points, pairs, cells = matrix_size()
    assert f"{points} points, {pairs} point x errno pairs" in text
    assert f"{cells} cells" in text
