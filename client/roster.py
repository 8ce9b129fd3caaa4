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

from dataclasses import dataclass, field

from protocol import group_replies, replies


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
        """The groups this client is the admin of (whose join requests it answers).

        Public with the other queries above, for a front end's display; today
        only the tests read it, to check the roster follows admin changes.
        """
        return sorted(g for g, n in self.groups.items() if n.admin == self.my_id)

    def note(self, group_id: int) -> GroupNote:
        return self.groups.setdefault(group_id, GroupNote(group_id))

    # -- reading lines ------------------------------------------------------------

    def observe(self, line: str) -> None:
        """Update from one server line (any line; most change nothing)."""
        parsed = replies.classify(line)
        kind = parsed.kind
        if kind == "welcome":
            welcome = replies.parse_welcome(line)
            if welcome:
                self.my_id = welcome[0]
                self.online = {self.my_id}
            self.counted = 1 + (welcome[1] if welcome else 0)
        elif kind == "active":
            self.online = set(replies.parse_active(line) or [])
            self.counted = None
        elif kind in ("private", "broadcast", "group") and parsed.sender is not None:
            self.online.add(parsed.sender)
            if kind == "group" and parsed.group_id is not None:
                note = self.note(parsed.group_id)
                for who in (parsed.sender, self.my_id):
                    if who is not None and who not in note.members:
                        note.members.append(who)
        elif kind == "groups":
            self._observe_listing(line)
        elif kind == "server":
            self._observe_notice(line)
        elif kind == "ok":
            self._observe_ok(line)
        elif kind == "error":
            self._observe_error(line)

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

    def _describe(self, group: group_replies.GroupView | None) -> GroupNote | None:
        """Take a group description (``group G: admin A; members ...``) as the whole truth."""
        if group is None:
            return None
        note = self.note(group.group_id)
        note.admin = group.admin
        note.members = list(group.members)
        note.invited = list(group.invited)
        note.requests = list(group.requests)
        return note

    def _observe_listing(self, line: str) -> None:
        if (listing := group_replies.parse_groups_count(line)) is not None:
            count, of_everyone = listing
            self._listing = set() if of_everyone else None
            self._listing_left = count if of_everyone else 0
            return
        if (empty_of_everyone := group_replies.parse_no_groups(line)) is not None:
            if empty_of_everyone:
                self.groups.clear()
            else:
                for note in self.groups.values():
                    if self.my_id in note.members:
                        note.members.remove(self.my_id)
            return
        described = self._describe(group_replies.parse_group_description(line))
        if described is not None and self._listing is not None:
            self._listing.add(described.group_id)
            self._listing_left -= 1
            if self._listing_left <= 0:  # a complete listing: forget groups it did not name
                for gid in list(self.groups):
                    if gid not in self._listing:
                        del self.groups[gid]
                self._listing = None

    def _observe_notice(self, line: str) -> None:
        if (who := replies.parse_joined(line)) is not None:
            self._arrived(who)
        elif left := group_replies.parse_left_group(line):
            who, gid, new_admin = left
            note = self.note(gid)
            if who in note.members:
                note.members.remove(who)
            if new_admin is not None:
                note.admin = new_admin
        elif (who := replies.parse_left(line)) is not None:
            self._departed(who)
        elif invitation := group_replies.parse_group_invitation(line):
            admin, gid = invitation
            note = self.note(gid)
            note.admin = admin
            if admin not in note.members:
                note.members.append(admin)
            if self.my_id is not None and self.my_id not in note.invited:
                note.invited.append(self.my_id)
        elif dissolved := group_replies.parse_group_dissolved(line):
            self.groups.pop(dissolved[0], None)
        elif asks := group_replies.parse_join_request(line):
            who, gid = asks
            note = self.note(gid)
            if who not in note.requests:
                note.requests.append(who)
        elif inherited := group_replies.parse_admin_inherited(line):
            self.note(inherited[0]).admin = self.my_id
        elif joined := group_replies.parse_joined_group(line):
            self._joined(*joined)
        elif declined := group_replies.parse_invitation_declined(line):
            who, gid = declined
            note = self.note(gid)
            if who in note.invited:
                note.invited.remove(who)
        elif self._describe(group_replies.parse_group_description(line)) is None:
            self._mentioned(line)

    def _mentioned(self, line: str) -> None:
        """A line about a group that says no more: at least the group exists."""
        if (gid := group_replies.parse_group_mentioned(line)) is not None:
            self.note(gid)

    def _joined(self, who: int, group_id: int) -> None:
        note = self.note(group_id)
        if who not in note.members:
            note.members.append(who)
        for pending in (note.invited, note.requests):
            if who in pending:
                pending.remove(who)

    def _observe_ok(self, line: str) -> None:
        if made := group_replies.parse_group_made_invite_only(line):
            gid, invited = made
            note = self.note(gid)
            note.admin = self.my_id
            note.members = [self.my_id] if self.my_id is not None else []
            note.invited = invited
        elif (declined := group_replies.parse_invitation_declined_ok(line)) is not None:
            known = self.groups.get(declined)
            if known is not None and self.my_id in known.invited:
                known.invited.remove(self.my_id)
        elif approved := group_replies.parse_request_approved_ok(line):
            self._joined(*approved)
        elif self._describe(group_replies.parse_group_description(line)) is None:
            self._mentioned(line)

    def _observe_error(self, line: str) -> None:
        if (gid := group_replies.parse_no_such_group(line)) is not None:
            self.groups.pop(gid, None)
        elif (who := replies.parse_offline(line)) is not None:
            self._departed(who)
