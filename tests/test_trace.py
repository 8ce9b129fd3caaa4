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
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable

import pytest
import sysv_ipc
import tablekit
import wcwidth
from conftest import ROOT, TIMEOUT, piped, python_env

from inspector.trace_view import TraceView, event_text, fit, render
from shm import layout
from shm.discovery import list_objects, running_servers
from shm.layout import IpcObject, TraceEvent, WakeSource
from shm.mailboxes import Posting, PostResult
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


def test_a_traced_batch_records_one_post_per_record_at_its_offset(traced):
    # A run of records for one mailbox goes in with one copy; the trace still
    # shows each record where it lies, and the first one that found no room.
    sender, receiver = tablekit.online(traced, 2)
    traced.tracer_for(1 + sender.slot, sender.client_id)
    room = traced.messages.mailbox_bytes
    sizes = [100, 2000, 300, room - 2000]  # the last one does not fit after the others
    to = (receiver.slot, receiver.generation)
    posts = [Posting(*to, tablekit.record(bytes(n), sender.slot)) for n in sizes]
    assert traced.messages.post(posts) == [PostResult.DELIVERED] * 3 + [PostResult.FULL]

    found = [e for e in traced.trace.reader().read() if e.event is TraceEvent.POST]
    header = layout.RECORD_HEADER_SIZE
    assert [(e.offset, e.bytes, e.as_json()["result"]) for e in found] == [
        (0, 100 + header, "delivered"),
        (100 + header, 2000 + header, "delivered"),
        (2100 + 2 * header, 300 + header, "delivered"),
        (0, room - 2000 + header, "full"),
    ]


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
    assert len([line for line in lines if "t (ms)" in line]) == 1  # one header: every process known
    names, pids = lines[0], lines[1]  # the header: who, then the pid under it
    assert names.index("parent") < names.index("10001") < names.index("20002")
    assert [pids.index(f"pid {pid}") for pid in (100, 101, 102)] == [
        names.index(who) for who in ("parent", "10001", "20002")
    ]
    post = next(line for line in lines if "post →20002 @512 29 B" in line)
    assert post.index("post") == names.index("10001")  # under the sender
    wake = next(line for line in lines if "wake doorbell" in line)
    assert "▶ wake doorbell" in wake and "60.0 µs" in wake  # 74 - 14 µs after the ring
    assert wake.index("60.0 µs") < wake.index("▶") and "─" in wake
    times = [line.split()[0] for line in lines[3:]]  # ms since the first event, in time order
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
    at = next(i for i, line in enumerate(lines) if "t (ms)" in line)
    names, pids = lines[at], lines[at + 1]
    assert "30003" in names and "20002" in names and "pid 103" in pids and "pid 102" in pids
    assert "10001" not in names and "pid 101" not in pids  # the reaped worker's column made room


#: Eight workers, as in the demo with a lesson running, with pids as long as Linux makes them.
PARENT = 4194000
WORKERS = {4194001 + n: 10001 + 11111 * n for n in range(8)}  # pid -> client id


def eight_workers() -> list[TraceRecord]:
    """Eight clients connect, the first sends to the last and the last to the second (long
    waits, a full mailbox), the third is killed holding the messages lock."""
    events, t = [], 0
    for slot, (pid, who) in enumerate(WORKERS.items()):
        t += 100
        events += [
            record(0, t, PARENT, 0, TraceEvent.ACCEPT, slot=slot, to=who),
            record(0, t + 1, PARENT, 0, TraceEvent.FORK, child=pid, slot=slot, to=who),
            record(1 + slot, t + 5, pid, who, TraceEvent.SEND, bytes=64),
        ]
    pids, ids = list(WORKERS), list(WORKERS.values())
    for sender, receiver in ((0, 7), (7, 1)):
        s_pid, r_pid, s_who, r_who = pids[sender], pids[receiver], ids[sender], ids[receiver]
        t += 1000
        events += [
            record(1 + sender, t, s_pid, s_who, TraceEvent.WAKE, source=WakeSource.SOCKET),
            record(1 + sender, t + 1, s_pid, s_who, TraceEvent.RECV, bytes=4096),
            record(1 + sender, t + 2, s_pid, s_who, TraceEvent.LOCK, lock=4, waited_us=2016024),
            record(
                1 + sender,
                t + 3,
                s_pid,
                s_who,
                TraceEvent.POST,
                to=r_who,
                offset=262100,
                bytes=4120,
                status=2,
            ),
            record(1 + sender, t + 4, s_pid, s_who, TraceEvent.UNLOCK, lock=4),
            record(1 + sender, t + 5, s_pid, s_who, TraceEvent.RING, to=r_who, slot=receiver),
            record(1 + receiver, t + 2000, r_pid, r_who, TraceEvent.WAKE, source=WakeSource.DOORBELL),
            record(1 + receiver, t + 2001, r_pid, r_who, TraceEvent.TAKE, records=12, bytes=4120),
        ]
    t += 5000
    events += [
        record(3, t, pids[2], ids[2], TraceEvent.LOCK, lock=4, waited_us=3),
        record(0, t + 900, PARENT, 0, TraceEvent.REAP, child=pids[2], slot=2, to=ids[2], status=9),
    ]
    return with_undo(events, alive=lambda pid: False)


def assert_fits(
    lines: list[str],
    width: int,
    pids: Iterable[int] = (PARENT, *WORKERS),
    ids: Iterable[int] = WORKERS.values(),
) -> None:
    """No line wider than ``width`` (wide characters count 2), every pid and client id whole."""
    pids, ids = set(pids), set(ids)
    for line in lines:
        assert wcwidth.wcswidth(line) <= width, f"{wcwidth.wcswidth(line)} columns: {line!r}"
        for pid in re.findall(r"(?:pid|reap) (\d+)", line):
            assert int(pid) in pids, f"a cut pid {pid}: {line!r}"
        numbers = re.sub(r"(?:pid|reap) \d+|\d+ (?:µs|B|rec)\b", "", line)  # what is left may be an id
        for who in re.findall(r"(?<![\d.,@])\d{5}(?![\d.,])", numbers):
            assert int(who) in ids, f"a cut client id {who}: {line!r}"


def test_eight_workers_fit_96_columns_with_every_pid_whole():
    lines = render(eight_workers(), width=96)
    assert_fits(lines, 96)
    names, pids = lines[0], lines[1]
    assert "t (ms)" in names and "parent" in names and "others" in names
    shown = [pid for pid in WORKERS if f"pid {pid}" in pids]
    # The workers that sent (0 and 7) or were sent to (1) keep a column, though 0 and 1 are
    # the oldest; the five that only connected share "others".
    assert shown == [list(WORKERS)[n] for n in (0, 1, 7)]
    note = " ".join(lines[3 : lines.index(next(line for line in lines if "0.000" in line))])
    for pid, who in WORKERS.items():  # every other one is named, whole, in the note
        assert pid in shown or f"{who} (pid {pid})" in note
    killed = list(WORKERS.values())[2]  # in "others": its rows say whose they are
    assert any(f"{killed} ✝ SEM_UNDO messages" in line for line in lines)


def test_a_text_too_long_for_its_room_loses_whole_words_never_a_numbers_unit():
    assert fit("96697 lock directory 5120 µs", 26) == "96697 lock directory …"
    assert fit("reap 4194001 SIGKILL", 15) == "reap 4194001 …"
    assert fit("lock messages 12 µs", 19) == "lock messages 12 µs"


def test_after_hours_of_following_the_time_column_widens_under_a_new_header():
    hour = 3_600_000_000  # µs
    view = TraceView(width=96, height=20)
    lines = []
    for at in (0, hour, 3 * hour):
        lines += view.feed([record(1, at, 101, 10001, TraceEvent.RECV, bytes=5)])
    assert_fits(lines, 96, pids=[101], ids=[10001])
    last_header = max(i for i, line in enumerate(lines) if "t (ms)" in line)
    assert lines[-1].startswith("10,800,000.000 ")  # three hours, in ms
    assert lines[-1].index("recv") == lines[last_header].index("10001")  # still under its header


@pytest.mark.parametrize("width", range(30, 201, 17))
def test_at_any_width_no_line_is_wider_and_no_pid_is_cut(width):
    assert_fits(render(eight_workers(), width=width), width)


def test_at_160_columns_each_of_the_eight_workers_has_a_column():
    lines = render(eight_workers(), width=160)
    assert_fits(lines, 160)
    assert "others" not in lines[0]
    assert all(f"pid {pid}" in lines[1] for pid in (PARENT, *WORKERS))


def test_a_resized_pane_gets_a_new_header_that_fits():
    events = eight_workers()
    view = TraceView(width=160)
    wide = view.feed(events[:20])
    view.width = 96
    narrow = view.feed(events[20:])
    assert_fits(narrow, 96)
    assert "t (ms)" in narrow[1] and "others" in narrow[1]  # after a blank line
    assert max(wcwidth.wcswidth(line) for line in wide) > 96


def test_followed_the_header_comes_again_before_it_scrolls_out_of_the_pane():
    view = TraceView(width=96, height=20)
    shown: list[str] = []
    for event in eight_workers() * 3:
        shown += view.feed([event])
        pane = shown[-19:]  # what a 20-line pane shows above the cursor's line
        assert any("t (ms)" in line for line in pane), "\n".join(pane)
    assert_fits(shown, 96)


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
    reason="needs unshare --ipc --mount (root) for a machine with no other servers",
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
        # A new IPC namespace hides other servers' System V objects; /dev/shm (POSIX
        # objects) is a file system, so it gets a private tmpfs of its own too.
        [
            "unshare",
            "--ipc",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs shmchat-alone /dev/shm && exec "$@"',
            "sh",
            sys.executable,
            "-c",
            ALONE,
        ],
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


def test_shm_trace_of_eight_workers_fits_96_columns_once_and_followed(start_server, connect):
    server = start_server("--trace", "--max-clients", "8")
    env = {**python_env(), "COLUMNS": "96", "LINES": "20"}
    command = [sys.executable, "-m", "shm", "trace", "--port", str(server.port)]
    follow = subprocess.Popen(
        [*command, "--follow"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    followed: list[str] = []
    reading = threading.Thread(
        target=lambda: followed.extend(line.rstrip("\n") for line in piped(follow.stdout))
    )
    reading.start()
    try:
        clients = [connect(target=server) for _ in range(8)]
        clients[0].send(f"/send {clients[7].id} from the first to the last")
        clients[7].expect(r"from the first to the last")
        pids = {server.pid, *server.worker_pids()}
        assert len(pids) == 9
        victim = wait_until(lambda: worker_of(server.port, clients[3].id), "the fourth worker's pid")
        os.kill(victim, signal.SIGKILL)
        clients[0].expect(rf"client {clients[3].id} disconnected")

        def trace_with_the_reap() -> subprocess.CompletedProcess | None:
            once = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
            assert once.returncode == 0, once.stderr
            return once if f"reap {victim} SIGKILL" in once.stdout else None

        once = wait_until(trace_with_the_reap, "the reap in the trace")
        wait_until(lambda: any(f"reap {victim}" in line for line in followed), "the reap followed")
    finally:
        server.stop()
        assert follow.wait(TIMEOUT) == 0, piped(follow.stderr).read()
        reading.join(TIMEOUT)
    for lines in (once.stdout.splitlines(), followed):
        assert "t (ms)" in lines[0] and "pid" in lines[1]
        assert any(f"reap {victim} SIGKILL" in line for line in lines)
        assert_fits(lines, 96, pids, {client.id for client in clients})
    window = 19  # a 20-line pane shows 19 lines above the cursor's
    for end in range(window, len(followed) + 1):  # the pane after each row printed
        if re.match(r" *[\d,]+\.\d{3} ", followed[end - 1]):
            assert any("t (ms)" in line for line in followed[end - window : end]), end


def worker_of(port: int, client_id: int) -> int | None:
    from shm.snapshot import take_snapshot

    snap = take_snapshot(port)
    return next((c.pid for c in snap.clients or [] if c.online and c.client_id == client_id), None)
