"""Every line the server writes, rendered in one place, and read back in one place.

Each server line starts with a tag in brackets that says what it is, so that
a person on ``nc`` can read it and a client can style it::

    [welcome] ...                 first line of a session
    [msg from 12345] text         a private message
    [broadcast from 12345] text   a broadcast
    [group 54321 from 12345] text a group message
    [server] text                 news: joins, leaves, group changes
    [ok] text                     a request succeeded
    [error] text                  a request failed; the session goes on
    [active] / [groups] / [help]  answers to queries
    [file 12345-1 from 12345 to 54321] size sha256 name   a file is coming
    [data 12345-1] n              followed by n raw bytes of that file
    [abort 12345-1] reason        that file will not be completed
    [upload 12345-1 ready] / [upload refused]   answers to /sendfile
    [bye] text                    last line of a session

The one exception is the spec's exact refusal, ``Connection Limit Exceeded !!``.
Chat text is always behind a tag the server chose, so a message can never
pass itself off as a file header or a server notice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.wire import ID_PATTERN

CONNECTION_LIMIT = "Connection Limit Exceeded !!"


def welcome(client_id: int, online: int) -> str:
    others = online - 1
    company = "you are the only one here" if others == 0 else f"{others} other(s) online"
    return (
        f"[welcome] Welcome to shmchat! Your unique id is {client_id}; {company}. "
        "Type /help for the commands."
    )


def active(me: int, ids: list[int]) -> str:
    shown = ", ".join(f"{cid} (you)" if cid == me else str(cid) for cid in ids)
    return f"[active] {len(ids)} online: {shown}"


def private(sender: int, text: str) -> str:
    return f"[msg from {sender}] {text}"


def broadcast(sender: int, text: str) -> str:
    return f"[broadcast from {sender}] {text}"


def group_message(group_id: int, sender: int, text: str) -> str:
    return f"[group {group_id} from {sender}] {text}"


def notice(text: str) -> str:
    return f"[server] {text}"


def ok(text: str) -> str:
    return f"[ok] {text}"


def error(text: str) -> str:
    return f"[error] {text}"


def help_line(text: str) -> str:
    return f"[help] {text}"


def groups_line(text: str) -> str:
    return f"[groups] {text}"


def bye(text: str) -> str:
    return f"[bye] {text}"


def offline(target: int) -> str:
    return error(f"client {target} is offline; message discarded")


def discarded(target: int) -> str:
    """A private message whose receiver left between the lookup and the post."""
    return error(f"client {target} disconnected; message discarded")


def bounced(target: int, text: str) -> str:
    preview = text if len(text) <= 60 else text[:57] + "..."
    return error(f"client {target} disconnected before delivery; message discarded: {preview}")


def shutting_down() -> str:
    return bye("the server is shutting down; goodbye")


def upload_ready(transfer: str, size: int, name: str) -> str:
    return f"[upload {transfer} ready] {size} {name}"


def upload_refused(name: str, reason: str) -> str:
    return f"[upload refused] {name}: {reason}"


#: Why a file did not reach a receiver whose ``/downloadquota`` it would pass (to its sender).
DOWNLOAD_QUOTA_FULL = "refused by the receiver: its download quota is full"


def file_refused(transfer: str, sender: int, name: str, size: int, room: int) -> str:
    """To the receiver: a file past its download quota was refused for it, unsent."""
    return notice(
        f"file {transfer} '{name}' from {sender} ({size} bytes) refused: "
        f"your download quota is full ({room} bytes left)"
    )


def data_frame(transfer: str, size: int) -> str:
    """Precedes ``size`` raw bytes of file ``transfer``."""
    return f"[data {transfer}] {size}"


def file_abort(transfer: str, reason: str) -> str:
    return f"[abort {transfer}] {reason}"


def file_header(transfer: str, sender: int, group_id: int, size: int, sha256: str, name: str) -> str:
    """The line before a file's raw bytes; ``group_id`` 0 means a private file."""
    to = f" to {group_id}" if group_id else ""
    return f"[file {transfer} from {sender}{to}] {size} {sha256} {name}"


# -- reading lines back (clients, tests) ---------------------------------------

_TAGGED = re.compile(r"\[(?P<tag>[a-z]+)(?: (?P<detail>[^\]]*))?\] ?(?P<body>.*)\Z", re.DOTALL)
_FROM = re.compile(r"(?:(?P<group>\d+) )?from (?P<sender>\d+)\Z")
_FILE = re.compile(r"(?P<transfer>\d+-\d+) from (?P<sender>\d+)(?: to (?P<group>\d+))?\Z")
_FILE_BODY = re.compile(r"(?P<size>\d+) (?P<sha>[0-9a-f]{64}) (?P<name>.+)\Z", re.DOTALL)


@dataclass(frozen=True)
class ServerLine:
    """A server line split into its parts."""

    kind: str  # the tag ("msg", "group", "server", ...), or "limit" / "other"
    body: str
    sender: int | None = None
    group_id: int | None = None


@dataclass(frozen=True)
class FileHeader:
    transfer: str
    sender: int
    group_id: int
    size: int
    sha256: str
    name: str


def classify(line: str) -> ServerLine:
    """Split a server line into kind, sender, group and text."""
    if line == CONNECTION_LIMIT:
        return ServerLine("limit", line)
    match = _TAGGED.match(line)
    if match is None:
        return ServerLine("other", line)
    tag, detail, body = match.group("tag"), match.group("detail"), match.group("body")
    if tag == "msg" and detail is not None:
        tag = "private"
    sender = group = None
    if detail:
        who = _FROM.match(detail)
        if who:
            sender = int(who.group("sender"))
            group = int(who.group("group")) if who.group("group") else None
    return ServerLine(tag, body, sender, group)


def parse_file_header(line: str) -> FileHeader | None:
    """The parts of a ``[file ...]`` line, or None if the line is not one."""
    match = _TAGGED.match(line)
    if match is None or match.group("tag") != "file" or match.group("detail") is None:
        return None
    head = _FILE.match(match.group("detail"))
    body = _FILE_BODY.match(match.group("body"))
    if head is None or body is None:
        return None
    return FileHeader(
        transfer=head.group("transfer"),
        sender=int(head.group("sender")),
        group_id=int(head.group("group") or 0),
        size=int(body.group("size")),
        sha256=body.group("sha"),
        name=body.group("name"),
    )


# -- who is online: each line with its parser beside it --------------------------------
#
# The client's roster (client/roster.py) follows the online list and the groups
# from these lines alone, so each is rendered and read back here, in one place:
# the pair is tested in tests/test_replies.py.  The parsers take a whole line.

_ID = ID_PATTERN
_IDS = re.compile(ID_PATTERN)
_WELCOME = re.compile(rf"\[welcome\] .*?unique id is ({_ID})(?:.*?(\d+) other\(s\) online)?")


def ids_in(text: str | None) -> list[int]:
    """Every id a text names, in order."""
    return [int(v) for v in _IDS.findall(text or "")]


def parse_welcome(line: str) -> tuple[int, int] | None:
    """(our id, how many others are online) from a ``welcome`` line."""
    match = _WELCOME.match(line)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def parse_active(line: str) -> list[int] | None:
    """The ids of an ``active`` line."""
    if not line.startswith("[active] "):
        return None
    return ids_in(line.partition(":")[2])


_JOINED = re.compile(rf"\[server\] client ({_ID}) joined\Z")
#: ``how`` is "left", "disconnected (...)" or "was disconnected (...)" (server/parent.py).
_LEFT = re.compile(rf"\[server\] client ({_ID}) (?:left|disconnected|was disconnected)(?: \(|\Z)")
_OFFLINE = re.compile(rf"\[error\] client ({_ID}) (?:is offline|disconnected)")


def joined(client_id: int) -> str:
    return notice(f"client {client_id} joined")


def parse_joined(line: str) -> int | None:
    match = _JOINED.match(line)
    return int(match.group(1)) if match else None


def left(client_id: int, how: str) -> str:
    return notice(f"client {client_id} {how}")


def parse_left(line: str) -> int | None:
    """The id of a client that left the server (not a group: see ``parse_left_group``)."""
    match = _LEFT.match(line)
    return int(match.group(1)) if match else None


def parse_offline(line: str) -> int | None:
    """The receiver an ``offline``, ``discarded`` or ``bounced`` error names."""
    match = _OFFLINE.match(line)
    return int(match.group(1)) if match else None
