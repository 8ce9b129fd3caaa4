"""Lesson ``backpressure``: a client stops reading; its mailbox fills, the sender waits, it is cut off.

Which variant, and why both halves: a client that reads nothing (a socket
the lesson never reads) is what gets disconnected past its bound, but its
mailbox would never fill, because a running worker empties the mailbox
into its own output buffer whether the client reads or not.  So the lesson
first stops that client's worker with SIGSTOP (the mailbox fills, and the
sender is held back), then lets it go on with SIGCONT (its output backlog
passes 4 MiB and it is disconnected).
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
import threading

from lessons.kit import (
    ChatClient,
    LessonFailed,
    Narrator,
    connect_all,
    process_state,
    slot_of,
    wait_until,
    worker_pid,
)
from lessons.semaphores import Semaphore
from shm.layout import IpcObject
from shm.mailboxes import MailboxStats
from shm.snapshot import take_snapshot

#: Characters per message: a few fill a 256 KiB mailbox, a few hundred pass 4 MiB.
MESSAGE_CHARS = 30000
#: A bound on what A sends, far past 4 MiB of output plus the socket buffers.
MAX_MESSAGES = 800


def unsent_bytes(client: ChatClient) -> int:
    """Bytes A wrote that still sit in its socket's send queue (ioctl SIOCOUTQ)."""
    raw = fcntl.ioctl(client.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


class Flood:
    """A thread that makes A send big private messages to S until told to stop."""

    def __init__(self, a: ChatClient, to: int) -> None:
        self.a, self.to = a, to
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lesson flood", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        body = "x" * MESSAGE_CHARS
        try:
            while not self.stop.is_set() and self.sent < MAX_MESSAGES:
                self.a.send(f"/send {self.to} {self.sent} {body}")  # blocks while A's worker does not read
                self.sent += 1
        except OSError:
            pass  # the lesson closed A

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def holds_a_lock(port: int, pid: int) -> bool:
    """Is ``pid`` the holder of a table lock (value 0, and the last semop was its own)?"""
    locks = (Semaphore(port, IpcObject.DIRECTORY_SEMAPHORE), Semaphore(port, IpcObject.MESSAGES_SEMAPHORE))
    return any(lock.value == 0 and lock.last_pid == pid for lock in locks)


def stop_outside_any_lock(port: int, pid: int) -> None:
    """SIGSTOP ``pid``, but never while it holds a table lock.

    A worker stopped inside its few microseconds under a lock (taking mail the
    demo's clients sent it, say) would stall everyone, until the parent, needing
    that lock itself, killed it after 2 s: another lesson (undo's).  Then let it
    run and try again.
    """
    for _ in range(20):
        os.kill(pid, signal.SIGSTOP)
        wait_until("S's worker stopping", lambda: process_state(pid) == "T")
        if not holds_a_lock(port, pid):
            return
        os.kill(pid, signal.SIGCONT)
        wait_until("S's worker giving its lock back", lambda: not holds_a_lock(port, pid))
    raise LessonFailed(f"worker {pid} was holding a table lock each time it was stopped")


def run(port: int, say: Narrator) -> None:
    say.title("Lesson backpressure: a client stops reading")
    say.say(__doc__.split("\n\n")[1] if __doc__ else "")
    say.step(
        "Two clients of the lesson connect: A, who will send, and S, a socket nobody reads",
        "S's receive buffer is set small (SO_RCVBUF 4096) and the lesson never calls recv on it.",
    )
    (a,) = connect_all(port, "A")
    s = ChatClient(port, "S", read=False)
    flood: Flood | None = None
    stopped = 0
    try:
        a.expect(rf"client {s.id} joined")
        s_pid, a_slot, s_slot = worker_pid(port, s.id), slot_of(port, a.id), slot_of(port, s.id)
        say.show(
            [
                f"A is client {a.id} (slot {a_slot})",
                f"S is client {s.id} (slot {s_slot}), its worker is pid {s_pid}",
            ]
        )

        say.step(
            f"kill -STOP {s_pid}  (S's worker)",
            "Then the inspector's CLIENT TABLE shows S's worker as STOPPED (state T in ps): it "
            "can no longer take anything from its mailbox.",
        )
        stopped = s_pid
        stop_outside_any_lock(port, s_pid)

        say.step(
            f"A sends S messages of {MESSAGE_CHARS // 1000} kB, one after another",
            "Watch S's row of the MESSAGE TABLE: pending and ring used grow until the ring is "
            "full. The next post does not fit: A's worker keeps it, puts its own slot in S's "
            "mailbox 'waiting for room', and stops reading A's socket. A is held back by TCP, "
            "nothing is dropped.",
        )
        flood = Flood(a, s.id)

        def waiting_for_room() -> MailboxStats | None:
            snap = take_snapshot(port)
            boxes = snap.mailboxes or []
            box = boxes[s_slot] if s_slot < len(boxes) else None
            return box if box is not None and a_slot in box.waiters else None

        box = wait_until("A's worker waiting for room in S's mailbox", waiting_for_room)
        ring = take_snapshot(port).mailbox_bytes
        wait_until("A's writes piling up in its own socket", lambda: unsent_bytes(a) > 0)
        say.show(
            [
                f"S's mailbox: {box.pending_records} records pending, "
                f"{box.pending_bytes:,} of {ring:,} B used, found full {box.full_events} time(s)",
                f"waiting for room in it: slot(s) {box.waiters} (A's)",
                f"A has written {flood.sent} messages; {unsent_bytes(a):,} B of them are still in",
                "A's own socket send queue (ioctl SIOCOUTQ): its worker is not reading them",
            ]
        )

        say.step(
            f"kill -CONT {s_pid}",
            "S's worker runs again: it takes its whole mailbox, rings A's doorbell (A was waiting "
            "for room), and A's posts flow again. But S reads nothing, so the lines pile up in "
            "S's socket buffers and then in its worker's output buffer. Past 4 MiB unread "
            "(the output limit) the worker disconnects S, and the parent tells everyone.",
        )
        os.kill(s_pid, signal.SIGCONT)
        stopped = 0
        gone = a.expect(rf"client {s.id} was disconnected \(it stopped reading its messages\)", timeout=60)
        say.show([f"A got: {gone}", f"A had written {flood.sent} messages of {MESSAGE_CHARS:,} characters"])
        flood.finish()

        say.step(
            "Nobody else was harmed",
            "S's slot is free again in the CLIENT TABLE and its mailbox closed; A's worker was "
            "only held back while S's mailbox was full.",
        )
        a.send("/active")
        active = a.expect(r"^\[active\] ")
        if str(s.id) in active:
            raise LessonFailed(f"client {s.id} is still online: {active}")
        say.show([f"A asked /active: {active}"])
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)  # never leave a stopped worker behind
        if flood is not None:
            flood.stop.set()
        a.close()
        s.close()
        if flood is not None:
            flood.finish()
