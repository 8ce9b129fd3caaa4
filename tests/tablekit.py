"""Real shared tables for the tests that call table and handler code directly.

No server and no sockets: ``ServerIpc.create`` on a port nobody here uses
makes the same objects a server makes (System V, or POSIX with ``api``), and ``close`` removes them
(the ``ipcs_unchanged`` fixture checks it).
"""

from __future__ import annotations

import socket

from conftest import STARTED_PORTS

from shm.directory import ClientInfo
from shm.layout import RecordKind
from shm.mailboxes import Record
from shm.segments import ServerIpc


def unused_port() -> int:
    """A port number no server here uses, so its IPC keys are ours alone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def small_tables(
    max_clients: int = 4, max_groups: int = 4, mailbox_bytes: int = 80 * 1024, api: str = "sysv"
) -> ServerIpc:
    port = unused_port()
    STARTED_PORTS.add(port)  # the leak check judges this port's objects (POSIX names have no creator pid)
    return ServerIpc.create(
        port, max_clients=max_clients, max_groups=max_groups, mailbox_bytes=mailbox_bytes, api=api
    )


def record(payload: bytes, sender_slot: int = 0, sender_id: int = 11111, kind=RecordKind.PRIVATE) -> Record:
    return Record(kind, sender_slot, sender_id, 0, payload)


def online(ipc: ServerIpc, count: int) -> list[ClientInfo]:
    """``count`` clients claimed in the client table, each with an open mailbox."""
    clients = []
    for n in range(count):
        client = ipc.directory.claim_slot("127.0.0.1", 40000 + n)
        assert client is not None, "the client table is full"
        ipc.messages.open(client.slot, client.generation)
        clients.append(client)
    return clients
