"""Old tree against new tree: shmchat at a git revision against this working tree, same run.

``python -m bench.ab REV`` exports ``REV`` (``git archive``) into a temporary
folder and runs the two servers in interleaved rounds, old then new, each
round measuring both with the chat benchmark's own client code
(``bench.chat``): round-trip p50, throughput, broadcast to 4, and, the
figure least moved by the other loads of a shared machine, the CPU each of
the two workers spends per message relayed (``/proc`` times, no profiler
attached).  It prints the median of the per-round ratios new/old.

It is the tool for keeping or dropping one change to the hot path: the
chat benchmark's three-server rounds take minutes and compare with C, this
compares two Pythons in about a minute.

``--inproc`` measures instead, in one process per tree, the Python of the
two workers on hot caches: two real ``Worker`` objects on real System V
tables and socket pairs, no server, no epoll wait.  The sender's
``process_input`` on a read of 256 ``/send`` lines, and on a read of one;
the receiver's ``take_mail`` of what they posted (taken, rendered, queued).
Microseconds per message, the best of several repeats, runs of the two trees
interleaved: the figure that shows a change of a tenth of a microsecond,
which the machine's noise hides in the socket rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from bench.chat import (
    CORE_MAX_CLIENTS,
    REPO,
    Shmchat,
    broadcasts,
    connect_up_to,
    log,
    quantile,
    round_trips,
    running,
    settle,
    throughput,
)


class ShmchatAt(Shmchat):
    """shmchat started from the tree at ``root`` (``python -m server`` imports from its cwd)."""

    def __init__(self, root: Path, name: str) -> None:
        super().__init__()
        self.root = root
        self.name = name

    def start(self, max_clients: int) -> None:
        command = [sys.executable, "-m", "server", "--port", "0", "--log-level", "WARNING"]
        if (self.root / "server" / "flood.py").exists():
            command.append("--no-flood-control")  # a tree before it has no flood control to turn off
        self.launch([*command, "--max-clients", str(max_clients)], self.root)


def on_cpu_ns(pid: int) -> int:
    """Nanoseconds the process has run, user and system (``/proc/PID/schedstat``).

    Exact to the nanosecond, where ``cpu_times`` counts 10 ms clock ticks: a
    round trip's 40 µs would need minutes of messages to show in ticks.
    """
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


def cpu_us(workers: list, before: list[int], messages: int) -> list[float]:
    """CPU per message (µs) of each worker since ``before``."""
    return [(on_cpu_ns(proc.pid) - old) / messages / 1000 for proc, old in zip(workers, before, strict=True)]


def one_round(server: ShmchatAt, rtt_samples: int, seconds: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    with running(server, CORE_MAX_CLIENTS) as conns:
        connect_up_to(server, conns, 5)
        settle(server, conns)
        workers = sorted(server.workers(), key=lambda p: p.create_time())[:2]
        a, b = conns[0], conns[1]
        before = [on_cpu_ns(w.pid) for w in workers]
        rtt = round_trips(server, a, b, rtt_samples, 100)
        figures["rtt_p50_us"] = quantile(rtt, 0.5)
        figures["rtt_p99_us"] = quantile(rtt, 0.99)
        cpu_a, cpu_b = cpu_us(workers, before, 2 * (rtt_samples + 100))
        figures["rtt_cpu_A_us"], figures["rtt_cpu_B_us"] = cpu_a, cpu_b
        settle(server, conns, quiet=0.05)
        before = [on_cpu_ns(w.pid) for w in workers]
        started = time.perf_counter()
        rate = throughput(server, a, b, seconds)
        messages = round(rate * (time.perf_counter() - started))
        figures["throughput_msgs"] = rate
        cpu_a, cpu_b = cpu_us(workers, before, messages)
        figures["tput_cpu_A_us"], figures["tput_cpu_B_us"] = cpu_a, cpu_b
        settle(server, conns, quiet=0.05)
        figures["broadcast4_us"] = statistics.median(broadcasts(server, a, conns[1:5], 200))
    return figures


#: Run with ``python -c`` in a tree's folder: times that tree's workers (``--inproc``).
INPROC_DRIVER = r"""
import json, socket, sys, tempfile, time
sys.path.insert(0, "tests")
from tablekit import online, small_tables
from server.config import ServerConfig
from server.doorbells import Doorbells
try:
    from server.caller import Caller
except ImportError:  # a tree from before Caller had a module of its own
    from server.handlers import Caller
from server.spool import Spool
from server.worker import Worker

try:
    config = ServerConfig(flood_control=False)  # the driver's lines would pass any budget
except TypeError:  # a tree from before flood control
    config = ServerConfig()

ipc = small_tables(max_clients=4, mailbox_bytes=256 * 1024)
bells = Doorbells(4)
folder = tempfile.TemporaryDirectory()
try:
    a_row, b_row = online(ipc, 2)
    workers, peers = [], []
    for row in (a_row, b_row):
        mine, theirs = socket.socketpair()
        peers.append(theirs)
        caller = Caller(row.slot, row.generation, row.client_id)
        worker = Worker(caller, mine, ipc, bells, Spool(folder.name), config)
        for lock in ipc.locks.values():
            lock.patience = None
        workers.append(worker)
    a, b = workers
    results = {}
    for batch in (256, 1):
        lines = b"".join(b"/send %d t%09d\n" % (b_row.client_id, i) for i in range(batch))
        send = take = float("inf")
        for _ in range(REPEATS):
            rounds = max(1, 2000 // batch)
            spent_send = spent_take = 0
            for _ in range(rounds):
                started = time.perf_counter_ns()
                a.framer.feed(lines)
                a.process_input()
                middle = time.perf_counter_ns()
                bells.clear(b_row.slot)
                b.take_mail()
                ended = time.perf_counter_ns()
                b.conn.out.clear()
                spent_send += middle - started
                spent_take += ended - middle
            send = min(send, spent_send / rounds / batch / 1000)
            take = min(take, spent_take / rounds / batch / 1000)
        results[f"send_{batch}_us"] = send
        results[f"take_{batch}_us"] = take
    print(json.dumps(results))
finally:
    ipc.close()
    bells.close()
    folder.cleanup()
"""


def inproc(root: Path, repeats: int) -> dict[str, float]:
    code = INPROC_DRIVER.replace("REPEATS", str(repeats))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def export(rev: str, into: Path) -> None:
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the old side: a git revision (the new side is this working tree)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rtt-samples", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0, help="of throughput per round")
    parser.add_argument("--inproc", action="store_true", help="the workers' Python in-process (see above)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shmchat-ab-") as folder:
        export(args.rev, Path(folder))
        sides = [ShmchatAt(Path(folder), "old"), ShmchatAt(REPO, "new")]
        rounds = []
        for number in range(1, args.rounds + 1):
            row = {}
            # Alternate which side goes first, so that a drifting load favours neither.
            for server in sides if number % 2 else sides[::-1]:
                if args.inproc:
                    row[server.name] = inproc(server.root, 5)
                else:
                    row[server.name] = one_round(server, args.rtt_samples, args.seconds)
                shown = ", ".join(f"{k} {v:.4g}" for k, v in row[server.name].items())
                log(f"round {number}/{args.rounds} {server.name}: {shown}")
            rounds.append(row)
    print(f"\nnew (this tree) / old ({args.rev}), median of {args.rounds} same-run ratios [range]:")
    for metric in rounds[0]["old"]:
        ratios = [r["new"][metric] / r["old"][metric] for r in rounds if r["old"][metric]]
        old = statistics.median(r["old"][metric] for r in rounds)
        new = statistics.median(r["new"][metric] for r in rounds)
        print(
            f"  {metric:16} {statistics.median(ratios):6.3f}x  [{min(ratios):.2f}-{max(ratios):.2f}]"
            f"   old {old:10.4g}   new {new:10.4g}"
        )


if __name__ == "__main__":
    main()
