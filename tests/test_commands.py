"""protocol.commands: every command's parse, and every way to get it wrong."""

from __future__ import annotations

import pytest

from protocol.commands import (
    COMMANDS,
    Active,
    AnswerRequest,
    Broadcast,
    CommandError,
    DataFrame,
    DeclineGroup,
    Help,
    JoinGroup,
    ListGroups,
    MakeGroup,
    Quit,
    Send,
    SendFile,
    SendGroup,
    format_data,
    format_sendfile,
    help_lines,
    parse,
)

#: Every test here runs on a System V server and on a POSIX one (conftest.ipc_api).
pytestmark = pytest.mark.both_ipc_apis

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/active", Active()),
        ("  /active  ", Active()),
        ("/ACTIVE", Active()),
        ("/send 12345 hi", Send(12345, "hi")),
        ("/send 12345 two  spaces  kept ", Send(12345, "two  spaces  kept ")),
        ("/send 12345  leading space", Send(12345, " leading space")),
        ("/send\t12345\ttabbed", Send(12345, "tabbed")),
        ("/broadcast hello all", Broadcast("hello all")),
        ("/makegroup 11111 22222", MakeGroup((11111, 22222), invite_only=False)),
        ("/makegroupreq 11111", MakeGroup((11111,), invite_only=True)),
        ("/joingroup 54321", JoinGroup(54321)),
        ("/declinegroup 54321", DeclineGroup(54321)),
        ("/approve 54321 11111", AnswerRequest(54321, 11111, approve=True)),
        ("/deny 54321 11111", AnswerRequest(54321, 11111, approve=False)),
        ("/sendgroup 54321 to the group", SendGroup(54321, "to the group")),
        ("/activegroups", ListGroups(everyone=False)),
        ("/activeallgroups", ListGroups(everyone=True)),
        (f"/sendfile 12345 10 {SHA} my file.txt", SendFile(12345, 10, SHA, "my file.txt")),
        ("/data 12345-7 4096", DataFrame("12345-7", 4096)),
        ("/quit", Quit()),
        ("EXIT", Quit()),
        ("exit", Quit()),
        ("EXIT\r", Quit()),
        ("/help", Help()),
        ("/help send", Help("/send")),
        ("/help /SEND", Help("/send")),
        ("/help exit", Help("EXIT")),
    ],
)
def test_valid_lines_parse_to_typed_requests(line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("", ["empty line"]),
        ("   ", ["empty line"]),
        ("hello", ["unknown command 'hello'", "/help"]),
        ("/frob", ["unknown command '/frob'"]),
        ("/send", ["/send: an id and a message are missing; usage: /send <client id> <message>"]),
        ("/send 12345", ["message is missing"]),
        ("/send 12345    ", ["message is missing"]),
        ("/send abcde hi", ["'abcde' is not a client id", "usage: /send"]),
        ("/send -1234 hi", ["'-1234' is not a client id"]),
        ("/send 1234 hi", ["'1234' is not a client id"]),
        ("/send 123456 hi", ["'123456' is not a client id"]),
        ("/send 00001 hi", ["00001 is not a client id"]),
        ("/send ١٢٣٤٥ hi", ["is not a client id"]),  # Arabic-Indic digits are not ids
        ("/send " + "9" * 400 + " hi", ["is not a client id", "..."]),
        ("/broadcast", ["message is missing", "usage: /broadcast <message>"]),
        ("/broadcast    ", ["message is missing"]),
        ("/makegroup", ["at least one client id", "usage: /makegroup"]),
        ("/makegroup 12345 x", ["'x' is not a client id"]),
        ("/joingroup", ["takes one group id"]),
        ("/joingroup 12345 67890", ["takes one group id"]),
        ("/joingroup abc", ["'abc' is not a group id"]),
        ("/approve 12345", ["takes a group id and a client id"]),
        ("/deny 12345 x", ["'x' is not a client id"]),
        ("/sendgroup 12345", ["message is missing"]),
        ("/active now", ["/active takes no arguments", "usage: /active"]),
        ("/activegroups x", ["takes no arguments"]),
        ("/quit now", ["/quit takes no arguments"]),
        ("EXIT please", ["EXIT takes no arguments"]),
        ("/help nosuch", ["unknown command 'nosuch'"]),
        ("/sendfile 12345 ./notes.txt", ["use the shmchat client", "<size> <sha256 hex>"]),
        (f"/sendfile 12345 -1 {SHA} x", ["use the shmchat client"]),
        ("/sendfile 12345 10 NOTHEX x", ["use the shmchat client"]),
        (f"/sendfile 12345 10 {SHA} ", ["the file name is missing"]),
        ("/data 12345-1", ["malformed data frame"]),
        ("/data nope 10", ["malformed data frame"]),
        ("/data 12345-1 99999999", ["over the 1048576-byte limit"]),
    ],
)
def test_invalid_lines_raise_one_clear_error(line, words):
    with pytest.raises(CommandError) as caught:
        parse(line)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_every_command_in_the_table_parses_from_its_usage_shape():
    examples = {
        "/help": "/help",
        "/active": "/active",
        "/send": "/send 12345 x",
        "/broadcast": "/broadcast x",
        "/makegroup": "/makegroup 12345",
        "/makegroupreq": "/makegroupreq 12345",
        "/joingroup": "/joingroup 12345",
        "/declinegroup": "/declinegroup 12345",
        "/approve": "/approve 12345 23456",
        "/deny": "/deny 12345 23456",
        "/sendgroup": "/sendgroup 12345 x",
        "/activegroups": "/activegroups",
        "/activeallgroups": "/activeallgroups",
        "/sendfile": f"/sendfile 12345 1 {SHA} x",
        "/quit": "/quit",
        "EXIT": "EXIT",
    }
    assert set(examples) == {spec.name for spec in COMMANDS}
    for line in examples.values():
        parse(line)


def test_help_is_generated_from_the_table():
    lines = help_lines()
    assert len(lines) == len(COMMANDS)
    for spec, line in zip(COMMANDS, lines, strict=True):
        assert line.startswith(spec.usage) and line.endswith(spec.summary)
    assert help_lines("/send") == ["/send <client id> <message>: send a private message to one client"]


def test_wire_forms_round_trip():
    assert parse(format_sendfile(12345, 3, SHA, "a\nb.txt")) == SendFile(12345, 3, SHA, "a b.txt")
    assert parse(format_data("12345-2", 7)) == DataFrame("12345-2", 7)
