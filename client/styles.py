"""How the interactive client draws server lines: timestamps, colours, labels.

Every server line is tagged (``protocol.replies``), so styling is a matter of
reading the tag back with ``replies.classify`` and choosing a look per kind:
private messages, group messages (with the group id), broadcasts, joins and
leaves, errors and server notices each get their own.  Every client id gets a
colour of its own, computed from the id alone, so that 12345 has the same
colour in every terminal of the classroom (and in ``python -m shm inspect``).

Nothing here touches a terminal: ``format_line`` returns prompt_toolkit
fragments and ``to_ansi`` turns them into an escape-coded string that the
interactive client writes through ``patch_stdout``.  Chat text written by
other people goes through ``display.printable`` first, so it can never carry
escape sequences of its own.
"""

from __future__ import annotations

import io
import re
import time

from prompt_toolkit.data_structures import Size
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.output.color_depth import ColorDepth
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.renderer import print_formatted_text as render_fragments
from prompt_toolkit.styles import Style

from client.display import printable
from palette import ID_PATTERN, id_colour
from protocol import replies

STYLE = Style.from_dict(
    {
        "time": "#808080",
        "private": "bold #00af5f",
        "chat": "",
        "broadcast": "bold #d75fd7",
        "group": "bold #00afaf",
        "join": "#5faf00",
        "leave": "#d7875f",
        "server": "#d7af00",
        "ok": "#5f87ff",
        "error": "bold #ff0000",
        "error.text": "#ff5f5f",
        "info": "bold #00afff",
        "help": "#00afff",
        "help.usage": "bold",
        "welcome": "bold",
        "bye": "bold",
        "file": "bold #5f87ff",
        "me": "underline",
        "mine": "bold",
        "mine.failed": "#ff5f5f",
        "prompt": "bold",
        # the bottom toolbar
        "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
        "bar.label": "bold",
        "bar.sep": "#808080",
        "bar.done": "#00af5f",
        "bar.todo": "#585858",
        "bar.alert": "bold #ff5f5f",
        "bar.hint": "#a8a8a8",
    }
)

_JOINED = re.compile(r"client (\d{5}) joined\Z")
_LEFT = re.compile(r"client (\d{5}) (?:left|disconnected|was disconnected)(?: \(|\Z)")

Fragments = list[tuple[str, str]]


def sender(client_id: int, my_id: int | None) -> Fragments:
    label = f"{client_id}" + (" (you)" if client_id == my_id else "")
    return [(f"bold {id_colour(client_id)}", label)]


def with_ids(text: str, style: str, my_id: int | None) -> Fragments:
    """Server text with every 5-digit id in its own colour."""
    out: Fragments = []
    position = 0
    for match in ID_PATTERN.finditer(text):
        if match.start() > position:
            out.append((style, text[position : match.start()]))
        value = int(match.group())
        extra = " class:me" if value == my_id else ""
        out.append((f"{style} {id_colour(value)}{extra}", match.group()))
        position = match.end()
    if position < len(text):
        out.append((style, text[position:]))
    return out


def format_line(line: str, my_id: int | None = None, now: float | None = None) -> Fragments:
    """The fragments that show one server line, timestamp first."""
    parsed = replies.classify(line)
    stamp: Fragments = [("class:time", time.strftime("%H:%M:%S ", time.localtime(now)))]
    kind, body = parsed.kind, printable(parsed.body)
    if kind == "private" and parsed.sender is not None:
        return [
            *stamp,
            ("class:private", "[private] "),
            *sender(parsed.sender, my_id),
            ("class:private", " → you: "),
            ("class:chat", body),
        ]
    if kind == "broadcast" and parsed.sender is not None:
        return [*stamp, ("class:broadcast", "[broadcast] "), *sender(parsed.sender, my_id), ("", ": " + body)]
    if kind == "group" and parsed.sender is not None and parsed.group_id is not None:
        return [
            *stamp,
            ("class:group", f"[group {parsed.group_id}] "),
            *sender(parsed.sender, my_id),
            ("", ": " + body),
        ]
    if kind == "server":
        if _JOINED.match(body):
            return [*stamp, ("class:join", "→ "), *with_ids(body, "class:join", my_id)]
        if _LEFT.match(body):
            return [*stamp, ("class:leave", "← "), *with_ids(body, "class:leave", my_id)]
        return [*stamp, ("class:server", "[server] "), *with_ids(body, "class:server", my_id)]
    if kind in ("error", "limit"):
        label = "[error] " if kind == "error" else ""
        return [*stamp, ("class:error", label), *with_ids(body, "class:error.text", my_id)]
    if kind == "help":
        usage, gap, summary = body.partition("  ")
        if gap:
            return [
                *stamp,
                ("class:help", "[help] "),
                ("class:help.usage", usage),
                ("class:help", gap + summary),
            ]
        return [*stamp, ("class:help", "[help] " + body)]
    if kind in ("active", "groups"):
        return [*stamp, ("class:info", f"[{kind}] "), *with_ids(body, "", my_id)]
    if kind in ("ok", "welcome", "bye", "saved"):
        style = {"ok": "class:ok", "welcome": "class:welcome", "bye": "class:bye", "saved": "class:file"}[
            kind
        ]
        label = "[ok] " if kind == "ok" else "[saved] " if kind == "saved" else ""
        return [*stamp, (style, label), *with_ids(body, style, my_id)]
    return [*stamp, ("", printable(line))]


def own_message(target: str, text: str, my_id: int | None, now: float | None = None) -> Fragments:
    """What the person just sent, as the conversation shows it: ``you → 12345: text``.

    ``target`` is ``"12345"``, ``"all"`` or ``"group 4711"``: an id takes its
    colour, as it does in every other line.
    """
    stamp: Fragments = [("class:time", time.strftime("%H:%M:%S ", time.localtime(now)))]
    you = f"bold {id_colour(my_id)}" if my_id is not None else "class:mine"
    return [
        *stamp,
        (you, "you"),
        ("class:mine", " → "),
        *with_ids(target, "class:mine", my_id),
        ("class:mine", ": "),
        ("class:chat", printable(text)),
    ]


def color_depth() -> ColorDepth:
    """What the terminal can show (NO_COLOR and PROMPT_TOOLKIT_COLOR_DEPTH respected)."""
    import os

    from_env = ColorDepth.from_env()
    if from_env is not None:
        return from_env
    term = os.environ.get("TERM", "")
    if term in ("", "dumb"):
        return ColorDepth.DEPTH_1_BIT
    if term in ("linux", "eterm-color"):
        return ColorDepth.DEPTH_4_BIT
    return ColorDepth.DEPTH_8_BIT


def to_ansi(fragments: Fragments, depth: ColorDepth | None = None) -> str:
    """Fragments as one line of text with escape sequences (no newline)."""
    buffer = io.StringIO()
    output = Vt100_Output(buffer, lambda: Size(rows=24, columns=10_000), term="xterm-256color")
    render_fragments(output, FormattedText(fragments), STYLE, color_depth=depth or color_depth())
    output.flush()
    text = buffer.getvalue()
    # The renderer switches autowrap on and ends with a reset and CRLF: keep
    # the colours and the final reset, drop the rest.
    return text.replace("\x1b[?7h", "").replace("\r\n", "").rstrip("\n")
