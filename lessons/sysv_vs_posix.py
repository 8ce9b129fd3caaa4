"""Lesson ``sysv-vs-posix``: the same SIGKILL of a lock holder on System V and on POSIX IPC.

The lesson runs against the demo's server and starts a second server of its
own on the other API (``--ipc posix`` beside a System V demo, or the other way
round), so that the same four steps can be watched on both: a worker takes
the messages lock and keeps it, another worker blocks on it, the holder is
killed with SIGKILL, and the lock comes back.  On System V the kernel gives
it back as the process dies (SEM_UNDO: the trace's derived ``✝ SEM_UNDO``
row); on POSIX nothing does until the parent reaps the dead worker and posts
V itself (the trace's ``✝ released by parent`` row).  It also shows where
each API's objects live (``ipcs`` against ``ls -l /dev/shm``) and who may
see them.  The second server is stopped with SIGTERM at the end, and its
names leave /dev/shm.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from lessons.kit import (
    LessonFailed,
    Narrator,
    TraceTail,
    connect_all,
    describe_event,
    wait_until,
    worker_pid,
)
from shm.discovery import SHM_DIR, IpcEntry, list_objects
from shm.layout import IpcObject, TraceEvent
from shm.segments import ServerIpc
from syscalls import programs

NAMES = {"sysv": "System V", "posix": "POSIX"}


def api_of(port: int) -> str:
    apis = {e.api for e in list_objects(port) if e.obj is IpcObject.CLIENTS_SEGMENT}
    if len(apis) != 1:
        raise LessonFailed(f"no one shmchat server's tables on port {port}")
    return apis.pop()


def messages_lock(port: int) -> tuple[int, int]:
    """(value, holder) of the messages lock: GETPID on System V, the recorded pid on POSIX."""
    ipc = ServerIpc.attach(port)
    try:
        lock = ipc.locks[IpcObject.MESSAGES_SEMAPHORE]
        return lock.value, lock.holder()
    finally:
        ipc.close()


@contextmanager
def second_server(api: str) -> Iterator[tuple[int, list[str]]]:
    """A server of the lesson's own on ``api`` (a free port); its log lines as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--ipc", api, "--trace", "--lesson-hooks"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    found = re.search(r"listening on [\d.]+:(\d+)", first)
    if not found:
        proc.kill()
        proc.wait()
        raise LessonFailed(f"the lesson's {NAMES[api]} server did not start: {proc.stderr.read().strip()}")
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(stderr.readline, "")), daemon=True)
    stderr = proc.stderr
    reader.start()
    try:
        yield int(found.group(1)), log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)


def _ls_line(entry: IpcEntry) -> str:
    """What ``ls -l /dev/shm`` prints for one POSIX object."""
    file = entry.name.lstrip("/") if entry.kind == "shm" else "sem." + entry.name.lstrip("/")
    info = os.stat(f"{SHM_DIR}/{file}")
    owner = pwd.getpwuid(info.st_uid).pw_name
    return f"{stat.filemode(info.st_mode)} 1 {owner} {owner} {info.st_size:>9} {file}"


def _ipcs_line(entry: IpcEntry) -> str:
    """What ``ipcs -m`` / ``ipcs -s`` prints for one System V object (key, id, owner, perms, size)."""
    owner = pwd.getpwuid(entry.uid).pw_name
    what = f"{entry.size:>9} bytes  nattch {entry.attached}" if entry.kind == "shm" else f"{entry.size} sem"
    return f"{entry.kind}  0x{entry.key:08x}  id {entry.id:<8} {owner}  600  {what}"


def where_they_live(say: Narrator, ports: dict[str, int]) -> None:
    say.step(
        "Where each API's objects live, and who may see them",
        "System V objects are numbered by key in a table of the kernel: 'ipcs -m -s' lists every "
        "user's, with owner, mode, size, attach count. POSIX objects are files on a tmpfs: "
        "'ls -l /dev/shm' lists them, a semaphore as sem.NAME. Both were created with mode 0600: "
        "anyone may see that they exist, only their owner (and root) may attach, map or open them.",
    )
    lines = [f"ipcs (the {NAMES['sysv']} server on port {ports['sysv']}):"]
    lines += ["  " + _ipcs_line(e) for e in list_objects(ports["sysv"]) if e.api == "sysv"]
    lines += [f"ls -l /dev/shm (the {NAMES['posix']} server on port {ports['posix']}):"]
    lines += ["  " + _ls_line(e) for e in list_objects(ports["posix"]) if e.api == "posix"]
    say.show(lines)


def kill_a_holder(say: Narrator, port: int, api: str, log: list[str] | None) -> None:
    """The four steps, on the server of ``port``; ``log``: that server's log lines, if the lesson has them."""
    name = NAMES[api]
    say.step(
        f"{name}: three clients connect to port {port}: H (the holder), A and B",
        "Each gets a worker forked by that server's parent.",
    )
    h, a, b = connect_all(port, "HAB")
    try:
        h_pid, a_pid = worker_pid(port, h.id), worker_pid(port, a.id)
        tail = TraceTail(port)
        how = (
            "semop P with SEM_UNDO: the kernel notes, for H's worker, that it took 1"
            if api == "sysv"
            else "sem_wait, then it stores its own pid in the messages segment's header (no undo to note it)"
        )
        say.step(f"{name}: H sends /holdlock messages: its worker takes the messages lock and keeps it", how)
        h.send("/holdlock messages")
        wait_until("H's worker holding the messages lock", lambda: messages_lock(port) == (0, h_pid))
        say.show([f"messages lock: value 0 = held, holder pid {h_pid} (H's worker)"])
        a.send(f"/send {b.id} are you there?")
        tail.wait_for("A's worker reading its /send", lambda e: e.pid == a_pid and e.event is TraceEvent.RECV)
        say.show([f"A sent /send {b.id} are you there?  A's worker now waits for the lock; B gets nothing"])

        why = (
            "The kernel tears H's worker down and applies its undo record: the lock is 1 again before "
            "the parent even hears of the death. A's semop completes at once."
            if api == "sysv"
            else "No code of H's worker runs and POSIX keeps no undo record: the lock stays at 0. It comes "
            "back only when the parent, woken by SIGCHLD, reaps the worker, finds its pid recorded as the "
            "holder and posts V itself. A's sem_wait completes then."
        )
        say.step(f"{name}: kill -KILL {h_pid}  (H's worker, still holding the lock)", why)
        killed = time.monotonic()
        os.kill(h_pid, signal.SIGKILL)
        got = b.expect(rf"^\[msg from {a.id}\] are you there\?")
        waited = time.monotonic() - killed
        a.expect(rf"client {h.id} disconnected")
        tail.wait_for(
            "the parent reaping H's worker", lambda e: e.event is TraceEvent.REAP and e.child == h_pid
        )
        say.show([f"B got: {got}  ({waited * 1000:.0f} ms after the kill)"])

        rows = []
        for event in tail.with_undo():
            if event.event is TraceEvent.REAP and event.child == h_pid:
                rows.append(f"{'parent':13} {describe_event(event)}   <- the parent reaps H's worker")
            elif event.event is TraceEvent.RELEASED and event.child == h_pid:
                rows.append(
                    f"{'parent':13} ✝ released by parent messages   <- the parent posts V (no SEM_UNDO)"
                )
            elif event.event is TraceEvent.UNDO and event.pid == h_pid:
                rows.append(
                    f"{'H worker':13} ✝ SEM_UNDO messages   <- the kernel gave it back as H's worker died"
                )
            elif event.pid == h_pid and event.event is TraceEvent.LOCK:
                rows.append(f"{'H worker':13} {describe_event(event)}")
            elif (
                event.pid == a_pid
                and event.event is TraceEvent.LOCK
                and event.lock == IpcObject.MESSAGES_SEMAPHORE
            ):
                rows.append(f"{'A worker':13} {describe_event(event)}")
        say.step(f"{name}: the trace, read back", "The rows of H's lock, of its return, and of A's wait.")
        say.show(rows)
        if log is not None:
            wait_until("the server's log line", lambda: any("posted V" in line for line in log))
            say.show([line.split(": ", 1)[-1].rstrip() for line in log if "posted V" in line])
        b.send(f"/send {a.id} yes, still here")
        a.expect(rf"^\[msg from {b.id}\] yes, still here")
        say.show(
            [f"messages lock: value {messages_lock(port)[0]} = free; B answered A: everybody keeps chatting"]
        )
    finally:
        for client in (h, a, b):
            client.close()


def run(port: int, say: Narrator) -> None:
    say.title("Lesson sysv-vs-posix: the same SIGKILL of a lock holder, with and without SEM_UNDO")
    demo_api = api_of(port)
    other = "posix" if demo_api == "sysv" else "sysv"
    say.step(
        f"The demo's server (port {port}) runs on {NAMES[demo_api]} IPC; the lesson starts a second "
        f"server on {NAMES[other]} IPC",
        f"{programs.command('server')} --ipc {other} --trace --lesson-hooks, on a free port. Same code, "
        "same tables, "
        "same bytes: only shm/sysv.py or shm/posix.py differs underneath.",
    )
    with second_server(other) as (other_port, log):
        ports = {demo_api: port, other: other_port}
        where_they_live(say, ports)
        kill_a_holder(say, ports["sysv"], "sysv", None)
        # The parent's log line, when the POSIX server is the lesson's own (else: the demo's server pane).
        kill_a_holder(say, ports["posix"], "posix", log if other == "posix" else None)
        say.step(
            "Why the difference costs code",
            "SEM_UNDO is bookkeeping the kernel does for every semop: what each process took, given "
            "back at its exit. POSIX semaphores are bare counters, so shmchat records the holder itself "
            "and its parent does the giving back. It is not as safe: a worker killed between sem_wait "
            "and its pid store leaves a lock nobody is named for (the parent's bounded wait posts V after "
            "2 s), and a recorded pid may be reused. More in docs/design.md, 'POSIX IPC: what SEM_UNDO "
            "gave for free'.",
        )
    left = len(list_objects(other_port))
    say.show([f"the lesson's {NAMES[other]} server stopped with SIGTERM: {left} of its objects left"])
