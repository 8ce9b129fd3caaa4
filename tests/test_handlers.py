"""server.handlers called directly: (caller, request, tables) in, replies and deliveries out.

No server process and no sockets: the tables are real System V objects made
with ``ServerIpc.create`` on a free port (tests/tablekit.py), and each test
reads what a handler returns, the lines for the caller and the records for
other mailboxes, exactly as the worker would before it writes and posts them.
"""

from __future__ import annotations

import pytest
from tablekit import online, small_tables

from protocol import commands, replies
from protocol import group_replies as groups
from server import handlers
from server.caller import Caller
from server.outbox import OFFLINE
from server.outcome import Outcome
from shm.directory import ClientInfo
from shm.layout import RecordKind


@pytest.fixture
def ipc():
    tables = small_tables(max_clients=5, max_groups=4)
    yield tables
    tables.close()


def caller(client: ClientInfo) -> Caller:
    return Caller(client.slot, client.generation, client.client_id)


def run(client: ClientInfo, line: str, ipc) -> Outcome:
    """What the worker does with one typed line: parse it, then handle it."""
    return handlers.handle(caller(client), commands.parse(line), ipc)


def delivered(outcome: Outcome) -> list[tuple[int, RecordKind, str]]:
    """(receiving slot, record kind, text) of every delivery, in order."""
    return [
        (d.posting.slot, d.posting.record.kind, d.posting.record.payload.decode()) for d in outcome.deliveries
    ]


def test_help_lists_the_commands_and_the_id_hint(ipc):
    (a,) = online(ipc, 1)
    outcome = run(a, "/help", ipc)
    assert all(line.startswith("[help] ") for line in outcome.replies)
    assert any("/sendgroup" in line for line in outcome.replies)
    assert outcome.replies[-1] == "[help] ids are 5-digit numbers; /active shows who is online"
    assert outcome.deliveries == [] and not outcome.quit


def test_active_lists_everyone_online_and_marks_the_caller(ipc):
    a, b = online(ipc, 2)
    assert run(a, "/active", ipc).replies == [f"[active] 2 online: {a.client_id} (you), {b.client_id}"]


def test_send_delivers_one_private_record_and_refuses_self_groups_and_the_offline(ipc):
    a, b = online(ipc, 2)
    outcome = run(a, f"/send {b.client_id} hi there", ipc)
    assert outcome.replies == []
    assert delivered(outcome) == [(b.slot, RecordKind.PRIVATE, "hi there")]
    record = outcome.deliveries[0].posting.record
    assert (record.sender_slot, record.sender_id, outcome.deliveries[0].posting.generation) == (
        a.slot,
        a.client_id,
        b.generation,
    )
    on_gone = outcome.deliveries[0].on_gone
    assert on_gone is not None and on_gone(OFFLINE) == replies.discarded(b.client_id)
    assert "your own id" in run(a, f"/send {a.client_id} me", ipc).replies[0]
    nobody = next(i for i in range(10000, 100000) if i not in (a.client_id, b.client_id))
    assert run(a, f"/send {nobody} hello", ipc).replies == [replies.offline(nobody)]
    gid = ipc.directory.create_group(a.client_id, [b.client_id], False).group.group_id
    assert run(a, f"/send {gid} hi", ipc).replies == [
        f"[error] {gid} is a group; use /sendgroup {gid} <message>"
    ]


def test_broadcast_reaches_everyone_but_the_sender(ipc):
    a, b, c = online(ipc, 3)
    outcome = run(a, "/broadcast all of you", ipc)
    assert delivered(outcome) == [
        (b.slot, RecordKind.BROADCAST, "all of you"),
        (c.slot, RecordKind.BROADCAST, "all of you"),
    ]
    (alone,) = online(small := small_tables(max_clients=1), 1)
    try:
        assert run(alone, "/broadcast anyone?", small).replies == [
            "[server] nobody else is online; broadcast not sent"
        ]
    finally:
        small.close()


def test_makegroup_adds_the_online_and_tells_them(ipc):
    a, b, c = online(ipc, 3)
    outcome = run(a, f"/makegroup {b.client_id} {c.client_id} {b.client_id}", ipc)
    made = groups.parse_group_made(outcome.replies[0])
    assert made is not None and made.admin == a.client_id
    assert made.members == (a.client_id, b.client_id, c.client_id)
    assert f"named more than once, added once: {b.client_id}" in outcome.replies[0]
    notice = groups.added_to_group(a.client_id, made)
    assert delivered(outcome) == [(b.slot, RecordKind.NOTICE, notice), (c.slot, RecordKind.NOTICE, notice)]


def test_makegroupreq_invites_instead_and_tells_the_invited(ipc):
    a, b = online(ipc, 2)
    outcome = run(a, f"/makegroupreq {b.client_id}", ipc)
    parsed = groups.parse_group_made_invite_only(outcome.replies[0])
    assert parsed is not None and parsed[1] == [b.client_id]
    gid = parsed[0]
    assert delivered(outcome) == [(b.slot, RecordKind.NOTICE, groups.group_invitation(a.client_id, gid))]
    assert ipc.directory.groups()[0].members == [a.client_id]


def test_joingroup_with_an_invitation_joins_and_tells_the_members(ipc):
    a, b, c = online(ipc, 3)
    gid = ipc.directory.create_group(a.client_id, [b.client_id, c.client_id], True).group.group_id
    run(c, f"/joingroup {gid}", ipc)
    outcome = run(b, f"/joingroup {gid}", ipc)
    joined = groups.parse_you_joined(outcome.replies[0])
    assert joined is not None and b.client_id in joined.members
    news = groups.joined_group(b.client_id, gid)
    assert delivered(outcome) == [(a.slot, RecordKind.NOTICE, news), (c.slot, RecordKind.NOTICE, news)]
    assert run(b, f"/joingroup {gid}", ipc).replies == [groups.already_member(gid)]


def test_joingroup_without_an_invitation_asks_the_admin(ipc):
    a, b, c = online(ipc, 3)
    gid = ipc.directory.create_group(a.client_id, [c.client_id], True).group.group_id
    outcome = run(b, f"/joingroup {gid}", ipc)
    assert outcome.replies == [groups.join_request_sent(gid, a.client_id)]
    assert delivered(outcome) == [(a.slot, RecordKind.NOTICE, groups.join_request(b.client_id, gid))]
    assert run(b, f"/joingroup {gid}", ipc).replies == [groups.already_asked(gid)]


def test_approve_tells_the_requester_and_the_members(ipc):
    a, b, c = online(ipc, 3)
    gid = ipc.directory.create_group(a.client_id, [c.client_id], False).group.group_id
    ipc.directory.join_group(gid, b.client_id)
    outcome = run(a, f"/approve {gid} {b.client_id}", ipc)
    assert outcome.replies == [groups.request_approved_ok(b.client_id, gid)]
    (to_b, to_c) = delivered(outcome)
    assert to_b[0] == b.slot and groups.parse_request_approved(to_b[2]) is not None
    assert to_c == (c.slot, RecordKind.NOTICE, groups.joined_group(b.client_id, gid))


def test_deny_tells_the_requester_only(ipc):
    a, b, c = online(ipc, 3)
    gid = ipc.directory.create_group(a.client_id, [c.client_id], True).group.group_id
    ipc.directory.join_group(gid, b.client_id)
    outcome = run(a, f"/deny {gid} {b.client_id}", ipc)
    assert outcome.replies == [groups.request_denied_ok(b.client_id, gid)]
    assert delivered(outcome) == [(b.slot, RecordKind.NOTICE, groups.request_denied(gid))]


def test_declinegroup_tells_the_admin(ipc):
    a, b = online(ipc, 2)
    gid = ipc.directory.create_group(a.client_id, [b.client_id], True).group.group_id
    outcome = run(b, f"/declinegroup {gid}", ipc)
    assert outcome.replies == [groups.invitation_declined_ok(gid)]
    assert delivered(outcome) == [(a.slot, RecordKind.NOTICE, groups.invitation_declined(b.client_id, gid))]


def test_sendgroup_reaches_the_other_members_and_not_a_lone_member(ipc):
    a, b, c = online(ipc, 3)
    gid = ipc.directory.create_group(a.client_id, [b.client_id, c.client_id], False).group.group_id
    outcome = run(b, f"/sendgroup {gid} to the group", ipc)
    assert delivered(outcome) == [
        (a.slot, RecordKind.GROUP, "to the group"),
        (c.slot, RecordKind.GROUP, "to the group"),
    ]
    assert {d.posting.record.group_id for d in outcome.deliveries} == {gid}
    alone = ipc.directory.create_group(a.client_id, [b.client_id], True).group.group_id  # b only invited
    assert run(a, f"/sendgroup {alone} anyone", ipc).replies == [groups.only_member(alone)]


def test_listgroups_for_everyone_and_for_the_caller(ipc):
    a, b, c = online(ipc, 3)
    assert run(a, "/activeallgroups", ipc).replies == [groups.no_groups(everyone=True)]
    gid = ipc.directory.create_group(a.client_id, [b.client_id], False).group.group_id
    everyone = run(c, "/activeallgroups", ipc).replies
    assert everyone[0] == groups.groups_count(1, everyone=True)
    described = groups.parse_group_description(everyone[1])
    assert described is not None and described.group_id == gid
    assert run(c, "/activegroups", ipc).replies == [groups.no_groups(everyone=False)]
    assert run(b, "/activegroups", ipc).replies[0] == groups.groups_count(1, everyone=False)


def test_quit_says_goodbye_and_ends_the_session(ipc):
    (a,) = online(ipc, 1)
    outcome = run(a, "/quit", ipc)
    assert outcome.quit and outcome.replies == [f"[bye] goodbye, {a.client_id}"]


def test_a_broken_group_rule_becomes_one_error_line(ipc):
    a, b = online(ipc, 2)
    nobody = next(i for i in range(10000, 100000) if i not in (a.client_id, b.client_id))
    outcome = run(a, f"/joingroup {nobody}", ipc)
    assert outcome.replies == [groups.no_such_group(nobody)] and outcome.deliveries == []


def test_departure_notices_tell_everyone_and_hand_the_group_on(ipc):
    a, b, c = online(ipc, 3)
    shared = ipc.directory.create_group(a.client_id, [b.client_id, c.client_id], False).group.group_id
    released = ipc.directory.release_slot(a.slot, a.generation)
    assert released is not None
    out = handlers.departure_notices(a.client_id, "left", released[1], ipc)
    lines = [(d.posting.slot, d.posting.record.payload.decode()) for d in out]
    assert (b.slot, replies.left(a.client_id, "left")) in lines
    assert (c.slot, replies.left(a.client_id, "left")) in lines
    handed_on = groups.left_group(a.client_id, shared, b.client_id)
    assert (b.slot, handed_on) in lines and (c.slot, handed_on) in lines
