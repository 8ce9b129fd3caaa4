"""``./dev lesson [NAME] [--port P] [--no-pause]``: list the lessons, or run one.

Once installed (``pip install .``) the command is ``shmchat-lesson``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

from lessons import backpressure, cleanup, send, sysv_vs_posix, undo
from lessons.kit import LessonFailed, Narrator, demo_command, find_port
from shm.discovery import list_objects
from syscalls import programs


class Lesson(NamedTuple):
    run: Callable[[int, Narrator], None]
    summary: str


LESSONS: dict[str, Lesson] = {
    "send": Lesson(
        send.run, "one /send from A to B, traced step by step, with the system call behind each row"
    ),
    "undo": Lesson(undo.run, "a worker holding the messages lock is killed: SEM_UNDO hands the lock back"),
    "backpressure": Lesson(
        backpressure.run,
        "a client stops reading: its mailbox fills, the sender waits, it is cut off past 4 MiB",
    ),
    "sysv-vs-posix": Lesson(
        sysv_vs_posix.run,
        "the same killed lock holder on System V (SEM_UNDO) and POSIX (the parent posts V)",
    ),
    "cleanup": Lesson(
        cleanup.run, "Ctrl-C on the server: its objects leave ipcs (this stops the demo's server)"
    ),
}


#: Lessons that show what only System V does; on a --ipc posix server they say so.
SYSV_ONLY = {"undo": "SEM_UNDO", "cleanup": "ipcs and IPC_RMID"}


def listing() -> str:
    lesson_command = programs.command("lesson")
    lines = [f"Guided lessons, run against the demo's server (start it first: {demo_command()}):", ""]
    lines += [f"  {lesson_command} {name:13} {lesson.summary}" for name, lesson in LESSONS.items()]
    lines += [
        "",
        "Each lesson says what to look at in the demo's trace and inspector panes, one step at a time.",
    ]
    return "\n".join(lines)


@programs.quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=programs.command("lesson"),
        description=listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", choices=list(LESSONS), help="the lesson to run (none: list them)")
    parser.add_argument(
        "--port",
        type=programs.tcp_port,
        default=None,
        help="the demo server's port (default: the one running)",
    )
    parser.add_argument(
        "--no-pause",
        action="store_true",
        help="do not wait for Enter between steps (the default off a terminal)",
    )
    args = parser.parse_args(argv)
    if args.name is None:
        print(listing())
        return 0
    narrator = Narrator(pause=sys.stdin.isatty() and not args.no_pause)
    try:
        port = find_port(args.port, f"{programs.command('lesson')} {args.name}")
        if args.name in SYSV_ONLY and any(e.api == "posix" for e in list_objects(port)):
            raise LessonFailed(
                f"this lesson is about System V ({SYSV_ONLY[args.name]}), and the server on port {port} "
                f"runs --ipc posix. '{programs.command('lesson')} sysv-vs-posix' shows both APIs; or start "
                "the demo without --ipc posix"
            )
        LESSONS[args.name].run(port, narrator)
    except LessonFailed as exc:
        print(f"\nlesson {args.name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"\nEnd of lesson {args.name}. The others: {programs.command('lesson')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
