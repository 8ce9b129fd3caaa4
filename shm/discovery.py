"""Which shmchat objects and servers exist on this machine, found without asking them.

Every server's objects carry its port: System V keys (``layout.ipc_key``),
listed by ``/proc/sysvipc/shm`` and ``/proc/sysvipc/sem``, and POSIX names
(``layout.posix_name``), listed as files in ``/dev/shm``.  ``list_objects``
reads both; ``live_server_pid`` says whether the server behind a port's
objects is alive; ``remove_stale`` removes what a dead server left, at a
restart and for ``python -m shm cleanup``; ``running_servers`` counts the
clients online in each.  The client table is read attached or mapped
read-only and *without* its lock: the count is a glance for a listing, and a
tool that only wants to know which port to look at must never make the
server wait.

A server is alive when the pid in its segment header is alive *and* still
has the segment: attached (``nattch`` on System V) or mapped
(``/proc/PID/maps`` on POSIX), so that a reused pid does not keep a dead
server's objects.  Another user's segments cannot be read (mode 0600); for
System V ``/proc/sysvipc/shm`` still shows their attach count and creator
pid, which is enough to tell a live server from a dead one.  Another user's
POSIX names show nothing but their owner, so they are reported as such and
never judged stale; and nothing of another user is ever removed.

``python -m shm inspect`` and ``python -m shm trace`` call ``choose_port``
when no ``--port`` is given.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from typing import TextIO

from shm import layout
from shm.backend import IPC_ERRORS, backend
from shm.layout import IpcObject, SlotState
from syscalls import programs
from syscalls.processes import pid_alive

#: Where POSIX shared memory and named semaphores show as files.
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class IpcEntry:
    """One shmchat object as ``/proc/sysvipc`` or ``/dev/shm`` lists it."""

    kind: str  # "shm" or "sem"
    key: int  # System V key (0 for POSIX)
    id: int  # System V id (0 for POSIX)
    port: int
    obj: IpcObject
    uid: int
    size: int = 0  # bytes for a segment, semaphores for a set
    creator_pid: int = 0  # System V only
    attached: int = 0  # System V only (nattch)
    last_pid: int = 0  # System V only (lpid of a segment)
    api: str = "sysv"
    name: str = ""  # POSIX name, "/shmchat-5000-clients"

    @property
    def ident(self) -> int | str:
        """What the API's calls name it by: the id, or the name."""
        return self.name if self.api == "posix" else self.id

    @property
    def label(self) -> str:
        return self.name if self.api == "posix" else f"key 0x{self.key:08x}"


def _sysv_objects() -> list[IpcEntry]:
    entries = []
    for kind, path in (("shm", "/proc/sysvipc/shm"), ("sem", "/proc/sysvipc/sem")):
        with open(path) as table:
            columns = table.readline().split()
            for line in table:
                row = dict(zip(columns, line.split(), strict=False))
                parsed = layout.split_key(int(row["key"]))
                if parsed is None:
                    continue
                port, obj = parsed
                key, uid = int(row["key"]), int(row["uid"])
                if kind == "shm":
                    entries.append(
                        IpcEntry(
                            kind,
                            key,
                            int(row["shmid"]),
                            port,
                            obj,
                            uid,
                            size=int(row["size"]),
                            creator_pid=int(row["cpid"]),
                            attached=int(row["nattch"]),
                            last_pid=int(row["lpid"]),
                        )
                    )
                else:
                    entries.append(
                        IpcEntry(kind, key, int(row["semid"]), port, obj, uid, size=int(row["nsems"]))
                    )
    return entries


def _posix_objects() -> list[IpcEntry]:
    entries = []
    try:
        files = list(os.scandir(SHM_DIR))
    except OSError:
        return []
    for file in files:
        kind, name = ("sem", file.name[4:]) if file.name.startswith("sem.") else ("shm", file.name)
        parsed = layout.split_posix_name(name)
        if parsed is None:
            continue
        try:
            info = file.stat()
        except OSError:
            continue  # unlinked meanwhile
        size = info.st_size if kind == "shm" else 1
        entries.append(
            IpcEntry(kind, 0, 0, parsed[0], parsed[1], info.st_uid, size, api="posix", name="/" + name)
        )
    return entries


def list_objects(port: int | None = None) -> list[IpcEntry]:
    """Every shmchat object on this machine, System V and POSIX (optionally for one port)."""
    entries = [e for e in _sysv_objects() + _posix_objects() if port is None or e.port == port]
    return sorted(entries, key=lambda e: (e.port, e.api, e.obj))


def read_header(entry: IpcEntry) -> tuple | None:
    """A segment's header fields (``layout.SEGMENT_HEADER``), None if it cannot be read."""
    try:
        region = backend(entry.api).open_readonly(entry.ident)
    except (*IPC_ERRORS, OSError, ValueError):
        return None  # gone, or another user's (mode 0600)
    try:
        fields = layout.SEGMENT_HEADER.unpack_from(region.view, 0)
    finally:
        region.close()
    return fields if fields[0] == layout.SEGMENT_MAGIC else None


def _maps(pid: int, name: str) -> bool | None:
    """Does ``pid`` have ``/dev/shm/NAME`` mapped?  None if its maps cannot be read."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return f"{SHM_DIR}/{name.lstrip('/')}" in maps.read()
    except OSError:
        return None


def _live_pid(entry: IpcEntry) -> int | None:
    """The live server using this segment, if any."""
    header = read_header(entry)
    if header is None:
        # Not readable (another user's): System V still shows who is attached.
        if entry.api == "sysv" and entry.attached > 0:
            for pid in (entry.creator_pid, entry.last_pid):
                if pid_alive(pid):
                    return pid
        return None
    pid = header[3]
    if not pid_alive(pid):
        return None
    if entry.api == "sysv":
        return pid if entry.attached > 0 else None
    return pid if _maps(pid, entry.name) is not False else None


def live_server_pid(port: int) -> int | None:
    """The pid of a live server using ``port``'s objects, if there is one."""
    for entry in list_objects(port):
        if entry.kind == "shm":
            pid = _live_pid(entry)
            if pid is not None:
                return pid
    return None


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def whose(entries: list[IpcEntry]) -> str:
    """Who a port's objects belong to, in words: a live server (and whose), or nobody."""
    me = os.geteuid()
    others = ", ".join(owner_name(u) for u in sorted({e.uid for e in entries if e.uid != me}))
    user = f" (user {others})" if others else ""
    pid = live_server_pid(entries[0].port) if entries else None
    if pid is not None:
        return f"server pid {pid}{user}"
    if others and all(e.api == "posix" for e in entries):
        return f"user {others}'s, which cannot be read here: kept"
    return f"stale (server gone){user}"


def remove_stale(port: int | None = None) -> list[IpcEntry]:
    """Remove every object of this user whose server is gone; return what was removed."""
    entries = list_objects(port)
    live_ports = {p for p in {e.port for e in entries} if live_server_pid(p) is not None}
    removed = []
    for entry in entries:
        if entry.port in live_ports or entry.uid != os.geteuid():
            continue
        if backend(entry.api).remove_object(entry.kind, entry.ident):
            removed.append(entry)
    return removed


@dataclass(frozen=True)
class RunningServer:
    port: int
    pid: int
    clients: int  # online now; -1 when the client table could not be read
    traced: bool  # it has a trace segment (started with --trace)
    api: str = "sysv"


def _clients_online(entry: IpcEntry) -> int:
    try:
        region = backend(entry.api).open_readonly(entry.ident)
    except (*IPC_ERRORS, OSError, ValueError):
        return -1
    view = region.view
    try:
        slots = layout.SEGMENT_HEADER.unpack_from(view, 0)[2]
        return sum(
            1
            for slot in range(slots)
            if view[layout.SEGMENT_HEADER_SIZE + slot * layout.CLIENT_RECORD_SIZE] == SlotState.ONLINE
        )
    finally:
        region.close()


def running_servers() -> list[RunningServer]:
    """The live shmchat servers whose objects belong to this user, by port."""
    me = os.geteuid()
    by_port: dict[int, dict[IpcObject, IpcEntry]] = {}
    for entry in list_objects():
        if entry.uid == me and entry.kind == "shm":
            by_port.setdefault(entry.port, {})[entry.obj] = entry
    found = []
    for port, segments in sorted(by_port.items()):
        if IpcObject.CLIENTS_SEGMENT not in segments:
            continue  # a server half-created or half-removed
        pid = live_server_pid(port)
        if pid is None:
            continue  # stale objects of a dead server (python -m shm cleanup)
        clients_entry = segments[IpcObject.CLIENTS_SEGMENT]
        clients = _clients_online(clients_entry)
        found.append(
            RunningServer(port, pid, clients, IpcObject.TRACE_SEGMENT in segments, clients_entry.api)
        )
    return found


def describe(server: RunningServer) -> str:
    clients = "?" if server.clients < 0 else str(server.clients)
    noun = "client" if server.clients == 1 else "clients"
    traced = ", traced" if server.traced else ""
    api = ", POSIX IPC" if server.api == "posix" else ""
    return f"port {server.port}  server pid {server.pid}  {clients} {noun} online{traced}{api}"


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
