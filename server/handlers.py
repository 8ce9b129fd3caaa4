"""Command handlers: from (caller, request, tables) to replies and deliveries.

Every request a client sends comes through ``handle``, which always returns
an ``Outcome``.  A handler reads and changes the shared tables through their
methods (each takes its lock once), and returns what should happen next as
plain data: the lines for the caller's own socket and the records to post
into other clients' mailboxes.  It never touches a socket and never posts
mail itself, so the worker stays in charge of flow control and the handlers
read as a list of rules, one function per command, that a unit test can call
directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from protocol import commands, group_replies, replies
from protocol.commands import (
    Active,
    AnswerRequest,
    Broadcast,
    DataFrame,
    DeclineGroup,
    DownloadQuota,
    Help,
    JoinGroup,
    ListGroups,
    MakeGroup,
    Quit,
    Request,
    Send,
    SendFile,
    SendGroup,
)
from server.caller import Caller
from server.downloads import Downloads
from server.outbox import OFFLINE, Delivery
from server.outcome import Outcome
from server.spool import decode_file_notice, encode_file_result
from server.uploads import Uploads
from shm.directory import ClientInfo, GroupChange, GroupError, GroupInfo
from shm.layout import RecordKind
from shm.mailboxes import Posting, Record
from shm.segments import ServerIpc

SERVER_SLOT = -1  # sender slot of records posted by the parent


def deliver(
    to: ClientInfo,
    kind: RecordKind,
    sender: Caller | None,
    text: str,
    group_id: int = 0,
    on_gone: Callable[[str], str | None] | None = None,
) -> Delivery:
    """Build the delivery of one text record to one client."""
    if sender is None:
        record = Record(kind, SERVER_SLOT, 0, group_id, text.encode("utf-8"))
    else:
        record = Record(kind, sender.slot, sender.client_id, group_id, text.encode("utf-8"))
    return Delivery(Posting(to.slot, to.generation, record), on_gone, to.client_id)


def _copies(recipients: Iterable[ClientInfo], record: Record) -> list[Delivery]:
    """One record for several clients: ``MessageTable.post`` packs it once for all of them."""
    return [Delivery(Posting(c.slot, c.generation, record), None, c.client_id) for c in recipients]


def notices(recipients: Iterable[ClientInfo], line: str) -> list[Delivery]:
    """The same finished server line for several clients."""
    return [deliver(c, RecordKind.NOTICE, None, line) for c in recipients]


def view(group: GroupInfo) -> group_replies.GroupView:
    """A table row as the lines describe it (protocol/group_replies.py)."""
    return group_replies.GroupView(
        group.group_id, group.admin_id, tuple(group.members), tuple(group.invited), tuple(group.requests)
    )


# -- one handler per request ------------------------------------------------------


def handle_help(caller: Caller, request: Help, ipc: ServerIpc) -> Outcome:
    lines = commands.help_lines(request.topic)
    if request.topic is None:
        lines.append("ids are 5-digit numbers; /active shows who is online")
    return Outcome(replies=[replies.help_line(line) for line in lines])


def handle_active(caller: Caller, request: Active, ipc: ServerIpc) -> Outcome:
    ids = [c.client_id for c in ipc.directory.online()]
    return Outcome(replies=[replies.active(caller.client_id, ids)])


def handle_send(caller: Caller, request: Send, ipc: ServerIpc) -> Outcome:
    """A private message: one delivery, or the line that says why not."""
    target_id = request.target
    if target_id == caller.client_id:
        return Outcome(replies=[replies.error(f"{target_id} is your own id; pick another client")])
    target = ipc.directory.resolve(target_id)
    if isinstance(target, GroupInfo):
        why = f"{target_id} is a group; use /sendgroup {target_id} <message>"
        return Outcome(replies=[replies.error(why)])
    if target is None:
        return Outcome(replies=[replies.offline(target_id)])
    on_gone = lambda why: _private_gone(target_id, why)  # noqa: E731 (a closure, named for the line below)
    return Outcome(deliveries=[deliver(target, RecordKind.PRIVATE, caller, request.text, on_gone=on_gone)])


def _private_gone(target_id: int, why: str) -> str:
    """What a private message's sender is told when it could not arrive (``Delivery.on_gone``)."""
    if why == OFFLINE:
        return replies.discarded(target_id)
    return replies.error(f"message to {target_id} discarded: {why}")


def handle_broadcast(caller: Caller, request: Broadcast, ipc: ServerIpc) -> Outcome:
    """A broadcast: one delivery per other online client, or the line for the sender."""
    others = [c for c in ipc.directory.online() if c.client_id != caller.client_id]
    if not others:
        return Outcome(replies=[replies.notice("nobody else is online; broadcast not sent")])
    record = Record(RecordKind.BROADCAST, caller.slot, caller.client_id, 0, request.text.encode("utf-8"))
    return Outcome(deliveries=_copies(others, record))


def handle_makegroup(caller: Caller, request: MakeGroup, ipc: ServerIpc) -> Outcome:
    created = ipc.directory.create_group(caller.client_id, list(request.members), request.invite_only)
    group = created.group
    online = ipc.directory.online_by_id()
    out = Outcome()
    if request.invite_only:
        out.replies.append(
            group_replies.group_made_invite_only(
                group.group_id, group.invited, created.skipped, created.duplicates
            )
        )
        invite = group_replies.group_invitation(caller.client_id, group.group_id)
        out.deliveries += notices((online[i] for i in group.invited if i in online), invite)
    else:
        out.replies.append(group_replies.group_made(view(group), created.skipped, created.duplicates))
        added = group_replies.added_to_group(caller.client_id, view(group))
        out.deliveries += notices((online[i] for i in group.members[1:] if i in online), added)
    return out


def _members_except(group: GroupInfo, online: dict[int, ClientInfo], *excluded: int) -> list[ClientInfo]:
    return [online[m] for m in group.members if m in online and m not in excluded]


def handle_joingroup(caller: Caller, request: JoinGroup, ipc: ServerIpc) -> Outcome:
    outcome = ipc.directory.join_group(request.group_id, caller.client_id)
    group = outcome.group
    gid = group.group_id
    if outcome.joined and outcome.already:
        return Outcome(replies=[group_replies.already_member(gid)])
    if not outcome.joined and outcome.already:
        return Outcome(replies=[group_replies.already_asked(gid)])
    online = ipc.directory.online_by_id()
    if outcome.joined:
        news = group_replies.joined_group(caller.client_id, gid)
        return Outcome(
            replies=[group_replies.you_joined(view(group))],
            deliveries=notices(_members_except(group, online, caller.client_id), news),
        )
    ask = group_replies.join_request(caller.client_id, gid)
    admin = [online[group.admin_id]] if group.admin_id in online else []
    return Outcome(
        replies=[group_replies.join_request_sent(gid, group.admin_id)], deliveries=notices(admin, ask)
    )


def handle_answer(caller: Caller, request: AnswerRequest, ipc: ServerIpc) -> Outcome:
    group = ipc.directory.answer_request(
        request.group_id, caller.client_id, request.client_id, request.approve
    )
    online = ipc.directory.online_by_id()
    gid, who = group.group_id, request.client_id
    requester = [online[who]] if who in online else []
    if not request.approve:
        return Outcome(
            replies=[group_replies.request_denied_ok(who, gid)],
            deliveries=notices(requester, group_replies.request_denied(gid)),
        )
    out = Outcome(replies=[group_replies.request_approved_ok(who, gid)])
    out.deliveries += notices(requester, group_replies.request_approved(view(group)))
    out.deliveries += notices(
        _members_except(group, online, caller.client_id, who), group_replies.joined_group(who, gid)
    )
    return out


def handle_declinegroup(caller: Caller, request: DeclineGroup, ipc: ServerIpc) -> Outcome:
    group = ipc.directory.decline_invitation(request.group_id, caller.client_id)
    online = ipc.directory.online_by_id()
    admin = [online[group.admin_id]] if group.admin_id in online else []
    news = group_replies.invitation_declined(caller.client_id, group.group_id)
    return Outcome(
        replies=[group_replies.invitation_declined_ok(group.group_id)], deliveries=notices(admin, news)
    )


def handle_sendgroup(caller: Caller, request: SendGroup, ipc: ServerIpc) -> Outcome:
    """A group message: one delivery per other online member, or the line for the sender."""
    group = ipc.directory.group_for_sender(request.group_id, caller.client_id)  # GroupError: see handle
    peers = _members_except(group, ipc.directory.online_by_id(), caller.client_id)
    if not peers:
        return Outcome(replies=[group_replies.only_member(group.group_id)])
    record = Record(
        RecordKind.GROUP, caller.slot, caller.client_id, group.group_id, request.text.encode("utf-8")
    )
    return Outcome(deliveries=_copies(peers, record))


def handle_listgroups(caller: Caller, request: ListGroups, ipc: ServerIpc) -> Outcome:
    found = ipc.directory.groups(None if request.everyone else caller.client_id)
    if not found:
        return Outcome(replies=[group_replies.no_groups(request.everyone)])
    lines = [group_replies.groups_count(len(found), request.everyone)]
    lines += [replies.groups_line(group_replies.group_description(view(g))) for g in found]
    return Outcome(replies=lines)


def handle_quit(caller: Caller, request: Quit, ipc: ServerIpc) -> Outcome:
    return Outcome(replies=[replies.bye(f"goodbye, {caller.client_id}")], quit=True)


#: Each handler takes its own request type (Request is their union).
HANDLERS: dict[type, Callable[[Caller, Any, ServerIpc], Outcome]] = {
    Help: handle_help,
    Active: handle_active,
    Send: handle_send,
    Broadcast: handle_broadcast,
    MakeGroup: handle_makegroup,
    JoinGroup: handle_joingroup,
    AnswerRequest: handle_answer,
    DeclineGroup: handle_declinegroup,
    SendGroup: handle_sendgroup,
    ListGroups: handle_listgroups,
    Quit: handle_quit,
}


def handle(
    caller: Caller,
    request: Request,
    ipc: ServerIpc,
    uploads: Uploads | None = None,
    downloads: Downloads | None = None,
) -> Outcome:
    """Run the handler for a parsed request; rule violations become error lines.

    ``/sendfile`` and ``/data`` go to ``uploads``, the caller's files on
    their way to the spool, and ``/downloadquota`` to ``downloads``, its files
    on their way from the spool (the worker's; without them, as in a unit
    test of the chat rules, files are refused with an error line).
    """
    handler = HANDLERS.get(type(request))
    if handler is not None:
        try:
            return handler(caller, request, ipc)
        except GroupError as exc:
            return Outcome(replies=[replies.error(str(exc))])
    if isinstance(request, DownloadQuota):
        if downloads is not None:
            downloads.room = request.size  # files past it are refused (server/downloads.py)
        return Outcome()
    assert isinstance(request, SendFile | DataFrame), f"no handler for {request!r}"
    if uploads is None:
        return Outcome(replies=[replies.error("files cannot be sent on this connection")])
    if isinstance(request, SendFile):
        return uploads.start(request)
    outcome = uploads.open_frame(request)
    outcome.frame = request.size
    return outcome


# -- departures (run by the parent after it reaps a worker) -----------------------


def bounces(gone_id: int, unread: list[Record], transfers: list[str], ipc: ServerIpc) -> list[Delivery]:
    """Tell senders that what they sent to a departed client was discarded.

    ``unread`` is what was still in its mailbox: each private message goes
    back to its sender as a bounce.  ``transfers`` are the files still
    spooled for it: each sender gets the file's result, "it went offline".
    """
    online = ipc.directory.online_by_id()
    out = []
    names = {}
    for record in unread:
        if record.kind is RecordKind.FILE:
            transfer, _size, _sha, _link, name = decode_file_notice(record.payload)
            names[transfer] = name
        if record.kind is not RecordKind.PRIVATE or record.sender_id not in online:
            continue
        sender = online[record.sender_id]
        bounce = Record(RecordKind.BOUNCE, SERVER_SLOT, gone_id, 0, record.payload)
        out.append(Delivery(Posting(sender.slot, sender.generation, bounce)))
    for transfer in transfers:
        sender_id = int(transfer.split("-")[0])
        if sender_id not in online:
            continue
        sender = online[sender_id]
        payload = encode_file_result(transfer, names.get(transfer, ""), gone_id, "it went offline")
        result = Record(RecordKind.FILE_RESULT, SERVER_SLOT, 0, 0, payload)
        out.append(Delivery(Posting(sender.slot, sender.generation, result)))
    return out


def departure_notices(left_id: int, how: str, changes: list[GroupChange], ipc: ServerIpc) -> list[Delivery]:
    """Tell everyone who left, and each group's remaining members what changed."""
    online = ipc.directory.online_by_id()
    out = notices(online.values(), replies.left(left_id, how))
    for change in changes:
        group = change.group
        gid = group.group_id
        if change.dissolved:
            # Invitees and requesters would otherwise learn it only from a failed /joingroup.
            waiting = [online[i] for i in group.invited + group.requests if i in online]
            out += notices(waiting, group_replies.group_dissolved(gid, left_id))
            continue
        members = _members_except(group, online)
        out += notices(members, group_replies.left_group(left_id, gid, change.new_admin))
        if change.new_admin is not None and group.requests and change.new_admin in online:
            inherited = group_replies.admin_inherited(gid, group.requests)
            out += notices([online[change.new_admin]], inherited)
    return out
