"""``./dev client`` (``shmchat-client`` once installed): connect to a shmchat server.

Interactive when stdin is a terminal (incoming messages print above the line
being typed); line mode otherwise (one command per input line, every server
line printed and flushed), for pipes, scripts and tests.
"""

from __future__ import annotations

import argparse
import socket
import sys

from client.files import default_download_quota
from protocol.wire import DEFAULT_PORT, format_address
from syscalls import programs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=programs.command("client"), description="Chat with a shmchat server."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="server address or name, IPv4 or IPv6 (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=programs.tcp_port, default=DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    parser.add_argument(
        "--download-dir", default="downloads", help="where received files are saved (default: ./%(default)s)"
    )
    parser.add_argument(
        "--download-quota",
        type=int,
        default=None,
        metavar="BYTES",
        help="bytes of files this session saves at most; a file past it is refused "
        "(default: 1000 MiB, or a quarter of the download folder's free space if less)",
    )
    parser.add_argument(
        "--line-mode", action="store_true", help="use line mode even when stdin is a terminal"
    )
    args = parser.parse_args(argv)
    if args.download_quota is not None and args.download_quota < 0:
        parser.error("--download-quota must not be negative")
    return args


@programs.quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = format_address(args.host, args.port)
    try:
        sock = socket.create_connection((args.host, args.port), timeout=10)  # getaddrinfo: IPv4 or IPv6
    except OSError as exc:
        print(
            f"{programs.command('client')}: cannot connect to {server}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    sock.settimeout(None)
    quota = args.download_quota
    if quota is None:
        quota = default_download_quota(args.download_dir)
    if sys.stdin.isatty() and not args.line_mode:
        from client.interactive import run_interactive

        return run_interactive(sock, args.download_dir, server, quota)
    from client.linemode import run_line_mode

    return run_line_mode(sock, args.download_dir, quota)


if __name__ == "__main__":
    sys.exit(main())
