"""The lines about groups, each rendered and read back in one place.

The server's handlers (server/handlers.py) render these; the interactive
client's roster (client/roster.py) reads them back to follow which groups
exist and who is in them, so each render function has its parser right
beside it, and tests/test_replies.py checks every pair (render, parse, same
values).  The wording is part of the protocol (docs/protocol.md): change a
line here and both ends follow.  Parsers take a whole line, tag included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from protocol.replies import error, groups_line, ids_in, notice, ok
from protocol.wire import ID_PATTERN

_ID = ID_PATTERN


@dataclass(frozen=True)
class GroupView:
    """A group as the lines describe it: ``group G: admin A; members ...``."""

    group_id: int
    admin: int
    members: tuple[int, ...]
    invited: tuple[int, ...] = ()
    requests: tuple[int, ...] = ()


def _listed(ids: Iterable[int]) -> str:
    return ", ".join(map(str, ids))


def group_description(group: GroupView) -> str:
    text = f"group {group.group_id}: admin {group.admin}; members {_listed(group.members)}"
    if group.invited:
        text += f"; invited {_listed(group.invited)}"
    if group.requests:
        text += f"; asking to join {_listed(group.requests)}"
    return text


_DESCRIBED = re.compile(
    rf"group ({_ID}): admin ({_ID}); members ([\d, ]+?)"
    r"(?:; invited ([\d, ]+?))?(?:; asking to join ([\d, ]+?))?(?: \(created\))?(?:;|\Z)"
)


def parse_group_description(line: str) -> GroupView | None:
    """The first group description in any line (listings, ok replies, notices)."""
    match = _DESCRIBED.search(line)
    if match is None:
        return None
    return GroupView(
        int(match.group(1)),
        int(match.group(2)),
        tuple(ids_in(match.group(3))),
        tuple(ids_in(match.group(4))),
        tuple(ids_in(match.group(5))),
    )


_GROUP_WORD = re.compile(rf"group ({_ID})")


def parse_group_mentioned(line: str) -> int | None:
    """The first group a line names: the roster notes it even when it knows no more."""
    match = _GROUP_WORD.search(line)
    return int(match.group(1)) if match else None


def _skipped(verb: str, skipped: Mapping[int, str], duplicates: Sequence[int]) -> str:
    text = "".join(f"; not {verb}: {cid} ({why})" for cid, why in skipped.items())
    if duplicates:
        text += f"; named more than once, {verb} once: {_listed(duplicates)}"
    return text


def group_made(group: GroupView, skipped: Mapping[int, str], duplicates: Sequence[int]) -> str:
    """``/makegroup``: the group and who could not be added."""
    return ok(f"{group_description(group)} (created){_skipped('added', skipped, duplicates)}")


def parse_group_made(line: str) -> GroupView | None:
    if not (line.startswith("[ok] group ") and " (created)" in line):
        return None
    return parse_group_description(line)


_MADE_INVITE_ONLY = re.compile(rf"\[ok\] group ({_ID}) created; invited ([\d, ]*)")


def group_made_invite_only(
    group_id: int,
    invited: Sequence[int],
    skipped: Mapping[int, str],
    duplicates: Sequence[int],
) -> str:
    """``/makegroupreq``: the group (its admin its only member) and who was invited."""
    rest = _skipped("invited", skipped, duplicates)
    return ok(f"group {group_id} created; invited {_listed(invited)}{rest}")


def parse_group_made_invite_only(line: str) -> tuple[int, list[int]] | None:
    """(group id, invited ids)."""
    match = _MADE_INVITE_ONLY.match(line)
    return (int(match.group(1)), ids_in(match.group(2))) if match else None


_ADDED = re.compile(rf"\[server\] client ({_ID}) added you to group ")


def added_to_group(by: int, group: GroupView) -> str:
    return notice(f"client {by} added you to {group_description(group)}")


def parse_added_to_group(line: str) -> tuple[int, GroupView] | None:
    """(who added us, the group)."""
    match = _ADDED.match(line)
    group = parse_group_description(line) if match else None
    return (int(match.group(1)), group) if match and group else None


_INVITATION = re.compile(rf"\[server\] client ({_ID}) invites you to group ({_ID})")


def group_invitation(admin: int, group_id: int) -> str:
    return notice(
        f"client {admin} invites you to group {group_id} (its admin is {admin}); to answer, "
        f"type /joingroup {group_id} to join or /declinegroup {group_id} to decline"
    )


def parse_group_invitation(line: str) -> tuple[int, int] | None:
    """(admin, group id)."""
    match = _INVITATION.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def already_member(group_id: int) -> str:
    return ok(f"you are already a member of group {group_id}")


def already_asked(group_id: int) -> str:
    return ok(f"you already asked to join group {group_id}; waiting for its admin")


def you_joined(group: GroupView) -> str:
    return ok(f"you joined {group_description(group)}")


def parse_you_joined(line: str) -> GroupView | None:
    return parse_group_description(line) if line.startswith("[ok] you joined group ") else None


_JOINED_GROUP = re.compile(rf"\[server\] client ({_ID}) joined group ({_ID})\Z")


def joined_group(client_id: int, group_id: int) -> str:
    return notice(f"client {client_id} joined group {group_id}")


def parse_joined_group(line: str) -> tuple[int, int] | None:
    """(who joined, group id)."""
    match = _JOINED_GROUP.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def join_request_sent(group_id: int, admin: int) -> str:
    return ok(f"you are not invited to group {group_id}; your request was sent to its admin {admin}")


_ASKS = re.compile(rf"\[server\] client ({_ID}) asks to join group ({_ID})")


def join_request(client_id: int, group_id: int) -> str:
    """To the admin: someone uninvited asks to join."""
    return notice(
        f"client {client_id} asks to join group {group_id}; "
        f"answer /approve {group_id} {client_id} or /deny {group_id} {client_id}"
    )


def parse_join_request(line: str) -> tuple[int, int] | None:
    """(who asks, group id)."""
    match = _ASKS.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def request_denied_ok(client_id: int, group_id: int) -> str:
    return ok(f"denied {client_id}'s request to join group {group_id}")


def request_denied(group_id: int) -> str:
    """To the requester."""
    return notice(f"the admin of group {group_id} denied your request to join")


_APPROVED_OK = re.compile(rf"\[ok\] approved: ({_ID}) joined group ({_ID})\Z")


def request_approved_ok(client_id: int, group_id: int) -> str:
    return ok(f"approved: {client_id} joined group {group_id}")


def parse_request_approved_ok(line: str) -> tuple[int, int] | None:
    """(who joined, group id)."""
    match = _APPROVED_OK.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def request_approved(group: GroupView) -> str:
    """To the requester."""
    return notice(f"the admin approved your request: you joined {group_description(group)}")


def parse_request_approved(line: str) -> GroupView | None:
    if not line.startswith("[server] the admin approved your request: you joined group "):
        return None
    return parse_group_description(line)


_DECLINED_OK = re.compile(rf"\[ok\] declined the invitation to group ({_ID})\Z")
_DECLINED = re.compile(rf"\[server\] client ({_ID}) declined the invitation to group ({_ID})\Z")


def invitation_declined_ok(group_id: int) -> str:
    return ok(f"declined the invitation to group {group_id}")


def parse_invitation_declined_ok(line: str) -> int | None:
    match = _DECLINED_OK.match(line)
    return int(match.group(1)) if match else None


def invitation_declined(client_id: int, group_id: int) -> str:
    """To the admin."""
    return notice(f"client {client_id} declined the invitation to group {group_id}")


def parse_invitation_declined(line: str) -> tuple[int, int] | None:
    """(who declined, group id)."""
    match = _DECLINED.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def only_member(group_id: int) -> str:
    return notice(f"you are the only member of group {group_id}; not sent")


_DISSOLVED = re.compile(rf"\[server\] group ({_ID}) was dissolved: its last member, client ({_ID}), left\Z")


def group_dissolved(group_id: int, last_member: int) -> str:
    return notice(f"group {group_id} was dissolved: its last member, client {last_member}, left")


def parse_group_dissolved(line: str) -> tuple[int, int] | None:
    """(group id, its last member)."""
    match = _DISSOLVED.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


_LEFT_GROUP = re.compile(
    rf"\[server\] client ({_ID}) left group ({_ID})(?:; client ({_ID}) is now its admin)?\Z"
)


def left_group(client_id: int, group_id: int, new_admin: int | None = None) -> str:
    text = f"client {client_id} left group {group_id}"
    if new_admin is not None:
        text += f"; client {new_admin} is now its admin"
    return notice(text)


def parse_left_group(line: str) -> tuple[int, int, int | None] | None:
    """(who left, group id, its new admin or None)."""
    match = _LEFT_GROUP.match(line)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3)) if match.group(3) else None


_INHERITED = re.compile(
    rf"\[server\] you are now the admin of group ({_ID}); waiting for your answer: ([\d, ]+) "
)


def admin_inherited(group_id: int, asking: Sequence[int]) -> str:
    """To a new admin that inherits open requests to join."""
    return notice(
        f"you are now the admin of group {group_id}; waiting for your answer: {_listed(asking)} "
        f"(/approve {group_id} <id> or /deny {group_id} <id>)"
    )


def parse_admin_inherited(line: str) -> tuple[int, list[int]] | None:
    """(group id, who is asking to join)."""
    match = _INHERITED.match(line)
    return (int(match.group(1)), ids_in(match.group(2))) if match else None


_NO_SUCH_GROUP = re.compile(rf"\[error\] group ({_ID}) does not exist")


def no_such_group(group_id: int) -> str:
    """The text of shm.directory's GroupError, as the caller sees it."""
    return error(f"group {group_id} does not exist")


def parse_no_such_group(line: str) -> int | None:
    match = _NO_SUCH_GROUP.match(line)
    return int(match.group(1)) if match else None


_LISTING = re.compile(r"\[groups\] (\d+) group\(s\) (on the server|you belong to)\Z")
_NO_GROUPS = re.compile(r"\[groups\] no groups (on the server|you belong to)\Z")


def _scope(everyone: bool) -> str:
    return "on the server" if everyone else "you belong to"


def groups_count(count: int, everyone: bool) -> str:
    """The first line of a ``/activeallgroups`` (everyone) or ``/activegroups`` listing."""
    return groups_line(f"{count} group(s) {_scope(everyone)}")


def parse_groups_count(line: str) -> tuple[int, bool] | None:
    """(how many groups follow, whether the listing is of every group)."""
    match = _LISTING.match(line)
    return (int(match.group(1)), match.group(2) == "on the server") if match else None


def no_groups(everyone: bool) -> str:
    return groups_line(f"no groups {_scope(everyone)}")


def parse_no_groups(line: str) -> bool | None:
    """Whether the empty listing is of every group; None if the line is not one."""
    match = _NO_GROUPS.match(line)
    return match.group(1) == "on the server" if match else None
