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
    first, second = drain(framer)
    assert first == Line("nc sends this")
    assert isinstance(second, BadLine) and "U+000D at character 4" in second.reason  # the \r left inside


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


# -- data frames read partly off the socket (start_frame / read_size / raw_arrived) ----


def test_a_frame_entirely_buffered_comes_out_as_data_then_its_end():
    framer = LineFramer()
    framer.feed(b"[data 1-1] 3\nabcnext\n")
    assert framer.next_event() == Line("[data 1-1] 3")
    framer.start_frame(3)
    assert framer.direct_left == 0
    assert drain(framer) == [Data(b"abc"), DataEnd(), Line("next")]
    assert framer.read_size(1000) == 1000  # nothing was read off the socket: a normal read


def test_the_rest_of_a_frame_is_left_to_the_socket_byte_by_byte():
    framer = LineFramer()
    framer.feed(b"[data 1-1] 5\nab")
    assert framer.next_event() == Line("[data 1-1] 5")
    framer.start_frame(5)
    assert framer.direct_left == 3
    assert framer.next_event() == Data(b"ab")  # the buffered part goes through the framer
    assert framer.next_event() is NEED_DATA  # the frame is not over: the rest is in the socket
    for left in (3, 2, 1):
        assert framer.read_size(1000) == left  # never read past the frame's end
        framer.raw_arrived(1)  # the caller read one byte straight into its file
        assert framer.direct_left == left - 1
        if left > 1:
            assert framer.next_event() is NEED_DATA
    assert framer.next_event() == DataEnd()
    assert framer.read_size(1000) == 64  # right after: a header line's worth
    framer.feed(b"next\n")
    assert framer.read_size(1000) == 1000
    assert drain(framer) == [Line("next")]


def test_a_frame_with_nothing_buffered_is_read_off_the_socket_in_reads_of_any_size():
    framer = LineFramer()
    framer.feed(b"[data 1-1] 10\n")
    assert framer.next_event() == Line("[data 1-1] 10")
    framer.start_frame(10)
    assert framer.next_event() is NEED_DATA  # no DataEnd before the frame's end
    assert framer.read_size(4) == 4  # the caller's buffer limits the read too
    framer.raw_arrived(4)
    assert framer.read_size(100) == 6
    framer.raw_arrived(6)
    assert drain(framer) == [DataEnd()]
    assert framer.read_size(32) == 32  # the header read is capped by the limit as well


def test_a_zero_byte_frame_ends_at_once():
    framer = LineFramer()
    framer.feed(b"[data 1-1] 0\nafter\n")
    assert framer.next_event() == Line("[data 1-1] 0")
    framer.start_frame(0)
    assert drain(framer) == [DataEnd(), Line("after")]


def test_frame_misuse_is_a_programming_error():
    framer = LineFramer()
    with pytest.raises(ValueError):
        framer.start_frame(-1)
    with pytest.raises(ValueError):
        framer.raw_arrived(1)  # no frame is waiting for socket bytes
    framer.start_frame(4)
    with pytest.raises(ValueError):
        framer.start_frame(4)  # one frame at a time
    with pytest.raises(ValueError):
        framer.feed(b"x")  # the frame's bytes are reported with raw_arrived, not fed
    with pytest.raises(ValueError):
        framer.raw_arrived(5)  # more than the frame holds
    framer.raw_arrived(4)
    assert framer.next_event() == DataEnd()
