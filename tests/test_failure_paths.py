"""The failure paths a hostile review found broken, one test each (issue 10).

Each test makes the failure happen for real, a receiver stopped with SIGSTOP
at the wrong moment, a fault injected at one system call (``syscalls.faults``), a
second server on the same spool, and checks the promise of
docs/reliability.md: nothing lost without a line saying so, nothing leaked,
nobody stalls anybody.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from conftest import ROOT, STARTED_PORTS, TIMEOUT, ServerProcess, port_objects, python_env
from procinfo import attached, spool_files, spool_of, wait_until
from test_faults import announce, send_file, sha, worker_pid

from shm.directory import MAX_GROUPS_PER_ADMIN
from shm.layout import RECORD_HEADER_SIZE, IpcObject
from shm.segments import ServerIpc
from syscalls.processes import process_state

#: Every test here runs on a System V server and on a POSIX one (conftest.ipc_api).
pytestmark = pytest.mark.both_ipc_apis

BIG = "z" * 60000  # five of these fill a 256 KiB mailbox


@contextmanager
def stopped(port: int, pid: int):
    """A worker that lags: stopped with SIGSTOP outside any table lock, always continued afterwards.

    A lagging worker holds no lock: it is slow to read its mailbox.  A stop
    that lands inside a critical section (the worker taking its mail, which a
    busy machine makes likely) would instead stall everyone who needs that
    lock, this test too.  So the worker is stopped, and if it turns out to hold
    a lock it is continued and stopped again a moment later.
    """
    ipc = ServerIpc.attach(port)

    def stop_outside_locks() -> bool:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: process_state(pid) == "T", what=f"worker {pid} to stop")
        # A held lock reads 0 and names its holder (System V: the last semop's
        # pid; POSIX: the pid the holder stored).  A stopped process waits in no
        # P: the stop interrupts the wait.
        if any(lock.value == 0 and lock.holder() == pid for lock in ipc.locks.values()):
            os.kill(pid, signal.SIGCONT)
            return False
        return True

    try:
        wait_until(stop_outside_locks, what=f"worker {pid} stopped while it holds no table lock")
    finally:
        ipc.close()
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def mailbox_state(port: int, client_id: int) -> tuple[int, int, int]:
    """(full events, free bytes, ring size) of a client's mailbox."""
    with attached(port) as ipc:
        slot = ipc.directory.find_client(client_id).slot
        stats = ipc.messages.stats()[slot]
        size = ipc.messages.mailbox_bytes
    return stats.full_events, size - stats.pending_bytes, size


def full_events(port: int, client_id: int) -> int:
    return mailbox_state(port, client_id)[0]


def fill_mailbox(server: ServerProcess, flooder, topper, receiver_id: int) -> None:
    """Fill a stopped receiver's mailbox to the last byte.

    ``flooder`` sends big messages until one finds no room (it is then held
    back, as the flow control says); ``topper`` sends one message sized to
    fill exactly what is left, so that even the smallest record finds no room.
    """
    before = full_events(server.port, receiver_id)
    for n in range(6):
        flooder.send(f"/send {receiver_id} fill {n} {BIG}")
    wait_until(lambda: full_events(server.port, receiver_id) > before, what="a full mailbox")
    _, free, _ = mailbox_state(server.port, receiver_id)
    if free > RECORD_HEADER_SIZE:
        topper.send(f"/send {receiver_id} {'t' * (free - RECORD_HEADER_SIZE)}")
        wait_until(lambda: mailbox_state(server.port, receiver_id)[1] == 0, what="the last byte to be used")


@contextmanager
def a_full_mailbox(server: ServerProcess, connect):
    """Clients a and b, b's worker stopped and its mailbox full to the last byte.

    Yields (a, b, b's worker pid); b's worker runs again when the block ends.
    Two more clients do the filling (see ``fill_mailbox``).
    """
    a, b, flooder, topper = connect(), connect(), connect(), connect()
    # The parent's "joined" notices must be in b's hands before b lags: one
    # arriving in the stopped mailbox later would take the room measured for the topper.
    b.expect(rf"client {flooder.id} joined")
    b.expect(rf"client {topper.id} joined")
    b_worker = worker_pid(server.port, b.id)
    with stopped(server.port, b_worker):
        fill_mailbox(server, flooder, topper, b.id)
        yield a, b, b_worker


def run_to_end(*args: str) -> subprocess.CompletedProcess:
    """A server that is expected to refuse to start: run it and collect what it said.

    It gets a free port that the leak check watches (``STARTED_PORTS``).
    """
    port = free_port()
    STARTED_PORTS.add(port)
    command = [sys.executable, "-m", "server", "--port", str(port), "--log-level", "WARNING", *args]
    return subprocess.run(command, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=30)


@pytest.fixture
def env(monkeypatch):
    """Set an environment variable for the servers this test starts (SHMCHAT_FAULTS...)."""
    return monkeypatch.setenv


# -- 1. the last posts of a leaving client ------------------------------------------


@pytest.mark.parametrize("leave", ["EXIT", "/quit"])
def test_a_message_sent_just_before_leaving_waits_for_room_and_arrives(leave, server, connect):
    with a_full_mailbox(server, connect) as (a, b, _):
        refused = full_events(server.port, b.id)
        a.send_bytes(f"/send {b.id} last words\n{leave}\n".encode())  # one read, as a pipe gives
        wait_until(lambda: full_events(server.port, b.id) > refused, what="a's post to find no room")
    # b's worker runs again within the leave grace: the message arrives, then the goodbye.
    b.expect(rf"^\[msg from {a.id}\] last words$")
    a.expect(r"^\[bye\] goodbye")
    assert not any("discarded" in line for line in a.seen)


def test_a_message_that_cannot_get_room_before_leaving_is_reported_before_the_goodbye(server, connect):
    with a_full_mailbox(server, connect) as (a, b, _):
        a.send_bytes(f"/send {b.id} never room\nEXIT\n".encode())
        a.expect(rf"^\[error\] message to {b.id} discarded: its mailbox stayed full while you were leaving$")
        a.expect(r"^\[bye\] goodbye")
        assert a.closed()
    b.expect(rf"client {a.id} left")
    assert not any("never room" in line for line in b.seen)


def test_a_file_notice_pending_at_leaving_is_reported_and_its_link_removed(server, connect):
    with a_full_mailbox(server, connect) as (a, b, _):
        body = b"pending notice" * 100
        transfer = announce(a, b.id, len(body), sha(body), "late.txt")
        a.send_bytes(f"/data {transfer} {len(body)}\n".encode() + body + b"EXIT\n")
        a.expect(rf"^\[error\] file {transfer} 'late.txt' not delivered to {b.id}: its mailbox stayed full")
        a.expect(r"^\[bye\] goodbye")
    wait_until(lambda: not spool_files(spool_of(server)), what="an empty spool")


# -- 2. accept() out of descriptors -------------------------------------------------------


def test_accept_out_of_descriptors_refuses_the_newcomer_in_one_line_without_spinning(server, connect):
    a, b = connect(), connect()
    pid = server.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use, hard))  # not one descriptor more
    try:
        ticks_before = cpu_ticks(pid)
        for _ in range(3):
            refused = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            assert refused.recv(4096).startswith(b"[error] the server has no file descriptors left")
            refused.close()
        a.send(f"/send {b.id} still chatting")
        b.expect(r"still chatting$")
        assert cpu_ticks(pid) - ticks_before < 50  # a spinning parent burns 100 ticks a second
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert server.log().count("accept failed") <= 3
    connect()  # service resumes by itself


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


# -- 3. a start that fails after the IPC objects exist ----------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("fault", ["eventfd:3:EMFILE", "semget:2:ENOSPC", "shmget:2:ENOMEM"])
def test_a_failed_start_says_one_line_exits_1_and_leaves_nothing(fault, env, tmp_path):
    env("SHMCHAT_FAULTS", fault)
    proc = run_to_end("--spool-dir", str(tmp_path / "spool"))
    port = int(proc.args[proc.args.index("--port") + 1])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("./dev server: cannot"), proc.stderr
    assert port_objects(port) == set()
    assert not (tmp_path / "spool").exists() or not os.listdir(tmp_path / "spool")


# -- 4. fork() refused ----------------------------------------------------------------------


def test_a_refused_fork_turns_away_only_the_newcomer(env, start_server, connect):
    env("SHMCHAT_FAULTS", "fork:2:EAGAIN")
    server = start_server()
    a = connect(target=server)
    newcomer = connect(target=server, welcome=False)
    newcomer.expect(r"^\[error\] the server cannot start a worker for you right now; try again later$")
    assert newcomer.closed()
    third = connect(target=server)  # the slot and the id were released: the next one gets in
    a.expect(rf"client {third.id} joined")
    a.send(f"/send {third.id} after the refusal")
    third.expect(r"after the refusal$")
    assert server.log().count("cannot fork a worker") == 1
    # Nobody heard of the newcomer that never arrived.
    assert [line for line in a.seen if "joined" in line] == [a.seen[-1]] or len(
        [line for line in a.seen if "joined" in line]
    ) == 1


# -- 5. a goodbye for a lagging worker at SIGTERM -------------------------------------------


def test_at_sigterm_a_lagging_worker_still_gets_its_goodbye(server, connect):
    with a_full_mailbox(server, connect) as (_, b, _):
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "a goodbye waits for room" in server.log(), what="the goodbye to wait")
    b.expect(r"^\[bye\] the server is shutting down")
    assert server.proc.wait(TIMEOUT) == 0  # that one SIGTERM stops it: no second one is sent
    assert "killing it" not in server.log()


@pytest.mark.parametrize("again", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_repeated_during_shutdown_does_not_change_the_exit_status(again, server, connect):
    a = connect()
    server.proc.send_signal(signal.SIGTERM)
    # Until it has exited, signal it again every millisecond: during the
    # goodbyes, the removal of the tables, and the interpreter's finalization.
    deadline = time.monotonic() + TIMEOUT
    repeated = 0
    while server.proc.poll() is None and time.monotonic() < deadline:
        server.proc.send_signal(again)
        repeated += 1
        try:
            server.proc.wait(0.001)
        except subprocess.TimeoutExpired:
            pass
    code = server.proc.wait(TIMEOUT)
    assert code == 0, f"exit status {code} after {repeated} repeated {again.name}"
    a.expect(r"^\[bye\] the server is shutting down")
    assert "Traceback" not in server.log()


# -- 6. spool trouble after an upload ------------------------------------------------------


def test_a_link_refused_with_enospc_is_one_result_line_and_the_worker_lives(env, start_server, connect):
    env("SHMCHAT_FAULTS", "link:1:ENOSPC")
    server = start_server()
    a, b = connect(target=server), connect(target=server)
    transfer = send_file(a, b.id, b"no room" * 1000, "full.bin")
    a.expect(
        rf"^\[error\] file {transfer} 'full.bin' not delivered to {b.id}: "
        r"the server could not store a copy \(No space left on device\)$"
    )
    a.send(f"/send {b.id} worker alive")
    b.expect(r"worker alive$")
    wait_until(lambda: not spool_files(spool_of(server)), what="an empty spool")
    assert "Traceback" not in server.log()


def test_a_second_server_refuses_a_spool_folder_a_live_server_uses(start_server, tmp_path):
    first = start_server()
    shared = spool_of(first)
    second = run_to_end("--spool-dir", str(shared))
    assert second.returncode == 1
    assert "another shmchat server is using this spool folder" in second.stderr
    assert first.proc.poll() is None


def test_a_spool_path_that_is_not_utf8_still_carries_files(connect, tmp_path):
    folder = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"spool-\xff"))  # not valid UTF-8
    server = ServerProcess("--spool-dir", folder)  # not start_server: it would choose the spool
    try:
        a, b = connect(target=server), connect(target=server)
        body = b"bytes through a folder whose name is not UTF-8"
        transfer = send_file(a, b.id, body, "odd.txt")
        b.expect(rf"^\[file {transfer} from {a.id}\]")
        a.expect(rf"^\[ok\] file {transfer} 'odd.txt' delivered to {b.id}$")
        assert "Traceback" not in server.log()
    finally:
        assert server.stop() == 0
    assert not os.path.exists(folder)


# -- 7. one verdict per receiver -------------------------------------------------------------


def test_a_receiver_that_dies_while_its_file_notice_waits_gets_one_verdict(server, connect):
    with a_full_mailbox(server, connect) as (a, b, b_worker):
        transfer = send_file(a, b.id, b"one verdict" * 500, "once.txt")
        a.expect(rf"^\[ok\] file {transfer} 'once.txt' uploaded")
        os.kill(b_worker, signal.SIGKILL)
    # The parent or a's own worker gives it, whichever removes the link first (the
    # parent does not know the file's name when the notice never reached b's mailbox).
    a.expect(rf"file {transfer}( 'once.txt')? not delivered to {b.id}")
    a.seen_or_expect(rf"client {b.id} disconnected")
    a.quiet(rf"file {transfer}", wait=1.0)
    verdicts = [line for line in a.seen if re.search(rf"file {transfer}\b.*not delivered", line)]
    assert len(verdicts) == 1, verdicts


# -- a stopped lock holder, and a hog of group slots ---------------------------------------


def test_a_worker_stopped_while_holding_a_lock_is_killed_and_nobody_stalls(start_server, connect):
    server = start_server("--lesson-hooks")
    a, b = connect(target=server), connect(target=server)
    a.send("/holdlock directory")
    wait_until(
        lambda: lock_value(server.port, IpcObject.DIRECTORY_SEMAPHORE) == 0, what="the lock to be held"
    )
    holder = worker_pid_unlocked(server, a)
    os.kill(holder, signal.SIGSTOP)
    late = connect(target=server)  # the parent needs the lock for the newcomer's slot
    b.expect(rf"client {a.id} disconnected \(its worker process died: SIGKILL\)")
    b.send(f"/send {late.id} the lock came back")
    late.expect(r"the lock came back$")
    assert re.search(rf"worker {holder} \(client {a.id}\) has held a table lock", server.log())


def test_shutdown_is_not_stalled_by_a_stopped_lock_holder(start_server, connect):
    server = start_server("--lesson-hooks")
    a, b = connect(target=server), connect(target=server)
    a.send("/holdlock messages")
    wait_until(lambda: lock_value(server.port, IpcObject.MESSAGES_SEMAPHORE) == 0, what="the lock to be held")
    os.kill(worker_pid_unlocked(server, a), signal.SIGSTOP)
    assert server.stop(signal.SIGTERM) == 0
    b.expect(r"^\[bye\] the server is shutting down")
    assert port_objects(server.port) == set()


def test_a_test_that_needs_a_lock_a_stopped_worker_holds_fails_naming_it(start_server, connect):
    # What made test_at_sigterm_a_lagging_worker_still_gets_its_goodbye hang for
    # 120 s: only the server's parent breaks a stall, and a test reading the tables
    # waited in semop for ever.  procinfo.attached bounds the test's own waits.
    server = start_server("--lesson-hooks")
    a = connect(target=server)
    a.send("/holdlock messages")
    wait_until(lambda: lock_value(server.port, IpcObject.MESSAGES_SEMAPHORE) == 0, what="the lock to be held")
    holder = worker_pid_unlocked(server, a)
    os.kill(holder, signal.SIGSTOP)
    try:
        held = rf"MESSAGES_SEMAPHORE lock .* by pid {holder} \(state T\)"
        with pytest.raises(AssertionError, match=held), attached(server.port, patience=0.5) as ipc:
            ipc.messages.stats()
    finally:
        os.kill(holder, signal.SIGCONT)


def lock_value(port: int, obj: IpcObject) -> int:
    """The value of one of a server's table locks, on whichever API it runs."""
    ipc = ServerIpc.attach(port)
    try:
        return ipc.locks[obj].value
    finally:
        ipc.close()


def worker_pid_unlocked(server: ServerProcess, client) -> int:
    """The worker of ``client`` found from /proc, without the table lock it may hold."""
    from procinfo import worker_of

    return worker_of(server, client.sock)


def test_one_client_cannot_take_every_group_slot(server, connect):
    a, b = connect(), connect()
    for _ in range(MAX_GROUPS_PER_ADMIN):
        a.send(f"/makegroupreq {b.id}")
        a.expect(r"^\[ok\] group \d+ created")
    a.send(f"/makegroupreq {b.id}")
    a.expect(rf"^\[error\] no group made: you already administer {MAX_GROUPS_PER_ADMIN} groups")
    b.send(f"/makegroupreq {a.id}")  # the others can still make groups
    b.expect(r"^\[ok\] group \d+ created")


@pytest.mark.only_ipc_api("sysv")  # unlinking POSIX names takes nothing from a server that has them open
def test_tables_removed_under_a_running_server_stop_it_with_one_line_and_no_leak(start_server, connect):
    server = start_server()
    a = connect(target=server)
    semaphores = [o for o in port_objects(server.port) if o[0] == "sem"]
    for _kind, _key, ident in semaphores:  # what `ipcrm -s` does to a careless lab neighbour's server
        subprocess.run(["ipcrm", "-s", str(ident)], check=True)
    late = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # the parent needs a lock
    assert server.proc.wait(timeout=20) == 1
    server.killed = True  # its exit status 1 is what this test expects
    log = server.log()
    assert "the shared tables failed" in log and "Traceback" not in log
    assert port_objects(server.port) == set()
    assert a.closed()
    late.close()
