"""End-to-end: the real server process, real sockets, the real line-mode client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, RawClient, ServerProcess, port_objects, python_env
from procinfo import attached, wait_until

ID = r"(\d{5})"


def test_welcome_is_first_line_with_a_unique_five_digit_id(connect):
    clients = [connect(welcome=False) for _ in range(5)]
    ids = []
    for client in clients:
        first = client.expect(r".")
        assert first.string.startswith("[welcome] "), first.string
        found = re.findall(r"\b\d{5}\b", first.string)
        assert len(found) == 1, first.string  # nothing before it holds another id
        ids.append(int(found[0]))
    assert len(set(ids)) == 5
    assert all(10000 <= i <= 99999 for i in ids)


def test_sixth_client_is_refused_and_a_freed_slot_is_usable_at_once(server, connect):
    five = [connect() for _ in range(5)]
    sixth = RawClient(server.port)
    assert sixth.expect(r".").string == "Connection Limit Exceeded !!"
    assert sixth.closed()
    five[0].send("EXIT")
    five[0].expect(r"^\[bye\]")
    five[1].expect(rf"client {five[0].id} left")  # the parent has reaped it: the slot is free
    newcomer = connect()
    assert newcomer.id not in [c.id for c in five[1:]]


def test_active_lists_every_online_client(connect):
    a, b, c = connect(), connect(), connect()
    a.send("/active")
    line = a.expect(r"^\[active\]").string
    assert "3 online" in line
    assert f"{a.id} (you)" in line and str(b.id) in line and str(c.id) in line


def test_send_reaches_only_the_target_with_spaces_kept(connect):
    a, b, c = connect(), connect(), connect()
    a.send(f"/send {b.id} hello   there, with  spaces ")
    assert b.expect(r"^\[msg from").string == f"[msg from {a.id}] hello   there, with  spaces "
    c.quiet(r"hello")
    a.quiet(r"hello")


def test_send_to_an_offline_id_is_refused_and_names_it(connect):
    a = connect()
    a.send("/send 12345 anyone?" if a.id != 12345 else "/send 12346 anyone?")
    assert re.search(
        r"\[error\] client 1234[56] is offline; message discarded", a.expect(r"^\[error\]").string
    )


def test_target_that_left_after_active_is_reported(connect):
    a, b = connect(), connect()
    a.send("/active")
    a.expect(str(b.id))
    b.send("/quit")
    a.expect(rf"client {b.id} left")
    a.send(f"/send {b.id} too late")
    assert f"client {b.id} is offline" in a.expect(r"^\[error\]").string


def test_message_in_the_table_when_the_target_dies_is_bounced(server, connect):
    a, b = connect(), connect()
    b_worker = next(pid for pid in server.worker_pids() if _worker_of(pid, b))
    os.kill(b_worker, signal.SIGSTOP)  # B's worker cannot take its mail now
    try:
        a.send(f"/send {b.id} stuck in the mailbox")
        wait_until(lambda: _pending_mail(server.port), what="the message in B's mailbox")
    finally:
        os.kill(b_worker, signal.SIGKILL)
    line = a.expect(rf"client {b.id} disconnected before delivery").string
    assert "message discarded" in line and "stuck in the mailbox" in line
    a.expect(rf"client {b.id} disconnected \(its worker process died: SIGKILL\)")


def _pending_mail(port: int) -> int:
    """Records waiting in any mailbox of the server on ``port``."""
    with attached(port) as ipc:
        return sum(m.pending_records for m in ipc.messages.stats())


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, Z...); "gone" when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _worker_of(pid: int, client: RawClient) -> bool:
    """Whether worker ``pid`` serves ``client`` (matched by the socket's port)."""
    local_port = client.sock.getsockname()[1]
    out = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
    return any(f":{local_port}" in line and f"pid={pid}," in line for line in out.splitlines())


def test_broadcast_reaches_every_other_client(connect):
    a, b, c, d = connect(), connect(), connect(), connect()
    a.send("/broadcast  to   all ")
    for other in (b, c, d):
        assert other.expect(r"^\[broadcast").string == f"[broadcast from {a.id}]  to   all "
    a.quiet(r"broadcast")


@pytest.mark.parametrize("command", ["EXIT", "/quit", "exit", "/QUIT"])
def test_exit_and_quit_tell_the_others_and_end_the_session(command, connect):
    a, b, c = connect(), connect(), connect()
    a.send(command)
    assert a.expect(r"^\[bye\]").string == f"[bye] goodbye, {a.id}"
    assert a.closed()
    for other in (b, c):
        other.expect(rf"^\[server\] client {a.id} left$")
    b.send("/active")
    assert str(a.id) not in b.expect(r"^\[active\]").string


def test_abrupt_disconnect_is_a_departure(connect):
    a, b = connect(), connect()
    a.close()
    b.expect(rf"client {a.id} disconnected \(connection lost\)")


def test_worker_killed_with_sigkill_frees_the_slot_and_others_are_told(server, connect):
    clients = [connect() for _ in range(5)]
    victim = clients[2]
    pid = next(p for p in server.worker_pids() if _worker_of(p, victim))
    os.kill(pid, signal.SIGKILL)
    clients[0].expect(rf"client {victim.id} disconnected \(its worker process died: SIGKILL\)")
    assert victim.closed()
    newcomer = connect()  # the slot is free again
    clients[1].send(f"/send {newcomer.id} still working")
    newcomer.expect(rf"^\[msg from {clients[1].id}\] still working$")


def test_unknown_commands_and_bad_arguments_get_one_line_and_the_session_goes_on(connect):
    a = connect()
    a.send("/frobnicate now")
    assert "unknown command '/frobnicate'" in a.expect(r"^\[error\]").string
    a.send("hello without a command")
    assert "unknown command" in a.expect(r"^\[error\]").string
    a.send("/send abc hi")
    line = a.expect(r"^\[error\]").string
    assert "'abc' is not a client id" in line and "usage: /send <client id> <message>" in line
    a.send("/send 12345")
    assert "message is missing" in a.expect(r"^\[error\]").string
    a.send("/active please")
    assert "takes no arguments" in a.expect(r"^\[error\]").string
    a.send("/active")
    a.expect(r"^\[active\] 1 online")


def test_help_lists_every_command(connect):
    a = connect()
    a.send("/help")
    a.expect(r"^\[help\] .*ids are 5-digit")
    text = "\n".join(a.seen)
    for command in [
        "/active",
        "/send",
        "/broadcast",
        "/makegroup",
        "/makegroupreq",
        "/joingroup",
        "/sendgroup",
        "/activegroups",
        "/activeallgroups",
        "/sendfile",
        "/quit",
        "EXIT",
    ]:
        assert command in text
    a.send("/help send")
    assert a.expect(r"^\[help\]").string.startswith("[help] /send <client id> <message>")


def test_overlong_line_and_invalid_utf8_are_refused_without_harm(connect):
    a, b = connect(), connect()
    a.send_bytes(b"/broadcast " + b"x" * (64 * 1024) + b"\n")
    assert "line too long" in a.expect(r"^\[error\]").string
    a.send_bytes(b"/broadcast caf\xe9\n")
    assert "not valid UTF-8" in a.expect(r"^\[error\]").string
    a.send(f"/send {b.id} still fine")
    b.expect(r"still fine$")
    b.quiet(r"xxxx|caf")


@pytest.mark.server_args("--no-flood-control")  # the flood is on purpose: it tests the output limit
def test_a_client_that_stops_reading_is_disconnected_and_harms_no_one(server, connect):
    flooder, reader = connect(), connect()
    sleeper = socket.socket()
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.connect(("127.0.0.1", server.port))
    welcome = re.search(rb"unique id is (\d{5})", sleeper.recv(4096))
    assert welcome, "no welcome in the first read"
    sleeper_id = int(welcome.group(1))
    reader.expect(rf"client {sleeper_id} joined")
    big = "y" * 60000
    for n in range(300):  # 18 MB: far past the 4 MiB output limit plus socket buffers
        flooder.send(f"/broadcast {n} {big}")
        reader.expect(rf"^\[broadcast from {flooder.id}\] {n} ")
    reader.seen_or_expect(rf"client {sleeper_id} was disconnected \(it stopped reading its messages\)")
    assert "stopped reading" in server.log()
    flooder.send(f"/send {reader.id} still here")
    reader.expect(r"still here$")
    sleeper.close()


def test_sigterm_and_sigint_say_goodbye_and_remove_everything(start_server, connect):
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = start_server()
        during = port_objects(server.port)
        assert {kind for kind, _key, _id in during} == {"shm", "sem"}
        assert len(during) == 5
        a = connect(target=server)
        b = connect(target=server)
        assert server.stop(sig) == 0
        for client in (a, b):
            client.expect(r"^\[bye\] the server is shutting down")
            assert client.closed()
        assert port_objects(server.port) == set()


def test_restart_after_sigkill_reclaims_stale_objects(start_server, connect):
    first = start_server()
    port = first.port
    connect(target=first)
    workers = first.worker_pids()
    assert workers
    first.kill()
    # The worker dies with its parent (PR_SET_PDEATHSIG): wait until it has.
    wait_until(lambda: all(_state(p) in ("Z", "X", "gone") for p in workers), what="the workers' death")
    leftovers = port_objects(port)
    assert len(leftovers) == 5
    second = start_server("--port", str(port))  # start_server adds --port 0 first; the last one wins
    assert second.port == port
    wait_until(lambda: "removed stale" in second.log(), what="'removed stale' in the second server's log")
    a, b = connect(target=second), connect(target=second)
    a.send(f"/send {b.id} after the crash")
    b.expect(r"after the crash$")


def test_shm_cleanup_command_removes_a_dead_servers_objects(tmp_path):
    server = ServerProcess("--port", "0", spool=tmp_path / "spool")
    port = server.port
    before_kill = port_objects(port)
    assert len(before_kill) == 5
    result = subprocess.run(
        [sys.executable, "-m", "shm", "cleanup", "--port", str(port)],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
    )
    assert "kept the objects of port" in result.stdout  # a live server is never touched
    server.proc.kill()
    server.proc.wait()
    # With --port: a cleanup of every port would also remove what other test
    # runs' crashed servers left, which those runs may be about to reclaim.
    result = subprocess.run(
        [sys.executable, "-m", "shm", "cleanup", "--port", str(port)],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert result.stdout.count(f"port {port},") == 5
    assert not port_objects(port)


def test_line_mode_client_prints_lines_and_eof_means_quit(server, line_client, connect):
    watcher = connect()
    client = line_client()
    client.send("/active")
    assert f"{client.id} (you)" in client.expect(r"^\[active\]").string
    client.send(f"/send {watcher.id} from the real client")
    watcher.expect(rf"^\[msg from {client.id}\] from the real client$")
    client.end_input()
    client.expect(r"^\[bye\]")
    assert client.wait() == 0
    watcher.expect(rf"client {client.id} left")


def test_an_idle_server_uses_no_cpu(server, connect):
    clients = [connect() for _ in range(5)]
    pids = [server.pid, *server.worker_pids()]
    assert len(pids) == 6
    wait_until(lambda: all(_state(p) == "S" for p in pids), what="every process asleep")
    before = sum(_cpu_ticks(p) for p in pids)
    time.sleep(2)  # not a wait for something: the window in which idle CPU use is measured
    after = sum(_cpu_ticks(p) for p in pids)
    assert after - before <= 1, f"{after - before} ticks used by an idle server"
    del clients


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime
