"""The client's file helpers: names from the network made safe, downloads verified."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.files import MAX_NAME_BYTES, IncomingFile, OutgoingFile, safe_name, sha256_of, unique_path
from protocol.replies import FileHeader


def header(data: bytes, name: str = "f.bin", transfer: str = "12345-1") -> FileHeader:
    return FileHeader(transfer, 12345, 0, len(data), hashlib.sha256(data).hexdigest(), name)


# -- safe_name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("my holiday  notes.txt", "my holiday  notes.txt"),
        ("naïve café.txt", "naïve café.txt"),
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("a/b/c.txt", "c.txt"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("C:\\Users\\me\\doc.txt", "doc.txt"),
        ("dir/", "file"),
        ("..", "file"),
        (".", "file"),
        ("....", "file"),
        ("", "file"),
        ("   ", "file"),
        (".bashrc", "bashrc"),
        ("  padded.txt  ", "padded.txt"),
        ("\x1b[31mred\x1b[0m.txt", "[31mred[0m.txt"),
        ("bell\x07 nul\x00 del\x7f tab\t cr\r.txt", "bell nul del tab cr.txt"),
        ("\u202etxt.exe", "txt.exe"),  # right-to-left override
        ("zero\u200bwidth", "zerowidth"),
        ("\x00\x01\x02", "file"),
    ],
)
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected


def test_safe_name_cuts_long_names_on_a_character_boundary():
    name = safe_name("é" * 300)  # 2 bytes each
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert name == "é" * (MAX_NAME_BYTES // 2)
    assert len(safe_name("€" * 100).encode()) == 198  # 3 bytes each: 66 whole characters
    assert safe_name("a" * 199 + " b") == "a" * 199  # no trailing space left by the cut


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=0, max_size=400))
def test_safe_name_always_gives_a_plain_name_inside_the_folder(raw):
    name = safe_name(raw)
    assert name and name not in (".", "..")
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert not name.startswith(".") and name == name.strip()
    assert not any(unicodedata.category(ch).startswith("C") for ch in name)
    assert 0 < len(name.encode("utf-8")) <= MAX_NAME_BYTES
    folder = "/downloads"
    assert os.path.dirname(os.path.normpath(os.path.join(folder, name))) == folder
    assert safe_name(name) == name  # already clean: unchanged


# -- unique_path ---------------------------------------------------------------------------


def test_unique_path_returns_the_name_when_it_is_free(tmp_path):
    assert unique_path(str(tmp_path), "a.txt") == str(tmp_path / "a.txt")


def test_unique_path_adds_a_counter_before_the_extension(tmp_path):
    (tmp_path / "a.txt").write_text("1")
    (tmp_path / "a (1).txt").write_text("2")
    assert unique_path(str(tmp_path), "a.txt") == str(tmp_path / "a (2).txt")
    (tmp_path / "archive.tar.gz").write_text("x")
    assert unique_path(str(tmp_path), "archive.tar.gz") == str(tmp_path / "archive.tar (1).gz")
    (tmp_path / "README").write_text("x")
    assert unique_path(str(tmp_path), "README") == str(tmp_path / "README (1)")


def test_unique_path_treats_folders_and_dangling_symlinks_as_taken(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert unique_path(str(tmp_path), "taken") == str(tmp_path / "taken (1)")
    assert unique_path(str(tmp_path), "link") == str(tmp_path / "link (1)")


# -- IncomingFile ----------------------------------------------------------------------------


def receive(folder: Path, data: bytes, name: str, pieces: int = 3) -> str:
    incoming = IncomingFile(header(data, name), str(folder))
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        incoming.write(data[start : start + step])
    assert incoming.complete
    return incoming.finish()


def test_a_received_file_is_verified_and_renamed_into_place(tmp_path):
    data = os.urandom(100_000)
    path = receive(tmp_path / "dl", data, "../../etc/evil.bin")
    assert path == str(tmp_path / "dl" / "evil.bin")
    assert Path(path).read_bytes() == data
    assert os.listdir(tmp_path / "dl") == ["evil.bin"]  # no temporary file left


def test_a_received_file_never_replaces_an_existing_one(tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"mine")
    assert receive(folder, b"theirs", "a.txt") == str(folder / "a (1).txt")
    assert receive(folder, b"again", "a.txt") == str(folder / "a (2).txt")
    assert (folder / "a.txt").read_bytes() == b"mine"


def test_a_name_taken_while_the_file_arrived_is_not_overwritten(tmp_path):
    folder = tmp_path / "dl"
    incoming = IncomingFile(header(b"late"), str(folder))
    incoming.write(b"late")
    (folder / "f.bin").write_bytes(b"got here first")
    assert incoming.finish() == str(folder / "f (1).bin")
    assert (folder / "f.bin").read_bytes() == b"got here first"
    assert sorted(os.listdir(folder)) == ["f (1).bin", "f.bin"]


def test_a_corrupt_file_is_discarded(tmp_path):
    folder = tmp_path / "dl"
    incoming = IncomingFile(header(b"good data"), str(folder))
    incoming.write(b"evil data")
    with pytest.raises(ValueError, match="verification failed"):
        incoming.finish()
    assert os.listdir(folder) == []


def test_more_bytes_than_announced_are_refused(tmp_path):
    incoming = IncomingFile(header(b"four"), str(tmp_path))
    with pytest.raises(ValueError, match="more bytes than announced"):
        incoming.write(b"fives")
    incoming.discard()
    assert os.listdir(tmp_path) == []


def test_a_planted_temporary_name_or_symlink_is_never_written_through(tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    # Whatever a peer can predict (name, transfer id), the temporary name is fresh.
    for guess in (".f.bin.12345-1.part", ".f.bin.part", "f.bin.part"):
        (folder / guess).symlink_to(target)
    path = receive(folder, b"new data", "f.bin")
    assert Path(path).read_bytes() == b"new data"
    assert target.read_bytes() == b"keep"


def test_a_zero_byte_file(tmp_path):
    incoming = IncomingFile(header(b""), str(tmp_path))
    assert incoming.complete
    path = incoming.finish()
    assert Path(path).read_bytes() == b"" and os.listdir(tmp_path) == ["f.bin"]


# -- OutgoingFile and sha256_of ---------------------------------------------------------------


def test_an_outgoing_file_is_read_in_bounded_chunks(tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "out.bin").write_bytes(data)
    size, digest = sha256_of(str(tmp_path / "out.bin"))
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    outgoing = OutgoingFile(12345, str(tmp_path / "out.bin"), "out.bin", size, digest)
    chunks = []
    while not outgoing.done:
        chunks.append(outgoing.next_chunk())
    outgoing.close()
    assert b"".join(chunks) == data
    assert max(map(len, chunks)) <= 1024 * 1024


def test_an_outgoing_file_that_shrinks_is_an_error(tmp_path):
    (tmp_path / "out.bin").write_bytes(b"x" * 1000)
    outgoing = OutgoingFile(12345, str(tmp_path / "out.bin"), "out.bin", 2000, "0" * 64)
    with pytest.raises(OSError, match="shrank"):
        while not outgoing.done:
            outgoing.next_chunk()
    outgoing.close()


def test_an_outgoing_file_that_grows_sends_only_the_announced_bytes(tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "out.bin").write_bytes(data)
    outgoing = OutgoingFile(12345, str(tmp_path / "out.bin"), "out.bin", len(data), "0" * 64)
    chunks = [outgoing.next_chunk()]
    with open(tmp_path / "out.bin", "ab") as grow:
        grow.write(b"y" * 500_000)
    while not outgoing.done:
        chunks.append(outgoing.next_chunk())
    outgoing.close()
    assert b"".join(chunks) == data
