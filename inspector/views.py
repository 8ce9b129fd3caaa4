"""The inspector's view of a snapshot: five sections, as a person reads them.

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

Everything here works on a ``shm.snapshot.Snapshot`` already copied out of
shared memory, so drawing can never touch the server's tables.
"""

from __future__ import annotations

import os
import shutil
import time

from inspector.screen import Cell, Screen, id_cell, ids_cells
from protocol.wire import format_address
from shm import layout
from shm.discovery import IpcEntry
from shm.layout import IpcObject, RecordKind
from shm.snapshot import Snapshot
from syscalls import programs

OBJECT_LABELS = {
    IpcObject.CLIENTS_SEGMENT: "client table",
    IpcObject.MESSAGES_SEGMENT: "message table",
    IpcObject.GROUPS_SEGMENT: "group table",
    IpcObject.DIRECTORY_SEMAPHORE: "lock of client + group tables",
    IpcObject.MESSAGES_SEMAPHORE: "lock of message table",
    IpcObject.TRACE_SEGMENT: "trace table (--trace)",
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


def _where(seg: IpcEntry) -> str:
    return seg.name if seg.api == "posix" else f"shmid {seg.id}"


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
            " read-only: segments "
            + ("mapped PROT_READ" if snap.api == "posix" else "attached with SHM_RDONLY")
            + " for each read; each lock only tried, held for one table read",
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
        ("dim", f"  {_where(seg)} · {seg.size:,} B · {layout.CLIENT_RECORD_SIZE}-byte record per slot · "),
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
                [id_cell(client.client_id)],
                [("", f"{client.pid} "), ("bad" if bad else "dim", state_word)],
                [("", format_address(client.peer_host, client.peer_port))],
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
            f"  {_where(seg)} · {seg.size:,} B · one mailbox per slot: "
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
        receiver = [id_cell(owner.client_id)] if owner else [("dim", "?")]
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
                ids_cells(waiters),
            ]
        )
        lines = []
        for record in box.pending:
            lines.append(
                [
                    ("dim", "      └ "),
                    ("", _KIND_WORDS.get(record.kind, record.kind.name.lower())),
                    *(
                        [("", " from "), id_cell(record.sender_id)]
                        if record.sender_id
                        else [("dim", " from the server")]
                    ),
                    *([("", " in group "), id_cell(record.group_id)] if record.group_id else []),
                    ("dim", f" · {record.size} B · {_age(now - record.posted_at)} old"),
                ]
            )
        if box.pending_records > len(box.pending):
            lines.append([("dim", f"      └ ... and {box.pending_records - len(box.pending)} more")])
        details[len(rows) - 1] = lines
    flush_closed()
    screen.table(
        ["slot", "receiver", "pending", "ring used", "delivered", "full", "waiting for room"],
        rows,
        right={0, 2, 4, 5},
        under=details,  # each mailbox's pending records under its row
    )


def _render_groups(screen: Screen, snap: Snapshot) -> None:
    seg = _segment(snap, IpcObject.GROUPS_SEGMENT)
    screen.blank()
    groups = snap.groups
    count = "?" if groups is None else str(len(groups))
    screen.add(
        ("label", " GROUP TABLE"),
        ("dim", f"  {_where(seg)} · {seg.size:,} B · {layout.GROUP_RECORD_SIZE}-byte record per group · "),
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
                [id_cell(group.group_id)],
                [id_cell(group.admin_id)],
                [*ids_cells(group.members), ("dim", f"  ({len(group.members)}/{layout.MAX_GROUP_MEMBERS})")],
                ids_cells(group.invited),
                ids_cells(group.requests),
                [("", _clock(group.created_at))],
            ]
        )
    screen.table(["group", "admin", "members", "invited", "asking to join", "created"], rows)


def _render_semaphores(screen: Screen, snap: Snapshot, now: float) -> None:
    screen.blank()
    posix = snap.api == "posix"
    undo = "POSIX named, no undo" if posix else "SEM_UNDO on"
    screen.add(("label", " SEMAPHORES"), ("dim", f"  one binary lock each, {undo}: 1 = free, 0 = held"))
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
                whom = [("dim", " worker of "), id_cell(int(who.split()[-1]))]
            else:
                whom = [("dim", f" {who}")]
            ago = f", {_age(now - at)} ago" if at and not posix else ""
            last = [("", str(pid)), *whom, ("dim", ago + then)]
        rows.append(
            [
                [("", sem.name or str(sem.id))],
                [("", "-" if posix else f"0x{sem.key:08x}")],
                [("", GUARDS[sem.obj])],
                value,
                [("warn" if sem.waiting > 0 else "", "-" if sem.waiting < 0 else str(sem.waiting))],
                last,
            ]
        )
    # POSIX: the holder recorded in the segment header; System V: semctl GETPID.
    heading = ["name", "key", "guards", "value", "waiting", "holder"] if posix else None
    screen.table(heading or ["semid", "key", "guards", "value", "waiting", "last semop by"], rows, right={4})


def _render_objects(screen: Screen, snap: Snapshot) -> None:
    screen.blank()
    posix = snap.api == "posix"
    shown = "ls -l /dev/shm shows them (sem.NAME: a semaphore)" if posix else "ipcs -m / ipcs -s show them"
    screen.add(("label", " IPC OBJECTS"), ("dim", f"  as {shown}"))
    rows = []
    attached = 0
    for entry in snap.objects:
        mode = snap.modes.get(entry.ident)
        if entry.kind == "shm":
            attached = max(attached, entry.attached)
            size, nattch = f"{entry.size:,} B", "-" if posix else str(entry.attached)
        else:
            size, nattch = f"{entry.size} sem", "-"
        file = "/dev/shm/" + ("" if entry.kind == "shm" else "sem.") + entry.name.lstrip("/")
        rows.append(
            [
                [("", entry.kind)],
                [("", file if posix else f"0x{entry.key:08x}")],
                [("", "-" if posix else str(entry.id))],
                [("", size)],
                [("", nattch)],
                [("", f"{mode & 0o777:o}" if mode is not None else "?")],
                [("", OBJECT_LABELS[entry.obj])],
            ]
        )
    heading = "file" if posix else "key"
    screen.table(["kind", heading, "id", "size", "nattch", "perms", "holds"], rows, right={2, 3, 4})
    workers = sum(1 for c in snap.clients or [] if c.online)
    what = "mappings" if posix else f"attachments, nattch {attached} = server parent + {workers} worker(s)"
    screen.add(("note", f" fork inherits {what} (the inspector lets go between reads)"))


def render_text(snap: Snapshot, color: bool = False, width: int | None = None) -> str:
    """One snapshot as text, as wide as the terminal (or 120 columns off one)."""
    width = width or shutil.get_terminal_size((120, 40)).columns
    return "\n".join(render(snap, color, width).render()) + "\n"


def waiting_screen(port: int, reason: str, color: bool, width: int) -> Screen:
    """What ``--watch`` shows while no server is on the port: why, and how to start one."""
    screen = Screen(color, width)
    screen.add(("title", f" shmchat inspector · port {port} "), ("", "  "), ("label", _clock(time.time())))
    screen.blank()
    screen.add(("warn", f" {reason}"))
    screen.add(("dim", f" waiting for a server: {programs.command('server')} --port {port}"))
    return screen
