"""The client-details table and the group table, under one directory lock.

Client ids and group ids come from one namespace (``/sendfile <id>`` must be
able to tell a client from a group), so every id allocation has to look at
both tables at once.  One semaphore, the *directory lock*, therefore guards
both segments.  Every public method here takes it once, does a handful of
record copies and gives it back; no method posts mail or touches a socket
while holding it, so the directory lock is never held together with the
messages lock and the two can never deadlock.

The rules of groups (the 5-member cap, invitations, admin hand-over) live
here too, because they must be applied atomically with the reads that justify
them: a member that leaves between the check and the write would otherwise
be added to a group after its departure had been cleaned up.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

from shm import layout
from shm.layout import (
    CLIENT_RECORD,
    CLIENT_RECORD_SIZE,
    GROUP_RECORD,
    GROUP_RECORD_SIZE,
    MAX_GROUP_INVITES,
    MAX_GROUP_MEMBERS,
    MAX_GROUP_REQUESTS,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SlotState,
)
from shm.locks import TableLock


@dataclass(frozen=True)
class ClientInfo:
    """One row of the client-details table, as read under the lock."""

    slot: int
    state: SlotState
    client_id: int
    pid: int
    generation: int
    connected_at: float
    peer_host: str
    peer_port: int
    sent: int
    received: int

    @property
    def online(self) -> bool:
        return self.state == SlotState.ONLINE


@dataclass
class GroupInfo:
    """One row of the group table."""

    slot: int
    group_id: int
    admin_id: int
    created_at: float
    members: list[int] = field(default_factory=list)  # join order, admin included
    invited: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)


@dataclass
class GroupChange:
    """What a departure did to one group, for the notices the caller sends."""

    group: GroupInfo  # the group after the change
    left_id: int
    new_admin: int | None = None  # set when the admin left and someone took over
    dissolved: bool = False


#: Groups one client may administer at once.
MAX_GROUPS_PER_ADMIN = 4


class GroupError(Exception):
    """A group request that breaks a rule; the message is shown to the caller."""


@dataclass
class GroupCreated:
    group: GroupInfo
    skipped: dict[int, str]  # requested id -> why it was not added or invited
    duplicates: list[int] = field(default_factory=list)  # ids named more than once, counted once


@dataclass
class JoinOutcome:
    """Result of ``/joingroup``: joined at once, or a request for the admin."""

    group: GroupInfo
    joined: bool
    already: bool = False


def _decode_host(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii", "replace")


def _padded(values: list[int], size: int) -> list[int]:
    return values + [0] * (size - len(values))


class Directory:
    """Client and group tables in their two segments, with the lock over both."""

    def __init__(
        self,
        clients_segment: memoryview,
        groups_segment: memoryview,
        lock: TableLock,
    ) -> None:
        self._clients_view = memoryview(clients_segment)
        self._groups_view = memoryview(groups_segment)
        self.lock = lock
        self.capacity = SEGMENT_HEADER.unpack_from(self._clients_view, 0)[2]
        self.group_capacity = SEGMENT_HEADER.unpack_from(self._groups_view, 0)[2]
        self._rng: random.Random = random.SystemRandom()
        self._cached_epoch = -1
        self._cache: tuple[list[ClientInfo], dict[int, ClientInfo]] = ([], {})

    @staticmethod
    def format(
        clients_segment: memoryview,
        groups_segment: memoryview,
        max_clients: int,
        max_groups: int,
        server_pid: int,
    ) -> None:
        """Write the headers of two freshly created (zero-filled) segments."""
        now = time.time()
        for segment, count in ((clients_segment, max_clients), (groups_segment, max_groups)):
            header = SEGMENT_HEADER.pack(
                layout.SEGMENT_MAGIC, layout.LAYOUT_VERSION, count, server_pid, now, 0
            )
            segment[: len(header)] = header

    def release(self) -> None:
        """Drop the memoryviews; required before the segments are detached."""
        self._clients_view.release()
        self._groups_view.release()

    # -- raw record access (caller holds the lock) ---------------------------

    def _read_client(self, slot: int) -> ClientInfo:
        state, cid, pid, gen, since, port, host, sent, received = CLIENT_RECORD.unpack_from(
            self._clients_view, SEGMENT_HEADER_SIZE + slot * CLIENT_RECORD_SIZE
        )
        return ClientInfo(
            slot, SlotState(state), cid, pid, gen, since, _decode_host(host), port, sent, received
        )

    def _write_client(self, info: ClientInfo) -> None:
        # pack, then one copy: pack_into zero-fills the record before writing its
        # fields, so a worker killed inside it would leave a zeroed row behind.
        offset = SEGMENT_HEADER_SIZE + info.slot * CLIENT_RECORD_SIZE
        # A store into shared memory: this slice assignment writes the client row.
        self._clients_view[offset : offset + CLIENT_RECORD_SIZE] = CLIENT_RECORD.pack(
            int(info.state),
            info.client_id,
            info.pid,
            info.generation,
            info.connected_at,
            info.peer_port,
            info.peer_host.encode("ascii", "replace")[: layout.CLIENT_HOST_BYTES],
            info.sent,
            info.received,
        )

    def _read_group(self, slot: int) -> GroupInfo | None:
        fields = GROUP_RECORD.unpack_from(self._groups_view, SEGMENT_HEADER_SIZE + slot * GROUP_RECORD_SIZE)
        if fields[0] == 0:
            return None
        n_members, n_invites, n_requests = fields[1], fields[2], fields[3]
        gid, admin, created = fields[4], fields[5], fields[6]
        pos = 7
        members = list(fields[pos : pos + n_members])
        pos += MAX_GROUP_MEMBERS
        invited = list(fields[pos : pos + n_invites])
        pos += MAX_GROUP_INVITES
        requests = list(fields[pos : pos + n_requests])
        return GroupInfo(slot, gid, admin, created, members, invited, requests)

    def _write_group(self, group: GroupInfo) -> None:
        offset = SEGMENT_HEADER_SIZE + group.slot * GROUP_RECORD_SIZE  # one copy, as in _write_client
        # A store into shared memory: this slice assignment writes the group row.
        self._groups_view[offset : offset + GROUP_RECORD_SIZE] = GROUP_RECORD.pack(
            1,
            len(group.members),
            len(group.invited),
            len(group.requests),
            group.group_id,
            group.admin_id,
            group.created_at,
            *_padded(group.members, MAX_GROUP_MEMBERS),
            *_padded(group.invited, MAX_GROUP_INVITES),
            *_padded(group.requests, MAX_GROUP_REQUESTS),
        )

    def _clear_group(self, slot: int) -> None:
        offset = SEGMENT_HEADER_SIZE + slot * GROUP_RECORD_SIZE
        self._groups_view[offset : offset + GROUP_RECORD_SIZE] = bytes(GROUP_RECORD_SIZE)

    def _all_clients(self) -> list[ClientInfo]:
        return [self._read_client(slot) for slot in range(self.capacity)]

    def _all_groups(self) -> list[GroupInfo]:
        groups = [self._read_group(slot) for slot in range(self.group_capacity)]
        return [g for g in groups if g is not None]

    def _online_by_id(self) -> dict[int, ClientInfo]:
        return {c.client_id: c for c in self._all_clients() if c.online}

    def _new_id(self) -> int:
        """Draw a random id that no online client and no group holds."""
        taken = {c.client_id for c in self._all_clients() if c.online}
        taken.update(g.group_id for g in self._all_groups())
        while True:
            candidate = self._rng.randint(layout.ID_MIN, layout.ID_MAX)
            if candidate not in taken:
                return candidate

    def _find_group(self, group_id: int) -> GroupInfo | None:
        for group in self._all_groups():
            if group.group_id == group_id:
                return group
        return None

    def _no_such_group(self, group_id: int) -> GroupError:
        """The error for a group id that names no group (caller holds the lock)."""
        if group_id in self._online_by_id():
            return GroupError(
                f"group {group_id} does not exist; {group_id} is a client (/send {group_id} <message>)"
            )
        return GroupError(f"group {group_id} does not exist")

    # -- clients -------------------------------------------------------------

    def claim_slot(self, peer_host: str, peer_port: int) -> ClientInfo | None:
        """Give a new connection a free slot and a fresh id, or None when full."""
        with self.lock.held():
            for slot in range(self.capacity):
                current = self._read_client(slot)
                if current.online:
                    continue
                info = ClientInfo(
                    slot=slot,
                    state=SlotState.ONLINE,
                    client_id=self._new_id(),
                    pid=0,
                    generation=(current.generation + 1) & 0xFFFFFFFF,
                    connected_at=time.time(),
                    peer_host=peer_host,
                    peer_port=peer_port,
                    sent=0,
                    received=0,
                )
                self._write_client(info)
                self._bump_epoch()
                return info
        return None

    def set_worker_pid(self, slot: int, generation: int, pid: int) -> None:
        with self.lock.held():
            info = self._read_client(slot)
            if info.online and info.generation == generation:
                self._write_client(replace(info, pid=pid))

    def release_slot(self, slot: int, generation: int) -> tuple[ClientInfo, list[GroupChange]] | None:
        """Free a departed client's slot and take it out of every group.

        Returns the row as it was and what happened to each group it was in,
        or None if the slot had already been released (or reused).
        """
        with self.lock.held():
            info = self._read_client(slot)
            if not info.online or info.generation != generation:
                return None
            self._write_client(replace(info, state=SlotState.FREE, pid=0))
            self._bump_epoch()
            changes = self._remove_from_groups(info.client_id)
        return info, changes

    def count_traffic(self, slot: int, sent: int, received: int) -> None:
        """Add to a slot's statistics.  Only the slot's own worker calls this."""
        with self.lock.held():
            info = self._read_client(slot)
            if info.online:
                self._write_client(replace(info, sent=info.sent + sent, received=info.received + received))

    def online(self) -> list[ClientInfo]:
        """Every online client, in slot order (from this process's cache)."""
        return list(self._online_cache()[0])

    def online_by_id(self) -> dict[int, ClientInfo]:
        """Every online client by id (from this process's cache; a copy to keep)."""
        return dict(self._online_cache()[1])

    def _online_cache(self) -> tuple[list[ClientInfo], dict[int, ClientInfo]]:
        """The decoded client list, re-read only when the change counter moves.

        Routing a message needs the receiver's slot and generation; the list
        changes only when somebody joins or leaves, so decoding every row
        under the directory lock for each message would take that lock, and
        do that work, for nothing nearly every time.  The counter is read
        without the lock: a change that lands just after the read is seen by
        the next message, exactly as if this one had been sent a moment
        earlier, and a stale entry can only make a post find the mailbox
        GONE, which the sender is told.
        """
        epoch = layout.SEGMENT_EPOCH.unpack_from(self._clients_view, layout.SEGMENT_EPOCH_OFFSET)[0]
        if epoch != self._cached_epoch:
            with self.lock.held():
                epoch = layout.SEGMENT_EPOCH.unpack_from(self._clients_view, layout.SEGMENT_EPOCH_OFFSET)[0]
                clients = [c for c in self._all_clients() if c.online]
            self._cache = (clients, {c.client_id: c for c in clients})
            self._cached_epoch = epoch
        return self._cache

    def _bump_epoch(self) -> None:
        """Tell every cache that the client list changed (caller holds the lock)."""
        offset = layout.SEGMENT_EPOCH_OFFSET
        epoch = layout.SEGMENT_EPOCH.unpack_from(self._clients_view, offset)[0]
        # A store into shared memory: the new epoch, one aligned 4-byte field.
        self._clients_view[offset : offset + 4] = layout.SEGMENT_EPOCH.pack((epoch + 1) & 0xFFFFFFFF)

    def snapshot(self) -> tuple[list[ClientInfo], list[GroupInfo]]:
        """Every client slot and every group, read under one hold (the inspector)."""
        with self.lock.held():
            return self._all_clients(), self._all_groups()

    def find_client(self, client_id: int) -> ClientInfo | None:
        return self._online_cache()[1].get(client_id)

    def resolve(self, target_id: int) -> ClientInfo | GroupInfo | None:
        """Tell whether an id names an online client, a group, or nothing."""
        client = self._online_cache()[1].get(target_id)
        if client is not None:
            return client
        with self.lock.held():
            return self._find_group(target_id)

    # -- groups --------------------------------------------------------------

    def create_group(self, admin_id: int, requested: list[int], invite_only: bool) -> GroupCreated:
        """Make a group with ``admin_id`` as admin.

        With ``invite_only`` false (``/makegroup``) the online requested ids
        join at once; with it true (``/makegroupreq``) they are invited.
        Duplicates are collapsed and reported; the caller's own id, unknown and offline ids
        are skipped and reported.  More members than the cap allows is refused
        outright, so no group is ever made with a surprising subset.
        """
        wanted: list[int] = []
        skipped: dict[int, str] = {}
        duplicates: list[int] = []
        for cid in requested:
            if cid == admin_id:
                skipped[cid] = "that is you; you are the admin"
            elif cid not in wanted:
                wanted.append(cid)
            elif cid not in duplicates:
                duplicates.append(cid)
        limit = MAX_GROUP_MEMBERS - 1
        if len(wanted) > limit:
            raise GroupError(
                f"a group holds at most {MAX_GROUP_MEMBERS} members including you; "
                f"you named {len(wanted)} others (at most {limit})"
            )
        with self.lock.held():
            online = self._online_by_id()
            accepted = []
            for cid in wanted:
                if cid in online:
                    accepted.append(cid)
                else:
                    skipped[cid] = "not an online client"
            if not accepted:
                raise GroupError("no group made: none of the ids is another online client")
            groups = [self._read_group(s) for s in range(self.group_capacity)]
            administered = sum(1 for g in groups if g is not None and g.admin_id == admin_id)
            if administered >= MAX_GROUPS_PER_ADMIN:
                # One client must not take every group slot with repeated /makegroupreq.
                raise GroupError(
                    f"no group made: you already administer {administered} groups "
                    f"(at most {MAX_GROUPS_PER_ADMIN} at once)"
                )
            free = [slot for slot, g in enumerate(groups) if g is None]
            if not free:
                raise GroupError(f"no group made: the server's {self.group_capacity} groups are all in use")
            group = GroupInfo(
                slot=free[0],
                group_id=self._new_id(),
                admin_id=admin_id,
                created_at=time.time(),
                members=[admin_id] if invite_only else [admin_id, *accepted],
                invited=accepted if invite_only else [],
            )
            self._write_group(group)
        return GroupCreated(group, skipped, duplicates)

    def _member_group(self, group_id: int, client_id: int) -> GroupInfo:
        group = self._find_group(group_id)
        if group is None:
            raise self._no_such_group(group_id)
        if client_id not in group.members:
            raise GroupError(f"you are not a member of group {group_id}")
        return group

    def join_group(self, group_id: int, client_id: int) -> JoinOutcome:
        """An invitee joins at once; anyone else's request is queued for the admin."""
        with self.lock.held():
            group = self._find_group(group_id)
            if group is None:
                raise self._no_such_group(group_id)
            if client_id in group.members:
                return JoinOutcome(group, joined=True, already=True)
            if client_id in group.invited:
                if len(group.members) >= MAX_GROUP_MEMBERS:
                    raise GroupError(f"group {group_id} is full ({MAX_GROUP_MEMBERS} members)")
                group.invited.remove(client_id)
                group.members.append(client_id)
                self._write_group(group)
                return JoinOutcome(group, joined=True)
            if client_id in group.requests:
                return JoinOutcome(group, joined=False, already=True)
            if len(group.requests) >= MAX_GROUP_REQUESTS:
                raise GroupError(f"group {group_id} has too many pending requests; try later")
            group.requests.append(client_id)
            self._write_group(group)
            return JoinOutcome(group, joined=False)

    def answer_request(self, group_id: int, admin_id: int, requester: int, approve: bool) -> GroupInfo:
        """The admin approves or denies a pending join request."""
        with self.lock.held():
            group = self._find_group(group_id)
            if group is None:
                raise self._no_such_group(group_id)
            if group.admin_id != admin_id:
                raise GroupError(f"only the admin of group {group_id} ({group.admin_id}) can answer requests")
            if requester not in group.requests:
                raise GroupError(f"{requester} has not asked to join group {group_id}")
            group.requests.remove(requester)
            if approve:
                if requester not in self._online_by_id():
                    self._write_group(group)
                    raise GroupError(f"{requester} is no longer online")
                if len(group.members) >= MAX_GROUP_MEMBERS:
                    raise GroupError(f"group {group_id} is full ({MAX_GROUP_MEMBERS} members)")
                group.members.append(requester)
            self._write_group(group)
            return group

    def decline_invitation(self, group_id: int, client_id: int) -> GroupInfo:
        with self.lock.held():
            group = self._find_group(group_id)
            if group is None:
                raise self._no_such_group(group_id)
            if client_id not in group.invited:
                raise GroupError(f"you have no invitation to group {group_id}")
            group.invited.remove(client_id)
            self._write_group(group)
            return group

    def group_for_sender(self, group_id: int, client_id: int) -> GroupInfo:
        """The group, if ``client_id`` may send to it; GroupError otherwise."""
        with self.lock.held():
            return self._member_group(group_id, client_id)

    def groups(self, member: int | None = None) -> list[GroupInfo]:
        """Every group, or only those ``member`` belongs to."""
        with self.lock.held():
            groups = self._all_groups()
        if member is not None:
            groups = [g for g in groups if member in g.members]
        return sorted(groups, key=lambda g: g.created_at)

    def _remove_from_groups(self, client_id: int) -> list[GroupChange]:
        """Take a departed client out of every group (caller holds the lock)."""
        changes = []
        for group in self._all_groups():
            touched = False
            for pending in (group.invited, group.requests):
                if client_id in pending:
                    pending.remove(client_id)
                    touched = True
            if client_id not in group.members:
                if touched:
                    self._write_group(group)
                continue
            group.members.remove(client_id)
            change = GroupChange(group=group, left_id=client_id)
            if not group.members:
                self._clear_group(group.slot)
                change.dissolved = True
            else:
                if group.admin_id == client_id:
                    # Members are kept in join order: the first is the longest-standing.
                    group.admin_id = group.members[0]
                    change.new_admin = group.admin_id
                self._write_group(group)
            changes.append(change)
        return changes
