"""What every program of shmchat does alike at its edges: name itself, check --port, end on a closed pipe.

**Names.**  A hint a program prints ("start one: ./dev server") must be a
command that works where the user is.  From a checkout the programs run from
./dev's .venv, and the commands are ``./dev server``, ``./dev client``,
``./dev shm`` and ``./dev lesson``; ``python3 -m server`` there would find
no ``sysv_ipc``, which lives in the venv only.  Once installed (``pip
install .``) the commands are the console scripts ``shmchat-server``,
``shmchat-client``, ``shmchat-shm`` and ``shmchat-lesson``.  Usage and error
lines use the same names, so that what a program calls itself can be typed.

How a program tells the two apart, the plainest test that holds: are the
packages imported from a checkout, that is, does ./dev sit beside them?
./dev's editable install and ``python -m`` in the checkout import them from
there; ``pip install .`` copies them into site-packages, where no ``dev``
script sits beside them.

**Ports.**  ``tcp_port`` checks ``--port`` the same way in every program
that reaches a server.

**Closed pipes.**  ``shmchat-shm trace --json | head -1``: once ``head`` has
its line it exits, and the next write raises ``BrokenPipeError``.  Unix
tools end quietly then, killed by SIGPIPE; Python ignores SIGPIPE (so that a
socket write to a gone client raises instead of killing the server), so
each entry point is wrapped by ``quiet_on_closed_pipe``, which ends the
program with no traceback and the status a shell shows for a tool that
SIGPIPE ended.
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

#: The folder that holds the packages: a checkout's root, or site-packages.
PACKAGES_HOME = Path(__file__).resolve().parent.parent

#: A program's command from a checkout (after the path of ./dev) and once installed.
COMMANDS = {
    "server": ("server", "shmchat-server"),
    "client": ("client", "shmchat-client"),
    "shm": ("shm", "shmchat-shm"),
    "lesson": ("lesson", "shmchat-lesson"),
}

#: The exit status of a program that a closed pipe ended, as a shell shows it for SIGPIPE.
CLOSED_PIPE_STATUS = 128 + signal.SIGPIPE

P = ParamSpec("P")


def from_checkout() -> bool:
    """Do the programs run from a checkout (with ./dev beside the packages)?"""
    return (PACKAGES_HOME / "dev").is_file() and (PACKAGES_HOME / "setup.cfg").is_file()


def dev_script() -> str:
    """./dev as typed from the current folder: ``./dev`` in the checkout, else the shorter path to it."""
    dev = PACKAGES_HOME / "dev"
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was removed
        return str(dev)
    if here == PACKAGES_HOME:
        return "./dev"
    relative = os.path.relpath(dev, here)
    return relative if len(relative) < len(str(dev)) else str(dev)


def command(program: str) -> str:
    """The command that runs ``program`` (a key of ``COMMANDS``) where the user is."""
    in_checkout, installed = COMMANDS[program]
    return f"{dev_script()} {in_checkout}" if from_checkout() else installed


def stdout_closed() -> bool:
    """Has the reader of stdout gone?  ``poll`` says POLLERR on a pipe with no reader left."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError):  # no stdout at all
        return False


def tcp_port(text: str) -> int:
    """``--port`` of the programs that reach a server (argparse ``type``): 1-65535, said at once.

    Without it ``--port 70000`` reaches ``connect`` and comes back as
    ``Connection refused``, or reaches the key arithmetic of ``shm.layout``
    and comes back as a traceback.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def quiet_on_closed_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap an entry point's ``main``: a closed stdout ends it quietly, as Unix tools end."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:  # also on SystemExit (argparse's --help): the rest meets the closed pipe here
                sys.stdout.flush()
        except BrokenPipeError:
            if not stdout_closed():
                raise  # a socket's peer went away: that is the program's own business
            # The interpreter flushes stdout once more at exit, which would print
            # "Exception ignored ... BrokenPipeError": point it at /dev/null first.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return CLOSED_PIPE_STATUS

    return run
