"""A room of students (issue 16, items 1, 3 and 6): black-box tests against the real server.

* Control characters: nothing another client wrote reaches an ``nc`` user's
  terminal with a control or format character in it; the writer is told.
* Connections per address: ``--max-per-address``; the default leaves loopback alone.
* IPv6: ``--host ::1`` and ``--host ::`` (dual-stack), and the client's ``--host``.

docs/reliability.md, "A room of students", describes what each test shows.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import re
import socket
import struct
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    STARTED_PORTS,
    LineModeClient,
    RawClient,
    ServerProcess,
    piped,
    python_env,
)

from server.config import DEFAULT_MAX_PER_ADDRESS
from shm.snapshot import take_snapshot

#: The issue's payload: OSC 52 puts ``rm -rf ~/*`` in the clipboard, the screen is
#: cleared, the window retitled, and ``\r`` paints a forged notice over the real tag.
PAYLOAD = "MARK1\x1b]52;c;cm0gLXJmIH4vKgo=\x07\x1b[2J\x1b[H\x1b]0;pwned\x07\r[server] client 24851 left"
REFUSED = r"^\[error\] the line holds the control character U\+001B at character \d+: .*; discarded$"


@pytest.fixture
def peers() -> Iterator:
    """Factory: ``peers(port, host=..., source=..., welcome=True)``; all closed afterwards."""
    made: list[RawClient] = []

    def make(
        port: int, host: str = "127.0.0.1", source: str | None = None, welcome: bool = True
    ) -> RawClient:
        peer = RawClient(port, host, source)
        made.append(peer)
        if welcome:
            peer.welcome()
        return peer

    yield make
    for peer in made:
        peer.close()


def terminal_hazards(raw: bytes) -> list[str]:
    """Every character in ``raw`` (server lines) that a terminal or a bidi algorithm acts on.

    Written from the issue, independently of protocol/controls.py: C0 except TAB
    (and the ``\\n`` that ends each line), DEL, C1, and the format characters
    (category Cf) other than the two joiners, and the line and paragraph separators.
    """
    found = []
    for line in raw.split(b"\n"):
        for ch in line.decode("utf-8"):
            code = ord(ch)
            if ch == "\t" or ch in "\u200c\u200d":
                continue
            if (
                code < 0x20
                or 0x7F <= code <= 0x9F
                or unicodedata.category(ch) == "Cf"
                or ch in "\u2028\u2029"
            ):
                found.append(f"U+{code:04X}")
    return found


# -- 1. control characters ------------------------------------------------------------


def test_the_issue_payload_reaches_no_receiver_by_any_command_and_its_sender_gets_one_line(server, peers):
    a, rx, other = peers(server.port), peers(server.port), peers(server.port)
    a.expect(rf"client {other.id} joined")
    a.send(f"/makegroup {rx.id}")
    gid = a.expect(r"^\[ok\] group (\d{5})").group(1)
    rx.expect(rf"added you to group {gid}")
    sha = hashlib.sha256(b"hello").hexdigest()
    attempts = [
        f"/send {rx.id} {PAYLOAD}",
        f"/broadcast {PAYLOAD}",
        f"/sendgroup {gid} {PAYLOAD}",
        f"/sendfile {rx.id} 5 {sha} {PAYLOAD}",  # the name a [file ...] header would carry
    ]
    for attempt in attempts:
        before = len(a.seen)
        a.send(attempt)
        error = a.expect(r"^\[error\]").string
        assert re.match(REFUSED, error), error
        assert f"at character {attempt.index(chr(0x1B)) + 1}:" in error  # says where
        assert len(a.seen) == before + 1  # one line, and nothing else before it
    a.send(f"/send {rx.id} END")
    a.send(f"/send {other.id} END")
    rx.expect(rf"^\[msg from {a.id}\] END$")
    other.expect(rf"^\[msg from {a.id}\] END$")
    a.quiet(r".", wait=0.3)  # no [upload ...] answer or second line came for any attempt
    for receiver in (rx, other):
        assert terminal_hazards(bytes(receiver.raw)) == []
        assert b"MARK1" not in receiver.raw and b"pwned" not in receiver.raw


def test_bidi_and_c1_controls_are_refused_while_tabs_and_joiners_pass_byte_for_byte(server, peers):
    a, rx = peers(server.port), peers(server.port)
    a.expect(rf"client {rx.id} joined")
    for text, code, where in [
        ("\u202egnp.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE)", 1),
        ("x\u2066y\u2069", "U+2066 (LEFT-TO-RIGHT ISOLATE)", 2),
        ("\u200emark", "U+200E (LEFT-TO-RIGHT MARK)", 1),
        ("\u061cmark", "U+061C (ARABIC LETTER MARK)", 1),
        ("8-bit CSI \x9b2J", "U+009B", 11),
        ("para\u2029graph", "U+2029 (PARAGRAPH SEPARATOR)", 5),
    ]:
        a.send(f"/broadcast {text}")
        error = a.expect(r"^\[error\] the line holds").string
        assert f"character {code} at character {len('/broadcast ') + where}:" in error
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want": the ZWNJ keeps mi- apart
    fine = f"👩\u200d💻\tcoder and {persian}"  # ZWJ joins the emoji
    a.send(f"/send {rx.id} {fine}")
    rx.expect(rf"^\[msg from {a.id}\] ")
    assert f"[msg from {a.id}] {fine}\n".encode() in rx.raw
    assert terminal_hazards(bytes(rx.raw)) == []


def test_the_real_client_says_before_sending_that_a_line_would_be_refused(server, peers, line_client):
    rx = peers(server.port)
    sender = line_client("sender")
    sender.send(f"/send {rx.id} {PAYLOAD}")
    line = sender.expect(r"^\[error\]").string
    assert line.startswith("[error] the line holds the control character U+001B at character 18:")
    assert line.endswith("; not sent")
    sender.send(f"/send {rx.id} after")
    rx.expect(rf"^\[msg from {sender.id}\] after$")
    assert b"MARK1" not in rx.raw


def test_the_real_client_shows_emoji_and_words_joined_with_zwj_and_zwnj_as_they_are(
    server, peers, line_client
):
    a = peers(server.port)
    rx = line_client("rx")
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    a.send(f"/send {rx.id} 👩\u200d💻 {persian}")
    assert rx.expect(rf"^\[msg from {a.id}\] ").string == f"[msg from {a.id}] 👩\u200d💻 {persian}"


# -- 3. connections per address -------------------------------------------------------


def per_address_refusal(host: str, limit: int) -> str:
    return (
        f"[error] connection limit per address reached: {host} already has {limit} connection(s) "
        f"(at most {limit} from one address); try again when one of them leaves"
    )


def test_max_per_address_counts_loopback_when_given_and_leaves_room_for_another_address(start_server, peers):
    server = start_server("--max-per-address", "3")  # --max-clients is the spec's 5
    first = [peers(server.port) for _ in range(3)]
    fourth = peers(server.port, welcome=False)
    assert fourth.expect(r".").string == per_address_refusal("127.0.0.1", 3)
    assert fourth.closed()
    other = peers(server.port, source="127.0.0.2")  # the classmate at the next machine
    first[0].expect(rf"client {other.id} joined")
    assert "refused 127.0.0.1: it already has 3 connections (--max-per-address 3)" in server.log()
    # Freed when the worker is reaped: the parent announces the departure after reaping it.
    first[1].send("/quit")
    first[0].expect(rf"client {first[1].id} left")
    again = peers(server.port)
    other.expect(rf"client {again.id} joined")


def test_a_full_server_still_gives_the_spec_refusal_whatever_the_addresses(start_server, peers):
    server = start_server("--max-per-address", "3")
    for source in ("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"):
        peers(server.port, source=source)
    for source in ("127.0.0.1", "127.0.0.3"):  # an address at its limit, and a fresh one
        sixth = peers(server.port, source=source, welcome=False)
        assert sixth.expect(r".").string == "Connection Limit Exceeded !!"
        assert sixth.closed()


def local_ipv4_beyond_loopback() -> str | None:
    """An IPv4 address of this machine's own interfaces that is not loopback (SIOCGIFADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on that interface
            address = socket.inet_ntoa(packed[20:24])
            if not ipaddress.ip_address(address).is_loopback:
                return address
    return None


def test_the_default_limit_applies_beyond_loopback_only(start_server, peers):
    """The server listens on 127.0.0.1 only; the client binds a local non-loopback source address."""
    lan = local_ipv4_beyond_loopback()
    if lan is None:
        pytest.skip("this machine has no IPv4 address beyond loopback to connect from")
    server = start_server("--max-clients", "8")
    students = [peers(server.port, source=lan) for _ in range(DEFAULT_MAX_PER_ADDRESS)]
    one_more = peers(server.port, source=lan, welcome=False)
    assert one_more.expect(r".").string == per_address_refusal(lan, DEFAULT_MAX_PER_ADDRESS)
    demo = [peers(server.port) for _ in range(3)]  # loopback: the demo's terminals, all seats left
    students[0].expect(rf"client {demo[-1].id} joined")


# -- 6. IPv6 --------------------------------------------------------------------------


def ipv6_loopback_missing() -> str | None:
    if not socket.has_ipv6:
        return "this Python has no IPv6 support (socket.has_ipv6 is False)"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"this machine has no IPv6 loopback (binding ::1: {exc.strerror})"
    return None


class BracketedServer(ServerProcess):
    """``python -m server --host HOST``, whose banner writes an IPv6 address as ``[HOST]:PORT``."""

    def __init__(self, host: str, *args: str, spool: Path) -> None:  # ServerProcess reads A.B.C.D:PORT only
        command = [
            sys.executable,
            "-m",
            "server",
            "--host",
            host,
            "--port",
            "0",
            "--spool-dir",
            str(spool),
            *args,
        ]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stderr_lines: list[str] = []
        self.killed = False
        self.banner = piped(self.proc.stdout).readline()
        match = re.search(r"listening on \[(.+)\]:(\d+) ", self.banner)
        if not match:
            self.proc.kill()
            raise AssertionError(f"server did not start: {self.banner!r} {piped(self.proc.stderr).read()}")
        self.host, self.port = match.group(1), int(match.group(2))
        STARTED_PORTS.add(self.port)
        threading.Thread(target=self._collect_stderr, daemon=True).start()


@pytest.fixture
def ipv6_server(tmp_path: Path) -> Iterator:
    """Factory: ``ipv6_server("::1", *flags)``; each is stopped afterwards and must exit 0."""
    missing = ipv6_loopback_missing()
    if missing:
        pytest.skip(missing)
    servers: list[BracketedServer] = []

    def start(host: str, *args: str) -> BracketedServer:
        server = BracketedServer(host, *args, spool=tmp_path / f"spool-{len(servers)}")
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.stop() == 0, server.log()


def test_a_server_on_the_ipv6_loopback_serves_nc_and_the_real_client(ipv6_server, peers, tmp_path):
    server = ipv6_server("::1")
    assert f"listening on [::1]:{server.port} (" in server.banner
    a = peers(server.port, host="::1")
    b = LineModeClient(server.port, tmp_path / "b", "--host", "::1")
    try:
        b.welcome()
        a.send(f"/send {b.id} hello over IPv6")
        b.expect(rf"^\[msg from {a.id}\] hello over IPv6$")
        b.send(f"/send {a.id} and back")
        a.expect(rf"^\[msg from {b.id}\] and back$")
    finally:
        b.close()


def test_the_unspecified_ipv6_address_takes_ipv4_and_ipv6_clients(ipv6_server, peers):
    if not socket.has_dualstack_ipv6():
        pytest.skip("this system cannot turn IPV6_V6ONLY off: '::' takes IPv6 clients only")
    server = ipv6_server("::", "--max-per-address", "1")
    assert f"listening on [::]:{server.port} (" in server.banner
    v4 = peers(server.port, host="127.0.0.1")
    v6 = peers(server.port, host="::1")
    v4.send(f"/send {v6.id} from IPv4")
    v6.expect(rf"^\[msg from {v4.id}\] from IPv4$")
    v6.send(f"/send {v4.id} from IPv6")
    v4.expect(rf"^\[msg from {v6.id}\] from IPv6$")
    # An IPv4 client of the dual-stack socket is counted and stored as plain IPv4,
    # not as ::ffff:127.0.0.1 (which --max-per-address would count apart).
    second_v4 = peers(server.port, host="127.0.0.1", welcome=False)
    assert second_v4.expect(r".").string == per_address_refusal("127.0.0.1", 1)
    clients = take_snapshot(server.port).clients
    assert clients is not None
    assert sorted(c.peer_host for c in clients if c.online) == ["127.0.0.1", "::1"]
