"""The shared tables on real System V objects, without a server or sockets.

Several tests fork processes that hammer one table at once, the way workers
do, and one kills a process while it holds a lock.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import time
from collections import deque

import pytest

from shm import layout
from shm.directory import GroupError
from shm.layout import RecordKind
from shm.mailboxes import Posting, PostResult, Record
from shm.segments import IpcInUse, ServerIpc, list_objects


def unused_port() -> int:
    """A port number no server here uses, so its IPC keys are ours alone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ipc():
    tables = ServerIpc.create(unused_port(), max_clients=4, max_groups=4, mailbox_bytes=80 * 1024)
    yield tables
    tables.close()


def record(payload: bytes, sender_slot: int = 0, sender_id: int = 11111, kind=RecordKind.PRIVATE) -> Record:
    return Record(kind, sender_slot, sender_id, 0, payload)


def online(ipc: ServerIpc, count: int):
    clients = [ipc.directory.claim_slot("127.0.0.1", 40000 + n) for n in range(count)]
    for client in clients:
        ipc.messages.open(client.slot, client.generation)
    return clients


# -- objects ---------------------------------------------------------------------


def test_create_makes_three_segments_and_two_semaphores_and_close_removes_them():
    port = unused_port()
    tables = ServerIpc.create(port, max_clients=3)
    objects = list_objects(port)
    assert sorted(e.kind for e in objects) == ["sem", "sem", "shm", "shm", "shm"]
    assert {e.key for e in objects} == {layout.ipc_key(port, obj) for obj in layout.IpcObject}
    tables.close()
    assert list_objects(port) == []


def test_attach_sees_what_the_creator_wrote(ipc):
    a, b = online(ipc, 2)
    other = ServerIpc.attach(ipc.port)
    try:
        assert [c.client_id for c in other.directory.online()] == [a.client_id, b.client_id]
        assert other.messages.capacity == 4
    finally:
        other.close()
    assert len(list_objects(ipc.port)) == 5  # detaching removes nothing


def test_a_live_servers_objects_are_never_reclaimed(ipc):
    with pytest.raises(IpcInUse):
        ServerIpc.create(ipc.port, max_clients=4)


def test_a_dead_servers_objects_are_reclaimed_on_create():
    port = unused_port()
    pid = os.fork()
    if pid == 0:
        ServerIpc.create(port, max_clients=2)
        os._exit(0)  # dies without removing anything, like a SIGKILLed server
    os.waitpid(pid, 0)
    assert len(list_objects(port)) == 5
    tables = ServerIpc.create(port, max_clients=2)
    try:
        assert all(e.creator_pid == os.getpid() for e in list_objects(port) if e.kind == "shm")
    finally:
        tables.close()


def test_keys_encode_the_port_and_others_keys_are_ignored():
    key = layout.ipc_key(5000, layout.IpcObject.GROUPS_SEGMENT)
    assert key == 0x5C413882
    assert layout.split_key(key) == (5000, layout.IpcObject.GROUPS_SEGMENT)
    assert layout.split_key(0x12345678) is None
    assert layout.split_key(0) is None


# -- client table ----------------------------------------------------------------------


def test_slots_fill_up_then_refuse_and_ids_are_unique_five_digit_numbers(ipc):
    clients = online(ipc, 4)
    assert ipc.directory.claim_slot("127.0.0.1", 1) is None
    ids = [c.client_id for c in clients]
    assert len(set(ids)) == 4 and all(10000 <= i <= 99999 for i in ids)
    assert [c.slot for c in clients] == [0, 1, 2, 3]


def test_a_released_slot_is_reused_with_a_new_generation_and_release_is_once(ipc):
    a, _b = online(ipc, 2)
    released = ipc.directory.release_slot(a.slot, a.generation)
    assert released is not None and released[0].client_id == a.client_id
    assert ipc.directory.release_slot(a.slot, a.generation) is None
    again = ipc.directory.claim_slot("127.0.0.1", 2)
    assert again.slot == a.slot and again.generation == a.generation + 1


def test_record_layout_matches_the_declared_offsets(ipc):
    (a,) = online(ipc, 1)
    ipc.directory.set_worker_pid(a.slot, a.generation, 4242)
    raw = ipc.segments[layout.IpcObject.CLIENTS_SEGMENT].read(
        layout.CLIENT_RECORD_SIZE, layout.SEGMENT_HEADER_SIZE
    )
    state, client_id, pid = struct.unpack_from("<B3xIi", raw)
    assert (state, client_id, pid) == (1, a.client_id, 4242)
    assert struct.unpack_from("<H", raw, 24) == (40000,)  # peer port
    assert raw[32:41] == b"127.0.0.1"  # peer host, NUL padded


# -- message table ----------------------------------------------------------------------------


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


# -- groups ---------------------------------------------------------------------------------------


def test_makegroup_joins_online_members_and_reports_the_rest(ipc):
    a, b, c = online(ipc, 3)
    created = ipc.directory.create_group(a.client_id, [b.client_id, b.client_id, a.client_id, 10001], False)
    assert created.group.members == [a.client_id, b.client_id]
    assert created.group.admin_id == a.client_id
    assert set(created.skipped) == {a.client_id, 10001}
    assert created.group.group_id not in {a.client_id, b.client_id, c.client_id}


def test_group_size_is_capped_at_five_including_the_admin():
    tables = ServerIpc.create(unused_port(), max_clients=7, max_groups=2)
    try:
        clients = online(tables, 7)
        ids = [c.client_id for c in clients]
        with pytest.raises(GroupError, match="at most 5 members"):
            tables.directory.create_group(ids[0], ids[1:6], False)
        assert tables.directory.groups() == []
        group = tables.directory.create_group(ids[0], ids[1:5], False).group
        assert len(group.members) == 5
    finally:
        tables.close()


def test_invitations_requests_approval_and_denial(ipc):
    admin, invitee, stranger, other = online(ipc, 4)
    d = ipc.directory
    group = d.create_group(admin.client_id, [invitee.client_id], True).group
    assert group.members == [admin.client_id] and group.invited == [invitee.client_id]
    assert d.join_group(group.group_id, invitee.client_id).joined
    outcome = d.join_group(group.group_id, stranger.client_id)
    assert not outcome.joined and outcome.group.requests == [stranger.client_id]
    with pytest.raises(GroupError, match="only the admin"):
        d.answer_request(group.group_id, invitee.client_id, stranger.client_id, True)
    joined = d.answer_request(group.group_id, admin.client_id, stranger.client_id, True)
    assert joined.members == [admin.client_id, invitee.client_id, stranger.client_id]
    d.join_group(group.group_id, other.client_id)
    denied = d.answer_request(group.group_id, admin.client_id, other.client_id, False)
    assert other.client_id not in denied.members and denied.requests == []
    with pytest.raises(GroupError, match="no invitation"):
        d.decline_invitation(group.group_id, other.client_id)


def test_departure_hands_admin_to_the_longest_standing_member_and_dissolves_empty_groups(ipc):
    a, b, c, _d = online(ipc, 4)
    d = ipc.directory
    shared = d.create_group(a.client_id, [b.client_id, c.client_id], False).group
    solo = d.create_group(a.client_id, [b.client_id], True).group  # only a is a member
    _info, changes = d.release_slot(a.slot, a.generation)
    by_group = {change.group.group_id: change for change in changes}
    assert by_group[shared.group_id].new_admin == b.client_id
    assert by_group[shared.group_id].group.members == [b.client_id, c.client_id]
    assert by_group[solo.group_id].dissolved
    assert [g.group_id for g in d.groups()] == [shared.group_id]


# -- several processes at once ------------------------------------------------------------------------


def test_many_processes_posting_at_once_lose_nothing_and_keep_each_senders_order():
    tables = ServerIpc.create(unused_port(), max_clients=5, mailbox_bytes=80 * 1024)
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
                        else:
                            time.sleep(0.0005)  # a real worker waits for its doorbell instead
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        seen: dict[int, list[int]] = {s.slot: [] for s in senders}
        deadline = time.monotonic() + 60
        while sum(map(len, seen.values())) < per_sender * len(senders) and time.monotonic() < deadline:
            taken, _ = tables.messages.take(receiver.slot, receiver.generation)
            for rec in taken:
                slot, n = rec.payload.decode().split(":")
                seen[int(slot)].append(int(n))
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
        for slot, numbers in seen.items():
            assert numbers == list(range(per_sender)), f"sender slot {slot}"
    finally:
        tables.close()


def test_many_processes_claiming_and_releasing_never_share_a_slot_or_an_id():
    tables = ServerIpc.create(unused_port(), max_clients=8)
    try:
        read_end, write_end = os.pipe()
        pids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                try:
                    for _ in range(300):
                        info = tables.directory.claim_slot("127.0.0.1", os.getpid() & 0xFFFF)
                        if info is None:
                            continue
                        os.write(write_end, f"{info.slot},{info.generation},{info.client_id}\n".encode())
                        tables.directory.release_slot(info.slot, info.generation)
                finally:
                    os._exit(0)
            pids.append(pid)
        os.close(write_end)
        for pid in pids:
            os.waitpid(pid, 0)
        with os.fdopen(read_end) as claims:
            rows = [tuple(map(int, line.split(","))) for line in claims]
        assert len(rows) > 300
        assert len({(slot, gen) for slot, gen, _ in rows}) == len(rows)  # each (slot, generation) once
        assert tables.directory.online() == []
    finally:
        tables.close()


def test_a_process_killed_while_holding_a_lock_does_not_wedge_the_others(ipc):
    lock = ipc.directory.lock
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        lock.reserve()
        os.write(ready_w, b"held")
        time.sleep(60)
        os._exit(0)
    assert os.read(ready_r, 4) == b"held"
    assert lock.value == 0 and not lock.try_reserve()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert lock.value == 1  # the kernel undid the dead process's reserve
    with lock.held():
        assert lock.value == 0
    assert lock.value == 1
