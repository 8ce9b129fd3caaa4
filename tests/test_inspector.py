"""``python -m shm inspect`` against a real server: it shows what the clients did.

Each test drives real clients over sockets, then runs the inspector as a
user would (a subprocess) and compares what it prints with what happened:
ids, worker pids, groups, invitations, requests, and mail waiting in the
message table of a worker that was stopped with SIGSTOP.  Other tests check
its promises: it never changes a byte, never waits on a held lock, and never
keeps a stopped server's segments alive.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sysv_ipc
from conftest import ROOT, TIMEOUT, RawClient, piped, python_env, sysv_objects
from procinfo import wait_until

from shm import layout
from shm.discovery import list_objects
from shm.layout import IpcObject
from shm.segments import ServerIpc
from shm.sysv import SysvLock


def inspect(port: int, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shm", "inspect", "--port", str(port), *args],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(port: int) -> dict:
    result = inspect(port, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def worker_pid(port: int, client_id: int) -> int:
    """From the client table itself (not from the inspector under test)."""
    with ServerIpc.attach(port) as ipc:
        for row in ipc.directory.snapshot()[0]:
            if row.online and row.client_id == client_id:
                return row.pid
    raise AssertionError(f"client {client_id} is not in the table")


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def waiting_for(port: int, client_id: int, count: int) -> dict | None:
    """The inspector's snapshot once ``count`` records wait in the client's mailbox."""
    data = snapshot(port)
    slot = next(r["slot"] for r in data["clients"] if r["state"] == "ONLINE" and r["client_id"] == client_id)
    return data if data["mailboxes"][slot]["pending_records"] == count else None


def row_of(text: str, client_id: int) -> str:
    for line in text.splitlines():
        if re.match(rf"\s*\d+\s+online\s+{client_id}\b", line):
            return line
    raise AssertionError(f"no client row for {client_id} in:\n{text}")


def group_id_from(client: RawClient, pattern: str) -> int:
    return int(client.expect(pattern).group(1))


def test_inspector_shows_clients_groups_and_waiting_mail(server, connect) -> None:
    a, b, c = connect(), connect(), connect()
    a.send(f"/makegroup {b.id}")
    chat = group_id_from(a, r"^\[ok\] group (\d{5}): admin")
    a.send(f"/makegroupreq {c.id}")
    invite_only = group_id_from(a, r"^\[ok\] group (\d{5}) created; invited")
    c.send(f"/joingroup {chat}")  # c was not invited to this one: a request for its admin
    c.expect(r"your request was sent to its admin")
    a.expect(rf"client {c.id} asks to join group {chat}")

    b_worker = worker_pid(server.port, b.id)
    with stopped(b_worker):
        a.send(f"/send {b.id} first, while your worker sleeps")
        a.send(f"/sendgroup {chat} to the group")
        c.send("/broadcast hello everyone")
        a.expect(rf"\[broadcast from {c.id}\] hello everyone")
        data = wait_until(lambda: waiting_for(server.port, b.id, 3), what="three records waiting for b")
        text = inspect(server.port).stdout

    # JSON: the tables as the clients made them.
    online = {r["client_id"]: r for r in data["clients"] if r["state"] == "ONLINE"}
    assert set(online) == {a.id, b.id, c.id}
    assert online[b.id]["pid"] == b_worker
    assert data["processes"][str(b_worker)] == "T"
    groups = {g["group_id"]: g for g in data["groups"]}
    assert groups[chat]["admin_id"] == a.id
    assert groups[chat]["members"] == [a.id, b.id]
    assert groups[chat]["requests"] == [c.id]
    assert groups[invite_only]["members"] == [a.id]
    assert groups[invite_only]["invited"] == [c.id]
    box = data["mailboxes"][online[b.id]["slot"]]
    # a's two lines arrive in order; c's broadcast may come between them.
    assert sorted((p["kind"], p["sender_id"]) for p in box["pending"]) == sorted(
        [("PRIVATE", a.id), ("GROUP", a.id), ("BROADCAST", c.id)]
    )
    mine = [p["kind"] for p in box["pending"] if p["sender_id"] == a.id]
    assert mine == ["PRIVATE", "GROUP"]
    assert [s["value"] for s in data["semaphores"]] == [1, 1]

    # Text: the same facts, where a person looks for them.
    assert "3/5 online" in text
    assert re.search(rf"{b_worker} STOPPED", row_of(text, b.id))
    assert "3 msg(s)" in row_of(text, b.id)
    for who in (a.id, c.id):
        assert re.search(rf"{worker_pid(server.port, who)} sleeping", row_of(text, who))
        assert re.search(r"\s0$", row_of(text, who))  # nothing waiting for them
    assert re.search(rf"private from {a.id}", text)
    assert re.search(rf"group msg from {a.id} in group {chat}", text)
    assert re.search(rf"broadcast from {c.id}", text)
    assert re.search(rf"^\s*{chat}\s+{a.id}\s+{a.id}, {b.id}\s+\(2/5\)\s+-\s+{c.id}\b", text, re.M)
    assert re.search(rf"^\s*{invite_only}\s+{a.id}\s+{a.id}\s+\(1/5\)\s+{c.id}\s+-", text, re.M)
    assert "2/16 in use" in text
    assert text.count("1 free") == 2

    # Once the worker runs again it takes its mail, and the backlog is gone.
    b.expect(rf"\[msg from {a.id}\] first, while your worker sleeps")
    b.seen_or_expect(rf"\[broadcast from {c.id}\] hello everyone")
    assert re.search(r"\s0$", row_of(inspect(server.port).stdout, b.id))


def test_inspector_lists_the_ipc_objects_as_ipcs_does(server, connect) -> None:
    connect(), connect()
    text = inspect(server.port).stdout
    objects = list_objects(server.port)
    assert len(objects) == 5
    for entry in objects:
        line = next(ln for ln in text.splitlines() if f"0x{entry.key:08x}" in ln and str(entry.id) in ln)
        if entry.kind == "shm":
            assert f"{entry.size:,} B" in line
            assert re.search(rf"\b{entry.attached}\b", line)
    # The server parent and its two workers; the inspector had detached.
    assert "nattch 3 = server parent + 2 worker(s)" in text
    assert f"server pid {server.pid}" in text


def _segment_bytes(port: int) -> dict[IpcObject, bytes]:
    out = {}
    for entry in list_objects(port):
        if entry.kind == "shm":
            segment = sysv_ipc.attach(entry.id, None, sysv_ipc.SHM_RDONLY)
            try:
                out[entry.obj] = segment.read()
            finally:
                segment.detach()
    return out


def _blocked_in_epoll(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/wchan") as wchan:
            return wchan.read() == "do_epoll_wait"
    except FileNotFoundError:
        return False


def test_inspector_changes_nothing(server, connect) -> None:
    a, b = connect(), connect()
    a.send(f"/makegroupreq {b.id}")
    a.expect(r"^\[ok\] group \d{5} created")
    b.expect(r"invites you")
    # Every worker's bookkeeping is done once it is back in epoll_wait, blocked.
    wait_until(
        lambda: all(_blocked_in_epoll(p) for p in server.worker_pids()), what="the workers back in epoll_wait"
    )
    before = _segment_bytes(server.port)
    for args in ((), ("--json",), ("--color", "always")):
        assert inspect(server.port, *args).returncode == 0
    assert _segment_bytes(server.port) == before
    with ServerIpc.attach(server.port) as ipc:
        assert [lock.value for lock in ipc.locks.values()] == [1, 1]


def test_inspector_never_waits_on_a_held_lock(server, connect) -> None:
    a = connect()
    lock = SysvLock.attach(layout.ipc_key(server.port, IpcObject.DIRECTORY_SEMAPHORE))
    lock.reserve()  # as a worker stuck inside the directory lock would
    try:
        started = time.monotonic()
        result = inspect(server.port)
        elapsed = time.monotonic() - started
    finally:
        lock.release()
    assert result.returncode == 0
    assert elapsed < 5
    assert "directory lock held for over 1 s" in result.stdout
    assert "0 HELD" in result.stdout
    assert "MESSAGE TABLE" in result.stdout  # the other table was still read
    assert re.search(rf"\b{a.id}\b", inspect(server.port).stdout)


def test_inspector_without_a_server_says_so(tmp_path) -> None:
    port = 1  # no shmchat server can be on a privileged port here
    result = inspect(port)
    assert result.returncode == 1
    assert "no shmchat server on port 1" in result.stderr
    assert result.stdout == ""


def test_watch_follows_the_server_and_never_keeps_it_alive(server) -> None:
    before = sysv_objects()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "shm", "inspect", "--port", str(server.port), "--watch", "0.2"],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    frames: list[str] = []

    def read_until(pattern: str) -> None:
        buffer = ""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = piped(watcher.stdout).readline()
            if not line:
                break
            buffer += line
            if re.search(pattern, buffer):
                frames.append(buffer)
                return
        raise AssertionError(f"no {pattern!r} in the watch output:\n{buffer[-2000:]}")

    try:
        read_until(r"0/5 online")
        client = RawClient(server.port)
        client_id = client.welcome()
        read_until(rf"online\s+{client_id}")
        client.close()
        read_until(r"0/5 online")
        assert server.stop() == 0
        # The inspector is still running, and the server's objects are gone at once.
        read_until(r"no shmchat server on port")
        assert watcher.poll() is None
        ours = {o for o in sysv_objects() - before if ((o[1] >> 4) & 0xFFFF) == server.port}
        assert ours == set()
    finally:
        watcher.send_signal(signal.SIGINT)
        code = watcher.wait(TIMEOUT)
    assert code == 0


def test_watch_and_json_do_not_go_together() -> None:
    result = inspect(5000, "--watch", "1", "--json")
    assert result.returncode == 2
    assert "do not go together" in result.stderr
