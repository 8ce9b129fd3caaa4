"""Who a worker serves: the client's slot, the slot's generation and the client's id.

The slot says where the client's row and mailbox are in the tables; the
generation says which occupant of that slot it is, so that a record meant for
a client that has left never reaches the next one to take its slot; the id is
the five-digit number the people see.  Handlers, uploads, downloads and the
parent all speak of the client this way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """The client a worker serves."""

    slot: int
    generation: int
    client_id: int
