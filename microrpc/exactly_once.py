"""Exactly-once calls (RIFL, SOSP'15): the server's completion records and the client's ids.

Not wired into the wire format and the cores yet (issue #11 lands it in steps): this module
is the bookkeeping, as plain objects fed events and a clock, so that the rules are tested
on their own before a transport carries them.

How it works. A client holds a **lease** (an id the server side hands out, never twice,
kept alive by the client; :class:`LocalLeases` is a server's own authority, and proclets
will plug the controller's leases in through the same two calls). It numbers its calls
1, 2, 3, ... (:class:`CallNumbers`), sends each with ``(lease, seq, ack)`` where ``ack`` is
the highest seq below which every call has ended, and sends a retry with the same
numbers. The server keeps a **completion record** per (lease, seq) of a method that is not
idempotent (:class:`CompletionTable`) and, before running a call, looks it up:

==============  ==========================================  ================================
case            condition                                   the server
==============  ==========================================  ================================
STALE           seq <= the lease's highest ack seen         refuses: the client already
                                                            acknowledged it (a late copy)
DONE            a finished record exists                    sends the saved reply, no run
RUNNING         a record exists, not finished yet           answers "in progress": the
                                                            client retries later
EXPIRED         new seq, but the lease is expired           refuses without running: its
                                                            records may be gone
NEW             new seq, lease alive                        records it RUNNING, runs it,
                                                            saves the reply when done
==============  ==========================================  ================================

Acks free records (every request carries one), and a lease that expires takes its
records with it: a call from it is then refused, never run again (the safety argument of
RIFL: a new call runs only after its lease is validated). The records per lease are
bounded (``window``): a client with that many calls unacknowledged must wait.
"""
from __future__ import annotations

import enum
import itertools
import secrets
import time
from typing import Any, Callable

__all__ = [
    "CallNumbers", "Check", "CompletionTable", "LocalLeases", "DEFAULT_LEASE_TTL",
    "DEFAULT_WINDOW",
]

# A lease lives this long without a renewal. RAMCloud uses 30 minutes; a server-local
# authority has no coordinator to ask, so a shorter one frees a dead client's records sooner.
DEFAULT_LEASE_TTL = 60.0
# Calls one lease may have unacknowledged (RIFL's client window is 512).
DEFAULT_WINDOW = 512


class Check(enum.Enum):
    """What the server does with a numbered call (the module docstring's table)."""
    NEW = "new"
    DONE = "done"
    RUNNING = "running"
    STALE = "stale"
    EXPIRED = "expired"
    WINDOW_FULL = "window full"      # too many unacknowledged calls on this lease


class LocalLeases:
    """A server's own lease authority: ids never reused, expiry by an injected clock
    (seconds, monotonic).

    An id is this authority's ``incarnation`` (32 random bits unless given) followed by a
    32-bit count: a server that restarts must not grant again the ids it granted before,
    or a client still holding one would share it, and its completion records, with the
    client that got it anew."""

    def __init__(self, ttl: float = DEFAULT_LEASE_TTL, *,
                 clock: Callable[[], float] = time.monotonic,
                 incarnation: int | None = None) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive seconds, not {ttl!r}")
        if incarnation is None:
            incarnation = secrets.randbits(32) or 1
        if not 0 < incarnation < 1 << 32:
            raise ValueError("incarnation must be in 1..2**32-1")
        self.ttl = ttl
        self._clock = clock
        self._deadline: dict[int, float] = {}
        self._ids = itertools.count((incarnation << 32) + 1)

    def grant(self) -> int:
        lease = next(self._ids)
        self._deadline[lease] = self._clock() + self.ttl
        return lease

    def renew(self, lease: int) -> bool:
        """Keep ``lease`` alive for another ttl; False if it had already expired."""
        if not self.valid(lease):
            return False
        self._deadline[lease] = self._clock() + self.ttl
        return True

    def valid(self, lease: int) -> bool:
        deadline = self._deadline.get(lease)
        return deadline is not None and deadline > self._clock()

    def expired(self) -> list[int]:
        """The leases that expired since the last call, each reported once and then
        forgotten (the caller drops their records: CompletionTable.drop_lease)."""
        now = self._clock()
        gone = [lease for lease, deadline in self._deadline.items() if deadline <= now]
        for lease in gone:
            del self._deadline[lease]
        return gone


class _Client:
    __slots__ = ("acked", "records")

    def __init__(self) -> None:
        self.acked = 0                       # every seq <= acked has been acknowledged
        self.records: dict[int, Any] = {}    # seq -> saved reply, or _RUNNING


_RUNNING = object()


class CompletionTable:
    """The server's completion records (see the module docstring). ``lease_valid`` is the
    authority's check (``LocalLeases.valid``, or a controller's)."""

    def __init__(self, lease_valid: Callable[[int], bool], *,
                 window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._lease_valid = lease_valid
        self.window = window
        self._clients: dict[int, _Client] = {}
        # statistics
        self.duplicates = 0          # retries answered from a record
        self.refused = 0             # stale, expired or over the window

    def check(self, lease: int, seq: int, ack: int) -> tuple[Check, Any]:
        """Look a numbered call up; (Check, saved reply or None). NEW records it RUNNING:
        the caller runs it and then calls :meth:`finish` (or :meth:`forget` if it could
        not run it at all)."""
        if lease < 1 or seq < 1 or ack < 0 or ack >= seq:
            raise ValueError(f"malformed call id (lease {lease}, seq {seq}, ack {ack})")
        client = self._clients.get(lease)
        if client is not None:
            self._ack(client, ack)
            if seq <= client.acked:
                self.refused += 1
                return Check.STALE, None
            saved = client.records.get(seq)
            if saved is _RUNNING:
                return Check.RUNNING, None
            if saved is not None:
                self.duplicates += 1
                return Check.DONE, saved
        if not self._lease_valid(lease):
            self.refused += 1
            return Check.EXPIRED, None
        if client is None:
            client = self._clients[lease] = _Client()
            self._ack(client, ack)
        if len(client.records) >= self.window:
            self.refused += 1
            return Check.WINDOW_FULL, None
        client.records[seq] = _RUNNING
        return Check.NEW, None

    def finish(self, lease: int, seq: int, reply: Any) -> None:
        """The call ran: keep its reply (a result or an error; not None) for retries."""
        if reply is None:
            raise ValueError("a saved reply cannot be None")
        client = self._clients.get(lease)
        if client is not None and client.records.get(seq) is _RUNNING:
            if seq <= client.acked:          # acknowledged while it ran: nobody will ask
                del client.records[seq]
            else:
                client.records[seq] = reply

    def forget(self, lease: int, seq: int) -> None:
        """The call did not run after all (refused before its handler started): a retry
        may run it."""
        client = self._clients.get(lease)
        if client is not None and client.records.get(seq) is _RUNNING:
            del client.records[seq]

    def drop_lease(self, lease: int) -> int:
        """The lease expired: forget its records (a call from it is refused from now on,
        since the authority says it is expired). Returns how many records went."""
        client = self._clients.pop(lease, None)
        return len(client.records) if client is not None else 0

    def records(self, lease: int | None = None) -> int:
        """Records kept (for one lease, or all)."""
        if lease is not None:
            client = self._clients.get(lease)
            return len(client.records) if client is not None else 0
        return sum(len(c.records) for c in self._clients.values())

    @staticmethod
    def _ack(client: _Client, ack: int) -> None:
        # Every request carries an ack: look at the seqs it newly acknowledges, or at the
        # records if there are fewer of those (an ack may jump far ahead), not at both.
        if ack > client.acked:
            records = client.records
            if ack - client.acked <= len(records):
                acked = range(client.acked + 1, ack + 1)
            else:
                acked = [seq for seq in records if seq <= ack]
            for seq in acked:
                saved = records.get(seq)
                if saved is not None and saved is not _RUNNING:
                    del records[seq]
            client.acked = ack


class CallNumbers:
    """A client's numbering of its exactly-once calls: seq 1, 2, ... and the ack to send
    (every call at or below it has ended). ``window`` bounds the calls not yet ended, as
    the server bounds the records it keeps per lease."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self._next = 1
        self._ended: set[int] = set()
        self._first_open = 1                 # the lowest seq not ended

    @property
    def ack(self) -> int:
        return self._first_open - 1

    def full(self) -> bool:
        """True while ``window`` calls have not ended: a new one must wait."""
        return self._next - self._first_open >= self.window

    def next(self) -> int:
        if self.full():
            raise RuntimeError(f"{self.window} exactly-once calls have not ended")
        seq = self._next
        self._next += 1
        return seq

    def ended(self, seq: int) -> None:
        """Call ``seq`` ended (any outcome): it may be acknowledged."""
        if not self._first_open <= seq < self._next:
            return
        self._ended.add(seq)
        while self._first_open in self._ended:
            self._ended.remove(self._first_open)
            self._first_open += 1
