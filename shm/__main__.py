"""``./dev shm`` (``shmchat-shm`` once installed): shmchat's IPC objects, System V and POSIX.

shm list              every shmchat segment and semaphore here, and whose
shm cleanup [--port]  remove what dead servers of yours left behind
shm inspect [--port P] [--watch [SECONDS]] [--json]
                      a running server's tables, read-only (live with --watch)
shm trace [--port P] [--follow] [--json]
                      a traced server's IPC steps as a sequence diagram

Without --port, inspect and trace use the one shmchat server of this user
that is running; with several they list them and ask for --port.
"""

from __future__ import annotations

import argparse
import sys

from shm.discovery import choose_port, list_objects, remove_stale, whose
from syscalls import programs


def _row(port: str, api: str, kind: str, name: str, ident: str, obj: str, size: str, attached: str) -> str:
    return f"{port:>5}  {api:5}  {kind:4}  {name:30}  {ident:>7}  {obj:19}  {size:>10}  {attached:>6}"


def cmd_list(args: argparse.Namespace) -> int:
    entries = list_objects(args.port)
    if not entries:
        print("no shmchat IPC objects")
        return 0
    columns = ("port", "api", "kind", "key or name", "id", "object", "size", "nattch")
    print(f"{_row(*columns)}  owner")
    for port in sorted({e.port for e in entries}):
        mine = [e for e in entries if e.port == port]
        owner = whose(mine)  # one verdict per port: its server is alive, or gone
        for e in mine:
            name = e.name if e.api == "posix" else f"0x{e.key:08x}"
            ident = str(e.id) if e.api == "sysv" else "-"
            size = f"{e.size} B" if e.kind == "shm" else f"{e.size} sem"
            attached = str(e.attached) if e.kind == "shm" and e.api == "sysv" else "-"
            print(f"{_row(str(e.port), e.api, e.kind, name, ident, e.obj.name, size, attached)}  {owner}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = remove_stale(args.port)
    for e in removed:
        print(f"removed {e.api} {e.kind} {e.label} (port {e.port}, {e.obj.name})")
    left = list_objects(args.port)
    for port in sorted({e.port for e in left}):
        print(f"kept the objects of port {port}: {whose([e for e in left if e.port == port])}")
    if not removed:
        print("nothing to clean up")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    # The imports from shm/ into the inspector (here and in cmd_trace): this file
    # is an entry point (a composition root), which no module imports; see
    # docs/design.md, "Layering".
    from inspector.cli import inspect_command

    port, status = choose_port(args.port, f"{programs.command('shm')} inspect")
    if port is None:
        return status
    return inspect_command(port, args.watch, args.json, args.color)


def cmd_trace(args: argparse.Namespace) -> int:
    from inspector.trace_cli import trace_command  # entry point: see cmd_inspect

    port, status = choose_port(args.port, f"{programs.command('shm')} trace")
    if port is None:
        return status
    return trace_command(port, args.follow, args.json)


@programs.quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=programs.command("shm"), description="look at and clean up shmchat's System V objects"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("list", cmd_list, "list shmchat's segments and semaphores"),
        ("cleanup", cmd_cleanup, "remove the objects of servers that are no longer running"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--port", type=programs.tcp_port, default=None, help="only this server port")
        p.set_defaults(func=func)
    p = sub.add_parser(
        "inspect",
        help="show a running server's tables, semaphores and segments (read-only)",
        description="Show a running server's client, message and group tables, its semaphores "
        "and its segments, read-only (segments attached with SHM_RDONLY, each lock held "
        "for one table read only).",
    )
    p.add_argument(
        "--port",
        type=programs.tcp_port,
        default=None,
        help="the server's port (default: the one server running)",
    )
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=1.0,
        default=None,
        metavar="SECONDS",
        help="redraw in place every SECONDS (default 1) until Ctrl-C",
    )
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON")
    p.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="colours (default: %(default)s)"
    )
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser(
        "trace",
        help=f"show a traced server's IPC steps as a sequence diagram ({programs.command('server')} --trace)",
        description="Read the trace table of a server started with --trace: every lock, post, "
        "doorbell and wake-up of every process, one column per process, one row per event, "
        "an arrow from each doorbell ring to the wake-up it caused.",
    )
    p.add_argument(
        "--port",
        type=programs.tcp_port,
        default=None,
        help="the server's port (default: the one server running)",
    )
    p.add_argument("--follow", action="store_true", help="keep drawing events as they come, until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object per event, oldest first")
    p.set_defaults(func=cmd_trace)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
