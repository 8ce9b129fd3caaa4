"""Flood control: how much chat one client may send, in lines and in bytes.

One client looping ``/broadcast`` with long lines would otherwise send as
fast as the server relays, and every classmate who reads more slowly than
that would pass the output limit and be cut off.  So each worker keeps a
budget for its own client, in the spirit of RFC 1459 §8.10 (kept by ngIRCd
as its "penalty"): every line read moves a *message timer* forward; while
the timer runs more than an allowance ahead of the clock, the worker stops
reading that client's socket, and reads it again once the clock has caught
up.  Nothing is dropped: the lines wait in the socket and in TCP, and the
flooder is simply read more slowly.

RFC 1459 charges 2 s per line with a 10 s allowance, which suits people on
a 1990 network.  Here there are two timers, one charged per line and one per
byte, each with its own rate and burst, chosen (below) so that people and
scripts never feel them and a loop of long lines does.  File data frames are
not chat: the worker does not charge them (they have quotas of their own).

A budget is pure: it reads the time from the clock it is given and touches
no socket, so ``tests/test_flood.py`` runs it on a fake clock.  The worker
uses it in two places: ``process_input`` stops handling lines while
``over`` is true, and ``serve`` then drops EPOLLIN and gives ``epoll_wait``
the timeout ``wait()`` returns, so that the loop sleeps until the client may
be read again (no busy polling).
"""

from __future__ import annotations

from collections.abc import Callable

KiB = 1024

#: Lines a client may send at once before it is slowed.  A script that
#: pastes 3,000 short lines at once (the issue's example) fits with room to
#: spare; so does anything a person types or pastes.
LINE_BURST = 4000
#: Lines per second a client may send for as long as it likes: hundreds of
#: times a person's pace (a line every few seconds), and more than any bot
#: answering people needs.
LINE_RATE = 100.0
#: Bytes a client may send at once: 3,000 lines of 170 bytes, a pasted page
#: a hundred times over, or eight lines at the 64 KiB length cap.
BYTE_BURST = 512 * KiB
#: Bytes per second a client may send for as long as it likes: one line at
#: the length cap a second.  Far below what any reading client takes in
#: (a reader at 1 MB/s is sixteen times faster), so one flooder cannot fill
#: a reader's output backlog: the most it can put there is the burst.
BYTE_RATE = 64 * KiB

#: The one line a flooding client is told, once per episode.
NOTICE = (
    f"flood control: you are sending more than {LINE_RATE:.0f} lines or {BYTE_RATE // KiB} KiB a second, "
    "so the server now reads your input more slowly; nothing you sent is lost"
)


class FloodBudget:
    """One client's allowance for chat input: lines and bytes per second, with a burst.

    ``charge`` after each chat line; ``over`` says whether to stop handling
    its lines; ``wait`` how long until reading may go on.  An *episode* of
    flooding starts when a charge first puts the client over its budget and
    ends once both timers have caught up with the clock (the client has
    earned its whole burst back); ``notice_due`` is true once per episode.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        line_rate: float = LINE_RATE,
        line_burst: int = LINE_BURST,
        byte_rate: float = BYTE_RATE,
        byte_burst: int = BYTE_BURST,
    ) -> None:
        self._clock = clock
        self._line_cost = 1.0 / line_rate  # seconds each line moves the line timer
        self._byte_rate = byte_rate
        # How far ahead of the clock each timer may run: the burst, in seconds.
        self._line_allowance = line_burst / line_rate
        self._byte_allowance = byte_burst / byte_rate
        now = clock()
        self._line_timer = now  # RFC 1459's "message timer", one per resource
        self._byte_timer = now
        self._over = False  # the last charge put the client over; wait() has not yet cleared it
        self._episode = False  # over at least once since the timers last caught up
        self._told = False  # the client has had this episode's notice

    def charge(self, size: int) -> bool:
        """Count one chat line of ``size`` bytes; True if the client is now over its budget."""
        # Called for every line a client sends: plain comparisons, not max()
        # (a builtin call each, the larger part of this method's work).
        now = self._clock()
        line_timer, byte_timer = self._line_timer, self._byte_timer
        if line_timer <= now and byte_timer <= now:
            self._episode = self._told = False  # caught up: any episode is over
        # A timer left in the past starts again from now (RFC 1459).
        line_timer = (line_timer if line_timer > now else now) + self._line_cost
        byte_timer = (byte_timer if byte_timer > now else now) + size / self._byte_rate
        self._line_timer, self._byte_timer = line_timer, byte_timer
        over = line_timer - now > self._line_allowance or byte_timer - now > self._byte_allowance
        if over:
            self._episode = True
        self._over = over
        return over

    @property
    def over(self) -> bool:
        """True while the client is over its budget: handle none of its lines."""
        return self._over and self.wait() > 0.0

    def wait(self) -> float:
        """Seconds until the client may be read again: 0.0 if it is within its budget now.

        The clock is read only while the client is over: within budget this
        is one attribute test, as the worker asks once per turn of its loop.
        """
        if not self._over:
            return 0.0
        left = self._ahead(self._clock())
        self._over = left > 0.0
        return left

    def notice_due(self) -> bool:
        """True the first time it is asked during an episode: tell the client then, once."""
        if not self._episode or self._told:
            return False
        self._told = True
        return True

    def _ahead(self, now: float) -> float:
        """How far the further timer runs past its allowance (0.0: within budget)."""
        return max(
            0.0,
            self._line_timer - now - self._line_allowance,
            self._byte_timer - now - self._byte_allowance,
        )
