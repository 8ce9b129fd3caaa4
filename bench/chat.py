"""Chat messages: shmchat against its design's floor and ngIRCd, same harness, interleaved rounds.

``python -m bench.chat`` (or ``python -m bench``) starts the servers itself on
127.0.0.1 and drives them with the same client code through a small adapter
(connect and register, one-to-one message, broadcast, what a received message
looks like).  ngIRCd is the reference: a small, well-regarded single-process
C IRC daemon (Debian package ``ngircd``), run in the foreground from a config
generated into a temporary folder: no DNS, ident or PAM lookups,
``MaxConnectionsIP = 0``, and ``MaxPenaltyTime = 0`` so that its flood
throttle does not cap throughput; shmchat likewise runs with
``--no-flood-control``.  One-to-one is ``PRIVMSG <nick>``; a
broadcast is ``PRIVMSG #all``, a channel every client joined.

The floor (``bench/floor/floor.c``) is a lean C build of exactly shmchat's
design: a worker process per client, the client and message tables in
System V segments under SEM_UNDO semaphores, one eventfd per slot.  It tells
how much of the distance to ngIRCd is the design and how much is Python.
The benchmark builds it with ``cc -O2`` into a temporary folder (and skips it,
saying so, without a compiler or with ``--no-floor``); it speaks shmchat's
dialect, so the shmchat adapter drives it.

Every round also runs shmchat ``--ipc posix`` (the same tables in POSIX
shared memory and named semaphores) right after plain shmchat, and a table
gives posix/sysv for every metric.

``--with-trace`` adds one more side to every round, shmchat started with
``--trace`` (issue 11: every process records its IPC steps in its own ring),
run right after plain shmchat, and a second table gives traced / untraced
for every metric: the cost of tracing, measured in the same rounds.

Rounds are interleaved, shmchat, the floor, ngIRCd, again and again, and every
ratio (shmchat / ngIRCd, shmchat / floor, floor / ngIRCd) is computed inside
one round, so that the drift of a shared machine hits all alike.  The summary
gives the median of the ratios and the median of the absolute figures.

Core rounds (shmchat with ``--max-clients 60``), five clients A, B and three
more, later 51:

1. round trip A -> server -> B -> server -> A, one message at a time: p50, p99;
2. throughput A -> B of small messages for a few seconds, never more than
   ``WINDOW`` sent and not yet received, so nothing can be dropped: messages
   per second from the first send to the last receipt;
3. broadcast from A to the 4 others, and later to 50 others: time until the
   last receiver has it (median of the samples of the round);
4. CPU ticks used by the whole server process tree while the 5 clients sit
   idle (10 s, 2 s with ``--quick``).

Scaling rounds (shmchat with ``--max-clients 256``), at 5, 50 and 200 clients:

5. unique memory (USS, psutil ``memory_full_info().uss``) of each idle
   worker and of the whole server tree, and the tree's PSS: USS counts a
   SysV segment page as the parent's own until a worker touches it, PSS
   shares it out;
6. broadcast to everyone else; ``docs/chat-scaling.png`` plots it with the
   tree's memory.

``--json FILE`` keeps every round's figures and ``--report FILE`` prints
their summary again.  ``--profile DIR`` instead runs only shmchat, records
its two workers with py-spy (raw collapsed stacks) during round trips and
a throughput run, and prints where their busy time goes; then, with no
profiler attached, the CPU each worker of shmchat and of the floor spends per
message relayed.

The client side is Python (one process drives every socket); it costs the
same for both servers, so it lowers the ratios' contrast a little but does
not favour either side.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - told plainly
    sys.exit("bench needs psutil (and matplotlib for the plot): pip install -e '.[bench]'")

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
NGIRCD_INSTALL = "sudo apt-get install -y ngircd   (Debian/Ubuntu package 'ngircd')"

#: Messages A may have sent that B has not yet received, in the throughput run.
WINDOW = 256
#: The sender tops the window up once this much of it is free (a pipelining client).
REFILL = WINDOW // 4
CORE_MAX_CLIENTS = 60
SCALING_MAX_CLIENTS = 256
SCALING_CLIENTS = (5, 50, 200)
TIMEOUT = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    """How much to measure: a full run or ``--quick``."""

    core_rounds: int
    scaling_rounds: int
    rtt_samples: int
    rtt_warmup: int
    throughput_seconds: float
    broadcast4_samples: int
    broadcast50_samples: int
    scaling_broadcast_samples: int
    idle_seconds: float


FULL = Plan(
    core_rounds=7,
    scaling_rounds=3,
    rtt_samples=3000,
    rtt_warmup=300,
    throughput_seconds=3.0,
    broadcast4_samples=300,
    broadcast50_samples=100,
    scaling_broadcast_samples=30,
    idle_seconds=10.0,
)
QUICK = Plan(
    core_rounds=2,
    scaling_rounds=1,
    rtt_samples=500,
    rtt_warmup=100,
    throughput_seconds=0.5,
    broadcast4_samples=60,
    broadcast50_samples=20,
    scaling_broadcast_samples=8,
    idle_seconds=2.0,
)

_tokens = count()


def token() -> str:
    """A fixed-width marker: no token is a prefix of another."""
    return f"k{next(_tokens):09d}"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- connections -------------------------------------------------------------------


class Conn:
    """One client socket and what it has read but not yet looked at."""

    def __init__(self, sock: socket.socket, ident: str) -> None:
        self.sock = sock
        self.ident = ident  # shmchat: the 5-digit id; IRC: the nick
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_some(self, timeout: float) -> bytes:
        self.sock.settimeout(max(timeout, 0.001))
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError(f"{self.ident}: the server closed the connection")
        return data

    def wait_for(self, marker: bytes, timeout: float = TIMEOUT) -> bytes:
        """Read until ``marker`` has arrived; return the line that holds it."""
        deadline = time.monotonic() + timeout
        while True:
            at = self.buf.find(marker)
            if at >= 0:
                start = self.buf.rfind(b"\n", 0, at) + 1
                end = self.buf.find(b"\n", at)
                end = len(self.buf) if end < 0 else end + 1
                line = bytes(self.buf[start:end])
                del self.buf[:end]
                return line
            newline = self.buf.rfind(b"\n")
            if newline >= 0:
                del self.buf[: newline + 1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.ident}: no {marker!r} within {timeout} s")
            self.buf += self.read_some(left)

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


def connect_socket(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


# -- the servers, behind one adapter -------------------------------------------------


class ChatServer:
    """What the harness needs to know about a server."""

    name = ""
    #: Bytes that start (shmchat) or sit inside (IRC) every received private message line.
    private_marker = b""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, max_clients: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def connect(self, index: int) -> Conn:
        raise NotImplementedError

    def private(self, to: Conn, text: str) -> bytes:
        raise NotImplementedError

    def broadcast(self, text: str) -> bytes:
        raise NotImplementedError

    def answer_keepalive(self, conn: Conn, data: bytes) -> None:
        """Reply to anything the server expects while a client sits idle."""

    def tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        parent = psutil.Process(self.proc.pid)
        return [parent, *parent.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        """Per-client processes (none for a single-process server)."""
        return self.tree()[1:]


class Shmchat(ChatServer):
    name = "shmchat"
    private_marker = b"[msg from "
    #: Added to the server's command line (``ShmchatTraced``: ``--trace``).
    extra_args: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._stderr = None

    def start(self, max_clients: int) -> None:
        command = [sys.executable, "-m", "server", "--port", "0", "--log-level", "WARNING"]
        options = ["--max-clients", str(max_clients), "--no-flood-control", *self.extra_args]
        self.launch([*command, *options], REPO)

    def launch(self, command: list[str], cwd: Path) -> None:
        """Start a server that prints ``listening on HOST:PORT`` first (shmchat, the floor)."""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        first = self.proc.stdout.readline().decode() if ready else ""
        found = re.search(r"listening on [\d.]+:(\d+)", first)
        if not found:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {first!r} {self.stderr_text()}")
        self.port = int(found.group(1))

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        super().stop()
        if self._stderr is not None:
            text = self.stderr_text().strip()
            if text:
                log(f"{self.name} stderr: {text}")
            self._stderr.close()
            self._stderr = None

    def connect(self, index: int) -> Conn:
        conn = Conn(connect_socket(self.port), "?")
        line = conn.wait_for(b"[welcome]")
        found = re.search(rb"unique id is (\d+)", line)
        if not found:
            conn.close()
            raise RuntimeError(f"shmchat refused client {index}: {line!r}")
        conn.ident = found.group(1).decode()
        return conn

    def private(self, to: Conn, text: str) -> bytes:
        return f"/send {to.ident} {text}\n".encode()

    def broadcast(self, text: str) -> bytes:
        return f"/broadcast {text}\n".encode()


class ShmchatTraced(Shmchat):
    """shmchat with ``--trace``: the same server, every IPC step recorded (``--with-trace``)."""

    name = "shmchat --trace"
    extra_args = ("--trace",)


class ShmchatPosix(Shmchat):
    """shmchat with ``--ipc posix``: the same tables in POSIX shared memory and named semaphores."""

    name = "shmchat --ipc posix"
    extra_args = ("--ipc", "posix")


class Floor(Shmchat):
    """shmchat's design in lean C (``bench/floor/floor.c``): the floor of the design.

    It speaks shmchat's wire dialect, so the Shmchat adapter's connect,
    private and broadcast serve it unchanged.  It is built once per run with
    the system C compiler (``cc -O2``) into a temporary folder.
    """

    name = "floor"
    SOURCE = REPO / "bench" / "floor" / "floor.c"
    _binary: str | None = None
    _folder: tempfile.TemporaryDirectory | None = None

    @classmethod
    def build(cls) -> str | None:
        """Compile floor.c once; None (and one line saying why) when there is no compiler."""
        if cls._binary is not None:
            return cls._binary
        compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if compiler is None:
            log("floor: no C compiler (cc) found; the floor of the design is skipped")
            return None
        cls._folder = tempfile.TemporaryDirectory(prefix="shmchat-bench-floor-")
        binary = os.path.join(cls._folder.name, "floor")
        command = [compiler, "-O2", "-std=gnu11", "-o", binary, str(cls.SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log(f"floor: {' '.join(command)} failed; the floor is skipped:\n{done.stderr[-2000:]}")
            return None
        log(f"floor: built {cls.SOURCE.relative_to(REPO)} with {Path(compiler).name} -O2 into {binary}")
        cls._binary = binary
        return binary

    def start(self, max_clients: int) -> None:
        binary = self.build()
        if binary is None:
            raise RuntimeError("the floor could not be built")
        self.launch([binary, "0", str(max_clients)], REPO)


class Ngircd(ChatServer):
    name = "ngIRCd"
    private_marker = b" PRIVMSG "
    channel = "#all"

    def __init__(self) -> None:
        super().__init__()
        self.folder: str | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("ngircd") or next(
            (p for p in ("/usr/sbin/ngircd", "/usr/local/sbin/ngircd") if os.access(p, os.X_OK)), None
        )

    def config(self, max_clients: int) -> str:
        folder = self.folder
        return f"""\
[Global]
    Name = bench.local
    Info = shmchat benchmark reference
    AdminInfo1 = shmchat benchmark
    AdminInfo2 = localhost
    AdminEMail = nobody@localhost
    Listen = {HOST}
    Ports = {self.port}
    MotdFile = {folder}/ngircd.motd
    PidFile = {folder}/ngircd.pid
[Limits]
    MaxConnections = {max_clients + 50}
    MaxConnectionsIP = 0
    MaxJoins = 0
    MaxPenaltyTime = 0
    PingTimeout = 600
    PongTimeout = 600
[Options]
    DNS = no
    Ident = no
    PAM = no
"""

    def start(self, max_clients: int) -> None:
        binary = self.binary()
        if binary is None:
            raise RuntimeError(f"ngIRCd is not installed: {NGIRCD_INSTALL}")
        self.folder = tempfile.mkdtemp(prefix="shmchat-bench-ngircd-")
        if os.geteuid() == 0:
            # Started as root, ngIRCd drops to "nobody" before it writes its pid file.
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
        self.port = free_port()
        conf = os.path.join(self.folder, "ngircd.conf")
        Path(conf).write_text(self.config(max_clients))
        Path(self.folder, "ngircd.motd").write_text("shmchat benchmark\n")
        self._log = open(os.path.join(self.folder, "ngircd.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, "--nodaemon", "--config", conf],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + TIMEOUT
        while "ready." not in Path(self.folder, "ngircd.log").read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = Path(self.folder, "ngircd.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"ngIRCd did not start:\n{text}")
            time.sleep(0.02)

    def stop(self) -> None:
        super().stop()
        if self.folder is not None:
            self._log.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def connect(self, index: int) -> Conn:
        nick = f"u{index}"
        conn = Conn(connect_socket(self.port), nick)
        conn.send(f"NICK {nick}\r\nUSER {nick} 0 * :bench\r\n".encode())
        conn.wait_for(f" 376 {nick} ".encode())  # end of the MOTD: registered
        conn.send(f"JOIN {self.channel}\r\n".encode())
        conn.wait_for(f" 366 {nick} {self.channel} ".encode())  # end of NAMES: joined
        return conn

    def private(self, to: Conn, text: str) -> bytes:
        return f"PRIVMSG {to.ident} :{text}\r\n".encode()

    def broadcast(self, text: str) -> bytes:
        return f"PRIVMSG {self.channel} :{text}\r\n".encode()

    def answer_keepalive(self, conn: Conn, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line.startswith(b"PING "):
                conn.send(b"PONG " + line[5:].strip() + b"\r\n")


@contextmanager
def running(server: ChatServer, max_clients: int) -> Iterator[list[Conn]]:
    """Start a server; yield a list for its clients; close them and stop it, always."""
    conns: list[Conn] = []
    server.start(max_clients)
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()
        server.stop()


def connect_up_to(server: ChatServer, conns: list[Conn], total: int) -> None:
    while len(conns) < total:
        conns.append(server.connect(len(conns)))


def settle(server: ChatServer, conns: list[Conn], quiet: float = 0.3, limit: float = 60.0) -> None:
    """Read and drop whatever is in flight (join notices) until every socket is quiet."""
    sel = selectors.DefaultSelector()
    for conn in conns:
        conn.sock.setblocking(False)
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            events = sel.select(quiet)
            if not events:
                return
            for key, _ in events:
                conn = key.data
                try:
                    data = conn.sock.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError(f"{conn.ident}: closed while settling")
                server.answer_keepalive(conn, data)
        raise TimeoutError("the clients never went quiet")
    finally:
        sel.close()
        for conn in conns:
            conn.buf.clear()
            conn.sock.setblocking(True)


# -- the measurements ----------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def round_trips(server: ChatServer, a: Conn, b: Conn, samples: int, warmup: int) -> list[float]:
    """A sends to B; B, on receipt, sends to A; the time until A has it (µs)."""
    times = []
    clock = time.perf_counter_ns
    for i in range(warmup + samples):
        ping, pong = token(), token()
        start = clock()
        a.send(server.private(b, ping))
        b.wait_for(ping.encode())
        b.send(server.private(a, pong))
        a.wait_for(pong.encode())
        if i >= warmup:
            times.append((clock() - start) / 1000)
    return times


def throughput(server: ChatServer, a: Conn, b: Conn, seconds: float) -> float:
    """A -> B, small messages, never more than WINDOW unreceived: messages per second.

    A sends for ``seconds``, topping the window up in batches as B reports
    receipts; the rate counts from the first send to the last receipt.
    """
    marker = server.private_marker
    sent = received = 0
    partial = tail = b""
    start = time.perf_counter()
    stop_sending = start + seconds
    while True:
        room = WINDOW - (sent - received)
        if time.perf_counter() < stop_sending:
            if room >= REFILL:
                batch = [server.private(b, f"t{i:09d}") for i in range(sent, sent + room)]
                a.sock.sendall(b"".join(batch))
                sent += room
        elif received == sent:
            break
        ready, _, _ = select.select([b.sock], [], [], TIMEOUT)
        if not ready:
            raise TimeoutError(f"throughput: {received} of {sent} received, then silence")
        chunk = b.sock.recv(262144)
        if not chunk:
            raise ConnectionError("throughput: the server closed the receiver's connection")
        data = partial + chunk
        end = data.rfind(b"\n") + 1
        complete, partial = data[:end], data[end:]
        received += complete.count(marker)
        if complete:
            tail = complete[-64:]
    elapsed = time.perf_counter() - start
    if received != sent or f"t{sent - 1:09d}".encode() not in tail:
        raise RuntimeError(f"throughput: got {received} messages of {sent}, the last ending {tail!r}")
    return received / elapsed


def broadcasts(server: ChatServer, sender: Conn, receivers: list[Conn], samples: int) -> list[float]:
    """A broadcast from ``sender``: time until the last receiver has it (µs), per sample."""
    sel = selectors.DefaultSelector()
    for conn in receivers:
        conn.sock.setblocking(False)
        conn.buf.clear()
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    times = []
    clock = time.perf_counter_ns
    try:
        for _ in range(samples):
            mark = token().encode()
            waiting = set(receivers)
            start = clock()
            sender.send(server.broadcast(mark.decode()))
            while waiting:
                events = sel.select(TIMEOUT)
                if not events:
                    raise TimeoutError(f"broadcast: {len(waiting)} receivers never got it")
                for key, _ in events:
                    conn = key.data
                    try:
                        data = conn.sock.recv(262144)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise ConnectionError(f"{conn.ident}: closed during a broadcast")
                    conn.buf += data
                    if mark in conn.buf:
                        waiting.discard(conn)
                        conn.buf.clear()
                    else:
                        del conn.buf[: conn.buf.rfind(b"\n") + 1]
            times.append((clock() - start) / 1000)
    finally:
        sel.close()
        for conn in receivers:
            conn.sock.setblocking(True)
    return times


def cpu_ticks(server: ChatServer, seconds: float) -> int:
    """Clock ticks used by the server's whole process tree over ``seconds``."""

    def snapshot() -> dict[int, float]:
        used = {}
        for proc in server.tree():
            with suppress(psutil.Error):
                times = proc.cpu_times()
                used[proc.pid] = times.user + times.system
        return used

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    return sum(round((after[pid] - before.get(pid, 0.0)) * CLK_TCK) for pid in after)


@dataclass
class Memory:
    tree_uss: float  # MiB, every process of the server
    tree_pss: float  # MiB, shared pages (the SysV segments, the forked heap) split among users
    worker_uss: float | None  # MiB, median over the per-client processes (None: there are none)


def memory(server: ChatServer) -> Memory:
    uss, pss, workers = 0, 0, []
    parent_pid = server.proc.pid if server.proc else -1
    for proc in server.tree():
        info = proc.memory_full_info()
        uss += info.uss
        pss += info.pss
        if proc.pid != parent_pid:
            workers.append(info.uss)
    mib = 1024 * 1024
    return Memory(uss / mib, pss / mib, statistics.median(workers) / mib if workers else None)


# -- rounds ----------------------------------------------------------------------------


def core_round(server: ChatServer, plan: Plan) -> dict[str, float]:
    figures: dict[str, float] = {}
    with running(server, CORE_MAX_CLIENTS) as conns:
        connect_up_to(server, conns, 5)
        settle(server, conns)
        a, b = conns[0], conns[1]
        rtt = round_trips(server, a, b, plan.rtt_samples, plan.rtt_warmup)
        figures["rtt_p50_us"] = quantile(rtt, 0.50)
        figures["rtt_p99_us"] = quantile(rtt, 0.99)
        settle(server, conns, quiet=0.05)
        figures["throughput_msgs"] = throughput(server, a, b, plan.throughput_seconds)
        settle(server, conns, quiet=0.05)
        figures["broadcast4_us"] = statistics.median(
            broadcasts(server, a, conns[1:5], plan.broadcast4_samples)
        )
        settle(server, conns, quiet=0.2)
        figures["idle_cpu_ticks"] = cpu_ticks(server, plan.idle_seconds)
        connect_up_to(server, conns, 51)
        settle(server, conns)
        figures["broadcast50_us"] = statistics.median(
            broadcasts(server, a, conns[1:51], plan.broadcast50_samples)
        )
    return figures


def scaling_round(server: ChatServer, plan: Plan) -> dict[str, float]:
    figures: dict[str, float] = {}
    with running(server, SCALING_MAX_CLIENTS) as conns:
        for total in SCALING_CLIENTS:
            connect_up_to(server, conns, total)
            settle(server, conns)
            mem = memory(server)
            figures[f"tree_uss_{total}"] = mem.tree_uss
            figures[f"tree_pss_{total}"] = mem.tree_pss
            if mem.worker_uss is not None:
                figures[f"worker_uss_{total}"] = mem.worker_uss
            times = broadcasts(server, conns[0], conns[1:total], plan.scaling_broadcast_samples)
            figures[f"broadcast_all_{total}_us"] = statistics.median(times)
        low, high = SCALING_CLIENTS[0], SCALING_CLIENTS[-1]
        figures["per_client_uss"] = (figures[f"tree_uss_{high}"] - figures[f"tree_uss_{low}"]) / (high - low)
    return figures


@dataclass
class Results:
    rounds: list[dict[str, dict[str, float]]] = field(default_factory=list)  # name -> figures, per round

    def values(self, name: str, metric: str) -> list[float]:
        return [r[name][metric] for r in self.rounds if name in r and metric in r[name]]

    def ratios(self, metric: str, top: str = "shmchat", bottom: str = "ngIRCd") -> list[float]:
        """``top / bottom`` inside each round that measured both."""
        out = []
        for r in self.rounds:
            s, n = r.get(top, {}).get(metric), r.get(bottom, {}).get(metric)
            if s is not None and n:
                out.append(s / n)
        return out


#: The three ratios the report gives, each computed inside a round.
RATIOS = (("shmchat", "ngIRCd"), ("shmchat", "floor"), ("floor", "ngIRCd"))


def servers(with_floor: bool, with_trace: bool = False) -> list[ChatServer]:
    """One round's servers, in the order they run: shmchat, on POSIX IPC, (traced), the floor, ngIRCd."""
    return [
        Shmchat(),
        ShmchatPosix(),
        *([ShmchatTraced()] if with_trace else []),
        *([Floor()] if with_floor else []),
        Ngircd(),
    ]


def run_rounds(
    kind: str,
    count_: int,
    step: Callable[[ChatServer], dict[str, float]],
    with_floor: bool = True,
    with_trace: bool = False,
) -> Results:
    results = Results()
    for number in range(1, count_ + 1):
        row: dict[str, dict[str, float]] = {}
        for server in servers(with_floor, with_trace):
            started = time.monotonic()
            row[server.name] = step(server)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row[server.name].items())
            log(f"{kind} round {number}/{count_} {server.name} ({time.monotonic() - started:.1f} s): {shown}")
        results.rounds.append(row)
    return results


# -- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    at_most: float | None = None  # goal on the ratio shmchat / ngIRCd: lower is better
    at_least: float | None = None  # goal on the ratio: higher is better
    limit: float | None = None  # goal on shmchat's own figure, in every round
    digits: int = 0
    scale: float = 1.0  # from the stored figure to the unit shown
    # Issue 13's goals: on the ratio shmchat / floor, or on shmchat's own figure.
    floor_at_most: float | None = None
    floor_at_least: float | None = None
    floor_limit: float | None = None

    @property
    def goal(self) -> str:
        return self._goal(self.at_most, self.at_least, self.limit)

    @property
    def floor_goal(self) -> str:
        return self._goal(self.floor_at_most, self.floor_at_least, self.floor_limit)

    def _goal(self, at_most: float | None, at_least: float | None, limit: float | None) -> str:
        if at_most is not None:
            return f"≤ {at_most:g}x"
        if at_least is not None:
            return f"≥ {at_least:g}x"
        if limit is not None:
            return f"{limit:g} {self.unit}" if limit == 0 else f"≤ {limit:g} {self.unit}"
        return ""

    def met(self, ratio: float | None, figures: list[float]) -> str:
        return self._met(self.at_most, self.at_least, self.limit, ratio, figures)

    def floor_met(self, ratio: float | None, figures: list[float]) -> str:
        return self._met(self.floor_at_most, self.floor_at_least, self.floor_limit, ratio, figures)

    def _met(
        self,
        at_most: float | None,
        at_least: float | None,
        limit: float | None,
        ratio: float | None,
        figures: list[float],
    ) -> str:
        if at_most is not None and ratio is not None:
            ok = ratio <= at_most
        elif at_least is not None and ratio is not None:
            ok = ratio >= at_least
        elif limit is not None and figures:
            ok = max(figures) * self.scale <= limit
        else:
            return ""
        return "yes" if ok else "**no**"


CORE_METRICS = [
    Metric("rtt_p50_us", "round trip A→B→A, p50", "µs", at_most=1.5, floor_at_most=1.4),
    Metric("rtt_p99_us", "round trip A→B→A, p99", "µs", at_most=1.8, floor_at_most=1.6),
    Metric("throughput_msgs", f"throughput A→B, window {WINDOW}", "msg/s", at_least=1.0, floor_at_least=0.8),
    Metric("broadcast4_us", "broadcast to 4, last receiver", "µs", at_most=1.2, floor_at_most=1.6),
    Metric("broadcast50_us", "broadcast to 50, last receiver", "µs", at_most=2.0, floor_at_most=1.8),
    Metric("idle_cpu_ticks", "CPU of the tree, 5 idle clients", "ticks", limit=0, floor_limit=0),
]


def scaling_metrics() -> list[Metric]:
    metrics = []
    for n in SCALING_CLIENTS:
        metrics.append(
            Metric(
                f"worker_uss_{n}",
                f"USS per idle worker, {n} clients",
                "MiB",
                limit=2,
                digits=2,
                floor_limit=1.5,
            )
        )
    metrics.append(
        Metric("per_client_uss", "USS added per client, 5→200", "KiB", limit=2048, digits=0, scale=1024)
    )
    for n in SCALING_CLIENTS:
        metrics.append(Metric(f"tree_uss_{n}", f"USS of the whole tree, {n} clients", "MiB", digits=1))
    for n in SCALING_CLIENTS:
        metrics.append(Metric(f"tree_pss_{n}", f"PSS of the whole tree, {n} clients", "MiB", digits=1))
    for n in SCALING_CLIENTS:
        metrics.append(Metric(f"broadcast_all_{n}_us", f"broadcast to all {n - 1} others", "µs"))
    return metrics


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def median_ratio(results: Results, metric: str, top: str, bottom: str) -> float | None:
    ratios = results.ratios(metric, top, bottom)
    return statistics.median(ratios) if ratios else None


def table(core: Results, scaling: Results) -> str:
    """Medians of the figures, and the three same-run ratios with their goals.

    The first goal column is the ngIRCd goal of the original benchmark; the
    second, issue 13's goal on shmchat / floor (or on shmchat's own figure).
    """
    lines = [
        "| metric | shmchat | floor | ngIRCd | shmchat/ngIRCd | goal | met "
        "| shmchat/floor | goal | met | floor/ngIRCd |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | --- | ---: |",
    ]
    for results, metrics in ((core, CORE_METRICS), (scaling, scaling_metrics())):
        for m in metrics:
            s = results.values("shmchat", m.key)
            if not s and not results.values("ngIRCd", m.key) and not results.values("floor", m.key):
                continue
            figures = [results.values(name, m.key) for name in ("shmchat", "floor", "ngIRCd")]
            shown = [fmt(statistics.median(f) * m.scale if f else None, m.digits) for f in figures]
            vs_ngircd, vs_floor, floor_ngircd = (median_ratio(results, m.key, *pair) for pair in RATIOS)

            def text(ratio: float | None) -> str:
                return f"{ratio:.2f}x" if ratio is not None else "-"

            lines.append(
                f"| {m.label} ({m.unit}) | {' | '.join(shown)} | {text(vs_ngircd)} | {m.goal} "
                f"| {m.met(vs_ngircd, s)} | {text(vs_floor)} | {m.floor_goal} | {m.floor_met(vs_floor, s)} "
                f"| {text(floor_ngircd)} |"
            )
    return "\n".join(lines)


def trace_table(
    core: Results, scaling: Results, other: str = ShmchatTraced.name, ratio: str = "traced/untraced"
) -> str:
    """shmchat with a variation against plain shmchat, for every metric, inside each round (median, range).

    The variation is ``--trace`` (the cost of tracing) or ``--ipc posix`` (POSIX against System V IPC).
    """
    lines = [
        f"| metric | shmchat | {other} | {ratio} (rounds' range) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for results, metrics in ((core, CORE_METRICS), (scaling, scaling_metrics())):
        for m in metrics:
            plain, varied = results.values("shmchat", m.key), results.values(other, m.key)
            if not plain or not varied:
                continue
            shown = [fmt(statistics.median(f) * m.scale, m.digits) for f in (plain, varied)]
            ratios = results.ratios(m.key, other, "shmchat")
            ratio = (
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"
            )
            lines.append(f"| {m.label} ({m.unit}) | {' | '.join(shown)} | {ratio} |")
    return "\n".join(lines)


def plot(scaling: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for name, style in (("shmchat", "o-"), ("floor", "^-."), ("ngIRCd", "s--")):
        if not scaling.values(name, f"broadcast_all_{SCALING_CLIENTS[0]}_us"):
            continue  # no floor in this run (no compiler)
        times = [
            statistics.median(scaling.values(name, f"broadcast_all_{n}_us")) / 1000 for n in SCALING_CLIENTS
        ]
        pss = [statistics.median(scaling.values(name, f"tree_pss_{n}")) for n in SCALING_CLIENTS]
        left.plot(SCALING_CLIENTS, times, style, label=name)
        right.plot(SCALING_CLIENTS, pss, style, label=name)
    left.set(title="broadcast to everyone else", xlabel="clients connected", ylabel="last receiver (ms)")
    right.set(title="memory of the server tree", xlabel="clients connected", ylabel="sum of PSS (MiB)")
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(SCALING_CLIENTS, [str(n) for n in SCALING_CLIENTS])
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def machine() -> str:
    model = "unknown CPU"
    with suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ngircd = "ngIRCd not found"
    binary = Ngircd.binary()
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        ngircd = out.splitlines()[0].split("-")[0] if out else ngircd
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}, {ngircd}"
    )


# -- profiling ---------------------------------------------------------------------------


def profile(folder: Path, plan: Plan, seconds: float) -> None:
    """Record shmchat's two workers with py-spy while they relay; print the hot spots."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(spy, os.X_OK):
        sys.exit("--profile needs py-spy: pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    server = Shmchat()
    with running(server, CORE_MAX_CLIENTS) as conns:
        connect_up_to(server, conns, 2)
        workers = sorted(server.workers(), key=lambda p: p.create_time())
        settle(server, conns)
        a, b = conns
        for workload in ("rtt", "throughput"):
            outputs = {}
            spies = []
            for label, proc in zip(("A", "B"), workers, strict=True):
                out = folder / f"{workload}-worker{label}.txt"
                outputs[label] = out
                command = [spy, "record", "--pid", str(proc.pid), "--rate", "1000", "--format", "raw"]
                command += ["--output", str(out), "--idle"]
                spies.append(
                    subprocess.Popen(
                        command,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1.0)  # py-spy attaches
            deadline = time.monotonic() + seconds
            done = 0
            started = time.perf_counter()
            try:
                while time.monotonic() < deadline:
                    if workload == "rtt":
                        round_trips(server, a, b, 200, 0)
                        done += 400
                    else:
                        done += round(throughput(server, a, b, 1.0))
            finally:
                elapsed = time.perf_counter() - started
                for proc in spies:
                    proc.send_signal(signal.SIGINT)
                for proc in spies:
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            log(f"\n== {workload}: {done} messages relayed in {elapsed:.1f} s ({done / elapsed:,.0f}/s)")
            for label, out in outputs.items():
                summarise(out, f"{workload}, worker {label}")


def worker_cpu_per_message(server: ChatServer, seconds: float) -> None:
    """CPU (user, system) of each of two workers per message relayed, for one server.

    Without a profiler attached: the figures that compare shmchat's workers
    with the floor's, workload by workload.
    """
    with running(server, CORE_MAX_CLIENTS) as conns:
        connect_up_to(server, conns, 2)
        settle(server, conns)
        a, b = conns
        workers = sorted(server.workers(), key=lambda p: p.create_time())
        for workload in ("rtt", "throughput"):
            before = [w.cpu_times() for w in workers]
            if workload == "rtt":
                messages = 2 * max(200, round(seconds * 2000))
                started = time.perf_counter()
                round_trips(server, a, b, messages // 2, 0)
                elapsed = time.perf_counter() - started
            else:
                started = time.perf_counter()
                rate = throughput(server, a, b, seconds)
                elapsed = time.perf_counter() - started
                messages = round(rate * elapsed)  # what was relayed (received == sent)
            after = [w.cpu_times() for w in workers]
            shown = []
            for label, b_, a_ in zip(("A", "B"), before, after, strict=True):
                user = (a_.user - b_.user) / messages * 1e6
                system = (a_.system - b_.system) / messages * 1e6
                shown.append(f"worker {label} {user + system:.1f} µs (user {user:.1f}, system {system:.1f})")
            log(
                f"{server.name:8} {workload:10} {messages:>8} messages, {messages / elapsed:>9,.0f}/s; "
                f"CPU per message: {'; '.join(shown)}"
            )
            settle(server, conns, quiet=0.05)


#: The worker's loop functions: frames above them are the parent's code before the fork.
LOOP_FRAMES = ("Worker.run ", "Worker.serve ")


def waits_for_events(frame: str) -> bool:
    """Whether a sample's last frame sits on a line of the worker that calls ``poll(``.

    ``epoll.poll`` is C, so a worker asleep in it shows as its caller's frame,
    at that line: such samples are idle time, whatever the loop is called.
    """
    found = re.search(r"\((.+):(\d+)\)$", frame)
    if found is None or not frame.startswith(LOOP_FRAMES):
        return False
    return "poll(" in linecache.getline(str(REPO / found.group(1)), int(found.group(2)))


def summarise(path: Path, title: str, top: int = 16) -> None:
    """Where a worker's busy time goes, from py-spy's collapsed stacks.

    Frames down to the worker's loop (``Worker.run``, ``Worker.serve``) are
    left out; samples waiting for events count as idle: those that end in
    the loop's ``poll`` line (``waits_for_events``), or in
    ``EpollSelector.select`` (workers before the loop used epoll directly).
    The loop's own other lines are shown as "the loop's own lines".
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = busy = 0
    if not path.exists():
        log(f"{title}: no profile written")
        return
    for line in path.read_text().splitlines():
        stack, _, weight = line.rpartition(" ")
        if not weight.isdigit():
            continue
        n = int(weight)
        total += n
        frames = stack.split(";")
        if waits_for_events(frames[-1]) or frames[-1].startswith("EpollSelector.select"):
            continue
        names = [re.sub(r" \((?:.*/)?([^/:]+):\d+\)$", r" (\1)", f) for f in frames]
        loops = [i for i, name in enumerate(names) if name.startswith(LOOP_FRAMES)]
        names = names[loops[-1] + 1 :] if loops else names
        busy += n
        if not names:
            names = ["the loop's own lines"]
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    log(f"-- {title}: {total} samples, busy in {busy} ({100 * busy / max(total, 1):.0f}%)")
    log("   inclusive, as a share of the busy samples:")
    for name, n in inclusive.most_common(top):
        log(f"   {100 * n / max(busy, 1):5.1f}%  {name}")
    log("   self:")
    for name, n in own.most_common(top):
        log(f"   {100 * n / max(busy, 1):5.1f}%  {name}")


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chat",
        description=(
            "Chat messages: shmchat against its floor (C) and ngIRCd, interleaved rounds, same-run ratios."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument("--rounds", type=int, help="core rounds (default: 7, --quick: 2)")
    parser.add_argument(
        "--scaling-rounds", type=int, help="rounds at 5/50/200 clients (default: 3, --quick: 1)"
    )
    parser.add_argument("--skip-scaling", action="store_true", help="only the core rounds")
    parser.add_argument(
        "--no-floor", action="store_true", help="leave out the floor (bench/floor/floor.c, built with cc)"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help="where to write the scaling plot (default: docs/chat-scaling.png; none with --quick)",
    )
    parser.add_argument(
        "--with-trace",
        action="store_true",
        help="also run shmchat --trace in every round and report traced/untraced per metric",
    )
    parser.add_argument("--json", type=Path, help="also write every round's figures to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="instead: profile shmchat's workers with py-spy and write their stacks to DIR",
    )
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="per workload (default: 10)")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="instead: print the summary of a run saved with --json"
    )
    return parser.parse_args(argv)


def report(saved: dict, plot_path: Path | None) -> None:
    """Print the summary of a run (its saved figures); write the plot."""
    core, scaling = Results(saved["core"]), Results(saved["scaling"])
    print(f"\nChat benchmark: {saved['command']}  ({saved.get('minutes', 0):.1f} min)")
    print(f"Machine: {saved['machine']}")
    print(
        f"{len(core.rounds)} core rounds and {len(scaling.rounds)} scaling rounds, shmchat, the floor "
        "(bench/floor/floor.c) and ngIRCd in each; every ratio is computed inside a round, then the "
        "median of the rounds.\n"
    )
    print(table(core, scaling))
    if any(ShmchatTraced.name in r for r in (*core.rounds, *scaling.rounds)):
        print(
            "\nThe cost of tracing (issue 11): shmchat --trace against shmchat, "
            "same rounds; a ratio inside each round, then the median of the rounds.\n"
        )
        print(trace_table(core, scaling))
    if any(ShmchatPosix.name in r for r in (*core.rounds, *scaling.rounds)):
        print(
            "\nPOSIX and System V in the same rounds: shmchat --ipc posix against shmchat (System V); "
            "a ratio inside each round, then the median of the rounds.\n"
        )
        print(trace_table(core, scaling, ShmchatPosix.name, "posix/sysv"))
    if plot_path is not None and scaling.rounds:
        plot(scaling, plot_path)
        print(f"\nplot: {plot_path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    plot_path = args.plot or (None if args.quick else REPO / "docs" / "chat-scaling.png")
    if args.profile:
        profile(args.profile, plan, args.profile_seconds)
        log(
            "\n== CPU per message of each worker, no profiler attached "
            "(rtt: A and B take turns; throughput: A sends, B receives)"
        )
        for server in servers(with_floor=Floor.build() is not None)[:-1]:
            worker_cpu_per_message(server, 3.0)
        return 0
    if args.report:
        report(json.loads(args.report.read_text()), args.plot)
        return 0
    if Ngircd.binary() is None:
        log(f"the reference server, ngIRCd, is not installed.  Install it with:\n    {NGIRCD_INSTALL}")
        return 2
    core_rounds = plan.core_rounds if args.rounds is None else args.rounds
    scaling_rounds = plan.scaling_rounds if args.scaling_rounds is None else args.scaling_rounds
    if args.skip_scaling:
        scaling_rounds = 0
    command = " ".join(["python -m bench.chat", *(sys.argv[1:] if argv is None else argv)])
    log(f"machine: {machine()}")
    with_floor = not args.no_floor and Floor.build() is not None
    started = time.monotonic()
    with_trace = args.with_trace
    core = run_rounds("core", core_rounds, lambda s: core_round(s, plan), with_floor, with_trace)
    scaling = run_rounds("scaling", scaling_rounds, lambda s: scaling_round(s, plan), with_floor, with_trace)
    saved = {
        "command": command,
        "machine": machine(),
        "minutes": (time.monotonic() - started) / 60,
        "core": core.rounds,
        "scaling": scaling.rounds,
    }
    report(saved, plot_path)
    if args.json:
        args.json.write_text(json.dumps(saved, indent=1))
        print(f"figures of every round: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
