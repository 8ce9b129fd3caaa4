"""Lesson ``undo``: a worker dies holding the messages lock; the kernel gives it back (SEM_UNDO)."""

from __future__ import annotations

import os
import queue
import signal

from lessons.kit import (
    LessonFailed,
    Narrator,
    TraceTail,
    alive,
    connect_all,
    demo_command,
    describe_event,
    server_pid,
    wait_until,
    worker_pid,
)
from lessons.semaphores import Semaphore
from shm.layout import IpcObject, TraceEvent


def run(port: int, say: Narrator) -> None:
    say.title("Lesson undo: a lock holder is killed, and the kernel hands the lock back")
    say.step(
        "Three clients of the lesson connect: H (the holder), A and B",
        "Each gets a worker; the parent posts a join notice for each under the messages lock.",
    )
    h, a, b = connect_all(port, "HAB")
    try:
        pids = {worker_pid(port, c.id): f"{c.name}'s worker" for c in (h, a, b)}
        h_pid, a_pid, _ = list(pids)
        names = {**pids, server_pid(port): "the parent"}
        say.show(
            f"{c.name} is client {c.id}, its worker is pid {p}" for c, p in zip((h, a, b), pids, strict=True)
        )
        lock = Semaphore(port, IpcObject.MESSAGES_SEMAPHORE)
        tail = TraceTail(port)

        say.step(
            "H sends /holdlock messages: its worker takes the messages lock and keeps it",
            "A lesson hook (the server runs with --lesson-hooks): the worker calls semop P with "
            "SEM_UNDO and then sleeps in pause(). In the inspector, SEMAPHORES shows the message "
            "table's lock at value 0 (held) and the MESSAGE TABLE as locked; the trace shows "
            "'lock messages' in H's column and no unlock after it.",
        )
        h.send("/holdlock messages")

        def held() -> bool:
            try:
                line = h.lines.get_nowait()
            except queue.Empty:
                line = ""
            if line is None or line.startswith("[error]"):
                raise LessonFailed(
                    f"the server refused /holdlock ({line!r}): it runs without --lesson-hooks; "
                    f"'{demo_command()}' starts it with them"
                )
            return lock.value == 0 and lock.last_pid == h_pid

        wait_until("H's worker taking the messages lock", held)
        say.show([f"messages lock: {lock.describe(names)}"])

        say.step(
            f"A sends /send {b.id} are you there?",
            "A's worker needs the same lock to post into B's mailbox: its semop P blocks, and the "
            "kernel counts it among the processes waiting (the inspector's 'waiting' column). "
            "Nothing arrives at B. (Workers wait without a bound; only the parent gives up "
            "after 2 s and kills a holder, when it needs the lock itself.)",
        )
        a.send(f"/send {b.id} are you there?")
        wait_until("A's worker blocking on the lock", lambda: lock.waiting >= 1)
        before = lock.state()
        say.show([f"messages lock: {lock.describe(names, before)}"])

        say.step(
            f"kill -KILL {h_pid}  (H's worker, still holding the lock)",
            "SIGKILL runs no code of the victim: nobody calls semop V. The kernel, as it tears the "
            "process down, applies the undo record that SEM_UNDO kept for it and adds the 1 back. "
            "A's blocked semop completes at once, its message reaches B, and the parent reaps H's "
            "worker and tells everyone. By the time we look, the lock may have changed hands "
            "more than once: it is free, or held by a live process, never by H's worker again.",
        )
        os.kill(h_pid, signal.SIGKILL)
        line = b.expect(rf"^\[msg from {a.id}\] are you there\?")
        after = lock.state()
        a.expect(rf"client {h.id} disconnected")
        reap = tail.wait_for(
            "the parent reaping H's worker", lambda e: e.event is TraceEvent.REAP and e.child == h_pid
        )
        taken = tail.wait_for(
            "A's worker taking the lock",
            lambda e: (
                e.pid == a_pid and e.event is TraceEvent.LOCK and e.lock == IpcObject.MESSAGES_SEMAPHORE
            ),
        )
        undo = wait_until(
            "the SEM_UNDO row of H's lock",
            lambda: next(
                (e for e in tail.with_undo() if e.event is TraceEvent.UNDO and e.pid == h_pid), None
            ),
        )
        live_holder = not after.value and after.last_pid != h_pid and alive(after.last_pid)
        in_use = ": in use again, by a live process" if live_holder else ""
        say.show(
            [
                f"{names[h_pid]:12} {describe_event(undo)}   <- no unlock from H: SEM_UNDO gave the 1 back",
                f"{names[a_pid]:12} {describe_event(taken)}   <- A's blocked semop P returned",
                f"B got: {line}",
                f"{'parent':12} {describe_event(reap)}   <- the parent reaps H's worker",
                f"messages lock before the kill: {lock.describe(names, before)}",
                f"messages lock after: {lock.describe(names, after)}{in_use}",
            ]
        )

        say.step(
            "The trace, read back",
            "H's 'lock messages' has no 'unlock': no process wrote one. The reader sees a lock "
            "never given back by a process the parent reaped, and shows it as handed back by "
            'SEM_UNDO (✝ in the trace pane, "event": "undo", "derived": true with --json), at the '
            "reap: the trace cannot know sooner. The kernel gave the 1 back a moment earlier, as "
            "H's worker exited. A's first lock shows how long A's worker waited in semop; A's "
            "worker writes it when it next runs, so it lands just before or just after the reap, "
            "as the scheduler decides.",
        )
        rows = []
        for event in tail.with_undo():
            if event.event is TraceEvent.REAP and event.child == h_pid:
                rows.append(f"{'parent':12} {describe_event(event)}   <- the parent reaps H's worker")
            elif event.pid == h_pid and event.event in (TraceEvent.LOCK, TraceEvent.UNDO):
                note = (
                    "   <- given back by the kernel (SEM_UNDO), shown at the reap"
                    if event.event is TraceEvent.UNDO
                    else ""
                )
                rows.append(f"{pids[h_pid]:12} {describe_event(event)}{note}")
            elif (
                event.pid == a_pid
                and event.event is TraceEvent.LOCK
                and event.lock == IpcObject.MESSAGES_SEMAPHORE
            ):
                rows.append(f"{pids[a_pid]:12} {describe_event(event)}")
        say.show(rows)

        say.step(
            "Everybody keeps chatting",
            "The lock goes from process to process as before, and the parent repaired H's rows: "
            "B answers A as if nothing happened, and the demo's own clients saw H leave.",
        )
        b.send(f"/send {a.id} yes, still here")
        answer = a.expect(rf"^\[msg from {b.id}\] yes, still here")
        say.show([f"A got: {answer}"])
    finally:
        for client in (h, a, b):
            client.close()
