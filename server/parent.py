"""The parent process: bind, create the IPC objects, accept, fork, reap, shut down.

Modelled on CPython's ``socketserver.ForkingMixIn``, with the shared tables
added.  The order of events is what makes it dependable:

1. Bind the port first: a second server on the same port fails here,
   before it could touch the first one's IPC objects.
2. Create every System V object and every doorbell before the first fork,
   reclaiming what a server killed with SIGKILL left under the same keys.
3. Accept in a ``selectors`` loop that also watches a self-pipe fed by
   ``signal.set_wakeup_fd``.  Signal handlers only set a flag; the loop
   reaps children (``waitpid(WNOHANG)``) and never takes a table lock inside
   a handler (the locks are not re-entrant).
4. Each accepted client gets a slot and an id in the client table, an empty
   mailbox, and a forked worker (``server.worker``), which leaves with
   ``os._exit``.  The 6th client is told the spec's exact refusal.
5. After reaping a worker, whatever the reason it ended (EXIT, lost
   connection, SIGKILL), the parent frees its slot, closes its mailbox,
   bounces unread private messages to their senders, removes its spool files
   and tells everyone who left.  One code path for every way of leaving.
6. On SIGINT or SIGTERM: say goodbye through every mailbox, give the workers
   a few seconds, kill the stragglers, reap them all, then remove every
   segment and semaphore.  The creator is the destroyer.
"""

from __future__ import annotations

import gc
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol import replies, wire
from server import handlers
from server.caller import Caller
from server.config import ServerConfig
from server.doorbells import Doorbells
from server.listener import Listener, Throttled, listening_socket, refuse, turned_away
from server.outbox import Delivery, Outbox
from server.spool import Spool, SpoolInUse
from server.worker import describe_exit, run_worker
from shm.backend import IPC_ERRORS
from shm.layout import RecordKind
from shm.locks import BinaryLock
from shm.mailboxes import Posting, Record
from shm.segments import IpcInUse, ServerIpc
from shm.trace import TraceWriter
from syscalls import faults

log = logging.getLogger(__name__)

#: While notices wait for room in a full mailbox, the loop retries this often.
RETRY_SECONDS = 0.05
#: What a newcomer is told when the server cannot make it a worker.
NO_WORKER = "the server cannot start a worker for you right now; try again later"

_fork = faults.wrap("fork", os.fork)


@dataclass(frozen=True)
class Child:
    pid: int
    caller: Caller
    host: str  # the peer's address, for --max-per-address


class StartupError(Exception):
    """The server cannot start; the message says why, for the person who ran it."""


class ChatServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.children: dict[int, Child] = {}
        self.stopping = False
        self.tables_lost = False  # a semop failed for good: shut down without the tables
        self.outbox: Outbox | None = None
        self.listener: Listener | None = None
        self.ipc: ServerIpc | None = None
        self.tracer: TraceWriter | None = None
        self.doorbells: Doorbells | None = None
        self.spool: Spool | None = None
        self.selector = selectors.DefaultSelector()
        self._wake_r = self._wake_w = -1
        self._fork_failed = Throttled(logging.ERROR)

    # -- start ---------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and create every IPC object; return the address listened on.

        Raises StartupError; whatever was made by then is removed by
        ``shutdown``, which ``run`` calls either way.
        """
        cfg = self.config
        try:
            sock = listening_socket(cfg.host, cfg.port)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from exc
        host, port = sock.getsockname()[:2]
        try:
            self.listener = Listener(sock)
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot open a descriptor: {exc.strerror or exc}") from exc
        try:
            self.ipc = ServerIpc.create(
                port, cfg.max_clients, cfg.max_groups, cfg.mailbox_bytes, trace=cfg.trace, api=cfg.ipc
            )
        except (IpcInUse, *IPC_ERRORS, OSError) as exc:
            raise StartupError(f"cannot create the shared memory for port {port}: {exc}") from exc
        self.tracer = self.ipc.tracer_for(0)  # ring 0 of the trace table; None without --trace
        for lock in self.ipc.locks.values():
            lock.patience = cfg.lock_patience  # never wait for ever on a stopped worker
            lock.on_stuck = self._stall_breaker(lock)
        try:
            self.doorbells = Doorbells(cfg.max_clients)
        except OSError as exc:
            raise StartupError(f"cannot create the doorbells (eventfd): {exc.strerror or exc}") from exc
        self.doorbells.trace = self.ipc.trace
        self.outbox = Outbox(self.ipc.messages, self.doorbells)
        spool = Spool(cfg.spool_path(port))
        try:
            spool.reset()
            spool.quotas = cfg.spool_quotas(spool.path)
        except SpoolInUse as exc:
            raise StartupError(f"cannot use the spool folder {spool.path}: {exc.strerror}") from exc
        except OSError as exc:  # never clean up a folder we refused to use
            raise StartupError(f"cannot use the spool folder {spool.path}: {exc.strerror or exc}") from exc
        self.spool = spool
        log.info("spool quota: %d bytes, %d per receiver", spool.quotas.total, spool.quotas.per_receiver)
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StartupError(f"cannot open a descriptor: {exc.strerror or exc}") from exc
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop
        self.listener.watch(self.selector)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "signal")
        return host, port

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stopping = True  # acted on in the loop: never lock tables in a handler

    # -- the loop ----------------------------------------------------------------

    def serve_forever(self) -> int:
        """Serve until a stop signal; the exit status (1 if the tables were lost)."""
        try:
            while not self.stopping:
                for key, _ in self.selector.select(self._timeout()):
                    if key.data == "signal":
                        self._drain_wakeups()
                    elif not self.stopping:
                        self.accept_all()
                self.reap()
                self.post_pending()
                if self.listener is not None:
                    self.listener.resume_if_due()
        except IPC_ERRORS as exc:  # EIDRM: someone ran ipcrm on our objects
            log.error("the shared tables failed (%s); stopping every worker and exiting", exc)
            self.tables_lost = True
        finally:
            self.shutdown()
        return 1 if self.tables_lost else 0

    def _timeout(self) -> float | None:
        """How long the loop may sleep: for ever, unless notices or a paused listener wait."""
        timeouts = []
        if self.outbox is not None and self.outbox.pending:
            timeouts.append(RETRY_SECONDS)
        if self.listener is not None and (paused := self.listener.timeout()) is not None:
            timeouts.append(paused)
        return min(timeouts) if timeouts else None

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def accept_all(self) -> None:
        assert self.listener is not None and self.ipc is not None
        for conn, addr in self.listener.accept():
            if turned_away(conn, addr[0], [child.host for child in self.children.values()], self.config):
                continue
            info = self.ipc.directory.claim_slot(addr[0], addr[1])
            if info is None:
                log.info("refused %s:%d: all %d slots in use", addr[0], addr[1], self.config.max_clients)
                refuse(conn)
                continue
            if self.tracer is not None:
                self.tracer.accept(info.slot, info.client_id)  # before the fork: names the slot's ring
            self.spawn(conn, Caller(info.slot, info.generation, info.client_id), addr[0])

    def spawn(self, conn: socket.socket, caller: Caller, host: str) -> None:
        assert self.ipc is not None and self.doorbells is not None and self.spool is not None
        assert self.outbox is not None
        self.ipc.messages.open(caller.slot, caller.generation)
        gc.freeze()  # keep the inherited heap shared: the child will not dirty it by collecting
        parent_pid = os.getpid()
        try:
            pid = _fork()  # fork(2): the worker starts here, with every attachment inherited
        except OSError as exc:  # EAGAIN (a process limit), ENOMEM
            self._fork_failed("cannot fork a worker for client %d: %s", caller.client_id, exc)
            self.ipc.messages.close(caller.slot, caller.generation)
            self.ipc.directory.release_slot(caller.slot, caller.generation)
            refuse(conn, replies.error(NO_WORKER))
            return
        if pid == 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            assert self.listener is not None
            self.listener.close(in_child=True)
            self.selector.close()  # closes the child's descriptor only
            run_worker(caller, conn, self.ipc, self.doorbells, self.spool, self.config, parent_pid)
        conn.close()
        if self.tracer is not None:
            self.tracer.fork(pid, caller.slot, caller.client_id)
        self.ipc.directory.set_worker_pid(caller.slot, caller.generation, pid)
        self.children[pid] = Child(pid, caller, host)
        log.info("client %d connected (slot %d, worker %d)", caller.client_id, caller.slot, pid)
        # Announced once its worker exists: a newcomer that could not be given
        # one never arrived.  Its own mailbox does not get the notice.
        others = [c for c in self.ipc.directory.online() if c.client_id != caller.client_id]
        self.outbox.add(handlers.notices(others, replies.joined(caller.client_id)))
        self.post_pending()

    def _stall_breaker(self, lock: BinaryLock) -> Callable[[int], None]:
        return lambda holder: self._break_stall(holder, lock)

    def _break_stall(self, holder: int, lock: BinaryLock) -> None:
        """A table lock has been held past the parent's patience: kill its holder.

        SIGKILL works on a stopped process too.  Once it is dead (``waitid``
        with WNOWAIT: dead, but left for the reaper), its locks come back: the
        kernel's SEM_UNDO did it on System V, ``_reclaim_locks`` does it on
        POSIX; the reaper then tells everyone the client left.
        """
        if holder == 0:  # POSIX only: taken by a process that died before it could record itself
            log.error(
                "the %s has been held for %.1f s by a process that never recorded its pid "
                "(killed between sem_wait and the store?); posting V for it",
                lock.label,
                self.config.lock_patience,
            )
            lock.release()
            return
        child = self.children.get(holder)
        if child is None:
            log.error("a table lock is held by pid %d, which is no worker of this server; waiting on", holder)
            return
        log.error(
            "worker %d (client %d) has held a table lock for %.1f s (stopped?); killing it",
            holder,
            child.caller.client_id,
            self.config.lock_patience,
        )
        try:
            os.kill(holder, signal.SIGKILL)
            os.waitid(os.P_PID, holder, os.WEXITED | os.WNOWAIT)
        except (ProcessLookupError, ChildProcessError):
            pass
        self._reclaim_locks(holder)

    def _reclaim_locks(self, dead: int) -> None:
        """Give back the locks the dead worker ``dead`` held (POSIX: no SEM_UNDO does it)."""
        assert self.ipc is not None
        tracer = self.tracer
        for obj, lock in self.ipc.locks.items():
            # The trace row goes in before the V, so that it precedes the next holder's lock.
            trace = None if tracer is None else (lambda obj=obj: tracer.released(obj, dead))
            if lock.reclaim_from(dead, trace):
                log.warning("worker %d died holding the %s; the parent posted V for it", dead, lock.label)

    # -- departures ---------------------------------------------------------------------

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._reclaim_locks(pid)  # before departure, which takes the locks
                if self.tracer is not None:
                    self.tracer.reap(pid, child.caller.slot, child.caller.client_id, status)
                self.departure(child, status)

    def departure(self, child: Child, status: int) -> None:
        """Clean up after a worker, however it ended, and tell the others."""
        assert self.ipc is not None and self.spool is not None and self.doorbells is not None
        caller = child.caller
        how = describe_exit(status)
        if self.tables_lost:
            return  # nobody can be told through tables that are gone
        released = self.ipc.directory.release_slot(caller.slot, caller.generation)
        unread, waiters = self.ipc.messages.close(caller.slot, caller.generation)
        for slot in waiters:
            self.doorbells.ring(slot)  # they retry, and learn the receiver is gone
        transfers = self.spool.leftovers(caller.slot, caller.generation)
        if released is None:
            return
        _, changes = released
        log.info("client %d %s", caller.client_id, how or "closed at shutdown")
        if self.stopping:
            return
        assert self.outbox is not None
        self.outbox.add(handlers.bounces(caller.client_id, unread, transfers, self.ipc))
        if how is not None:
            self.outbox.add(handlers.departure_notices(caller.client_id, how, changes, self.ipc))
        self.post_pending()

    def post_pending(self) -> None:
        """Post the parent's notices; what finds a full mailbox is retried soon."""
        if self.outbox is not None:
            self.outbox.flush()  # the parent's records have no one to report a GONE to

    # -- shutdown -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Say goodbye, reap every worker, remove every IPC object and the spool."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # till exit: see design.md
        self.stopping = True
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.tables_lost:  # no goodbye through the tables: the workers are stopped at once
            self.outbox = None
            for pid in self.children:
                os.kill(pid, signal.SIGKILL)
        if self.outbox is not None:
            # A goodbye that finds a full mailbox (its worker lags) is retried
            # until the grace period ends: only then is a worker killed.
            goodbye = Record(RecordKind.SHUTDOWN, handlers.SERVER_SLOT, 0, 0, b"")
            self.outbox.clear()  # notices for people about to be told goodbye
            self.outbox.add(
                Delivery(Posting(c.caller.slot, c.caller.generation, goodbye)) for c in self.children.values()
            )
        self.post_pending()
        if self.outbox is not None and self.outbox.pending:
            log.info("a goodbye waits for room in %d full mailboxes; retrying", len(self.outbox))
        deadline = time.monotonic() + self.config.shutdown_grace
        while self.children and time.monotonic() < deadline:
            self.post_pending()
            self.reap()
            if self.children:
                pause = RETRY_SECONDS if self.outbox is not None and self.outbox.pending else 0.1
                self.selector.select(max(0.0, min(pause, deadline - time.monotonic())))
                self._drain_wakeups()
        for pid in list(self.children):
            log.warning("worker %d did not exit in time; killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
            if not self.tables_lost:
                self._reclaim_locks(pid)
            self.departure(self.children.pop(pid), status)
        if self.ipc is not None:
            self.ipc.close()
            self.ipc = None
        if self.doorbells is not None:
            self.doorbells.close()
            self.doorbells = None
        if self.spool is not None:
            self.spool.remove()
            self.spool = None
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self.selector.close()


def run(config: ServerConfig) -> int:
    server = ChatServer(config)
    try:
        host, port = server.start()
        print(
            f"shmchat server listening on {wire.format_address(host, port)} "
            f"(pid {os.getpid()}, up to {config.max_clients} clients; Ctrl-C stops it)",
            flush=True,
        )
    except BaseException:  # StartupError (said by __main__), or nobody reading stdout: remove what was made
        server.shutdown()
        raise
    status = server.serve_forever()
    print("shmchat server stopped; its shared memory and semaphores are removed", flush=True)
    return status
