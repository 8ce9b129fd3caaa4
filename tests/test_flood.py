"""Flood control: a flooder is read more slowly; people, scripts and files are not.

The budget itself (``server/flood.py``) is tested on a fake clock, without
sockets.  The rest starts the real server and speaks to it with real sockets:
a flooder looping ``/broadcast`` with 60 kB lines beside a classmate who
reads at about 1 MB/s (issue 16: before flood control that reader was cut
off after about 5 s), a script pasting 3,000 short lines, a file upload, and
``--no-flood-control``.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import threading
import time

import pytest
from conftest import TIMEOUT, RawClient

from server.flood import BYTE_BURST, BYTE_RATE, LINE_BURST, LINE_RATE, FloodBudget

KiB = 1024
BIG = 60_000  # characters in a flooder's line, as in the issue
FLOOD_NOTICE = r"^\[server\] flood control: "


class FakeClock:
    """A clock the test moves by hand, counting how often it is read."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


# -- the budget, on a fake clock -----------------------------------------------------------


def test_a_person_typing_a_line_every_two_seconds_is_never_over() -> None:
    clock = FakeClock()
    budget = FloodBudget(clock)
    for _ in range(1800):  # an hour
        assert not budget.charge(200)
        clock.now += 2.0
    assert not budget.notice_due()


def test_a_pasted_page_and_a_script_of_3000_short_lines_fit_in_the_burst() -> None:
    clock = FakeClock()
    budget = FloodBudget(clock)
    assert not any(budget.charge(80) for _ in range(60))  # a page, at once
    clock.now += 60.0
    assert not any(budget.charge(40) for _ in range(3000))  # a script, at once
    assert budget.wait() == 0.0 and not budget.over


def test_a_loop_of_long_lines_is_over_after_its_byte_burst() -> None:
    clock = FakeClock()
    budget = FloodBudget(clock)
    taken = 0
    while not budget.charge(BIG):
        taken += 1
    assert taken == BYTE_BURST // BIG  # the burst, then one line too many
    assert budget.over
    wait = budget.wait()
    assert 0.0 < wait <= BIG / BYTE_RATE
    clock.now += wait
    assert not budget.over and budget.wait() == 0.0


def test_many_tiny_lines_are_over_after_the_line_burst() -> None:
    clock = FakeClock()
    budget = FloodBudget(clock)
    results = [budget.charge(1) for _ in range(LINE_BURST + 1)]
    assert not any(results[:LINE_BURST]) and results[LINE_BURST]
    assert budget.wait() == pytest.approx(1.0 / LINE_RATE)


def test_sustained_a_flooder_gets_the_burst_plus_the_rate_and_no_more() -> None:
    clock = FakeClock()
    budget = FloodBudget(clock)
    accepted = 0
    start = clock.now
    while clock.now - start < 120.0:  # two minutes of a flooder that sends whenever allowed
        clock.now += budget.wait()
        budget.charge(BIG)
        accepted += BIG
    allowed = BYTE_BURST + BYTE_RATE * (clock.now - start)
    assert allowed - 2 * BIG <= accepted <= allowed + BIG


def test_one_notice_per_episode_and_a_new_one_after_the_client_caught_up() -> None:
    clock = FakeClock()
    budget = FloodBudget(clock)
    notices = 0
    for _ in range(200):  # a long flood: one episode
        clock.now += budget.wait()
        if budget.charge(BIG) and budget.notice_due():
            notices += 1
    assert notices == 1
    clock.now += BYTE_BURST / BYTE_RATE + 1.0  # quiet until the whole burst is back
    assert not budget.charge(BIG)
    while not budget.charge(BIG):
        pass
    assert budget.notice_due() and not budget.notice_due()


def test_within_budget_the_loop_check_does_not_read_the_clock() -> None:
    clock = FakeClock()
    budget = FloodBudget(clock)
    budget.charge(10)
    reads = clock.reads
    for _ in range(100):
        assert budget.wait() == 0.0 and not budget.over
    assert clock.reads == reads


# -- the real server -------------------------------------------------------------------------


class Flooder(threading.Thread):
    """Loops ``/broadcast f<n> <60 kB>`` as fast as its socket takes it, until stopped."""

    def __init__(self, client: RawClient) -> None:
        super().__init__(daemon=True)
        self.sock = client.sock
        self.lines = 0  # lines written whole
        self.halt = threading.Event()

    def run(self) -> None:
        out = b""
        while not self.halt.is_set():
            if not out:
                out = f"/broadcast f{self.lines} {'x' * BIG}\n".encode()
            _, writable, _ = select.select([], [self.sock], [], 0.1)
            if not writable:
                continue
            try:
                out = out[self.sock.send(out, socket.MSG_DONTWAIT) :]
            except BlockingIOError:
                continue
            if not out:
                self.lines += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(TIMEOUT)


class SlowReader(threading.Thread):
    """A client that reads about ``rate`` bytes a second, and notes every line it gets."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.rate = rate
        self.lines: list[str] = []
        self.received = 0
        self.closed = threading.Event()
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        buffer = b""
        try:
            while chunk := self.sock.recv(64 * KiB):
                self.received += len(chunk)
                buffer += chunk
                *whole, buffer = buffer.split(b"\n")
                self.lines += [line.decode("utf-8", "replace") for line in whole]
                ahead = self.received / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # the reader's own pace, not a wait for the server
        except OSError:
            pass
        self.closed.set()

    def has(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    def numbers(self, sender: int) -> list[int]:
        tag = re.compile(rf"^\[broadcast from {sender}\] f(\d+) ")
        return [int(m.group(1)) for line in list(self.lines) if (m := tag.match(line))]

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def test_a_flooder_is_slowed_and_told_once_while_a_reader_at_1_MB_s_is_never_cut_off(server, connect):
    reader = SlowReader(server.port, rate=1_000_000)
    wait_for(lambda: reader.has(r"^\[welcome\]"), "welcome for the reader")
    reader_id = int(re.search(r"unique id is (\d{5})", reader.lines[0]).group(1))  # type: ignore[union-attr]
    flooder, bystander = connect(), connect()
    flooder.expect(rf"client {bystander.id} joined")
    flood = Flooder(flooder)
    started = time.monotonic()
    flood.start()
    try:
        flooder.expect(FLOOD_NOTICE, timeout=30.0)
        # The flood goes on at the budget's pace: lines keep arriving after the burst.
        after_burst = BYTE_BURST // BIG + 4
        wait_for(
            lambda: len(reader.numbers(flooder.id)) > after_burst or reader.closed.is_set(),
            "lines after the burst",
        )
        assert not reader.closed.is_set(), f"the reader was cut off: {server.log()[-600:]}"
        relayed = len(reader.numbers(flooder.id))
        elapsed = time.monotonic() - started
    finally:
        flood.stop()
    # Slowed: the server took no more than the burst and the rate allow (an
    # upper bound, which a loaded machine can only make smaller) ...
    assert relayed * BIG <= BYTE_BURST + BYTE_RATE * elapsed + BIG
    # ... while the flooder had written far more than that into its socket.
    assert flood.lines > relayed
    bystander.send(f"/send {reader_id} still here?")
    wait_for(lambda: reader.has(rf"^\[msg from {bystander.id}\] still here\?$"), "the bystander's message")
    assert not reader.closed.is_set()
    numbers = reader.numbers(flooder.id)
    assert numbers == list(range(len(numbers))), "a flooder's line was lost"
    # One notice: the one ``expect`` found above (its lines are still being
    # read, slowly, so no reply could mark the end; a second notice would
    # have come with one of the lines relayed since).
    assert "nothing you sent is lost" in next(line for line in flooder.seen if re.search(FLOOD_NOTICE, line))
    flooder.quiet(FLOOD_NOTICE, wait=0.5)
    assert "stopped reading" not in server.log()
    reader.close()


def test_3000_short_lines_from_a_script_all_arrive_and_only_long_lines_after_them_are_slowed(server, connect):
    script, receiver = connect(), connect()
    script.expect(rf"client {receiver.id} joined")
    started = time.monotonic()
    lines = [f"/send {receiver.id} s{i} a line from a script\n" for i in range(3000)]
    script.send_bytes("".join(lines).encode())
    script.send("/active")
    for i in range(3000):
        receiver.expect(rf"^\[msg from {script.id}\] s{i} a line from a script$", timeout=30.0)
    assert time.monotonic() - started < 30.0, "3,000 short lines took more than 30 s"
    script.expect(r"^\[active\]")
    assert not any(re.search(FLOOD_NOTICE, line) for line in script.seen), "the script was told it flooded"
    # The same script then loops long lines: now, and only now, it is told.
    flood = Flooder(script)
    flood.start()
    try:
        script.expect(FLOOD_NOTICE, timeout=30.0)
    finally:
        flood.stop()


def test_a_file_upload_is_not_charged_but_the_same_bytes_as_chat_are(server, connect):
    uploader, receiver = connect(), connect()
    uploader.expect(rf"client {receiver.id} joined")
    # Four bursts' worth, in lines of 1 KiB: every download chunk (256 KiB)
    # then ends a line, so that a chat line between two frames starts a line
    # of its own for this client, which reads the frames as lines.
    data = (b"z" * (KiB - 1) + b"\n") * (4 * BYTE_BURST // KiB)
    digest = hashlib.sha256(data).hexdigest()
    uploader.send(f"/sendfile {receiver.id} {len(data)} {digest} big.txt")
    transfer = uploader.expect(rf"^\[upload (\d{{5}}-\d+) ready\] {len(data)} ").group(1)
    frame = 64 * KiB  # many frame headers too: none of them is charged
    for start in range(0, len(data), frame):
        part = data[start : start + frame]
        uploader.send_bytes(f"/data {transfer} {len(part)}\n".encode() + part)
    uploader.expect(rf"^\[ok\] file {transfer} 'big.txt' uploaded \({len(data)} bytes\)", timeout=30.0)
    receiver.expect(rf"^\[file {transfer} from {uploader.id}\] {len(data)} ")
    # Chat right after the file still has the whole burst: a few long lines pass untold ...
    for i in range(BYTE_BURST // BIG - 1):
        uploader.send(f"/send {receiver.id} c{i} {'y' * BIG}")
        receiver.expect(rf"^\[msg from {uploader.id}\] c{i} ", timeout=30.0)
    assert not any(re.search(FLOOD_NOTICE, line) for line in uploader.seen)
    # ... and the same bytes again as chat are not.
    flood = Flooder(uploader)
    flood.start()
    try:
        uploader.expect(FLOOD_NOTICE, timeout=30.0)
    finally:
        flood.stop()


def test_no_flood_control_reads_a_flooder_as_fast_as_it_sends(start_server):
    server = start_server("--no-flood-control")
    flooder, reader = RawClient(server.port), RawClient(server.port)
    try:
        flooder.welcome()
        reader.welcome()
        flooder.expect(rf"client {reader.id} joined")
        lines = 3 * BYTE_BURST // BIG  # three bursts' worth, which flood control would slow
        flooder.send_bytes(b"".join(f"/broadcast f{i} {'x' * BIG}\n".encode() for i in range(lines)))
        for i in range(lines):
            reader.expect(rf"^\[broadcast from {flooder.id}\] f{i} ", timeout=30.0)
        flooder.send("/active")
        flooder.expect(r"^\[active\]")
        assert not any(re.search(FLOOD_NOTICE, line) for line in flooder.seen)
    finally:
        flooder.close()
        reader.close()
