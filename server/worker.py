"""The worker: one forked process per client, a small ``epoll`` loop.

A worker waits, without polling, for two file descriptors: its client's
socket and its own doorbell.  From the socket it reads bytes, frames them
into lines (``protocol.framing``), parses commands (``protocol.commands``),
runs a handler (``server.handlers``) and posts the resulting records into
other clients' mailboxes, all lines of one read in one batch under one lock,
with one ring per receiver.  When its doorbell rings it takes its own mail
from the message table, renders it and writes it to its socket.

Flow control, so that nobody can stall anybody else:

* Output to the client goes through a buffer.  Past ``output_limit`` unread
  bytes the client is disconnected with a logged reason.
* A post into a full mailbox is kept, in order, in ``pending`` and retried
  when the receiver rings back; meanwhile this worker stops reading its own
  socket, so a flooding sender is slowed by TCP, not by dropping messages.
* File bodies are streamed from the spool a chunk at a time, only while the
  output buffer is nearly empty, so memory stays flat whatever the size.

The worker never returns to the parent's code: ``run`` ends in ``os._exit``
with a status from ``WorkerExit`` that tells the parent how the client left.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from functools import partial
from itertools import count

from protocol import commands, replies
from protocol.commands import CommandError, DataFrame, SendFile, StreamError
from protocol.framing import NEED_DATA, BadLine, Data, DataEnd, Line, LineFramer, encode_line, queue_unsent
from server import handlers
from server.config import ServerConfig
from server.doorbells import Doorbells
from server.handlers import Caller, Delivery
from server.transfers import (
    CHUNK_BYTES,
    Download,
    Spool,
    Upload,
    decode_file_notice,
    decode_file_result,
    encode_file_notice,
    encode_file_result,
)
from shm.directory import ClientInfo, GroupInfo
from shm.layout import RecordKind
from shm.mailboxes import Posting, PostResult, Record
from shm.segments import ServerIpc

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024
#: The read after a data frame: enough for the next frame's header line.
FRAME_HEADER_READ = 64
#: Seconds between updates of the slot's message counters in the client table.
COUNT_INTERVAL = 1.0
#: Below this much unsent output, the next file chunk is read from the spool.
STREAM_LOW_WATER = 128 * 1024
#: Chunks stream_files may send straight to the socket before the loop's next turn.
STREAM_DIRECT_CHUNKS = 4
#: Uploads one client may have in progress at once (each holds a spool file open).
MAX_OPEN_UPLOADS = 8
PR_SET_PDEATHSIG = 1


class WorkerExit(IntEnum):
    """A worker's exit status: how its client left."""

    QUIT = 0  # EXIT or /quit
    CONNECTION_LOST = 3  # the socket closed or failed
    TOO_SLOW = 4  # the client stopped reading and passed the output limit
    SHUTDOWN = 5  # the server is going down
    PROTOCOL_ERROR = 6  # the byte stream could not be followed any more
    CRASHED = 7  # an unexpected exception (a bug): logged with its traceback


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once, in the parent, at import: a CDLL made in each worker built a
# new ctypes class there, about 100 KiB of the worker's own memory.
_prctl = _find_prctl()


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux prctl)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(WorkerExit.SHUTDOWN)


class Worker:
    def __init__(
        self,
        caller: Caller,
        sock: socket.socket,
        ipc: ServerIpc,
        doorbells: Doorbells,
        spool: Spool,
        config: ServerConfig,
    ) -> None:
        self.caller = caller
        self.sock = sock
        self.ipc = ipc
        self.doorbells = doorbells
        self.spool = spool
        self.config = config
        self.framer = LineFramer()
        self.out = bytearray()
        self.pending: deque[Delivery] = deque()
        self.blocked = False  # pending posts found a full mailbox: wait for room
        self.exit: WorkerExit | None = None
        self.sent = self.received = 0
        self.uploads: dict[str, Upload] = {}
        self.frame_upload: Upload | None = None  # the upload the current raw run belongs to
        # Bytes of the current data frame still in the socket: read straight into
        # the upload (no framer copy) by read_socket.  See start_frame.
        self.frame_direct = 0
        self.frame_ended = False  # a frame just ended: the next read is a small one
        self._file_view: memoryview | None = None  # chunks of downloads are read into it
        # Reused for every read.  An anonymous mapping, not a bytearray: its pages
        # stay untouched (not resident) until a read that large actually comes.
        self._recv_buffer = mmap.mmap(-1, RECV_BYTES)
        self._recv_view = memoryview(self._recv_buffer)
        self.downloads: deque[Download] = deque()
        self._transfer_numbers = count(1)
        # epoll itself rather than ``selectors``: the loop turns once or twice per
        # message, and the selectors layer above epoll cost about a microsecond a turn.
        self.poller = select.epoll()
        self._interest = select.EPOLLIN  # what the socket is registered for (0: not at all)
        self._counted_at = 0.0

    # -- the loop ----------------------------------------------------------------

    def run(self) -> WorkerExit:
        self.sock.setblocking(False)
        bell = self.doorbells.fileno(self.caller.slot)
        self.poller.register(self.sock, select.EPOLLIN)
        self.poller.register(bell, select.EPOLLIN)
        online = len(self.ipc.directory.online())
        self.say(replies.welcome(self.caller.client_id, online))
        self.take_mail()
        while self.exit is None:
            self.update_interest()
            for fd, events in self.poller.poll():
                if fd == bell:
                    self.doorbells.clear(self.caller.slot)
                    self.take_mail()
                    if self.blocked:  # the mailbox we were waiting for may have room now
                        self.flush_pending()
                else:  # a hang-up or an error is reported to both, as selectors did
                    if events & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
                        self.write_some()
                    if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and self.exit is None:
                        self.read_socket()
            self.pump_output()
            if self.framer.buffered and not self.blocked and self.exit is None:
                # The one place input resumes after a flush outside process_input
                # (a doorbell, a finished download's result) found room again.
                self.process_input()
            self.check_backlog()
            self.count_traffic()
        self.finish()
        return self.exit

    def update_interest(self) -> None:
        events = 0
        # Stop reading while posts are waiting for room: the sender slows down.
        if not self.blocked:
            events |= select.EPOLLIN
        if self.out or self.downloads:  # a download goes on as soon as the socket takes more
            events |= select.EPOLLOUT
        if events == self._interest:
            return  # unchanged: no epoll_ctl call
        if events == 0:
            # Nothing to read or write: wait for the doorbell only.
            self.poller.unregister(self.sock)
        elif self._interest == 0:
            self.poller.register(self.sock, events)
        else:
            self.poller.modify(self.sock, events)
        self._interest = events

    # -- socket input --------------------------------------------------------------

    def read_socket(self) -> None:
        # Inside a data frame, read no further than its end: those bytes are all file.
        # Right after one, read just a line's worth: most likely the next frame's
        # header, so that its bytes too come straight from the socket, not through
        # the framer (whose copies of large blocks cost more than the reads).
        if self.frame_direct:
            want = min(self.frame_direct, RECV_BYTES)
        else:
            want = FRAME_HEADER_READ if self.frame_ended else RECV_BYTES
        self.frame_ended = False
        try:
            size = self.sock.recv_into(self._recv_buffer, want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("client %d: connection error: %s", self.caller.client_id, exc)
            self.exit = WorkerExit.CONNECTION_LOST
            return
        if not size:
            self.exit = WorkerExit.CONNECTION_LOST
            return
        if self.frame_direct:
            self.frame_direct -= size
            self.upload_chunk(self._recv_view[:size])
            if not self.frame_direct:
                self.frame_upload = None
                self.frame_ended = True
            self.flush_pending()
            return
        self.framer.feed(self._recv_view[:size])
        self.process_input()

    def process_input(self) -> None:
        """Handle every complete line buffered, then post the batch.

        Stops early while posts are blocked on a full mailbox; the rest stays
        in the framer until the receiver makes room and rings back.
        """
        drained = False  # every complete line buffered has been handled
        while self.exit is None and not drained:
            while self.exit is None and not self.blocked:
                event = self.framer.next_event()
                if event is NEED_DATA:
                    drained = True
                    break
                if isinstance(event, Line):
                    self.handle_line(event.text)
                elif isinstance(event, BadLine):
                    self.say(replies.error(event.reason))
                elif isinstance(event, Data):
                    self.upload_chunk(event.chunk)
                elif isinstance(event, DataEnd) and not self.frame_direct:  # else it goes on, from the socket
                    self.frame_upload = None
                self.flush_pending_if_large()
            self.flush_pending()
            # If that flush found room after all, the lines left behind must be
            # handled now: no doorbell will come for them, and the client may be
            # waiting for their answers before it sends anything else.
            if self.blocked:
                break

    def handle_line(self, line: str) -> None:
        try:
            request = commands.parse(line)
        except StreamError as exc:
            # Raw bytes of unknown length follow a bad frame header: they would
            # be read as commands.  The stream cannot be followed any more.
            log.info("client %d: bad data frame header; closing", self.caller.client_id)
            self.say(replies.bye(f"{exc}; the byte stream cannot be followed, closing the connection"))
            self.exit = WorkerExit.PROTOCOL_ERROR
            return
        except CommandError as exc:
            self.say(replies.error(str(exc)))
            return
        if isinstance(request, SendFile):
            self.start_upload(request)
            return
        if isinstance(request, DataFrame):
            self.start_frame(request)
            return
        outcome = handlers.handle(self.caller, request, self.ipc)
        for line_out in outcome.replies:
            self.say(line_out)
        self.pending.extend(outcome.deliveries)
        if outcome.quit:
            self.exit = WorkerExit.QUIT

    # -- mail ------------------------------------------------------------------------

    def flush_pending_if_large(self) -> None:
        if len(self.pending) >= 256:
            self.flush_pending()

    def flush_pending(self) -> None:
        """Post what is pending in one batch; keep what did not fit, in order."""
        if not self.pending:
            self.blocked = False
            return
        batch = list(self.pending)
        results = self.ipc.messages.post([d.posting for d in batch])
        self.pending.clear()
        rung = set()
        for delivery, result in zip(batch, results, strict=True):
            if result is PostResult.DELIVERED:
                self.sent += 1
                rung.add(delivery.posting.slot)
            elif result is PostResult.GONE:
                if delivery.on_gone is not None:
                    self.say(delivery.on_gone())
                self.undeliverable(delivery.posting.record)
            else:
                self.pending.append(delivery)
        for slot in rung:
            self.doorbells.ring(slot)
        self.blocked = bool(self.pending)

    def undeliverable(self, record: Record) -> None:
        """A FILE record whose receiver left before it could be posted."""
        if record.kind is RecordKind.FILE:
            _transfer, _size, _sha, link, _name = decode_file_notice(record.payload)
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass

    def take_mail(self) -> None:
        records, waiters = self.ipc.messages.take(self.caller.slot, self.caller.generation)
        for slot in waiters:
            self.doorbells.ring(slot)
        for record in records:
            self.received += 1
            self.render(record)

    def render(self, record: Record) -> None:
        text = record.payload.decode("utf-8", "replace")
        kind = record.kind
        if kind is RecordKind.PRIVATE:
            self.say(replies.private(record.sender_id, text))
        elif kind is RecordKind.BROADCAST:
            self.say(replies.broadcast(record.sender_id, text))
        elif kind is RecordKind.GROUP:
            self.say(replies.group_message(record.group_id, record.sender_id, text))
        elif kind is RecordKind.NOTICE:
            self.say(text)
        elif kind is RecordKind.BOUNCE:
            self.say(replies.bounced(record.sender_id, text))
        elif kind is RecordKind.FILE:
            transfer, size, sha256, link, name = decode_file_notice(record.payload)
            self.downloads.append(
                Download(
                    transfer, record.sender_id, record.sender_slot, record.group_id, size, sha256, name, link
                )
            )
        elif kind is RecordKind.FILE_RESULT:
            transfer, name, receiver, error = decode_file_result(record.payload)
            label = f"file {transfer} '{name}'" if name else f"file {transfer}"  # the parent may not know it
            if error is None:
                self.say(replies.ok(f"{label} delivered to {receiver}"))
            else:
                self.say(replies.error(f"{label} not delivered to {receiver}: {error}"))
        elif kind is RecordKind.SHUTDOWN:
            self.say(replies.shutting_down())
            self.exit = WorkerExit.SHUTDOWN

    # -- uploads (this client sends a file) -------------------------------------------------

    def start_upload(self, request: SendFile) -> None:
        name = request.name
        refusal = self.check_upload(request)
        if isinstance(refusal, str):
            self.say(replies.upload_refused(name, refusal))
            return
        transfer = f"{self.caller.client_id}-{next(self._transfer_numbers)}"
        group_id = refusal.group_id if isinstance(refusal, GroupInfo) else 0
        try:
            upload = Upload(
                transfer,
                request.target,
                group_id,
                request.size,
                request.sha256,
                name,
                self.spool.upload_path(self.caller.slot, self.caller.generation, transfer),
            )
        except OSError as exc:
            log.warning("client %d: cannot spool an upload: %s", self.caller.client_id, exc)
            self.say(replies.upload_refused(name, f"the server cannot store it now ({exc.strerror or exc})"))
            return
        self.uploads[transfer] = upload
        self.say(replies.upload_ready(transfer, request.size, name))
        if upload.complete:  # a 0-byte file has no data frames
            self.finish_upload(upload)

    def check_upload(self, request: SendFile) -> str | ClientInfo | GroupInfo:
        """The receiver of a proposed upload, or why it is refused."""
        if len(self.uploads) >= MAX_OPEN_UPLOADS:
            return f"{MAX_OPEN_UPLOADS} uploads are already in progress; send this one when one is done"
        if request.size > self.config.max_file_size:
            return f"{request.size} bytes is over the server's limit of {self.config.max_file_size} bytes"
        if request.target == self.caller.client_id:
            return "that is your own id"
        target = self.ipc.directory.resolve(request.target)
        if target is None:
            return f"{request.target} is neither an online client nor a group"
        if isinstance(target, GroupInfo):
            if self.caller.client_id not in target.members:
                return f"you are not a member of group {target.group_id}"
            if len(target.members) < 2:
                return f"you are the only member of group {target.group_id}"
        return target

    def start_frame(self, frame: DataFrame) -> None:
        upload = self.uploads.get(frame.transfer)
        # What the framer already holds goes through it; the rest of the frame is
        # read from the socket straight into the upload (read_socket).
        buffered = min(frame.size, self.framer.buffered)
        self.framer.expect_raw(buffered)
        self.frame_direct = frame.size - buffered
        if upload is None:
            self.frame_upload = None  # the bytes are skipped
            self.say(
                replies.error(f"/data: no upload {frame.transfer} in progress; {frame.size} bytes skipped")
            )
            return
        self.frame_upload = upload

    def upload_chunk(self, chunk: bytes) -> None:
        upload = self.frame_upload
        if upload is None or upload.transfer not in self.uploads:
            return
        try:
            upload.write(chunk)
        except (ValueError, OSError) as exc:
            self.fail_upload(upload, str(exc))
            self.frame_upload = None
            return
        if upload.complete:
            self.finish_upload(upload)

    def fail_upload(self, upload: Upload, reason: str) -> None:
        upload.discard()
        self.uploads.pop(upload.transfer, None)
        self.say(
            replies.error(f"file {upload.transfer} '{upload.name}' upload failed: {reason}; nothing was sent")
        )

    def finish_upload(self, upload: Upload) -> None:
        """Check the upload, then link it once per receiver and post the notices."""
        self.uploads.pop(upload.transfer, None)
        problem = upload.finish()
        if problem is not None:
            upload.discard()
            self.say(
                replies.error(
                    f"file {upload.transfer} '{upload.name}' upload failed: {problem}; nothing was sent"
                )
            )
            return
        online = self.ipc.directory.online_by_id()
        if upload.group_id:
            try:
                group = self.ipc.directory.group_for_sender(upload.group_id, self.caller.client_id)
            except Exception as exc:  # GroupError: the sender left the group meanwhile
                upload.discard()
                self.say(replies.error(f"file {upload.transfer} '{upload.name}' not sent: {exc}"))
                return
            receivers = [online[m] for m in group.members if m in online and m != self.caller.client_id]
        else:
            receivers = [online[upload.target]] if upload.target in online else []
        names = []
        for receiver in receivers:
            link = self.spool.link_path(receiver.slot, receiver.generation, upload.transfer)
            os.link(upload.path, link)
            payload = encode_file_notice(upload.transfer, upload.size, upload.sha256, upload.name, link)
            record = Record(
                RecordKind.FILE, self.caller.slot, self.caller.client_id, upload.group_id, payload
            )
            gone = f"file {upload.transfer} '{upload.name}' not delivered to {receiver.client_id}: offline"
            self.pending.append(
                Delivery(Posting(receiver.slot, receiver.generation, record), partial(replies.error, gone))
            )
            names.append(str(receiver.client_id))
        upload.discard()  # the receivers' links keep the data
        if names:
            self.say(
                replies.ok(
                    f"file {upload.transfer} '{upload.name}' uploaded ({upload.size} bytes); "
                    f"delivering to {', '.join(names)}"
                )
            )
        else:
            self.say(
                replies.error(
                    f"file {upload.transfer} '{upload.name}' not sent: nobody to deliver it to is online"
                )
            )

    # -- downloads (this client receives a file) ----------------------------------------

    def pump_output(self) -> None:
        """Write what is queued now, and keep file streams moving while the socket takes it.

        Writing at once, instead of waiting for EPOLLOUT, saves a loop and two
        epoll_ctl calls per message.  After a bounded number of chunks the rest
        is left queued, so that EPOLLOUT brings the loop back and the doorbell
        and the client's commands get their turn during a long download.
        """
        for _ in range(16):
            self.stream_files()
            if not self.out:
                return
            self.write_some()
            if self.out or self.exit is not None:
                return  # the socket is full: EPOLLOUT will bring the loop back
        self.stream_files()

    def stream_files(self) -> None:
        """Queue the next chunk of the current download when the output is low.

        A download whose last byte is queued ends (its link closed, the sender
        told) only once the output has gone out: closing the last link of a big
        file frees its pages, long enough to hold up those last bytes.
        """
        # After a few chunks straight to the socket, return: the loop watches for
        # EPOLLOUT while a download is on (update_interest), so it comes straight
        # back, and the doorbell and the client's commands get their turn.
        direct = STREAM_DIRECT_CHUNKS
        while self.downloads and self.exit is None:
            download = self.downloads[0]
            if download.started and download.complete:
                if self.out:
                    return
                self.end_download(download, None)
                continue
            if len(self.out) >= STREAM_LOW_WATER or (direct <= 0 and not self.out):
                return
            try:
                if not download.started:
                    download.open()
                    self.say(
                        replies.file_header(
                            download.transfer,
                            download.sender_id,
                            download.group_id,
                            download.size,
                            download.sha256,
                            download.name,
                        )
                    )
                    continue  # a 0-byte file is complete at once: it ends above
                if self._file_view is None:  # made on first use: idle workers never touch it
                    self._file_view = memoryview(mmap.mmap(-1, CHUNK_BYTES))
                size = download.read_into(self._file_view)
            except OSError as exc:
                if download.started:
                    self.say(replies.file_abort(download.transfer, "the server could not read the file"))
                self.end_download(download, f"server error: {exc.strerror or exc}")
                continue
            direct -= 1
            self.send_frame(encode_line(replies.data_frame(download.transfer, size)), self._file_view[:size])

    def send_frame(self, header: bytes, body: memoryview) -> None:
        """Queue one data frame: straight to the socket if nothing is queued before it.

        Only what the socket does not take is copied into ``out``, so a download
        moves from the spool to the socket without a new buffer per chunk.
        """
        sent = 0
        if not self.out:
            try:
                sent = self.sock.sendmsg([header, body])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.write_failed(exc)
                return
        queue_unsent(self.out, header, body, sent)

    def end_download(self, download: Download, error: str | None) -> None:
        self.downloads.popleft()
        download.close()
        sender = self.ipc.directory.find_client(download.sender_id)
        if sender is None:
            return
        payload = encode_file_result(download.transfer, download.name, self.caller.client_id, error)
        record = Record(
            RecordKind.FILE_RESULT, self.caller.slot, self.caller.client_id, download.group_id, payload
        )
        self.pending.append(Delivery(Posting(sender.slot, sender.generation, record)))
        self.flush_pending()

    # -- output ----------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.out += encode_line(line.replace("\n", " "))
        if len(self.out) > 64 * 1024:
            self.write_some()

    def write_some(self) -> None:
        if not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.write_failed(exc)
            return
        del self.out[:sent]

    def write_failed(self, exc: OSError) -> None:
        """The client's socket refused a write: the session is over."""
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            log.info("client %d: write failed: %s", self.caller.client_id, exc)
        self.exit = WorkerExit.CONNECTION_LOST
        self.out.clear()

    def check_backlog(self) -> None:
        if self.exit is None and len(self.out) > self.config.output_limit:
            log.warning(
                "client %d stopped reading: %d bytes of output backlog (limit %d); disconnecting",
                self.caller.client_id,
                len(self.out),
                self.config.output_limit,
            )
            self.out.clear()
            self.exit = WorkerExit.TOO_SLOW

    def count_traffic(self, force: bool = False) -> None:
        """Add this worker's message counts to its row, at most once a second.

        The counters are statistics for the inspector; taking the directory
        lock for them after every message cost more than the message itself.
        """
        if not (self.sent or self.received):
            return
        now = time.monotonic()
        if not force and now - self._counted_at < COUNT_INTERVAL:
            return
        self._counted_at = now
        self.ipc.directory.count_traffic(self.caller.slot, self.sent, self.received)
        self.sent = self.received = 0

    def finish(self) -> None:
        """Say goodbye within a short time, release files, close the socket."""
        self.flush_pending()
        for upload in list(self.uploads.values()):
            upload.discard()
        flushed = not self.out
        if self.exit is not WorkerExit.TOO_SLOW and self.out:
            try:
                self.sock.settimeout(1.0)
                self.sock.sendall(self.out)
                flushed = True
            except OSError:
                pass
        # Tell each sender whether its file arrived (closing removes the link the
        # parent would otherwise have found; it reports only for dead workers).
        # A file whose last bytes just went out above did arrive.
        while self.downloads:
            download = self.downloads[0]
            done = flushed and download.started and download.complete
            self.end_download(download, None if done else "it went offline")
        self.count_traffic(force=True)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def run_worker(
    caller: Caller,
    sock: socket.socket,
    ipc: ServerIpc,
    doorbells: Doorbells,
    spool: Spool,
    config: ServerConfig,
    parent_pid: int,
) -> None:
    """Entry point in the forked child; never returns."""
    status = WorkerExit.CRASHED
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        die_with_parent(parent_pid)
        status = Worker(caller, sock, ipc, doorbells, spool, config).run()
    except BaseException:
        log.exception("worker of client %d crashed", caller.client_id)
    finally:
        logging.shutdown()
        os._exit(int(status))
