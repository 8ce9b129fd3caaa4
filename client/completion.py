"""Tab completion for the interactive client.

The first word completes from ``protocol.commands.COMMANDS`` (the one table
that ``/help`` and the parser use too).  After it, each argument completes
from what that argument takes: client ids for ``/send`` and ``/makegroup``,
group ids for ``/sendgroup`` and ``/joingroup`` (invitations first), both for
``/sendfile`` and then a local path, command names for ``/help``.  The ids
come from the ``Roster``, which follows the server's lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from client.roster import Roster
from client.styles import id_colour
from protocol.commands import COMMANDS

#: What each argument position of a command takes.
CLIENT, GROUP, TARGET, PATH, TOPIC, CLIENTS = "client", "group", "target", "path", "topic", "clients"
ARGUMENTS: dict[str, tuple[str, ...]] = {
    "/send": (CLIENT,),
    "/sendgroup": (GROUP,),
    "/makegroup": (CLIENTS,),
    "/makegroupreq": (CLIENTS,),
    "/joingroup": (GROUP,),
    "/declinegroup": (GROUP,),
    "/approve": (GROUP, CLIENT),
    "/deny": (GROUP, CLIENT),
    "/sendfile": (TARGET, PATH),
    "/help": (TOPIC,),
}


class ChatCompleter(Completer):
    def __init__(self, roster: Roster) -> None:
        self.roster = roster
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        if not text.strip() or " " not in text.lstrip():
            yield from self._commands(text.lstrip())
            return
        words = text.lstrip().split(" ")
        command = words[0].lower()
        kinds = ARGUMENTS.get(command)
        if not kinds:
            return
        position = len(words) - 2  # the argument being typed (the last word may be "")
        kind = kinds[min(position, len(kinds) - 1)]
        if kind != CLIENTS and position >= len(kinds):
            return
        word = words[-1]
        if kind == PATH:
            yield from self._path(word)
            return
        if kind == TOPIC:
            yield from self._topics(word)
            return
        typed = {w for w in words[1:-1]}
        yield from self._ids(kind, word, typed, words)

    def _commands(self, word: str) -> Iterator[Completion]:
        lowered = word.lower()
        for spec in COMMANDS:
            if spec.name.lower().startswith(lowered) and (word or spec.name.startswith("/")):
                if spec.name == "EXIT" and not word:
                    continue
                yield Completion(
                    spec.name + (" " if spec.name in ARGUMENTS else ""),
                    start_position=-len(word),
                    display=spec.name,
                    display_meta=spec.summary,
                )

    def _topics(self, word: str) -> Iterator[Completion]:
        """Command names, with or without the slash (``/help send`` works too)."""
        for spec in COMMANDS:
            name = spec.name if word.startswith("/") or spec.name == "EXIT" else spec.name.lstrip("/")
            if name.lower().startswith(word.lower()):
                yield Completion(name, start_position=-len(word), display_meta=spec.summary)

    def _path(self, word: str) -> Iterator[Completion]:
        yield from self.paths.get_completions(Document(word, len(word)), CompleteEvent())

    def _ids(self, kind: str, word: str, typed: set[str], words: list[str]) -> Iterator[Completion]:
        roster = self.roster
        for value, meta in self._candidates(kind, words):
            label = str(value)
            if label in typed or not label.startswith(word):
                continue
            yield Completion(
                label + " ",
                start_position=-len(word),
                display=label,
                display_meta=meta,
                style=f"fg:{id_colour(value)}" if value in roster.online else "",
            )

    def _candidates(self, kind: str, words: list[str]) -> Iterable[tuple[int, str]]:
        roster = self.roster
        if kind in (CLIENT, CLIENTS, TARGET):
            command = words[0].lower()
            if command in ("/approve", "/deny") and len(words) >= 3 and words[1].isdigit():
                note = roster.groups.get(int(words[1]))
                asking = note.requests if note else []
                rest = [c for c in roster.others() if c not in asking]
                people = [(c, "asks to join") for c in asking] + [(c, "online client") for c in rest]
            else:
                people = [(c, "online client") for c in roster.others()]
            if kind != TARGET:
                return people
            return people + list(self._groups(only_mine=True))
        return list(self._groups(only_mine=False))

    def _groups(self, only_mine: bool) -> Iterator[tuple[int, str]]:
        roster = self.roster
        invitations = roster.invitations()
        mine = roster.my_groups()
        others = (
            [] if only_mine else sorted(g for g in roster.groups if g not in mine and g not in invitations)
        )
        ordered = ([] if only_mine else invitations) + mine + others
        for gid in ordered:
            note = roster.groups[gid]
            if gid in invitations:
                meta = f"invitation from {note.admin}"
            else:
                role = (
                    "your group (admin)"
                    if note.admin == roster.my_id
                    else "your group"
                    if gid in mine
                    else "group"
                )
                meta = f"{role}, {len(note.members)} member(s)" if note.members else role
            yield gid, meta
