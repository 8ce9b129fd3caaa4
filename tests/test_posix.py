"""--ipc posix: what System V's SEM_UNDO gave for free, done by the parent; /dev/shm left clean.

A POSIX semaphore has no undo.  These tests kill a lock holder the ways a
worker can die and check that nobody stalls for longer than the parent's
bounded wait (``ServerConfig.lock_patience``, 2 s) and that the tables are
consistent afterwards; that a server killed with SIGKILL leaves names in
/dev/shm that a restart and ``shm cleanup`` reclaim; and (issue 17) that
``shm list`` run by another user calls a live server live and says whose.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import posix_ipc
import pytest
from conftest import ROOT, posix_objects, python_env
from procinfo import wait_until

from server.config import ServerConfig
from shm import layout
from shm.discovery import list_objects, whose
from shm.layout import IpcObject, TraceEvent
from shm.segments import ServerIpc
from shm.trace_reader import TraceRecord, with_undo

PATIENCE = ServerConfig.lock_patience


def names_of(port: int) -> set[str]:
    return {name for _kind, p, name in posix_objects() if p == port}


def lock_state(port: int, obj: IpcObject) -> tuple[int, int]:
    """(value, recorded holder) of one of a POSIX server's locks."""
    ipc = ServerIpc.attach(port)
    try:
        return ipc.locks[obj].value, ipc.locks[obj].holder()
    finally:
        ipc.close()


@pytest.mark.parametrize("which", ["directory", "messages"])
def test_a_worker_killed_holding_a_posix_lock_stalls_nobody_and_the_parent_posts_v(
    start_server, connect, which
):
    server = start_server("--ipc", "posix", "--lesson-hooks", "--trace")
    a, b, c = connect(target=server), connect(target=server), connect(target=server)
    obj = IpcObject.DIRECTORY_SEMAPHORE if which == "directory" else IpcObject.MESSAGES_SEMAPHORE
    a.send(f"/holdlock {which}")
    wait_until(lambda: lock_state(server.port, obj)[0] == 0, what="the lock held")
    holder = lock_state(server.port, obj)[1]
    assert holder in server.worker_pids()  # the holder recorded itself right after P
    killed = time.monotonic()
    os.kill(holder, signal.SIGKILL)  # no SEM_UNDO: only the parent can give the lock back
    b.expect(rf"client {a.id} disconnected \(its worker process died: SIGKILL\)")
    b.send(f"/send {c.id} still chatting")
    c.expect(r"still chatting$")
    assert time.monotonic() - killed < PATIENCE  # given back at the reap, not after a time-out
    assert lock_state(server.port, obj) == (1, 0)
    log = server.log()
    assert f"worker {holder} died holding the /shmchat-{server.port}-{which}-lock" in log
    assert "Traceback" not in log
    ipc = ServerIpc.attach(server.port)
    try:  # the tables are consistent: a's row is gone, b and c are online, with open mailboxes
        assert {info.client_id for info in ipc.directory.online()} == {b.id, c.id}
        assert [box.open for box in ipc.messages.stats()][:3].count(True) == 2
    finally:
        ipc.close()
    trace = subprocess.run(
        [sys.executable, "-m", "shm", "trace", "--port", str(server.port), "--json"],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    events = [json.loads(line) for line in trace.stdout.splitlines()]
    released = [e for e in events if e["event"] == "released"]
    assert [(e["who"], e["lock"], e["child"]) for e in released] == [("parent", which, holder)]
    assert not [e for e in events if e["event"] == "undo"]  # no SEM_UNDO on POSIX: the parent's row says so


def test_a_holder_killed_before_it_could_record_its_pid_is_covered_by_the_bounded_wait(start_server, connect):
    server = start_server("--ipc", "posix")
    a = connect(target=server)
    name = layout.posix_name(server.port, IpcObject.DIRECTORY_SEMAPHORE)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # sem_wait and nothing else: what a worker killed before its pid store leaves
        posix_ipc.Semaphore(name).acquire()
        os.write(ready_w, b"x")
        signal.pause()
        os._exit(0)
    assert os.read(ready_r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(ready_r)
    os.close(ready_w)
    assert lock_state(server.port, IpcObject.DIRECTORY_SEMAPHORE) == (0, 0)  # held, by nobody named
    started = time.monotonic()
    late = connect(target=server)  # the parent needs the directory lock for the newcomer's slot
    assert time.monotonic() - started < PATIENCE + 3
    a.expect(rf"client {late.id} joined")
    assert "never recorded its pid" in server.log()


def test_a_killed_posix_server_leaves_names_in_dev_shm_that_a_restart_reclaims_in_one_line(start_server):
    first = start_server("--ipc", "posix")
    port = first.port
    assert len(names_of(port)) == 5
    first.kill()
    assert len(names_of(port)) == 5  # names outlive every process until someone unlinks them
    assert "stale (server gone)" in whose(list_objects(port))
    second = start_server("--ipc", "posix", "--port", str(port))
    wait_until(lambda: "removed stale" in second.log(), what="the 'removed stale' line")
    (line,) = [line for line in second.log().splitlines() if "removed stale" in line]
    assert "(5): " in line and line.count(f"/shmchat-{port}-") == 5


def test_shm_cleanup_unlinks_a_dead_posix_servers_names_and_keeps_a_live_ones(start_server):
    dead, live = start_server("--ipc", "posix"), start_server("--ipc", "posix")
    dead.kill()
    # One port at a time: a cleanup of every port would also remove what other
    # test runs' crashed servers left, which those runs may be about to reclaim.
    said = ""
    for port in (dead.port, live.port):
        said += subprocess.run(
            [sys.executable, "-m", "shm", "cleanup", "--port", str(port)],
            cwd=ROOT,
            env=python_env(),
            capture_output=True,
            text=True,
        ).stdout
    assert f"/shmchat-{dead.port}-clients" in said
    assert names_of(dead.port) == set()
    assert len(names_of(live.port)) == 5
    assert f"kept the objects of port {live.port}: server pid {live.pid}" in said


@pytest.mark.parametrize("api", ["sysv", "posix"])
def test_shm_list_run_by_another_user_calls_a_live_server_live_and_says_whose(start_server, api):
    server = start_server("--ipc", api)
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the listing as user nobody sees root's objects, but cannot read them (mode 0600)
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(read_w, whose(list_objects(server.port)).encode())
        finally:
            os._exit(0)
    os.close(read_w)
    with os.fdopen(read_r) as pipe:
        verdict = pipe.read()
    os.waitpid(pid, 0)
    if api == "sysv":  # nattch and the creator's pid tell it is alive
        assert verdict == f"server pid {server.pid} (user root)"
    else:  # a POSIX name shows only its owner: never called stale
        assert verdict == "user root's, which cannot be read here: kept"


def test_shm_inspect_shows_a_posix_servers_objects_by_name_with_sizes_and_semaphore_values(
    start_server, connect
):
    server = start_server("--ipc", "posix")
    connect(target=server)
    shown = subprocess.run(
        [sys.executable, "-m", "shm", "inspect", "--port", str(server.port), "--color", "never"],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    port = server.port
    assert (
        f"/dev/shm/shmchat-{port}-clients" in shown and f"/dev/shm/sem.shmchat-{port}-messages-lock" in shown
    )
    assert re.search(rf"/shmchat-{port}-directory-lock\s+-\s+client \+ group tables\s+1 free", shown)
    assert re.search(rf"/dev/shm/shmchat-{port}-messages\s+-\s+1,311,112 B", shown)
    assert "POSIX named, no undo" in shown and "mapped PROT_READ" in shown


def test_the_trace_derives_sem_undo_only_on_system_v_where_the_kernel_does_it():
    taken = TraceRecord(ring=1, seq=1, t_ns=10, pid=4242, who=11111, event=TraceEvent.LOCK, lock=4)
    dead = lambda pid: False  # noqa: E731  (the holder is gone, and no reap is in the trace yet)
    assert [e.event for e in with_undo([taken], dead)] == [TraceEvent.LOCK, TraceEvent.UNDO]
    # POSIX: a dead holder's lock is held until the parent's RELEASED row, never "undone"
    assert [e.event for e in with_undo([taken], dead, kernel_undo=False)] == [TraceEvent.LOCK]
    released = taken._replace(ring=0, seq=1, t_ns=20, pid=1, who=0, event=TraceEvent.RELEASED, child=4242)
    assert [e.event for e in with_undo([taken, released], dead)] == [TraceEvent.LOCK, TraceEvent.RELEASED]
