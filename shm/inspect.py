"""``python -m shm inspect``: a live, read-only view of a running server's tables.

This is the view an instructor projects while students chat.  It reads a
running server's System V objects the way any other process could, and shows:

* the client-details table: each slot's state, client id, worker pid (with the
  process state from ``/proc``, so a worker stopped with ``kill -STOP``
  shows as STOPPED), address, connection time, message counters, and the
  backlog waiting in its mailbox;
* the message-info table: per receiver, the records pending in its ring, how
  full the ring is, how many records it has delivered, and the headers of the
  oldest pending records (kind, sender, size, age);
* the group table: id, admin, members, invitations, requests to join;
* the two semaphores: value (1 free, 0 held), processes waiting, and the pid
  of the last ``semop``;
* the segments and semaphore sets as ``ipcs`` knows them (``/proc/sysvipc``).

How it stays out of the way
---------------------------
* The segments are attached with ``SHM_RDONLY``: the kernel itself refuses
  any write, so a bug here could crash the inspector, never the chat.
* Each table is read under its lock, taken once for that one read (a few
  record copies) and given back at once.  The lock is only ever *tried*
  (``IPC_NOWAIT``); if it stays busy for ``LOCK_PATIENCE`` seconds the table is
  reported as locked instead of waited for, so a wedged server cannot hang
  the inspector either.  The semaphores are read (``GETVAL``, ``GETPID``)
  before any lock is taken, so "last semop by" shows the server's processes.
* With ``--watch`` it attaches, reads and detaches on every refresh, so it
  never keeps a removed segment alive: when the server stops, ``ipcs`` is
  clean at once, and the inspector waits for the next server on that port.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

import sysv_ipc

from client.palette import id_colour, xterm_index
from shm import layout
from shm.directory import ClientInfo, Directory, GroupInfo
from shm.layout import IpcObject, RecordKind
from shm.locks import BinaryLock
from shm.mailboxes import MailboxStats, MessageTable
from shm.segments import IpcEntry, list_objects

#: How long a table lock may stay busy before the table is reported as locked.
LOCK_PATIENCE = 1.0
#: Pending record headers shown per mailbox.
PEEK_RECORDS = 4

OBJECT_LABELS = {
    IpcObject.CLIENTS_SEGMENT: "client table",
    IpcObject.MESSAGES_SEGMENT: "message table",
    IpcObject.GROUPS_SEGMENT: "group table",
    IpcObject.DIRECTORY_SEMAPHORE: "lock of client + group tables",
    IpcObject.MESSAGES_SEMAPHORE: "lock of message table",
}
GUARDS = {
    IpcObject.DIRECTORY_SEMAPHORE: "client + group tables",
    IpcObject.MESSAGES_SEMAPHORE: "message table",
}

PROCESS_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk wait",
    "T": "STOPPED",
    "t": "TRACED",
    "Z": "ZOMBIE",
    "X": "dead",
    "I": "idle",
}


class NotRunning(Exception):
    """No server's objects for this port (or they vanished mid-read)."""


class LockBusy(Exception):
    """A table lock stayed held for longer than LOCK_PATIENCE."""


class PatientLock:
    """A table lock that is only ever tried, for ``patience`` seconds at most.

    The reads the inspector makes (``Directory.snapshot``,
    ``MessageTable.stats``) take their lock with ``lock.held()``; handing the
    tables this instead of the server's ``BinaryLock`` is what makes the
    inspector unable to wait on a lock forever.
    """

    def __init__(self, lock: BinaryLock, patience: float = LOCK_PATIENCE) -> None:
        self.lock = lock
        self.patience = patience

    @contextmanager
    def held(self) -> Iterator[None]:
        deadline = time.monotonic() + self.patience
        while not self.lock.try_reserve():
            if time.monotonic() > deadline:
                raise LockBusy(f"held for over {self.patience:g} s by another process")
            time.sleep(0.002)
        try:
            yield
        finally:
            self.lock.release()


# -- the snapshot ----------------------------------------------------------------------


@dataclass
class SemaphoreView:
    obj: IpcObject
    key: int
    id: int
    value: int
    waiting: int  # processes blocked waiting to take it
    last_pid: int
    changed_at: float
    mode: int
    #: With --watch, the last process before this inspector's own reads.
    earlier_pid: int = 0
    earlier_at: float = 0.0


@dataclass
class Snapshot:
    port: int
    taken_at: float
    server_pid: int
    server_started: float
    server_state: str | None  # from /proc, None if the pid is gone
    objects: list[IpcEntry]
    modes: dict[int, int]  # IPC id -> permission bits
    semaphores: list[SemaphoreView]
    capacity: int
    group_capacity: int
    mailbox_bytes: int
    clients: list[ClientInfo] | None = None
    groups: list[GroupInfo] | None = None
    directory_error: str | None = None
    mailboxes: list[MailboxStats] | None = None
    messages_error: str | None = None
    processes: dict[int, str | None] = field(default_factory=dict)  # pid -> state letter

    def mailbox_of(self, client: ClientInfo) -> MailboxStats | None:
        if self.mailboxes is None or client.slot >= len(self.mailboxes):
            return None
        box = self.mailboxes[client.slot]
        return box if box.open and box.generation == client.generation else None

    def who(self, pid: int) -> str:
        """What a pid is to this server: the parent, a worker, or someone else."""
        if pid == self.server_pid:
            return "server parent"
        if pid == os.getpid():
            return "this inspector"
        for client in self.clients or []:
            if client.online and client.pid == pid:
                return f"worker of {client.client_id}"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                words = cmdline.read().split(b"\0")
        except OSError:
            return "exited"
        if b"inspect" in words:
            return "an inspector"
        return "other process"


def process_state(pid: int) -> str | None:
    """The state letter of a process from /proc (None if there is no such process)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _read_header(segment: sysv_ipc.SharedMemory) -> tuple:
    raw = segment.read(layout.SEGMENT_HEADER_SIZE, 0)
    fields = layout.SEGMENT_HEADER.unpack_from(raw, 0)
    if fields[0] != layout.SEGMENT_MAGIC or fields[1] != layout.LAYOUT_VERSION:
        raise NotRunning(f"a segment is not a shmchat v{layout.LAYOUT_VERSION} segment")
    return fields


def take_snapshot(port: int, patience: float = LOCK_PATIENCE, peek: int = PEEK_RECORDS) -> Snapshot:
    """Read everything there is to show about the server on ``port``."""
    objects = list_objects(port)
    segments = {e.obj: e for e in objects if e.kind == "shm"}
    sems = {e.obj: e for e in objects if e.kind == "sem"}
    missing = [o.name for o in (*layout.SEGMENTS, *layout.SEMAPHORES) if o not in segments and o not in sems]
    if missing:
        first = layout.ipc_key(port, IpcObject.CLIENTS_SEGMENT)
        raise NotRunning(
            f"no shmchat server on port {port}: no IPC objects with keys 0x{first:08x}..0x{first + 4:08x}"
            if len(missing) == 5
            else f"the server on port {port} is incomplete or going away (missing {', '.join(missing)})"
        )
    try:
        # The semaphores first: taking the locks below would make us their last user.
        views = []
        modes = {}
        for obj in layout.SEMAPHORES:
            sem = sysv_ipc.Semaphore(sems[obj].key)
            views.append(
                SemaphoreView(
                    obj,
                    sem.key,
                    sem.id,
                    sem.value,
                    sem.waiting_for_nonzero,
                    sem.last_pid,
                    sem.o_time,
                    sem.mode,
                )
            )
            modes[sem.id] = sem.mode
        attached: dict[IpcObject, sysv_ipc.SharedMemory] = {}
        try:
            for obj in layout.SEGMENTS:
                attached[obj] = sysv_ipc.attach(segments[obj].id, None, sysv_ipc.SHM_RDONLY)
                modes[segments[obj].id] = attached[obj].mode
            return _read_tables(port, objects, modes, views, attached, patience, peek)
        finally:
            for segment in attached.values():
                segment.detach()
    except sysv_ipc.ExistentialError as exc:
        raise NotRunning(f"the server on port {port} went away while it was being read ({exc})") from None


def _read_tables(
    port: int,
    objects: list[IpcEntry],
    modes: dict[int, int],
    semaphores: list[SemaphoreView],
    attached: dict[IpcObject, sysv_ipc.SharedMemory],
    patience: float,
    peek: int,
) -> Snapshot:
    header = _read_header(attached[IpcObject.CLIENTS_SEGMENT])
    for obj in (IpcObject.MESSAGES_SEGMENT, IpcObject.GROUPS_SEGMENT):
        _read_header(attached[obj])
    server_pid, started = header[3], header[4]
    locks = {
        obj: PatientLock(BinaryLock.attach(layout.ipc_key(port, obj)), patience) for obj in layout.SEMAPHORES
    }
    directory = Directory(
        attached[IpcObject.CLIENTS_SEGMENT],
        attached[IpcObject.GROUPS_SEGMENT],
        locks[IpcObject.DIRECTORY_SEMAPHORE],  # duck-typed: Directory only calls .held()
    )
    try:
        messages = MessageTable(attached[IpcObject.MESSAGES_SEGMENT], locks[IpcObject.MESSAGES_SEMAPHORE])
    except BaseException:
        directory.release()
        raise
    snap = Snapshot(
        port=port,
        taken_at=time.time(),
        server_pid=server_pid,
        server_started=started,
        server_state=process_state(server_pid),
        objects=objects,
        modes=modes,
        semaphores=semaphores,
        capacity=directory.capacity,
        group_capacity=directory.group_capacity,
        mailbox_bytes=messages.mailbox_bytes,
    )
    try:
        try:
            clients, groups = directory.snapshot()  # one hold of the directory lock
            snap.clients = clients
            snap.groups = sorted(groups, key=lambda g: g.created_at)
        except LockBusy as exc:
            snap.directory_error = f"directory lock {exc}; table not read"
        try:
            snap.mailboxes = messages.stats(peek=peek)  # one hold of the messages lock
        except LockBusy as exc:
            snap.messages_error = f"messages lock {exc}; table not read"
    finally:
        directory.release()
        messages.release()
    for client in snap.clients or []:
        if client.online and client.pid:
            snap.processes[client.pid] = process_state(client.pid)
    return snap


# -- JSON ------------------------------------------------------------------------------------


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k.name if isinstance(k, Enum) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def snapshot_json(snap: Snapshot) -> str:
    return json.dumps(_plain(snap), indent=2, sort_keys=True)


# -- text for a terminal -------------------------------------------------------------------

SGR = {
    "title": "1;7",
    "head": "1;4",
    "label": "1",
    "dim": "2",
    "good": "32",
    "warn": "1;33",
    "bad": "1;31",
    "note": "36",
}

Cell = tuple[str, str]  # (style name or "id:12345", text)


def _id_cell(value: int, suffix: str = "") -> Cell:
    return (f"id:{value}", f"{value}{suffix}")


def _ids_cells(values: list[int], sep: str = ", ") -> list[Cell]:
    cells: list[Cell] = []
    for index, value in enumerate(values):
        if index:
            cells.append(("", sep))
        cells.append(_id_cell(value))
    return cells or [("dim", "-")]


class Screen:
    """Lines of styled cells, rendered with or without colour, cut to a width."""

    def __init__(self, color: bool, width: int) -> None:
        self.color = color
        self.width = width
        self.lines: list[list[Cell]] = []

    def add(self, *cells: Cell | list[Cell]) -> None:
        line: list[Cell] = []
        for cell in cells:
            line.extend(cell if isinstance(cell, list) else [cell])
        self.lines.append(line)

    def blank(self) -> None:
        self.lines.append([])

    def table(self, headers: list[str], rows: list[list[list[Cell]]], right: set[int] = frozenset()) -> None:
        widths = [len(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], sum(len(t) for _, t in cell))
        head: list[Cell] = []
        for i, h in enumerate(headers):
            head.append(("head", h.rjust(widths[i]) if i in right else h.ljust(widths[i])))
            head.append(("", "  "))
        self.lines.append([("", " "), *head[:-1]])
        for row in rows:
            line: list[Cell] = [("", " ")]
            for i, cell in enumerate(row):
                pad = widths[i] - sum(len(t) for _, t in cell)
                if i in right:
                    line.append(("", " " * pad))
                    line.extend(cell)
                else:
                    line.extend(cell)
                    if i < len(row) - 1:
                        line.append(("", " " * pad))
                if i < len(row) - 1:
                    line.append(("", "  "))
            self.lines.append(line)

    def _code(self, style: str) -> str:
        if style.startswith("id:"):
            return f"1;38;5;{xterm_index(id_colour(int(style[3:])))}"
        return SGR.get(style, "")

    def render(self, height: int | None = None) -> list[str]:
        out = []
        lines = self.lines
        if height is not None and len(lines) > height:
            hidden = len(lines) - height + 1
            lines = [*lines[: height - 1], [("warn", f" ... {hidden} more line(s): enlarge the window")]]
        for line in lines:
            text = []
            room = self.width
            for style, chunk in line:
                if room <= 0:
                    break
                chunk = chunk[:room]
                room -= len(chunk)
                code = self._code(style) if self.color else ""
                text.append(f"\x1b[{code}m{chunk}\x1b[0m" if code else chunk)
            out.append("".join(text).rstrip() if not self.color else "".join(text))
        return out


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB".replace(".0 ", " ")
    return f"{count / 1024 / 1024:.1f} MiB".replace(".0 ", " ")


def _clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp))


def _bar(used: int, total: int, width: int = 10) -> str:
    if total <= 0:
        return "[" + " " * width + "]"
    filled = min(width, max(1 if used else 0, round(width * used / total)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _slot_run(slots: list[int]) -> str:
    """``3`` or ``3-4``: a run of consecutive slots shown as one row."""
    return str(slots[0]) if len(slots) == 1 else f"{slots[0]}-{slots[-1]}"


def _segment(snap: Snapshot, obj: IpcObject) -> IpcEntry:
    return next(e for e in snap.objects if e.kind == "shm" and e.obj == obj)


def render(snap: Snapshot, color: bool = False, width: int = 120) -> Screen:
    """The whole view as a Screen."""
    screen = Screen(color, width)
    now = snap.taken_at
    alive = snap.server_state not in (None, "Z", "X")
    status = ("good", "running") if alive else ("bad", "GONE")
    title = f" shmchat inspector · port {snap.port} · server pid {snap.server_pid} "
    screen.add(
        ("title", title),
        ("", " "),
        status,
        ("", f" · up {_age(now - snap.server_started)} · "),
        ("label", _clock(now)),
    )
    screen.add(
        (
            "dim",
            " read-only: segments attached with SHM_RDONLY for each read; each lock only tried, "
            "held for one table read",
        )
    )
    _render_clients(screen, snap, now)
    _render_messages(screen, snap, now)
    _render_groups(screen, snap)
    _render_semaphores(screen, snap, now)
    _render_objects(screen, snap)
    return screen


def _render_clients(screen: Screen, snap: Snapshot, now: float) -> None:
    seg = _segment(snap, IpcObject.CLIENTS_SEGMENT)
    screen.blank()
    online = [c for c in snap.clients or [] if c.online]
    screen.add(
        ("label", " CLIENT TABLE"),
        ("dim", f"  shmid {seg.id} · {seg.size:,} B · {layout.CLIENT_RECORD_SIZE}-byte record per slot · "),
        ("label", f"{len(online)}/{snap.capacity} online"),
    )
    if snap.clients is None:
        screen.add(("bad", f" {snap.directory_error}"))
        return
    rows = []
    free_run: list[int] = []

    def flush_free() -> None:
        if free_run:
            rows.append([[("dim", _slot_run(free_run))], [("dim", "free")]] + [[]] * 7)
            free_run.clear()

    for client in snap.clients:
        if not client.online:
            free_run.append(client.slot)
            continue
        flush_free()
        state = snap.processes.get(client.pid)
        state_word = PROCESS_STATES.get(state or "", "gone" if state is None else state)
        bad = state in (None, "T", "t", "Z", "X")
        box = snap.mailbox_of(client)
        if box is None:
            backlog: list[Cell] = [("dim", "-")]
        elif box.pending_records:
            backlog = [("warn", f"{box.pending_records} msg(s)")]
        else:
            backlog = [("good", "0")]
        rows.append(
            [
                [("", str(client.slot))],
                [("good", "online")],
                [_id_cell(client.client_id)],
                [("", f"{client.pid} "), ("bad" if bad else "dim", state_word)],
                [("", f"{client.peer_host}:{client.peer_port}")],
                [("", _clock(client.connected_at)), ("dim", f" ({_age(now - client.connected_at)})")],
                [("", str(client.sent))],
                [("", str(client.received))],
                backlog,
            ]
        )
    flush_free()
    screen.table(
        ["slot", "state", "client", "worker pid", "address", "connected at", "posted", "taken", "backlog"],
        rows,
        right={0, 6, 7},
    )


_KIND_WORDS = {
    RecordKind.PRIVATE: "private",
    RecordKind.BROADCAST: "broadcast",
    RecordKind.GROUP: "group msg",
    RecordKind.NOTICE: "notice",
    RecordKind.BOUNCE: "bounce",
    RecordKind.FILE: "file",
    RecordKind.FILE_RESULT: "file result",
    RecordKind.SHUTDOWN: "shutdown",
}


def _render_messages(screen: Screen, snap: Snapshot, now: float) -> None:
    seg = _segment(snap, IpcObject.MESSAGES_SEGMENT)
    screen.blank()
    screen.add(
        ("label", " MESSAGE TABLE"),
        (
            "dim",
            f"  shmid {seg.id} · {seg.size:,} B · one mailbox per slot: "
            f"{layout.MAILBOX_HEADER_SIZE}-byte header + {_bytes(snap.mailbox_bytes)} ring",
        ),
    )
    if snap.mailboxes is None:
        screen.add(("bad", f" {snap.messages_error}"))
        return
    owners = {c.slot: c for c in snap.clients or [] if c.online}
    rows = []
    details: dict[int, list[list[Cell]]] = {}
    closed_run: list[int] = []

    def flush_closed() -> None:
        if closed_run:
            rows.append([[("dim", _slot_run(closed_run))], [("dim", "closed")]] + [[]] * 5)
            closed_run.clear()

    for box in snap.mailboxes:
        owner = owners.get(box.slot)
        if not box.open:
            closed_run.append(box.slot)
            continue
        flush_closed()
        receiver = [_id_cell(owner.client_id)] if owner else [("dim", "?")]
        pending_style = "warn" if box.pending_records else ""
        waiters = [owners[s].client_id for s in box.waiters if s in owners]
        rows.append(
            [
                [("", str(box.slot))],
                receiver,
                [(pending_style, str(box.pending_records))],
                [
                    (pending_style, _bar(box.pending_bytes, snap.mailbox_bytes)),
                    ("", f" {_bytes(box.pending_bytes)}"),
                ],
                [("", str(box.delivered))],
                [("warn" if box.full_events else "", str(box.full_events))],
                _ids_cells(waiters),
            ]
        )
        lines = []
        for record in box.pending:
            lines.append(
                [
                    ("dim", "      └ "),
                    ("", _KIND_WORDS.get(record.kind, record.kind.name.lower())),
                    *(
                        [("", " from "), _id_cell(record.sender_id)]
                        if record.sender_id
                        else [("dim", " from the server")]
                    ),
                    *([("", " in group "), _id_cell(record.group_id)] if record.group_id else []),
                    ("dim", f" · {record.size} B · {_age(now - record.posted_at)} old"),
                ]
            )
        if box.pending_records > len(box.pending):
            lines.append([("dim", f"      └ ... and {box.pending_records - len(box.pending)} more")])
        details[len(rows) - 1] = lines
    flush_closed()
    before = len(screen.lines)
    screen.table(
        ["slot", "receiver", "pending", "ring used", "delivered", "full", "waiting for room"],
        rows,
        right={0, 2, 4, 5},
    )
    # Put each mailbox's pending records under its row.
    table_rows = screen.lines[before + 1 :]
    del screen.lines[before + 1 :]
    for index, line in enumerate(table_rows):
        screen.lines.append(line)
        screen.lines.extend(details.get(index, []))


def _render_groups(screen: Screen, snap: Snapshot) -> None:
    seg = _segment(snap, IpcObject.GROUPS_SEGMENT)
    screen.blank()
    groups = snap.groups
    count = "?" if groups is None else str(len(groups))
    screen.add(
        ("label", " GROUP TABLE"),
        ("dim", f"  shmid {seg.id} · {seg.size:,} B · {layout.GROUP_RECORD_SIZE}-byte record per group · "),
        ("label", f"{count}/{snap.group_capacity} in use"),
    )
    if groups is None:
        screen.add(("bad", f" {snap.directory_error}"))
        return
    if not groups:
        screen.add(("dim", " no groups yet (/makegroup or /makegroupreq makes one)"))
        return
    rows = []
    for group in groups:
        rows.append(
            [
                [_id_cell(group.group_id)],
                [_id_cell(group.admin_id)],
                [*_ids_cells(group.members), ("dim", f"  ({len(group.members)}/{layout.MAX_GROUP_MEMBERS})")],
                _ids_cells(group.invited),
                _ids_cells(group.requests),
                [("", _clock(group.created_at))],
            ]
        )
    screen.table(["group", "admin", "members", "invited", "asking to join", "created"], rows)


def _render_semaphores(screen: Screen, snap: Snapshot, now: float) -> None:
    screen.blank()
    screen.add(("label", " SEMAPHORES"), ("dim", "  one binary lock each, SEM_UNDO on: 1 = free, 0 = held"))
    rows = []
    for sem in snap.semaphores:
        value = [("good", "1 free")] if sem.value == 1 else [("bad", f"{sem.value} HELD")]
        last: list[Cell] = [("dim", "-")]
        pid, at, then = sem.last_pid, sem.changed_at, ""
        if pid == os.getpid() and sem.earlier_pid:  # our own reads hide who came before
            pid, at, then = sem.earlier_pid, sem.earlier_at, " (then the inspector)"
        if pid:
            who = snap.who(pid)
            if who.startswith("worker of "):
                whom = [("dim", " worker of "), _id_cell(int(who.split()[-1]))]
            else:
                whom = [("dim", f" {who}")]
            ago = f", {_age(now - at)} ago" if at else ""
            last = [("", str(pid)), *whom, ("dim", ago + then)]
        rows.append(
            [
                [("", str(sem.id))],
                [("", f"0x{sem.key:08x}")],
                [("", GUARDS[sem.obj])],
                value,
                [("warn" if sem.waiting else "", str(sem.waiting))],
                last,
            ]
        )
    screen.table(["semid", "key", "guards", "value", "waiting", "last semop by"], rows, right={4})


def _render_objects(screen: Screen, snap: Snapshot) -> None:
    screen.blank()
    screen.add(("label", " IPC OBJECTS"), ("dim", "  as ipcs -m / ipcs -s show them (/proc/sysvipc)"))
    rows = []
    attached = 0
    for entry in snap.objects:
        mode = snap.modes.get(entry.id)
        if entry.kind == "shm":
            attached = max(attached, entry.attached)
            size, nattch = f"{entry.size:,} B", str(entry.attached)
        else:
            size, nattch = f"{entry.size} sem", "-"
        rows.append(
            [
                [("", entry.kind)],
                [("", f"0x{entry.key:08x}")],
                [("", str(entry.id))],
                [("", size)],
                [("", nattch)],
                [("", f"{mode & 0o777:o}" if mode is not None else "?")],
                [("", OBJECT_LABELS[entry.obj])],
            ]
        )
    screen.table(["kind", "key", "id", "size", "nattch", "perms", "holds"], rows, right={2, 3, 4})
    workers = sum(1 for c in snap.clients or [] if c.online)
    screen.add(
        (
            "note",
            f" nattch {attached} = server parent + {workers} worker(s): fork inherits attachments "
            "(the inspector detaches between reads)",
        )
    )


def render_text(snap: Snapshot, color: bool = False, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((120, 40)).columns
    return "\n".join(render(snap, color, width).render()) + "\n"


def _waiting_screen(port: int, reason: str, color: bool, width: int) -> Screen:
    screen = Screen(color, width)
    screen.add(("title", f" shmchat inspector · port {port} "), ("", "  "), ("label", _clock(time.time())))
    screen.blank()
    screen.add(("warn", f" {reason}"))
    screen.add(("dim", f" waiting for a server: python -m server --port {port}"))
    return screen


# -- the command -------------------------------------------------------------------------


def use_color(choice: str, stream: object) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def run_once(port: int, as_json: bool, color: bool) -> int:
    try:
        snap = take_snapshot(port)
    except NotRunning as exc:
        print(f"shm inspect: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(snapshot_json(snap) + "\n" if as_json else render_text(snap, color))
    return 0


def run_watch(port: int, interval: float, color: bool) -> int:
    """Redraw in place every ``interval`` seconds until Ctrl-C."""
    out = sys.stdout
    tty = out.isatty()
    if tty:
        out.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
    earlier: dict[IpcObject, tuple[int, float]] = {}  # the last semop that was not ours
    try:
        while True:
            size = shutil.get_terminal_size((120, 40))
            try:
                snap = take_snapshot(port)
                for sem in snap.semaphores:
                    if sem.last_pid != os.getpid():
                        earlier[sem.obj] = (sem.last_pid, sem.changed_at)
                    elif sem.obj in earlier:
                        sem.earlier_pid, sem.earlier_at = earlier[sem.obj]
                screen = render(snap, color, size.columns)
            except NotRunning as exc:
                earlier.clear()
                screen = _waiting_screen(port, str(exc), color, size.columns)
            lines = screen.render(size.lines if tty else None)
            if tty:
                out.write(
                    "\x1b[H" + "".join(line + "\x1b[K\n" for line in lines[:-1]) + lines[-1] + "\x1b[K\x1b[J"
                )
            else:
                out.write("\n".join(lines) + "\n\n")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if tty:
            out.write("\x1b[?25h\n")
            out.flush()
