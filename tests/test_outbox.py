"""server.outbox: posting, blocking on a full mailbox, draining, discarding.

No sockets and no processes: real System V tables (tests/tablekit.py) and
real eventfd doorbells, driven by hand.  The receiver's side is played by
``MessageTable.take``, exactly the call its worker makes.
"""

from __future__ import annotations

import os

import pytest
from tablekit import online, small_tables

from server.caller import Caller
from server.doorbells import Doorbells
from server.handlers import deliver
from server.outbox import OFFLINE, STAYED_FULL, Delivery, Outbox
from shm.directory import ClientInfo
from shm.layout import RECORD_HEADER_SIZE, RecordKind

#: Mailboxes of 80 KiB (the smallest the tables allow) hold exactly four
#: records of 20 KiB: the fifth finds the mailbox full.
MAILBOX_BYTES = 80 * 1024
QUARTER_TEXT = MAILBOX_BYTES // 4 - RECORD_HEADER_SIZE


@pytest.fixture
def ipc():
    tables = small_tables(max_clients=4, mailbox_bytes=MAILBOX_BYTES)
    yield tables
    tables.close()


@pytest.fixture
def bells():
    doorbells = Doorbells(4)
    yield doorbells
    doorbells.close()


def as_caller(client: ClientInfo) -> Caller:
    return Caller(client.slot, client.generation, client.client_id)


def quarter(n: int) -> str:
    """The text of a record a quarter of a mailbox long, numbered so that order can be checked."""
    return f"{n:04d}".ljust(QUARTER_TEXT, ".")


def private(sender: ClientInfo, to: ClientInfo, text: str) -> Delivery:
    """A private message whose ``on_gone`` says which text was lost, and why."""
    return deliver(to, RecordKind.PRIVATE, as_caller(sender), text, on_gone=lambda why: f"{text[:4]}: {why}")


def broadcast(sender: ClientInfo, to: ClientInfo, text: str) -> Delivery:
    """A delivery without an ``on_gone``, as each copy of a broadcast is."""
    return deliver(to, RecordKind.BROADCAST, as_caller(sender), text)


def rings(bells: Doorbells, slot: int) -> int:
    """How many times the slot's doorbell was rung since it was last read (0: never)."""
    try:
        return os.eventfd_read(bells.fileno(slot))
    except BlockingIOError:
        return 0


def taken_texts(ipc, client: ClientInfo) -> tuple[list[str], list[int]]:
    records, waiters = ipc.messages.take(client.slot, client.generation)
    return [r.payload.decode()[:4] for r in records], waiters


def test_a_flush_posts_everything_in_order_and_rings_each_receiver_once(ipc, bells):
    a, b, c = online(ipc, 3)
    outbox = Outbox(ipc.messages, bells)
    outbox.add([private(a, b, "b1"), private(a, c, "c1"), private(a, b, "b2"), broadcast(a, b, "b3")])
    assert len(outbox) == 4

    assert outbox.flush() == []

    assert (len(outbox), outbox.blocked, outbox.delivered) == (0, False, 4)
    assert (rings(bells, b.slot), rings(bells, c.slot), rings(bells, a.slot)) == (1, 1, 0)
    assert taken_texts(ipc, b) == (["b1", "b2", "b3"], [])
    assert taken_texts(ipc, c) == (["c1"], [])


def test_a_full_mailbox_blocks_the_outbox_and_keeps_what_did_not_fit_in_order(ipc, bells):
    a, b, c = online(ipc, 3)
    outbox = Outbox(ipc.messages, bells)
    outbox.add([private(a, b, quarter(n)) for n in range(6)])
    outbox.add([private(a, c, quarter(99))])  # another receiver's mailbox has room: not held back

    assert outbox.flush() == []  # nothing is lost, so nobody is told anything

    assert outbox.blocked and len(outbox) == 2
    assert [d.posting.record.payload.decode()[:4] for d in outbox.pending] == ["0004", "0005"]
    assert (rings(bells, b.slot), rings(bells, c.slot)) == (1, 1)  # for what did go in
    assert ipc.messages.stats()[b.slot].waiters == [a.slot]


def test_once_full_a_mailbox_takes_no_later_record_of_the_same_flush_even_a_small_one(ipc, bells):
    a, b, c = online(ipc, 3)
    outbox = Outbox(ipc.messages, bells)
    outbox.add([private(a, b, quarter(n)) for n in range(3)])
    outbox.add([private(a, b, "x" * (QUARTER_TEXT + 1)), private(a, c, "c1"), private(a, b, "late")])

    outbox.flush()

    # "late" would fit in what is left of b's ring, but it would overtake the
    # longer message before it: the receiver must get its messages in sending order.
    assert [d.posting.record.payload[:4] for d in outbox.pending] == [b"xxxx", b"late"]
    assert taken_texts(ipc, b)[0] == ["0000", "0001", "0002"]


def test_pending_posts_drain_in_order_once_the_receiver_takes_its_mail(ipc, bells):
    a, b = online(ipc, 2)
    outbox = Outbox(ipc.messages, bells)
    outbox.add([private(a, b, quarter(n)) for n in range(10)])
    outbox.flush()
    assert outbox.blocked

    got: list[str] = []
    while outbox.blocked:
        texts, waiters = taken_texts(ipc, b)  # the receiver takes its mail ...
        got += texts
        assert waiters == [a.slot]  # ... and learns whom to ring back
        outbox.flush()  # the poster, rung, tries again
    got += taken_texts(ipc, b)[0]

    assert got == [quarter(n)[:4] for n in range(10)]
    assert (len(outbox), outbox.delivered) == (0, 10)


def test_a_receiver_that_left_gets_nothing_and_only_on_gone_speaks(ipc, bells):
    a, b = online(ipc, 2)
    ipc.messages.close(b.slot, b.generation)
    outbox = Outbox(ipc.messages, bells)
    outbox.add([private(a, b, "p1"), broadcast(a, b, "all")])

    assert outbox.flush() == [f"p1: {OFFLINE}"]

    assert (len(outbox), outbox.blocked, outbox.delivered) == (0, False, 0)
    assert rings(bells, b.slot) == 0


def test_discard_reports_every_record_still_pending_and_empties_the_outbox(ipc, bells):
    a, b, c = online(ipc, 3)
    outbox = Outbox(ipc.messages, bells)
    outbox.add([broadcast(a, b, quarter(n)) for n in range(4)])  # b's mailbox is now full
    outbox.add([broadcast(a, c, quarter(n)) for n in range(4)])  # and so is c's
    outbox.flush()
    outbox.add([private(a, b, "p1"), broadcast(a, b, "b1"), broadcast(a, c, "c1"), broadcast(a, b, "b2")])
    outbox.flush()
    assert outbox.blocked and len(outbox) == 4

    lines = outbox.discard(lambda receiver, count: f"{count} to {receiver}")

    # A delivery with an on_gone speaks for itself; the rest are counted per receiver.
    assert lines == [f"p1: {STAYED_FULL}", f"2 to {b.client_id}", f"1 to {c.client_id}"]
    assert (len(outbox), outbox.blocked) == (0, False)
    assert outbox.flush() == []  # nothing comes back after a discard
    assert taken_texts(ipc, b)[0] == [quarter(n)[:4] for n in range(4)]
