"""The spool's ledger: what waits in the spool for whom, and room reserved for uploads.

Finished uploads wait in the spool until their receivers have read them, so
one student sending to a client that never reads could fill the server's
disk.  Two quotas bound it, ``--spool-quota`` for the spool as a whole and
``--spool-quota-per-receiver`` for what waits for one receiver, checked at
``/sendfile`` from the announced size, before a byte is sent.

The ledger is the spool folder itself.  What waits for a receiver is its
links (``to-RS-RG-...``); what an upload in progress will need is reserved
when the worker says ``ready``, as one empty file per receiver whose name
holds the size (``up-S-G-T.for-RS-RG.size-N``).  Reading the folder and
writing the reservations is one step under the spool's lock
(``Spool.ledger_lock``), so two uploads that start at the same moment cannot
both pass a check that only one of them fits.  A reservation is named after
its sender, like its partial upload, so the parent's cleanup of a departed
worker removes both: a SIGKILL leaves nothing counted that should not be.
A file its receiver has read has lost its link, and no longer counts.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

from server.spool import LINK, RESERVATION, Spool

log = logging.getLogger(__name__)


@dataclass
class Reservation:
    """What ``reserve`` could reserve for an upload, and for whom it could not."""

    paths: dict[int, str] = field(default_factory=dict)  # receiver id -> its reservation file
    refused: dict[int, str] = field(default_factory=dict)  # receiver id -> why it has no room
    full: str | None = None  # why nothing could be reserved: the spool as a whole is full

    def release(self) -> None:
        """Remove the reservation files (the upload failed, or its links now count instead)."""
        for path in self.paths.values():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # counted until its sender leaves, when the parent removes it
                log.warning("cannot remove spool reservation %s: %s", path, exc)
        self.paths.clear()


def usage(spool: Spool) -> tuple[int, dict[tuple[int, int], int]]:
    """Bytes the spool holds or has promised: in all, and per receiver (slot, generation).

    A receiver's share is its links plus the reservations naming it.  In all,
    a file linked for several receivers counts once (one inode), and so does
    an upload reserved for several.  A partial upload is not counted: its
    reservations stand for it.  (Links and reservations overlap for a moment
    while a finished upload is linked: an upload may then be refused that
    would just fit, never the other way round.)
    """
    total = 0
    by_receiver: dict[tuple[int, int], int] = defaultdict(int)
    inodes: set[int] = set()
    uploads: set[str] = set()
    try:
        names = os.listdir(spool.path)
    except FileNotFoundError:
        return 0, by_receiver
    for name in names:
        if reserved := RESERVATION.match(name):
            size = int(reserved["size"])
            by_receiver[int(reserved["slot"]), int(reserved["gen"])] += size
            if reserved["upload"] not in uploads:
                uploads.add(reserved["upload"])
                total += size
        elif link := LINK.match(name):
            try:
                info = os.lstat(os.path.join(spool.path, name))
            except FileNotFoundError:
                continue  # its download ended meanwhile
            by_receiver[int(link["slot"]), int(link["gen"])] += info.st_size
            if info.st_ino not in inodes:
                inodes.add(info.st_ino)
                total += info.st_size
    return total, by_receiver


def reserve(spool: Spool, upload: str, size: int, receivers: list[tuple[int, int, int]]) -> Reservation:
    """Reserve ``size`` bytes for each receiver (id, slot, generation) that has room.

    ``upload`` is the sender's ``slot-generation-transfer``.  Over the total
    quota nothing is reserved (``full`` says why); a receiver over its own
    quota is left out (``refused`` says why).
    """
    reservation = Reservation()
    quotas = spool.quotas
    with spool.ledger_lock():
        total, by_receiver = usage(spool)
        if total + size > quotas.total:
            reservation.full = (
                f"the server's spool is full ({total} bytes waiting or reserved, "
                f"{quotas.total} at most); try again once receivers have read their files"
            )
            return reservation
        for client_id, slot, generation in receivers:
            waiting = by_receiver[slot, generation]
            if waiting + size > quotas.per_receiver:
                reservation.refused[client_id] = (
                    f"{client_id} already has {waiting} bytes waiting in the spool "
                    f"({quotas.per_receiver} at most per receiver); try again once it has read them"
                )
                continue
            path = spool.reservation_path(upload, slot, generation, size)
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                reservation.release()
                reservation.full = f"the server cannot store it now ({exc.strerror or exc})"
                return reservation
            reservation.paths[client_id] = path
    return reservation
