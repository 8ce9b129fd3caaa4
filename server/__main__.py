"""``./dev server`` (``shmchat-server`` once installed): start the shmchat server."""

from __future__ import annotations

import argparse
import logging
import sys

from protocol.wire import DEFAULT_PORT
from server.config import DEFAULT_MAX_PER_ADDRESS, MiB, ServerConfig
from server.parent import StartupError, run
from shm import layout
from shm.backend import APIS
from syscalls import programs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=programs.command("server"),
        description="Multi-client chat server: one forked worker per client, "
        "client and message tables in System V shared memory.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=layout.DEFAULT_MAX_CLIENTS,
        help=f"clients online at once, 1-{layout.MAX_CLIENTS_LIMIT} (default: %(default)s)",
    )
    parser.add_argument(
        "--max-groups",
        type=int,
        default=layout.DEFAULT_MAX_GROUPS,
        help="groups at once (default: %(default)s)",
    )
    parser.add_argument(
        "--max-file-size",
        type=int,
        default=100 * MiB,
        help="largest file /sendfile accepts, in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--max-per-address",
        type=int,
        default=None,
        metavar="N",
        help=f"connections one address may hold at once; 0: no limit (default: {DEFAULT_MAX_PER_ADDRESS}, "
        "and only for addresses beyond loopback; given, it applies to loopback too)",
    )
    parser.add_argument(
        "--spool-dir", default=None, help="folder for files in transit (default: a private temp folder)"
    )
    parser.add_argument(
        "--spool-quota",
        type=int,
        default=None,
        help="bytes the spool may hold, waiting or reserved (default: half its file system's free space)",
    )
    parser.add_argument(
        "--spool-quota-per-receiver",
        type=int,
        default=None,
        help="bytes the spool may hold for one receiver (default: the spool quota / --max-clients)",
    )
    parser.add_argument(
        "--lesson-hooks",
        action="store_true",
        help="enable the lesson hooks (/holdlock): for classroom lessons and tests only",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help=f"record every IPC step in a trace table, for {programs.command('shm')} trace (off by default)",
    )
    parser.add_argument(
        "--no-flood-control",
        dest="flood_control",
        action="store_false",
        help="read every client as fast as it sends, however much it sends (for benchmarks and load tests)",
    )
    parser.add_argument(
        "--ipc",
        choices=APIS,
        default=APIS[0],
        help="System V or POSIX shared memory and semaphores for the tables (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what the server logs to stderr (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535 (0 picks a free one), not {args.port}")
    if not 1 <= args.max_clients <= layout.MAX_CLIENTS_LIMIT:
        parser.error(f"--max-clients must be 1-{layout.MAX_CLIENTS_LIMIT}")
    if not 1 <= args.max_groups <= 1024:
        parser.error("--max-groups must be 1-1024")
    if args.max_per_address is not None and args.max_per_address < 0:
        parser.error("--max-per-address must not be negative")
    if args.max_file_size < 0:
        parser.error("--max-file-size must not be negative")
    for flag in ("spool_quota", "spool_quota_per_receiver"):
        if (getattr(args, flag) or 0) < 0:
            parser.error(f"--{flag.replace('_', '-')} must not be negative")
    return args


@programs.quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_clients=args.max_clients,
        max_groups=args.max_groups,
        max_file_size=args.max_file_size,
        spool_dir=args.spool_dir,
        spool_quota=args.spool_quota,
        spool_quota_per_receiver=args.spool_quota_per_receiver,
        lesson_hooks=args.lesson_hooks,
        trace=args.trace,
        max_per_address=args.max_per_address,
        flood_control=args.flood_control,
        ipc=args.ipc,
    )
    try:
        return run(config)
    except StartupError as exc:  # one line, and run() has removed whatever it made
        print(f"{programs.command('server')}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
