"""Who is online and which groups exist, as far as this client has been told.

The protocol has no push of the client list: a client learns it from the
lines the server already sends.  ``Roster.observe`` reads every server line
and keeps two things up to date for completion and the toolbar:

* the online ids: the welcome (our own id and how many others), ``[active]``
  replies (the whole list), ``client N joined`` / ``left`` notices, and
  errors that say a client is offline;
* the group ids: ``[groups]`` listings, and the ok replies and notices about
  groups being made, joined, offered, left and dissolved.

The interactive client asks ``/active`` and ``/activeallgroups`` once, quietly,
right after the welcome, so the roster starts complete; from then on the
notices keep it current.  It is a best effort for convenience: the server
remains the judge of every id typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from protocol import replies

_ID = re.compile(r"(?<![\d-])\d{5}(?![\d-])")
_WELCOME_ID = re.compile(r"unique id is (\d{5})")
_WELCOME_OTHERS = re.compile(r"(\d+) other\(s\) online")
_JOINED = re.compile(r"^client (\d{5}) joined$")
_LEFT = re.compile(r"^client (\d{5}) (?:left|disconnected|was disconnected)(?: \(|$)")
_OFFLINE = re.compile(r"client (\d{5}) (?:is offline|disconnected)")
_GROUP_LISTING = re.compile(r"^(\d+) group\(s\) (on the server|you belong to)$")
_NO_GROUPS = re.compile(r"^no groups (on the server|you belong to)$")
_DESCRIBED = re.compile(
    r"group (\d{5}): admin (\d{5}); members ([\d, ]+?)"
    r"(?:; invited ([\d, ]+?))?(?:; asking to join ([\d, ]+?))?(?: \(created\))?(?:;|$)"
)
_INVITED = re.compile(r"invites you to group (\d{5})")
_DISSOLVED = re.compile(r"group (\d{5}) was dissolved")
_NO_SUCH_GROUP = re.compile(r"group (\d{5}) does not exist")
_LEFT_GROUP = re.compile(r"^client (\d{5}) left group (\d{5})(?:; client (\d{5}) is now its admin)?")
_JOINED_GROUP = re.compile(r"client (\d{5}) joined group (\d{5})|approved: (\d{5}) joined group (\d{5})")
_NEW_ADMIN = re.compile(r"you are now the admin of group (\d{5})")
_DECLINED = re.compile(r"declined the invitation to group (\d{5})")
_CREATED_REQ = re.compile(r"^group (\d{5}) created; invited")
_ASKS = re.compile(r"client (\d{5}) asks to join group (\d{5})")
_GROUP_WORD = re.compile(r"group (\d{5})")


def _ids(text: str | None) -> list[int]:
    return [int(v) for v in _ID.findall(text or "")]


@dataclass
class GroupNote:
    """What this client knows about one group."""

    group_id: int
    admin: int | None = None
    members: list[int] = field(default_factory=list)
    invited: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)


@dataclass
class Roster:
    my_id: int | None = None
    online: set[int] = field(default_factory=set)
    groups: dict[int, GroupNote] = field(default_factory=dict)
    #: the welcome's head count, until an [active] list replaces it
    counted: int | None = None
    _listing: set[int] | None = None  # ids seen in a /activeallgroups listing so far
    _listing_left: int = 0

    # -- what the toolbar and the completer read ----------------------------------

    @property
    def online_count(self) -> int:
        if self.counted is not None:
            return max(self.counted, len(self.online))
        return len(self.online)

    def others(self) -> list[int]:
        return sorted(i for i in self.online if i != self.my_id)

    def my_groups(self) -> list[int]:
        return sorted(g for g, n in self.groups.items() if self.my_id in n.members)

    def invitations(self) -> list[int]:
        return sorted(g for g, n in self.groups.items() if self.my_id in n.invited)

    def administered(self) -> list[int]:
        return sorted(g for g, n in self.groups.items() if n.admin == self.my_id)

    def note(self, group_id: int) -> GroupNote:
        return self.groups.setdefault(group_id, GroupNote(group_id))

    # -- reading lines ------------------------------------------------------------

    def observe(self, line: str) -> None:
        """Update from one server line (any line; most change nothing)."""
        parsed = replies.classify(line)
        kind, body = parsed.kind, parsed.body
        if kind == "welcome":
            match = _WELCOME_ID.search(body)
            if match:
                self.my_id = int(match.group(1))
                self.online = {self.my_id}
            others = _WELCOME_OTHERS.search(body)
            self.counted = 1 + (int(others.group(1)) if others else 0)
        elif kind == "active":
            self.online = set(_ids(body.partition(":")[2]))
            self.counted = None
        elif kind in ("private", "broadcast", "group") and parsed.sender is not None:
            self.online.add(parsed.sender)
            if kind == "group" and parsed.group_id is not None:
                note = self.note(parsed.group_id)
                for who in (parsed.sender, self.my_id):
                    if who is not None and who not in note.members:
                        note.members.append(who)
        elif kind == "groups":
            self._observe_listing(body)
        elif kind == "server":
            self._observe_notice(body)
        elif kind == "ok":
            self._observe_ok(body)
        elif kind == "error":
            self._observe_error(body)

    def _arrived(self, client_id: int) -> None:
        self.online.add(client_id)
        if self.counted is not None:
            self.counted += 1

    def _departed(self, client_id: int) -> None:
        self.online.discard(client_id)
        if self.counted is not None:
            self.counted = max(len(self.online), self.counted - 1)
        for note in self.groups.values():
            for pending in (note.invited, note.requests):
                if client_id in pending:
                    pending.remove(client_id)

    def _describe(self, text: str) -> GroupNote | None:
        """Read a ``describe_group`` text into the roster."""
        match = _DESCRIBED.search(text)
        if match is None:
            return None
        note = self.note(int(match.group(1)))
        note.admin = int(match.group(2))
        note.members = _ids(match.group(3))
        note.invited = _ids(match.group(4))
        note.requests = _ids(match.group(5))
        return note

    def _observe_listing(self, body: str) -> None:
        listing = _GROUP_LISTING.match(body)
        if listing:
            everyone = listing.group(2) == "on the server"
            self._listing = set() if everyone else None
            self._listing_left = int(listing.group(1)) if everyone else 0
            return
        empty = _NO_GROUPS.match(body)
        if empty:
            if empty.group(1) == "on the server":
                self.groups.clear()
            else:
                for note in self.groups.values():
                    if self.my_id in note.members:
                        note.members.remove(self.my_id)
            return
        note = self._describe(body)
        if note is not None and self._listing is not None:
            self._listing.add(note.group_id)
            self._listing_left -= 1
            if self._listing_left <= 0:  # a complete listing: forget groups it did not name
                for gid in list(self.groups):
                    if gid not in self._listing:
                        del self.groups[gid]
                self._listing = None

    def _observe_notice(self, body: str) -> None:
        if match := _JOINED.match(body):
            self._arrived(int(match.group(1)))
        elif match := _LEFT_GROUP.match(body):
            who, gid = int(match.group(1)), int(match.group(2))
            note = self.note(gid)
            if who in note.members:
                note.members.remove(who)
            if match.group(3):
                note.admin = int(match.group(3))
        elif match := _LEFT.match(body):
            self._departed(int(match.group(1)))
        elif match := _INVITED.search(body):
            note = self.note(int(match.group(1)))
            admin = _ids(body)[0]
            note.admin = admin
            if admin not in note.members:
                note.members.append(admin)
            if self.my_id is not None and self.my_id not in note.invited:
                note.invited.append(self.my_id)
        elif match := _DISSOLVED.search(body):
            self.groups.pop(int(match.group(1)), None)
        elif match := _ASKS.search(body):
            note = self.note(int(match.group(2)))
            who = int(match.group(1))
            if who not in note.requests:
                note.requests.append(who)
        elif match := _NEW_ADMIN.search(body):
            self.note(int(match.group(1))).admin = self.my_id
        elif match := _JOINED_GROUP.search(body):
            self._joined(match)
        elif match := _DECLINED.search(body):
            note = self.note(int(match.group(1)))
            who = _ids(body)[0]
            if who in note.invited:
                note.invited.remove(who)
        elif self._describe(body) is None and (match := _GROUP_WORD.search(body)):
            self.note(int(match.group(1)))

    def _joined(self, match: re.Match) -> None:
        who = int(match.group(1) or match.group(3))
        note = self.note(int(match.group(2) or match.group(4)))
        if who not in note.members:
            note.members.append(who)
        for pending in (note.invited, note.requests):
            if who in pending:
                pending.remove(who)

    def _observe_ok(self, body: str) -> None:
        if match := _CREATED_REQ.match(body):
            note = self.note(int(match.group(1)))
            note.admin = self.my_id
            note.members = [self.my_id] if self.my_id is not None else []
            note.invited = _ids(body.split("invited", 1)[1].split(";", 1)[0])
        elif match := _DECLINED.search(body):
            note = self.groups.get(int(match.group(1)))
            if note is not None and self.my_id in note.invited:
                note.invited.remove(self.my_id)
        elif match := _JOINED_GROUP.search(body):
            self._joined(match)
        elif self._describe(body) is None and (match := _GROUP_WORD.search(body)):
            self.note(int(match.group(1)))

    def _observe_error(self, body: str) -> None:
        if match := _NO_SUCH_GROUP.search(body):
            self.groups.pop(int(match.group(1)), None)
        elif match := _OFFLINE.search(body):
            self._departed(int(match.group(1)))
