"""Mail as the client sees it: one record from the mailbox, rendered as one line.

Pure: no socket, no table.  FILE notices and the SHUTDOWN goodbye are not
lines but events for the worker (a download to start, a session to end), so
they never come here.
"""

from __future__ import annotations

from protocol import replies
from server.spool import decode_file_result
from shm.layout import RecordKind
from shm.mailboxes import Record

#: The kinds that are events for the worker, not lines: a file to download, the
#: server's goodbye.  A set, so that telling them from lines is one lookup
#: rather than a comparison with each enum member.
EVENTS = frozenset({RecordKind.FILE, RecordKind.SHUTDOWN})


def render(record: Record) -> str:
    """The line the receiver reads for one record (without its newline)."""
    # The kinds in the order of how often they come: each test looks up an
    # enum member, and nearly every record is a chat message.
    kind = record.kind
    text = record.payload.decode("utf-8", "replace")  # all but a FILE_RESULT hold text
    if kind is RecordKind.PRIVATE:
        return replies.private(record.sender_id, text)
    if kind is RecordKind.BROADCAST:
        return replies.broadcast(record.sender_id, text)
    if kind is RecordKind.GROUP:
        return replies.group_message(record.group_id, record.sender_id, text)
    if kind is RecordKind.NOTICE:
        return text
    if kind is RecordKind.BOUNCE:
        return replies.bounced(record.sender_id, text)
    if kind is RecordKind.FILE_RESULT:
        transfer, name, receiver, error = decode_file_result(record.payload)
        label = f"file {transfer} '{name}'" if name else f"file {transfer}"  # the parent may not know it
        if error is None:
            return replies.ok(f"{label} delivered to {receiver}")
        return replies.error(f"{label} not delivered to {receiver}: {error}")
    raise ValueError(f"a {kind.name} record is not a line")
