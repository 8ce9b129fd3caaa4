"""File transfer end to end: /sendfile to a client and to a group, through the spool.

The real line-mode client sends and receives wherever it can; a raw socket
speaks the wire protocol where the real client would refuse to (hostile
names, an upload cut off half-way, chat between two data frames), and a
"sleepy" socket with a tiny receive buffer holds a download half-way for as
long as a test needs, so nothing here depends on timing.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import unicodedata
from pathlib import Path

import pytest
from conftest import TIMEOUT, RawClient, ServerProcess
from procinfo import spool_files, spool_of, wait_until, worker_of

from client.session import ClientSession
from protocol import commands
from protocol.framing import NEED_DATA, Data, Line, LineFramer

#: Every test here runs on a System V server and on a POSIX one (conftest.ipc_api).
pytestmark = pytest.mark.both_ipc_apis

MiB = 1024 * 1024
SAVED = re.compile(
    r"^\[saved\] file '(?P<name>.*)' from (?P<sender>\d{5})(?: \(group (?P<group>\d{5})\))? "
    r"saved to (?P<path>.*) \((?P<size>\d+) bytes\)$"
)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def saved(client, sender: int | str, timeout: float = TIMEOUT) -> re.Match:
    """The next ``[saved]`` line of ``client`` for a file from ``sender`` (an id, or a pattern)."""
    line = client.expect(rf"^\[saved\] file .* from {sender}\b", timeout).string
    match = SAVED.match(line)
    assert match, line
    return match


def saved_file(client, sender: int) -> tuple[Path, bytes]:
    match = saved(client, sender)
    path = Path(match["path"])
    assert path.resolve().parent == client.download_dir.resolve(), path
    data = path.read_bytes()
    assert int(match["size"]) == len(data)
    return path, data


def downloads(client) -> list[str]:
    """Every name in a client's download folder, temporary ones included."""
    folder = client.download_dir
    return sorted(os.listdir(folder)) if folder.exists() else []


def upload_raw(client: RawClient, target: int, data: bytes, name: str, frame: int = 256 * 1024) -> str:
    """Speak the wire protocol: header, the go-ahead, then data frames."""
    client.send(f"/sendfile {target} {len(data)} {sha(data)} {name}")
    transfer = client.expect(rf"^\[upload (\d{{5}}-\d+) ready\] {len(data)} ").group(1)
    for start in range(0, len(data), frame):
        part = data[start : start + frame]
        client.send_bytes(f"/data {transfer} {len(part)}\n".encode() + part)
    return transfer


def beyond_socket_buffers() -> int:
    """A file size the server's send buffer (up to tcp_wmem's maximum) cannot swallow."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
        largest = int(wmem.read().split()[2])
    return max(8 * MiB, 2 * largest + 2 * MiB)


class SleepySocket:
    """A client that reads only when told to: its tiny receive buffer stalls the server.

    It parses the server's stream the way a client must: lines, and after a
    ``[data T] n`` line exactly n raw bytes, kept per transfer.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # caps autotuning too
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = bytearray()
        self.events: list[tuple[str, str]] = []  # ("line", text) or ("data", transfer)
        self.files: dict[str, bytearray] = {}
        self.raw_left = 0
        self.raw_transfer = ""
        self.id = int(self.read_until(r"unique id is (\d{5})").group(1))

    def step(self) -> str | None:
        """Take in one line or one piece of raw data; return the line, if it was one."""
        if self.raw_left and self.buffer:
            take = min(self.raw_left, len(self.buffer))
            self.files[self.raw_transfer] += self.buffer[:take]
            del self.buffer[:take]
            self.raw_left -= take
            return None
        newline = self.buffer.find(b"\n")
        if self.raw_left or newline < 0:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"connection closed; last events {self.events[-5:]}")
            self.buffer += chunk
            return None
        line = self.buffer[:newline].decode("utf-8")
        del self.buffer[: newline + 1]
        data = re.fullmatch(r"\[data (\S+)\] (\d+)", line)
        if data:
            self.raw_transfer, self.raw_left = data[1], int(data[2])
            self.files.setdefault(data[1], bytearray())
            self.events.append(("data", data[1]))
            return None
        self.events.append(("line", line))
        return line

    def read_until(self, pattern: str) -> re.Match:
        regex = re.compile(pattern)
        while True:
            line = self.step()
            if line is not None and (match := regex.search(line)):
                return match

    def read_file(self, transfer: str, size: int) -> bytes:
        while len(self.files.get(transfer, b"")) < size:
            self.step()
        return bytes(self.files[transfer])

    def close(self) -> None:
        self.sock.close()


# -- files arrive, byte for byte ----------------------------------------------------------


def test_a_file_to_a_client_arrives_byte_identical_and_only_there(server, line_client, tmp_path):
    a, b, c = line_client("a"), line_client("b"), line_client("c")
    data = random_bytes(2 * MiB + 12345, seed=1)  # not a whole number of chunks
    source = write(tmp_path / "outbox" / "report.bin", data)
    a.send(f"/sendfile {b.id} {source}")
    transfer = a.expect(rf"^\[ok\] sending 'report.bin' \({len(data)} bytes\) as file (\S+)$").group(1)
    a.expect(rf"^\[ok\] file {transfer} 'report.bin' uploaded \({len(data)} bytes\); delivering to {b.id}$")
    path, received = saved_file(b, a.id)
    assert received == data
    assert path.name == "report.bin"
    a.expect(rf"^\[ok\] file {transfer} 'report.bin' delivered to {b.id}$")
    assert downloads(b) == ["report.bin"]  # no temporary file left beside it
    c.quiet(r"^\[saved\]|report\.bin")
    assert downloads(c) == []
    wait_until(lambda: spool_files(spool_of(server)) == [], what="an empty spool")
    assert source.read_bytes() == data  # the sender's copy is untouched


def test_a_file_to_a_group_reaches_every_other_member_and_no_one_else(server, line_client, tmp_path):
    a, b, c, outsider = (line_client(n) for n in ("a", "b", "c", "outsider"))
    a.send(f"/makegroup {b.id} {c.id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    for member in (b, c):
        member.expect(rf"group {gid}")
    data = random_bytes(MiB + 7, seed=2)
    source = write(tmp_path / "outbox" / "minutes.pdf", data)
    a.send(f"/sendfile {gid} {source}")
    uploaded = a.expect(r"^\[ok\] file (\S+) 'minutes.pdf' uploaded .*; delivering to (.*)$")
    transfer = uploaded.group(1)
    assert sorted(uploaded.group(2).split(", ")) == sorted([str(b.id), str(c.id)])
    for member in (b, c):
        match = saved(member, a.id)
        assert match["group"] == str(gid)
        assert Path(match["path"]).read_bytes() == data
    delivered = {a.expect(rf"^\[ok\] file {transfer} 'minutes.pdf' delivered to (\d{{5}})$").group(1)}
    delivered.add(a.expect(rf"^\[ok\] file {transfer} 'minutes.pdf' delivered to (\d{{5}})$").group(1))
    assert delivered == {str(b.id), str(c.id)}
    outsider.quiet(r"^\[saved\]|minutes")
    a.quiet(r"^\[saved\]")  # the sender is not sent its own file
    assert downloads(outsider) == [] and downloads(a) == []


def test_a_zero_byte_file(line_client, tmp_path):
    a, b = line_client("a"), line_client("b")
    source = write(tmp_path / "outbox" / "empty.txt", b"")
    a.send(f"/sendfile {b.id} {source}")
    path, received = saved_file(b, a.id)
    assert received == b"" and path.name == "empty.txt" and path.is_file()
    a.expect(r"^\[ok\] file \S+ 'empty.txt' delivered to " + str(b.id))


def test_a_name_with_spaces_in_a_folder_with_spaces(line_client, tmp_path):
    a, b = line_client("a"), line_client("b")
    data = b"spaces are fine\n" * 1000
    source = write(tmp_path / "my documents" / "holiday  plans 2024.txt", data)
    a.send(f"/sendfile {b.id} {source}")
    path, received = saved_file(b, a.id)
    assert path.name == "holiday  plans 2024.txt"
    assert received == data


def test_the_same_name_twice_never_overwrites(line_client, tmp_path):
    a, b = line_client("a"), line_client("b")
    b.download_dir.mkdir(parents=True)
    (b.download_dir / "notes.txt").write_bytes(b"already here")
    first = write(tmp_path / "one" / "notes.txt", b"first")
    second = write(tmp_path / "two" / "notes.txt", b"second")
    a.send(f"/sendfile {b.id} {first}")
    assert saved_file(b, a.id) == (b.download_dir / "notes (1).txt", b"first")
    a.send(f"/sendfile {b.id} {second}")
    assert saved_file(b, a.id) == (b.download_dir / "notes (2).txt", b"second")
    assert (b.download_dir / "notes.txt").read_bytes() == b"already here"


def test_awkward_local_names_are_announced_clean_and_never_mixed_up(line_client, tmp_path):
    """Names the server's parser would refuse (only spaces) or a terminal would mind.

    All headers are in flight at once: each file's bytes must go out under its own
    transfer id, whatever the server answered to the one before.
    """
    a, b = line_client("a"), line_client("b")
    names = {
        "   ": "file",
        " lead.txt": "lead.txt",
        "tab\there.txt": "tabhere.txt",
        "esc\x1b[31m.txt": "esc[31m.txt",
        "...": "file",
        "plain.txt": "plain.txt",
    }
    sources = {name: write(tmp_path / "outbox" / name, f"body of {name!r}".encode()) for name in names}
    a.send("\n".join(f"/sendfile {b.id} {path}" for path in sources.values()))
    got = {}
    for _ in names:
        path, data = saved_file(b, a.id)
        got[data.decode()] = path.name
    assert sorted(got) == sorted(f"body of {name!r}" for name in names)
    for name, clean in names.items():
        assert got[f"body of {name!r}"] in (clean, f"{clean} (1)"), (name, got)
    for _ in names:
        a.expect(rf"^\[ok\] file {a.id}-\d+ .* delivered to {b.id}$")
    assert not [line for line in a.seen if line.startswith("[error]")]


@pytest.mark.parametrize(
    ("wire_name", "expected"),
    [
        ("../../x", "x"),
        ("{tmp}/victim/abs.txt", "abs.txt"),  # an absolute path (inside tmp_path, to be harmless)
        ("..\\..\\win.txt", "win.txt"),
        # Names with control or format characters no longer get past the server's
        # framing (tests/test_room.py); the client's own stripping of them is
        # tested in tests/test_client_files.py.
        ("..", "file"),
        (".hidden", "hidden"),
    ],
)
def test_hostile_names_are_saved_inside_the_download_folder(
    wire_name, expected, server, connect, line_client, tmp_path
):
    wire_name = wire_name.replace("{tmp}", str(tmp_path))
    a, b = connect(), line_client("b")
    folder = b.download_dir
    folder.mkdir(parents=True)
    (folder / expected).write_bytes(b"do not overwrite me")  # so the suffix is needed too
    victim = tmp_path / "victim" / "abs.txt"
    data = b"hostile payload " * 100
    transfer = upload_raw(a, b.id, data, wire_name)
    a.expect(rf"^\[ok\] file {transfer} .* delivered to {b.id}$")
    match = saved(b, a.id)
    path = Path(match["path"])
    stem, ext = os.path.splitext(expected)
    assert path == folder / f"{stem} (1){ext}", match.string
    assert path.read_bytes() == data
    assert (folder / expected).read_bytes() == b"do not overwrite me"
    assert not any(unicodedata.category(ch).startswith("C") for ch in match.string)  # the printed line too
    assert sorted(os.listdir(folder)) == sorted([expected, path.name])
    assert not (tmp_path / "x").exists() and not victim.exists() and not (tmp_path / "win.txt").exists()


# -- several files, and people leaving ---------------------------------------------------------


def test_two_files_at_once_from_one_sender_and_a_third_from_another(line_client, tmp_path):
    a, b, c = line_client("a"), line_client("b"), line_client("c")
    first = random_bytes(3 * MiB + 1, seed=3)
    second = random_bytes(2 * MiB - 1, seed=4)
    third = random_bytes(MiB, seed=5)
    # Two uploads in flight from one client, a third from another: interleaved frames.
    a.send(
        f"/sendfile {b.id} {write(tmp_path / 'x' / 'same.bin', first)}\n"
        f"/sendfile {b.id} {write(tmp_path / 'y' / 'same.bin', second)}"
    )
    c.send(f"/sendfile {b.id} {write(tmp_path / 'z' / 'other.bin', third)}")
    got = {}
    for _ in range(3):
        match = saved(b, r"\d{5}")
        got[Path(match["path"]).name] = (int(match["sender"]), Path(match["path"]).read_bytes())
    assert got["other.bin"] == (c.id, third)
    assert sorted([got["same.bin"], got["same (1).bin"]]) == sorted([(a.id, first), (a.id, second)])
    assert sorted(downloads(b)) == ["other.bin", "same (1).bin", "same.bin"]
    a.expect(rf"^\[ok\] file {a.id}-\d+ 'same.bin' delivered to {b.id}$")
    a.expect(rf"^\[ok\] file {a.id}-\d+ 'same.bin' delivered to {b.id}$")
    c.expect(rf"^\[ok\] file {c.id}-\d+ 'other.bin' delivered to {b.id}$")


@pytest.mark.parametrize("how", ["closes its connection", "its worker is killed"])
def test_a_receiver_leaving_mid_transfer_costs_the_others_nothing(how, server, line_client, tmp_path):
    a, b = line_client("a"), line_client("b")
    sleepy = SleepySocket(server.port)
    a.expect(rf"client {sleepy.id} joined")
    a.send(f"/makegroup {b.id} {sleepy.id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    data = random_bytes(beyond_socket_buffers(), seed=6)
    a.send(f"/sendfile {gid} {write(tmp_path / 'outbox' / 'big.bin', data)}")
    transfer = sleepy.read_until(r"^\[file (\S+) from").group(1)  # its download has started
    _, received = saved_file(b, a.id)
    assert received == data
    a.expect(rf"^\[ok\] file {transfer} 'big.bin' delivered to {b.id}$")
    assert len(sleepy.files.get(transfer, b"")) < len(data)
    if how == "its worker is killed":
        os.kill(worker_of(server, sleepy.sock), signal.SIGKILL)
    sleepy.close()
    line = a.expect(rf"^\[error\] file {transfer}( 'big.bin')? not delivered to {sleepy.id}: ").string
    assert line.endswith("it went offline"), line
    wait_until(lambda: spool_files(spool_of(server)) == [], what="an empty spool")
    a.quiet(rf"file {transfer}")  # told once, not twice
    a.send(f"/send {b.id} still chatting")
    b.expect(rf"^\[msg from {a.id}\] still chatting$")


@pytest.mark.parametrize("how", ["closes its connection", "its worker is killed"])
def test_a_sender_leaving_mid_upload_leaves_no_spool_file(how, server, connect, line_client):
    a, b = connect(), line_client("b")
    data = random_bytes(MiB, seed=7)
    spool = spool_of(server)
    a.send(f"/sendfile {b.id} {len(data)} {sha(data)} half.bin")
    transfer = a.expect(r"^\[upload (\S+) ready\]").group(1)
    a.send_bytes(f"/data {transfer} {MiB // 2}\n".encode() + data[: MiB // 2])
    wait_until(
        lambda: [f for f in spool_files(spool) if (spool / f).stat().st_size == MiB // 2],
        what="the first half in the spool",
    )
    if how == "its worker is killed":
        os.kill(worker_of(server, a.sock), signal.SIGKILL)
    else:
        a.close()
    b.expect(rf"client {a.id} (disconnected|left)")
    wait_until(lambda: spool_files(spool) == [], what="the partial upload removed")
    b.quiet(r"^\[saved\]|half\.bin")
    assert downloads(b) == []


def test_the_sender_may_leave_as_soon_as_its_upload_is_sent(line_client, tmp_path):
    """End of input waits for the upload in flight, then quits; the file still arrives."""
    a, b = line_client("a"), line_client("b")
    data = random_bytes(8 * MiB, seed=8)
    a.send(f"/sendfile {b.id} {write(tmp_path / 'outbox' / 'parting.bin', data)}")
    a.end_input()
    assert a.wait() == 0
    a.seen_or_expect(r"^\[ok\] file \S+ 'parting.bin' uploaded")
    _, received = saved_file(b, a.id)
    assert received == data


# -- refusals: before anything is sent --------------------------------------------------------


def test_an_over_limit_file_is_refused_before_upload(start_server, line_client, tmp_path):
    server = start_server("--max-file-size", "1000")
    a, b = line_client("a", target=server), line_client("b", target=server)
    big = write(tmp_path / "outbox" / "big.bin", b"x" * 1001)
    a.send(f"/sendfile {b.id} {big}")
    line = a.expect(r"^\[error\] /sendfile refused").string
    assert line == (
        "[error] /sendfile refused by the server: big.bin: "
        "1001 bytes is over the server's limit of 1000 bytes"
    )
    assert spool_files(spool_of(server)) == []
    just_right = write(tmp_path / "outbox" / "fits.bin", b"y" * 1000)
    a.send(f"/sendfile {b.id} {just_right}")
    assert saved_file(b, a.id)[1] == b"y" * 1000
    assert not any(line.startswith("[ok] sending 'big.bin'") for line in a.seen)  # no byte of it was sent
    assert downloads(b) == ["fits.bin"]


def test_a_missing_or_unreadable_path_is_a_local_error_and_nothing_is_sent(line_client, tmp_path):
    a, b = line_client("a"), line_client("b")
    (tmp_path / "a folder").mkdir()
    locked = write(tmp_path / "locked.txt", b"secret")
    locked.chmod(0)
    cases = [
        (tmp_path / "nope.txt", "no such file"),
        (tmp_path / "a folder", "is not a regular file"),
        (Path("/proc/self/mem"), "Input/output error"),  # a file that fails when read
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        cases.append((locked, "Permission denied"))
    for path, reason in cases:
        a.send(f"/sendfile {b.id} {path}")
        line = a.expect(r"^\[error\] /sendfile").string
        assert line.startswith(f"[error] /sendfile: cannot read {path}: "), line
        assert reason in line and line.endswith("; nothing was sent"), line
    a.send(f"/send {b.id} after the errors")  # the session goes on, and the server saw no /sendfile
    b.expect(rf"^\[msg from {a.id}\] after the errors$")
    sent = ("[upload", "[ok] sending", "[error] /sendfile refused")
    assert not [line for line in a.seen if line.startswith(sent)]
    a.end_input()
    assert a.wait() == 0  # nothing was waiting to be sent
    b.quiet(r"^\[saved\]|^\[file")
    assert downloads(b) == []


def test_a_group_send_by_a_non_member_is_refused(line_client, tmp_path):
    a, b, c = line_client("a"), line_client("b"), line_client("c")
    a.send(f"/makegroup {b.id}")
    gid = int(a.expect(r"^\[ok\] group (\d{5})").group(1))
    c.send(f"/sendfile {gid} {write(tmp_path / 'outbox' / 'intruder.txt', b'let me in')}")
    line = c.expect(r"^\[error\] /sendfile refused").string
    assert line == (
        f"[error] /sendfile refused by the server: intruder.txt: you are not a member of group {gid}"
    )
    for member in (a, b):
        member.quiet(r"intruder|^\[saved\]")
        assert downloads(member) == []


def test_a_file_to_an_offline_id_is_refused(line_client, tmp_path):
    a = line_client("a")
    nobody = 10000 if a.id != 10000 else 10001
    a.send(f"/sendfile {nobody} {write(tmp_path / 'outbox' / 'lost.txt', b'hello?')}")
    line = a.expect(r"^\[error\] /sendfile refused").string
    assert line.endswith(f"lost.txt: {nobody} is neither an online client nor a group"), line
    a.end_input()
    assert a.wait() == 0


# -- chat keeps flowing --------------------------------------------------------------------


def test_chat_flows_between_the_frames_of_an_upload(server, connect, line_client):
    a, b = connect(), line_client("b")
    data = random_bytes(MiB, seed=9)
    a.send(f"/sendfile {b.id} {len(data)} {sha(data)} slow.bin")
    transfer = a.expect(r"^\[upload (\S+) ready\]").group(1)
    a.send_bytes(f"/data {transfer} 1000\n".encode() + data[:1000])
    a.send(f"/send {b.id} in the middle of an upload")  # the sender chats ...
    b.expect(rf"^\[msg from {a.id}\] in the middle of an upload$")
    b.send(f"/send {a.id} heard you")  # ... and is chatted to
    a.expect(rf"^\[msg from {b.id}\] heard you$")
    b.quiet(r"^\[saved\]", wait=0.2)
    a.send_bytes(f"/data {transfer} {len(data) - 1000}\n".encode() + data[1000:])
    assert saved_file(b, a.id)[1] == data
    a.expect(rf"^\[ok\] file {transfer} 'slow.bin' delivered to {b.id}$")


def test_chat_flows_while_a_download_is_held_up(server, line_client, tmp_path):
    a, b = line_client("a"), line_client("b")
    sleepy = SleepySocket(server.port)
    a.expect(rf"client {sleepy.id} joined")
    data = random_bytes(beyond_socket_buffers(), seed=10)
    a.send(f"/sendfile {sleepy.id} {write(tmp_path / 'outbox' / 'held.bin', data)}")
    transfer = a.expect(r"^\[ok\] file (\S+) 'held.bin' uploaded").group(1)
    sleepy.read_until(rf"^\[file {transfer} from {a.id}\] {len(data)} {sha(data)} held.bin$")
    # The download is stuck on the sleepy client's buffers; everyone else chats on.
    a.send(f"/send {b.id} meanwhile")
    b.expect(rf"^\[msg from {a.id}\] meanwhile$")
    b.send("/broadcast everyone")
    a.expect(rf"^\[broadcast from {b.id}\] everyone$")
    a.send(f"/send {sleepy.id} a line between your data frames")
    # Now read: the message comes in the middle of the file's frames, and the file is whole.
    sleepy.read_until(rf"^\[msg from {a.id}\] a line between your data frames$")
    position = len(sleepy.events) - 1
    assert ("data", transfer) in sleepy.events[:position]
    assert sleepy.read_file(transfer, len(data)) == data
    assert [e for e in sleepy.events[position:] if e[0] == "data"]  # more frames came after the line
    a.expect(rf"^\[ok\] file {transfer} 'held.bin' delivered to {sleepy.id}$")
    sleepy.close()


def test_the_client_sends_typed_lines_between_its_data_frames(tmp_path):
    """The real client's upload pacing: a line typed mid-upload goes out before the rest of the file."""
    data = random_bytes(2 * MiB + 3, seed=11)
    source = write(tmp_path / "outbox" / "paced.bin", data)
    ours, theirs = socket.socketpair()
    shown: list[str] = []
    session = ClientSession(ours, str(tmp_path / "downloads"), shown.append)
    ours.setblocking(False)
    theirs.settimeout(TIMEOUT)
    session.send_user_line(f"/sendfile 12345 {source}")
    header = f"/sendfile 12345 {len(data)} {sha(data)} paced.bin\n".encode()
    while session.wants_write():
        session.on_writable()
    assert theirs.recv(len(header), socket.MSG_WAITALL) == header
    assert session.busy  # waiting for the go-ahead; no data before it
    theirs.sendall(f"[upload 54321-1 ready] {len(data)} paced.bin\n".encode())
    session.on_readable()
    assert session.wants_write()  # the first frames are queued ...
    session.send_user_line("/send 12345 typed during the upload")  # ... and then a line is typed

    framer = LineFramer(max_line=commands.MAX_DATA_FRAME)
    events: list[tuple[str, object]] = []
    body = bytearray()
    while len(body) < len(data):
        if session.wants_write():
            session.on_writable()
        framer.feed(theirs.recv(1 << 20))
        while (event := framer.next_event()) is not NEED_DATA:
            if isinstance(event, Line):
                frame = re.fullmatch(r"/data 54321-1 (\d+)", event.text)
                if frame:
                    assert 0 < int(frame[1]) <= commands.MAX_DATA_FRAME
                    framer.expect_raw(int(frame[1]))
                events.append(("frame", int(frame[1])) if frame else ("line", event.text))
            elif isinstance(event, Data):
                body += event.chunk
    assert bytes(body) == data
    assert not session.busy
    typed = events.index(("line", "/send 12345 typed during the upload"))
    assert 0 < typed < len(events) - 1
    assert events[0][0] == "frame" and events[-1][0] == "frame"  # frames before and after the line
    assert sum(size for kind, size in events if kind == "frame") == len(data)
    assert [line for line in shown if "paced.bin" in line] == [
        f"[ok] sending 'paced.bin' ({len(data)} bytes) as file 54321-1"
    ]
    session.close()
    theirs.close()


# -- the spool folder ----------------------------------------------------------------------


def test_a_spool_dir_holding_other_files_keeps_them(tmp_path):
    """--spool-dir may name a folder in use: only the spool's own files are ever removed."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "keep.txt").write_bytes(b"not the spool's")
    (folder / "up-0-1-12345-1.part").write_bytes(b"left by a crashed server")
    server = ServerProcess(spool=folder)
    try:
        assert spool_files(folder) == ["keep.txt"]  # the leftover went at start
        a, b = RawClient(server.port), RawClient(server.port)
        for client in (a, b):
            client.welcome()
        transfer = upload_raw(a, b.id, b"x" * 1000, "f.bin")
        a.expect(rf"^\[ok\] file {transfer} 'f.bin' uploaded")
        for client in (a, b):
            client.close()
    finally:
        assert server.stop() == 0
    assert spool_files(folder) == ["keep.txt"]
    assert (folder / "keep.txt").read_bytes() == b"not the spool's"


def test_a_spool_dir_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="spool folder"):
        ServerProcess(spool=tmp_path / "link")
