"""The guided lessons (``./dev lesson``) and the demo's trace pane, end to end.

Each lesson runs as ``python -m lessons NAME --port P`` against a real server
started with ``--trace --lesson-hooks`` (what ``./dev demo`` starts), its
narration read from stdout, and must leave no process and no IPC object.
The tmux test starts the real demo, watches one typed message cross its
trace pane, runs a lesson against the demo's own server and stops it all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import wcwidth
from conftest import ROOT, TIMEOUT, ServerProcess, python_env
from demokit import Demo, free_port

from shm.discovery import list_objects

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

LESSON_TIMEOUT = 90
T = TypeVar("T")


def lesson(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lessons", *args],
        cwd=ROOT,
        env=python_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LESSON_TIMEOUT,
    )


def wait_for(what: str, check: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)
    return found


def no_workers_left(server: ServerProcess) -> None:
    """Every worker the lesson caused has exited and been reaped (no process left)."""
    wait_for("the lesson's workers exiting", lambda: server.worker_pids() == [])


@pytest.fixture
def lesson_server(start_server) -> ServerProcess:
    return start_server("--trace", "--lesson-hooks", "--no-flood-control")


def test_the_list_names_every_lesson() -> None:
    done = lesson()
    assert done.returncode == 0
    for name in ("send", "undo", "backpressure", "cleanup"):
        assert re.search(rf"^  \./dev lesson {name} ", done.stdout, re.M), done.stdout


def test_without_a_server_the_lesson_says_how_to_start_the_demo() -> None:
    port = free_port()
    done = lesson("undo", "--port", str(port))
    assert done.returncode == 1
    assert f"no shmchat server on port {port}" in done.stderr
    assert f"start it with './dev demo --port {port}'" in done.stderr


def test_a_server_without_trace_is_refused_with_how_to_start_the_demo(server) -> None:
    done = lesson("send", "--port", str(server.port))
    assert done.returncode == 1
    assert "runs without --trace" in done.stderr and "./dev demo" in done.stderr


def test_send_shows_every_step_with_its_system_call(lesson_server: ServerProcess) -> None:
    done = lesson("send", "--port", str(lesson_server.port))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    b_id = int(re.search(r"B is client (\d{5})", out).group(1))  # type: ignore[union-attr]
    rows = [
        r"A's worker\s+wake socket\s+epoll_wait",
        r"A's worker\s+recv \d+ B\s+recv",
        r"A's worker\s+lock messages \(waited \d+ µs\)\s+semop P, SEM_UNDO",
        rf"A's worker\s+post →{b_id} @\d+ \d+ B\s+none: memcpy",
        r"A's worker\s+unlock messages\s+semop V, SEM_UNDO",
        rf"A's worker\s+ring →{b_id}\s+write",
        r"B's worker\s+wake doorbell\s+epoll_wait",
        r"B's worker\s+take 1 rec \d+ B\s+none: memcpy",
        r"B's worker\s+send \d+ B\s+send",
    ]
    at = [re.search(row, out).start() for row in rows]  # type: ignore[union-attr]
    assert at == sorted(at), out  # in that order
    assert re.search(r"From the ring to the wake: \d+\.\d µs", out)
    no_workers_left(lesson_server)


def test_undo_shows_the_lock_handed_back_and_chatting_going_on(lesson_server: ServerProcess) -> None:
    done = lesson("undo", "--port", str(lesson_server.port))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    h_pid = int(re.search(r"H is client \d{5}, its worker is pid (\d+)", out).group(1))  # type: ignore[union-attr]
    assert re.search(rf"messages lock: value 0 = held by pid {h_pid} \(H's worker\), 0 waiting", out)
    assert re.search(rf"messages lock: value 0 = held by pid {h_pid} \(H's worker\), [1-9]\d* waiting", out)
    assert re.search(rf"parent\s+reap {h_pid}", out)
    assert re.search(r"H's worker\s+✝ SEM_UNDO messages\s+<- given back by the kernel \(SEM_UNDO\)", out)
    assert "A got: [msg from" in out and "yes, still here" in out
    no_workers_left(lesson_server)


def test_undo_prints_at_the_kill_what_its_narration_says(lesson_server: ServerProcess) -> None:
    """The kernel gives the 1 back, A's blocked semop returns, B gets the message, and the
    lock, read afterwards, is free or held by a live process other than H, and said so."""
    done = lesson("undo", "--port", str(lesson_server.port))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    h_pid = int(re.search(r"H is client \d{5}, its worker is pid (\d+)", out).group(1))  # type: ignore[union-attr]
    a_id = re.search(r"A is client (\d{5})", out).group(1)  # type: ignore[union-attr]
    kill = out[out.index(f"kill -KILL {h_pid}") : out.index("The trace, read back")]
    said = " ".join(line.strip() for line in kill.splitlines() if line.startswith("   ") and line[3] != " ")
    shown = [line.strip() for line in kill.splitlines() if line.startswith("     ")]
    assert "adds the 1 back" in said and "A's blocked semop completes" in said
    assert re.fullmatch(
        r"H's worker\s+✝ SEM_UNDO messages\s+<- no unlock from H: SEM_UNDO gave the 1 back", shown[0]
    )
    assert re.fullmatch(
        r"A's worker\s+lock messages \(waited \d+ µs\)\s+<- A's blocked semop P returned", shown[1]
    )
    assert shown[2] == f"B got: [msg from {a_id}] are you there?"
    assert re.fullmatch(
        rf"messages lock before the kill: value 0 = held by pid {h_pid} \(H's worker\), [1-9]\d* waiting",
        shown[4],
    )
    after = shown[5].removeprefix("messages lock after: ")
    free = re.fullmatch(r"value 1 = free, \d+ waiting, last semop by pid (\d+)( \(.+\))?", after)
    held = re.fullmatch(
        r"value 0 = held by pid (\d+)( \(.+\))?, \d+ waiting: in use again, by a live process", after
    )
    assert free or held, after
    assert int((free or held).group(1)) != h_pid  # type: ignore[union-attr]
    # The trace read back claims no order between A's first lock and the reap: it varies.
    rows = out[out.index("The trace, read back") : out.index("Everybody keeps chatting")]
    assert "before the undo row" not in rows and "after the undo row" not in rows
    assert re.search(r"A's worker\s+lock messages \(waited \d+ µs\)", rows)
    # After the kill the words never say the lock is free: by then it may be in use again.
    rest = out[out.index(f"kill -KILL {h_pid}") :]
    words = " ".join(line.strip() for line in rest.splitlines() if line.startswith("   ") and line[3] != " ")
    assert not re.search(r"is free(?!, or held)|value 1", words), words
    no_workers_left(lesson_server)


def test_sysv_vs_posix_shows_the_kernel_undo_then_the_parents_v_and_leaves_dev_shm_clean(
    lesson_server: ServerProcess,
) -> None:
    done = lesson("sysv-vs-posix", "--port", str(lesson_server.port))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    posix_port = int(re.search(r"ls -l /dev/shm \(the POSIX server on port (\d+)\)", out).group(1))  # type: ignore[union-attr]
    assert re.search(rf"sem  0x{(0x5C4 << 20) | (lesson_server.port << 4) | 4:08x}  id \d+\s+\S+  600", out)
    assert "-rw------- 1 " in out and f"sem.shmchat-{posix_port}-messages-lock" in out
    sysv, posix = out.split("System V: three clients", 1)[1].split("POSIX: three clients", 1)
    for part in (sysv, posix):  # the printed lock state agrees with the narration
        holder = int(re.search(r"kill -KILL (\d+)", part).group(1))  # type: ignore[union-attr]
        assert f"messages lock: value 0 = held, holder pid {holder} (H's worker)" in part
        assert "messages lock: value 1 = free; B answered A" in part
    assert "✝ SEM_UNDO messages   <- the kernel gave it back" in sysv and "released by parent" not in sysv
    assert (
        "✝ released by parent messages   <- the parent posts V" in posix
        and "SEM_UNDO messages  " not in posix
    )
    released, reaped = posix.index("released by parent"), posix.index("<- the parent reaps H's worker")
    assert released < reaped  # the parent gives the lock back, then repairs the dead worker's rows
    assert re.search(rf"worker {holder} died holding the /shmchat-{posix_port}-messages-lock", posix)
    assert "server stopped with SIGTERM: 0 of its objects left" in out
    assert list_objects(posix_port) == []
    no_workers_left(lesson_server)


def test_on_a_posix_server_send_and_backpressure_run_and_undo_says_it_is_about_system_v(start_server) -> None:
    server = start_server(
        "--trace", "--lesson-hooks", "--no-flood-control", "--ipc", "posix", "--max-clients", "8"
    )
    for name in ("send", "backpressure"):
        done = lesson(name, "--port", str(server.port))
        assert done.returncode == 0, done.stdout + done.stderr
    done = lesson("undo", "--port", str(server.port))
    assert done.returncode == 1
    assert "this lesson is about System V (SEM_UNDO)" in done.stderr and "sysv-vs-posix" in done.stderr
    no_workers_left(server)


def test_backpressure_fills_the_mailbox_holds_the_sender_and_cuts_the_reader_off(
    lesson_server: ServerProcess,
) -> None:
    done = lesson("backpressure", "--port", str(lesson_server.port))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"S's mailbox: \d+ records pending, [\d,]+ of 262,144 B used, found full [1-9]", out)
    assert re.search(r"waiting for room in it: slot\(s\) \[\d\] \(A's\)", out)
    assert re.search(r"still in\s+.*A's own socket send queue", out, re.S)
    assert re.search(
        r"A got: \[server\] client \d{5} was disconnected \(it stopped reading its messages\)", out
    )
    assert "stopped reading" in lesson_server.log() and "limit 4194304" in lesson_server.log()
    no_workers_left(lesson_server)


def test_cleanup_stops_the_server_and_ipcs_shows_nothing_left(lesson_server: ServerProcess) -> None:
    port = lesson_server.port
    assert len(list_objects(port)) == 6
    done = lesson("cleanup", "--port", str(port))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    before, after = out.split("ipcs afterwards")
    for obj in range(6):  # the keys of all six objects were listed before
        assert f"0x{(0x5C4 << 20) | (port << 4) | obj:08x}" in before
    assert len(re.findall(r"removed$", before, re.M)) == 6
    assert f"list no key of port {port}" in after
    assert lesson_server.proc.wait(TIMEOUT) == 0  # SIGINT: a clean stop
    assert list_objects(port) == []


# -- the demo, in tmux -------------------------------------------------------------------------


@needs_tmux
@pytest.mark.tmux
def test_the_demo_traces_a_typed_message_runs_a_lesson_and_stops_clean(tmp_path: Path) -> None:
    demo = Demo(tmp_path)
    port, pane, tmux, wait_screen = demo.port, demo.pane, demo.tmux, demo.wait_screen
    started = demo.run("start")
    pane_pids: list[int] = []
    try:
        assert started.returncode == 0, started.stderr
        assert "./dev lesson" in started.stdout
        titles = tmux("list-panes", "-t", "demo", "-F", "#{pane_title}")
        assert f"trace  (./dev shm trace --port {port} --follow)" in titles
        assert f"--port {port} --trace --lesson-hooks" in titles
        ids = {n: int(wait_screen(pane(f"client {n}"), r"unique id is (\d{5})").group(1)) for n in "ABC"}
        wait_screen(pane("inspector"), r"3/8 online")
        pane_pids = demo.pane_pids()
        assert len(pane_pids) == 6
        # One message typed in A crosses the trace pane: A rings B, B wakes and sends.
        tmux("send-keys", "-t", pane("client A"), f"/send {ids['B']} watch me travel", "Enter")
        wait_screen(pane("client B"), rf"\[private\] {ids['A']} → you: watch me travel")
        trace = pane("trace")
        wait_screen(trace, rf"ring →{ids['B']}")
        wait_screen(trace, r"µs ─*▶ wake doorbell|wake doorbell ◀─* [\d.]+ µs")
        # A lesson runs against the demo's own server (--port: other test runs may have
        # servers on this machine, and the lesson would ask which one).
        done = lesson("undo", "--port", str(port))
        assert done.returncode == 0, done.stdout + done.stderr
        wait_screen(trace, r"✝ SEM_UNDO messages")
        for name in "ABC":  # the demo's own clients kept chatting, and saw H leave
            wait_screen(pane(f"client {name}"), r"disconnected \(its worker process died: SIGKILL\)")
        # The trace fits its pane: no line wrapped (the capture joins wrapped lines back into
        # one), and after the lesson's burst of rows a header is still in sight.
        width = int(tmux("display-message", "-p", "-t", trace, "#{pane_width}"))
        assert max(wcwidth.wcswidth(line) for line in demo.screen(trace).splitlines()) <= width
        assert "t (ms)" in tmux("capture-pane", "-p", "-t", trace)
    finally:
        stopped = demo.run("stop")
    demo.assert_stopped_clean(stopped, pane_pids)


@needs_tmux
def test_the_demo_on_posix_ipc_shows_the_parent_releasing_a_dead_holders_lock(tmp_path: Path) -> None:
    demo = Demo(tmp_path)
    started = demo.run("start", "--ipc", "posix")
    pane_pids: list[int] = []
    try:
        assert started.returncode == 0, started.stderr
        assert (
            f"--port {demo.port} --trace --lesson-hooks --no-flood-control --max-clients 8 --ipc posix"
            in demo.tmux("list-panes", "-t", "demo", "-F", "#{pane_title}")
        )
        demo.wait_screen(demo.pane("inspector"), r"3/8 online")
        # The SEMAPHORES section names each POSIX lock (the IPC OBJECTS list below it
        # may be cut at the pane's foot once a lesson's clients add rows).
        demo.wait_screen(demo.pane("inspector"), rf"^ /shmchat-{demo.port}-messages-lock ")
        demo.wait_screen(demo.pane("inspector"), r"SEMAPHORES  one binary lock each, POSIX named, no undo")
        assert {e.api for e in list_objects(demo.port)} == {"posix"}
        pane_pids = demo.pane_pids()
        done = lesson("sysv-vs-posix", "--port", str(demo.port))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "The demo's server (port" in done.stdout and "runs on POSIX IPC" in done.stdout
        demo.wait_screen(demo.pane("trace"), r"✝ released by")  # the parent's V, in the demo's pane
    finally:
        stopped = demo.run("stop")
    demo.assert_stopped_clean(stopped, pane_pids)
