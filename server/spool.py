"""The spool: files on their way through the server (the folder, uploads, downloads).

A file is uploaded in chunks into a private spool folder (mode 0700), never
held whole in memory.  When the upload is complete and its SHA-256 checks
out, the uploading worker makes one hard link per receiver, named after the
receiver's slot and generation, removes its own name, and posts a FILE
record to each receiver.  Each receiving worker streams its link to its
client chunk by chunk, then removes the link; the kernel frees the data when
the last link and descriptor are gone.  So:

* a receiver that leaves mid-transfer costs the others nothing (they read
  their own links);
* the parent, after reaping any worker, removes the links and partial
  uploads named for that slot and generation, and tells the senders whose
  files were not delivered;
* the spool files are removed at start (after a crash) and at shutdown,
  and then the folder too if nothing else is in it.  Nothing but the
  spool's own files is ever removed, whatever ``--spool-dir`` names;
* a running server holds an exclusive ``flock`` on the folder itself, so a
  second server given the same ``--spool-dir`` refuses to start instead of
  removing the first one's files in transit.

**The folder is also the ledger of the quotas** (``--spool-quota``, and
``--spool-quota-per-receiver``): what waits for each receiver is its links,
and what uploads in progress have reserved is one empty file per receiver,
``up-S-G-T.for-RS-RG.size-N``.  ``server/ledger.py`` reads and writes it.

**Whoever removes a receiver's link reports the verdict.**  A link can be
removed by the receiving worker (the file was streamed, or failed), by the
sending worker (its notice found the receiver gone), or by the parent (the
receiver's worker ended).  ``unlink`` succeeds for exactly one of them, so
exactly one result line reaches the sender, whoever loses the race.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from syscalls import faults

log = logging.getLogger(__name__)

# The spool's failure-prone calls, wrapped once for the fault-injection tests
# (syscalls.faults): without SHMCHAT_FAULTS these are the os functions themselves.
_open = faults.wrap("open", os.open)
_write = faults.wrap("write", os.write)
_link = faults.wrap("link", os.link)
_unlink = faults.wrap("unlink", os.unlink)


#: Bytes per data frame sent to a receiver (the client accepts up to 1 MiB).
CHUNK_BYTES = 256 * 1024

LINK = re.compile(r"to-(?P<slot>\d+)-(?P<gen>\d+)-(?P<sender>\d+)-(?P<n>\d+)\Z")
#: An upload's reservation of its announced size for one receiver (see "the ledger").
RESERVATION = re.compile(
    r"up-(?P<upload>\d+-\d+-\d+-\d+)\.for-(?P<slot>\d+)-(?P<gen>\d+)\.size-(?P<size>\d+)\Z"
)
#: Every name the spool itself makes: partial uploads, reservations and receivers' links.
_SPOOL_FILE = re.compile(
    r"(?:up-\d+-\d+-\d+-\d+(?:\.part|\.for-\d+-\d+\.size-\d+)|to-\d+-\d+-\d+-\d+)(?:\.removed)?\Z"
)
#: Added to a spool file that could not be removed, once its verdict is given.
REMOVED = ".removed"


class SpoolInUse(OSError):
    """Another live server holds this spool folder."""


@dataclass(frozen=True)
class Quotas:
    """Bytes the spool may hold: in all, and waiting for any one receiver."""

    total: int
    per_receiver: int

    @classmethod
    def for_folder(cls, path: str, total: int | None, per_receiver: int | None, max_clients: int) -> Quotas:
        """The quotas given, or the defaults: half the free space of the folder's
        file system at start, and a fair share of that per receiver (total / max
        clients), so that one receiver that never reads cannot keep the others'
        files out."""
        if total is None:
            fs = os.statvfs(path)
            total = fs.f_bavail * fs.f_frsize // 2
        if per_receiver is None:
            per_receiver = total // max_clients
        return cls(total, per_receiver)


#: No quota: what a Spool has until the server gives it its own (tests, benchmarks).
UNLIMITED = Quotas(2**63, 2**63)


def remove_link(path: str) -> bool:
    """Remove a spool file; True if this call removed it (see "whoever removes").

    Any failure other than "already gone" is logged and counts as removed by
    us: the verdict must still be given once.  The file is then renamed out
    of the way (``REMOVED``): under its own name the parent would find it
    after its owner left, remove it, and report that file a second time.
    ``leftovers`` and the spool's cleanups remove it without a word.
    """
    try:
        _unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot remove spool file %s: %s", path, exc)
        if not path.endswith(REMOVED):
            try:
                os.rename(path, path + REMOVED)
            except FileNotFoundError:
                return False  # removed by someone else meanwhile: theirs to report
            except OSError:
                pass
    return True


class Spool:
    """The spool folder of one server."""

    def __init__(self, path: str, quotas: Quotas = UNLIMITED) -> None:
        self.path = path
        self.quotas = quotas
        self._lock_fd = -1
        # Made before the workers are forked, so that every one of them has it.
        self._ledger_fd = os.memfd_create("shmchat-spool-ledger", os.MFD_CLOEXEC)

    def reset(self) -> None:
        """Remove what a previous server left, and make sure the folder is ours.

        Only spool files (``up-*.part``, ``to-*``) are ever removed: ``--spool-dir``
        may name a folder that holds other things, which are left alone.  A folder
        that is a symlink or belongs to another user is refused (OSError): another
        user could otherwise rename the files in transit.
        """
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            info = os.lstat(self.path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                raise OSError(
                    errno.EPERM, "the spool folder is not a folder of this user (use --spool-dir)", self.path
                ) from None
        self._take_lock()
        self._remove_spool_files()

    def _take_lock(self) -> None:
        """Hold the folder for this server's lifetime (workers inherit the descriptor)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolInUse(
                errno.EBUSY, "another shmchat server is using this spool folder", self.path
            ) from None
        self._lock_fd = fd

    def remove(self) -> None:
        """Remove the spool files, and the folder if nothing else is in it."""
        if self._lock_fd < 0:
            return  # never clean up a folder this server did not hold
        self._remove_spool_files()
        os.close(self._lock_fd)
        self._lock_fd = -1
        os.close(self._ledger_fd)
        try:
            os.rmdir(self.path)
        except OSError:
            pass  # gone already, or it holds files that are not the spool's

    def _remove_spool_files(self) -> None:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        for name in names:
            if _SPOOL_FILE.match(name):
                remove_link(os.path.join(self.path, name))

    def upload_path(self, slot: int, generation: int, transfer: str) -> str:
        return os.path.join(self.path, f"up-{slot}-{generation}-{transfer}.part")

    def link_path(self, slot: int, generation: int, transfer: str) -> str:
        return os.path.join(self.path, f"to-{slot}-{generation}-{transfer}")

    def link_for(self, source: str, slot: int, generation: int, transfer: str) -> str:
        """Give one receiver its own name for a finished upload; return it (OSError if refused)."""
        link = self.link_path(slot, generation, transfer)
        _link(source, link)
        return link

    def reservation_path(self, upload: str, slot: int, generation: int, size: int) -> str:
        """``upload`` is the sender's ``slot-generation-transfer``, as in ``upload_path``."""
        return os.path.join(self.path, f"up-{upload}.for-{slot}-{generation}.size-{size}")

    @contextmanager
    def ledger_lock(self) -> Iterator[None]:
        """Hold the quota lock: one worker at a time reads the ledger and reserves.

        A POSIX record lock (``lockf``) belongs to a process, so it excludes the
        workers from each other although they share the memfd's open file
        description; ``flock`` belongs to that description and would not.
        """
        fcntl.lockf(self._ledger_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._ledger_fd, fcntl.LOCK_UN)

    def leftovers(self, slot: int, generation: int) -> list[str]:
        """Remove a departed slot's partial uploads and undelivered links.

        Returns the transfer ids of the links this call removed, whose senders
        are to be told (a link a sending worker removed first is its to report).
        """
        transfers = []
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        for name in names:
            path = os.path.join(self.path, name)
            match = LINK.match(name)
            if match and int(match["slot"]) == slot and int(match["gen"]) == generation:
                if remove_link(path):
                    transfers.append(f"{match['sender']}-{match['n']}")
            elif name.startswith((f"up-{slot}-{generation}-", f"to-{slot}-{generation}-")):
                remove_link(path)  # a partial upload, or a link already reported (REMOVED)
        return transfers


@dataclass
class Upload:
    """A file arriving from this worker's client."""

    transfer: str
    target: int
    group_id: int  # the group it goes to, or 0 for one client
    size: int
    sha256: str
    name: str
    path: str
    received: int = 0

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()
        self._fd = _open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, chunk: bytes | memoryview) -> None:
        if self.received + len(chunk) > self.size:
            raise ValueError(f"more bytes than the {self.size} announced")
        view = memoryview(chunk)
        while view:  # a full disk can cut a write short: never hash bytes not written
            view = view[_write(self._fd, view) :]
        self._hash.update(chunk)
        self.received += len(chunk)

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def finish(self) -> str | None:
        """Close the file; return None if it checks out, else the reason it does not."""
        os.close(self._fd)
        self._fd = -1
        digest = self._hash.hexdigest()
        if digest != self.sha256:
            return f"checksum mismatch (announced {self.sha256[:12]}..., received {digest[:12]}...)"
        return None

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        remove_link(self.path)


@dataclass
class Download:
    """A file being streamed from the spool to this worker's client."""

    transfer: str
    sender_id: int
    sender_slot: int
    group_id: int
    size: int
    sha256: str
    name: str
    path: str
    sent: int = 0
    started: bool = False

    def open(self) -> None:
        self._fd = _open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.started = True

    def read_into(self, buffer: memoryview) -> int:
        """Read the next piece into ``buffer`` (reused: no allocation); return its size."""
        want = min(len(buffer), self.size - self.sent)
        count = os.readv(self._fd, [buffer[:want]]) if want else 0
        if not count and self.sent < self.size:
            raise OSError(f"spool file ended after {self.sent} of {self.size} bytes")
        self.sent += count
        return count

    @property
    def complete(self) -> bool:
        return self.sent >= self.size

    def close(self) -> None:
        if self.started and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        remove_link(self.path)


def encode_file_notice(transfer: str, size: int, sha256: str, name: str, link: str) -> bytes:
    """Payload of a FILE record: what the receiving worker needs to stream it.

    ``surrogateescape``: the link is a path, and a ``--spool-dir`` need not be
    valid UTF-8; its bytes go through the record unchanged.
    """
    return "\0".join((transfer, str(size), sha256, link, name)).encode("utf-8", "surrogateescape")


def decode_file_notice(payload: bytes) -> tuple[str, int, str, str, str]:
    transfer, size, sha256, link, name = payload.decode("utf-8", "surrogateescape").split("\0", 4)
    return transfer, int(size), sha256, link, name


def encode_file_result(transfer: str, name: str, receiver: int, error: str | None) -> bytes:
    return "\0".join((transfer, name, str(receiver), error or "")).encode("utf-8")


def decode_file_result(payload: bytes) -> tuple[str, str, int, str | None]:
    # The name comes from the client and may itself hold NUL: split around it.
    transfer, rest = payload.decode("utf-8").split("\0", 1)
    name, receiver, error = rest.rsplit("\0", 2)
    return transfer, name, int(receiver), error or None
