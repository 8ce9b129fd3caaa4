"""Bad input, end to end: a real server, raw sockets and the real line-mode client.

Every case here sends something a well-behaved client never would, and checks
two things: the sender gets a clear answer (an error line and a session that
goes on, or a closed connection with a reason), and nobody else is harmed
(the bystanders see nothing of it and keep chatting).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from procinfo import peak_rss_kib, record, spool_files, spool_of, wait_until, worker_of

from protocol.framing import MAX_LINE_BYTES

CAP = MAX_LINE_BYTES
ERROR = r"^\[(error|upload refused)\]"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unused_ids(*taken: int, count: int = 5) -> list[int]:
    ids: list[int] = []
    candidate = 10007
    while len(ids) < count:
        if candidate not in taken:
            ids.append(candidate)
        candidate += 1111
    return ids


def chat_still_works(sender, receiver, tag: str) -> None:
    sender.send(f"/send {receiver.id} {tag}")
    receiver.expect(rf"^\[msg from {sender.id}\] {re.escape(tag)}$")


# -- the line cap ------------------------------------------------------------------


def test_lines_at_the_cap_are_delivered_and_one_byte_over_is_refused(connect):
    a, b, bystander = connect(), connect(), connect()
    prefix = f"/send {b.id} ".encode()
    at_cap = prefix + b"m" * (CAP - len(prefix))
    assert len(at_cap) == CAP
    a.send_bytes(at_cap + b"\n")
    assert b.expect(r"^\[msg from").string == f"[msg from {a.id}] " + "m" * (CAP - len(prefix))
    a.send_bytes(at_cap.replace(b"mmmm", b"cccc", 1) + b"\r\n")  # CRLF: the \r is not counted
    assert b.expect(r"^\[msg from").string.endswith("cccc" + "m" * (CAP - len(prefix) - 4))

    a.send_bytes(at_cap + b"X\n")
    assert f"line too long ({CAP + 1} bytes, limit {CAP})" in a.expect(ERROR).string
    a.send_bytes(at_cap + b"X\r\n")
    assert "line too long" in a.expect(ERROR).string
    # The cap counts bytes, not characters: 2-byte characters, one byte over.
    two_byte = prefix + "é".encode() * ((CAP - len(prefix)) // 2)
    two_byte += b"z" * (CAP - len(two_byte))
    a.send_bytes(two_byte + b"\n")
    b.expect(r"^\[msg from .*é+z*$")
    a.send_bytes(two_byte + "é".encode() + b"\n")
    assert "line too long" in a.expect(ERROR).string

    chat_still_works(a, b, "after the cap")
    assert sum(1 for line in b.seen if line.startswith("[msg from")) == 4
    bystander.quiet(r"msg from|mmmm")
    record("line cap", sent=7, delivered=4, refused=3, bystander_lines=0)


def test_a_multi_megabyte_line_without_newline_is_reported_once_in_bounded_memory(server, connect):
    a, b, c = connect(), connect(), connect()
    worker = worker_of(server, a.sock)
    peak_before = peak_rss_kib(worker)
    chunk = b"/broadcast " + b"x" * (1024 * 1024 - 11)
    for n in range(16):  # 16 MiB, no newline
        a.send_bytes(chunk if n == 0 else b"x" * len(chunk))
        if n == 8:
            chat_still_works(b, c, "meanwhile")  # others are served while it streams in
    a.expect(r"line too long \(over 65536 bytes without a newline\)")
    a.send_bytes(b"yyy\n/active\n")
    a.expect(r"^\[active\] 3 online")
    assert sum("line too long" in line for line in a.seen) == 1, a.recent()
    growth = peak_rss_kib(worker) - peak_before
    assert growth < 8 * 1024, f"worker peak memory grew by {growth} KiB for a 16 MiB line"
    b.quiet(r"xxxx|yyy")
    c.quiet(r"xxxx|yyy")
    chat_still_works(a, c, "after the flood")
    record("16 MiB line without newline", bytes=16 << 20, errors=1, worker_peak_growth_kib=growth)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\x80continuation",
        b"caf\xc3",  # truncated at the end of the line
        b"\xf4\x90\x80\x80",  # past U+10FFFF
    ],
    ids=["ff", "overlong", "surrogate", "lone-continuation", "truncated", "too-high"],
)
def test_invalid_utf8_is_refused_and_the_session_goes_on(bad, connect):
    a, b = connect(), connect()
    a.send_bytes(f"/send {b.id} ".encode() + bad + b"\n")
    assert "not valid UTF-8" in a.expect(ERROR).string
    a.send_bytes(bad + b"\n")  # even as the command word
    assert "not valid UTF-8" in a.expect(ERROR).string
    chat_still_works(a, b, "valid again")
    assert not any(line.startswith("[msg") for line in b.seen[:-1])
    record("invalid UTF-8", variant=bad.hex(), sent=2, errors=2, delivered=0)


def test_utf8_split_across_sends_is_reassembled(connect):
    a, b = connect(), connect()
    data = f"/send {b.id} snow ☃ and € ok\n".encode()
    cut = data.index("☃".encode()) + 1
    a.send_bytes(data[:cut])
    a.send_bytes(data[cut:])
    assert b.expect(r"^\[msg from").string == f"[msg from {a.id}] snow ☃ and € ok"


# -- control characters are refused where the line is read ---------------------------------

EVIL = [
    "\x1b[2J\x1b[H",  # clear the screen
    "\x1b]0;owned\x07",  # retitle the window
    "\x1b[31mred\x1b[0m",
    "\x9b2J",  # 8-bit CSI
    "nul\x00byte",
    "cr\r[msg from 11111] forged",  # overwrite the line on a terminal
    "bs\x08\x08\x08",
    "\x7fdel",
    "\u202egnp.exe",  # right-to-left override
    "line\u2028separator",
]


def test_nul_and_escape_sequences_are_refused_to_their_sender_and_never_reach_the_real_client(
    connect, line_client
):
    a = connect()
    rx = line_client()
    a.expect(rf"client {rx.id} joined")
    a.send(f"/makegroup {rx.id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    rx.expect(rf"added you to group {gid}")
    for n, evil in enumerate(EVIL):
        for how in (f"/send {rx.id}", "/broadcast", f"/sendgroup {gid}"):
            a.send_bytes(f"{how} m{n} {evil} end{n}\n".encode())
            error = a.expect(r"^\[error\]").string
            assert error.startswith("[error] the line holds the ") and error.endswith("; discarded"), error
    a.send(f"/send {rx.id} clean")
    rx.expect(rf"^\[msg from {a.id}\] clean$")
    assert not [line for line in rx.seen if re.search(r" m\d+ ", line)]
    record("NUL and escape sequences", sent=len(EVIL) * 3, refused=len(EVIL) * 3, delivered=0)


# -- every command with bad arguments ----------------------------------------------------

HUGE = "9" * 5000
SHA = "ab" * 32

BAD_ARGUMENTS: dict[str, list[tuple[str, str]]] = {
    "/send": [
        ("/send", "an id and a message are missing"),
        ("/send {other}", "message is missing"),
        ("/send abc hi", "'abc' is not a client id"),
        ("/send -12345 hi", "'-12345' is not a client id"),
        ("/send 1e5 hi", "not a client id"),
        ("/send 00042 hi", "not a client id"),
        (f"/send {HUGE} hi", "not a client id"),
        ("/send ٣٣٣٣٣ hi", "not a client id"),
        ("/send {me} hi", "your own id"),
        ("/send {nobody} hi", "is offline"),
    ],
    "/broadcast": [("/broadcast", "message is missing"), ("/broadcast    ", "message is missing")],
    "/makegroup": [
        ("/makegroup", "at least one client id"),
        ("/makegroup abc", "'abc' is not a client id"),
        ("/makegroup {other} -1", "'-1' is not a client id"),
        (f"/makegroup {HUGE}", "not a client id"),
        ("/makegroup {five}", "at most 5 members"),
        ("/makegroup {me}", "none of the ids is another online client"),
        ("/makegroup {nobody}", "none of the ids is another online client"),
    ],
    "/makegroupreq": [
        ("/makegroupreq", "at least one client id"),
        ("/makegroupreq x1", "not a client id"),
        ("/makegroupreq -99999", "not a client id"),
        (f"/makegroupreq {HUGE}", "not a client id"),
        ("/makegroupreq {five}", "at most 5 members"),
    ],
    "/joingroup": [
        ("/joingroup", "takes one group id"),
        ("/joingroup {nobody} {nobody}", "takes one group id"),
        ("/joingroup abc", "not a group id"),
        ("/joingroup -1", "not a group id"),
        (f"/joingroup {HUGE}", "not a group id"),
        ("/joingroup {nobody}", "does not exist"),
        ("/joingroup {other}", "does not exist"),  # a client id is not a group
    ],
    "/declinegroup": [
        ("/declinegroup", "takes one group id"),
        ("/declinegroup 1 2", "takes one group id"),
        ("/declinegroup zz", "not a group id"),
        ("/declinegroup -42", "not a group id"),
        (f"/declinegroup {HUGE}", "not a group id"),
        ("/declinegroup {nobody}", "does not exist"),
    ],
    "/approve": [
        ("/approve", "takes a group id and a client id"),
        ("/approve {nobody}", "takes a group id and a client id"),
        ("/approve {nobody} {other} {other}", "takes a group id and a client id"),
        ("/approve x {other}", "'x' is not a group id"),
        ("/approve {nobody} -1", "'-1' is not a client id"),
        (f"/approve {{nobody}} {HUGE}", "not a client id"),
        ("/approve {nobody} {other}", "does not exist"),
    ],
    "/deny": [
        ("/deny", "takes a group id and a client id"),
        ("/deny 12345 12345 12345", "takes a group id and a client id"),
        ("/deny abc def", "not a group id"),
        ("/deny -1 -1", "not a group id"),
        (f"/deny {HUGE} {HUGE}", "not a group id"),
        ("/deny {nobody} {other}", "does not exist"),
    ],
    "/sendgroup": [
        ("/sendgroup", "an id and a message are missing"),
        ("/sendgroup {nobody}", "message is missing"),
        ("/sendgroup abc hi", "not a group id"),
        ("/sendgroup -1 hi", "not a group id"),
        (f"/sendgroup {HUGE} hi", "not a group id"),
        ("/sendgroup {nobody} hi", "does not exist"),
        ("/sendgroup {other} hi", "does not exist"),
    ],
    "/activegroups": [("/activegroups x", "takes no arguments"), ("/activegroups -1", "takes no arguments")],
    "/activeallgroups": [
        ("/activeallgroups 1", "takes no arguments"),
        (f"/activeallgroups {HUGE}", "no arg"),
    ],
    "/active": [("/active please", "takes no arguments"), ("/active -1", "takes no arguments")],
    "/help": [("/help nosuch", "unknown command 'nosuch'"), (f"/help {HUGE}", "unknown command")],
    "/quit": [("/quit now", "/quit takes no arguments"), ("/quit -1", "takes no arguments")],
    "EXIT": [("EXIT now", "EXIT takes no arguments"), (f"exit {HUGE}", "takes no arguments")],
    "/sendfile": [
        ("/sendfile", "use the shmchat client"),
        ("/sendfile {other}", "use the shmchat client"),
        ("/sendfile {other} /etc/passwd", "use the shmchat client"),
        (f"/sendfile {{other}} -5 {SHA} f", "use the shmchat client"),
        (f"/sendfile {{other}} ² {SHA} f", "use the shmchat client"),
        (f"/sendfile {{other}} 5 {SHA.upper()} f", "use the shmchat client"),
        (f"/sendfile abc 5 {SHA} f", "not a client or group id"),
        (f"/sendfile {{other}} 5 {SHA}  ", "file name is missing"),
        (f"/sendfile {{other}} {HUGE} {SHA} f", "over any limit"),
        (f"/sendfile {{other}} {'9' * 20} {SHA} f", "over the server's limit"),
        (f"/sendfile {{me}} 5 {SHA} f", "your own id"),
        (f"/sendfile {{nobody}} 5 {SHA} f", "neither an online client nor a group"),
    ],
}


@pytest.mark.parametrize("command", list(BAD_ARGUMENTS))
def test_every_command_with_bad_arguments_gets_one_clear_error_and_the_session_goes_on(command, connect):
    a, other = connect(), connect()
    nobody = unused_ids(a.id, other.id)
    values = {
        "me": a.id,
        "other": other.id,
        "nobody": nobody[0],
        "five": " ".join(map(str, nobody)),
    }
    for template, expected in BAD_ARGUMENTS[command]:
        line = template.format(**values)
        a.send(line)
        answer = a.expect(ERROR).string
        assert expected in answer, f"{line[:60]!r} answered {answer[:200]!r}"
        assert len(answer) < 400, "the error echoes a huge argument back"
    a.send("/active")
    a.expect(r"^\[active\] 2 online")
    errors = [line for line in a.seen if re.match(ERROR, line)]
    assert len(errors) == len(BAD_ARGUMENTS[command])
    other.quiet(r".", wait=0.3)  # nothing reached anyone else
    record("bad arguments", command=command, sent=len(errors), errors=len(errors), reached_others=0)


def test_commands_typed_in_another_case_work(connect):
    a, b, c = connect(), connect(), connect()
    a.send("/ACTIVE")
    a.expect(r"^\[active\] 3 online")
    a.send(f"/Send {b.id} MiXeD Case Kept")
    b.expect(rf"^\[msg from {a.id}\] MiXeD Case Kept$")
    a.send("/BroadCast To All")
    for other in (b, c):
        other.expect(rf"^\[broadcast from {a.id}\] To All$")
    a.send(f"/MAKEGROUP {b.id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    a.send(f"/SendGroup {gid} In The Group")
    b.expect(rf"^\[group {gid} from {a.id}\] In The Group$")
    b.send("/ActiveGroups")
    b.expect(r"^\[groups\] 1 group\(s\) you belong to")
    c.send("/ACTIVEALLGROUPS")
    c.expect(r"^\[groups\] 1 group\(s\) on the server")
    a.send(f"/MakeGroupReq {c.id}")
    invited = int(a.expect(r"^\[ok\] group (\d{5}) created; invited").group(1))
    c.expect(rf"invites you to group {invited}")
    c.send(f"/JOINGROUP {invited}")
    c.expect(rf"^\[ok\] you joined group {invited}")
    a.send("/HELP SEND")
    a.expect(r"^\[help\] /send <client id> <message>")
    c.send("eXiT")
    c.expect(r"^\[bye\]")
    a.expect(rf"client {c.id} left")


# -- the file protocol abused over a raw socket ----------------------------------------------


def announce(client, target: int, size: int, digest: str, name: str) -> str:
    client.send(f"/sendfile {target} {size} {digest} {name}")
    return client.expect(rf"^\[upload (\S+) ready\] {size} ").group(1)


def no_file_arrived(rx, bystander) -> None:
    rx.quiet(r"^\[saved\]|^\[file", wait=0.3)
    assert not any(p.is_file() for p in rx.download_dir.glob("*")) if rx.download_dir.exists() else True
    bystander.quiet(r"injected|^\[file")


def test_data_beyond_the_announced_size_fails_the_upload_and_the_stream_stays_in_step(
    server, connect, line_client
):
    a, bystander = connect(), connect()
    rx = line_client()
    body = b"0123456789"
    transfer = announce(a, rx.id, len(body), sha(body), "liar.txt")
    extra = b"0123456789\n/broadcast injected\n" + b"z" * 100
    a.send_bytes(f"/data {transfer} {len(extra)}\n".encode() + extra)
    line = a.expect(rf"^\[error\] file {transfer} 'liar.txt' upload failed").string
    assert "more bytes than the 10 announced" in line and "nothing was sent" in line
    a.send_bytes(f"/data {transfer} 4\n".encode() + b"more")  # the upload is over: skipped, in step
    assert "no upload" in a.expect(ERROR).string
    # Split over two frames, the second too long.
    transfer = announce(a, rx.id, len(body), sha(body), "liar2.txt")
    a.send_bytes(f"/data {transfer} 6\n012345/data {transfer} 6\n6789AB".encode())
    assert "more bytes than the 10 announced" in a.expect(rf"^\[error\] file {transfer}").string
    chat_still_works(a, rx, "in step")
    no_file_arrived(rx, bystander)
    wait_until(lambda: spool_files(spool_of(server)) == [], what="an empty spool")
    record("data beyond the announced size", uploads=2, failed=2, delivered=0, spool_after=0)


@pytest.mark.parametrize("where", ["between frames", "inside a frame"])
def test_a_truncated_upload_then_disconnect_leaves_nothing_behind(where, server, connect, line_client):
    a, bystander = connect(), connect()
    rx = line_client()
    body = bytes(range(256)) * 400
    transfer = announce(a, rx.id, len(body), sha(body), "half.bin")
    half = body[: len(body) // 2]
    a.send_bytes(f"/data {transfer} {len(half)}\n".encode() + half)
    if where == "inside a frame":
        a.send_bytes(f"/data {transfer} {len(half)}\n".encode() + half[:1000])
    wait_until(lambda: spool_files(spool_of(server)), what="the partial upload in the spool")
    a.close()
    rx.expect(rf"client {a.id} disconnected \(connection lost\)")
    bystander.expect(rf"client {a.id} disconnected")
    wait_until(lambda: spool_files(spool_of(server)) == [], what="the partial upload removed")
    no_file_arrived(rx, bystander)
    chat_still_works(bystander, rx, "unharmed")
    record("truncated upload then disconnect", where=where, delivered=0, spool_after=0)


def test_a_checksum_mismatch_sends_nothing_and_a_good_upload_then_works(server, connect, line_client):
    a, bystander = connect(), connect()
    rx = line_client()
    good, evil = b"the real content\n", b"the evil content\n"
    transfer = announce(a, rx.id, len(evil), sha(good), "swap.txt")
    a.send_bytes(f"/data {transfer} {len(evil)}\n".encode() + evil)
    line = a.expect(rf"^\[error\] file {transfer}").string
    assert "checksum mismatch" in line and "nothing was sent" in line
    no_file_arrived(rx, bystander)
    transfer = announce(a, rx.id, len(good), sha(good), "swap.txt")
    a.send_bytes(f"/data {transfer} {len(good)}\n".encode() + good)
    a.expect(rf"^\[ok\] file {transfer} 'swap.txt' delivered to {rx.id}")
    saved = rx.expect(r"^\[saved\] file 'swap.txt'").string
    path = saved.split(" saved to ", 1)[1].rsplit(" (", 1)[0]
    assert Path(path).read_bytes() == good
    assert [p.name for p in rx.download_dir.iterdir()] == ["swap.txt"]
    wait_until(lambda: spool_files(spool_of(server)) == [], what="an empty spool")
    record("checksum mismatch", uploads=2, refused=1, delivered=1, spool_after=0)


@pytest.mark.parametrize(
    "header",
    ["/data {me}-1 2000000", "/data nonsense", "/DATA {me}-1 -5"],
    ids=["over-the-frame-limit", "malformed", "negative"],
)
def test_a_data_header_that_cannot_be_followed_closes_the_connection_with_a_reason(header, connect):
    a, b = connect(), connect()
    junk = b"\xff\x00" * 1000 + b"\n/broadcast injected\n" + b"\x00" * 1000
    try:
        a.send_bytes(header.format(me=a.id).encode() + b"\n" + junk)
    except OSError:
        pass  # the server may close before it has read everything
    reason = a.expect(r"^\[bye\]").string
    assert "/data" in reason and "closing the connection" in reason
    assert a.closed()
    b.expect(rf"client {a.id} was disconnected \(protocol error\)")
    b.quiet(r"injected")
    c = connect()
    chat_still_works(b, c, "still serving")
    record("unfollowable /data header", header=header, closed_with_reason=1, injected_lines_run=0)


def test_an_upload_over_the_size_limit_is_refused_and_its_frames_skipped(start_server, connect):
    server = start_server("--max-file-size", "1000")
    a, b = connect(target=server), connect(target=server)
    big = b"B" * 1001
    a.send(f"/sendfile {b.id} {len(big)} {sha(big)} big.bin")
    assert "over the server's limit of 1000 bytes" in a.expect(r"^\[upload refused\]").string
    a.send_bytes(f"/data {a.id}-1 {len(big)}\n".encode() + big)  # sent anyway, as a rogue client might
    assert "no upload" in a.expect(ERROR).string
    ok = b"k" * 1000
    transfer = announce(a, b.id, len(ok), sha(ok), "ok.bin")
    a.send_bytes(f"/data {transfer} 1000\n".encode() + ok)
    b.expect(rf"^\[file {transfer} from {a.id}\] 1000 ")
    a.expect(rf"^\[ok\] file {transfer} 'ok.bin' delivered to {b.id}")
    assert not any("big.bin" in line for line in b.seen)
