"""One client connection, with no terminal code: the engine both modes share.

``ClientSession`` owns the socket's byte streams.  Inbound, it frames lines,
recognises file headers and data frames and writes downloads to disk;
everything else is handed to ``emit`` as a server line.  Outbound, it sends
typed lines, and turns ``/sendfile <id> <path>`` into the upload protocol:
a header line, the server's go-ahead, then data frames interleaved with
whatever else is typed, paced so that memory stays flat.

The caller runs the loop, in one thread (line mode with ``selectors`` on
stdin and the socket, interactive mode with the socket registered on
prompt_toolkit's asyncio loop): it calls ``on_readable`` and ``on_writable``
when the socket is ready and watches ``wants_write``.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from client.files import CHUNK_BYTES, IncomingFile, OutgoingFile, safe_name, sha256_of
from protocol import commands, replies
from protocol.controls import find_refused
from protocol.framing import NEED_DATA, BadLine, Data, DataEnd, Line, LineFramer, encode_line, queue_unsent

RECV_BYTES = 256 * 1024
SEND_LOW_WATER = 256 * 1024
#: Frames pump_uploads may send straight to the socket before the caller's loop turns.
SEND_DIRECT_CHUNKS = 4


@dataclass(frozen=True)
class Progress:
    """A snapshot of one file transfer, for progress bars."""

    direction: str  # "up" or "down"
    name: str
    done: int
    total: int


class ClientSession:
    def __init__(
        self,
        sock: socket.socket,
        download_dir: str,
        emit: Callable[[str], None],
        progress: Callable[[Progress], None] | None = None,
        download_quota: int | None = None,
    ) -> None:
        self.sock = sock
        self.download_dir = download_dir
        self.emit = emit
        self.progress = progress or (lambda _p: None)
        self.framer = LineFramer(max_line=commands.MAX_DATA_FRAME)
        self.out = bytearray()
        self.awaiting_ready: deque[OutgoingFile] = deque()
        self.uploading: deque[OutgoingFile] = deque()
        self.downloads: dict[str, IncomingFile | None] = {}  # None: a failed one, its frames skipped
        self.data_target: IncomingFile | None = None  # the download the current data frame is for
        self._file_view: memoryview | None = None  # chunks of uploads are read into it
        self._recv_buffer = bytearray(RECV_BYTES)  # reused: no allocation per read
        self._recv_view = memoryview(self._recv_buffer)
        self.closed = False
        self.said_goodbye = False  # the server ended the session politely
        self.refused = False  # Connection Limit Exceeded !!
        self.my_id: int | None = None
        self.quit_sent = False
        #: Bytes of files still to be saved (--download-quota); None: no limit.
        self.download_room = download_quota
        if download_quota is not None:
            # The first line, read before the server starts any file: it refuses
            # a file past the quota for us, before its header (server/downloads.py).
            self.out += encode_line(commands.format_download_quota(download_quota))

    # -- outbound ---------------------------------------------------------------

    def send_user_line(self, line: str) -> None:
        """Send what the person typed; /sendfile with a path is handled here."""
        line = line.rstrip("\r\n")
        words = line.split(maxsplit=2)
        if words and words[0].lower() == "/sendfile" and not self._is_wire_sendfile(line):
            self.start_upload(words[1:])
            return
        refused = find_refused(line)
        if refused is not None:  # the server would discard it: say so now, in the same words
            self.emit(replies.error(f"{refused}; not sent"))
            return
        if words and words[0].lower() in ("/quit", "exit"):
            self.quit_sent = True
        self.out += encode_line(line)

    @staticmethod
    def _is_wire_sendfile(line: str) -> bool:
        try:
            commands.parse(line)
        except commands.CommandError:
            return False
        return True

    def start_upload(self, args: list[str]) -> None:
        usage = "usage: /sendfile <client or group id> <path>"
        if len(args) != 2:
            self.emit(replies.error(f"/sendfile: {usage}"))
            return
        try:
            target = commands.parse_id(args[0], "client or group", "/sendfile")
        except commands.CommandError as exc:
            self.emit(replies.error(str(exc)))
            return
        path = os.path.expanduser(args[1])
        try:
            if not os.path.isfile(path):
                # The line below names the path once; the reason does not repeat it.
                raise OSError("it is not a regular file" if os.path.exists(path) else "no such file")
            size, digest = sha256_of(path)
        except OSError as exc:
            self.emit(
                replies.error(f"/sendfile: cannot read {args[1]}: {exc.strerror or exc}; nothing was sent")
            )
            return
        # Announce a clean name: one with only spaces, say, would be refused by the
        # server's parser with a plain [error], and no [upload] answer would come.
        outgoing = OutgoingFile(target, path, safe_name(os.path.basename(path)), size, digest)
        self.awaiting_ready.append(outgoing)
        self.out += encode_line(commands.format_sendfile(target, size, digest, outgoing.name))

    @property
    def busy(self) -> bool:
        """True while an upload is waiting or moving (EOF waits for it)."""
        return bool(self.awaiting_ready or self.uploading)

    def wants_write(self) -> bool:
        self.pump_uploads()
        return bool(self.out or self.uploading)  # an upload goes on as soon as the socket takes more

    def pump_uploads(self) -> None:
        """Send data frames while the output buffer is low (see send_frame).

        After a few frames straight to the socket it returns, so that the
        caller's loop gets back to the keyboard and the socket's input; it
        comes straight back, as ``wants_write`` stays true while uploading.
        """
        direct = SEND_DIRECT_CHUNKS
        while self.uploading and len(self.out) < SEND_LOW_WATER and not self.closed:
            if direct <= 0 and not self.out:
                return
            outgoing = self.uploading[0]
            if self._file_view is None:
                self._file_view = memoryview(bytearray(CHUNK_BYTES))
            try:
                size = outgoing.read_into(self._file_view)
            except OSError as exc:
                # The header promised bytes we cannot produce; the stream is
                # unrecoverable, so say why and end the session.
                self.emit(replies.error(f"/sendfile: reading {outgoing.path} failed: {exc}"))
                self.uploading.popleft()
                outgoing.close()
                self.close()
                return
            header = encode_line(commands.format_data(outgoing.transfer, size))
            direct -= 1
            self.send_frame(header, self._file_view[:size])
            self.progress(Progress("up", outgoing.name, outgoing.sent, outgoing.size))
            if outgoing.done:
                outgoing.close()
                self.uploading.popleft()

    def send_frame(self, header: bytes, body: memoryview) -> None:
        """One data frame: straight to the socket if nothing is queued before it.

        Only what the socket does not take is copied into ``out``; lines typed
        meanwhile queue behind that, so chat still gets its turn between frames.
        """
        sent = 0
        if not self.out:
            try:
                sent = self.sock.sendmsg([header, body])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
        queue_unsent(self.out, header, body, sent)

    def on_writable(self) -> None:
        if not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.out[:sent]

    # -- inbound -----------------------------------------------------------------

    def on_readable(self) -> None:
        # The framer says how much to read: inside a data frame no further than its
        # end, and right after one just a line's worth (see LineFramer.read_size).
        direct = self.framer.direct_left > 0  # these bytes go straight into the download
        try:
            size = self.sock.recv_into(self._recv_buffer, self.framer.read_size(RECV_BYTES))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if not size:
            self.close()
            return
        if direct:
            self.framer.raw_arrived(size)
            self.on_data(self._recv_view[:size])
        else:
            self.framer.feed(self._recv_view[:size])
        while not self.closed:
            event = self.framer.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Line):
                self.on_line(event.text)
            elif isinstance(event, BadLine):
                self.emit(replies.error(f"from the server: {event.reason}"))
            elif isinstance(event, Data):
                self.on_data(event.chunk)
            elif isinstance(event, DataEnd):
                self.data_target = None

    def on_line(self, line: str) -> None:
        header = replies.parse_file_header(line)
        if header is not None:
            self.start_download(header)
            return
        parsed = replies.classify(line)
        if parsed.kind == "data":
            self.on_data_frame(line)
            return
        if parsed.kind == "upload":
            self.on_upload_answer(line)
            return
        if parsed.kind == "abort":
            transfer = line[len("[abort ") :].split("]", 1)[0]
            incoming = self.downloads.pop(transfer, None)
            if incoming is not None:
                incoming.discard()
            self.emit(replies.error(f"file {transfer} was not completed: {parsed.body}"))
            return
        if parsed.kind == "welcome":
            welcome = replies.parse_welcome(line)
            self.my_id = welcome[0] if welcome else None
        elif parsed.kind == "bye":
            self.said_goodbye = True
        elif parsed.kind == "limit":
            self.refused = True
        self.emit(line)

    def on_upload_answer(self, line: str) -> None:
        if not self.awaiting_ready:
            self.emit(line)
            return
        outgoing = self._answered_upload(line)
        if line.startswith("[upload refused]"):
            self.emit(replies.error(f"/sendfile refused by the server: {line[len('[upload refused] ') :]}"))
            return
        outgoing.transfer = line[len("[upload ") :].split(" ", 1)[0]
        if outgoing.size == 0:
            self.emit(replies.ok(f"sending '{outgoing.name}' (0 bytes) as file {outgoing.transfer}"))
            return
        self.emit(
            replies.ok(f"sending '{outgoing.name}' ({outgoing.size} bytes) as file {outgoing.transfer}")
        )
        self.uploading.append(outgoing)

    def _answered_upload(self, line: str) -> OutgoingFile:
        """The waiting upload an ``[upload ...]`` line answers: by name, else the oldest.

        The server answers headers in order; matching the name as well keeps a
        file's bytes from ever going out under another file's transfer id.
        """
        refused = line.startswith("[upload refused] ")
        for outgoing in self.awaiting_ready:
            if (refused and line.startswith(f"[upload refused] {outgoing.name}: ")) or (
                not refused and line.endswith(f"] {outgoing.size} {outgoing.name}")
            ):
                self.awaiting_ready.remove(outgoing)
                return outgoing
        return self.awaiting_ready.popleft()

    def start_download(self, header: replies.FileHeader) -> None:
        room = self.download_room
        if room is not None and header.size > room:
            # The server refuses such a file before its header; this holds the
            # quota even against a server that does not.
            self.emit(
                replies.error(
                    f"file {header.transfer} '{header.name}' from {header.sender} not saved: "
                    f"it would pass your download quota ({room} bytes left)"
                )
            )
            self.downloads[header.transfer] = None  # skip its frames
            return
        if room is not None:
            self.download_room = room - header.size
        try:
            incoming = IncomingFile(header, self.download_dir)
        except OSError as exc:
            self.emit(replies.error(f"cannot save file {header.transfer}: {exc.strerror or exc}"))
            self.downloads[header.transfer] = None  # skip its frames
            return
        self.downloads[header.transfer] = incoming
        if header.size == 0:
            self.finish_download(incoming)

    def on_data_frame(self, line: str) -> None:
        head, _, size_text = line.partition("] ")
        transfer = head[len("[data ") :]
        if not (size_text.isascii() and size_text.isdigit()) or int(size_text) > commands.MAX_DATA_FRAME:
            self.emit(replies.error(f"malformed data frame from the server: {line[:80]!r}"))
            self.close()
            return
        # What the framer already holds comes out of it as Data; the rest of the
        # frame is read from the socket straight into the download (on_readable).
        self.framer.start_frame(int(size_text))
        self.data_target = self.downloads.get(transfer)

    def on_data(self, chunk: bytes | memoryview) -> None:
        incoming = self.data_target
        if incoming is None:
            return
        try:
            incoming.write(chunk)
        except (OSError, ValueError) as exc:
            incoming.discard()
            self.downloads[incoming.header.transfer] = None
            self.data_target = None
            self.emit(replies.error(f"file {incoming.header.transfer} not saved: {exc}"))
            return
        self.progress(Progress("down", incoming.name, incoming.received, incoming.header.size))
        if incoming.complete:
            self.finish_download(incoming)

    def finish_download(self, incoming: IncomingFile) -> None:
        header = incoming.header
        self.downloads.pop(header.transfer, None)
        self.data_target = None
        try:
            path = incoming.finish()
        except (OSError, ValueError) as exc:
            self.emit(
                replies.error(f"file {header.transfer} '{header.name}' from {header.sender} discarded: {exc}")
            )
            return
        via = f" (group {header.group_id})" if header.group_id else ""
        self.emit(
            f"[saved] file '{incoming.name}' from {header.sender}{via} saved to {path} ({header.size} bytes)"
        )

    # -- end -------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for incoming in self.downloads.values():
            if incoming is not None:
                incoming.discard()
        self.downloads.clear()
        for outgoing in self.uploading:
            outgoing.close()
        try:
            self.sock.close()
        except OSError:
            pass
