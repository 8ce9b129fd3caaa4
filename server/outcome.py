"""What a request leads to: the plain data a handler returns for the worker to carry out.

A handler (``server.handlers``, and the file rooms ``server.uploads``) never
touches a socket or a mailbox itself; it says what should happen, and the
worker does it in this order: the caller's own lines, the posts through the
outbox, then a goodbye or a data frame.  Kept in a module of its own because
both the handlers and the upload room build it, and the handlers call the
upload room.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.outbox import Delivery


@dataclass(slots=True)
class Outcome:
    """What a request leads to, for the worker to carry out in this order."""

    #: Lines for the caller's own socket.
    replies: list[str] = field(default_factory=list)
    #: Records for other clients' mailboxes (the worker's outbox posts them).
    deliveries: list[Delivery] = field(default_factory=list)
    #: The caller leaves: ``replies`` are its goodbye, said after ``deliveries`` are settled.
    quit: bool = False
    #: The raw bytes that follow this line are a data frame of this many bytes.
    frame: int | None = None
