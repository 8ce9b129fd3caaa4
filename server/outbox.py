"""The outbox: records on their way into other clients' mailboxes.

Every post the server makes goes through one ``Outbox``: a worker's messages,
file notices and file results, and the parent's join and leave notices,
bounces and goodbyes.  So the post-and-ring loop exists once:

1. post everything pending in one batch (one hold of the messages lock);
2. ring each receiver's doorbell once, however many records it got;
3. keep, in order, what found a full mailbox, and report what found its
   receiver gone.

A post into a full mailbox is never dropped.  It stays pending, the poster's
slot is marked in that mailbox's waiters, and the receiver rings the poster
back once it has taken its mail.  While anything is pending the outbox is
``blocked`` and a worker stops reading its client's socket, so a flooding
sender is slowed down by TCP instead of losing messages.  The parent is no
one's waiter (it has no slot); it retries on a short timer while it has
pending notices.

A worker that is leaving gives its pending posts a bounded time
(``drain``) and then ``discard`` s what is left, with a line for each
receiver: nothing leaves the outbox without either arriving or being
reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from server.doorbells import Doorbells
from shm.mailboxes import MessageTable, Posting, PostResult

#: The reason given to ``Delivery.on_gone`` when the receiver has left.
OFFLINE = "offline"
#: The reason given when a leaving sender could not wait for room any longer.
STAYED_FULL = "its mailbox stayed full while you were leaving"


@dataclass(slots=True)
class Delivery:
    """A record for one mailbox, and what to tell the poster if it cannot arrive.

    ``on_gone(reason)`` makes that line only when it is needed (nearly every
    message arrives, so a line built in advance would nearly always be thrown
    away), or returns None to say nothing.  ``to_id`` names the receiver in
    the line that reports a discarded record without an ``on_gone``.
    A plain slotted dataclass, as ``Record`` and ``Posting`` are.
    """

    posting: Posting
    on_gone: Callable[[str], str | None] | None = None
    to_id: int = 0


class Outbox:
    def __init__(self, messages: MessageTable, doorbells: Doorbells) -> None:
        self.messages = messages
        self.doorbells = doorbells
        #: Deliveries not yet posted, in the order they were added.
        self.pending: list[Delivery] = []
        #: A flush found a full mailbox: wait for its owner to ring back.
        self.blocked = False
        #: Records that reached a mailbox (a statistic for the client table).
        self.delivered = 0

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, deliveries: Iterable[Delivery]) -> None:
        self.pending.extend(deliveries)

    def flush(self) -> list[str]:
        """Post what is pending in one batch, ring the receivers, keep what did not fit.

        Returns the lines for the poster: one for each delivery whose receiver
        has left and whose ``on_gone`` has something to say.
        """
        if not self.pending:  # nothing to post: no lock to take
            self.blocked = False
            return []
        batch, self.pending = self.pending, []
        results = self.messages.post([delivery.posting for delivery in batch])
        lines = []
        rung = set()
        for delivery, result in zip(batch, results, strict=True):
            if result is PostResult.DELIVERED:
                self.delivered += 1
                rung.add(delivery.posting.slot)
            elif result is PostResult.GONE:
                if delivery.on_gone is not None and (line := delivery.on_gone(OFFLINE)) is not None:
                    lines.append(line)
            else:
                self.pending.append(delivery)
        for slot in rung:
            self.doorbells.ring(slot)  # eventfd write: wake the receiver's worker
        self.blocked = bool(self.pending)
        return lines

    def clear(self) -> None:
        """Forget what is pending without a word.

        The parent does this at shutdown: its notices were for people who are
        about to be told goodbye instead.
        """
        self.pending.clear()
        self.blocked = False

    def discard(self, generic: Callable[[int, int], str]) -> list[str]:
        """Give up on everything still pending; return a line for each receiver.

        A delivery with an ``on_gone`` speaks for itself (a private message, a
        file notice); the rest are counted per receiver and reported by
        ``generic(receiver_id, count)``.
        """
        lines = []
        counts: dict[int, int] = {}
        for delivery in self.pending:
            if delivery.on_gone is not None:
                if (line := delivery.on_gone(STAYED_FULL)) is not None:
                    lines.append(line)
            else:
                counts[delivery.to_id] = counts.get(delivery.to_id, 0) + 1
        lines += [generic(receiver, count) for receiver, count in counts.items()]
        self.pending.clear()
        self.blocked = False
        return lines
