"""``./dev client`` (``shmchat-client`` once installed): connect to a shmchat server.

Interactive when stdin is a terminal (incoming messages print above the line
being typed); line mode otherwise (one command per input line, every server
line printed and flushed), for pipes, scripts and tests.
"""

from __future__ import annotations

import argparse
import socket
import sys

from protocol.wire import DEFAULT_PORT
from syscalls import programs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=programs.command("client"), description="Chat with a shmchat server."
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument(
        "--port", type=programs.tcp_port, default=DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    parser.add_argument(
        "--download-dir", default="downloads", help="where received files are saved (default: ./%(default)s)"
    )
    parser.add_argument(
        "--line-mode", action="store_true", help="use line mode even when stdin is a terminal"
    )
    return parser.parse_args(argv)


@programs.quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sock = socket.create_connection((args.host, args.port), timeout=10)
    except OSError as exc:
        print(
            f"{programs.command('client')}: cannot connect to {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    sock.settimeout(None)
    if sys.stdin.isatty() and not args.line_mode:
        from client.interactive import run_interactive

        return run_interactive(sock, args.download_dir, f"{args.host}:{args.port}")
    from client.linemode import run_line_mode

    return run_line_mode(sock, args.download_dir)


if __name__ == "__main__":
    sys.exit(main())
