"""Property tests (Hypothesis) for the pure protocol module.

Random byte streams, cut at random points and fed to ``LineFramer`` in those
pieces, must give exactly the events a simple model predicts: every whole line
reassembled byte for byte, every over-long line reported once, invalid UTF-8
reported and never raised, raw runs handed out exactly.  The command parser,
given arbitrary text, must never raise anything but ``CommandError``.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol import commands
from protocol.commands import CommandError
from protocol.controls import find_refused
from protocol.framing import (
    MAX_LINE_BYTES,
    NEED_DATA,
    BadLine,
    Data,
    DataEnd,
    Line,
    LineFramer,
)

SMALL_CAP = 16  # a small cap makes the boundaries easy for Hypothesis to hit
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expected_event(raw: bytes, cap: int) -> Line | str:
    """What one ``\\n``-terminated line (terminator removed) must turn into."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if len(raw) > cap:
        return "too long"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "UTF-8"
    return "control" if find_refused(text) else Line(text)


def normalise(events: list) -> list:
    """BadLine events compared by their documented kind, not their wording."""
    out = []
    for event in events:
        if isinstance(event, BadLine):
            kinds = [kind for kind in ("too long", "UTF-8", "control") if kind in event.reason]
            assert len(kinds) == 1, event.reason
            out.append(kinds[0])
        else:
            out.append(event)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def feed_and_drain(framer: LineFramer, pieces: list[bytes]) -> list:
    events = []
    for piece in pieces:
        framer.feed(piece)
        while (event := framer.next_event()) is not NEED_DATA:
            assert isinstance(event, Line | BadLine), event
            events.append(event)
    return events


# Line contents: mostly short, sometimes around the cap, with bytes that matter
# (\r, NUL, ESC, UTF-8 lead and continuation bytes); never a newline.
line_bytes = st.one_of(
    st.binary(max_size=8),
    st.binary(min_size=SMALL_CAP - 2, max_size=SMALL_CAP + 3),
    st.text(max_size=6).map(lambda t: t.encode("utf-8")),
    st.lists(st.sampled_from([b"a", b"\r", b"\0", b"\x1b", b"\xc3", b"\xa9", b"\xe2\x82\xac", b"\xff"])).map(
        b"".join
    ),
).map(lambda b: b.replace(b"\n", b""))


@SETTINGS
@given(
    lines=st.lists(line_bytes, max_size=12),
    crlf=st.lists(st.booleans(), max_size=12),
    tail=line_bytes,
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
@example(lines=[b"x" * SMALL_CAP, b"x" * (SMALL_CAP + 1)], crlf=[True, False], tail=b"", cuts=[])
@example(lines=[b"x" * (SMALL_CAP + 1) + b"\r"], crlf=[False], tail=b"", cuts=[SMALL_CAP + 1])
def test_any_split_of_any_stream_gives_the_lines_the_model_predicts(lines, crlf, tail, cuts):
    stream = b"".join(
        line + (b"\r\n" if i < len(crlf) and crlf[i] else b"\n") for i, line in enumerate(lines)
    )
    framer = LineFramer(max_line=SMALL_CAP)
    events = normalise(feed_and_drain(framer, split_at(stream + tail, cuts)))
    terminated = [line + (b"\r" if i < len(crlf) and crlf[i] else b"") for i, line in enumerate(lines)]
    expected = [expected_event(raw, SMALL_CAP) for raw in terminated]
    if len(tail) > SMALL_CAP + 1:  # an unfinished line already known to be too long
        expected.append("too long")
    assert events == expected
    # Memory stays bounded by the cap whatever was fed.
    assert framer.buffered <= SMALL_CAP + 1


@SETTINGS
@given(
    chunks=st.lists(st.binary(max_size=300), max_size=30),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_arbitrary_bytes_never_raise_and_whole_lines_reassemble_exactly(chunks, cuts):
    stream = b"".join(chunks)
    framer = LineFramer(max_line=SMALL_CAP)
    events = feed_and_drain(framer, split_at(stream, cuts))
    *complete, _unfinished = stream.split(b"\n")
    model = [expected_event(raw, SMALL_CAP) for raw in complete]
    got = normalise(events)
    if len(_unfinished) > SMALL_CAP + 1:
        model.append("too long")
    assert got == model
    # Every accepted line is a piece of the stream between two newlines.
    for event in events:
        if isinstance(event, Line):
            assert "\n" not in event.text


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3 * MAX_LINE_BYTES), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_at_the_default_cap_only_over_long_lines_are_refused(sizes, cuts):
    stream = b"".join(b"y" * size + b"\n" for size in sizes)
    framer = LineFramer()
    events = normalise(feed_and_drain(framer, split_at(stream, cuts)))
    assert events == [Line("y" * s) if s <= MAX_LINE_BYTES else "too long" for s in sizes]


# -- raw runs (file bodies) -----------------------------------------------------------

segment = st.one_of(
    st.tuples(st.just("line"), line_bytes.filter(lambda b: len(b) <= SMALL_CAP and not b.endswith(b"\r"))),
    st.tuples(st.just("raw"), st.binary(max_size=40)),
)


@SETTINGS
@given(segments=st.lists(segment, max_size=10), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_raw_runs_after_a_header_line_come_out_byte_exact(segments, cuts):
    """The documented use: a header line announces n raw bytes; expect_raw(n) right after it."""
    stream = b""
    expected: list = []
    for kind, body in segments:
        if kind == "line":
            stream += body.replace(b"RAW", b"raw") + b"\n"
            expected.append(expected_event(body.replace(b"RAW", b"raw"), SMALL_CAP))
        else:
            stream += f"RAW {len(body)}\n".encode() + body
            expected += [Line(f"RAW {len(body)}"), ("raw", body)]
    framer = LineFramer(max_line=SMALL_CAP)
    got: list = []
    raw = None
    for piece in split_at(stream, cuts):
        framer.feed(piece)
        while (event := framer.next_event()) is not NEED_DATA:
            if isinstance(event, Line) and event.text.startswith("RAW "):
                got.append(event)
                framer.expect_raw(int(event.text.split()[1]))
                raw = b""
            elif isinstance(event, Data):
                assert raw is not None and framer.in_raw_mode
                raw += event.chunk
            elif isinstance(event, DataEnd):
                got.append(("raw", raw))
                raw = None
            else:
                got.append(event)
    # A zero-length run ends as soon as the caller asks again (no bytes needed).
    if raw is not None and framer.next_event() == DataEnd():
        got.append(("raw", raw))
    assert normalise(got) == expected


@SETTINGS
@given(
    before=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
    raw_size=st.integers(min_value=0, max_value=10),
    after=st.binary(max_size=30),
    cut=st.integers(min_value=0),
)
@example(before=b"abc", raw_size=2, after=b"\nd\n", cut=0)
def test_raw_mode_entered_mid_line_does_not_hide_a_later_newline(before, raw_size, after, cut):
    """expect_raw after NEED_DATA (part of a line buffered): the next newline still ends a line."""
    framer = LineFramer(max_line=1000)
    framer.feed(before)
    assert framer.next_event() is NEED_DATA
    framer.expect_raw(min(raw_size, len(before)))
    taken = b""
    while (event := framer.next_event()) is not NEED_DATA:
        if isinstance(event, DataEnd):
            break
        assert isinstance(event, Data)
        taken += event.chunk
    rest = before[len(taken) :] + after
    events = feed_and_drain(framer, split_at(after, [cut]))
    *complete, _ = rest.split(b"\n")
    assert normalise(events) == [expected_event(raw, 1000) for raw in complete]


@SETTINGS
@given(ops=st.lists(st.one_of(st.binary(max_size=50), st.integers(min_value=-3, max_value=60)), max_size=40))
def test_any_sequence_of_calls_raises_only_the_documented_errors(ops):
    """feed / next_event / expect_raw in any order: ValueError for a negative size only."""
    framer = LineFramer(max_line=SMALL_CAP)
    for op in ops:
        if isinstance(op, bytes):
            framer.feed(op)
        elif op < 0:
            try:
                framer.expect_raw(op)
            except ValueError:
                pass
            else:
                raise AssertionError("a negative raw size must be refused")
        else:
            framer.expect_raw(op)
        for _ in range(3):
            event = framer.next_event()
            assert event is NEED_DATA or isinstance(event, Line | BadLine | Data | DataEnd)
            if isinstance(event, Line):
                assert "\n" not in event.text


# -- the command parser -------------------------------------------------------------------

command_words = st.sampled_from(
    [spec.name for spec in commands.COMMANDS]
    + ["/data", "/DATA", "/SendFile", "/SEND", "exit", "/Quit", "/", "//send", "/sendx"]
)
tokens = st.one_of(
    st.text(max_size=8),
    st.from_regex(r"[0-9]{5}", fullmatch=True),
    st.from_regex(r"[0-9]{5}-[0-9]{1,3}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    st.integers().map(str),
    st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6),
    st.sampled_from(
        ["-1", "0", "00000", "99999", "100000", "1e5", "0x10", "²", "٣٣٣٣٣", "9" * 40, "9" * 5000]
    ),
)
separators = st.sampled_from([" ", "  ", "\t", " \t", "\x0b", "\xa0", "\u3000", "\r"])
structured = st.builds(
    lambda word, sep, toks: word + sep + sep.join(toks),
    command_words,
    separators,
    st.lists(tokens, max_size=5),
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(structured, st.text(), st.binary().map(lambda b: b.decode("utf-8", "replace"))))
@example("/data 12345-1 ²")
@example("/sendfile 12345 ² " + "a" * 64 + " name")
@example("/data 12345-1 ٣")
@example("/data 12345-1 " + "9" * 5000)  # int() refuses more than 4300 digits
@example("/sendfile 12345 " + "9" * 5000 + " " + "a" * 64 + " name")
def test_the_parser_raises_nothing_but_command_error(line):
    try:
        request = commands.parse(line)
    except CommandError as exc:
        assert str(exc), "an error must say what is wrong"
        return
    # What parses is well-formed: ids in range, sizes plain non-negative numbers.
    for name in ("target", "group_id", "client_id"):
        value = getattr(request, name, None)
        if value is not None:
            assert commands.ID_MIN <= value <= commands.ID_MAX
    if isinstance(request, commands.MakeGroup):
        assert all(commands.ID_MIN <= m <= commands.ID_MAX for m in request.members)
    if isinstance(request, commands.SendFile | commands.DataFrame):
        assert request.size >= 0
    if isinstance(request, commands.DataFrame):
        assert request.size <= commands.MAX_DATA_FRAME
        assert request.transfer.isascii()


message_text = st.text(st.characters(exclude_characters="\r\n"), min_size=1).filter(lambda t: t.strip())


@settings(max_examples=300, deadline=None)
@given(target=st.integers(commands.ID_MIN, commands.ID_MAX), text=message_text)
def test_a_message_comes_out_of_the_parser_exactly_as_typed(target, text):
    assert commands.parse(f"/send {target} {text}") == commands.Send(target, text)
    assert commands.parse(f"/sendgroup {target} {text}") == commands.SendGroup(target, text)
    assert commands.parse(f"/broadcast {text}") == commands.Broadcast(text)


@settings(max_examples=300, deadline=None)
@given(
    target=st.integers(commands.ID_MIN, commands.ID_MAX),
    size=st.integers(0, 10**12),
    body=st.binary(max_size=4),
    name=st.text(min_size=1).filter(lambda n: n.replace("\r", " ").replace("\n", " ").strip()),
)
def test_a_sendfile_header_round_trips_through_the_wire_form(target, size, body, name):
    digest = hashlib.sha256(body).hexdigest()
    parsed = commands.parse(commands.format_sendfile(target, size, digest, name))
    assert parsed == commands.SendFile(target, size, digest, name.replace("\r", " ").replace("\n", " "))
