"""The client's side of /sendfile: reading uploads and saving downloads safely.

Downloads are where a hostile peer could do harm, so every name from the
network goes through ``safe_name``: only the base name is kept, control
characters and path separators are removed, dot-only names are replaced, and
an existing file is never overwritten (a suffix is added).  The file is
written under a temporary name and renamed only once its size and SHA-256
check out, so a half-received file never looks like a finished one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
import unicodedata
from dataclasses import dataclass, field

from protocol.replies import FileHeader

#: Bytes per data frame the client sends (the server takes up to 1 MiB).
CHUNK_BYTES = 256 * 1024
MAX_NAME_BYTES = 200
#: The most --download-quota is by default: ten files at the server's default size limit.
DEFAULT_DOWNLOAD_QUOTA = 10 * 100 * 1024 * 1024


def default_download_quota(folder: str) -> int:
    """What one session may save unless told otherwise: ``DEFAULT_DOWNLOAD_QUOTA``, or a
    quarter of the free space of the folder's file system at start if that is less, so
    that a classmate's files can never fill the disk."""
    path = os.path.abspath(folder)
    while not os.path.isdir(path):  # the folder is made with the first file
        path = os.path.dirname(path)
    fs = os.statvfs(path)
    return min(DEFAULT_DOWNLOAD_QUOTA, fs.f_bavail * fs.f_frsize // 4)


_HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def safe_name(raw: str) -> str:
    """A file name that cannot leave the download folder or upset a terminal."""
    name = raw.replace("\\", "/").split("/")[-1]
    # Controls, format characters and the line and paragraph separators: none may
    # reach a terminal, nor the server, which refuses a line that holds one.
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _HIDDEN_CATEGORIES)
    name = name.strip().lstrip(".")
    if not name:
        name = "file"
    encoded = name.encode("utf-8")[:MAX_NAME_BYTES]
    return encoded.decode("utf-8", "ignore").rstrip() or "file"  # a cut may end on a space


def unique_path(folder: str, name: str) -> str:
    """``folder/name``, or ``folder/stem (n).ext`` if that is taken."""
    stem, ext = os.path.splitext(name)
    candidate = os.path.join(folder, name)
    n = 1
    while os.path.lexists(candidate):
        candidate = os.path.join(folder, f"{stem} ({n}){ext}")
        n += 1
    return candidate


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is written (a full disk can cut a write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _place(temp: str, final: str) -> None:
    """Give the finished file its name, never replacing a file (FileExistsError)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        # No hard links on this file system: claim the name, then rename over the claim.
        os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        os.replace(temp, final)


def sha256_of(path: str) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    block = bytearray(CHUNK_BYTES)  # one buffer, reused: no allocation per read
    view = memoryview(block)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(block):
            digest.update(view[:count])
            size += count
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
    handle: io.FileIO | None = None  # opened on the first read, unbuffered

    def read_into(self, buffer: memoryview) -> int:
        """Read the next piece into ``buffer`` (reused: no allocation); return its size."""
        if self.handle is None:
            self.handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        want = min(len(buffer), self.size - self.sent)
        count = self.handle.readinto(buffer[:want]) if want else 0
        if not count and self.sent < self.size:
            raise OSError(f"{self.path} shrank while it was being sent")
        self.sent += count
        return count

    def next_chunk(self) -> bytes:
        """The next piece as bytes, at most CHUNK_BYTES."""
        buffer = bytearray(min(CHUNK_BYTES, self.size - self.sent))
        return bytes(buffer[: self.read_into(memoryview(buffer))])

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
    # hashlib._Hash names the type of hashlib.sha256() objects in the type stubs
    # only; with `from __future__ import annotations` it is never evaluated.
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    def __post_init__(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self.name = safe_name(self.header.name)
        self._fd = -1
        # A fresh temporary name each time (O_EXCL, no symlink followed): a
        # leftover or a planted file of the same name is never truncated.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        stem = self.name.encode("utf-8")[:100].decode("utf-8", "ignore")
        for _attempt in range(100):
            self.temp_path = os.path.join(self.folder, f".{stem}.{secrets.token_hex(4)}.part")
            try:
                self._fd = os.open(self.temp_path, flags, 0o644)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name", self.folder)

    def write(self, chunk: bytes | memoryview) -> None:
        if self.received + len(chunk) > self.header.size:
            raise ValueError("the server sent more bytes than announced")
        write_all(self._fd, chunk)
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
        try:
            while True:
                final = unique_path(self.folder, self.name)
                try:
                    _place(self.temp_path, final)
                    return final
                except FileExistsError:
                    continue  # taken since unique_path looked: take the next suffix
        finally:
            self.discard()  # the temporary name goes, whether or not the file was placed

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass
