"""Interactive mode: a prompt at the bottom, the conversation scrolling above it.

One thread, one asyncio loop.  prompt_toolkit reads the keyboard on that loop
and the socket is registered on it too (``add_reader``/``add_writer``), so
the ``ClientSession`` engine and the prompt never race.  Server lines are
styled (``client.styles``) and written through ``patch_stdout``, which
erases the prompt, prints the line and draws the prompt again with whatever
was being typed, cursor included.

What the person gets:

* history (Up/Down, and grey suggestions from it), saved per user in
  ``$XDG_DATA_HOME/shmchat/history`` (``~/.local/share/shmchat/history``);
* Tab completion of commands, online client ids, group ids and paths
  (``client.completion``), from a roster that follows the server's lines
  (``client.roster``);
* ``/help`` and ``/help <command>`` answered at once from the command table;
* a bottom toolbar: own id, server address, online count, groups, and a
  progress bar with bytes and speed for each file moving;
* what you send (``/send``, ``/broadcast``, ``/sendgroup``) shown at once in
  the conversation, as yours (``you → 12345: text``), and a failure to
  deliver it marked against it (``client.interactive.SentMessages``);
* Ctrl-D and Ctrl-C leave as ``/quit`` does (exit status 0); a server that
  ends the session (it is shutting down) or a lost connection is said in
  plain words, and the exit status is 1: the session did not end because
  the person asked, which a script or the shell's prompt can see.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout

from client.completion import ChatCompleter
from client.roster import Roster
from client.session import ClientSession, Progress
from client.styles import STYLE, Fragments, format_line, id_colour, own_message, to_ansi
from protocol import commands, replies

#: How long a finished transfer stays on the toolbar.
FINISHED_SHOWN_SECONDS = 5.0
#: How long a quit waits for the server's goodbye before closing anyway.
QUIT_WAIT_SECONDS = 3.0
#: Quiet queries older than this are forgotten (their reply is shown if it comes).
QUIET_EXPIRES_SECONDS = 5.0
#: How long a sent message waits for a failure line to be marked against it.
SENT_REMEMBERED_SECONDS = 10.0

KEY_TIPS = (
    "ids are 5-digit numbers; /active shows who is online",
    "keys: Tab completes commands, ids and file paths; Up/Down recall earlier lines; "
    "Ctrl-D or Ctrl-C leaves (as /quit)",
)


def history_path() -> str:
    """Where typed lines are kept: one file per user."""
    override = os.environ.get("SHMCHAT_HISTORY")
    if override:
        return os.path.expanduser(override)
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "shmchat", "history")


def open_history() -> History:
    path = history_path()
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError:
        return InMemoryHistory()  # a read-only home must not stop anyone chatting
    return FileHistory(path)


def local_help(line: str, columns: int = 80) -> list[Fragments]:
    """The answer to ``/help [command]``, made here from the command table.

    The same table the server's ``/help`` uses; answering locally is instant and
    can lay the text out for the width of this terminal.
    """
    stamp = ("class:time", time.strftime("%H:%M:%S "))
    try:
        request = commands.parse(line)
    except commands.CommandError as exc:
        return [format_line(replies.error(str(exc)))]
    assert isinstance(request, commands.Help)
    specs = [commands.BY_NAME[request.topic.lower()]] if request.topic else list(commands.COMMANDS)
    widest = max(len(spec.usage) for spec in specs)
    longest = max(len(spec.summary) for spec in specs)
    aligned = len(stamp[1]) + 7 + widest + 2 + longest <= columns
    out = []
    for spec in specs:
        usage = spec.usage.ljust(widest) + "  " if aligned else spec.usage + " - "
        out.append(
            [stamp, ("class:help", "[help] "), ("class:help.usage", usage), ("class:help", spec.summary)]
        )
    if request.topic is None:
        out += [[stamp, ("class:help", "[help] " + tip)] for tip in KEY_TIPS]
    return out


# -- file transfers on the toolbar ---------------------------------------------------


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def human_pair(done: int, total: int) -> str:
    """``67.6/100.0 MB``: both counts in the unit of the total."""
    unit = human_bytes(total).split()[1]
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    if unit == "B":
        return f"{done}/{total} B"
    return f"{done / scale:.1f}/{total / scale:.1f} {unit}"


@dataclass
class Transfer:
    direction: str  # "up" or "down"
    name: str
    total: int
    done: int = 0
    started: float = 0.0
    finished: float | None = None
    samples: deque = field(default_factory=lambda: deque(maxlen=20))

    def speed(self, now: float) -> float:
        """Bytes per second: over the last couple of seconds, or overall once done."""
        if self.finished is not None:
            return self.total / max(self.finished - self.started, 1e-3)
        recent = [(t, d) for t, d in self.samples if now - t <= 2.0]
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        return self.done / max(now - self.started, 1e-3)


class Transfers:
    """Progress of the files moving now, and of those that just finished."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Transfer] = {}

    def update(self, progress: Progress, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        key = (progress.direction, progress.name)
        item = self.items.get(key)
        if item is None or item.finished is not None:
            item = self.items[key] = Transfer(progress.direction, progress.name, progress.total, started=now)
        item.done = progress.done
        item.total = progress.total
        item.samples.append((now, progress.done))
        if progress.done >= progress.total:
            item.finished = now

    def visible(self, now: float | None = None) -> list[Transfer]:
        now = time.monotonic() if now is None else now
        for key, item in list(self.items.items()):
            if item.finished is not None and now - item.finished > FINISHED_SHOWN_SECONDS:
                del self.items[key]
        return list(self.items.values())


def transfer_fragments(item: Transfer, now: float, width: int = 12) -> Fragments:
    arrow = "↑" if item.direction == "up" else "↓"
    name = item.name if len(item.name) <= 24 else item.name[:21] + "..."
    if item.finished is not None:
        verb = "sent" if item.direction == "up" else "received"
        return [
            ("class:bar.label", f"{arrow} {name} "),
            ("class:bar.done", f"✓ {verb} {human_bytes(item.total)}"),
            ("", f" ({human_bytes(item.speed(now))}/s)"),
        ]
    fraction = item.done / item.total if item.total else 1.0
    filled = round(fraction * width)
    return [
        ("class:bar.label", f"{arrow} {name} "),
        ("class:bar.done", "█" * filled),
        ("class:bar.todo", "░" * (width - filled)),
        ("", f" {fraction:4.0%} {human_pair(item.done, item.total)} "),
        ("", f"{human_bytes(item.speed(now))}/s"),
    ]


def toolbar_fragments(
    roster: Roster, address: str, transfers: list[Transfer], now: float, connected: bool = True
) -> Fragments:
    sep = ("class:bar.sep", " │ ")
    if not connected:
        return [("class:bar.alert", f" disconnected from {address} ")]
    if roster.my_id is None:
        return [("class:bar.label", f" connecting to {address}...")]
    me = roster.my_id
    out: Fragments = [
        ("class:bar.label", " id "),
        (f"bold {id_colour(me)}", str(me)),
        sep,
        ("", address),
        sep,
        ("class:bar.label", f"{roster.online_count} online"),
    ]
    for item in transfers:  # a file moving matters more than the rest
        out += [sep, *transfer_fragments(item, now)]
    if transfers:
        return out
    groups = roster.my_groups()
    if groups:
        out += [sep, ("", f"groups {', '.join(map(str, groups))}")]
    invitations = roster.invitations()
    if invitations:
        out += [sep, ("class:bar.alert", f"invited to {', '.join(map(str, invitations))}")]
    if not groups and not invitations:
        out += [sep, ("class:bar.hint", "Tab completes · /help · Ctrl-D quits")]
    return out


# -- quiet queries -------------------------------------------------------------------

_GROUPS_HEADER = re.compile(r"(\d+) group\(s\) on the server$")


class QuietReplies:
    """Replies to the queries the client makes for itself, kept off the screen.

    The server answers a client's commands in order, so the next ``[active]``
    line (or ``[groups]`` listing) after such a query is its answer.
    """

    def __init__(self) -> None:
        self.expected: deque[tuple[str, float]] = deque()
        self.remaining: int | None = None

    def expect(self, kind: str) -> None:
        self.expected.append((kind, time.monotonic()))

    def swallow(self, line: str) -> bool:
        while self.expected and time.monotonic() - self.expected[0][1] > QUIET_EXPIRES_SECONDS:
            self.expected.popleft()
            self.remaining = None
        if not self.expected:
            return False
        parsed = replies.classify(line)
        want = self.expected[0][0]
        if parsed.kind != want:
            return False
        if want == "groups":
            if self.remaining is None:
                header = _GROUPS_HEADER.match(parsed.body)
                if header and int(header.group(1)) > 0:
                    self.remaining = int(header.group(1))
                    return True
            else:
                self.remaining -= 1
                if self.remaining > 0:
                    return True
                self.remaining = None
        self.expected.popleft()
        return True


# -- what the person sent ----------------------------------------------------------------


@dataclass
class Sent:
    target: str  # "12345", "all" or "group 4711", as the echo shows it
    text: str
    failure: re.Pattern[str]  # the body of a server line saying it was not delivered
    kinds: tuple[str, ...]  # the kinds of line that can say so
    at: float


class SentMessages:
    """The messages the person sent in the last few seconds, to mark a failure against.

    The server says nothing when a message is posted, and one line when it is
    not: an ``[error]`` naming the receiver (``client 12345 is offline; message
    discarded``, ``you are not a member of group 4711``) or a notice ending in
    ``not sent`` (``nobody else is online; broadcast not sent``).  Lines come
    back in the order the commands went, so such a line is about the oldest
    recent message it names.  Line mode shows none of this: scripts parse
    exactly what the server sends.
    """

    def __init__(self) -> None:
        self.recent: deque[Sent] = deque()

    def record(self, line: str, now: float | None = None) -> Sent | None:
        """The message a typed line sends (None for any other command, or a malformed one)."""
        try:
            request = commands.parse(line)
        except commands.CommandError:
            return None  # the server's [error] says what is wrong with it
        now = time.monotonic() if now is None else now
        if isinstance(request, commands.Send):
            target = str(request.target)
            sent = Sent(target, request.text, re.compile(rf"\b{target}\b"), ("error",), now)
        elif isinstance(request, commands.SendGroup):
            target = f"group {request.group_id}"
            failure = re.compile(rf"\b{request.group_id}\b(?:.*not sent$)?")
            sent = Sent(target, request.text, failure, ("error", "server"), now)
        elif isinstance(request, commands.Broadcast):
            sent = Sent("all", request.text, re.compile(r"broadcast not sent$"), ("server",), now)
        else:
            return None
        self.recent.append(sent)
        return sent

    def failed(self, line: str, now: float | None = None) -> Sent | None:
        """The recent message a server line says was not delivered, if it says so of one."""
        now = time.monotonic() if now is None else now
        while self.recent and now - self.recent[0].at > SENT_REMEMBERED_SECONDS:
            self.recent.popleft()
        parsed = replies.classify(line)
        if parsed.kind == "server" and not parsed.body.endswith("not sent"):
            return None  # "client 12345 left" names a receiver without being about a message
        for sent in self.recent:
            if parsed.kind in sent.kinds and sent.failure.search(parsed.body):
                self.recent.remove(sent)
                return sent
        return None


# -- the client ----------------------------------------------------------------------


class ConnectionEnded(Exception):
    """Raised into the prompt when the socket closes under it."""


class InteractiveClient:
    def __init__(
        self, sock: socket.socket, download_dir: str, address: str, download_quota: int | None = None
    ) -> None:
        self.sock = sock
        self.address = address
        self.roster = Roster()
        self.transfers = Transfers()
        self.quiet = QuietReplies()
        self.session = ClientSession(sock, download_dir, self.show, self.on_progress, download_quota)
        self.prompt: PromptSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writing = False
        self.quit_when_idle = False
        self.ended: asyncio.Event | None = None
        self.sent = SentMessages()

    # -- lines from the server (and from the session itself) -------------------------

    def show(self, line: str) -> None:
        first_welcome = self.roster.my_id is None and replies.classify(line).kind == "welcome"
        self.roster.observe(line)
        if first_welcome and self.roster.my_id is not None:
            self.ask_quietly("/active", "active")
            self.ask_quietly("/activeallgroups", "groups")
        if self.quiet.swallow(line):
            self.redraw()
            return
        fragments = format_line(line, self.roster.my_id)
        failed = self.sent.failed(line)
        if failed is not None:
            snippet = failed.text if len(failed.text) <= 40 else failed.text[:39] + "…"
            fragments.append(("class:mine.failed", f"  ✗ you → {failed.target}: {snippet}"))
        self.print_fragments(fragments)
        self.redraw()

    def print_fragments(self, fragments: Fragments) -> None:
        sys.stdout.write(to_ansi(fragments) + "\n")
        sys.stdout.flush()

    def say(self, text: str, style: str = "class:server") -> None:
        """A line from the client itself (not from the server)."""
        self.print_fragments([("class:time", time.strftime("%H:%M:%S ")), (style, text)])

    def ask_quietly(self, line: str, kind: str) -> None:
        self.quiet.expect(kind)
        self.session.send_user_line(line)

    def on_progress(self, progress: Progress) -> None:
        self.transfers.update(progress)
        self.redraw()

    def redraw(self) -> None:
        if self.prompt is not None and self.prompt.app.is_running:
            self.prompt.app.invalidate()

    # -- the socket on the event loop ---------------------------------------------------

    def on_readable(self) -> None:
        self.session.on_readable()
        self.after_io()

    def on_writable(self) -> None:
        self.session.on_writable()
        self.after_io()

    def after_io(self) -> None:
        session = self.session
        if session.closed:
            self.detach()
            return
        if self.quit_when_idle and not session.busy and not session.quit_sent:
            session.send_user_line("/quit")
        wants = session.wants_write()
        loop = self.loop
        assert loop is not None, "after_io runs only once run() has set the loop"
        if wants and not self.writing:
            loop.add_writer(self.sock.fileno(), self.on_writable)
            self.writing = True
        elif not wants and self.writing:
            loop.remove_writer(self.sock.fileno())
            self.writing = False

    def detach(self) -> None:
        """The socket is closed: stop watching it and end the prompt."""
        if self.loop is None or self.ended is None or self.ended.is_set():
            return
        self.ended.set()
        for remove in (self.loop.remove_reader, self.loop.remove_writer):
            try:
                remove(self.sock.fileno())
            except (ValueError, OSError):
                pass
        self.writing = False
        app = self.prompt.app if self.prompt is not None else None
        if app is not None and app.is_running and app.future is not None and not app.future.done():
            # An empty prompt would stay behind as a lone "> " line under the
            # server's last word (Connection Limit Exceeded !!): take it away.
            # A half-typed line stays, so that the person sees what was not sent.
            app.erase_when_done = not app.current_buffer.text
            app.exit(exception=ConnectionEnded())

    # -- what the person types ------------------------------------------------------------

    def submit(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            stripped = line.strip()
            if not stripped:
                continue
            word = stripped.split(maxsplit=1)[0].lower()
            if word == "/help":
                for fragments in local_help(stripped, shutil.get_terminal_size().columns):
                    self.print_fragments(fragments)
                continue
            if word in ("/quit", "exit") and self.session.busy:
                self.leave()
                continue
            self.session.send_user_line(line)
            sent = self.sent.record(stripped)
            if sent is not None:
                self.print_fragments(own_message(sent.target, sent.text, self.roster.my_id))
        self.after_io()

    def leave(self) -> None:
        """Ctrl-D, Ctrl-C, /quit: leave now, or once the uploads in flight are sent."""
        session = self.session
        if session.quit_sent or session.closed:
            return
        if session.busy and not self.quit_when_idle:
            self.quit_when_idle = True
            self.say("leaving once your upload is sent (press Ctrl-C again to leave now)")
            return
        session.send_user_line("/quit")
        self.after_io()

    # These two are prompt_toolkit callbacks: they return its FormattedText (a list
    # of the same (style, text) pairs), the type its API declares.

    def prompt_message(self) -> FormattedText:
        me = self.roster.my_id
        if me is None:
            return FormattedText([("class:prompt", "> ")])
        return FormattedText([(f"bold {id_colour(me)}", str(me)), ("class:prompt", "> ")])

    def toolbar(self) -> FormattedText:
        now = time.monotonic()
        return FormattedText(
            toolbar_fragments(
                self.roster, self.address, self.transfers.visible(now), now, connected=not self.session.closed
            )
        )

    # -- the whole session ------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.ended = asyncio.Event()
        self.sock.setblocking(False)
        self.prompt = PromptSession(
            history=open_history(),
            completer=ChatCompleter(self.roster),
            complete_while_typing=True,
            auto_suggest=AutoSuggestFromHistory(),
            bottom_toolbar=self.toolbar,
            style=STYLE,
            refresh_interval=0.5,
            reserve_space_for_menu=5,
        )
        with patch_stdout(raw=True):
            self.loop.add_reader(self.sock.fileno(), self.on_readable)
            self.after_io()
            while not self.session.closed:
                try:
                    text = await self.prompt.prompt_async(self.prompt_message)
                except (EOFError, KeyboardInterrupt):
                    self.leave()
                    if self.quit_when_idle and not self.session.quit_sent:
                        continue  # an upload is still going; the next Ctrl-C forces
                    text = None
                except ConnectionEnded:
                    break
                if text is not None:
                    self.submit(text)
                if self.session.quit_sent:
                    try:
                        await asyncio.wait_for(self.ended.wait(), QUIT_WAIT_SECONDS)
                    except TimeoutError:
                        self.session.close()
                    break
            self.detach()
        return self.farewell()

    def farewell(self) -> int:
        """Say how the session ended; the exit status."""
        session = self.session
        session.close()
        if session.refused:
            return 2
        if session.quit_sent:
            return 0
        if session.said_goodbye:
            print(f"The server at {self.address} ended the session.", file=sys.stderr)
            return 1
        print(
            f"Lost the connection to the server at {self.address}: "
            "it stopped or crashed, or the network failed.",
            file=sys.stderr,
        )
        return 1


def run_interactive(
    sock: socket.socket, download_dir: str, address: str, download_quota: int | None = None
) -> int:
    client = InteractiveClient(sock, download_dir, address, download_quota)
    try:
        return asyncio.run(client.run())
    except KeyboardInterrupt:  # Ctrl-C outside the prompt (while leaving)
        client.session.close()
        return 0 if client.session.quit_sent else 130
