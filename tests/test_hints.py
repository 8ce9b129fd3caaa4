"""Commands that work as printed: what the programs call themselves, and how they end.

A hint ("start it with: ./dev server --trace") is worth only what it does
when typed.  From a checkout the programs name ./dev (by the path that
reaches it from the current folder); installed, their console scripts
(tests/test_install.py checks that side).  ``--port`` out of range is named
as such by every program, and a closed stdout (``| head -1``) ends every
program with no traceback.  ./dev's own help, unknown commands and
``demo --help`` are checked here too.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, RawClient, python_env
from demokit import free_port

from shm.segments import list_objects
from syscalls import programs

#: Each program's ``python -m`` module and the command it must call itself by from the checkout.
PROGRAMS = {"server": "./dev server", "client": "./dev client", "shm": "./dev shm", "lessons": "./dev lesson"}
#: The packages whose strings a user may see.
USER_FACING = ("server", "client", "shm", "inspector", "lessons", "syscalls", "protocol")


def run(module: str, *args: str, cwd: Path = ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=python_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        **kwargs,
    )


def dev(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "dev"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


# -- names ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(PROGRAMS))
def test_each_program_calls_itself_by_its_dev_command_in_its_usage(module: str) -> None:
    result = run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {PROGRAMS[module]} "), result.stdout


def string_constants(path: Path) -> list[tuple[int, str]]:
    """The string literals of a module that are not docstrings, with their line."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_program_tells_the_user_to_type_python_m() -> None:
    """``python -m server`` fails on Debian (no ``python``) and outside the venv (no sysv_ipc)."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for package in USER_FACING
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in string_constants(path)
        if re.search(r"python3? -m ", text)
    ]
    assert found == []


def test_the_demo_and_dev_name_no_python_m_either() -> None:
    """The demo's pane titles say what runs in each pane; ./dev help what to type."""
    for script in ("dev", "scripts/demo.sh"):
        text = (ROOT / script).read_text()
        assert re.findall(r".*\bpython3? -m .*", text) == [], script


def test_a_server_without_trace_gets_a_hint_that_runs(start_server) -> None:
    server = start_server()
    result = run("shm", "trace", "--port", str(server.port))
    assert result.returncode == 1
    assert result.stderr.startswith("./dev shm trace: "), result.stderr
    assert "(start it with: ./dev server --trace)" in result.stderr, result.stderr


def test_from_another_folder_the_hint_names_the_path_to_dev(start_server, tmp_path: Path) -> None:
    server = start_server()
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    result = run("shm", "trace", "--port", str(server.port), cwd=elsewhere)
    match = re.search(r"\(start it with: (\S+) server --trace\)", result.stderr)
    assert match, result.stderr
    assert (elsewhere / match.group(1)).resolve() == ROOT / "dev"


def test_the_program_knows_it_runs_from_the_checkout() -> None:
    assert programs.from_checkout()
    assert programs.command("lesson").endswith("dev lesson")


# -- --port --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("client", "--port", "70000"),
        ("shm", "inspect", "--port", "70000"),
        ("shm", "trace", "--port", "70000"),
        ("shm", "list", "--port", "70000"),
        ("shm", "cleanup", "--port", "0"),
        ("lessons", "send", "--port", "70000"),
        ("server", "--port", "70000"),
    ],
    ids=" ".join,
)
def test_a_port_out_of_range_is_named_not_tried(command: tuple[str, ...]) -> None:
    result = run(*command)
    port = command[-1]
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "--port" in last and port in last, result.stderr
    assert "Traceback" not in result.stderr and "refused" not in result.stderr


# -- a closed stdout -------------------------------------------------------------------


def run_into_closed_pipe(module: str, *args: str) -> subprocess.CompletedProcess:
    """Run with stdout a pipe that nobody reads any more, as after ``| head -1``.

    The read end is closed before the program starts, so its first write
    meets the closed pipe every time (with ``head`` it would, one run in
    two, only when the output outgrows the pipe's buffer).
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=python_env(),
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "command",
    [
        ("shm", "trace", "--json"),  # ./dev shm trace --json | head -1
        ("shm", "trace"),
        ("shm", "inspect"),
        ("shm", "inspect", "--json"),
        ("shm", "list"),
        ("client", "--line-mode"),
        ("lessons",),
    ],
    ids=" ".join,
)
def test_a_closed_pipe_ends_every_program_quietly(start_server, command: tuple[str, ...]) -> None:
    server = start_server("--trace")
    client = RawClient(server.port)  # so that the trace has events to print
    try:
        client.welcome()
        port = [] if command[0] == "lessons" else ["--port", str(server.port)]
        result = run_into_closed_pipe(*command, *port)
    finally:
        client.close()
    assert result.stderr == ""
    assert result.returncode == programs.CLOSED_PIPE_STATUS


def test_a_server_whose_stdout_is_closed_ends_quietly_and_removes_its_objects() -> None:
    port = free_port()
    result = run_into_closed_pipe("server", "--port", str(port))
    # Its log (stderr) may say what it set up; nothing about the pipe.
    assert not re.search(r"Traceback|BrokenPipe|Exception ignored", result.stderr), result.stderr
    assert result.returncode == programs.CLOSED_PIPE_STATUS
    assert list_objects(port) == []


def test_line_mode_takes_its_commands_from_a_file(server, tmp_path: Path) -> None:
    """The README: "When stdin is a pipe or a file it runs in line mode" (epoll refuses a file)."""
    commands = tmp_path / "commands.txt"
    commands.write_text("/active\n")
    with commands.open() as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "client", "--port", str(server.port), "--download-dir", str(tmp_path)],
            cwd=ROOT,
            env=python_env(),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\[active\] 1 online: \d{5} \(you\)$", result.stdout, re.M), result.stdout


# -- ./dev ------------------------------------------------------------------------------


def test_dev_help_lists_every_shm_command() -> None:
    result = dev("help")
    assert result.returncode == 0
    for command in ("server", "client", "shm list", "shm cleanup", "shm inspect", "shm trace", "lesson"):
        assert re.search(rf"^  \./dev {command}\b", result.stdout, re.M), command


def test_dev_says_a_command_is_unknown_before_the_usage() -> None:
    result = dev("frobnicate")
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == "./dev: unknown command 'frobnicate'"
    assert "./dev server" in result.stderr and result.stdout == ""


def test_dev_demo_help_prints_the_demos_help() -> None:
    result = dev("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ./dev demo [--port N]")
    assert "demo-stop" in result.stdout and "unknown option" not in result.stdout + result.stderr
