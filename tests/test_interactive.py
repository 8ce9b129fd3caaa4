"""The interactive client, driven in a real terminal with tmux, and its parts.

The ``tmux`` tests start ``python -m client`` in a detached tmux session on a
private tmux server (``tmux -L <unique name>``), type into it with
``send-keys`` and read the screen with ``capture-pane``: what a person in
front of a terminal would see.  The other tests check the pieces the screen
is made of (the roster that follows the server's lines, completion, the
quiet queries, styling, the toolbar) without a terminal.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, LineModeClient, RawClient, python_env
from demokit import Demo
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from client import interactive
from client.completion import ChatCompleter
from client.interactive import QuietReplies, Transfers, human_pair, local_help, toolbar_fragments
from client.roster import Roster
from client.session import Progress
from client.styles import format_line, to_ansi
from palette import id_colour
from protocol import replies
from shm.discovery import remove_stale

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


# -- a terminal ------------------------------------------------------------------------------


class Terminal:
    """One tmux pane running a command, on a private tmux server."""

    def __init__(self, tmp_path: Path, width: int = 100, height: int = 30) -> None:
        self.socket = f"shmchat-test-{uuid.uuid4().hex[:12]}"
        self.tmp_path = tmp_path
        self.width, self.height = width, height
        self.config = tmp_path / "tmux.conf"
        # remain-on-exit keeps the pane (and its exit status) after the client ends.
        self.config.write_text("set -g remain-on-exit on\nset -g status off\nset -g history-limit 5000\n")
        self.env = python_env()
        self.env.pop("TMUX", None)
        self.env["XDG_DATA_HOME"] = str(tmp_path / "data")
        self.env.pop("SHMCHAT_HISTORY", None)
        self.env.pop("NO_COLOR", None)
        self.sessions = 0

    def tmux(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"tmux {args[0]} failed: {result.stderr}")
        return result.stdout

    def start(self, *command: str) -> str:
        """Run ``command`` in a new session; return the session name."""
        self.sessions += 1
        name = f"t{self.sessions}"
        self.tmux(
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            str(self.width),
            "-y",
            str(self.height),
            "-c",
            str(ROOT),
            shlex.join(command),
        )
        self.target = name
        return name

    def client(self, port: int) -> str:
        """``python -m client`` in a new session; its exit status goes to a file.

        (tmux's own ``pane_dead_status`` sometimes never arrives for the last pane.)
        """
        self.status_file = self.tmp_path / f"status-{self.sessions + 1}"
        return self.start(
            "sh",
            "-c",
            'status="$1"; shift; "$@"; echo $? > "$status"',
            "sh",
            str(self.status_file),
            sys.executable,
            "-m",
            "client",
            "--port",
            str(port),
            "--download-dir",
            str(self.tmp_path / "dl"),
        )

    def keys(self, *keys: str) -> None:
        """Named keys (Enter, Tab, C-d...)."""
        self.tmux("send-keys", "-t", self.target, *keys)

    def type(self, text: str) -> None:
        """Literal text, as typed."""
        self.tmux("send-keys", "-t", self.target, "-l", text)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", self.target)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            match = re.search(pattern, screen, re.M)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen within {timeout}s:\n{screen}")
            time.sleep(0.05)

    def prompt_line(self, my_id: int) -> str:
        """The last line that starts with the prompt, as shown."""
        lines = [ln.rstrip() for ln in self.screen().splitlines() if ln.startswith(f"{my_id}>")]
        assert lines, self.screen()
        return lines[-1]

    def dead_status(self, timeout: float = TIMEOUT) -> int:
        """Wait for the client to end; its exit status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = self.status_file.read_text()
            except FileNotFoundError:
                text = ""
            if text.endswith("\n"):
                return int(text)
            if time.monotonic() > deadline:
                raise AssertionError(f"the client did not exit within {timeout}s:\n{self.screen()}")
            time.sleep(0.05)

    def close(self) -> None:
        self.tmux("kill-server", check=False)
        # tmux leaves its socket file behind; this one was ours alone.
        folder = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.geteuid()}"
        (folder / self.socket).unlink(missing_ok=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    yield term
    term.close()


def my_id_on(term: Terminal) -> int:
    return int(term.wait_for(r"Your unique id is (\d{5})").group(1))


# -- in a real terminal ----------------------------------------------------------------------


@needs_tmux
@pytest.mark.tmux
def test_typing_survives_messages_arriving(server, connect, terminal: Terminal) -> None:
    terminal.client(server.port)
    me = my_id_on(terminal)
    other = connect()
    terminal.wait_for(rf"client {other.id} joined")
    typed = f"/send {other.id} half a sentence typed before the storm"
    terminal.type(typed)
    terminal.wait_for(re.escape(typed))
    for n in range(1, 6):
        other.send(f"/broadcast storm line {n}")
    other.send(f"/send {me} and a private word")
    terminal.wait_for(rf"\[private\] {other.id} → you: and a private word")
    screen = terminal.screen().splitlines()
    # Every message is above the prompt, and the prompt still holds what was typed.
    prompt_at = max(i for i, ln in enumerate(screen) if ln.startswith(f"{me}> "))
    assert screen[prompt_at].rstrip() == f"{me}> {typed}"
    for n in range(1, 6):
        assert any(f"[broadcast] {other.id}: storm line {n}" in ln for ln in screen[:prompt_at])
    assert all(re.match(r"\d\d:\d\d:\d\d ", ln) for ln in screen[:prompt_at] if "storm line" in ln)
    # Typing goes on where it stopped; the whole line is sent.
    terminal.type(", and finished after it")
    terminal.keys("Enter")
    other.expect(rf"^\[msg from {me}\] half a sentence typed before the storm, and finished after it$")


@needs_tmux
@pytest.mark.tmux
def test_tab_completion_offers_online_ids_commands_and_groups(server, connect, terminal: Terminal) -> None:
    terminal.client(server.port)
    me = my_id_on(terminal)
    x, y = connect(), connect()
    terminal.wait_for(rf"client {y.id} joined")
    terminal.wait_for(r"3 online")
    terminal.type("/send ")
    # The menu opens as you type: every other online client, never yourself.
    menu = terminal.wait_for(rf"(?s){min(x.id, y.id)}\s+online client.*{max(x.id, y.id)}\s+online client")
    assert str(me) not in menu.group(0)
    terminal.keys("Tab")  # takes the first
    terminal.wait_for(rf"^{me}> /send {min(x.id, y.id)} ?$")
    terminal.keys("C-u")
    # A command from its first letters.
    terminal.type("/makegroupr")
    terminal.wait_for(r"/makegroupreq\s+make a group")
    terminal.keys("Tab")
    terminal.wait_for(rf"^{me}> /makegroupreq ?$")
    terminal.keys("C-u")
    # Group ids once the client is in a group.
    x.send(f"/makegroup {me}")
    group = int(x.expect(r"^\[ok\] group (\d{5})").group(1))
    terminal.wait_for(rf"added you to group {group}")
    terminal.type("/sendgroup ")
    terminal.wait_for(rf"{group}\s+your group")
    terminal.keys("Tab")
    terminal.wait_for(rf"^{me}> /sendgroup {group} ?$")


@needs_tmux
@pytest.mark.tmux
def test_help_lists_the_commands_and_explains_one(server, terminal: Terminal) -> None:
    terminal.client(server.port)
    my_id_on(terminal)
    terminal.type("/help")
    terminal.keys("Enter")
    terminal.wait_for(r"\[help\] /makegroupreq <client id> \[<client id> \.\.\.\]\s+(- )?make a group")
    screen = terminal.screen()
    for spec in ("/send <client id> <message>", "/sendfile <client or group id> <path>", "/quit"):
        assert spec in screen
    assert "Tab completes" in screen
    terminal.keys("C-l")  # clear the screen, then one command
    terminal.type("/help sendgroup")
    terminal.keys("Enter")
    terminal.wait_for(r"\[help\] /sendgroup <group id> <message>\s+(- )?send a message to the other members")
    terminal.type("/help nosuch")
    terminal.keys("Enter")
    terminal.wait_for(r"\[error\] /help: unknown command 'nosuch'")


@needs_tmux
@pytest.mark.tmux
@pytest.mark.parametrize("key", ["C-d", "C-c"])
def test_ctrl_d_and_ctrl_c_leave_cleanly(server, connect, terminal: Terminal, key: str) -> None:
    watcher = connect()
    terminal.client(server.port)
    me = my_id_on(terminal)
    if key == "C-c":
        terminal.type("/send 12345 never sent")  # Ctrl-C leaves even with a line typed
    terminal.keys(key)
    watcher.expect(rf"^\[server\] client {me} left$")
    assert terminal.dead_status() == 0
    assert "never sent" not in "".join(watcher.seen)
    assert "Lost the connection" not in terminal.screen()


@needs_tmux
@pytest.mark.tmux
def test_a_lost_server_is_said_plainly_with_a_failure_status(start_server, terminal: Terminal) -> None:
    server = start_server()
    terminal.client(server.port)
    me = my_id_on(terminal)
    terminal.type("something half typed")
    server.kill()  # SIGKILL: no goodbye; its workers die with it
    try:
        terminal.wait_for(rf"Lost the connection to the server at 127\.0\.0\.1:{server.port}")
        assert terminal.dead_status() == 1
        assert f"{me}> something half typed" in terminal.screen()
    finally:
        remove_stale(server.port)  # a killed server leaves its objects; the next start would


@needs_tmux
@pytest.mark.tmux
def test_a_server_stopped_with_ctrl_c_ends_the_session_with_status_1(
    start_server, terminal: Terminal
) -> None:
    """As the README says: 0 when you leave, 1 when the server goes away, even politely."""
    server = start_server()
    terminal.client(server.port)
    my_id_on(terminal)
    assert server.stop(signal.SIGINT) == 0
    terminal.wait_for(r"the server is shutting down; goodbye")
    terminal.wait_for(rf"The server at 127\.0\.0\.1:{server.port} ended the session\.")
    assert terminal.dead_status() == 1


def test_line_mode_exits_1_when_the_server_ends_the_session(start_server, tmp_path: Path) -> None:
    server = start_server()
    client = LineModeClient(server.port, tmp_path / "dl")
    try:
        client.welcome()
        assert server.stop(signal.SIGINT) == 0
        client.expect(r"^\[bye\] the server is shutting down")
        assert client.wait() == 1
    finally:
        client.close()


@needs_tmux
@pytest.mark.tmux
def test_a_full_server_leaves_no_lone_prompt_line(start_server, terminal: Terminal) -> None:
    server = start_server("--max-clients", "1")
    first = RawClient(server.port)
    try:
        first.welcome()
        terminal.client(server.port)
        terminal.wait_for(r"Connection Limit Exceeded !!")
        assert terminal.dead_status() == 2
        screen = terminal.screen()
        assert not re.search(r"^\d*> *$", screen, re.M), screen
    finally:
        first.close()


@needs_tmux
@pytest.mark.tmux
def test_the_sender_sees_what_it_sent_styled_as_its_own(server, connect, terminal: Terminal) -> None:
    terminal.client(server.port)
    me = my_id_on(terminal)
    other = connect()
    terminal.wait_for(rf"client {other.id} joined")
    terminal.type(f"/send {other.id} hello you")
    terminal.keys("Enter")
    terminal.wait_for(rf"^\d\d:\d\d:\d\d you → {other.id}: hello you$")
    other.expect(rf"^\[msg from {me}\] hello you$")
    terminal.type("/broadcast hello all")
    terminal.keys("Enter")
    terminal.wait_for(r"^\d\d:\d\d:\d\d you → all: hello all$")
    other.expect(rf"^\[broadcast from {me}\] hello all$")
    other.send(f"/makegroup {me}")
    group = int(other.expect(r"^\[ok\] group (\d{5})").group(1))
    terminal.wait_for(rf"added you to group {group}")
    terminal.type(f"/sendgroup {group} hello group")
    terminal.keys("Enter")
    terminal.wait_for(rf"^\d\d:\d\d:\d\d you → group {group}: hello group$")
    other.expect(rf"^\[group {group} from {me}\] hello group$")
    # The echo is the person's own: in its own colour, not a line from the server.
    raw = terminal.tmux("capture-pane", "-p", "-e", "-t", terminal.target)
    assert re.search(r"\x1b\[[0-9;]*m(\x1b\[[0-9;]*m)*you\x1b", raw), raw


@needs_tmux
@pytest.mark.tmux
def test_a_message_that_was_not_delivered_is_marked_against_it(server, connect, terminal: Terminal) -> None:
    terminal.client(server.port)
    me = my_id_on(terminal)
    other = connect()
    terminal.wait_for(rf"client {other.id} joined")
    nobody = next(n for n in range(10000, 100000) if n not in (me, other.id))
    terminal.type(f"/send {nobody} anyone there?")
    terminal.keys("Enter")
    terminal.wait_for(rf"^\d\d:\d\d:\d\d you → {nobody}: anyone there\?$")
    terminal.wait_for(
        rf"\[error\] client {nobody} is offline; message discarded  ✗ you → {nobody}: anyone there\?$"
    )
    other.close()
    terminal.wait_for(rf"client {other.id} disconnected")
    terminal.type("/broadcast hello?")
    terminal.keys("Enter")
    terminal.wait_for(r"broadcast not sent  ✗ you → all: hello\?$")


@needs_tmux
@pytest.mark.tmux
def test_toolbar_shows_id_address_and_online_count(server, connect, terminal: Terminal) -> None:
    terminal.client(server.port)
    me = my_id_on(terminal)
    bar = terminal.wait_for(rf"^ id {me} │ 127\.0\.0\.1:{server.port} │ 1 online").group(0)
    assert bar
    other = connect()
    terminal.wait_for(rf"^ id {me} │ 127\.0\.0\.1:{server.port} │ 2 online")
    other.close()
    terminal.wait_for(rf"← client {other.id} disconnected")
    terminal.wait_for(rf"^ id {me} │ 127\.0\.0\.1:{server.port} │ 1 online")


@needs_tmux
@pytest.mark.tmux
def test_file_progress_shows_on_the_toolbar(server, line_client, terminal: Terminal, tmp_path: Path) -> None:
    receiver = line_client("receiver")
    payload = tmp_path / "lecture-notes.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024))
    terminal.client(server.port)
    me = my_id_on(terminal)
    terminal.type(f"/sendfile {receiver.id} {payload}")
    terminal.keys("Enter")
    terminal.wait_for(r"↑ lecture-notes\.bin (✓ sent 3\.1 MB|.*%)")
    receiver.expect(rf"^\[saved\] file 'lecture-notes\.bin' from {me}")
    terminal.wait_for(rf"delivered to {receiver.id}")


@needs_tmux
@pytest.mark.tmux
def test_history_is_kept_between_sessions(server, terminal: Terminal, tmp_path: Path) -> None:
    terminal.client(server.port)
    my_id_on(terminal)
    terminal.type("/activeallgroups")
    terminal.keys("Enter")
    terminal.wait_for(r"\[groups\] no groups on the server")
    terminal.keys("C-d")
    assert terminal.dead_status() == 0
    history = tmp_path / "data" / "shmchat" / "history"
    assert "+/activeallgroups" in history.read_text()
    terminal.client(server.port)
    me = my_id_on(terminal)
    terminal.keys("Up")
    terminal.wait_for(rf"^{me}> /activeallgroups$")


@needs_tmux
@pytest.mark.tmux
def test_demo_starts_ready_to_type_and_stops_clean(tmp_path: Path) -> None:
    demo = Demo(tmp_path)
    port, pane, tmux, wait_screen = demo.port, demo.pane, demo.tmux, demo.wait_screen
    started = demo.run("start")  # stdin is not a terminal: it starts detached
    pane_pids: list[int] = []
    try:
        assert started.returncode == 0, started.stderr
        assert "stop everything: ./dev demo-stop" in started.stdout
        ids = {n: int(wait_screen(pane(f"client {n}"), r"unique id is (\d{5})").group(1)) for n in "ABC"}
        inspector = pane("inspector")
        wait_screen(inspector, r"3/8 online")  # the demo has room for the lessons' clients
        for client_id in ids.values():
            wait_screen(inspector, rf"online\s+{client_id}\b")
        wait_screen(pane("server"), rf"client {ids['C']} connected")
        pane_pids = demo.pane_pids()
        assert len(pane_pids) == 6  # with the trace pane
        # Ready to type into: A broadcasts, B and C see it.
        tmux("send-keys", "-t", pane("client A"), "/broadcast hello class", "Enter")
        for name in "BC":
            wait_screen(pane(f"client {name}"), rf"\[broadcast\] {ids['A']}: hello class")
    finally:
        stopped = demo.run("stop")
    demo.assert_stopped_clean(stopped, pane_pids)
    assert not (tmp_path / f"shmchat-demo-{os.geteuid()}-{port}").exists()


# -- the parts, without a terminal ---------------------------------------------------------


def test_roster_follows_the_server_lines() -> None:
    roster = Roster()
    roster.observe(replies.welcome(11111, 3))
    assert roster.my_id == 11111 and roster.online_count == 3
    roster.observe(replies.active(11111, [11111, 22222, 33333]))
    assert roster.others() == [22222, 33333]
    roster.observe(replies.joined(44444))
    roster.observe(replies.left(22222, "left"))
    roster.observe(replies.left(33333, "disconnected (connection lost)"))
    assert roster.others() == [44444] and roster.online_count == 2
    roster.observe(replies.ok("group 55555: admin 11111; members 11111, 44444 (created); not added: 1 (x)"))
    assert roster.groups[55555].members == [11111, 44444] and roster.administered() == [55555]
    roster.observe(
        replies.notice("client 44444 invites you to group 66666 (its admin is 44444); to answer...")
    )
    assert roster.invitations() == [66666]
    roster.observe(replies.ok("you joined group 66666: admin 44444; members 44444, 11111"))
    assert roster.invitations() == [] and roster.my_groups() == [55555, 66666]
    roster.observe(replies.notice("client 44444 left group 66666; client 11111 is now its admin"))
    assert roster.groups[66666].admin == 11111 and roster.groups[66666].members == [11111]
    roster.observe(replies.notice("group 55555 was dissolved: its last member, client 11111, left"))
    assert 55555 not in roster.groups
    roster.observe(replies.offline(44444))
    assert roster.others() == []
    # A full listing replaces what was known.
    roster.observe(replies.groups_line("1 group(s) on the server"))
    roster.observe(replies.groups_line("group 77777: admin 88888; members 88888; invited 11111"))
    assert list(roster.groups) == [77777] and roster.invitations() == [77777]


def test_a_member_leaving_the_server_is_not_confused_with_leaving_a_group() -> None:
    roster = Roster()
    roster.observe(replies.welcome(11111, 2))
    roster.observe(replies.active(11111, [11111, 22222]))
    roster.observe(replies.notice("client 22222 left group 55555"))
    assert roster.others() == [22222]


def test_quiet_queries_hide_only_their_own_answers() -> None:
    quiet = QuietReplies()
    quiet.expect("active")
    quiet.expect("groups")
    assert not quiet.swallow("[msg from 22222] hi")  # other lines still show
    assert quiet.swallow(replies.active(11111, [11111]))
    assert quiet.swallow(replies.groups_line("2 group(s) on the server"))
    assert quiet.swallow(replies.groups_line("group 1: ..."))
    assert quiet.swallow(replies.groups_line("group 2: ..."))
    assert not quiet.swallow(replies.active(11111, [11111]))  # the person's own /active shows
    quiet.expect("groups")
    assert quiet.swallow(replies.groups_line("no groups on the server"))
    assert not quiet.swallow(replies.groups_line("no groups on the server"))


def _complete(roster: Roster, text: str) -> list[str]:
    return [c.text for c in ChatCompleter(roster).get_completions(Document(text), CompleteEvent())]


def test_completion_by_argument_position() -> None:
    roster = Roster()
    roster.observe(replies.welcome(11111, 1))
    roster.observe(replies.active(11111, [11111, 22222, 33333]))
    roster.observe(replies.ok("group 55555: admin 11111; members 11111, 22222 (created)"))
    roster.observe(replies.notice("client 33333 invites you to group 66666 (its admin is 33333); ..."))
    roster.observe(replies.notice("client 33333 asks to join group 55555; answer /approve 55555 33333"))
    assert _complete(roster, "/se") == ["/send ", "/sendgroup ", "/sendfile "]
    assert _complete(roster, "/SEND ") == ["22222 ", "33333 "]
    assert _complete(roster, "/send 2") == ["22222 "]
    assert _complete(roster, "/send 22222 hello ") == []
    assert _complete(roster, "/makegroup 22222 ") == ["33333 "]  # each id once
    assert _complete(roster, "/joingroup ") == ["66666 ", "55555 "]  # the invitation first
    assert _complete(roster, "/approve 55555 ") == ["33333 ", "22222 "]  # who asked, first
    assert _complete(roster, "/sendfile ") == ["22222 ", "33333 ", "55555 "]
    assert _complete(roster, "/help sendg") == ["sendgroup"]
    assert _complete(roster, "/help /sendg") == ["/sendgroup"]
    assert "EXIT" in _complete(roster, "e")


def test_completion_of_paths(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    roster = Roster()
    done = _complete(roster, f"/sendfile 22222 {tmp_path}/no")
    assert done == ["tes.txt"]


def test_each_id_has_one_colour_everywhere() -> None:
    assert id_colour(12345) == id_colour(12345)
    assert len({id_colour(i) for i in range(10000, 10100)}) > 8
    line = format_line("[msg from 12345] hi", my_id=11111, now=0)
    assert (f"bold {id_colour(12345)}", "12345") in line


def test_styles_differ_by_kind_and_chat_text_cannot_inject_escapes() -> None:
    looks = {
        kind: format_line(line, 11111, now=0)[1][0]
        for kind, line in {
            "private": "[msg from 22222] hi",
            "broadcast": "[broadcast from 22222] hi",
            "group": "[group 55555 from 22222] hi",
            "join": "[server] client 22222 joined",
            "leave": "[server] client 22222 left",
            "notice": "[server] group 55555 was dissolved",
            "error": "[error] nope",
        }.items()
    }
    assert len(set(looks.values())) == len(looks)
    assert format_line("[group 55555 from 22222] hi", 11111, now=0)[1][1] == "[group 55555] "
    shown = to_ansi(format_line("[msg from 22222] \x1b]0;pwned\x07\x1b[2J", 11111, now=0))
    assert "\x1b]" not in shown and "\x07" not in shown and "\x1b[2J" not in shown
    assert "\\x1b]0;pwned" in shown


def test_toolbar_and_transfers() -> None:
    roster = Roster()
    roster.observe(replies.welcome(11111, 3))
    transfers = Transfers()
    transfers.update(Progress("up", "notes.pdf", 0, 10_000_000), now=100.0)
    transfers.update(Progress("up", "notes.pdf", 5_000_000, 10_000_000), now=101.0)
    text = "".join(t for _, t in toolbar_fragments(roster, "127.0.0.1:5000", transfers.visible(101.0), 101.0))
    assert "id 11111" in text and "127.0.0.1:5000" in text and "3 online" in text
    assert "↑ notes.pdf" in text and "50%" in text and "5.0/10.0 MB" in text and "5.0 MB/s" in text
    transfers.update(Progress("up", "notes.pdf", 10_000_000, 10_000_000), now=102.0)
    text = "".join(t for _, t in toolbar_fragments(roster, "h:1", transfers.visible(103.0), 103.0))
    assert "✓ sent 10.0 MB" in text
    assert transfers.visible(102.0 + interactive.FINISHED_SHOWN_SECONDS + 1) == []
    assert human_pair(512, 900) == "512/900 B"


def test_local_help_comes_from_the_command_table() -> None:
    every = ["".join(t for _, t in line) for line in local_help("/help", columns=200)]
    from protocol.commands import COMMANDS

    for spec in COMMANDS:
        assert any(spec.usage in line and spec.summary in line for line in every)
    narrow = ["".join(t for _, t in line) for line in local_help("/help send", columns=40)]
    assert narrow == [narrow[0]] and "/send <client id> <message> - send a private message" in narrow[0]


def test_a_failure_is_marked_only_against_the_message_it_names() -> None:
    sent = interactive.SentMessages()
    assert sent.record("/active") is None and sent.record("/send nonsense") is None
    to_b = sent.record("/send 22222 hi b")
    to_c = sent.record("/send 33333 hi c")
    to_group = sent.record("/sendgroup 44444 hi group")
    assert to_b is not None and to_c is not None and to_group is not None
    assert (to_c.target, to_group.target) == ("33333", "group 44444")
    assert sent.failed(replies.left(33333, "left")) is None  # news about 33333, not about the message
    assert sent.failed(replies.offline(33333)) is to_c
    assert sent.failed(replies.offline(33333)) is None  # each failure marks one message
    assert sent.failed(replies.notice("you are the only member of group 44444; not sent")) is to_group
    assert sent.failed(replies.notice("nobody else is online; broadcast not sent")) is None
    assert sent.failed(replies.discarded(22222), now=time.monotonic() + 60) is None  # long forgotten


def test_line_mode_shows_exactly_what_the_server_sends_and_no_echo(server, connect, line_client) -> None:
    """Scripts parse line mode: the sender's own /send, /broadcast and /sendgroup are not echoed."""
    other = connect()
    client = line_client()
    client.send(f"/send {other.id} one")
    client.send("/broadcast two")
    client.send("/send 99999 three" if other.id != 99999 else "/send 99998 three")
    client.expect(r"^\[error\] client \d{5} is offline; message discarded$")
    client.send("/active")
    client.expect(r"^\[active\]")
    assert not [line for line in client.seen if "you →" in line or "✗" in line]
