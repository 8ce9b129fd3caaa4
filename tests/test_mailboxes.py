"""shm.mailboxes: the message table (one ring per slot), on real System V objects."""

from __future__ import annotations

import os
import random
import select
from collections import deque

import pytest
from tablekit import online, record, small_tables, unused_port

from shm.mailboxes import Posting, PostResult
from shm.segments import ServerIpc


@pytest.fixture(params=["sysv", "posix"])
def ipc(request):
    """The same tables on System V and on POSIX shared memory: the table code cannot tell."""
    tables = small_tables(api=request.param)
    yield tables
    tables.close()


def test_mail_is_taken_in_posting_order(ipc):
    a, b = online(ipc, 2)
    posts = [Posting(b.slot, b.generation, record(f"m{n}".encode(), a.slot, a.client_id)) for n in range(50)]
    assert ipc.messages.post(posts) == [PostResult.DELIVERED] * 50
    taken, waiters = ipc.messages.take(b.slot, b.generation)
    assert [r.payload for r in taken] == [f"m{n}".encode() for n in range(50)]
    assert waiters == []
    assert ipc.messages.take(b.slot, b.generation) == ([], [])


def test_a_full_mailbox_refuses_keeps_order_and_remembers_the_waiter(ipc):
    a, b = online(ipc, 2)
    big = b"x" * (30 * 1024)
    posts = [Posting(b.slot, b.generation, record(big + bytes([n]), a.slot)) for n in range(4)]
    results = ipc.messages.post(posts)
    assert results[:2] == [PostResult.DELIVERED, PostResult.DELIVERED]
    assert results[2:] == [PostResult.FULL, PostResult.FULL]
    taken, waiters = ipc.messages.take(b.slot, b.generation)
    assert [r.payload[-1] for r in taken] == [0, 1]
    assert waiters == [a.slot]
    assert ipc.messages.stats()[b.slot].full_events == 1


def test_ring_wraps_around_without_corrupting_records(ipc):
    a, b = online(ipc, 2)
    rng = random.Random(7)
    model: deque[bytes] = deque()
    for step in range(2000):
        if rng.random() < 0.6:
            payload = rng.randbytes(rng.randint(0, 9000))
            result = ipc.messages.post([Posting(b.slot, b.generation, record(payload, a.slot))])[0]
            if result is PostResult.DELIVERED:
                model.append(payload)
        else:
            taken, _ = ipc.messages.take(b.slot, b.generation)
            assert [r.payload for r in taken] == list(model), f"step {step}"
            model.clear()


def test_closing_returns_unread_mail_and_later_posts_see_the_client_gone(ipc):
    a, b = online(ipc, 2)
    ipc.messages.post([Posting(b.slot, b.generation, record(b"unread", a.slot, a.client_id))])
    unread, _ = ipc.messages.close(b.slot, b.generation)
    assert [(r.payload, r.sender_id) for r in unread] == [(b"unread", a.client_id)]
    late = Posting(b.slot, b.generation, record(b"late", a.slot))
    assert ipc.messages.post([late]) == [PostResult.GONE]


def test_mail_for_an_old_generation_never_reaches_the_slots_next_client(ipc):
    a, b = online(ipc, 2)
    ipc.directory.release_slot(b.slot, b.generation)
    ipc.messages.close(b.slot, b.generation)
    newcomer = ipc.directory.claim_slot("127.0.0.1", 9)
    ipc.messages.open(newcomer.slot, newcomer.generation)
    stale = Posting(b.slot, b.generation, record(b"for the old client", a.slot))
    assert ipc.messages.post([stale]) == [PostResult.GONE]
    assert ipc.messages.take(newcomer.slot, newcomer.generation) == ([], [])


def test_many_processes_posting_at_once_lose_nothing_and_keep_each_senders_order():
    tables = ServerIpc.create(unused_port(), max_clients=5, mailbox_bytes=80 * 1024)
    # Doorbells as the server has them (one eventfd per slot): a sender rings the
    # receiver after each post; a sender that found the mailbox full waits for its
    # own bell, which the receiver rings for every waiter its take reports.
    bells = [os.eventfd(0) for _ in range(5)]
    try:
        clients = online(tables, 5)
        receiver, senders = clients[0], clients[1:]
        per_sender = 3000
        pids = []
        for sender in senders:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    n = 0
                    while n < per_sender:
                        rec = record(f"{sender.slot}:{n}".encode(), sender.slot, sender.client_id)
                        result = tables.messages.post([Posting(receiver.slot, receiver.generation, rec)])[0]
                        if result is PostResult.DELIVERED:
                            n += 1
                            os.eventfd_write(bells[receiver.slot], 1)
                        elif select.select([bells[sender.slot]], [], [], 60)[0]:  # wait for room
                            os.eventfd_read(bells[sender.slot])
                        else:
                            break  # never rung back: fail (code 1) rather than hang
                    code = 0 if n == per_sender else 1
                finally:
                    os._exit(code)
            pids.append(pid)
        seen: dict[int, list[int]] = {s.slot: [] for s in senders}
        while sum(map(len, seen.values())) < per_sender * len(senders):
            if not select.select([bells[receiver.slot]], [], [], 60)[0]:
                break  # no post for a minute: the assertions below say what is missing
            os.eventfd_read(bells[receiver.slot])
            taken, waiters = tables.messages.take(receiver.slot, receiver.generation)
            for rec in taken:
                slot_text, number = rec.payload.decode().split(":")
                seen[int(slot_text)].append(int(number))
            for waiter in waiters:
                os.eventfd_write(bells[waiter], 1)
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
        for slot, numbers in seen.items():
            assert numbers == list(range(per_sender)), f"sender slot {slot}"
    finally:
        tables.close()
        for bell in bells:
            os.close(bell)
