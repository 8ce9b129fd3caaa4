"""The server's settings, with the defaults the spec and the issues ask for."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from protocol.wire import DEFAULT_PORT
from shm import layout

MiB = 1024 * 1024


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
    #: Record every IPC step in the trace table (``python -m shm trace``).
    trace: bool = False
    #: Which IPC API holds the tables: "sysv" (the card's design) or "posix".
    ipc: str = "sysv"

    def spool_path(self, port: int) -> str:
        if self.spool_dir:
            return self.spool_dir
        return os.path.join(tempfile.gettempdir(), f"shmchat-{os.geteuid()}-{port}-spool")
