"""Which shmchat servers of this user are running here, found without asking them.

Every server's System V keys carry its port (``shm.layout.ipc_key``), so
``/proc/sysvipc/shm`` alone says which ports have objects; the server pid in
each segment header says whether the server behind them is alive (the test
``live_server_pid`` applies); the state bytes of the client table say how
many clients are online.  The client table is read attached with
``SHM_RDONLY`` and *without* its lock: the count is a glance for a listing,
and a tool that only wants to know which port to look at must never make
the server wait.

``python -m shm inspect`` and ``python -m shm trace`` call ``choose_port``
when no ``--port`` is given.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TextIO

import sysv_ipc

from shm import layout
from shm.layout import IpcObject, SlotState
from shm.segments import list_objects, live_server_pid
from syscalls import programs


@dataclass(frozen=True)
class RunningServer:
    port: int
    pid: int
    clients: int  # online now; -1 when the client table could not be read
    traced: bool  # it has a trace segment (started with --trace)


def _clients_online(shmid: int) -> int:
    try:
        segment = sysv_ipc.attach(shmid, None, sysv_ipc.SHM_RDONLY)
    except sysv_ipc.Error:
        return -1
    try:
        view = memoryview(segment)
        try:
            slots = layout.SEGMENT_HEADER.unpack_from(view, 0)[2]
            return sum(
                1
                for slot in range(slots)
                if view[layout.SEGMENT_HEADER_SIZE + slot * layout.CLIENT_RECORD_SIZE] == SlotState.ONLINE
            )
        finally:
            view.release()
    finally:
        segment.detach()


def running_servers() -> list[RunningServer]:
    """The live shmchat servers whose objects belong to this user, by port."""
    me = os.geteuid()
    by_port: dict[int, dict[IpcObject, int]] = {}
    for entry in list_objects():
        if entry.uid == me and entry.kind == "shm":
            by_port.setdefault(entry.port, {})[entry.obj] = entry.id
    found = []
    for port, segments in sorted(by_port.items()):
        if IpcObject.CLIENTS_SEGMENT not in segments:
            continue  # a server half-created or half-removed
        pid = live_server_pid(port)
        if pid is None:
            continue  # stale objects of a dead server (python -m shm cleanup)
        clients = _clients_online(segments[IpcObject.CLIENTS_SEGMENT])
        found.append(RunningServer(port, pid, clients, IpcObject.TRACE_SEGMENT in segments))
    return found


def describe(server: RunningServer) -> str:
    clients = "?" if server.clients < 0 else str(server.clients)
    noun = "client" if server.clients == 1 else "clients"
    traced = ", traced" if server.traced else ""
    return f"port {server.port}  server pid {server.pid}  {clients} {noun} online{traced}"


def choose_port(port: int | None, command: str, err: TextIO | None = None) -> tuple[int | None, int]:
    """The port to use and 0, or None and the exit status after saying why.

    With ``port`` given, that port.  Without it: the one running server of
    this user; with several, list them and ask for ``--port`` (status 2);
    with none, say so in one line (status 1).
    """
    if port is not None:
        return port, 0
    err = err or sys.stderr
    servers = running_servers()
    if len(servers) == 1:
        return servers[0].port, 0
    if not servers:
        start = programs.command("server")
        print(f"{command}: no shmchat server of yours is running here (start one: {start})", file=err)
        return None, 1
    print(f"{command}: {len(servers)} shmchat servers are running; choose one with --port:", file=err)
    for server in servers:
        print(f"  {describe(server)}", file=err)
    return None, 2
