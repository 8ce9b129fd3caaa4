"""``python -m shm``: look at and clean up shmchat's System V objects.

python -m shm list              every shmchat segment and semaphore here
python -m shm cleanup [--port]  remove what dead servers left behind
python -m shm inspect [--port P] [--watch [SECONDS]] [--json]
                                a running server's tables, read-only (live with --watch)
python -m shm trace [--port P] [--follow] [--json]
                                a traced server's IPC steps as a sequence diagram

Without --port, inspect and trace use the one shmchat server of this user
that is running; with several they list them and ask for --port.
"""

from __future__ import annotations

import argparse
import sys

from shm.discovery import choose_port
from shm.segments import list_objects, live_server_pid, remove_stale

#: Seconds between two reads of the trace rings with --follow.
FOLLOW_INTERVAL = 0.2


def cmd_list(args: argparse.Namespace) -> int:
    entries = list_objects(args.port)
    if not entries:
        print("no shmchat IPC objects")
        return 0
    print(f"{'port':>5}  {'kind':4}  {'key':10}  {'id':>6}  {'object':20}  {'size':>9}  {'nattch':>6}  owner")
    for e in entries:
        pid = live_server_pid(e.port)
        owner = f"server pid {pid}" if pid else "stale (server gone)"
        size = f"{e.size} B" if e.kind == "shm" else f"{e.size} sem"
        attached = str(e.attached) if e.kind == "shm" else "-"
        print(
            f"{e.port:>5}  {e.kind:4}  0x{e.key:08x}  {e.id:>6}  {e.obj.name:20}  "
            f"{size:>9}  {attached:>6}  {owner}"
        )
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = remove_stale(args.port)
    for e in removed:
        print(f"removed {e.kind} id {e.id} (key 0x{e.key:08x}, port {e.port}, {e.obj.name})")
    live = {e.port for e in list_objects(args.port)}
    for port in sorted(live):
        print(f"kept the objects of port {port}: server pid {live_server_pid(port)} is running")
    if not removed:
        print("nothing to clean up")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    # The one import from shm/ into the inspector: this file is an entry point
    # (a composition root), which no module imports; see docs/design.md, "Layering".
    from inspector.cli import inspect_command

    port, status = choose_port(args.port, "python -m shm inspect")
    if port is None:
        return status
    return inspect_command(port, args.watch, args.json, args.color)


def cmd_trace(args: argparse.Namespace) -> int:
    import json
    import shutil
    import time

    from shm.trace import TraceUnavailable, UndoTracker, open_trace, with_undo
    from shm.trace_view import TraceView

    port, status = choose_port(args.port, "python -m shm trace")
    if port is None:
        return status
    width = shutil.get_terminal_size((120, 40)).columns
    view = TraceView(width)

    def show(events: list) -> None:
        if args.json:
            for event in events:
                print(json.dumps(event.as_json()))
        else:
            for line in view.feed(events):
                print(line)
        sys.stdout.flush()

    try:
        reader = open_trace(port)
    except TraceUnavailable as exc:
        print(f"python -m shm trace: {exc}", file=sys.stderr)
        return 1
    seen: dict[int, int] = {}  # ring -> last seq read
    try:
        events = reader.read(seen)
    finally:
        reader.release()
    if not args.follow:
        if not events:
            print(f"the trace table of port {port} has no events yet", file=sys.stderr)
        show(with_undo(events))
        return 0
    # Follow: read the new records every FOLLOW_INTERVAL (the rings have nothing
    # to wait on: their writers never block or signal), attaching for each read
    # only, like inspect --watch, so that a stopped server's segment goes at once.
    # Events are held back until they are a little older than the read, so that
    # one written meanwhile into a ring already read still comes out in order.
    tracker = UndoTracker()
    waiting = events
    try:
        while True:
            horizon = time.monotonic_ns() - 20_000_000
            ready = [e for e in waiting if e.t_ns < horizon]
            waiting = [e for e in waiting if e.t_ns >= horizon]
            show(tracker.feed(ready))
            time.sleep(FOLLOW_INTERVAL)
            try:
                reader = open_trace(port)
            except TraceUnavailable:
                show(tracker.feed(waiting) + tracker.finish())
                print(f"the server on port {port} has stopped", file=sys.stderr)
                return 0
            try:
                waiting = sorted(waiting + reader.read(seen), key=lambda r: (r.t_ns, r.ring, r.seq))
            finally:
                reader.release()
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("list", cmd_list, "list shmchat's segments and semaphores"),
        ("cleanup", cmd_cleanup, "remove the objects of servers that are no longer running"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--port", type=int, default=None, help="only this server port")
        p.set_defaults(func=func)
    p = sub.add_parser(
        "inspect",
        help="show a running server's tables, semaphores and segments (read-only)",
        description="Show a running server's client, message and group tables, its semaphores "
        "and its segments, read-only (segments attached with SHM_RDONLY, each lock held "
        "for one table read only).",
    )
    p.add_argument(
        "--port", type=int, default=None, help="the server's port (default: the one server running)"
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
        help="show a traced server's IPC steps as a sequence diagram (python -m server --trace)",
        description="Read the trace table of a server started with --trace: every lock, post, "
        "doorbell and wake-up of every process, one column per process, one row per event, "
        "an arrow from each doorbell ring to the wake-up it caused.",
    )
    p.add_argument(
        "--port", type=int, default=None, help="the server's port (default: the one server running)"
    )
    p.add_argument("--follow", action="store_true", help="keep drawing events as they come, until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object per event, oldest first")
    p.set_defaults(func=cmd_trace)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
