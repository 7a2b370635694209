"""The client side of Breakwater: one credit state machine per logical client session.

A pure object: the microrpc client feeds it submissions, responses, credit frames and the
time, and it answers what to transmit now, what to hold, and what to fail. It never reads a
clock and never touches a socket.

Rules (from the reference client, caladan ``breakwater/src/bw_client.c``, with the changes
``docs/breakwater.md`` explains):

* a request may be transmitted only while ``in_flight < window``; one credit per request;
* the first request of a session is sent on an implicit window of 1: it registers the session
  at the server, and its response carries the real window;
* without credit a request waits in a bounded FIFO queue (``max_queue``) for at most
  ``max_wait_ns``; a full queue rejects the new request at once, an expired one is handed
  back by ``expire()``; the caller fails both with ``Overloaded`` (client-side);
* every response (result, error or reject) returns one credit and carries the new absolute
  window; a standalone credit frame carries a window only;
* a response without credit information (window None) means the server does not use credits:
  from then on the session is unlimited.

The transitions are the table ``CLIENT_TABLE``: for every (state, event) the action that runs
and the states possible afterwards. The methods look the action up in it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, Hashable, Sequence, TypeVar

__all__ = [
    "ClientCredits",
    "ClientStatistics",
    "ClientState",
    "ClientEvent",
    "Submit",
    "CLIENT_TABLE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_WAIT_NS",
]

T = TypeVar("T", bound=Hashable)

# The reference client queue holds 16 requests (CRPC_QLEN); at the ~20 requests/s a
# simulated client offers in the overload benchmark, 16 is never the binding limit: max_wait is.
DEFAULT_MAX_QUEUE = 16
# How long a request may wait for credit: the reference's 1x mean service time (there 10 us,
# here ~100 us). The wait adds to every queued request's latency, and a client with many
# calls in flight (a few public clients sharing a server, not 1,000 one-call sessions) gets
# its credits back with its responses, so its queue drains within a service time or not at
# all. Measured (session 4) with Breakwater at 2x mu, exp 100 us service, SLO 1.8 ms:
# `microrpc bench ADDR --driver uvloop --clients 4 --rate 19000 --client-max-wait 500us`
# gave p99 2.30 ms and reject p99 1.64 ms, `--client-max-wait 100us` p99 1.37 ms and 0.80
# ms, goodput 0.87-0.92 mu both; the 1,000-session engine (`--driver engine`) was unchanged
# (p99 1.67 / 1.65 ms at 2x, 1.87 / 1.75 ms at 4x). A drained one-call session still gets
# speculative credit at the next tick.
DEFAULT_MAX_WAIT_NS = 100_000


class Submit(IntEnum):
    """What ``ClientCredits.submit`` tells the caller to do with the request."""

    SEND = 0  # transmit now: a credit was spent
    QUEUED = 1  # no credit: held here until a credit arrives, it expires, or it is cancelled
    REJECTED = 2  # the local queue is full: fail the call with Overloaded (client-side)


class ClientState(IntEnum):
    READY = 0  # in_flight < window (so the queue is empty): a submission is sent at once
    BLOCKED = 1  # in_flight >= window: submissions queue; credits drain the queue in order
    UNLIMITED = 2  # the server does not use credits: everything is sent at once


class ClientEvent(IntEnum):
    SUBMIT = 0
    RESPONSE = 1  # a response or reject with a window: one credit back, new window
    RESPONSE_UNLIMITED = 2  # a response without credit information
    CREDIT = 3  # a standalone credit frame
    EXPIRE = 4
    CANCEL = 5
    RESET = 6  # the connection was lost: nothing in flight, back to the implicit window of 1


R, B, U = ClientState.READY, ClientState.BLOCKED, ClientState.UNLIMITED
E = ClientEvent

#: (state, event) -> (action, states possible afterwards). Read it as the specification.
CLIENT_TABLE: dict[tuple[ClientState, ClientEvent], tuple[str, tuple[ClientState, ...]]] = {
    (R, E.SUBMIT): ("send", (R, B)),  # spend a credit; BLOCKED if it was the last
    (B, E.SUBMIT): ("enqueue", (B,)),  # or REJECTED when the queue is full
    (U, E.SUBMIT): ("send", (U,)),
    (R, E.RESPONSE): ("window_and_drain", (R, B)),  # queue is empty: nothing to drain
    (B, E.RESPONSE): ("window_and_drain", (R, B)),
    (U, E.RESPONSE): ("window_and_drain", (R, B)),  # the server started to send windows
    (R, E.RESPONSE_UNLIMITED): ("unlimit", (U,)),
    (B, E.RESPONSE_UNLIMITED): ("unlimit", (U,)),  # the whole queue goes out
    (U, E.RESPONSE_UNLIMITED): ("unlimit", (U,)),
    (R, E.CREDIT): ("window_and_drain", (R, B)),
    (B, E.CREDIT): ("window_and_drain", (R, B)),
    (U, E.CREDIT): ("window_and_drain", (R, B)),
    (R, E.EXPIRE): ("nothing", (R,)),  # READY has an empty queue
    (B, E.EXPIRE): ("drop_expired", (B,)),
    (U, E.EXPIRE): ("nothing", (U,)),
    (R, E.CANCEL): ("not_queued", (R,)),  # READY has an empty queue
    (B, E.CANCEL): ("unqueue", (B,)),
    (U, E.CANCEL): ("not_queued", (U,)),
    (R, E.RESET): ("reset", (R,)),
    (B, E.RESET): ("reset", (R, B)),  # the head of the queue goes out on the implicit credit
    (U, E.RESET): ("reset", (R,)),
}
del R, B, U, E

_READY = ClientState.READY
_BLOCKED = ClientState.BLOCKED
_UNLIMITED = ClientState.UNLIMITED
_SEND = Submit.SEND
_QUEUED = Submit.QUEUED
_REJECTED = Submit.REJECTED
_NOTHING: tuple = ()  # shared "no tokens" answer: the common case allocates nothing

# Windows are absolute credit counts; anything beyond this is a corrupt value, not a window.
MAX_WINDOW_VALUE = 1 << 31


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    state: str
    window: int | None  # None: unlimited
    in_flight: int
    queued: int  # waiting now
    sent: int  # transmitted (one credit each, except in UNLIMITED)
    sent_from_queue: int  # of which waited in the queue first
    rejected: int  # queue full at submit
    expired: int
    cancelled: int
    responses: int
    credit_frames: int
    max_queued: int  # deepest the queue has been


class ClientCredits(Generic[T]):
    """Credit state machine of one client session. Tokens are opaque to it (call ids,
    futures...); it hands them back in FIFO order when they may be sent or must be failed.

    Methods that return tokens return a sequence the caller must not modify (an empty tuple
    when there is nothing, so the common case allocates nothing).
    """

    __slots__ = (
        "max_queue",
        "max_wait_ns",
        "_state",
        "_window",
        "_in_flight",
        "_queue",
        "_sent",
        "_sent_from_queue",
        "_rejected",
        "_expired",
        "_cancelled",
        "_responses",
        "_credit_frames",
        "_max_queued",
    )

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE, max_wait_ns: int = DEFAULT_MAX_WAIT_NS) -> None:
        if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 0:
            raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
        if not isinstance(max_wait_ns, int) or isinstance(max_wait_ns, bool) or max_wait_ns < 0:
            raise ValueError(f"max_wait_ns must be an int >= 0, got {max_wait_ns!r}")
        self.max_queue = max_queue
        self.max_wait_ns = max_wait_ns
        self._state = _READY
        self._window = 1  # implicit: the first request registers the session
        self._in_flight = 0
        self._queue: deque[tuple[int, T]] = deque()  # (enqueue time, token), FIFO
        self._sent = 0
        self._sent_from_queue = 0
        self._rejected = 0
        self._expired = 0
        self._cancelled = 0
        self._responses = 0
        self._credit_frames = 0
        self._max_queued = 0

    def __repr__(self) -> str:
        w = "unlimited" if self._state == _UNLIMITED else self._window
        return (
            f"<ClientCredits {self._state.name} window={w} in_flight={self._in_flight} "
            f"queued={len(self._queue)}>"
        )

    # ------------------------------------------------------------------ public interface

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def window(self) -> int | None:
        """The window last granted (None: unlimited)."""
        return None if self._state == _UNLIMITED else self._window

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, token: T, now_ns: int) -> Submit:
        """A new request: SEND (transmit it now), QUEUED, or REJECTED (queue full)."""
        return _SUBMIT[self._state](self, token, now_ns)

    def demand(self) -> int:
        """Requests waiting here; piggyback it on every request transmitted."""
        return len(self._queue)

    def on_response(self, window: int | None, now_ns: int) -> Sequence[T]:
        """A response or reject arrived (one credit back). ``window`` is the server's absolute
        value, or None when the response carries no credit information. Returns the queued
        tokens to transmit now, in FIFO order; send each with ``demand()`` read afterwards.

        Call it for every response to a request this machine said SEND, also when the
        caller has given up on that call (its credit is still returned by the response).
        """
        if self._in_flight <= 0:
            raise ValueError("on_response with no request in flight (a duplicate or stray response)")
        self._in_flight -= 1
        self._responses += 1
        if window is None:
            return _RESPONSE_UNLIMITED[self._state](self, window)
        return _RESPONSE[self._state](self, window)

    def on_credit(self, window: int, now_ns: int) -> Sequence[T]:
        """A standalone credit frame: the new absolute window. Returns tokens to transmit."""
        self._credit_frames += 1
        return _CREDIT[self._state](self, window)

    def expire(self, now_ns: int) -> Sequence[T]:
        """Queued tokens that waited ``max_wait_ns`` or longer, oldest first: fail them."""
        return _EXPIRE[self._state](self, now_ns)

    def next_deadline_ns(self) -> int | None:
        """When the oldest queued token expires (call expire() then), or None if none."""
        q = self._queue
        return q[0][0] + self.max_wait_ns if q else None

    def cancel(self, token: T) -> bool:
        """Drop a queued token (call cancelled or its deadline passed). False if not queued
        (already sent, or unknown): a sent request's credit comes back with its response."""
        return _CANCEL[self._state](self, token)

    def reset(self, now_ns: int) -> Sequence[T]:
        """The connection was lost: requests in flight will get no response and the server
        forgot the session. Back to the implicit window of 1; the queue is kept, and its head
        is returned to be sent (it registers the session again)."""
        return _RESET[self._state](self, now_ns)

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            state=self._state.name,
            window=self.window,
            in_flight=self._in_flight,
            queued=len(self._queue),
            sent=self._sent,
            sent_from_queue=self._sent_from_queue,
            rejected=self._rejected,
            expired=self._expired,
            cancelled=self._cancelled,
            responses=self._responses,
            credit_frames=self._credit_frames,
            max_queued=self._max_queued,
        )

    # ------------------------------------------------------------------ table actions

    def _act_send(self, token: T, now_ns: int) -> Submit:
        self._in_flight += 1
        self._sent += 1
        if self._state == _READY and self._in_flight >= self._window:
            self._state = _BLOCKED
        return _SEND

    def _act_enqueue(self, token: T, now_ns: int) -> Submit:
        q = self._queue
        if len(q) >= self.max_queue:
            self._rejected += 1
            return _REJECTED
        q.append((now_ns, token))
        if len(q) > self._max_queued:
            self._max_queued = len(q)
        return _QUEUED

    def _act_window_and_drain(self, window: int) -> Sequence[T]:
        if window < 0 or window > MAX_WINDOW_VALUE:
            raise ValueError(f"credit window out of range: {window!r}")
        self._window = window
        return self._drain()

    def _act_unlimit(self, window: None) -> Sequence[T]:
        self._state = _UNLIMITED
        q = self._queue
        if not q:
            return _NOTHING
        out = [token for _, token in q]
        q.clear()
        self._in_flight += len(out)
        self._sent += len(out)
        self._sent_from_queue += len(out)
        return out

    def _act_drop_expired(self, now_ns: int) -> Sequence[T]:
        q = self._queue
        limit = now_ns - self.max_wait_ns
        if not q or q[0][0] > limit:
            return _NOTHING
        out = []
        while q and q[0][0] <= limit:
            out.append(q.popleft()[1])
        self._expired += len(out)
        return out

    def _act_unqueue(self, token: T) -> bool:
        q = self._queue
        for i, (_, queued) in enumerate(q):
            if queued == token:
                del q[i]
                self._cancelled += 1
                return True
        return False

    def _act_reset(self, now_ns: int) -> Sequence[T]:
        self._in_flight = 0
        self._window = 1
        return self._drain()

    def _act_nothing(self, now_ns: int) -> Sequence[T]:
        return _NOTHING

    def _act_not_queued(self, token: T) -> bool:
        return False

    def _drain(self) -> Sequence[T]:
        """Spend the credits the window allows on the queue head; settle READY/BLOCKED."""
        free = self._window - self._in_flight
        q = self._queue
        if free <= 0:
            self._state = _BLOCKED
            return _NOTHING
        if not q:
            self._state = _READY
            return _NOTHING
        n = free if free < len(q) else len(q)
        out = [q.popleft()[1] for _ in range(n)]
        self._in_flight += n
        self._sent += n
        self._sent_from_queue += n
        self._state = _READY if n < free else _BLOCKED
        return out


def _compile(event: ClientEvent) -> list:
    """One dispatch row per event, indexed by state, built from CLIENT_TABLE."""
    row = []
    for state in ClientState:
        action, _ = CLIENT_TABLE[(state, event)]  # the table is complete: KeyError = a bug here
        row.append(getattr(ClientCredits, "_act_" + action))
    return row


_SUBMIT = _compile(ClientEvent.SUBMIT)
_RESPONSE = _compile(ClientEvent.RESPONSE)
_RESPONSE_UNLIMITED = _compile(ClientEvent.RESPONSE_UNLIMITED)
_CREDIT = _compile(ClientEvent.CREDIT)
_EXPIRE = _compile(ClientEvent.EXPIRE)
_CANCEL = _compile(ClientEvent.CANCEL)
_RESET = _compile(ClientEvent.RESET)
