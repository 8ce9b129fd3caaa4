"""Faults, crash recovery, churn, slow readers and security, against the real server.

Clients are killed mid-line and mid-upload, workers are killed with SIGKILL at
random moments while others chat, the parent is killed and restarted on the
same port, the server is stopped mid-transfer, hundreds of connections come
and go.  After each: no message between the survivors is lost, the locks are
free, the slots are free, the others were told, and nothing is left in the
spool or in ``ipcs``.  Tests wait for events with timeouts, never for fixed
times; the random choices come from a seeded generator (``SHMCHAT_FAULT_SEED``).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import TypedDict

import pytest
from conftest import ROOT, TIMEOUT, RawClient, ServerProcess
from procinfo import (
    alive,
    attached,
    diagnose,
    ipcs_counts,
    listening_addresses,
    locks_free,
    online_ids,
    open_mailboxes,
    port_objects,
    record,
    spool_files,
    spool_of,
    wait_until,
    worker_of,
)

from server.config import ServerConfig
from shm.layout import RecordKind
from shm.mailboxes import Posting, PostResult, Record
from shm.segments import ServerIpc

SEED = int(os.environ.get("SHMCHAT_FAULT_SEED", "7"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def worker_pid(port: int, client_id: int) -> int:
    """The worker pid the client table records for ``client_id``."""

    def find() -> int | None:
        with attached(port) as ipc:
            info = ipc.directory.find_client(client_id)
        return info.pid if info and info.pid else None

    return wait_until(find, what=f"the worker of client {client_id}")


def announce(client, target: int, size: int, digest: str, name: str) -> str:
    client.send(f"/sendfile {target} {size} {digest} {name}")
    return client.expect(rf"^\[upload (\S+) ready\] {size} ").group(1)


def send_file(client, target: int, body: bytes, name: str, frame: int = 1024 * 1024) -> str:
    transfer = announce(client, target, len(body), sha(body), name)
    for start in range(0, len(body), frame):
        part = body[start : start + frame]
        client.send_bytes(f"/data {transfer} {len(part)}\n".encode() + part)
    return transfer


def sleeping_socket(port: int) -> tuple[socket.socket, int]:
    """A connection with a tiny receive buffer that reads its welcome and then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    data = b""
    while b"\n" not in data:
        data += sock.recv(4096)
    welcome = re.search(rb"unique id is (\d{5})", data)
    assert welcome, data
    return sock, int(welcome.group(1))


def drain_to_eof(sock: socket.socket, timeout: float = TIMEOUT) -> int:
    sock.settimeout(timeout)
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except OSError:
        pass
    return total


def rst_close(client: RawClient) -> None:
    """Close with a TCP reset, as a killed process on another host would look."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # SHUT_RD sends nothing but wakes the reader thread's recv, which holds the
    # file open; the close that follows then really happens, with a reset.
    client.sock.shutdown(socket.SHUT_RD)
    client.sock.close()


@pytest.fixture
def own_servers():
    """Servers started with explicit arguments (same port, same spool); stopped afterwards."""
    started: list[ServerProcess] = []

    def start(*args: str, spool: Path) -> ServerProcess:
        server = ServerProcess(*args, spool=spool)
        started.append(server)
        return server

    yield start
    for server in started:
        code = server.stop()
        assert server.killed or code == 0, server.log()


# -- clients that die ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_client_killed_mid_line_never_runs_the_partial_line(how, connect):
    a, b, c = connect(), connect(), connect()
    a.send_bytes(f"/send {b.id} first half of a line".encode())
    a.send_bytes(b" and more, but never a newline")
    if how == "rst":
        rst_close(a)
    else:
        a.close()
    for other in (b, c):
        other.expect(rf"client {a.id} disconnected \(connection lost\)")
    b.quiet(r"first half")
    b.send(f"/send {c.id} survivors chat")
    c.expect(rf"^\[msg from {b.id}\] survivors chat$")
    record("client killed mid-line", how=how, partial_lines_run=0, others_told=2)


def test_a_real_client_killed_mid_upload_leaves_no_trace(server, line_client, connect, tmp_path):
    rx, bystander = line_client("rx"), connect()
    tx = line_client("tx")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20) * 64)  # 64 MiB
    spool = spool_of(server)
    tx_worker = worker_pid(server.port, tx.id)
    tx.send(f"/sendfile {rx.id} {big}")

    def partial_upload() -> list[str]:
        return [f for f in spool_files(spool) if f.startswith("up-") and (spool / f).stat().st_size > 0]

    # Busy-wait (no sleep) so the worker is frozen early in the upload.
    end = time.monotonic() + TIMEOUT * 3
    while not partial_upload():
        assert time.monotonic() < end, "the upload never started"
    os.kill(tx_worker, signal.SIGSTOP)  # freeze the upload half-way: deterministic from here
    try:
        parts = partial_upload()
        assert parts, "the upload finished before it could be interrupted"
        spooled = (spool / parts[0]).stat().st_size
        assert spooled < big.stat().st_size
        tx.proc.kill()  # the client dies mid-upload
        tx.proc.wait()
    finally:
        os.kill(tx_worker, signal.SIGCONT)
    rx.expect(rf"client {tx.id} disconnected \(connection lost\)")
    bystander.expect(rf"client {tx.id} disconnected")
    wait_until(lambda: spool_files(spool) == [], what="the partial upload removed from the spool")
    rx.quiet(r"^\[saved\]|^\[file", wait=0.3)
    assert not rx.download_dir.exists() or list(rx.download_dir.iterdir()) == []
    bystander.send(f"/send {rx.id} still here")
    rx.expect(r"still here$")
    record(
        "real client killed mid-upload", file_bytes=big.stat().st_size, spooled_at_kill=spooled, delivered=0
    )


@pytest.mark.parametrize("how", ["worker SIGKILL", "client disconnects"])
def test_a_receiver_lost_mid_download_is_reported_to_the_sender(how, server, connect):
    tx = connect()
    sleeper, sleeper_id = sleeping_socket(server.port)
    tx.expect(rf"client {sleeper_id} joined")
    body = os.urandom(1 << 20) * 16  # 16 MiB: far more than the socket buffers hold
    transfer = send_file(tx, sleeper_id, body, "stuck.bin")
    tx.expect(rf"^\[ok\] file {transfer} 'stuck.bin' uploaded")
    spool = spool_of(server)
    wait_until(lambda: any(f.startswith("to-") for f in spool_files(spool)), what="the receiver's link")
    if how == "worker SIGKILL":
        os.kill(worker_pid(server.port, sleeper_id), signal.SIGKILL)
    else:
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sleeper.close()
    line = tx.expect(rf"^\[error\] file {transfer}( 'stuck.bin')? not delivered to {sleeper_id}").string
    assert line.endswith(": it went offline"), line
    if how == "client disconnects":  # its own worker reports, and knows the name
        assert "'stuck.bin'" in line
    tx.quiet(rf"file {transfer}", wait=0.3)  # reported once, not twice
    wait_until(lambda: spool_files(spool) == [], what="an empty spool")
    record("receiver lost mid-download", how=how, file_bytes=len(body), sender_told=1, spool_after=0)


# -- workers killed at random moments ------------------------------------------------------------


class ChatterState(TypedDict):
    """What the chatter thread hands back to the test."""

    rounds: int
    error: BaseException | None


def test_workers_killed_at_random_moments_while_others_send(server, connect):
    rng = random.Random(SEED)
    a, b, c, watcher = connect(), connect(), connect(), connect()
    pairs = ((a, b), (b, c), (c, a))
    stop = threading.Event()
    state: ChatterState = {"rounds": 0, "error": None}

    def chatter() -> None:
        """Three clients exchange numbered messages, in windows, until told to stop."""
        try:
            n = 0
            while not stop.is_set() or n % 20:
                for sender, receiver in pairs:
                    sender.send(f"/send {receiver.id} seq {n}")
                a.send(f"/broadcast bseq {n}")
                n += 1
                if n % 20 == 0:  # a window: wait for the last of these before going on
                    for sender, receiver in pairs:
                        receiver.expect(rf"^\[msg from {sender.id}\] seq {n - 1}$", timeout=30)
            state["rounds"] = n
        except BaseException as exc:  # reported by the main thread
            state["error"] = AssertionError(f"{exc}\n{diagnose(server)}")

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    kills = 0
    victims = []
    for round_number in range(30):
        victim = connect()
        victims.append(victim.id)
        watcher.expect(rf"client {victim.id} joined")
        pid = worker_of(server, victim.sock)
        burst = "".join(f"/broadcast v{round_number} {i}\n" for i in range(rng.randint(0, 400)))
        if rng.random() < 0.5:
            burst += f"/makegroup {a.id} {b.id}\n"  # a directory-lock holder too
        victim.send_bytes(burst.encode())
        stop.wait(rng.uniform(0, 0.03))  # a random moment (not a timing assertion)
        os.kill(pid, signal.SIGKILL)
        kills += 1
        try:
            watcher.expect(rf"client {victim.id} disconnected \(its worker process died: SIGKILL\)")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nkilled {pid} (round {round_number})\n{diagnose(server)}") from None
        assert victim.closed()
    stop.set()
    thread.join(60)
    assert not thread.is_alive(), "the chatters stalled"
    if state["error"]:
        raise state["error"]
    rounds = state["rounds"]
    assert rounds >= 20
    # Nothing between the survivors was lost, duplicated or reordered.
    for sender, receiver in pairs:
        got = [
            int(m.group(1))
            for line in receiver.seen
            if (m := re.match(rf"\[msg from {sender.id}\] seq (\d+)$", line))
        ]
        assert got == list(range(rounds)), f"{sender.id}->{receiver.id}: {len(got)} of {rounds}"
    for receiver in (b, c):
        receiver.seen_or_expect(rf"^\[broadcast from {a.id}\] bseq {rounds - 1}$", timeout=30)
        got = [
            int(m.group(1))
            for line in receiver.seen
            if (m := re.match(r"\[broadcast from \d+\] bseq (\d+)$", line))
        ]
        assert got == list(range(rounds))
    for survivor in (a, b, c, watcher):
        assert not [line for line in survivor.seen if line.startswith("[error]")], survivor.recent()
    # Every survivor was told of every death.
    for survivor in (a, b, c):
        for vid in victims:
            survivor.seen_or_expect(rf"client {vid} disconnected \(its worker process died: SIGKILL\)")
    # The locks are free, the slots are free, the mailboxes closed.
    assert locks_free(server.port) == {"DIRECTORY_SEMAPHORE": 1, "MESSAGES_SEMAPHORE": 1}
    assert sorted(online_ids(server.port)) == sorted(x.id for x in (a, b, c, watcher))
    assert open_mailboxes(server.port) == 4
    newcomer = connect()
    a.send(f"/send {newcomer.id} welcome back")
    newcomer.expect(rf"^\[msg from {a.id}\] welcome back$")
    print(f"\nrandom kills: {kills} workers killed (seed {SEED}); {rounds} rounds x 4 messages survived")
    record(
        "workers SIGKILLed at random moments",
        seed=SEED,
        kills=kills,
        messages_sent=rounds * 4,
        messages_received=rounds * 5,  # 3 private + the broadcast at 2 receivers, per round
        lost=0,
        locks_after=1,
        slots_online_after=4,
    )


# -- the parent killed, then restarted ---------------------------------------------------------------


def test_parent_sigkill_then_restart_reclaims_segments_semaphores_and_spool(own_servers, tmp_path):
    spool = tmp_path / "spool"
    first = own_servers(spool=spool)
    port = first.port
    objects_before = port_objects(port)
    assert ipcs_counts(objects_before) == "3 shm / 2 sem"
    a, b = RawClient(port), RawClient(port)
    a.welcome()
    b.welcome()
    body = os.urandom(200_000)
    transfer = announce(a, b.id, len(body), sha(body), "cut.bin")
    a.send_bytes(f"/data {transfer} 100000\n".encode() + body[:100_000])
    wait_until(lambda: any(f.startswith("up-") for f in spool_files(spool)), what="a partial upload")
    workers = first.worker_pids()
    assert len(workers) == 2
    first.kill()
    wait_until(lambda: not any(alive(p) for p in workers), what="the workers to die with their parent")
    assert a.closed() and b.closed()
    assert port_objects(port) == objects_before  # stale: nobody removed them
    assert spool_files(spool)  # the partial upload is still there

    second = own_servers("--port", str(port), spool=spool)
    assert second.port == port
    wait_until(lambda: "removed stale" in second.log(), what="the 'removed stale' log line")
    (line,) = [line for line in second.log().splitlines() if "removed stale" in line]  # one line for all
    assert "(5): " in line and line.count("key 0x") == 5
    now = port_objects(port)
    assert ipcs_counts(now) == "3 shm / 2 sem"
    assert not {o[2] for o in now} & {o[2] for o in objects_before}, "the old objects were reused"
    assert locks_free(port) == {"DIRECTORY_SEMAPHORE": 1, "MESSAGES_SEMAPHORE": 1}
    assert spool.is_dir() and spool_files(spool) == []
    c, d = RawClient(port), RawClient(port)
    c.welcome()
    d.welcome()
    c.send(f"/send {d.id} after the crash")
    d.expect(rf"^\[msg from {c.id}\] after the crash$")
    small = b"works again\n"
    t = send_file(c, d.id, small, "again.txt")
    d.expect(rf"^\[file {t} from {c.id}\] {len(small)} {sha(small)} again.txt$")
    for client in (a, b, c, d):
        client.close()
    assert second.stop() == 0
    assert port_objects(port) == set()
    assert not spool.exists()
    record(
        "parent SIGKILL then restart",
        ipcs_before_kill=ipcs_counts(objects_before),
        ipcs_after_kill=ipcs_counts(objects_before),
        stale_removed=5,
        ipcs_after_restart=ipcs_counts(now),
        ipcs_after_stop=ipcs_counts(port_objects(port)),
        spool_leftovers_removed=1,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_mid_transfer_removes_everything(sig, start_server):
    server = start_server()
    port = server.port
    spool = spool_of(server)
    assert ipcs_counts(port_objects(port)) == "3 shm / 2 sem"
    uploader, rx = RawClient(port), RawClient(port)
    uploader.welcome()
    rx.welcome()
    sleeper, sleeper_id = sleeping_socket(port)
    # A download in flight: 16 MiB to a client that does not read.
    stuck = os.urandom(1 << 20) * 16
    transfer = send_file(uploader, sleeper_id, stuck, "stuck.bin")
    uploader.expect(rf"^\[ok\] file {transfer} 'stuck.bin' uploaded")
    # An upload in flight: half of a file.
    body = os.urandom(300_000)
    half = announce(uploader, rx.id, len(body), sha(body), "half.bin")
    uploader.send_bytes(f"/data {half} 150000\n".encode() + body[:150_000])
    wait_until(
        lambda: {f[:3] for f in spool_files(spool)} >= {"to-", "up-"},
        what="a download and an upload in flight",
    )
    workers = server.worker_pids()
    assert len(workers) == 3
    during = port_objects(port)
    assert server.stop(sig) == 0
    for client in (uploader, rx):
        client.seen_or_expect(r"^\[bye\] the server is shutting down")
        assert client.closed()
    drain_to_eof(sleeper)
    sleeper.close()
    assert not any(alive(p) for p in workers)
    assert port_objects(port) == set()
    assert not spool.exists()
    record(
        "stop signal mid-transfer",
        signal=signal.Signals(sig).name,
        ipcs_during=ipcs_counts(during),
        ipcs_after=ipcs_counts(port_objects(port)),
        workers_left=0,
        spool_removed=1,
    )


# -- connection churn ---------------------------------------------------------------------------


def test_connection_churn_never_leaks_a_slot_and_the_sixth_is_always_refused(server, connect):
    rng = random.Random(SEED)
    port = server.port
    steady = [connect() for _ in range(4)]
    watcher = steady[0]
    refused = 0
    leaves = {"quit": 0, "exit": 0, "fin": 0, "rst": 0, "sigkill": 0}
    for n in range(150):
        fifth = RawClient(port)
        fifth.welcome()
        sixth = RawClient(port)
        assert sixth.expect(r".").string == "Connection Limit Exceeded !!"
        assert sixth.closed() and sixth.seen == ["Connection Limit Exceeded !!"]
        refused += 1
        how = rng.choice(list(leaves)) if n % 10 else "sigkill"
        leaves[how] += 1
        if how == "quit":
            fifth.send("/quit")
            expected = "left"
        elif how == "exit":
            fifth.send("EXIT")
            expected = "left"
        elif how == "fin":
            fifth.close()
            expected = r"disconnected \(connection lost\)"
        elif how == "rst":
            rst_close(fifth)
            expected = r"disconnected \(connection lost\)"
        else:
            os.kill(worker_of(server, fifth.sock), signal.SIGKILL)
            expected = r"disconnected \(its worker process died: SIGKILL\)"
        watcher.expect(rf"client {fifth.id} {expected}")
        fifth.close()
        sixth.close()
    # Bursts: twelve at once for one free slot.
    for _burst in range(4):
        crowd = [RawClient(port) for _ in range(12)]
        firsts = [c.expect(r".").string for c in crowd]
        winners = [c for c, line in zip(crowd, firsts, strict=True) if line.startswith("[welcome]")]
        assert len(winners) == 1, firsts
        assert firsts.count("Connection Limit Exceeded !!") == 11
        refused += 11
        winner = winners[0]
        welcome = re.search(r"unique id is (\d{5})", winner.seen[0])
        assert welcome, winner.seen[0]
        winner.id = int(welcome.group(1))
        winner.send("/quit")
        watcher.expect(rf"client {winner.id} left")
        for c in crowd:
            c.close()
    for client in steady:
        client.send("/quit")
        client.expect(r"^\[bye\]")
    wait_until(lambda: online_ids(port) == [], what="every slot free")
    fresh = [connect() for _ in range(5)]
    sixth = RawClient(port)
    assert sixth.expect(r".").string == "Connection Limit Exceeded !!"
    assert sorted(online_ids(port)) == sorted(c.id for c in fresh)
    assert open_mailboxes(port) == 5
    assert locks_free(port) == {"DIRECTORY_SEMAPHORE": 1, "MESSAGES_SEMAPHORE": 1}
    connections = 4 + 150 * 2 + 4 * 12 + 5 + 1
    print(f"\nchurn: {connections} connections, {refused + 1} refused, leaves {leaves}")
    record("connection churn", connections=connections, refused=refused + 1, leaves=leaves, leaked_slots=0)


# -- a client that never reads ----------------------------------------------------------------------


@pytest.mark.server_args("--no-flood-control")  # the flood is on purpose: it tests the output limit
def test_a_client_that_never_reads_is_cut_off_and_the_flood_reaches_everyone_else(server, connect):
    a, b, c = connect(), connect(), connect()
    sleeper, sleeper_id = sleeping_socket(server.port)
    for client in (a, b, c):
        client.expect(rf"client {sleeper_id} joined")
    a.send(f"/makegroup {b.id} {c.id} {sleeper_id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    big = "g" * 30000
    gone = rf"client {sleeper_id} was disconnected \(it stopped reading its messages\)"
    n = after = 0
    while after < 20:
        a.send(f"/sendgroup {gid} r{n} {big}")
        b.send(f"/broadcast r{n} {big}")
        c.send(f"/send {a.id} r{n} small")
        # Different senders are not ordered between themselves: look back too.
        b.seen_or_expect(rf"^\[group {gid} from {a.id}\] r{n} ")
        c.seen_or_expect(rf"^\[group {gid} from {a.id}\] r{n} ")
        a.seen_or_expect(rf"^\[broadcast from {b.id}\] r{n} ")
        c.seen_or_expect(rf"^\[broadcast from {b.id}\] r{n} ")
        a.seen_or_expect(rf"^\[msg from {c.id}\] r{n} small$")
        n += 1
        if any(re.search(gone, line) for line in a.seen):
            after += 1
        assert n < 700, "the client that never reads was never disconnected"
    sent_bytes = n * 2 * 30000
    for receiver, pattern in (
        (b, rf"\[group {gid} from {a.id}\] r(\d+) "),
        (c, rf"\[group {gid} from {a.id}\] r(\d+) "),
        (a, rf"\[broadcast from {b.id}\] r(\d+) "),
        (c, rf"\[broadcast from {b.id}\] r(\d+) "),
        (a, rf"\[msg from {c.id}\] r(\d+) small"),
    ):
        got = [int(m.group(1)) for line in receiver.seen if (m := re.match(pattern, line))]
        assert got == list(range(n))
    for client in (b, c):
        client.seen_or_expect(gone)
    assert "stopped reading" in server.log() and "limit 4194304" in server.log()
    assert sleeper_id not in online_ids(server.port)
    received = drain_to_eof(sleeper)
    assert received < sent_bytes, "the sleeper got everything: it was never cut off"
    sleeper.close()
    a.send("/activeallgroups")
    assert str(sleeper_id) not in a.expect(r"^\[groups\] group").string
    newcomer = connect()  # its slot is free
    a.send(f"/send {newcomer.id} hello")
    newcomer.expect(r"hello$")
    record(
        "a client that never reads",
        rounds=n,
        messages_sent=n * 3,
        messages_received_by_others=n * 5,
        bytes_meant_for_sleeper=sent_bytes,
        bytes_sleeper_got=received,
    )


# -- security ---------------------------------------------------------------------------------------


def test_the_server_listens_on_loopback_only_by_default(server):
    from client.__main__ import parse_args as client_args
    from server.__main__ import parse_args as server_args

    assert ServerConfig().host == "127.0.0.1"
    assert server_args([]).host == "127.0.0.1"
    assert client_args([]).host == "127.0.0.1"
    assert listening_addresses(server.port) == ["0100007F"]  # 127.0.0.1, not 0.0.0.0
    with pytest.raises(ConnectionRefusedError):  # another loopback address is not served
        socket.create_connection(("127.0.0.2", server.port), timeout=TIMEOUT)
    record("listens on loopback only", listen="127.0.0.1", refused_on="127.0.0.2")


def test_a_client_cannot_act_as_another_id(server, connect, line_client):
    a, b, c = connect(), connect(), connect()
    rx = line_client("rx")
    # The sender is always the connection's own id, whatever the text claims.
    a.send(f"/send {b.id} [msg from {c.id}] I am c")
    assert b.expect(r"I am c$").string == f"[msg from {a.id}] [msg from {c.id}] I am c"
    a.send(f"/broadcast [server] client {c.id} left")
    assert b.expect(r"left$").string.startswith(f"[broadcast from {a.id}] ")
    # Group rights belong to the admin and the members.
    a.send(f"/makegroup {b.id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    c.send(f"/joingroup {gid}")
    c.expect(r"request was sent to its admin")
    for who in (b, c):
        who.send(f"/approve {gid} {c.id}")
        assert "only the admin" in who.expect(r"^\[error\]").string
    c.send(f"/sendgroup {gid} let me in")
    assert "not a member" in c.expect(r"^\[error\]").string
    c.send(f"/declinegroup {gid}")
    assert "no invitation" in c.expect(r"^\[error\]").string
    b.quiet(r"let me in")
    # Nobody can write into someone else's upload.
    body = b"only b wrote this\n"
    transfer = announce(b, rx.id, len(body), sha(body), "mine.txt")
    forged = b"c wrote this!!!!!\n"
    c.send_bytes(f"/data {transfer} {len(forged)}\n".encode() + forged)
    assert f"no upload {transfer} in progress" in c.expect(r"^\[error\]").string
    b.send_bytes(f"/data {transfer} {len(body)}\n".encode() + body)
    saved = rx.expect(rf"^\[saved\] file 'mine.txt' from {b.id} ").string
    assert Path(saved.split(" saved to ", 1)[1].rsplit(" (", 1)[0]).read_bytes() == body
    c.send(f"/sendfile {c.id} 1 {sha(b'x')} self.txt")
    assert "your own id" in c.expect(r"^\[upload refused\]").string
    record("cannot act as another id", forged_lines=2, refused_actions=6, foreign_frame_skipped=1)


def test_file_names_cannot_leave_the_download_folder_or_the_spool(server, connect, line_client, tmp_path):
    tag = f"shmchat-escape-{uuid.uuid4().hex[:8]}"
    a = connect()
    rx = line_client("rx")
    names = [
        f"../../{tag}-1",
        f"/tmp/{tag}-2",
        "..",
        ".",
        f"sub/../../{tag}-3",
        f"..\\..\\{tag}-4",
        f"~/{tag}-5",
        f"{tag}-6/../../../x",
        # (names with control characters are refused by the server: tests/test_room.py)
        "....",
        f"{'n' * 300}",
        f"../{tag}-7",  # the same name twice: never overwritten
        f"../{tag}-7",
    ]
    saved = []
    for n, name in enumerate(names):
        body = f"file {n}\n".encode()
        t = send_file(a, rx.id, body, name)
        a.expect(rf"^\[ok\] file {t} .* delivered to {rx.id}")
        line = rx.expect(r"^\[saved\] ").string
        saved.append((Path(line.split(" saved to ", 1)[1].rsplit(" (", 1)[0]), body))
    folder = rx.download_dir.resolve()
    for path, body in saved:
        assert path.resolve().parent == folder, path
        assert path.read_bytes() == body
        assert "\x1b" not in path.name and "\x00" not in path.name
        assert len(path.name.encode()) <= 255
    assert len({p for p, _ in saved}) == len(names)
    outside = [
        p
        for root in (tmp_path, Path("/tmp"), ROOT, Path.home())
        for p in root.glob(f"**/{tag}*" if root == tmp_path else f"{tag}*")
        if folder not in p.resolve().parents
    ]
    assert outside == []
    spool = spool_of(server)
    assert spool_files(spool) == []
    assert [p.name for p in spool.parent.iterdir() if tag in p.name] == []
    record("hostile file names", names=len(names), saved_inside=len(saved), outside=0)


def test_limits_on_uploads_in_progress_and_group_size_hold(connect):
    a, b, c, d, e = (connect() for _ in range(5))
    body = b"z" * 10
    open_transfers = [announce(a, b.id, len(body), sha(body), f"f{i}") for i in range(8)]
    a.send(f"/sendfile {b.id} 10 {sha(body)} ninth")
    assert "already in progress" in a.expect(r"^\[upload refused\] ninth").string
    a.send_bytes(f"/data {open_transfers[0]} 10\n".encode() + body)
    a.expect(rf"^\[ok\] file {open_transfers[0]} 'f0' delivered to {b.id}")
    announce(a, b.id, len(body), sha(body), "tenth")  # one finished: room for one more
    # A group holds at most 5 members, the admin included.
    a.send(f"/makegroup {b.id} {c.id} {d.id} {e.id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    a.send("/activeallgroups")
    assert f"members {a.id}, {b.id}, {c.id}, {d.id}, {e.id}" in a.expect(r"^\[groups\] group").string
    b.send(f"/makegroup {a.id} {c.id} {d.id} {e.id} 10000")
    assert "at most 5 members" in b.expect(r"^\[error\]").string
    e.send("/quit")
    a.expect(rf"client {e.id} left group {gid}")
    record("limits: uploads in progress, group size", uploads_allowed=8, ninth_refused=1)


# -- a record write cut short by SIGKILL ---------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigkill_inside_a_table_write_never_corrupts_another_clients_rows():
    """A process killed while it writes a mailbox header or a client row, hundreds of times.

    Undo gives the lock back, but not the data: a write must never leave a row
    half zeroed (struct.pack_into zero-fills the record before it writes the
    fields, so a kill inside it used to leave another client's mailbox closed).
    """
    rng = random.Random(SEED)
    tables = ServerIpc.create(_unused_port(), max_clients=2, max_groups=2, mailbox_bytes=80 * 1024)
    try:
        me = tables.directory.claim_slot("127.0.0.1", 40001)
        other = tables.directory.claim_slot("127.0.0.1", 40002)
        assert me is not None and other is not None  # two slots, both free
        for client in (me, other):
            tables.messages.open(client.slot, client.generation)
        message = Record(RecordKind.PRIVATE, me.slot, me.client_id, 0, b"x" * 40)
        for _ in range(150):
            pid = os.fork()
            if pid == 0:  # a worker hammering the other client's mailbox and its own row
                try:
                    batch = [Posting(other.slot, other.generation, message)] * 500  # 500 header writes
                    while True:
                        tables.messages.post(batch)
                        tables.messages.take(other.slot, other.generation)
                        tables.directory.count_traffic(me.slot, 1, 1)
                finally:
                    os._exit(0)
            time.sleep(rng.uniform(0.0005, 0.004))  # a random moment inside the loop
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            stats = tables.messages.stats()[other.slot]
            assert stats.open and stats.generation == other.generation, stats
            row = tables.directory.find_client(me.client_id)
            assert row is not None and row.generation == me.generation, row
        tables.messages.take(other.slot, other.generation)  # the last child may have left it full
        again = tables.messages.post([Posting(other.slot, other.generation, message)])
        assert again == [PostResult.DELIVERED]
        assert all(lock.value == 1 for lock in tables.locks.values())
        record("SIGKILL inside a table write", kills=150, corrupted_rows=0, locks_after=1)
    finally:
        tables.close()
