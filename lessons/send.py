"""Lesson ``send``: one private message from A to B, every IPC step and its system call."""

from __future__ import annotations

from lessons.kit import ChatClient, Narrator, TraceTail, connect_all, describe_event, worker_pid
from shm.layout import TraceEvent, WakeSource
from shm.trace_reader import TraceRecord

TEXT = "hello B, this is A"

#: The system call behind each kind of row, and what it did, in plain words.
SYSCALLS: dict[TraceEvent, tuple[str, str]] = {
    TraceEvent.WAKE: ("epoll_wait", "returned: there is work"),
    TraceEvent.RECV: ("recv", "the command line, from A's socket"),
    TraceEvent.LOCK: ("semop P, SEM_UNDO", "the µs: how long it waited"),
    TraceEvent.UNLOCK: ("semop V, SEM_UNDO", "the lock given back"),
    TraceEvent.POST: ("none: memcpy", "the record copied into B's ring, tail stored last"),
    TraceEvent.RING: ("write", "1 written to B's eventfd: its doorbell"),
    TraceEvent.TAKE: ("none: memcpy", "copied out of its own ring, head stored last"),
    TraceEvent.SEND: ("send", "the rendered line, to B's socket"),
}
WAKE_WHY = {"socket": "the socket is readable", "doorbell": "the doorbell rang (read clears it)"}


def row(event: TraceRecord, start: int, names: dict[int, str]) -> str:
    call, why = SYSCALLS.get(event.event, ("", ""))
    if event.event is TraceEvent.WAKE:
        why = WAKE_WHY.get(str(event.as_json()["source"]), why)
    at = (event.t_ns - start) / 1000
    return (
        f"{at:9.1f} µs  {names.get(event.pid, str(event.pid)):12} {describe_event(event):29} {call:18} {why}"
    )


def run(port: int, say: Narrator) -> None:
    say.title("Lesson send: one message crosses three processes")
    say.step(
        "Two clients of the lesson connect",
        "The parent accepts each connection and forks a worker for it: look for two new "
        "columns in the trace pane, each a worker labelled with its client's id and pid.",
    )
    a, b = connect_all(port, "AB")
    try:
        pids = {worker_pid(port, a.id): "A's worker", worker_pid(port, b.id): "B's worker"}
        a_pid, b_pid = list(pids)
        say.show(
            [
                f"A is client {a.id}, its worker is pid {a_pid}",
                f"B is client {b.id}, its worker is pid {b_pid}",
            ]
        )
        send_one(port, say, a, b, pids)
    finally:
        a.close()
        b.close()


def send_one(port: int, say: Narrator, a: ChatClient, b: ChatClient, pids: dict[int, str]) -> None:
    a_pid, b_pid = list(pids)
    tail = TraceTail(port)
    say.step(
        f"A sends: /send {b.id} {TEXT}",
        "Watch the trace pane: A's worker wakes, reads, locks, posts into B's mailbox, unlocks "
        "and rings B's doorbell; then B's column comes alive.",
    )
    a.send(f"/send {b.id} {TEXT}")
    line = b.expect(rf"^\[msg from {a.id}\] ")
    tail.wait_for("B's worker sending the line", lambda e: e.pid == b_pid and e.event is TraceEvent.SEND)
    say.show([f"B's socket got: {line}"])

    events = [e for e in tail.events if e.pid in pids]
    # From A's worker waking up for the command on (a join notice still being sent is not part of it).
    first = next(
        i
        for i, e in enumerate(events)
        if e.pid == a_pid and e.event is TraceEvent.WAKE and e.source == WakeSource.SOCKET
    )
    events = events[first:]
    ring = next(e for e in events if e.pid == a_pid and e.event is TraceEvent.RING)
    wake = next(e for e in events if e.pid == b_pid and e.event is TraceEvent.WAKE and e.t_ns >= ring.t_ns)
    start = events[0].t_ns
    say.step(
        "The same steps, read back from the trace table, with the system call behind each row",
        "Every row was written by the process itself into its own ring of the fourth segment, "
        "with a CLOCK_MONOTONIC timestamp. Only semop, write, recv, send and epoll_wait enter "
        "the kernel; the message itself moves by plain memory copies into and out of the "
        "shared segment. A 'lock directory' is the client table's lock: A's worker looks B "
        "up; B's worker adds to its message counters (at most once a second).",
    )
    say.show([f"{'t':>12}  {'process':12} {'event':29} {'system call':18} what it did"])
    say.show(row(e, start, pids) for e in events)
    say.step(
        f"From the ring to the wake: {(wake.t_ns - ring.t_ns) / 1000:.1f} µs",
        "A's worker wrote to B's eventfd; the kernel made B's worker runnable, the scheduler "
        "ran it, and its epoll_wait returned. That gap is the arrow in the trace pane. A's "
        "worker did not wait for any of it: it went back to its own epoll_wait at once.",
    )
