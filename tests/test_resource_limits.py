"""Resource limits as a user meets them: the real server under ``ulimit -u`` and ``ulimit -n``.

The fault matrix (tests/test_fault_matrix.py) makes one call fail on cue;
here the kernel itself refuses, as on a lab machine: the server runs as an
ordinary user (``shmchat-test``, created when the tests run as root) with a
small RLIMIT_NPROC, so that fork() fails with EAGAIN, and its descriptor limit
is lowered while it runs (``prlimit``), so that accept() fails with EMFILE.
Each time the newcomer is told in one line and closed, the others keep
chatting, the parent neither spins nor floods its log, and service comes back
by itself once the resource is there again.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, STARTED_PORTS, TIMEOUT, RawClient, ServerProcess, port_objects, python_env
from procinfo import spool_files, wait_until

from server.listener import NO_DESCRIPTORS
from server.parent import NO_WORKER

USER = "shmchat-test"


@pytest.fixture(scope="session")
def unprivileged() -> pwd.struct_passwd:
    """An ordinary user to run the server as (created once, if the tests run as root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the server as another user under its own process limit")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        pytest.skip("no useradd on this machine to create the test user")
    done = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 9):  # 9: it exists (made meanwhile by another run)
        pytest.skip(f"cannot create the user {USER}: {done.stderr.strip()}")
    return pwd.getpwnam(USER)


#: Runs the server as another user: everything is imported first, then the
#: privileges are dropped for good, then the server starts.  Dropping them
#: before exec (a ``preexec_fn``) would be simpler, but the interpreter may
#: live where only root can read it (a pyenv under /root, as on the CI machine).
RUN_AS = """
import locale, os, sys
import server.__main__ as entry
uid, gid = int(sys.argv[1]), int(sys.argv[2])
entry.parse_args(sys.argv[3:])  # argparse's own imports (gettext, locale)
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
sys.exit(entry.main(sys.argv[3:]))
"""


def with_limits(nproc: int | None) -> Callable[[], None]:
    """A ``preexec_fn``: set RLIMIT_NPROC (binding once the server is no longer root)."""

    def limit() -> None:
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return limit


class UserServer(ServerProcess):
    """``ServerProcess``, run as ``user`` (all its other methods are the same)."""

    def __init__(self, user: pwd.struct_passwd, spool: Path, nproc: int | None = None) -> None:
        command = [sys.executable, "-c", RUN_AS, str(user.pw_uid), str(user.pw_gid)]
        command += ["--port", "0", "--log-level", "DEBUG", "--spool-dir", str(spool)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=python_env(),
            preexec_fn=with_limits(nproc),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []
        self.killed = False
        assert self.proc.stdout is not None and self.proc.stderr is not None
        first = self.proc.stdout.readline()
        match = re.search(r"listening on ([\d.]+):(\d+)", first)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {first!r} {self.proc.stderr.read()}")
        self.host, self.port = match.group(1), int(match.group(2))
        STARTED_PORTS.add(self.port)
        threading.Thread(target=self._collect_stderr, daemon=True).start()


def limits(pid: int, name: str) -> tuple[int, int]:
    """(soft, hard) of one of a process's limits, from /proc (prlimit would need the same user)."""
    with open(f"/proc/{pid}/limits") as table:
        for line in table:
            if line.startswith(name):
                soft, hard = (
                    resource.RLIM_INFINITY if v == "unlimited" else int(v)
                    for v in line[len(name) :].split()[:2]
                )
                return soft, hard
    raise AssertionError(f"no {name!r} in /proc/{pid}/limits")


#: prlimit(2) of another user's process needs CAP_SYS_RESOURCE, which a container's
#: root may lack; a process of the same user may lower its soft limit and raise it
#: again up to the hard one.  So the limit is changed by a helper run as that user.
SET_NOFILE = """
import os, resource, sys
pid, soft, uid, gid = map(int, sys.argv[1:])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]))
"""


def set_descriptor_limit(user: pwd.struct_passwd, pid: int, soft: int) -> None:
    """``prlimit --pid PID --nofile=SOFT:``, as ``user``."""
    command = [sys.executable, "-c", SET_NOFILE, str(pid), str(soft), str(user.pw_uid), str(user.pw_gid)]
    subprocess.run(command, check=True, timeout=TIMEOUT, capture_output=True)


@pytest.fixture(autouse=True)
def the_test_user_to_ourselves() -> Iterator[None]:
    """Hold the machine-wide lock on ``shmchat-test`` for the whole test.

    RLIMIT_NPROC counts every process of the user, so two test runs on one
    machine (a second suite beside this one, a classmate's run) must not use
    it at once: each test takes an exclusive ``flock`` on one file in /tmp,
    and a second run waits for it (flock(2) sleeps in the kernel).
    """
    path = os.path.join(tempfile.gettempdir(), f"{USER}-user.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor gives the lock back


@pytest.fixture
def user_server(unprivileged: pwd.struct_passwd) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: a server running as the test user, with its spool in a folder of that user's.

    pytest's tmp_path is private to root, so the spool goes to a folder of
    its own under /tmp.  Whatever happens, the user's IPC objects of the
    port are removed at the end (the leak check, run as root, would see them)
    after it is checked that the server removed them itself.
    """
    folder = Path(tempfile.mkdtemp(prefix="shmchat-limits-"))
    os.chmod(folder, 0o755)
    os.chown(folder, unprivileged.pw_uid, unprivileged.pw_gid)
    servers: list[ServerProcess] = []

    def start(nproc: int | None = None) -> ServerProcess:
        server = UserServer(unprivileged, folder / "spool", nproc)
        servers.append(server)
        return server

    try:
        yield start
        for server in servers:
            assert server.stop() == 0, server.log()
            assert "Traceback" not in server.log(), server.log()
            assert port_objects(server.port) == set(), "the server left IPC objects behind"
        assert spool_files(folder / "spool") == []
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
            for kind, _key, ident in port_objects(server.port):  # only after a failure
                subprocess.run(["ipcrm", "-m" if kind == "shm" else "-s", str(ident)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def chat(sender: RawClient, receiver: RawClient, text: str) -> None:
    sender.send(f"/send {receiver.id} {text}")
    receiver.expect(rf"^\[msg from {sender.id}\] {text}$")


def user_processes(user: pwd.struct_passwd) -> int:
    done = subprocess.run(["pgrep", "-c", "-u", str(user.pw_uid)], capture_output=True, text=True)
    return int(done.stdout.strip() or 0)


def refused(client: RawClient, line: str) -> None:
    """The newcomer got exactly ``line`` and was closed."""
    assert client.closed(), f"the newcomer was not closed; saw {client.seen}"
    assert client.seen == [line]


# -- ulimit -u: fork() fails with EAGAIN ---------------------------------------------


def test_past_the_process_limit_the_newcomer_is_refused_and_the_others_chat_on(user_server, unprivileged):
    assert user_processes(unprivileged) == 0, f"{USER} already runs processes; RLIMIT_NPROC counts them"
    server = user_server(nproc=3)  # the parent and two workers
    clients = []
    try:
        a, b = RawClient(server.port), RawClient(server.port)
        clients += [a, b]
        a.welcome(), b.welcome()
        for _ in range(2):  # past the limit, again and again: each newcomer is told, nothing else changes
            newcomer = RawClient(server.port)
            clients.append(newcomer)
            refused(newcomer, f"[error] {NO_WORKER}")
            chat(a, b, "still here")
        assert server.proc.poll() is None
        assert "cannot fork a worker for client" in server.log()
        a.send("/active")
        assert a.expect(r"^\[active\] ").string.startswith("[active] 2 online: ")  # the slots were released
        a.send("/quit")
        b.expect(rf"^\[server\] client {a.id} left$")  # its worker is reaped: one process fewer
        later = RawClient(server.port)
        clients.append(later)
        later.welcome()
        chat(later, b, "my turn")
    finally:
        for client in clients:
            client.close()


# -- ulimit -n: accept() fails with EMFILE ---------------------------------------------


def open_fds(pid: int) -> dict[int, str]:
    folder = f"/proc/{pid}/fd"
    found = {}
    for name in os.listdir(folder):
        try:
            found[int(name)] = os.readlink(f"{folder}/{name}")
        except FileNotFoundError:
            pass
    return found


def sockets_only_the_listener(fds: dict[int, str]) -> dict[int, str] | None:
    """``fds`` if the listener is the only socket among them, else None."""
    return fds if sum(target.startswith("socket:") for target in fds.values()) == 1 else None


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def accept_failures(server: ServerProcess) -> int:
    return server.log().count("accept failed")


def test_past_the_descriptor_limit_the_parent_refuses_without_spinning_and_recovers(
    user_server, unprivileged
):
    server = user_server()
    clients = []
    soft, _hard = limits(server.pid, "Max open files")
    try:
        a, b = RawClient(server.port), RawClient(server.port)
        clients += [a, b]
        a.welcome(), b.welcome()
        # The parent closes each accepted socket after the fork, maybe after the welcome:
        # wait until the listener is its only socket, so that the numbers below are settled.
        fds = wait_until(
            lambda: sockets_only_the_listener(open_fds(server.pid)), what="the parent's fds to settle"
        )
        lowest_free = min(set(range(len(fds) + 1)) - set(fds))
        reserve = [fd for fd, target in fds.items() if fd > 2 and target == "/dev/null"]
        assert len(reserve) == 1 and reserve[0] < lowest_free, fds  # the reserve descriptor
        assert set(range(reserve[0])) <= set(fds), fds  # nothing free below it

        # 1. Every descriptor number the parent may use is taken: its reserve lets it say why.
        set_descriptor_limit(unprivileged, server.pid, lowest_free)
        newcomer = RawClient(server.port)
        clients.append(newcomer)
        refused(newcomer, f"[error] {NO_DESCRIPTORS}")
        chat(a, b, "still here")

        # 2. Not even the reserve can be used: the newcomer waits in the backlog,
        # and the parent looks again once a second, neither spinning nor flooding its log.
        set_descriptor_limit(unprivileged, server.pid, reserve[0])
        logged = accept_failures(server)
        waiting = RawClient(server.port)
        clients.append(waiting)
        wait_until(lambda: accept_failures(server) > logged, what="the parent to log the failed accept")
        logged, before, start = accept_failures(server), cpu_ticks(server.pid), time.monotonic()
        time.sleep(1.5)  # what is measured is the parent's CPU time while it cannot accept
        used, elapsed = cpu_ticks(server.pid) - before, time.monotonic() - start
        assert used <= 2, f"the parent used {used} ticks in {elapsed:.1f} s: it spins"
        assert accept_failures(server) - logged <= elapsed + 1, server.log()[-2000:]
        chat(b, a, "the others still chat")
        assert waiting.seen == []

        # 3. Descriptors again: the waiting client is let in by itself, and newcomers too.
        set_descriptor_limit(unprivileged, server.pid, soft)
        waiting.welcome()
        later = RawClient(server.port)
        clients.append(later)
        later.welcome()
        chat(later, waiting, "back to normal")
        assert server.proc.poll() is None
    finally:
        if server.proc.poll() is None:
            set_descriptor_limit(unprivileged, server.pid, soft)
        for client in clients:
            client.close()


def test_the_server_really_runs_as_the_ordinary_user(user_server, unprivileged):
    """The limits above bind only a process that is not root (root ignores RLIMIT_NPROC)."""
    assert unprivileged.pw_uid != 0
    server = user_server(nproc=5)
    with open(f"/proc/{server.pid}/status") as status:
        uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    assert uids == [str(unprivileged.pw_uid)] * 4  # real, effective, saved, filesystem
    assert limits(server.pid, "Max processes") == (5, 5)
