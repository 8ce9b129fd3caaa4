"""The trace table: rings, the lock-free reader, TracedLock, discovery, ``shm trace``.

The rings are tested on real System V segments, written by real processes
(forked, and one killed with SIGKILL in the middle of a record).  Discovery
and the ``shm`` commands run against real servers; where a test needs to
know that *no other* server is running, it runs in an IPC namespace of its
own (``unshare --ipc``), since other test runs may share this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import sysv_ipc
from conftest import ROOT, TIMEOUT, python_env

from inspector.trace_view import TraceView, event_text, render
from shm import layout
from shm.discovery import list_objects, running_servers
from shm.layout import IpcObject, TraceEvent, WakeSource
from shm.segments import ServerIpc
from shm.trace_reader import TraceRecord, with_undo


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def traced():
    ipc = ServerIpc.create(unused_port(), max_clients=4, trace=True, trace_records=16)
    yield ipc
    ipc.close()


def shm(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shm", *args],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def child(body) -> int:
    """Fork a process that runs ``body()`` and exits 0, or 1 if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# -- the ring -----------------------------------------------------------------------------


def test_a_ring_keeps_the_newest_records_in_order(traced):
    writer = traced.tracer_for(0)
    for n in range(40):  # more than the 16 records of a ring: it wraps
        writer.recv(n)
    events = traced.trace.reader().read()
    assert [e.bytes for e in events] == list(range(24, 40))
    assert [e.seq for e in events] == list(range(25, 41))
    assert all(e.event is TraceEvent.RECV and e.pid == os.getpid() and e.who == 0 for e in events)
    assert [e.t_ns for e in events] == sorted(e.t_ns for e in events)


def test_every_field_reads_back_as_written(traced):
    writer = traced.tracer_for(0)
    writer.accept(2, 23456)
    worker = traced.tracer_for(3, 23456)
    worker.post(2, offset=4096, nbytes=41)
    worker.post(2, offset=4137, nbytes=41, result="full")  # went nowhere: no offset
    accept, post, full = traced.trace.reader().read()
    assert (full.as_json()["result"], full.offset) == ("full", 0)
    assert (accept.event, accept.slot, accept.to, accept.ring) == (TraceEvent.ACCEPT, 2, 23456, 0)
    # The post names its receiver by the client id the parent wrote into ring 1 + slot.
    assert post.as_json() == {
        "t_ns": post.t_ns,
        "pid": os.getpid(),
        "who": 23456,
        "event": "post",
        "ring": 3,
        "seq": 1,
        "to": 23456,
        "slot": 2,
        "offset": 4096,
        "bytes": 41,
        "result": "delivered",
    }


def test_writers_in_several_processes_each_fill_their_own_ring(traced):
    parent = traced.tracer_for(0)

    def worker(slot: int) -> None:
        assert traced.trace.writer is None  # a child never inherits its parent's ring
        writer = traced.tracer_for(1 + slot, 10000 + slot)
        for n in range(10):
            writer.send(n)

    pids = []
    for slot in range(3):
        parent.accept(slot, 10000 + slot)
        pids.append(child(lambda slot=slot: worker(slot)))
    parent.recv(99)  # the parent's own ring, written meanwhile
    assert [exit_code(pid) for pid in pids] == [0, 0, 0]
    events = traced.trace.reader().read()
    assert [e.t_ns for e in events] == sorted(e.t_ns for e in events)  # merged by time
    for slot, pid in enumerate(pids):
        mine = [e for e in events if e.ring == 1 + slot]
        assert {(e.pid, e.who) for e in mine} == {(pid, 10000 + slot)}
        assert [e.bytes for e in mine] == list(range(10))
        assert [e.seq for e in mine] == list(range(1, 11))
    assert [e.event for e in events if e.ring == 0] == [TraceEvent.ACCEPT] * 3 + [TraceEvent.RECV]


def test_a_writer_killed_in_the_middle_of_a_record_leaves_it_unread(traced):
    stopped_r, stopped_w = os.pipe()

    def stop_here() -> None:
        os.write(stopped_w, b"x")  # "I am between two fields"
        signal.pause()  # until the SIGKILL

    def worker() -> None:
        writer = traced.tracer_for(1, 12345)
        writer.recv(1)
        writer.recv(2)
        writer.between_fields = stop_here
        writer.recv(3)

    pid = child(worker)
    assert os.read(stopped_r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    os.close(stopped_r)
    os.close(stopped_w)
    events = traced.trace.reader().read()
    assert [e.bytes for e in events] == [1, 2]  # the third is torn: skipped
    ring = layout.trace_ring_offset(1, traced.trace.records) + layout.TRACE_RING_HEADER_SIZE
    third = ring + 2 * layout.TRACE_RECORD_SIZE
    raw = bytes(traced.regions[IpcObject.TRACE_SEGMENT].view[third : third + layout.TRACE_RECORD_SIZE])
    assert layout.TRACE_SEQ.unpack_from(raw)[0] == 0  # "being written", forever
    assert layout.TRACE_RECORD.unpack(raw)[1] != 0  # though half of it was stored
    # The slot's next worker carries on from the last committed record.
    traced.tracer_for(1, 12345).recv(4)
    assert [(e.seq, e.bytes) for e in traced.trace.reader().read()] == [(1, 1), (2, 2), (3, 4)]


def test_traced_lock_records_the_microseconds_it_waited(traced):
    raw = traced.locks[IpcObject.MESSAGES_SEMAPHORE]  # the plain lock: the parent is not traced
    semaphore = sysv_ipc.Semaphore(raw.key)
    raw.reserve()

    def worker() -> None:
        traced.tracer_for(1, 11111)
        traced.messages.lock.reserve()  # the TracedLock the message table uses
        traced.messages.lock.release()

    pid = child(worker)
    wait_until(lambda: semaphore.waiting_for_nonzero == 1, "the worker to block on the lock")
    seen_waiting = time.monotonic_ns()
    time.sleep(0.02)  # hold the lock a while longer, so the wait is long enough to see
    released = time.monotonic_ns()
    raw.release()
    assert exit_code(pid) == 0
    lock, unlock = traced.trace.reader().read()
    assert (lock.event, lock.lock, unlock.event, unlock.lock) == (
        TraceEvent.LOCK,
        IpcObject.MESSAGES_SEMAPHORE,
        TraceEvent.UNLOCK,
        IpcObject.MESSAGES_SEMAPHORE,
    )
    # It asked before we saw it waiting and got the lock after we let go.
    assert lock.waited_us >= (released - seen_waiting) // 1000 >= 20_000
    assert lock.t_ns >= released


def test_a_lock_given_back_by_sem_undo_is_shown_as_such(traced):
    parent = traced.tracer_for(0)
    parent.accept(0, 12345)
    holding_r, holding_w = os.pipe()

    def worker() -> None:
        traced.tracer_for(1, 12345)
        traced.messages.lock.reserve()
        os.write(holding_w, b"x")
        signal.pause()

    pid = child(worker)
    assert os.read(holding_r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    parent.reap(pid, 0, 12345, status)
    os.close(holding_r)
    os.close(holding_w)
    assert traced.messages.lock.value == 1  # the kernel gave it back
    events = with_undo(traced.trace.reader().read())
    assert [(e.event, e.pid) for e in events if e.ring == 1] == [
        (TraceEvent.LOCK, pid),
        (TraceEvent.UNDO, pid),
    ]
    undo = events[-1]
    assert undo.lock == IpcObject.MESSAGES_SEMAPHORE and undo.as_json()["derived"] is True
    assert events[-2].event is TraceEvent.REAP and undo.t_ns == events[-2].t_ns
    assert "SEM_UNDO" in event_text(undo) and event_text(events[-2]) == f"reap {pid} SIGKILL"


def test_an_untraced_ipc_has_no_trace_and_no_writer():
    port = unused_port()
    with ServerIpc.create(port, max_clients=2) as ipc:
        assert ipc.tracer_for(0) is None and ipc.messages.tracer is None
        assert sorted(e.obj for e in list_objects(port)) == [*layout.SEGMENTS, *layout.SEMAPHORES]
    assert list_objects(port) == []


def test_a_dead_traced_servers_trace_segment_is_reclaimed():
    port = unused_port()
    ipc = ServerIpc.create(port, max_clients=2, trace=True)
    ipc.owner = False  # as if it died: detached, nothing removed
    ipc.close()
    assert IpcObject.TRACE_SEGMENT in {e.obj for e in list_objects(port)}
    with ServerIpc.create(port, max_clients=2) as fresh:
        assert fresh.trace is None
        assert sorted(e.obj for e in list_objects(port)) == [*layout.SEGMENTS, *layout.SEMAPHORES]
    assert list_objects(port) == []


# -- the diagram (no server) ---------------------------------------------------------------


def record(ring, t_us, pid, who, event, **fields) -> TraceRecord:
    return TraceRecord(ring, 1, t_us * 1000, pid, who, event, **fields)


SEND = [
    record(0, 0, 100, 0, TraceEvent.ACCEPT, slot=1, to=20002),
    record(1, 10, 101, 10001, TraceEvent.RECV, bytes=18),
    record(1, 11, 101, 10001, TraceEvent.LOCK, lock=4, waited_us=3),
    record(1, 12, 101, 10001, TraceEvent.POST, to=20002, offset=512, bytes=29, slot=1),
    record(1, 13, 101, 10001, TraceEvent.UNLOCK, lock=4),
    record(1, 14, 101, 10001, TraceEvent.RING, to=20002, slot=1),
    record(2, 74, 102, 20002, TraceEvent.WAKE, source=WakeSource.DOORBELL),
    record(2, 80, 102, 20002, TraceEvent.TAKE, records=1, bytes=29),
    record(2, 90, 102, 20002, TraceEvent.SEND, bytes=28),
]


def test_the_diagram_has_a_column_per_process_and_an_arrow_from_ring_to_wake():
    lines = render(SEND, width=100)
    assert len([line for line in lines if "pid" in line]) == 1  # one header: every process known
    header = lines[0]
    assert header.index("parent pid 100") < header.index("10001 pid 101") < header.index("20002 pid 102")
    post = next(line for line in lines if "post →20002 @512 29 B" in line)
    assert post.index("post") == header.index("10001 pid 101")  # under the sender
    wake = next(line for line in lines if "wake doorbell" in line)
    assert "▶ wake doorbell" in wake and "60.0 µs" in wake  # 74 - 14 µs after the ring
    assert wake.index("60.0 µs") < wake.index("▶") and "─" in wake
    times = [line.split()[0] for line in lines[2:]]  # ms since the first event, in time order
    assert times == ["0.000", "0.010", "0.011", "0.012", "0.013", "0.014", "0.074", "0.080", "0.090"]


def test_a_followed_pane_gives_a_reaped_workers_column_to_the_next_process():
    view = TraceView(width=100)
    view.feed(SEND)
    lines = view.feed(
        [
            record(0, 100, 100, 0, TraceEvent.REAP, child=101, slot=0, to=10001, status=0),
            record(3, 120, 103, 30003, TraceEvent.RECV, bytes=5),  # a newcomer in its own column
        ]
    )
    header = next(line for line in lines if "pid" in line)
    assert "30003 pid 103" in header and "20002 pid 102" in header
    assert "10001 pid 101" not in header  # the reaped worker's column made room


def test_a_wake_from_the_socket_answers_no_ring():
    lines = render([*SEND[:6], record(2, 50, 102, 20002, TraceEvent.WAKE, source=WakeSource.SOCKET)])
    assert "▶" not in lines[-1] and "wake socket" in lines[-1]


# -- real servers ---------------------------------------------------------------------------


def test_an_untraced_server_has_three_segments_and_shm_trace_says_so(server):
    assert sorted(e.obj for e in list_objects(server.port) if e.kind == "shm") == list(layout.SEGMENTS)
    result = shm("trace", "--port", str(server.port))
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "without --trace" in result.stderr


def test_discovery_lists_each_running_server_with_its_clients(start_server, connect):
    first, second = start_server(), start_server()
    for _ in range(2):
        connect(target=first)
    wait_until(
        lambda: {(s.port, s.pid, s.clients) for s in running_servers()} >= {(first.port, first.pid, 2)},
        "two clients online",
    )
    found = {s.port: s for s in running_servers()}
    assert (found[second.port].pid, found[second.port].clients, found[second.port].traced) == (
        second.pid,
        0,
        False,
    )
    # Several servers: both commands list them and ask for --port.
    for command in ("inspect", "trace"):
        result = shm(command)
        assert result.returncode == 2, result.stderr
        assert "--port" in result.stderr.splitlines()[0]
        assert f"port {first.port}  server pid {first.pid}  2 clients online" in result.stderr
        assert f"port {second.port}  server pid {second.pid}  0 clients online" in result.stderr


needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs unshare --ipc (root) for a machine with no other servers",
)

#: Run in a fresh IPC namespace: no server at all, then exactly one.
ALONE = r"""
import json, re, subprocess, sys
shm = [sys.executable, "-m", "shm"]
none = subprocess.run(shm + ["inspect"], capture_output=True, text=True)
print("none", none.returncode, repr(none.stderr))
server = subprocess.Popen([sys.executable, "-m", "server", "--port", "0"], stdout=subprocess.PIPE, text=True)
try:
    print("listening", re.search(r":(\d+)", server.stdout.readline()).group(1))
    one = subprocess.run(shm + ["inspect", "--json"], capture_output=True, text=True)
    print("one", one.returncode, json.loads(one.stdout)["port"] if one.returncode == 0 else one.stderr)
    trace = subprocess.run(shm + ["trace"], capture_output=True, text=True)
    print("trace", trace.returncode, repr(trace.stderr))
finally:
    server.terminate()
    server.wait(10)
"""


@needs_unshare
def test_discovery_alone_on_a_machine_finds_no_server_then_the_one(tmp_path):
    result = subprocess.run(
        ["unshare", "--ipc", sys.executable, "-c", ALONE],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=3 * TIMEOUT,
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["none"].startswith("1 "), result
    assert "no shmchat server" in lines["none"] and lines["none"].count("\\n") == 1  # one line
    port = lines["listening"]
    assert lines["one"].startswith("0 "), result
    assert lines["one"] == f"0 {port}"  # inspect found the server by itself
    assert lines["trace"].startswith("1 ") and f"port {port} runs without --trace" in lines["trace"]


def test_a_traced_send_crosses_the_processes_in_order(start_server, connect):
    server = start_server("--trace")
    a, b = connect(target=server), connect(target=server)
    a.send(f"/send {b.id} hello")
    b.expect(r"hello")

    def steps():
        result = shm("trace", "--port", str(server.port), "--json")
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        sender = [e for e in events if e["who"] == a.id]
        receiver = [e for e in events if e["who"] == b.id]
        send = subsequence(
            sender,
            [
                ("recv", {}),
                ("lock", {"lock": "messages"}),
                ("post", {"to": b.id}),
                ("unlock", {"lock": "messages"}),
                ("ring", {"to": b.id}),
            ],
        )
        if send is None:
            return None
        take = subsequence(
            [e for e in receiver if e["t_ns"] >= send[-1]["t_ns"]],
            [("wake", {"source": "doorbell"}), ("take", {}), ("send", {})],
        )
        return take and (send, take)

    (_recv, _lock, post, _unlock, ring), (wake, take, sent) = wait_until(steps, "the traced /send")
    assert post["bytes"] > len("hello") and take["records"] >= 1
    assert wake["t_ns"] >= ring["t_ns"]
    assert sent["bytes"] >= len(f"[msg from {a.id}] hello")


def subsequence(events: list[dict], wanted: list[tuple[str, dict]]) -> list[dict] | None:
    """The first events matching ``wanted`` in that order (others may come between)."""
    found: list[dict] = []
    for event in events:
        name, fields = wanted[len(found)]
        if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
            found.append(event)
            if len(found) == len(wanted):
                return found
    return None


def trace_events(port: int) -> list[dict]:
    result = shm("trace", "--port", str(port), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_killed_lock_holder_shows_sem_undo_in_the_trace(start_server, connect):
    server = start_server("--trace", "--lesson-hooks")
    a, b, holder = (connect(target=server) for _ in range(3))
    holder.send("/holdlock messages")

    def holding():
        mine = [e for e in trace_events(server.port) if e["who"] == holder.id and e["event"] != "send"]
        return mine and mine[-1]["event"] == "lock" and mine[-1]["lock"] == "messages" and mine[-1]

    pid = wait_until(holding, "the holder's lock in the trace")["pid"]
    os.kill(pid, signal.SIGKILL)
    undo = wait_until(
        lambda: [e for e in trace_events(server.port) if e["event"] == "undo" and e["pid"] == pid],
        "the SEM_UNDO row",
    )
    assert undo == [{**undo[0], "who": holder.id, "lock": "messages", "derived": True}]
    a.send(f"/send {b.id} still here")  # the lock is free again: everybody keeps chatting
    b.expect(r"still here")
