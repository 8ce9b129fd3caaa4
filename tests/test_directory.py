"""shm.directory: the client table and the group table, on real System V objects."""

from __future__ import annotations

import os

import pytest
from tablekit import online, small_tables, unused_port

from shm.directory import GroupError
from shm.segments import ServerIpc


@pytest.fixture(params=["sysv", "posix"])
def ipc(request):
    """The same tables on System V and on POSIX shared memory: the table code cannot tell."""
    tables = small_tables(api=request.param)
    yield tables
    tables.close()


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
