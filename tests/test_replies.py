"""protocol.replies: rendering server lines and reading them back."""

from __future__ import annotations

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
