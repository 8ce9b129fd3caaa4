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


def render(record: Record) -> str:
    """The line the receiver reads for one record (without its newline)."""
    kind = record.kind
    if kind is RecordKind.FILE_RESULT:
        transfer, name, receiver, error = decode_file_result(record.payload)
        label = f"file {transfer} '{name}'" if name else f"file {transfer}"  # the parent may not know it
        if error is None:
            return replies.ok(f"{label} delivered to {receiver}")
        return replies.error(f"{label} not delivered to {receiver}: {error}")
    text = record.payload.decode("utf-8", "replace")
    if kind is RecordKind.PRIVATE:
        return replies.private(record.sender_id, text)
    if kind is RecordKind.BROADCAST:
        return replies.broadcast(record.sender_id, text)
    if kind is RecordKind.GROUP:
        return replies.group_message(record.group_id, record.sender_id, text)
    if kind is RecordKind.BOUNCE:
        return replies.bounced(record.sender_id, text)
    if kind is RecordKind.NOTICE:
        return text
    raise ValueError(f"a {kind.name} record is not a line")
