"""The command table and the parser that turns a line into a typed request.

One table, ``COMMANDS``, names every command with its usage and summary; the
parser, ``/help`` on the server and completion in the interactive client are
all generated from it, so they cannot disagree.

Parsing never raises anything but ``CommandError``, whose message is written
for the person who typed the line: what is wrong and how to use the command.
Command words are matched without regard to case (``/SEND`` and ``exit``
work); arguments keep their case and, for messages, their spacing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.wire import ID_MAX, ID_MIN

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
TRANSFER_ID = re.compile(r"[0-9]{5}-[0-9]{1,9}")
#: A command word and the rest of the line, kept verbatim.
_COMMAND_WORD = re.compile(r"\s*(\S+)(?:[ \t](.*))?\Z", re.DOTALL)
#: An id and a message; blanks before the id are allowed ("/send  12345 hi").
_ID_AND_TEXT = re.compile(r"[ \t]*(\S+)[ \t](.*)\Z", re.DOTALL)
#: Largest data frame a client may announce; a worker buffers at most this.
MAX_DATA_FRAME = 1024 * 1024
#: Digits of a byte count worth converting (int() refuses over 4300 digits).
MAX_COUNT_DIGITS = 20


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    summary: str


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("/help", "/help [command]", "list the commands, or explain one"),
    CommandSpec("/active", "/active", "list every online client with its id"),
    CommandSpec("/send", "/send <client id> <message>", "send a private message to one client"),
    CommandSpec("/broadcast", "/broadcast <message>", "send a message to every other client"),
    CommandSpec(
        "/makegroup",
        "/makegroup <client id> [<client id> ...]",
        "make a group with you as admin; the named clients join at once",
    ),
    CommandSpec(
        "/makegroupreq",
        "/makegroupreq <client id> [<client id> ...]",
        "make a group with you as admin; the named clients are invited",
    ),
    CommandSpec(
        "/joingroup",
        "/joingroup <group id>",
        "accept an invitation, or ask the group's admin to let you in",
    ),
    CommandSpec("/declinegroup", "/declinegroup <group id>", "decline an invitation to a group"),
    CommandSpec("/approve", "/approve <group id> <client id>", "admin only: let a client that asked join"),
    CommandSpec("/deny", "/deny <group id> <client id>", "admin only: refuse a client that asked"),
    CommandSpec("/sendgroup", "/sendgroup <group id> <message>", "send a message to the other members"),
    CommandSpec("/activegroups", "/activegroups", "list the groups you belong to"),
    CommandSpec("/activeallgroups", "/activeallgroups", "list every group on the server"),
    CommandSpec(
        "/sendfile",
        "/sendfile <client or group id> <path>",
        "send a file to a client or to a group, through the server",
    ),
    CommandSpec("/quit", "/quit", "leave the chat (EXIT does the same)"),
    CommandSpec("EXIT", "EXIT", "leave the chat (the spec's word for /quit)"),
)

BY_NAME = {spec.name.lower(): spec for spec in COMMANDS}

#: What travels on the wire for /sendfile: the client turns the path into this.
SENDFILE_WIRE_USAGE = "/sendfile <id> <size> <sha256 hex> <file name>, then exactly <size> raw bytes"


class CommandError(Exception):
    """The line is not a valid command; the message says why and how."""


class StreamError(CommandError):
    """A ``/data`` header that cannot be parsed.

    Raw bytes of unknown length follow it, so the byte stream cannot be
    followed any more: the connection must be closed, not merely answered.
    """


# -- the requests -------------------------------------------------------------
#
# Plain slotted dataclasses, not frozen ones: a frozen dataclass stores each
# field through ``object.__setattr__`` to get round its own guard, and a
# request is built for every line a client sends.  Nothing changes a request
# after ``parse`` returns it; the worker reads it once and lets it go.


@dataclass(slots=True)
class Help:
    topic: str | None = None


@dataclass(slots=True)
class Active:
    pass


@dataclass(slots=True)
class Send:
    target: int
    text: str


@dataclass(slots=True)
class Broadcast:
    text: str


@dataclass(slots=True)
class MakeGroup:
    members: tuple[int, ...]
    invite_only: bool


@dataclass(slots=True)
class JoinGroup:
    group_id: int


@dataclass(slots=True)
class DeclineGroup:
    group_id: int


@dataclass(slots=True)
class AnswerRequest:
    group_id: int
    client_id: int
    approve: bool


@dataclass(slots=True)
class SendGroup:
    group_id: int
    text: str


@dataclass(slots=True)
class ListGroups:
    everyone: bool  # /activeallgroups when true, /activegroups when false


@dataclass(slots=True)
class SendFile:
    """The wire form of /sendfile: a header announcing ``size`` raw bytes."""

    target: int
    size: int
    sha256: str
    name: str


@dataclass(slots=True)
class DataFrame:
    """``/data <transfer> <n>``: the next ``n`` raw bytes belong to an upload."""

    transfer: str
    size: int


@dataclass(slots=True)
class DownloadQuota:
    """``/downloadquota <bytes>``: the client saves at most this many bytes of files.

    The shmchat client sends it as its first line; the server then refuses on
    its behalf, before the header, a file past what is left (server.downloads).
    """

    size: int


@dataclass(slots=True)
class Quit:
    pass


Request = (
    Help
    | Active
    | Send
    | Broadcast
    | MakeGroup
    | JoinGroup
    | DeclineGroup
    | AnswerRequest
    | SendGroup
    | ListGroups
    | SendFile
    | DataFrame
    | DownloadQuota
    | Quit
)


# -- parsing --------------------------------------------------------------------


def _usage(name: str) -> str:
    return f"usage: {BY_NAME[name].usage}"


def parse_id(token: str, what: str, command: str) -> int:
    """A client or group id: exactly five digits, 10000-99999."""
    if not token.isascii() or not token.isdigit() or len(token) != 5:
        shown = token if len(token) <= 20 else token[:20] + "..."
        raise CommandError(
            f"{command}: {shown!r} is not a {what} id (ids are 5-digit numbers, "
            f"{ID_MIN}-{ID_MAX}); {_usage(command)}"
        )
    value = int(token)
    if not ID_MIN <= value <= ID_MAX:
        raise CommandError(f"{command}: {token} is not a {what} id (ids are {ID_MIN}-{ID_MAX})")
    return value


def _split_text(rest: str, command: str) -> tuple[str, str]:
    """Split ``<id> <message>``; the message keeps every space after the first."""
    match = _ID_AND_TEXT.match(rest)
    if match is None or not match[2].strip():
        missing = "a message is" if rest.strip() else "an id and a message are"
        raise CommandError(f"{command}: {missing} missing; {_usage(command)}")
    return match[1], match[2]


def _no_arguments(name: str, rest: str) -> None:
    if rest:
        raise CommandError(f"{name} takes no arguments; {_usage(name)}")


def parse(line: str) -> Request:
    """Parse one line typed by a client into a request, or raise CommandError."""
    line = line.rstrip("\r\n")
    match = _COMMAND_WORD.match(line)
    if match is None:
        if line.strip():  # words run together by another kind of space (tab is fine)
            raise CommandError("separate the command and its arguments with spaces; type /help")
        raise CommandError("empty line; type /help for the list of commands")
    word, rest_verbatim = match.groups("")
    name = word.lower()

    # The chat commands first: nearly every line a server reads is one of them.
    # A message keeps its inner spacing, so ``rest_verbatim`` is not stripped.
    if name == "/send":
        target, text = _split_text(rest_verbatim, name)
        return Send(parse_id(target, "client", name), text)
    if name == "/sendgroup":
        target, text = _split_text(rest_verbatim, name)
        return SendGroup(parse_id(target, "group", name), text)
    if name == "/broadcast":
        if not rest_verbatim.strip():
            raise CommandError(f"/broadcast: a message is missing; {_usage(name)}")
        return Broadcast(rest_verbatim)
    rest = rest_verbatim.strip()
    if name in ("exit", "/quit"):
        if rest:
            shown = "EXIT" if name == "exit" else "/quit"
            raise CommandError(f"{shown} takes no arguments; usage: {shown}")
        return Quit()
    if name == "/help":
        topic = rest or None
        if topic is not None:
            key = topic.lower() if topic.startswith("/") or topic.lower() == "exit" else "/" + topic.lower()
            if key not in BY_NAME:
                shown = topic if len(topic) <= 30 else topic[:30] + "..."
                raise CommandError(f"/help: unknown command {shown!r}; type /help for the list")
            topic = BY_NAME[key].name
        return Help(topic)
    if name == "/active":
        _no_arguments(name, rest)
        return Active()
    if name == "/activegroups" or name == "/activeallgroups":
        _no_arguments(name, rest)
        return ListGroups(everyone=name == "/activeallgroups")
    if name == "/makegroup" or name == "/makegroupreq":
        tokens = rest.split()
        if not tokens:
            raise CommandError(f"{name}: name at least one client id; {_usage(name)}")
        return MakeGroup(tuple(parse_id(t, "client", name) for t in tokens), name == "/makegroupreq")
    if name == "/joingroup" or name == "/declinegroup":
        tokens = rest.split()
        if len(tokens) != 1:
            raise CommandError(f"{name} takes one group id; {_usage(name)}")
        gid = parse_id(tokens[0], "group", name)
        return JoinGroup(gid) if name == "/joingroup" else DeclineGroup(gid)
    if name == "/approve" or name == "/deny":
        tokens = rest.split()
        if len(tokens) != 2:
            raise CommandError(f"{name} takes a group id and a client id; {_usage(name)}")
        return AnswerRequest(
            parse_id(tokens[0], "group", name), parse_id(tokens[1], "client", name), name == "/approve"
        )
    if name == "/sendfile":
        return _parse_sendfile(rest_verbatim)
    if name == "/data":
        return _parse_data(rest)
    if name == "/downloadquota":
        return _parse_download_quota(rest)
    shown = word if len(word) <= 30 else word[:30] + "..."
    raise CommandError(f"unknown command {shown!r}; type /help for the list of commands")


def _is_count(token: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²", which int() refuses."""
    return token.isascii() and token.isdigit()


def _parse_sendfile(rest: str) -> SendFile:
    parts = rest.split(" ", 3)
    if len(parts) != 4 or not _is_count(parts[1]) or not SHA256_HEX.fullmatch(parts[2]):
        raise CommandError(
            "/sendfile: use the shmchat client, which uploads the file for you "
            f"(usage: {BY_NAME['/sendfile'].usage}); on the wire it is {SENDFILE_WIRE_USAGE}"
        )
    target = parse_id(parts[0], "client or group", "/sendfile")
    name = parts[3]
    if not name.strip():
        raise CommandError("/sendfile: the file name is missing")
    if len(parts[1]) > MAX_COUNT_DIGITS:
        raise CommandError(f"/sendfile: a size of {len(parts[1])} digits is over any limit")
    return SendFile(target, int(parts[1]), parts[2], name)


def _parse_data(rest: str) -> DataFrame:
    parts = rest.split()
    if len(parts) != 2 or not TRANSFER_ID.fullmatch(parts[0]) or not _is_count(parts[1]):
        raise StreamError("/data: malformed data frame; usage: /data <transfer id> <byte count>")
    size = int(parts[1]) if len(parts[1]) <= MAX_COUNT_DIGITS else MAX_DATA_FRAME + 1
    if size > MAX_DATA_FRAME:
        shown = parts[1] if len(parts[1]) <= MAX_COUNT_DIGITS else parts[1][:MAX_COUNT_DIGITS] + "..."
        raise StreamError(f"/data: frame of {shown} bytes is over the {MAX_DATA_FRAME}-byte limit")
    return DataFrame(parts[0], size)


def _parse_download_quota(rest: str) -> DownloadQuota:
    if not _is_count(rest) or len(rest) > MAX_COUNT_DIGITS:
        raise CommandError("/downloadquota: usage: /downloadquota <bytes> (sent by the shmchat client)")
    return DownloadQuota(int(rest))


def format_download_quota(size: int) -> str:
    """The line a client sends to say how many bytes of files it will save."""
    return f"/downloadquota {size}"


def format_data(transfer: str, size: int) -> str:
    """The header line of one data frame, in either direction's client form."""
    return f"/data {transfer} {size}"


def format_sendfile(target: int, size: int, sha256: str, name: str) -> str:
    """The header line a client sends before a file body."""
    clean = name.replace("\n", " ").replace("\r", " ")
    return f"/sendfile {target} {size} {sha256} {clean}"


def help_lines(topic: str | None = None) -> list[str]:
    """The text of /help, generated from COMMANDS."""
    if topic is not None:
        spec = BY_NAME[topic.lower()]
        return [f"{spec.usage}: {spec.summary}"]
    width = max(len(spec.usage) for spec in COMMANDS)
    return [f"{spec.usage.ljust(width)}  {spec.summary}" for spec in COMMANDS]
