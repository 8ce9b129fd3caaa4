"""The worker: one forked process per client, a small ``epoll`` loop.

A worker waits, without polling, for two file descriptors: its client's
socket and its own doorbell.  From the socket it reads bytes, frames them
into lines (``protocol.framing``), parses commands (``protocol.commands``),
runs a handler (``server.handlers``) and hands the resulting records to its
outbox (``server.outbox``), which posts all lines of one read in one batch
under one lock, with one ring per receiver.  When its doorbell rings it takes
its own mail from the message table, renders it and writes it to its socket.
Files have rooms of their own: ``server.uploads`` (from this client to the
spool) and ``server.downloads`` (from the spool to this client).

Flow control, so that nobody can stall anybody else:

* Output to the client goes through a buffer.  Past ``output_limit`` unread
  bytes the client is disconnected with a logged reason.
* While the outbox holds posts that found a full mailbox, this worker stops
  reading its own socket, so a flooding sender is slowed by TCP, not by
  dropping messages.
* A client that sends chat faster than its budget (``server.flood``) is read
  more slowly: its lines wait in its socket, none is dropped, and it is told
  once.
* A leaving worker gives its pending posts ``leave_grace`` seconds to find
  room, and reports what is still undelivered then, before its goodbye.

The worker never returns to the parent's code: ``run_worker`` ends in
``os._exit`` with a status from ``WorkerExit`` that tells the parent how the
client left.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from enum import IntEnum

from protocol import commands, replies
from protocol.commands import CommandError, StreamError
from protocol.framing import NEED_DATA, BadLine, Data, DataEnd, Line, LineFramer
from server import handlers, lessons, mail
from server.caller import Caller
from server.config import ServerConfig
from server.connection import Connection
from server.doorbells import Doorbells
from server.downloads import Downloads
from server.flood import NOTICE, FloodBudget
from server.outbox import Outbox
from server.outcome import Outcome
from server.spool import Spool
from server.uploads import Uploads
from shm.backend import IPC_ERRORS
from shm.layout import RecordKind, WakeSource
from shm.segments import ServerIpc
from syscalls import faults

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024
#: Seconds between updates of the slot's message counters in the client table.
COUNT_INTERVAL = 1.0
#: Posts pending before the outbox is flushed in the middle of a long read.
FLUSH_BATCH = 256
PR_SET_PDEATHSIG = 1


class WorkerExit(IntEnum):
    """A worker's exit status: how its client left."""

    QUIT = 0  # EXIT or /quit
    CONNECTION_LOST = 3  # the socket closed or failed
    TOO_SLOW = 4  # the client stopped reading and passed the output limit
    SHUTDOWN = 5  # the server is going down
    PROTOCOL_ERROR = 6  # the byte stream could not be followed any more
    CRASHED = 7  # an unexpected exception (a bug): logged with its traceback
    TABLES_LOST = 8  # a semaphore operation failed: the shared tables cannot be used


def describe_exit(status: int) -> str | None:
    """How a client left, from its worker's wait status (None: say nothing)."""
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"disconnected (its worker process died: {name})"
    code = os.WEXITSTATUS(status)
    known: dict[int, str | None] = {
        WorkerExit.QUIT: "left",
        WorkerExit.CONNECTION_LOST: "disconnected (connection lost)",
        WorkerExit.TOO_SLOW: "was disconnected (it stopped reading its messages)",
        WorkerExit.SHUTDOWN: None,
        WorkerExit.PROTOCOL_ERROR: "was disconnected (protocol error)",
        WorkerExit.TABLES_LOST: "disconnected (its worker could not use the shared tables)",
    }
    return known.get(code, f"disconnected (its worker failed with status {code})")


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once, in the parent, at import: a CDLL made in each worker would
# build a new ctypes class there, in memory of its own rather than shared.
_prctl = _find_prctl()


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux prctl)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # prctl(2)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(WorkerExit.SHUTDOWN)


def _discarded(receiver: int, count: int) -> str:
    what = "a message" if count == 1 else f"{count} messages"
    return replies.error(f"{what} to {receiver} discarded: its mailbox stayed full while you were leaving")


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
        self.conn = Connection(sock, caller.client_id, on_lost=lambda: self.end(WorkerExit.CONNECTION_LOST))
        self.ipc = ipc
        self.doorbells = doorbells
        self.config = config
        self.framer = LineFramer()
        self.outbox = Outbox(ipc.messages, doorbells)
        self.uploads = Uploads(caller, ipc.directory, spool, config.max_file_size)
        self.downloads = Downloads(caller, ipc.directory)
        #: This client's chat budget (``server.flood``); None with --no-flood-control.
        self.flood = FloodBudget(time.monotonic) if config.flood_control else None
        self.exit: WorkerExit | None = None
        self.farewell: list[str] = []  # the goodbye, said once everything before it is settled
        self.received = 0
        # Reused for every read.  An anonymous mapping, not a bytearray: its pages
        # stay untouched (not resident) until a read that large actually comes.
        self._recv_buffer = mmap.mmap(-1, RECV_BYTES)
        self._recv_view = memoryview(self._recv_buffer)
        # epoll itself rather than ``selectors``: the loop turns once or twice per
        # message, and selectors would add a layer of Python (a key object, a
        # mapping lookup) to every turn for nothing a worker uses.
        self.poller = select.epoll()
        self.tracer = ipc.tracer_for(1 + caller.slot, caller.client_id)  # None without --trace
        self.conn.tracer = self.tracer
        self._interest = select.EPOLLIN  # what the socket is registered for (0: not at all)
        self._counted_at = 0.0
        self._counted_sent = 0

    # -- the loop ----------------------------------------------------------------

    def run(self) -> WorkerExit:
        try:
            self.serve()
            self.finish()
        except IPC_ERRORS as exc:
            # A semaphore operation failed (the objects were removed, or refused
            # us): the tables cannot be touched again, not even to say goodbye
            # through them.  Exiting gives back, through SEM_UNDO, any lock held.
            log.error("client %d: the shared tables failed: %s; closing", self.caller.client_id, exc)
            self.conn.say(replies.bye("the server lost its shared tables; closing the connection"))
            self.end(WorkerExit.TABLES_LOST)
            self.conn.send_rest()
            self.conn.close()
        assert self.exit is not None
        return self.exit

    def end(self, how: WorkerExit) -> None:
        """The session is over (the first reason given is the one kept)."""
        if self.exit is None:
            self.exit = how
        self.conn.closed = True

    def serve(self) -> None:
        self.conn.sock.setblocking(False)
        bell = self.doorbells.fileno(self.caller.slot)
        self.poller.register(self.conn.sock, select.EPOLLIN)
        self.poller.register(bell, select.EPOLLIN)
        online = len(self.ipc.directory.online())
        self.conn.say(replies.welcome(self.caller.client_id, online))
        self.take_mail()
        conn, outbox, downloads, flood = self.conn, self.outbox, self.downloads, self.flood
        while self.exit is None:
            # A client over its chat budget is not read until the budget allows
            # (server.flood): epoll_wait then wakes the loop after ``pause`` seconds.
            pause = flood.wait() if flood is not None else 0.0
            # The checks around poll() nearly always find nothing to do, once or
            # twice a message: their cheap conditions are tested here, in line, and
            # the method is called only when there is something for it.
            wanted = (0 if outbox.blocked or pause else select.EPOLLIN) | (
                select.EPOLLOUT if conn.out or downloads.queue else 0
            )
            if wanted != self._interest:
                self.update_interest(wanted)
            for fd, events in self.poller.poll(pause or -1):  # epoll_wait: sleeps until there is work
                if self.tracer is not None:
                    self.tracer.wake(WakeSource.DOORBELL if fd == bell else WakeSource.SOCKET)
                if fd == bell:
                    self.doorbells.clear(self.caller.slot)
                    self.take_mail()
                    if self.outbox.blocked:  # the mailbox we were waiting for may have room now
                        self.flush_outbox()
                else:  # a hang-up or an error is reported to both, as selectors did
                    if events & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
                        self.conn.write_some()
                    if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and self.exit is None:
                        self.read_socket()
            if conn.out or downloads.queue:
                self.pump_output()
            if self.framer.buffered and not outbox.blocked and self.exit is None:
                # The one place input resumes after a flush outside process_input
                # (a doorbell, a finished download's result) found room again, or
                # the flood budget allows this client's lines again.
                self.process_input()
            if len(conn.out) > self.config.output_limit:
                self.check_backlog()
            if (self.received or outbox.delivered != self._counted_sent) and (
                time.monotonic() - self._counted_at >= COUNT_INTERVAL
            ):
                self.count_traffic()

    def update_interest(self, events: int) -> None:
        """Register the socket for ``events`` (epoll_ctl), which ``serve`` found changed.

        ``serve`` asks for EPOLLIN unless posts are waiting for room (so a
        flooding sender slows down), and for EPOLLOUT while output is queued
        or a download goes on (it goes on as soon as the socket takes more).
        """
        sock = self.conn.sock
        if events == 0:
            # Nothing to read or write: wait for the doorbell only.
            self.poller.unregister(sock)  # epoll_ctl(2)
        elif self._interest == 0:
            self.poller.register(sock, events)
        else:
            self.poller.modify(sock, events)
        self._interest = events

    # -- socket input --------------------------------------------------------------

    def read_socket(self) -> None:
        # Inside a data frame the framer asks for no more than the frame's end, and
        # those bytes go straight into the upload, with no copy through the framer.
        direct = self.framer.direct_left > 0
        size = self.conn.recv_into(self._recv_view, self.framer.read_size(RECV_BYTES))
        if size is None:
            return
        if not size:
            self.end(WorkerExit.CONNECTION_LOST)
            return
        if self.tracer is not None:
            self.tracer.recv(size)
        if direct:
            self.framer.raw_arrived(size)
            self.apply(self.uploads.write(self._recv_view[:size]))
        else:
            self.framer.feed(self._recv_view[:size])
        self.process_input()

    def process_input(self) -> None:
        """Handle every complete line buffered, then post the lines' deliveries in one batch.

        Stops early while posts are blocked on a full mailbox; the rest stays
        in the framer until the receiver makes room and rings back.  Stops
        early too while the client is over its chat budget (``server.flood``);
        ``serve`` comes back when the budget allows.
        """
        outbox, flood = self.outbox, self.flood
        held = flood is not None and flood.over  # flooding: the rest waits in the framer
        while self.exit is None and not outbox.blocked and not held:
            event = self.framer.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Line):
                self.handle_line(event.text)
                # Every line is charged but a data frame's header: file data is not chat.
                if flood is not None and not self.framer.in_raw_mode:
                    held = flood.charge(len(event.text.encode()))
                    if held and flood.notice_due():
                        self.conn.say(replies.notice(NOTICE))
            elif isinstance(event, BadLine):
                self.conn.say(replies.error(event.reason))
            elif isinstance(event, Data):
                self.apply(self.uploads.write(event.chunk))
            elif isinstance(event, DataEnd):
                self.uploads.close_frame()
            if len(outbox.pending) >= FLUSH_BATCH:
                self.flush_outbox()  # a long read: post what it has so far
        self.flush_outbox()

    def handle_line(self, line: str) -> None:
        """Parse one line and carry out what its handler returns."""
        try:
            request = commands.parse(line)
        except StreamError as exc:
            # Raw bytes of unknown length follow a bad frame header: they would
            # be read as commands.  The stream cannot be followed any more.
            log.info("client %d: bad data frame header; closing", self.caller.client_id)
            self.conn.say(replies.bye(f"{exc}; the byte stream cannot be followed, closing the connection"))
            self.end(WorkerExit.PROTOCOL_ERROR)
            return
        except CommandError as exc:
            if self.config.lesson_hooks and lessons.is_hook(line):
                lessons.run_hook(line, self.ipc, self.conn.say)
                return
            self.conn.say(replies.error(str(exc)))
            return
        outcome = handlers.handle(self.caller, request, self.ipc, self.uploads, self.downloads)
        if outcome.frame is not None:
            # What the framer already holds goes through it; the rest of the frame is
            # read from the socket straight into the upload (read_socket).
            self.framer.start_frame(outcome.frame)
        if outcome.quit:
            # The goodbye waits until the posts before it are delivered or reported.
            self.farewell = outcome.replies
            self.outbox.add(outcome.deliveries)
            self.end(WorkerExit.QUIT)
            return
        self.apply(outcome)

    def apply(self, outcome: Outcome) -> None:
        """Say a handler's (or an upload's) replies and queue its deliveries."""
        if outcome.replies:
            self.conn.say(*outcome.replies)
        self.outbox.add(outcome.deliveries)

    # -- mail ------------------------------------------------------------------------

    def flush_outbox(self) -> None:
        for line in self.outbox.flush():
            self.conn.say(line)

    def take_mail(self) -> None:
        records, waiters = self.ipc.messages.take(self.caller.slot, self.caller.generation)
        if records and self.tracer is not None:
            self.tracer.take(len(records), sum(record.size for record in records))
        for slot in waiters:
            self.doorbells.ring(slot)  # they were waiting for room in this mailbox
        self.received += len(records)
        lines = []
        for record in records:
            if record.kind not in mail.EVENTS:
                lines.append(mail.render(record))
            elif record.kind is RecordKind.FILE:
                self.downloads.add(record)  # its header goes out later, after these lines
            else:  # SHUTDOWN
                lines.append(replies.shutting_down())
                self.end(WorkerExit.SHUTDOWN)
        if lines:
            self.conn.say(*lines)  # one take's lines, queued in one piece

    # -- output ----------------------------------------------------------------------------

    def pump_output(self) -> None:
        """Write what is queued now, and keep file streams moving while the socket takes it.

        Writing at once, instead of waiting for EPOLLOUT, saves a loop and two
        epoll_ctl calls per message.  After a bounded number of chunks the rest
        is left queued, so that EPOLLOUT brings the loop back and the doorbell
        and the client's commands get their turn during a long download.
        """
        downloads = self.downloads
        for _ in range(16):
            if downloads.queue:  # tested here, not in the call: nearly every turn has none
                self.stream_downloads()
            if not self.conn.out:
                return
            self.conn.write_some()
            if self.conn.out or self.exit is not None:
                return  # the socket is full: EPOLLOUT will bring the loop back
        self.stream_downloads()

    def stream_downloads(self) -> None:
        results = self.downloads.stream(self.conn)
        if results:
            self.outbox.add(results)
            self.flush_outbox()

    def check_backlog(self) -> None:
        if self.exit is None and self.conn.backlog > self.config.output_limit:
            log.warning(
                "client %d stopped reading: %d bytes of output backlog (limit %d); disconnecting",
                self.caller.client_id,
                self.conn.backlog,
                self.config.output_limit,
            )
            self.conn.out.clear()
            self.end(WorkerExit.TOO_SLOW)

    def count_traffic(self, force: bool = False) -> None:
        """Add this worker's message counts to its row, at most once a second.

        The counters are statistics for the inspector; taking the directory
        lock for them after every message would double the locking that a
        message needs.
        """
        sent = self.outbox.delivered - self._counted_sent
        if not (sent or self.received):
            return
        now = time.monotonic()
        if not force and now - self._counted_at < COUNT_INTERVAL:
            return
        self._counted_at = now
        self.ipc.directory.count_traffic(self.caller.slot, sent, self.received)
        self._counted_sent = self.outbox.delivered
        self.received = 0

    # -- leaving -------------------------------------------------------------------------

    def finish(self) -> None:
        """Settle the outbox, say goodbye within a short time, release files, close."""
        self.uploads.discard_all()
        self.drain_outbox()
        for line in self.farewell:
            self.conn.say(line)
        flushed = not self.conn.out or (self.exit is not WorkerExit.TOO_SLOW and self.conn.send_rest())
        # Tell each sender whether its file arrived (closing removes the link the
        # parent would otherwise have found; it reports only for dead workers).
        # A file whose last bytes just went out above did arrive.
        self.outbox.add(self.downloads.end_all(flushed))
        self.outbox.flush()  # best effort: a sender whose mailbox is full is told by nobody
        self.count_traffic(force=True)
        self.conn.close()

    def drain_outbox(self) -> None:
        """Give pending posts ``leave_grace`` seconds to find room; report what is left.

        The receivers ring this worker's doorbell when they have taken their
        mail (it is among their waiters), or the parent does when a receiver
        has left; meanwhile this worker still takes its own mail, so that
        nobody waits on it in turn.
        """
        self.flush_outbox()
        bell = self.doorbells.fileno(self.caller.slot)
        deadline = time.monotonic() + self.config.leave_grace
        while len(self.outbox) and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([bell], [], [], left)  # the doorbell only: no spin on the socket
            if ready:
                self.doorbells.clear(self.caller.slot)
                self.take_mail()
                self.flush_outbox()
        if len(self.outbox):
            log.info(
                "client %d left with %d posts undelivered (mailboxes full)",
                self.caller.client_id,
                len(self.outbox),
            )
            for line in self.outbox.discard(_discarded):
                self.conn.say(line)


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
        faults.enter_worker(caller.slot)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        die_with_parent(parent_pid)
        for lock in ipc.locks.values():
            lock.patience = None  # only the parent bounds its waits for a lock
        status = Worker(caller, sock, ipc, doorbells, spool, config).run()
    except BaseException:
        log.exception("worker of client %d crashed", caller.client_id)
    finally:
        logging.shutdown()
        os._exit(int(status))
