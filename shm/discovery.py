"""Which shmchat objects and servers exist on this machine, found without asking them.

Every server's System V keys carry its port (``shm.layout.ipc_key``), so
``/proc/sysvipc/shm`` and ``/proc/sysvipc/sem`` alone say which ports have
objects (``list_objects``); the server pid in each segment header says
whether the server behind them is alive (``live_server_pid``); what a dead
server left is removed by ``remove_stale``, at a restart and by ``python -m
shm cleanup``.  The state bytes of the client table say how many clients are
online.  The client table is read attached with ``SHM_RDONLY`` and *without*
its lock: the count is a glance for a listing, and a tool that only wants to
know which port to look at must never make the server wait.

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
from syscalls.processes import pid_alive


@dataclass(frozen=True)
class IpcEntry:
    """One System V object as ``/proc/sysvipc`` lists it."""

    kind: str  # "shm" or "sem"
    key: int
    id: int
    port: int
    obj: IpcObject
    uid: int
    size: int = 0  # bytes for a segment, semaphores for a set
    creator_pid: int = 0
    attached: int = 0


def list_objects(port: int | None = None) -> list[IpcEntry]:
    """Every shmchat object on this machine (optionally for one port)."""
    entries = []
    for kind, path in (("shm", "/proc/sysvipc/shm"), ("sem", "/proc/sysvipc/sem")):
        with open(path) as table:
            columns = table.readline().split()
            for line in table:
                row = dict(zip(columns, line.split(), strict=False))
                parsed = layout.split_key(int(row["key"]))
                if parsed is None or (port is not None and parsed[0] != port):
                    continue
                if kind == "shm":
                    extra = {
                        "size": int(row["size"]),
                        "creator_pid": int(row["cpid"]),
                        "attached": int(row["nattch"]),
                    }
                else:
                    extra = {"size": int(row["nsems"])}
                ident = int(row["shmid" if kind == "shm" else "semid"])
                entries.append(
                    IpcEntry(kind, int(row["key"]), ident, parsed[0], parsed[1], int(row["uid"]), **extra)
                )
    return sorted(entries, key=lambda e: (e.port, e.obj))


def _server_pid(entry: IpcEntry) -> int:
    """The server pid recorded in a segment's header (0 if unreadable)."""
    try:
        segment = sysv_ipc.SharedMemory(entry.key)
    except sysv_ipc.Error:
        return 0
    try:
        raw = segment.read(layout.SEGMENT_HEADER.size, 0)
    finally:
        segment.detach()
    magic, _version, _count, pid, _created, _epoch = layout.SEGMENT_HEADER.unpack(raw)
    return pid if magic == layout.SEGMENT_MAGIC else 0


def live_server_pid(port: int) -> int | None:
    """The pid of a live server using ``port``'s objects, if there is one."""
    for entry in list_objects(port):
        if entry.kind == "shm" and entry.attached > 0:
            pid = _server_pid(entry)
            if pid_alive(pid):
                return pid
    return None


def remove_stale(port: int | None = None) -> list[IpcEntry]:
    """Remove every object whose server is gone; return what was removed."""
    entries = list_objects(port)
    live_ports = {p for p in {e.port for e in entries} if live_server_pid(p) is not None}
    removed = []
    for entry in entries:
        if entry.port in live_ports or entry.uid != os.geteuid():
            continue
        try:
            if entry.kind == "shm":
                sysv_ipc.remove_shared_memory(entry.id)
            else:
                sysv_ipc.remove_semaphore(entry.id)
        except sysv_ipc.ExistentialError:
            continue  # someone else removed it first
        removed.append(entry)
    return removed


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
        print(
            f"{command}: no shmchat server of yours is running here (start one: python -m server)",
            file=err,
        )
        return None, 1
    print(f"{command}: {len(servers)} shmchat servers are running; choose one with --port:", file=err)
    for server in servers:
        print(f"  {describe(server)}", file=err)
    return None, 2
