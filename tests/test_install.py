"""A fresh install, as a student makes one, and the installed programs' hints.

The first ``./dev`` in a fresh copy of the checkout creates .venv and
installs the project into it (editable).  setuptools' boxed warning ("Please
be careful with folders in your working directory with the same name as
your package") read as an error to students; setup.cfg's ``package_dir``
makes the install a plain .pth file with nothing to warn about.  Then the
same copy is installed as ``pip install .`` does, and the programs, run
from elsewhere, name their console scripts: no ``./dev`` exists there.

This is the slow file of the suite (a venv made from nothing, about 15 s
here): the copy is built once, by a module fixture, for every test below.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from demokit import free_port

INSTALL_TIMEOUT = 300
#: What pip says when it has no index to install from: the test cannot run then.
OFFLINE_SIGNS = (
    "No matching distribution found",
    "Temporary failure in name resolution",
    "Network is unreachable",
)


def plain_env() -> dict[str, str]:
    """The environment of a student's shell: no venv active, nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if not part.endswith("/.venv/bin")
    )
    return env


def copy_checkout(to: Path) -> None:
    """The files a fresh clone has (tracked, and new ones not yet committed), without .venv."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


class FreshInstall:
    def __init__(self, base: Path) -> None:
        self.checkout = base / "checkout"
        self.elsewhere = base / "elsewhere"
        self.elsewhere.mkdir(parents=True)
        copy_checkout(self.checkout)
        first = subprocess.run(
            ["bash", "./dev", "shm", "list", "--port", str(free_port())],
            cwd=self.checkout,
            env=plain_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
        self.first_output = first.stdout + first.stderr
        if first.returncode != 0 and any(sign in self.first_output for sign in OFFLINE_SIGNS):
            pytest.skip("pip cannot reach a package index from here (a fresh install needs one)")
        assert first.returncode == 0, self.first_output
        self.bin = self.checkout / ".venv" / "bin"

    def install_as_pip_does(self) -> None:
        """``pip install .``: the packages copied into site-packages, no ./dev beside them."""
        subprocess.run(
            [str(self.bin / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(self.checkout)],
            env=plain_env(),
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=True,
        )

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / program), *args],
            cwd=self.elsewhere,
            env=plain_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshInstall]:
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the checkout's files")
    yield FreshInstall(tmp_path_factory.mktemp("fresh"))


def test_the_first_dev_run_installs_with_no_boxed_warning(fresh: FreshInstall) -> None:
    assert "Please be careful with folders" not in fresh.first_output
    assert "*****" not in fresh.first_output
    assert "Traceback" not in fresh.first_output


def test_installed_programs_name_their_console_scripts(fresh: FreshInstall) -> None:
    fresh.install_as_pip_does()
    port = str(free_port())
    listing = fresh.run("python", "-m", "lessons")
    assert listing.returncode == 0, listing.stderr
    assert "./dev" not in listing.stdout
    assert "  shmchat-lesson send " in listing.stdout
    assert (
        "start it first: shmchat-server --trace --lesson-hooks --no-flood-control --max-clients 8"
        in listing.stdout
    )
    lesson = fresh.run("shmchat-lesson", "send", "--port", port)
    assert lesson.returncode == 1 and "./dev" not in lesson.stderr
    demo = "shmchat-server --trace --lesson-hooks --no-flood-control --max-clients 8"
    assert f"start it with '{demo} --port {port}'" in lesson.stderr
    trace = fresh.run("shmchat-shm", "trace", "--port", port)
    assert trace.stderr == f"shmchat-shm trace: no shmchat server on port {port}\n"
    for program in ("shmchat-server", "shmchat-client", "shmchat-shm", "shmchat-lesson"):
        usage = fresh.run(program, "--help")
        assert usage.stdout.startswith(f"usage: {program} "), usage.stdout
