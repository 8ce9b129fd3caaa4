"""protocol.framing, byte by byte: no sockets, no processes."""

from __future__ import annotations

import pytest

from protocol.framing import (
    MAX_LINE_BYTES,
    NEED_DATA,
    BadLine,
    Data,
    DataEnd,
    Line,
    LineFramer,
    encode_line,
)


def drain(framer: LineFramer) -> list:
    events = []
    while (event := framer.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_a_line_arrives_only_when_its_newline_does():
    framer = LineFramer()
    for byte in b"/active":
        framer.feed(bytes([byte]))
        assert framer.next_event() is NEED_DATA
    framer.feed(b"\n")
    assert framer.next_event() == Line("/active")
    assert framer.next_event() is NEED_DATA


def test_several_lines_in_one_read_come_out_in_order():
    framer = LineFramer()
    framer.feed(b"one\ntwo\nthree\npartial")
    assert drain(framer) == [Line("one"), Line("two"), Line("three")]
    framer.feed(b"\n")
    assert drain(framer) == [Line("partial")]


def test_crlf_is_accepted_and_stripped_once():
    framer = LineFramer()
    framer.feed(b"nc sends this\r\nand\r\r\n")
    assert drain(framer) == [Line("nc sends this"), Line("and\r")]


def test_empty_lines_are_lines():
    framer = LineFramer()
    framer.feed(b"\n\n")
    assert drain(framer) == [Line(""), Line("")]


def test_utf8_split_across_reads_is_reassembled():
    framer = LineFramer()
    data = "héllo wörld ✓\n".encode()
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
    assert drain(framer) == [Line("héllo wörld ✓")]


def test_invalid_utf8_is_reported_not_raised_and_the_next_line_is_fine():
    framer = LineFramer()
    framer.feed(b"caf\xe9\nok\n")
    events = drain(framer)
    assert isinstance(events[0], BadLine) and "UTF-8" in events[0].reason
    assert events[1] == Line("ok")


def test_a_line_exactly_at_the_cap_is_accepted():
    framer = LineFramer()
    framer.feed(b"x" * MAX_LINE_BYTES + b"\n")
    assert drain(framer) == [Line("x" * MAX_LINE_BYTES)]


def test_one_byte_over_the_cap_is_refused_once_and_skipped():
    framer = LineFramer()
    framer.feed(b"x" * (MAX_LINE_BYTES + 1) + b"\nnext\n")
    events = drain(framer)
    assert len(events) == 2
    assert isinstance(events[0], BadLine) and "too long" in events[0].reason
    assert events[1] == Line("next")


def test_an_endless_line_uses_bounded_memory_and_is_reported_once():
    framer = LineFramer(max_line=1000)
    reports = []
    for _ in range(500):  # 500 KB without a newline
        framer.feed(b"y" * 1000)
        reports += drain(framer)
        assert framer.buffered <= 2002
    assert len(reports) == 1 and isinstance(reports[0], BadLine)
    framer.feed(b"tail of the long line\nafter\n")
    assert drain(framer) == [Line("after")]


def test_raw_mode_takes_exactly_the_announced_bytes_even_with_newlines():
    framer = LineFramer()
    framer.feed(b"/data 12345-1 5\nab\ncdline after\n")
    assert framer.next_event() == Line("/data 12345-1 5")
    framer.expect_raw(5)
    events = drain(framer)
    assert events == [Data(b"ab\ncd"), DataEnd(), Line("line after")]


def test_raw_mode_across_reads_and_zero_length_runs():
    framer = LineFramer()
    framer.expect_raw(0)
    assert framer.next_event() == DataEnd()
    framer.expect_raw(4)
    framer.feed(b"ab")
    assert framer.next_event() == Data(b"ab")
    assert framer.next_event() is NEED_DATA
    framer.feed(b"cdnext\n")
    assert drain(framer) == [Data(b"cd"), DataEnd(), Line("next")]


def test_raw_bytes_are_never_checked_for_utf8_or_length():
    framer = LineFramer(max_line=10)
    blob = bytes(range(256)) * 10
    framer.feed(blob)
    framer.expect_raw(len(blob))
    events = drain(framer)
    assert b"".join(e.chunk for e in events if isinstance(e, Data)) == blob
    assert events[-1] == DataEnd()


def test_negative_raw_size_is_a_programming_error():
    with pytest.raises(ValueError):
        LineFramer().expect_raw(-1)


def test_encode_line_appends_newline_and_refuses_embedded_ones():
    assert encode_line("hé") == "hé\n".encode()
    with pytest.raises(ValueError):
        encode_line("two\nlines")
