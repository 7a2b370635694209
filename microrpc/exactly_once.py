"""Exactly-once calls (RIFL, SOSP'15): the server's completion records and the client's ids.

The bookkeeping as plain objects fed events and a clock, tested on their own
(tests/microrpc/test_exactly_once.py); they run in C-level code (microrpc/_once.pyx). The
server core checks and records calls with :class:`CompletionTable` (``Server`` registers a
method ``idempotent=False`` to have them), the client core numbers them with
:class:`CallNumbers` (``Client(exactly_once=True)``), and proclets keep one table per
proclet, which migrates with it. The wire form is in docs/wire.md (*Exactly-once calls*).

How it works. A client holds a **lease** (an id the server side hands out, never twice,
kept alive by the client's calls; :class:`LocalLeases` is a server's own authority, and
proclets plug the controller's leases in as a callable). It numbers its calls
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

from microrpc._once import (  # the rules run in C-level code: see _once.pyx
    DEFAULT_LEASE_TTL, DEFAULT_WINDOW, CachedLeases, CallNumbers, Check, CompletionTable,
    LocalLeases,
)

__all__ = [
    "CachedLeases", "CallNumbers", "Check", "CompletionTable", "LocalLeases",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_WINDOW",
]
