"""A room during a flood: how long the others' private messages take, and what the flooder gets.

``python -m bench.flood`` starts shmchat (this tree, or ``--tree PATH``: a
checkout of another revision, run from its own folder as ``bench.ab`` does)
with room for everyone, and connects a room of ``--clients`` clients (30 by
default) from one process:

* a **flooder**, looping ``/broadcast`` with 60 kB lines as fast as its
  socket takes them (issue 16's attack);
* a **slow reader**, who reads about ``--reader-rate`` bytes a second
  (1 MB/s by default, the reader the issue saw cut off);
* everyone else, who read as fast as they can and each send a small
  private message every ``--interval`` seconds: to the slow reader with
  probability ``--to-slow`` (5 % by default: people write to a slow reader
  too, and a design that makes its mailbox push back would hold them up),
  otherwise to a random one of the others.

The run has two phases: ``--calm`` seconds without the flooder, then
``--flood`` seconds with it.  For each phase it prints the p50 and p99 of
the delay of the private messages among the others (from the sender's
write to the receiver's read, both in this process), how many were sent and
received, how many of those to the slow reader arrived, whether the
slow reader was cut off (and when), and the flooder's accepted rate: the
broadcast lines and bytes per second one of the fast readers received.

The client side is one Python process; it costs the same for both trees.
Everything listens on 127.0.0.1 and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import random
import re
import selectors
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.chat import REPO, Conn, Shmchat, log, quantile, settle

BIG = 60_000
PRIVATE = re.compile(rb"\[msg from \d+\] p(\d+)\n")
FLOOD_LINE = re.compile(rb"\[broadcast from \d+\] f")


class ShmchatIn(Shmchat):
    """shmchat run from the tree at ``root``, with ``extra`` options."""

    def __init__(self, root: Path, extra: list[str]) -> None:
        super().__init__()
        self.root, self.extra = root, extra

    def start(self, max_clients: int) -> None:
        command = [sys.executable, "-m", "server", "--port", "0", "--log-level", "WARNING"]
        self.launch([*command, "--max-clients", str(max_clients), *self.extra], self.root)


@dataclass
class Client:
    conn: Conn
    role: str  # "flooder", "slow" or "other"
    tail: bytes = b""  # the unfinished last line of what was read
    out: bytearray = field(default_factory=bytearray)
    read: int = 0
    flood_lines: int = 0
    flood_bytes: int = 0
    cut_at: float | None = None


@dataclass
class Phase:
    delays: list[float] = field(default_factory=list)  # ms, among the others
    sent: int = 0
    to_slow: int = 0  # sent to the slow reader (not in ``delays``)
    slow_got: int = 0
    flood_lines: int = 0  # received by the watching fast reader
    flood_bytes: int = 0


def run(
    server: ShmchatIn, clients: int, calm: float, flood: float, interval: float, rate: float, to_slow: float
) -> None:
    server.start(clients + 5)
    room: list[Client] = []
    try:
        for index in range(clients):
            role = "flooder" if index == 0 else "slow" if index == 1 else "other"
            room.append(Client(server.connect(index), role))
        settle(server, [c.conn for c in room])
        measure(room, calm, flood, interval, rate, to_slow)
    finally:
        for client in room:
            client.conn.close()
        server.stop()


def measure(
    room: list[Client], calm: float, flood: float, interval: float, rate: float, to_slow: float
) -> None:
    flooder, slow = room[0], room[1]
    others = room[2:]
    watcher = others[0]  # counts the flood lines it gets: the flooder's accepted rate
    sel = selectors.DefaultSelector()
    interest = {id(client): 0 for client in room}  # what each socket is registered for
    for client in room:
        client.conn.sock.setblocking(False)
    rng = random.Random(1)
    sent_at: dict[int, float] = {}
    seq = 0
    phases = {"calm": Phase(), "flood": Phase()}
    start = time.monotonic()
    next_send = start
    slow_started = start
    flood_line = b"/broadcast f " + b"x" * BIG + b"\n"
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while (now := time.monotonic()) < start + calm + flood:
        name = "calm" if now < start + calm else "flood"
        phase = phases[name]
        flooding = name == "flood"
        if now >= next_send:  # every other client sends one private message
            for sender in others:
                if rng.random() < to_slow:
                    to = slow
                    phase.to_slow += 1
                else:
                    to = rng.choice(others)
                    while to is sender:
                        to = rng.choice(others)
                    sent_at[seq] = time.monotonic()
                    phase.sent += 1
                sender.out += f"/send {to.conn.ident} p{seq}\n".encode()
                seq += 1
            next_send += interval
        if flooding and len(flooder.out) < len(flood_line):
            flooder.out += flood_line
        for client in room:
            events = selectors.EVENT_WRITE if client.out else 0
            if client is slow and client.cut_at is None:
                # The slow reader reads only what its rate allows by now.
                if client.read < rate * (now - slow_started):
                    events |= selectors.EVENT_READ
            elif client.cut_at is None:
                events |= selectors.EVENT_READ
            if events != interest[id(client)]:
                if not events:
                    sel.unregister(client.conn.sock)
                elif interest[id(client)]:
                    sel.modify(client.conn.sock, events, client)
                else:
                    sel.register(client.conn.sock, events, client)
                interest[id(client)] = events
        for key, mask in sel.select(min(0.005, max(0.0, next_send - time.monotonic()))):
            client = key.data
            if mask & selectors.EVENT_WRITE and client.out:
                try:
                    del client.out[: client.conn.sock.send(client.out)]
                except BlockingIOError:
                    pass
            if mask & selectors.EVENT_READ and client.cut_at is None:
                want = len(buffer) if client is not slow else 65536
                try:
                    size = client.conn.sock.recv_into(view[:want])
                except BlockingIOError:
                    continue
                except OSError:
                    size = 0
                if not size:
                    client.cut_at = time.monotonic() - start
                    continue
                client.read += size
                data = client.tail + bytes(view[:size])
                cut = data.rfind(b"\n") + 1
                lines, client.tail = data[:cut], data[cut:]
                received = time.monotonic()
                for found in PRIVATE.finditer(lines):
                    if client is slow:
                        phase.slow_got += 1
                        continue
                    at = sent_at.pop(int(found.group(1)), None)
                    if at is not None:
                        phase.delays.append((received - at) * 1000)
                if client is watcher:
                    count = len(FLOOD_LINE.findall(lines))
                    phase.flood_lines += count
                    phase.flood_bytes += count * len(flood_line)
    sel.close()
    for name, length in (("calm", calm), ("flood", flood)):
        phase = phases[name]
        got = len(phase.delays)
        if got:
            p50, p99 = quantile(phase.delays, 0.5), quantile(phase.delays, 0.99)
            figures = f"p50 {p50:8.1f} ms   p99 {p99:8.1f} ms"
        else:
            figures = "no private message arrived"
        arrived = f"{got} of {phase.sent} arrived in the phase"
        print(f"{name:5} ({length:.0f} s): private messages {figures}   ({arrived})")
        print(f"      to the slow reader: {phase.slow_got} of {phase.to_slow} arrived in the phase")
        if name == "flood":
            print(
                "      flooder's accepted rate (seen by a fast reader): "
                f"{phase.flood_lines / length:.2f} lines/s, {phase.flood_bytes / length / 1024:.0f} KiB/s"
            )
    cut = f"cut off after {slow.cut_at - calm:.1f} s of flood" if slow.cut_at is not None else "never cut off"
    print(f"      slow reader ({rate / 1e6:g} MB/s): {cut}; read {slow.read / 1e6:.1f} MB")
    dropped = [c for c in others if c.cut_at is not None]
    if dropped:
        print(f"      {len(dropped)} other client(s) were cut off too")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree", type=Path, default=REPO, help="the checkout whose server runs (default: this one)"
    )
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--calm", type=float, default=5.0, help="seconds without the flooder first")
    parser.add_argument("--flood", type=float, default=20.0, help="seconds with the flooder")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between each client's messages")
    parser.add_argument("--reader-rate", type=float, default=1e6, help="bytes a second the slow reader reads")
    parser.add_argument(
        "--to-slow", type=float, default=0.05, help="share of messages sent to the slow reader"
    )
    parser.add_argument(
        "server_args", nargs="*", help="more server options, after --, e.g. -- --no-flood-control"
    )
    args = parser.parse_args(argv)
    log(f"flood: server from {args.tree} {' '.join(args.server_args)}")
    server = ShmchatIn(args.tree.resolve(), args.server_args)
    run(server, args.clients, args.calm, args.flood, args.interval, args.reader_rate, args.to_slow)


if __name__ == "__main__":
    main()
