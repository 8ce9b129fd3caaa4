"""The classroom demo (scripts/demo.sh) on a private tmux server, for the tests that drive it.

One place for what the demo tests share: a free port the leak check watches,
a tmux server of its own (``tmux -L``) so that the tests never touch a
person's sessions, the demo script's start and stop, and reading the panes.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from conftest import ROOT, STARTED_PORTS, TIMEOUT, python_env

from shm.discovery import list_objects


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Demo:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        STARTED_PORTS.add(self.port)  # the leak check watches this port's IPC objects too
        self.socket_name = f"shmchat-test-{uuid.uuid4().hex[:12]}"
        self.env = python_env()
        self.env.pop("TMUX", None)
        self.env.update(
            SHMCHAT_DEMO_TMUX_SOCKET=self.socket_name,
            SHMCHAT_DEMO_SESSION="demo",
            SHMCHAT_PYTHON=sys.executable,
            XDG_DATA_HOME=str(tmp_path / "data"),
            XDG_RUNTIME_DIR=str(tmp_path),
        )

    def run(self, command: str, *options: str) -> subprocess.CompletedProcess:
        """``scripts/demo.sh start|stop`` (stdin is not a terminal: start stays detached)."""
        return subprocess.run(
            ["bash", str(ROOT / "scripts" / "demo.sh"), command, "--port", str(self.port), *options],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket_name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout

    def pane(self, title: str) -> str:
        listing = self.tmux("list-panes", "-t", "demo", "-F", "#{pane_id} #{pane_title}")
        return next(line.split()[0] for line in listing.splitlines() if title in line)

    def screen(self, pane_id: str) -> str:
        """What the pane shows, with what scrolled off the top."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", pane_id)

    def wait_screen(self, pane_id: str, pattern: str, timeout: float = 20) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.screen(pane_id), re.M)):
            assert time.monotonic() < deadline, f"{pattern!r} not in pane {pane_id}"
            time.sleep(0.1)
        return match

    def pane_pids(self) -> list[int]:
        return [int(pid) for pid in self.tmux("list-panes", "-s", "-t", "demo", "-F", "#{pane_pid}").split()]

    def assert_stopped_clean(self, stopped: subprocess.CompletedProcess, pane_pids: list[int]) -> None:
        """``demo.sh stop`` left no process, no IPC object and no tmux server behind."""
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "no demo process left, no IPC object of port" in stopped.stdout
        assert list_objects(self.port) == []
        for pid in pane_pids:
            assert not os.path.exists(f"/proc/{pid}"), f"pane process {pid} is still running"
        tmux_dir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.geteuid()}"
        assert not (tmux_dir / self.socket_name).exists()  # stop removes its own tmux server's socket
