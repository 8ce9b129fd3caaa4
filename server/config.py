"""The server's settings, with the defaults the spec and the issues ask for."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass

from protocol.wire import DEFAULT_PORT
from server.spool import Quotas
from shm import layout

MiB = 1024 * 1024
#: Connections one address may hold at once unless ``--max-per-address`` says
#: otherwise, counted only for peers beyond loopback.  ngIRCd's MaxConnectionsIP
#: is 5 too: a student may open several terminals (the demo opens three), and
#: one machine can never take more than 5 seats of a room.
DEFAULT_MAX_PER_ADDRESS = 5


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_clients: int = layout.DEFAULT_MAX_CLIENTS
    max_groups: int = layout.DEFAULT_MAX_GROUPS
    #: Ring bytes per client mailbox in the message table.
    mailbox_bytes: int = layout.DEFAULT_MAILBOX_BYTES
    #: Output a client may leave unread before it is disconnected (Redis's
    #: "client output buffer limit").
    output_limit: int = 4 * MiB
    max_file_size: int = 100 * MiB
    #: Where uploads are spooled; None means a private folder per port under
    #: the temporary directory.
    spool_dir: str | None = None
    #: Bytes the spool may hold in all, and waiting for one receiver (spooled
    #: or reserved by uploads in progress); None: the defaults of
    #: ``Quotas.for_folder``, from the free space at start.
    spool_quota: int | None = None
    spool_quota_per_receiver: int | None = None
    #: Seconds a worker gets to say goodbye at shutdown before it is killed.
    shutdown_grace: float = 3.0
    #: Seconds a leaving worker waits for room for its last posts before it
    #: reports them discarded (kept under shutdown_grace).
    leave_grace: float = 1.5
    #: Seconds the parent waits for a table lock before it kills the holder
    #: (a worker stopped with SIGSTOP while holding it, say); SEM_UNDO then
    #: hands the lock back.
    lock_patience: float = 2.0
    #: Enable the lesson hooks (``/holdlock``): for lessons and tests only.
    lesson_hooks: bool = False
    #: Record every IPC step in the trace table (``shm trace``).
    trace: bool = False
    #: Connections one peer address may hold at once (0: no limit).  None means
    #: DEFAULT_MAX_PER_ADDRESS for peers beyond loopback only, so that the
    #: multi-terminal demo on one machine keeps every slot; a number given
    #: explicitly applies to every address, loopback included.
    max_per_address: int | None = None
    #: Read a client that sends chat faster than its budget more slowly
    #: (``server/flood.py``); off with ``--no-flood-control``.
    flood_control: bool = True
    #: Which IPC API holds the tables: "sysv" (the card's design) or "posix".
    ipc: str = "sysv"

    def spool_quotas(self, folder: str) -> Quotas:
        """The spool's quotas: those given, or the defaults (``Quotas.for_folder``)."""
        return Quotas.for_folder(folder, self.spool_quota, self.spool_quota_per_receiver, self.max_clients)

    def spool_path(self, port: int) -> str:
        if self.spool_dir:
            return self.spool_dir
        return os.path.join(tempfile.gettempdir(), f"shmchat-{os.geteuid()}-{port}-spool")

    def address_limit(self, host: str) -> int | None:
        """How many connections ``host`` (a peer address) may hold at once; None: no limit."""
        if self.max_per_address is not None:
            return self.max_per_address or None
        if ipaddress.ip_address(host).is_loopback:
            return None
        return DEFAULT_MAX_PER_ADDRESS
