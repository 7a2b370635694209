# cython: language_level=3
"""The server side of exactly-once calls in C-level code: leases and completion records.

The rules are microrpc.exactly_once's (its docstring has the table); this module is where
they run, because a server checks and records every exactly-once call on its I/O thread,
and the same rules written as Python methods cost ~1.5 us per call: over a tenth of a
whole call on loopback. ``microrpc.exactly_once`` re-exports what is public here.
"""
import enum
import itertools
import secrets
import time

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

# A lease lives this long without a renewal. RAMCloud uses 30 minutes; a server-local
# authority has no coordinator to ask, so a shorter one frees a dead client's records sooner.
DEFAULT_LEASE_TTL = 60.0
# Calls one lease may have unacknowledged (RIFL's client window is 512).
DEFAULT_WINDOW = 512


class Check(enum.Enum):
    """What the server does with a numbered call (microrpc.exactly_once's table)."""
    NEW = "new"
    DONE = "done"
    RUNNING = "running"
    STALE = "stale"
    EXPIRED = "expired"
    WINDOW_FULL = "window full"      # too many unacknowledged calls on this lease


# Check members by code, for the Python form of check().
cdef tuple _CHECKS = (Check.NEW, Check.DONE, Check.RUNNING, Check.STALE, Check.EXPIRED,
                      Check.WINDOW_FULL)
# A record whose call is still running (a saved reply is never None, so None is free).
cdef object _RUNNING = None


cdef class CallNumbers:
    """A client's numbering of its exactly-once calls: seq 1, 2, ... and the ack to send
    (every call at or below it has ended). ``window`` bounds the calls not yet ended, as
    the server bounds the records it keeps per lease. Each method is one C-level step, so
    threads sharing one need no lock of their own. Picklable (a proclet that calls others
    keeps its numbers in its state)."""

    def __init__(self, window=DEFAULT_WINDOW, *, _next=1, _first_open=1, _done=()):
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.next_seq = _next
        self.first_open = _first_open
        self.done = set(_done)

    def __reduce__(self):
        return (_rebuild_numbers, (self.window, self.next_seq, self.first_open,
                                   tuple(self.done)))

    @property
    def ack(self):
        return self.first_open - 1

    def full(self):
        """True while ``window`` calls have not ended: a new one must wait."""
        return self.next_seq - self.first_open >= <uint64_t>self.window

    cdef uint64_t take(self) except? 0:
        """The next number, or 0 while the window is full."""
        if self.next_seq - self.first_open >= <uint64_t>self.window:
            return 0
        self.next_seq += 1
        return self.next_seq - 1

    def next(self):
        """The next number (RuntimeError while the window is full)."""
        seq = self.take()
        if seq == 0:
            raise RuntimeError(f"{self.window} exactly-once calls have not ended")
        return seq

    def try_next(self):
        """The next number, or 0 while the window is full."""
        return self.take()

    cdef bint end(self, uint64_t seq) except -1:
        """Call ``seq`` ended (any outcome). True if the ack moved."""
        if seq == self.first_open:
            self.first_open += 1
            done = self.done
            while done and self.first_open in done:
                done.discard(self.first_open)
                self.first_open += 1
            return True
        if self.first_open < seq < self.next_seq:
            self.done.add(seq)
        return False

    def ended(self, seq):
        """Call ``seq`` ended (any outcome): it may be acknowledged."""
        if 0 < seq < (1 << 64):
            self.end(seq)


def _rebuild_numbers(window, next_seq, first_open, done):
    return CallNumbers(window, _next=next_seq, _first_open=first_open, _done=done)


cdef class CachedLeases:
    """An authority that is asked over the network (a proclets controller), in front of a
    cache: ``until`` maps a lease to the time (``clock``'s seconds) it is known valid
    until; a lease not valid there is asked of ``ask`` (``lease -> bool``, which may
    fill the cache). The cache is the caller's own dict, shared, so it can sweep it. A
    completion table checks a cached lease in C, without a Python call."""

    def __init__(self, dict until, clock, ask):
        self.until = until
        self.clock = clock
        self.ask = ask

    cpdef bint valid(self, lease) except -1:
        cdef PyObject* until = PyDict_GetItem(self.until, lease)
        if until is not NULL and <object>until > self.clock():
            return True
        return self.ask(lease)

    def __call__(self, lease):
        return self.valid(lease)


cdef class LocalLeases:
    """A server's own lease authority: ids never reused, expiry by an injected clock
    (seconds, monotonic).

    An id is this authority's ``incarnation`` (32 random bits unless given) followed by a
    32-bit count: a server that restarts must not grant again the ids it granted before,
    or a client still holding one would share it, and its completion records, with the
    client that got it anew."""

    def __init__(self, ttl=DEFAULT_LEASE_TTL, *, clock=time.monotonic, incarnation=None):
        if not ttl > 0:
            raise ValueError(f"ttl must be positive seconds, not {ttl!r}")
        if incarnation is None:
            incarnation = secrets.randbits(32) or 1
        if not 0 < incarnation < 1 << 32:
            raise ValueError("incarnation must be in 1..2**32-1")
        self.ttl = ttl
        self._clock = clock
        self._deadline = {}
        self._ids = itertools.count((incarnation << 32) + 1)

    def grant(self):
        lease = next(self._ids)
        self._deadline[lease] = self._clock() + self.ttl
        return lease

    cpdef bint renew(self, lease) except -1:
        """Keep ``lease`` alive for another ttl; False if it had already expired."""
        cdef double now = self._clock()
        cdef PyObject* deadline = PyDict_GetItem(self._deadline, lease)
        if deadline is NULL or <object>deadline <= now:
            return False
        self._deadline[lease] = now + self.ttl
        return True

    cpdef bint valid(self, lease) except -1:
        cdef PyObject* deadline = PyDict_GetItem(self._deadline, lease)
        return deadline is not NULL and <object>deadline > self._clock()

    def expired(self):
        """The leases that expired since the last call, each reported once and then
        forgotten (the caller drops their records: CompletionTable.drop_lease)."""
        now = self._clock()
        gone = [lease for lease, deadline in self._deadline.items() if deadline <= now]
        for lease in gone:
            del self._deadline[lease]
        return gone


cdef class _Client:
    """One lease's records: every seq <= ``acked`` was acknowledged; ``records`` maps a
    seq to its saved reply, or None while the call runs."""

    def __init__(self, acked=0, records=None):
        self.acked = acked
        self.records = {} if records is None else records

    def __reduce__(self):
        return (_Client, (self.acked, self.records))


cdef class CompletionTable:
    """The server's completion records (microrpc.exactly_once's table). ``lease_valid``,
    the authority: a :class:`LocalLeases` (asked to renew the lease, in C: a client that
    keeps calling keeps its lease), or any callable ``lease -> bool`` (a controller's
    check). It is not pickled with the table: a table that moves (a proclet's) is given
    its new home's authority with :meth:`rebind`."""

    def __init__(self, lease_valid, *, window=DEFAULT_WINDOW):
        if window < 1:
            raise ValueError("window must be at least 1")
        self.rebind(lease_valid)
        self.window = window
        self._clients = {}
        self.duplicates = 0
        self.refused = 0

    def rebind(self, lease_valid):
        """Use ``lease_valid`` as the authority from now on (None: a table in transit)."""
        if lease_valid is not None and not callable(lease_valid) \
                and not isinstance(lease_valid, LocalLeases):      # (CachedLeases is callable)
            raise TypeError("lease_valid must be a LocalLeases or a callable lease -> bool")
        self._lease_valid = lease_valid
        self._leases = lease_valid if isinstance(lease_valid, LocalLeases) else None
        self._cached = lease_valid if isinstance(lease_valid, CachedLeases) else None

    def __reduce__(self):
        # The authority stays behind: it belongs to the process the table lives in.
        return (_rebuild_table, (self.window, self._clients, self.duplicates, self.refused))

    cdef _Client _client(self, uint64_t lease):
        """The records of ``lease``, or None."""
        cdef PyObject* found
        if lease == self._last_lease and self._last is not None:
            return self._last
        found = PyDict_GetItem(self._clients, lease)
        if found is NULL:
            return None
        self._last_lease = lease
        self._last = <_Client>found
        return self._last

    cdef bint _valid(self, _Client client, uint64_t lease) except -1:
        """Ask the authority whether a new call of ``lease`` may run. A LocalLeases lease
        is renewed by the call, but only once half its ttl has passed since the last
        renewal: it stays alive as long, for a dict write and a float less per call."""
        cdef LocalLeases leases = self._leases
        cdef double now
        if leases is not None:
            now = leases._clock()
            if client is not None and now < client.renew_at:
                return True
            if not leases.renew(lease):
                return False
            if client is not None:
                client.renew_at = now + leases.ttl / 2
            return True
        if self._cached is not None:
            return self._cached.valid(lease)
        if self._lease_valid is None:
            raise RuntimeError("this completion table has no lease authority (rebind it)")
        return self._lease_valid(lease)

    cdef int check_code(self, uint64_t lease, uint64_t seq, uint64_t ack) except -1:
        """:meth:`check` for the server core: a CHECK_* code; the saved reply of a DONE
        call is left in ``self.saved``."""
        cdef _Client client
        cdef PyObject* found
        if lease < 1 or seq < 1 or ack >= seq:
            raise ValueError(f"malformed call id (lease {lease}, seq {seq}, ack {ack})")
        self.saved = None
        client = self._client(lease)
        if client is not None:
            if ack > client.acked:
                self._ack(client, ack)
            if seq <= client.acked:
                self.refused += 1
                return CHECK_STALE
            found = PyDict_GetItem(client.records, seq)
            if found is not NULL:
                if <object>found is _RUNNING:
                    return CHECK_RUNNING
                self.duplicates += 1
                self.saved = <object>found
                return CHECK_DONE
        if not self._valid(client, lease):
            self.refused += 1
            return CHECK_EXPIRED
        if client is None:
            client = _Client(ack)
            self._clients[lease] = client
            if self._leases is not None:
                client.renew_at = self._leases._clock() + self._leases.ttl / 2
        if len(client.records) >= self.window:
            self.refused += 1
            return CHECK_WINDOW_FULL
        client.records[seq] = _RUNNING
        return CHECK_NEW

    def check(self, lease, seq, ack):
        """Look a numbered call up; (Check, saved reply or None). NEW records it RUNNING:
        the caller runs it and then calls :meth:`finish` (or :meth:`forget` if it could
        not run it at all)."""
        try:
            code = self.check_code(lease, seq, ack)
        except (OverflowError, TypeError):     # negative, over 64 bits, not an int
            raise ValueError(f"malformed call id (lease {lease}, seq {seq}, "
                             f"ack {ack})") from None
        return _CHECKS[code], self.saved

    cpdef finish(self, lease, seq, reply):
        """The call ran: keep its reply (a result or an error; not None) for retries."""
        cdef PyObject* found
        cdef _Client client
        if reply is None:
            raise ValueError("a saved reply cannot be None")
        client = self._client(lease)
        if client is None:
            return
        found = PyDict_GetItem(client.records, seq)
        if found is not NULL and <object>found is _RUNNING:
            if seq <= client.acked:          # acknowledged while it ran: nobody will ask
                del client.records[seq]
            else:
                client.records[seq] = reply

    cpdef forget(self, lease, seq):
        """The call did not run after all (refused before its handler started): a retry
        may run it."""
        cdef PyObject* found
        cdef _Client client = self._client(lease)
        if client is None:
            return
        found = PyDict_GetItem(client.records, seq)
        if found is not NULL and <object>found is _RUNNING:
            del client.records[seq]

    def drop_lease(self, lease):
        """The lease expired: forget its records (a call from it is refused from now on,
        since the authority says it is expired). Returns how many records went."""
        client = self._clients.pop(lease, None)
        self._last = None
        return len((<_Client>client).records) if client is not None else 0

    def records(self, lease=None):
        """Records kept (for one lease, or all)."""
        cdef _Client c
        if lease is not None:
            client = self._clients.get(lease)
            return len((<_Client>client).records) if client is not None else 0
        return sum(len(c.records) for c in self._clients.values())

    cdef int _ack(self, _Client client, uint64_t ack) except -1:
        # Every request carries an ack: look at the seqs it newly acknowledges, or at the
        # records if there are fewer of those (an ack may jump far ahead), not at both.
        cdef dict records = client.records
        cdef uint64_t seq
        cdef PyObject* found
        if ack - client.acked <= <uint64_t>len(records):
            for seq in range(client.acked + 1, ack + 1):
                found = PyDict_GetItem(records, seq)
                if found is not NULL and <object>found is not _RUNNING:
                    del records[seq]
        else:
            for key in [k for k, v in records.items() if k <= ack and v is not _RUNNING]:
                del records[key]
        client.acked = ack
        return 0


def _rebuild_table(window, clients, duplicates, refused):
    cdef CompletionTable table = CompletionTable(None, window=window)
    table._clients = clients
    table._last = None
    table.duplicates = duplicates
    table.refused = refused
    return table
