"""The client's side of /sendfile: reading uploads and saving downloads safely.

Downloads are where a hostile peer could do harm, so every name from the
network goes through ``safe_name``: only the base name is kept, control
characters and path separators are removed, dot-only names are replaced, and
an existing file is never overwritten (a suffix is added).  The file is
written under a temporary name and renamed only once its size and SHA-256
check out, so a half-received file never looks like a finished one.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass, field

from protocol.replies import FileHeader

CHUNK_BYTES = 64 * 1024
MAX_NAME_BYTES = 200


def safe_name(raw: str) -> str:
    """A file name that cannot leave the download folder or upset a terminal."""
    name = raw.replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().lstrip(".")
    if not name:
        name = "file"
    encoded = name.encode("utf-8")[:MAX_NAME_BYTES]
    return encoded.decode("utf-8", "ignore") or "file"


def unique_path(folder: str, name: str) -> str:
    """``folder/name``, or ``folder/stem (n).ext`` if that is taken."""
    stem, ext = os.path.splitext(name)
    candidate = os.path.join(folder, name)
    n = 1
    while os.path.lexists(candidate):
        candidate = os.path.join(folder, f"{stem} ({n}){ext}")
        n += 1
    return candidate


def sha256_of(path: str) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass
class OutgoingFile:
    """A file this client is uploading."""

    target: int
    path: str
    name: str
    size: int
    sha256: str
    transfer: str = ""
    sent: int = 0
    handle: object = None

    def next_chunk(self) -> bytes:
        if self.handle is None:
            self.handle = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        chunk = self.handle.read(min(CHUNK_BYTES, self.size - self.sent))
        if not chunk and self.sent < self.size:
            raise OSError(f"{self.path} shrank while it was being sent")
        self.sent += len(chunk)
        return chunk

    @property
    def done(self) -> bool:
        return self.sent >= self.size

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


@dataclass
class IncomingFile:
    """A file arriving from the server, written to a temporary name."""

    header: FileHeader
    folder: str
    received: int = 0
    _hash: object = field(default_factory=hashlib.sha256)

    def __post_init__(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self.name = safe_name(self.header.name)
        self.temp_path = os.path.join(self.folder, f".{self.name}.{self.header.transfer}.part")
        self._fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, chunk: bytes) -> None:
        if self.received + len(chunk) > self.header.size:
            raise ValueError("the server sent more bytes than announced")
        os.write(self._fd, chunk)
        self._hash.update(chunk)
        self.received += len(chunk)

    @property
    def complete(self) -> bool:
        return self.received >= self.header.size

    def finish(self) -> str:
        """Verify and move into place; return the final path (ValueError if bad)."""
        os.close(self._fd)
        self._fd = -1
        digest = self._hash.hexdigest()
        if self.received != self.header.size or digest != self.header.sha256:
            self.discard()
            raise ValueError(
                f"verification failed (got {self.received} of {self.header.size} bytes, "
                f"sha256 {digest[:12]}...)"
            )
        final = unique_path(self.folder, self.name)
        os.link(self.temp_path, final)  # fails instead of overwriting a file made meanwhile
        os.unlink(self.temp_path)
        return final

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass
