"""Line framing with a length cap, and raw byte runs for file bodies.

No sockets here (the h11 idea): bytes go in with ``feed``, events come out of
``next_event``, one at a time.  Pulling one event at a time is what lets the
caller switch to raw mode right after a file header line: the bytes behind
the header are still in the buffer, untouched, when it calls ``start_frame``
(or ``expect_raw``, for a raw run of known length).

Data frames (``[data ...] n`` / ``/data ... n``) have three verbs of their own,
used by both ends: ``start_frame(n)`` when the header line has been read
(what is already buffered comes out as ``Data`` events), then, while
``direct_left`` is not zero, the caller reads the rest of the frame from the
socket straight into its file, ``read_size`` bytes at a time, and reports each
read with ``raw_arrived``.  A large frame then never passes through the
buffer: no copy into it, and no copy out of it.  Either way ``DataEnd`` is the
one event that says the frame is over.

Denial-of-service thinking:

* Work is O(bytes fed): the search for a newline resumes where the last one
  stopped instead of rescanning the buffer.
* Memory is O(MAX_LINE_BYTES): a line that grows past the cap is reported
  once and then skipped up to its newline without being kept.
* Invalid UTF-8 is an event, never an exception that could end a worker;
  so is a line holding a terminal or format control (``protocol.controls``).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.controls import find_refused

#: Longest line accepted, newline excluded (Redis calls this its inline limit).
MAX_LINE_BYTES = 64 * 1024
#: How much of a raw run is handed out per event.
RAW_CHUNK_BYTES = 256 * 1024
#: The read right after a frame read off the socket: enough for the next frame's
#: header line, so that the next frame's bytes too can skip the buffer.
FRAME_HEADER_READ = 64


@dataclass(slots=True)
class Line:
    """A complete, decoded line without its terminator (``\\n`` or ``\\r\\n``).

    Not frozen, as the requests of ``protocol.commands`` are not: one is built
    for every line, and a frozen dataclass sets its field the long way round.
    """

    text: str


@dataclass(frozen=True)
class BadLine:
    """A line that was discarded; ``reason`` is written for the peer to read."""

    reason: str


@dataclass(frozen=True)
class Data:
    """Part of a raw run announced with ``expect_raw``."""

    chunk: bytes


@dataclass(frozen=True)
class DataEnd:
    """The announced raw run (or data frame) is complete."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` when more bytes must be fed first.
NEED_DATA = _NeedData()

Event = Line | BadLine | Data | DataEnd | _NeedData


class LineFramer:
    """Turns a byte stream into lines, bad-line reports and raw runs."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline
        self._discarding = False  # inside an over-long line, skipping to its end
        self._raw_left: int | None = None  # bytes still due in raw mode, through the buffer
        self._direct_left = 0  # bytes of the current frame the caller reads off the socket
        self._frame_ended_direct = False  # a frame just ended off the socket (see read_size)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._direct_left:
            raise ValueError("the rest of the data frame is read off the socket: use raw_arrived")
        self._buffer += data
        self._frame_ended_direct = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def in_raw_mode(self) -> bool:
        return self._raw_left is not None

    def expect_raw(self, size: int) -> None:
        """Treat the next ``size`` bytes as raw data (a file body), not lines."""
        if size < 0:
            raise ValueError("raw size must not be negative")
        self._raw_left = size
        self._scanned = 0  # raw bytes leave from the front: rescan what stays behind

    # -- data frames -------------------------------------------------------------

    def start_frame(self, size: int) -> None:
        """A data frame of ``size`` raw bytes starts right after the line just read.

        The part of it already buffered comes out of ``next_event`` as ``Data``;
        the rest (``direct_left`` bytes) is for the caller to read off the
        socket and report with ``raw_arrived``.
        """
        if size < 0:
            raise ValueError("frame size must not be negative")
        if self.in_raw_mode:
            raise ValueError("a data frame cannot start inside another raw run")
        buffered = min(size, len(self._buffer))
        self.expect_raw(buffered)
        self._direct_left = size - buffered

    @property
    def direct_left(self) -> int:
        """Bytes of the current frame still in the socket, for the caller to read raw."""
        return self._direct_left

    def read_size(self, limit: int) -> int:
        """How many bytes the caller's next socket read should ask for (at most ``limit``).

        Inside a frame: no further than its end, as those bytes are all file.
        Right after a frame that ended off the socket: a header line's worth,
        most likely the next frame's header, so that its bytes too go straight
        from the socket to the file.
        """
        if self._direct_left:
            return min(self._direct_left, limit)
        if self._frame_ended_direct:
            return min(FRAME_HEADER_READ, limit)
        return limit

    def raw_arrived(self, size: int) -> None:
        """The caller read ``size`` bytes of the current frame off the socket itself.

        When they complete the frame, the next ``next_event`` is ``DataEnd``.
        """
        if not 0 < size <= self._direct_left:
            raise ValueError(f"{size} raw bytes reported, {self._direct_left} expected")
        self._direct_left -= size
        if not self._direct_left:
            self._frame_ended_direct = True

    def next_event(self) -> Event:
        """The next event of the stream, or ``NEED_DATA`` when more bytes must be fed first."""
        if self._raw_left is not None:
            return self._next_raw()
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                if self._discarding:
                    self._buffer.clear()
                    self._scanned = 0
                    return NEED_DATA
                if len(self._buffer) > self.max_line + 1:  # +1: a pending "\r"
                    self._discarding = True
                    self._buffer.clear()
                    self._scanned = 0
                    return BadLine(f"line too long (over {self.max_line} bytes without a newline); discarded")
                self._scanned = len(self._buffer)
                return NEED_DATA
            raw = self._buffer[:newline]  # a copy (bytearray), decoded as it is
            del self._buffer[: newline + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line:
                return BadLine(f"line too long ({len(raw)} bytes, limit {self.max_line}); discarded")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return BadLine(f"line is not valid UTF-8 (byte {exc.start}); discarded")
            refused = find_refused(text)  # terminal and format controls: see protocol.controls
            return Line(text) if refused is None else BadLine(f"{refused}; discarded")

    def _next_raw(self) -> Event:
        assert self._raw_left is not None
        if self._raw_left == 0:
            if self._direct_left:
                return NEED_DATA  # the rest of the frame comes through raw_arrived
            self._raw_left = None
            return DataEnd()
        if not self._buffer:
            return NEED_DATA
        take = min(self._raw_left, len(self._buffer), RAW_CHUNK_BYTES)
        chunk = bytes(self._buffer[:take])
        del self._buffer[:take]
        self._raw_left -= take
        return Data(chunk)


def queue_unsent(out: bytearray, header: bytes, body: bytes | memoryview, sent: int) -> None:
    """Append to ``out`` what a gathered send of ``header`` + ``body`` left unsent.

    Both ends send a data frame with one ``sendmsg([header, body])`` when
    nothing is queued before it, and queue only the rest: a large frame then
    goes from its buffer to the socket without being copied first.
    """
    if sent < len(header):
        out += header[sent:]
        out += body
    else:
        out += body[sent - len(header) :]


def encode_line(text: str) -> bytes:
    """One line on the wire: UTF-8 and a newline.  Newlines inside are refused."""
    if "\n" in text:
        raise ValueError("a line cannot contain a newline")
    return text.encode("utf-8") + b"\n"
