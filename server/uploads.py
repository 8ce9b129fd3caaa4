"""Uploads: files arriving from this worker's client, on their way to the spool.

``/sendfile`` is checked (size, receiver, group membership, room in the
spool's quotas, which it reserves), answered with a go-ahead, and then fed
by ``/data`` frames.  The bytes go straight into a
spool file while they are hashed; when the last one is in and the SHA-256
checks out, each receiver gets its own hard link and a FILE notice is queued
for it.  Everything here returns lines for the client and deliveries for the
outbox, like the command handlers, so it can be tested without a socket.

What the operating system can refuse, and what the client is told then:
opening the spool file (the upload is refused), a write (ENOSPC: the upload
fails, nothing is sent), a link for one receiver (that receiver's result
line says why; the others still get the file).  None of these ends the
worker.
"""

from __future__ import annotations

import logging
from functools import partial
from itertools import count

from protocol import replies
from protocol.commands import DataFrame, SendFile
from server.caller import Caller
from server.ledger import Reservation, reserve
from server.outbox import Delivery
from server.outcome import Outcome
from server.spool import Spool, Upload, encode_file_notice, remove_link
from shm.directory import ClientInfo, Directory, GroupError, GroupInfo
from shm.layout import RecordKind
from shm.mailboxes import Posting, Record

log = logging.getLogger(__name__)

#: Uploads one client may have in progress at once (each holds a spool file open).
MAX_OPEN_UPLOADS = 8


def _notice_gone(link: str, label: str, receiver: int, why: str) -> str | None:
    """A file notice that will not be posted: remove the link, and report it if ours to."""
    if not remove_link(link):
        return None  # the parent removed it first, and has told the sender already
    return replies.error(f"{label} not delivered to {receiver}: {why}")


class Uploads:
    def __init__(self, caller: Caller, directory: Directory, spool: Spool, max_file_size: int) -> None:
        self.caller = caller
        self.directory = directory
        self.spool = spool
        self.max_file_size = max_file_size
        self.open: dict[str, Upload] = {}
        #: The spool room each upload in progress holds, until its links take over.
        self.reserved: dict[str, Reservation] = {}
        #: The upload the current data frame's bytes go to (None: they are skipped).
        self.current: Upload | None = None
        self._numbers = count(1)

    def start(self, request: SendFile) -> Outcome:
        """Answer a ``/sendfile`` header: a go-ahead, or why not.

        The announced size is reserved in the spool for each receiver before
        the go-ahead (``ledger.reserve``): past a quota the sender is told now,
        before it sends a byte.
        """
        name = request.name
        target = self._receiver_of(request)
        if isinstance(target, str):
            return Outcome(replies=[replies.upload_refused(name, target)])
        transfer = f"{self.caller.client_id}-{next(self._numbers)}"
        group_id = target.group_id if isinstance(target, GroupInfo) else 0
        receivers = self._receivers_now(target)
        if not receivers:
            return Outcome(replies=[replies.upload_refused(name, "nobody to deliver it to is online")])
        slot, generation = self.caller.slot, self.caller.generation
        reservation = reserve(
            self.spool,
            f"{slot}-{generation}-{transfer}",
            request.size,
            [(r.client_id, r.slot, r.generation) for r in receivers],
        )
        if not reservation.paths:
            why = reservation.full or _nobody_has_room(target, reservation)
            return Outcome(replies=[replies.upload_refused(name, why)])
        path = self.spool.upload_path(slot, generation, transfer)
        try:
            upload = Upload(transfer, request.target, group_id, request.size, request.sha256, name, path)
        except OSError as exc:
            reservation.release()
            log.warning("client %d: cannot spool an upload: %s", self.caller.client_id, exc)
            why = f"the server cannot store it now ({exc.strerror or exc})"
            return Outcome(replies=[replies.upload_refused(name, why)])
        self.open[transfer] = upload
        self.reserved[transfer] = reservation
        out = Outcome(replies=[replies.upload_ready(transfer, request.size, name)])
        label = _label(upload)
        out.replies += [
            replies.error(f"{label} not delivered to {r}: {why}") for r, why in reservation.refused.items()
        ]
        if upload.complete:  # a 0-byte file has no data frames
            self._finish(upload, out)
        return out

    def _receivers_now(self, target: ClientInfo | GroupInfo) -> list[ClientInfo]:
        """Who would get the file if it were whole now: the client, or the group's other online members."""
        if isinstance(target, ClientInfo):
            return [target]
        online = self.directory.online_by_id()
        return [online[m] for m in target.members if m in online and m != self.caller.client_id]

    def _receiver_of(self, request: SendFile) -> str | ClientInfo | GroupInfo:
        """The receiver of a proposed upload, or why it is refused."""
        if len(self.open) >= MAX_OPEN_UPLOADS:
            return f"{MAX_OPEN_UPLOADS} uploads are already in progress; send this one when one is done"
        if request.size > self.max_file_size:
            return f"{request.size} bytes is over the server's limit of {self.max_file_size} bytes"
        if request.target == self.caller.client_id:
            return "that is your own id"
        target = self.directory.resolve(request.target)
        if target is None:
            return f"{request.target} is neither an online client nor a group"
        if isinstance(target, GroupInfo):
            if self.caller.client_id not in target.members:
                return f"you are not a member of group {target.group_id}"
            if len(target.members) < 2:
                return f"you are the only member of group {target.group_id}"
        return target

    def open_frame(self, frame: DataFrame) -> Outcome:
        """A ``/data`` header: route the frame's bytes to its upload, or skip them."""
        self.current = self.open.get(frame.transfer)
        if self.current is not None:
            return Outcome()
        why = f"/data: no upload {frame.transfer} in progress; {frame.size} bytes skipped"
        return Outcome(replies=[replies.error(why)])

    def close_frame(self) -> None:
        self.current = None

    def write(self, chunk: bytes | memoryview) -> Outcome:
        """Bytes of the current frame: into the spool; the notices once the file is whole."""
        upload = self.current
        out = Outcome()
        if upload is None or upload.transfer not in self.open:
            return out
        try:
            upload.write(chunk)
        except (ValueError, OSError) as exc:  # more bytes than announced, or the disk refused them
            self._fail(upload, str(exc), out)
            self.current = None
            return out
        if upload.complete:
            self._finish(upload, out)
        return out

    def discard_all(self) -> None:
        """The client left: partial uploads go."""
        for upload in list(self.open.values()):
            self._drop(upload)
        self.open.clear()
        self.current = None

    def _drop(self, upload: Upload) -> None:
        """The upload's spool file goes, and the room it held (its links, if any, now count)."""
        upload.discard()
        self.reserved.pop(upload.transfer).release()

    def _fail(self, upload: Upload, reason: str, out: Outcome) -> None:
        self._drop(upload)
        self.open.pop(upload.transfer, None)
        out.replies.append(replies.error(f"{_label(upload)} upload failed: {reason}; nothing was sent"))

    def _finish(self, upload: Upload, out: Outcome) -> None:
        """Check the upload, then link it once per receiver and queue the notices."""
        self.open.pop(upload.transfer, None)
        try:
            problem = upload.finish()
        except OSError as exc:  # close() can report a delayed write error (NFS, quotas)
            problem = f"the server could not store it ({exc.strerror or exc})"
        if problem is not None:
            self._drop(upload)
            out.replies.append(replies.error(f"{_label(upload)} upload failed: {problem}; nothing was sent"))
            return
        receivers = self._receivers(upload, out)
        if receivers is None:
            self._drop(upload)
            return
        label = _label(upload)
        names = []
        failures = []
        for receiver in receivers:
            try:
                link = self.spool.link_for(upload.path, receiver.slot, receiver.generation, upload.transfer)
            except OSError as exc:  # ENOSPC, EMLINK, the spool file vanished...
                log.warning("client %d: cannot link %s for %d: %s", *self._who(upload, receiver), exc)
                why = f"the server could not store a copy ({exc.strerror or exc})"
                failures.append(replies.error(f"{label} not delivered to {receiver.client_id}: {why}"))
                continue
            payload = encode_file_notice(upload.transfer, upload.size, upload.sha256, upload.name, link)
            record = Record(
                RecordKind.FILE, self.caller.slot, self.caller.client_id, upload.group_id, payload
            )
            posting = Posting(receiver.slot, receiver.generation, record)
            on_gone = partial(_notice_gone, link, label, receiver.client_id)
            out.deliveries.append(Delivery(posting, on_gone, receiver.client_id))
            names.append(str(receiver.client_id))
        self._drop(upload)  # the receivers' links keep the data, and count for them
        if names:
            out.replies.append(
                replies.ok(f"{label} uploaded ({upload.size} bytes); delivering to {', '.join(names)}")
            )
        elif not receivers:
            out.replies.append(replies.error(f"{label} not sent: nobody to deliver it to is online"))
        out.replies += failures  # one result line for each receiver that cannot have it

    def _receivers(self, upload: Upload, out: Outcome) -> list[ClientInfo] | None:
        """Who gets the finished upload now (None: it cannot be sent, and ``out`` says why).

        Those it was reserved for, if still online (and still in the group): a
        member who joined during the upload was not there when it was sent,
        as with group messages, and has no room reserved.
        """
        online = self.directory.online_by_id()
        reserved = self.reserved[upload.transfer].paths
        if not upload.group_id:
            return [online[upload.target]] if upload.target in online and upload.target in reserved else []
        try:
            group = self.directory.group_for_sender(upload.group_id, self.caller.client_id)
        except GroupError as exc:  # the sender left the group, or it was dissolved, meanwhile
            out.replies.append(replies.error(f"{_label(upload)} not sent: {exc}"))
            return None
        return [online[m] for m in group.members if m in online and m in reserved]

    def _who(self, upload: Upload, receiver: ClientInfo) -> tuple[int, str, int]:
        return self.caller.client_id, upload.transfer, receiver.client_id


def _nobody_has_room(target: ClientInfo | GroupInfo, reservation: Reservation) -> str:
    """Why a file none of whose receivers has room in the spool is refused."""
    if isinstance(target, ClientInfo) or len(reservation.refused) == 1:
        return next(iter(reservation.refused.values()))
    return (
        f"no member of group {target.group_id} has room for it in the spool; "
        "try again once they have read their files"
    )


def _label(upload: Upload) -> str:
    return f"file {upload.transfer} '{upload.name}'"
