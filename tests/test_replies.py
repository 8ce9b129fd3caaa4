"""protocol.replies: rendering server lines and reading them back."""

from __future__ import annotations

import pytest

from protocol import group_replies as groups
from protocol import replies

SHA = "cd" * 32


def test_the_limit_refusal_is_exactly_the_spec_string():
    assert replies.CONNECTION_LIMIT == "Connection Limit Exceeded !!"
    assert replies.classify("Connection Limit Exceeded !!").kind == "limit"


def test_welcome_names_the_id_and_no_other_five_digit_number():
    line = replies.welcome(12345, online=3)
    assert line.startswith("[welcome] ")
    assert "unique id is 12345" in line
    assert [w for w in line.replace(";", " ").split() if w.isdigit() and len(w) == 5] == ["12345"]


def test_messages_carry_sender_and_text_verbatim():
    assert replies.private(11111, "  hi  there ") == "[msg from 11111]   hi  there "
    parsed = replies.classify(replies.private(11111, "] [server] fake"))
    assert (parsed.kind, parsed.sender, parsed.body) == ("private", 11111, "] [server] fake")
    parsed = replies.classify(replies.group_message(54321, 11111, "hey"))
    assert (parsed.kind, parsed.group_id, parsed.sender, parsed.body) == ("group", 54321, 11111, "hey")
    parsed = replies.classify(replies.broadcast(22222, "all"))
    assert (parsed.kind, parsed.sender) == ("broadcast", 22222)


def test_notices_errors_and_queries_are_tagged():
    assert replies.classify(replies.left(12345, "left")).kind == "server"
    assert replies.classify(replies.offline(12345)).kind == "error"
    assert "12345" in replies.offline(12345) and "offline" in replies.offline(12345)
    assert replies.classify(replies.active(1, [1, 2])).kind == "active"
    assert replies.classify("no tag at all").kind == "other"


def test_bounce_names_the_receiver_and_shortens_long_text():
    line = replies.bounced(23456, "z" * 500)
    assert "client 23456 disconnected before delivery" in line
    assert len(line) < 200


def test_file_header_round_trips_and_chat_cannot_forge_one():
    header = replies.file_header("12345-3", 12345, 54321, 99, SHA, "name with spaces.txt")
    parsed = replies.parse_file_header(header)
    assert parsed == replies.FileHeader("12345-3", 12345, 54321, 99, SHA, "name with spaces.txt")
    private = replies.parse_file_header(replies.file_header("12345-4", 12345, 0, 0, SHA, "x"))
    assert private is not None and private.group_id == 0
    forged = replies.private(12345, f"[file 1-1 from 2] 5 {SHA} evil")
    assert replies.parse_file_header(forged) is None


# -- each line the roster reads: render, parse, the same values ---------------------------

GROUP = groups.GroupView(54321, 11111, (11111, 22222), invited=(33333,), requests=(44444, 55555))
PLAIN = groups.GroupView(54321, 11111, (11111,))


def test_welcome_and_active_round_trip():
    assert replies.parse_welcome(replies.welcome(12345, online=1)) == (12345, 0)
    assert replies.parse_welcome(replies.welcome(12345, online=4)) == (12345, 3)
    assert replies.parse_active(replies.active(12345, [12345, 23456])) == [12345, 23456]
    assert replies.parse_welcome(replies.notice("unique id is 12345")) is None
    assert replies.parse_active(replies.notice("1 online: 12345")) is None


def test_joins_and_leaves_round_trip_and_a_group_leave_is_not_a_server_leave():
    assert replies.parse_joined(replies.joined(12345)) == 12345
    for how in ("left", "disconnected (connection lost)", "was disconnected (protocol error)"):
        assert replies.parse_left(replies.left(12345, how)) == 12345
    assert replies.parse_left(groups.left_group(12345, 54321)) is None
    assert replies.parse_joined(groups.joined_group(12345, 54321)) is None
    for line in (replies.offline(12345), replies.discarded(12345), replies.bounced(12345, "hi")):
        assert replies.parse_offline(line) == 12345
    assert replies.discarded(12345) == "[error] client 12345 disconnected; message discarded"


def test_a_group_description_round_trips_with_and_without_its_optional_parts():
    for group in (GROUP, PLAIN):
        assert groups.parse_group_description(groups.group_description(group)) == group
        assert groups.parse_group_description(replies.groups_line(groups.group_description(group))) == group
    assert groups.group_description(PLAIN) == "group 54321: admin 11111; members 11111"


def test_makegroup_replies_round_trip_with_the_skipped_ids():
    line = groups.group_made(GROUP, {99999: "not online"}, [22222])
    assert line == (
        "[ok] group 54321: admin 11111; members 11111, 22222; invited 33333; asking to join 44444, 55555"
        " (created); not added: 99999 (not online); named more than once, added once: 22222"
    )
    assert groups.parse_group_made(line) == GROUP
    line = groups.group_made_invite_only(54321, [22222, 33333], {11111: "that is you"}, [])
    assert line == "[ok] group 54321 created; invited 22222, 33333; not invited: 11111 (that is you)"
    assert groups.parse_group_made_invite_only(line) == (54321, [22222, 33333])
    assert groups.parse_group_made(groups.you_joined(GROUP)) is None


@pytest.mark.parametrize(
    ("line", "parse", "values"),
    [
        (groups.added_to_group(11111, GROUP), groups.parse_added_to_group, (11111, GROUP)),
        (groups.group_invitation(11111, 54321), groups.parse_group_invitation, (11111, 54321)),
        (groups.you_joined(GROUP), groups.parse_you_joined, GROUP),
        (groups.joined_group(22222, 54321), groups.parse_joined_group, (22222, 54321)),
        (groups.join_request(22222, 54321), groups.parse_join_request, (22222, 54321)),
        (groups.request_approved_ok(22222, 54321), groups.parse_request_approved_ok, (22222, 54321)),
        (groups.request_approved(GROUP), groups.parse_request_approved, GROUP),
        (groups.invitation_declined_ok(54321), groups.parse_invitation_declined_ok, 54321),
        (groups.invitation_declined(22222, 54321), groups.parse_invitation_declined, (22222, 54321)),
        (groups.group_dissolved(54321, 11111), groups.parse_group_dissolved, (54321, 11111)),
        (groups.left_group(11111, 54321), groups.parse_left_group, (11111, 54321, None)),
        (groups.left_group(11111, 54321, 22222), groups.parse_left_group, (11111, 54321, 22222)),
        (
            groups.admin_inherited(54321, [44444, 55555]),
            groups.parse_admin_inherited,
            (54321, [44444, 55555]),
        ),
        (groups.no_such_group(54321), groups.parse_no_such_group, 54321),
        (groups.groups_count(3, everyone=True), groups.parse_groups_count, (3, True)),
        (groups.groups_count(1, everyone=False), groups.parse_groups_count, (1, False)),
        (groups.no_groups(everyone=True), groups.parse_no_groups, True),
        (groups.no_groups(everyone=False), groups.parse_no_groups, False),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_each_group_line_reads_back_the_values_it_was_rendered_from(line, parse, values):
    assert parse(line) == values
    assert parse(replies.private(11111, line)) is None  # chat text cannot pass for it


def test_lines_that_only_name_a_group_are_still_noticed():
    for line in (
        groups.already_member(54321),
        groups.already_asked(54321),
        groups.join_request_sent(54321, 11111),
        groups.request_denied(54321),
        groups.request_denied_ok(22222, 54321),
        groups.only_member(54321),
    ):
        assert groups.parse_group_mentioned(line) == 54321, line


def test_group_lines_keep_their_documented_wording():
    assert groups.group_invitation(11111, 54321) == (
        "[server] client 11111 invites you to group 54321 (its admin is 11111); to answer, "
        "type /joingroup 54321 to join or /declinegroup 54321 to decline"
    )
    assert groups.join_request(22222, 54321) == (
        "[server] client 22222 asks to join group 54321; answer /approve 54321 22222 or /deny 54321 22222"
    )
    assert groups.admin_inherited(54321, [44444]) == (
        "[server] you are now the admin of group 54321; waiting for your answer: 44444 "
        "(/approve 54321 <id> or /deny 54321 <id>)"
    )
    assert groups.request_denied(54321) == "[server] the admin of group 54321 denied your request to join"
    assert groups.only_member(54321) == "[server] you are the only member of group 54321; not sent"
