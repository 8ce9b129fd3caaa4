"""Load: five clients sending at once, every message accounted for at its receivers.

Each of five clients sends its share of a planned stream of numbered messages,
one-to-one, broadcast and to two groups (one of all five, one of three), all at
the same time.  Each message carries its sender's sequence number, so each
receiver can check, per sender, that it got exactly the messages meant for it:
none lost, none duplicated, none from a group it is not in, in the order sent.

One loop (``selectors``, non-blocking sockets) drives all five clients, reading
as fast as the server writes.  Each sender keeps at most ``WINDOW`` messages
in flight (sent but not yet seen by every receiver), as a reader that keeps up
would; the server's own bounds (mailbox rings, FULL and waiters, the output
limit) are exercised underneath.

``test_soak_short`` (5,000 messages) runs in CI; ``test_soak_full`` (100,000
messages, or ``SHMCHAT_SOAK_MESSAGES``) runs with ``--run-soak``::

    SHMCHAT_SOAK_REPORT=soak.json python -m pytest -s --run-soak tests/test_soak.py
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import socket
import time
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from conftest import TIMEOUT, sysv_objects
from procinfo import attached, diagnose, ipcs_counts, lock_values, port_objects, record

CLIENTS = 5
WINDOW = 2000  # messages a sender may have in flight
STALL_SECONDS = 60.0
INCOMING = re.compile(r"\[(?:msg|broadcast|group (\d+)) from (\d+)\] q(\d+)\.")


@dataclass
class Planned:
    kind: str  # "private", "broadcast" or "group"
    line: bytes
    receivers: list[int]  # client indexes
    group: int = 0  # group id for kind "group"


@dataclass
class Peer:
    index: int
    sock: socket.socket
    id: int = 0
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    # sender id -> sequence numbers in arrival order, and the kinds/groups seen
    got: dict[int, list[int]] = field(default_factory=dict)
    kinds: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    closed: bool = False

    def read_line_blocking(self, deadline: float) -> str:
        while b"\n" not in self.inbuf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"client {self.index} closed during setup")
            self.inbuf += chunk
        line, _, rest = bytes(self.inbuf).partition(b"\n")
        self.inbuf[:] = rest
        return line.decode()

    def expect(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = self.read_line_blocking(deadline)
            if match := re.search(pattern, line):
                return match
            self.other.append(line)


def plan(total: int, ids: list[int], groups: dict[int, list[int]], seed: int) -> list[list[Planned]]:
    """Each client's messages, in sending order; sequence numbers count per sender."""
    rng = random.Random(seed)
    per_sender = total // CLIENTS
    plans: list[list[Planned]] = []
    for sender in range(CLIENTS):
        others = [i for i in range(CLIENTS) if i != sender]
        mine = [gid for gid, members in groups.items() if sender in members]
        messages = []
        for seq in range(per_sender):
            pad = "." * (rng.randint(0, 120) if rng.random() > 0.01 else rng.randint(2000, 8000))
            text = f"q{seq}.{pad}"
            roll = rng.random()
            if roll < 0.5:
                target = rng.choice(others)
                messages.append(Planned("private", f"/send {ids[target]} {text}\n".encode(), [target]))
            elif roll < 0.75:
                messages.append(Planned("broadcast", f"/broadcast {text}\n".encode(), others))
            else:
                gid = rng.choice(mine)
                members = [m for m in groups[gid] if m != sender]
                messages.append(Planned("group", f"/sendgroup {gid} {text}\n".encode(), members, gid))
        plans.append(messages)
    return plans


def run_soak(server, total: int, seed: int = 1) -> dict:
    port = server.port
    objects_during = port_objects(port)
    peers = [Peer(i, socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)) for i in range(CLIENTS)]
    for peer in peers:
        peer.id = int(peer.expect(r"^\[welcome\].*unique id is (\d{5})").group(1))
    ids = [p.id for p in peers]
    # Two groups made by client 0: everyone, and clients 0-2.
    groups: dict[int, list[int]] = {}
    for members in ([1, 2, 3, 4], [1, 2]):
        peers[0].sock.sendall(f"/makegroup {' '.join(str(ids[m]) for m in members)}\n".encode())
        gid = int(peers[0].expect(r"^\[ok\] group (\d{5})").group(1))
        groups[gid] = [0, *members]
        for m in members:
            peers[m].expect(rf"added you to group {gid}")
    plans = plan(total, ids, groups, seed)

    # expected[r][s]: the sequence numbers receiver r must get from sender s, in order.
    expected: list[list[list[int]]] = [[[] for _ in range(CLIENTS)] for _ in range(CLIENTS)]
    # due[s][n]: (receiver, index in expected[receiver][s]) for message n of sender s.
    due: list[list[list[tuple[int, int]]]] = [[] for _ in range(CLIENTS)]
    for s, messages in enumerate(plans):
        for n, message in enumerate(messages):
            places = []
            for r in message.receivers:
                places.append((r, len(expected[r][s])))
                expected[r][s].append(n)
            due[s].append(places)
    deliveries_expected = sum(len(expected[r][s]) for r in range(CLIENTS) for s in range(CLIENTS))

    by_id = {peer.id: peer.index for peer in peers}
    received = [[0] * CLIENTS for _ in range(CLIENTS)]  # received[r][s]
    sent = [0] * CLIENTS
    frontier = [0] * CLIENTS  # first message of s not yet seen by all its receivers
    selector = selectors.DefaultSelector()
    for peer in peers:
        peer.sock.setblocking(False)
        selector.register(peer.sock, selectors.EVENT_READ, peer)

    def consume(peer: Peer) -> None:
        lines = peer.inbuf.split(b"\n")
        peer.inbuf[:] = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            match = INCOMING.match(line)
            if match is None:
                (peer.errors if line.startswith("[error]") else peer.other).append(line)
                continue
            sender_id, seq = int(match.group(2)), int(match.group(3))
            s = by_id.get(sender_id)
            if s is None:
                peer.errors.append(f"from an unknown sender: {line[:80]}")
                continue
            peer.got.setdefault(sender_id, []).append(seq)
            kind = "group" if match.group(1) else ("private" if line.startswith("[msg") else "broadcast")
            peer.kinds.setdefault(sender_id, []).append((kind, int(match.group(1) or 0)))
            received[peer.index][s] += 1

    def advance(s: int) -> None:
        while frontier[s] < sent[s] and all(received[r][s] > i for r, i in due[s][frontier[s]]):
            frontier[s] += 1

    started = time.monotonic()
    last_progress, last_total = started, -1
    total_received = 0
    while total_received < deliveries_expected:
        for peer in peers:
            s = peer.index
            advance(s)
            while sent[s] < len(plans[s]) and sent[s] - frontier[s] < WINDOW and len(peer.out) < 256 * 1024:
                peer.out += plans[s][sent[s]].line
                sent[s] += 1
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.out else 0)
            selector.modify(peer.sock, events, peer)
        for key, mask in selector.select(1.0):
            peer = key.data
            if mask & selectors.EVENT_WRITE and peer.out:
                try:
                    n = peer.sock.send(peer.out)
                    del peer.out[:n]
                except BlockingIOError:
                    pass
            if mask & selectors.EVENT_READ:
                try:
                    chunk = peer.sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                if not chunk:
                    peer.closed = True
                    raise AssertionError(f"client {peer.index} was disconnected: {peer.other[-5:]}")
                peer.inbuf += chunk
                consume(peer)
        total_received = sum(map(sum, received))
        now = time.monotonic()
        if total_received != last_total:
            last_progress, last_total = now, total_received
        elif now - last_progress > STALL_SECONDS:
            raise AssertionError(
                f"stalled at {total_received}/{deliveries_expected} deliveries; sent {sent}, "
                f"frontier {frontier}\n{diagnose(server)}"
            )
    elapsed = time.monotonic() - started

    # Every receiver got exactly its messages from every sender, in order.  The
    # report's lost / duplicated / out-of-order figures are counted here, from
    # what arrived, before the assertions that require them to be zero.
    lost = duplicated = out_of_order = 0
    for r, peer in enumerate(peers):
        for s in range(CLIENTS):
            got = peer.got.get(ids[s], [])
            want = expected[r][s]
            lost += len(set(want) - set(got))
            duplicated += len(got) - len(set(got))
            out_of_order += sum(1 for a, b in pairwise(got) if b < a)
    for r, peer in enumerate(peers):
        assert not peer.errors, f"client {r} got errors: {peer.errors[:5]}"
        for s in range(CLIENTS):
            got = peer.got.get(ids[s], [])
            want = expected[r][s]
            assert got == want, (
                f"{s}->{r}: {len(got)} received, {len(want)} expected; "
                f"lost {len(set(want) - set(got))}, duplicated {len(got) - len(set(got))}, "
                f"in order {got == sorted(got)}"
            )
            kinds = [(plans[s][n].kind, plans[s][n].group) for n in want]
            assert peer.kinds.get(ids[s], []) == kinds, f"{s}->{r}: a message arrived as the wrong kind"
    with attached(port) as ipc:
        stats = ipc.messages.stats()
        rows = ipc.directory.online()
        locks = lock_values(ipc)
    for peer in peers:
        peer.sock.setblocking(True)
        peer.sock.sendall(b"/quit\n")
    for peer in peers:
        peer.sock.settimeout(TIMEOUT)
        while peer.sock.recv(65536):
            pass
        peer.sock.close()
    code = server.stop()
    objects_after = port_objects(port)
    kinds_sent = {k: sum(m.kind == k for p in plans for m in p) for k in ("private", "broadcast", "group")}
    report = {
        "messages_sent": sum(sent),
        "by_kind": kinds_sent,
        "deliveries_expected": deliveries_expected,
        "deliveries_received": sum(map(sum, received)),
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "seconds": round(elapsed, 2),
        "messages_per_second": round(sum(sent) / elapsed),
        "deliveries_per_second": round(deliveries_expected / elapsed),
        "mailbox_full_events": sum(m.full_events for m in stats),
        "records_taken_by_workers": sum(m.delivered for m in stats),
        "worker_counters_sent": sum(c.sent for c in rows),
        "worker_counters_received": sum(c.received for c in rows),
        "locks_after": locks,
        "ipcs_port_during": ipcs_counts(objects_during),
        "ipcs_port_after": ipcs_counts(objects_after),
        "server_exit_code": code,
    }
    assert code == 0
    assert objects_after == set()
    assert locks == {"DIRECTORY_SEMAPHORE": 1, "MESSAGES_SEMAPHORE": 1}
    return report


def _record(report: dict, name: str) -> None:
    print(f"\n{name}: {json.dumps(report)}")
    record(name, **report)
    path = os.environ.get("SHMCHAT_SOAK_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"test": name, **report}) + "\n")


@pytest.mark.server_args("--no-flood-control")  # five clients sending as fast as they can, on purpose
def test_soak_short(server):
    before = sysv_objects()
    report = run_soak(server, 5_000)
    assert report["messages_sent"] == 5_000
    assert report["deliveries_received"] == report["deliveries_expected"]
    _record(report, "soak-short")
    assert {o for o in sysv_objects() - before if (o[1] >> 4) & 0xFFFF == server.port} == set()


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.server_args("--no-flood-control")
def test_soak_full(server):
    total = int(os.environ.get("SHMCHAT_SOAK_MESSAGES", "100000"))
    assert total >= 100_000
    report = run_soak(server, total, seed=2)
    assert report["messages_sent"] == total
    assert report["deliveries_received"] == report["deliveries_expected"]
    _record(report, "soak-full")
