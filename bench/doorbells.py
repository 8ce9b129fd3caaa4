"""How fast can one process wake another?  The doorbell choice, measured.

``python -m bench.doorbells [--rounds N]`` ping-pongs between two processes
through each candidate and reports the median and 99th percentile one-way
wake-up time (half a round trip), interleaving the candidates so that noise
on a shared machine hits them all alike:

* eventfd (what shmchat uses: one per slot, made before fork)
* pipe (the classic self-pipe)
* POSIX message queue (``posix_ipc``; its ``mqd`` works with ``select``)
* signal (SIGUSR1 through ``signal.set_wakeup_fd``)

Each wait goes through ``select``, as a worker's does, because a doorbell
must be selectable together with the client's socket.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import time
from collections.abc import Callable

ROUNDS = 2000


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bell:
    """A pair of one-way doorbells: parent → child and child → parent."""

    name = ""

    def ring(self, to_child: bool) -> None:
        raise NotImplementedError

    def wait(self, in_child: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class EventfdBell(Bell):
    name = "eventfd"

    def __init__(self) -> None:
        self.fds = (os.eventfd(0), os.eventfd(0))  # [0]: to child, [1]: to parent

    def ring(self, to_child: bool) -> None:
        os.eventfd_write(self.fds[0 if to_child else 1], 1)

    def wait(self, in_child: bool) -> None:
        fd = self.fds[0 if in_child else 1]
        select.select([fd], [], [])
        os.eventfd_read(fd)


class PipeBell(Bell):
    name = "pipe"

    def __init__(self) -> None:
        self.to_child = os.pipe()
        self.to_parent = os.pipe()

    def ring(self, to_child: bool) -> None:
        os.write((self.to_child if to_child else self.to_parent)[1], b"x")

    def wait(self, in_child: bool) -> None:
        fd = (self.to_child if in_child else self.to_parent)[0]
        select.select([fd], [], [])
        os.read(fd, 1)


class QueueBell(Bell):
    name = "posix mq"

    def __init__(self) -> None:
        import posix_ipc

        suffix = f"{os.getpid()}-{time.monotonic_ns()}"
        self.queues = (
            posix_ipc.MessageQueue(f"/shmchat-bench-c-{suffix}", posix_ipc.O_CREX, max_messages=8),
            posix_ipc.MessageQueue(f"/shmchat-bench-p-{suffix}", posix_ipc.O_CREX, max_messages=8),
        )

    def ring(self, to_child: bool) -> None:
        self.queues[0 if to_child else 1].send(b"x")

    def wait(self, in_child: bool) -> None:
        queue = self.queues[0 if in_child else 1]
        select.select([queue.mqd], [], [])
        queue.receive()

    def close(self) -> None:
        for queue in self.queues:
            queue.close()
            queue.unlink()


class SignalBell(Bell):
    name = "signal"

    def __init__(self) -> None:
        self.parent_pid = os.getpid()
        self.child_pid = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.signal(signal.SIGUSR1, lambda *_: None)

    def ring(self, to_child: bool) -> None:
        os.kill(self.child_pid if to_child else self.parent_pid, signal.SIGUSR1)

    def wait(self, in_child: bool) -> None:
        select.select([self.wake_r], [], [])
        os.read(self.wake_r, 512)

    def arm(self) -> None:
        signal.set_wakeup_fd(self.wake_w)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def measure(make: Callable[[], Bell], rounds: int) -> list[float]:
    """One-way wake-up times in microseconds (half of each round trip)."""
    bell = make()
    if isinstance(bell, SignalBell):
        bell.arm()
    pid = os.fork()
    if pid == 0:
        if isinstance(bell, SignalBell):
            bell.wake_r, bell.wake_w = os.pipe()  # the child's own wake-up pipe
            os.set_blocking(bell.wake_w, False)
            bell.arm()
            bell.ring(to_child=False)  # tell the parent we are ready
        try:
            for _ in range(rounds):
                bell.wait(in_child=True)
                bell.ring(to_child=False)
        finally:
            os._exit(0)
    if isinstance(bell, SignalBell):
        bell.child_pid = pid
        bell.wait(in_child=False)
    samples = []
    try:
        for _ in range(rounds):
            start = time.perf_counter_ns()
            bell.ring(to_child=True)
            bell.wait(in_child=False)
            samples.append((time.perf_counter_ns() - start) / 2000)
    finally:
        os.waitpid(pid, 0)
        bell.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.doorbells", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="ping-pongs per candidate per pass")
    parser.add_argument("--passes", type=int, default=5, help="interleaved passes over the candidates")
    args = parser.parse_args(argv)
    candidates: list[Callable[[], Bell]] = [EventfdBell, PipeBell, SignalBell]
    try:
        import posix_ipc  # noqa: F401

        candidates.insert(2, QueueBell)
    except ImportError:
        print("posix_ipc is not installed: skipping the POSIX message queue (pip install posix_ipc)")
    results: dict[str, list[float]] = {c.name: [] for c in candidates}
    for _ in range(args.passes):
        for candidate in candidates:
            results[candidate.name] += measure(candidate, args.rounds)
    base = statistics.median(results["eventfd"])
    print(f"{'doorbell':10} {'p50 µs':>8} {'p99 µs':>8} {'p50 vs eventfd':>15}")
    for name, samples in results.items():
        p50 = statistics.median(samples)
        print(f"{name:10} {p50:8.1f} {_quantile(samples, 0.99):8.1f} {p50 / base:14.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
