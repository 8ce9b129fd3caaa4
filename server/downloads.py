"""Downloads: files streamed from the spool to this worker's client.

A FILE notice in the worker's mailbox names a link in the spool that is this
client's own copy.  The file goes out as a header line and ``/data`` frames,
one chunk at a time and only while the client keeps up (the output backlog is
under a low-water mark), so memory stays flat whatever the size.  When the
last byte has gone out, or the download fails, the link is removed and the
sender gets one result record (a delivery for the outbox).

A client that declared a download quota (``/downloadquota``, the shmchat
client's first line) is sent no file past what is left of it: the file is
refused before its header, the client is told in one line, and its sender
gets the result ``refused by the receiver: its download quota is full``.
Refusing here rather than in the client after the header keeps the verdict
exact: a small file can be wholly in the socket, and reported delivered,
before a "no" from the client could come back.
"""

from __future__ import annotations

import mmap
from collections import deque
from typing import Protocol

from protocol import replies
from protocol.framing import encode_line
from server.caller import Caller
from server.outbox import Delivery
from server.spool import CHUNK_BYTES, Download, decode_file_notice, encode_file_result
from shm.directory import Directory
from shm.layout import RecordKind
from shm.mailboxes import Posting, Record

#: Below this much unsent output, the next file chunk is read from the spool.
STREAM_LOW_WATER = 128 * 1024
#: Chunks one ``stream`` call may send straight to the socket before it returns.
STREAM_DIRECT_CHUNKS = 4


class Output(Protocol):
    """What a download needs of the worker's connection."""

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet taken by its socket."""
        ...

    @property
    def closed(self) -> bool: ...

    def say(self, line: str) -> None: ...

    def send_frame(self, header: bytes, body: memoryview) -> None: ...


class Downloads:
    def __init__(self, caller: Caller, directory: Directory) -> None:
        self.caller = caller
        self.directory = directory
        self.queue: deque[Download] = deque()
        #: Bytes of files the client will still save (``/downloadquota``); None: it set no limit.
        self.room: int | None = None
        self._view: memoryview | None = None  # chunks are read into it; made on first use

    def __bool__(self) -> bool:
        return bool(self.queue)

    def add(self, record: Record) -> None:
        """A FILE notice from the mailbox: queue the file behind the others."""
        transfer, size, sha256, link, name = decode_file_notice(record.payload)
        self.queue.append(
            Download(
                transfer, record.sender_id, record.sender_slot, record.group_id, size, sha256, name, link
            )
        )

    def stream(self, out: Output) -> list[Delivery]:
        """Queue the next chunks of the current download while the output is low.

        Returns the result records for senders whose files have ended.  A
        download whose last byte is queued ends only once the output has gone
        out: closing the last link of a big file frees its pages, long enough
        to hold up those last bytes.  After a few chunks straight to the socket
        it returns, so that the doorbell and the client's commands get their
        turn during a long download (EPOLLOUT brings the loop straight back).
        """
        results = []
        direct = STREAM_DIRECT_CHUNKS
        while self.queue and not out.closed:
            download = self.queue[0]
            if download.started and download.complete:
                if out.backlog:
                    break
                results += self.end(None)
                continue
            if out.backlog >= STREAM_LOW_WATER or (direct <= 0 and not out.backlog):
                break
            try:
                if not download.started:
                    if self.room is not None and download.size > self.room:
                        out.say(
                            replies.file_refused(
                                download.transfer, download.sender_id, download.name, download.size, self.room
                            )
                        )
                        results += self.end(replies.DOWNLOAD_QUOTA_FULL)
                        continue
                    if self.room is not None:
                        self.room -= download.size
                    download.open()
                    out.say(
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
                if self._view is None:  # idle workers never touch these pages
                    self._view = memoryview(mmap.mmap(-1, CHUNK_BYTES))
                size = download.read_into(self._view)
            except OSError as exc:
                if download.started:
                    out.say(replies.file_abort(download.transfer, "the server could not read the file"))
                results += self.end(f"server error: {exc.strerror or exc}")
                continue
            direct -= 1
            out.send_frame(encode_line(replies.data_frame(download.transfer, size)), self._view[:size])
        return results

    def end(self, error: str | None) -> list[Delivery]:
        """The current download is over: remove its link, and tell its sender how it went."""
        download = self.queue.popleft()
        download.close()
        sender = self.directory.find_client(download.sender_id)
        if sender is None:
            return []
        payload = encode_file_result(download.transfer, download.name, self.caller.client_id, error)
        record = Record(
            RecordKind.FILE_RESULT, self.caller.slot, self.caller.client_id, download.group_id, payload
        )
        return [Delivery(Posting(sender.slot, sender.generation, record), to_id=sender.client_id)]

    def end_all(self, flushed: bool) -> list[Delivery]:
        """The client is leaving: every sender is told (a file whose last bytes went out arrived)."""
        results = []
        while self.queue:
            download = self.queue[0]
            done = flushed and download.started and download.complete
            results += self.end(None if done else "it went offline")
        return results
