# cython: language_level=3
"""The Breakwater policy: AIMD on a global credit pool, per-session absolute windows,
demand speculation for drained sessions, and delay-based AQM.

Follows the authors' reference implementation (caladan ``breakwater/src/bw_server.c``),
re-derived for a Python server; ``docs/breakwater.md`` has the algorithm, the parameters and
how their defaults were chosen. No code is shared with the reference.

Vocabulary:

* pool (C_total): the number of credits the server is willing to have outstanding. A credit
  is the right to have one request outstanding at the server.
* window of a session: the credits it holds, its in-flight requests included. Every response
  carries it as an absolute value, so a lost or reordered update corrects itself.
* issued (C_issued): the sum of all windows. The pool may sit below it for a while (the pool
  shrank): windows are then taken back one per response ("negative credits"), lazily.
* drained: a session with window 0 and nothing in flight is parked on a FIFO list; it cannot
  send, and it no longer tells us its demand, so the control loop *speculates*: when the pool
  has room, each drained session gets one credit in a standalone credit frame.

The session lifecycle is the table ``SESSION_TABLE`` below: for every (state, event) it names
the action that runs and the states the session may be in afterwards. The public methods look
the action up in that table; a pair missing from it is a caller bug and raises SessionError.

Compiled because the server calls it once or twice per request: as a Python class the calls
cost about a microsecond per request, a few per cent of a core at 4x overload. The table
stays the specification: at import it is compiled into a small C array of action codes
(``_compile``), and the methods switch on that array. An entry the compiled code cannot run
(an unknown action, or one that needs a session in the UNKNOWN row) fails the import, so
the table and the code cannot drift apart.
"""
cimport cython
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from enum import IntEnum

from ._policy import (
    DEFAULT_AQM_THRESHOLD_NS,
    DEFAULT_TARGET_DELAY_NS,
    OverloadPolicy,
    PolicyStatistics,
)

__all__ = [
    "Breakwater",
    "SessionError",
    "SessionState",
    "SessionEvent",
    "SESSION_TABLE",
]


class SessionError(RuntimeError):
    """An event that the session table does not allow (a bug in the caller's call order)."""


class SessionState(IntEnum):
    UNKNOWN = 0  # never seen, or closed and forgotten
    ACTIVE = 1  # holds credit or has requests in flight
    DRAINED = 2  # window 0, nothing in flight: parked, waiting for a speculative credit
    CLOSED = 3  # connection closed while requests were still running; forgotten at the last


class SessionEvent(IntEnum):
    OPEN = 0  # open_session
    REQUEST = 1  # on_request
    REJECT = 2  # on_reject (after on_request returned False)
    COMPLETE = 3  # on_complete
    GRANT = 4  # on_tick hands this drained session a speculative credit
    CLOSE = 5  # close_session


U, A, D, C = SessionState.UNKNOWN, SessionState.ACTIVE, SessionState.DRAINED, SessionState.CLOSED
E = SessionEvent

#: (state, event) -> (action, states possible afterwards). Read it as the specification.
SESSION_TABLE = {
    # --- a session we have never seen (or closed and forgot)
    (U, E.OPEN): ("register", (A,)),  # window 1: the credit the client spent on this request
    (U, E.REQUEST): ("register_and_admit", (A,)),  # server skipped open_session: same thing
    (U, E.CLOSE): ("nothing", (U,)),  # connection closed before this session sent anything
    # --- holds credit, or has requests in flight
    (A, E.OPEN): ("current_window", (A,)),  # repeated open: harmless
    (A, E.REQUEST): ("admit", (A,)),  # AQM check, per-session cap, surplus revocation
    (A, E.REJECT): ("reject_window", (A, D)),  # window may fall to 0: park it
    (A, E.COMPLETE): ("complete", (A, D)),
    (A, E.CLOSE): ("close", (C, U)),  # C while its requests still run, else forgotten
    # --- parked on the drained list
    (D, E.OPEN): ("current_window", (D,)),
    (D, E.REQUEST): ("unpark_and_admit", (A,)),  # sent on a credit it held before a revocation
    (D, E.GRANT): ("grant", (A,)),  # demand speculation: one credit, standalone frame
    (D, E.CLOSE): ("close", (U,)),
    # --- closed, with requests still running
    (C, E.OPEN): ("reopen", (A,)),  # the session id came back on a new connection
    (C, E.REQUEST): ("refuse", (C,)),  # cannot happen on a closed connection: reject
    (C, E.REJECT): ("closed_window", (C,)),
    (C, E.COMPLETE): ("complete_closed", (C, U)),  # forgotten with its last request
    (C, E.CLOSE): ("nothing", (C,)),
}
del U, A, D, C, E

# ----------------------------------------------------------------------- compiled table

# The C names of SessionState and SessionEvent (checked against them below).
cdef enum:
    ST_UNKNOWN = 0
    ST_ACTIVE = 1
    ST_DRAINED = 2
    ST_CLOSED = 3
    N_STATES = 4

cdef enum:
    EV_OPEN = 0
    EV_REQUEST = 1
    EV_REJECT = 2
    EV_COMPLETE = 3
    EV_GRANT = 4
    EV_CLOSE = 5
    N_EVENTS = 6

# One code per action name of SESSION_TABLE; 0 is a pair the table leaves out.
cdef enum:
    ACT_ILLEGAL = 0
    # window actions: every event but REQUEST, result a window
    ACT_REGISTER
    ACT_CURRENT_WINDOW
    ACT_REOPEN
    ACT_REJECT_WINDOW
    ACT_CLOSED_WINDOW
    ACT_COMPLETE
    ACT_COMPLETE_CLOSED
    ACT_GRANT
    ACT_CLOSE
    ACT_NOTHING
    # admission actions: REQUEST only, result admitted or not
    ACT_REGISTER_AND_ADMIT
    ACT_ADMIT
    ACT_UNPARK_AND_ADMIT
    ACT_REFUSE

# The two kinds are kept apart because their results differ: an admission action under
# OPEN (or the reverse) would have no meaning, so _compile refuses it.
_WINDOW_ACTIONS = {
    "register": ACT_REGISTER,
    "current_window": ACT_CURRENT_WINDOW,
    "reopen": ACT_REOPEN,
    "reject_window": ACT_REJECT_WINDOW,
    "closed_window": ACT_CLOSED_WINDOW,
    "complete": ACT_COMPLETE,
    "complete_closed": ACT_COMPLETE_CLOSED,
    "grant": ACT_GRANT,
    "close": ACT_CLOSE,
    "nothing": ACT_NOTHING,
}
_REQUEST_ACTIONS = {
    "register_and_admit": ACT_REGISTER_AND_ADMIT,
    "admit": ACT_ADMIT,
    "unpark_and_admit": ACT_UNPARK_AND_ADMIT,
    "refuse": ACT_REFUSE,
}
# In state UNKNOWN there is no session record: only these actions run without one (any
# other would dereference None).
_SESSIONLESS_ACTIONS = frozenset({"register", "register_and_admit", "nothing"})

if (
    len(SessionState) != N_STATES
    or (SessionState.UNKNOWN, SessionState.ACTIVE, SessionState.DRAINED, SessionState.CLOSED)
    != (ST_UNKNOWN, ST_ACTIVE, ST_DRAINED, ST_CLOSED)
    or len(SessionEvent) != N_EVENTS
    or (
        SessionEvent.OPEN,
        SessionEvent.REQUEST,
        SessionEvent.REJECT,
        SessionEvent.COMPLETE,
        SessionEvent.GRANT,
        SessionEvent.CLOSE,
    )
    != (EV_OPEN, EV_REQUEST, EV_REJECT, EV_COMPLETE, EV_GRANT, EV_CLOSE)
):
    raise ImportError("breakwater._server: SessionState/SessionEvent differ from their C codes")

# Records hold a state's C code; session_state() hands out the member: _STATES[code]
# (the check above makes a member's position its value).
_STATES = tuple(SessionState)


def _compile(table):
    """The action codes of ``table`` (a SESSION_TABLE) as one tuple per state, one entry per
    event, ACT_ILLEGAL where it has no entry. ValueError for an entry the methods below
    cannot run."""
    rows = [[ACT_ILLEGAL] * N_EVENTS for _ in range(N_STATES)]
    for key, (action, _after) in table.items():
        state, event = key
        if not isinstance(state, SessionState) or not isinstance(event, SessionEvent):
            raise ValueError(f"SESSION_TABLE key {key!r} is not a (SessionState, SessionEvent)")
        request = event == SessionEvent.REQUEST
        code = (_REQUEST_ACTIONS if request else _WINDOW_ACTIONS).get(action)
        if code is None:
            kind = "an admission action (REQUEST)" if request else "a window action"
            raise ValueError(
                f"SESSION_TABLE[{state.name}, {event.name}]: {action!r} is not {kind}"
            )
        if state == SessionState.UNKNOWN and action not in _SESSIONLESS_ACTIONS:
            raise ValueError(
                f"SESSION_TABLE[{state.name}, {event.name}]: {action!r} needs a session record"
            )
        rows[state][event] = code
    return tuple(tuple(row) for row in rows)


# _ACTION[state][event]: the indices are C enum values, and the only states stored in a
# session record are those constants, so no index here comes from outside.
cdef unsigned char _ACTION[N_STATES][N_EVENTS]


cdef int _load(tuple rows) except -1:
    cdef int st, ev
    for st in range(N_STATES):
        for ev in range(N_EVENTS):
            _ACTION[st][ev] = rows[st][ev]
    return 0


_load(_compile(SESSION_TABLE))


def _compiled():
    """The table the methods switch on, in _compile's shape (for tests)."""
    return tuple(tuple(_ACTION[st][ev] for ev in range(N_EVENTS)) for st in range(N_STATES))


cdef int _illegal(object sid, int state, int event) except -1:
    raise SessionError(
        f"session {sid}: event {SessionEvent(event).name} is not allowed in state "
        f"{SessionState(state).name} (see breakwater.SESSION_TABLE)"
    )


# ----------------------------------------------------------------------- the policy


@cython.final
cdef class _Session:
    # Fields in _server.pxd.

    def __init__(self, sid):
        self.sid = sid
        self.state = ST_ACTIVE


cdef class Breakwater:
    """Credit-based overload control (Breakwater, OSDI'20) for one server.

    Every parameter has a default for a Python server with ~100 us handlers; times are in ns.

    target_delay_ns
        d_t, the queueing delay the AIMD steers to. Default 500 us (DEFAULT_TARGET_DELAY_NS:
        the reason is next to it).
    aqm_threshold_ns
        reject a request at once when the queueing delay is at or above this (but see
        aqm_min_utilization). Default 2 * d_t, as in every configuration the authors shipped.
    tick_interval_ns
        control-loop period. The reference runs every network RTT (10 us); a Python I/O loop
        cannot, and a tick costs a few us, so 200 us: about 2 handler times, 1.5 ticks per
        d_t. The simulation showed no gain from 100 us and little loss at 500 us.
    alpha
        additive increase per session per tick: the pool grows by max(alpha * sessions, 1)
        each tick while the delay is below target (a fractional carry keeps the remainder),
        and only while the pool binds (pool < 2 * issued + min_pool; the reference has no
        such rule and winds up to its ceiling at low load). The reference adds
        0.001 * sessions per 10 us; 0.02 per 200 us keeps that rate per unit of time
        (100 credits/ms at 1,000 sessions). In the simulation 0.005 or less starved the server
        (goodput 0.6-0.8 mu at 2x) and 0.05 doubled the rejects for no goodput.
    beta
        multiplicative decrease per tick: the pool is multiplied by
        max(1 - beta * (d - d_t) / d_t, md_floor) each tick the delay d is at or above target.
        The reference uses 0.02 per 10 us. On one worker the delay signal is noisy, and a
        strong decrease every tick wasted capacity: 0.05 beat 0.1-0.4 on goodput at the same
        p99 in the simulation.
    md_floor
        the largest single decrease, as a factor (0.5: never worse than halving, as the paper).
    min_pool
        the pool never goes below this (the reference uses its core count). 1: a Python server
        runs one handler at a time; also the pool after the last session closes.
    max_window
        per-session window cap (64 in the reference); requests beyond it are rejected.
    aqm_min_utilization, utilization_window_ns, busy_run_requests, slack_aqm_factor
        the AQM threshold applies while the server is busy at least ``aqm_min_utilization``
        (0.7) of the time, an EWMA over about ``utilization_window_ns`` (50 ms), or has
        completed ``busy_run_requests`` (30) requests without going idle in between;
        otherwise the threshold is ``slack_aqm_factor`` (4) times higher. Not in the
        reference, which runs on ten cores where a queue at light load is rare. On one worker
        a queue at light load is a Poisson burst that drains by itself (at 0.5 load the wait
        passes 1 ms ~0.5 % of the time, and no-control's p99 is within the SLO up to ~0.7
        load), while the credits' incast, which the AQM is there for, only happens when the
        pool binds, that is when the server is nearly always busy. 0.7: about the highest load at which one M/M/1 worker's p99 still
        fits the issue's SLO. 50 ms: a shorter window let a burst at half load flip the gate
        by itself. The busy run catches a step up at once, which a 50 ms average cannot. It
        counts completions, not time, because the process is sometimes descheduled for a few
        ms (measured: 1-3.5 ms stalls, several per 5 s, on a shared 2-core machine); a stall
        completes nothing and is no sign of overload, but a clock-based run saw it as one.
        The slack factor weighs the same stalls against a step up: the requests read after a
        stall carry the whole stall as loop lag (3.0-3.6 ms traced), which a factor of 3
        rejected (0.5x rejects 0.095 %, the issue allows 0.1 %); a factor of 5 let a step up
        queue 5 ms before the busy run ended the slack (p99 2-3.5 SLO for 50 ms, convergence
        93-103 SLO). 4: 0.04 % and 16 [16..36] SLO (bench, 3 repetitions each).

    A compiled class cannot inherit from the OverloadPolicy ABC; it is registered as a
    virtual subclass instead (below), so ``isinstance(bw, OverloadPolicy)`` holds.
    """

    # The fields are declared in _server.pxd (microrpc's server calls the policy through it).

    uses_credits = True

    def __init__(
        self,
        *,
        target_delay_ns=DEFAULT_TARGET_DELAY_NS,
        aqm_threshold_ns=None,
        tick_interval_ns=200_000,
        alpha=0.02,
        beta=0.05,
        md_floor=0.5,
        min_pool=1,
        max_window=64,
        aqm_min_utilization=0.7,
        utilization_window_ns=50_000_000,
        slack_aqm_factor=4.0,
        busy_run_requests=30,
    ):
        # Checked as Python objects, before the typed fields would convert (or refuse) them.
        if aqm_threshold_ns is None:
            aqm_threshold_ns = 2 * target_delay_ns
        for name, value in (
            ("target_delay_ns", target_delay_ns),
            ("aqm_threshold_ns", aqm_threshold_ns),
            ("tick_interval_ns", tick_interval_ns),
            ("min_pool", min_pool),
            ("max_window", max_window),
            ("utilization_window_ns", utilization_window_ns),
            ("busy_run_requests", busy_run_requests),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta!r}")
        if not 0 < md_floor < 1:
            raise ValueError(f"md_floor must be in (0, 1), got {md_floor!r}")
        if not 0 <= aqm_min_utilization <= 1:
            raise ValueError(f"aqm_min_utilization must be in [0, 1], got {aqm_min_utilization!r}")
        if not slack_aqm_factor >= 1:
            raise ValueError(f"slack_aqm_factor must be >= 1, got {slack_aqm_factor!r}")
        self.target_delay_ns = target_delay_ns
        self.aqm_threshold_ns = aqm_threshold_ns
        self.tick_interval_ns = tick_interval_ns
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.md_floor = float(md_floor)
        self.min_pool = min_pool
        self.max_window = max_window
        self.aqm_min_utilization = float(aqm_min_utilization)
        self.utilization_window_ns = utilization_window_ns
        self.slack_aqm_factor = float(slack_aqm_factor)
        self.busy_run_requests = busy_run_requests
        self._busy_run_done = 0
        self._busy_since = 0
        self._busy_ns = 0
        self._util_at = -1
        self._utilization = 0.0

        self._sessions = {}
        self._drained = {}
        self._n_sessions = 0
        self._pool = min_pool
        self._issued = 0
        self._carry = 0.0
        self._in_flight = 0
        self._admitted = 0
        self._rejected_aqm = 0
        self._rejected_limit = 0
        self._completed = 0
        self._credit_messages = 0
        self._credits_granted = 0
        self._last_delay = 0
        self._ticks = 0
        self._pool_min = min_pool
        self._pool_max = min_pool

    def __repr__(self):
        return (
            f"Breakwater(target_delay_ns={self.target_delay_ns}, "
            f"aqm_threshold_ns={self.aqm_threshold_ns}, tick_interval_ns={self.tick_interval_ns}, "
            f"alpha={self.alpha}, beta={self.beta}, md_floor={self.md_floor}, "
            f"min_pool={self.min_pool}, max_window={self.max_window}, "
            f"aqm_min_utilization={self.aqm_min_utilization}, "
            f"utilization_window_ns={self.utilization_window_ns}, "
            f"slack_aqm_factor={self.slack_aqm_factor}, "
            f"busy_run_requests={self.busy_run_requests})"
        )

    # ------------------------------------------------------------------ public interface
    # Each method finds the session's state and runs the action SESSION_TABLE names for it.
    # now_ns is typed where it is used; open_session, close_session and on_reject ignore it.

    cpdef int64_t open_session(self, object sid, object now_ns) except -1:
        """Register ``sid``; returns the window it holds (1: the credit its first request
        used). The server need not send it: the response to that request carries the real one.
        """
        cdef _Session s = self._find(sid)
        return self._window_event(sid, s, ST_UNKNOWN if s is None else s.state, EV_OPEN)

    def close_session(self, sid, now_ns):
        cdef _Session s = self._find(sid)
        self._window_event(sid, s, ST_UNKNOWN if s is None else s.state, EV_CLOSE)

    cpdef bint on_request(
        self, object sid, int64_t demand, int64_t now_ns, int64_t queue_delay_ns
    ) except -1:
        cdef _Session s
        cdef int state
        cdef bint idle, admitted
        if demand < 0:
            # Checked before any table action, so a bad demand changes no state at all.
            raise ValueError(f"demand must be >= 0, got {demand!r} (session {sid})")
        self._last_delay = queue_delay_ns
        s = self._find(sid)
        state = ST_UNKNOWN if s is None else s.state
        idle = self._in_flight == 0
        if (self._utilization < self.aqm_min_utilization
                and (idle or self._busy_run_done < self.busy_run_requests)):
            # Slack: a queue now is a burst that drains by itself; only a far longer one
            # is rejected (see aqm_min_utilization).
            queue_delay_ns = <int64_t>(<double>queue_delay_ns / self.slack_aqm_factor)
        admitted = self._request_event(sid, s, state, demand, queue_delay_ns)
        if idle and self._in_flight:
            self._busy_since = now_ns
            self._busy_run_done = 0
        return admitted

    cpdef int64_t on_reject(self, object sid, object now_ns) except -1:
        cdef _Session s = self._find(sid)
        return self._window_event(sid, s, ST_UNKNOWN if s is None else s.state, EV_REJECT)

    cpdef int64_t on_complete(self, object sid, int64_t now_ns) except -1:
        cdef _Session s = self._find(sid)
        cdef int64_t window = self._window_event(
            sid, s, ST_UNKNOWN if s is None else s.state, EV_COMPLETE
        )
        self._busy_run_done += 1
        if self._in_flight == 0:
            self._busy_ns += now_ns - self._busy_since
        return window

    @property
    def utilization(self):
        """The server's busy fraction, an EWMA over about utilization_window_ns."""
        return self._utilization

    @cython.final
    cdef int _update_utilization(self, int64_t now_ns) except -1:
        cdef int64_t busy = self._busy_ns
        cdef int64_t elapsed
        cdef double weight
        if self._in_flight:
            busy += now_ns - self._busy_since
            self._busy_since = now_ns
        self._busy_ns = 0
        if self._util_at < 0:
            self._util_at = now_ns
            return 0
        elapsed = now_ns - self._util_at
        self._util_at = now_ns
        if elapsed <= 0:
            return 0
        weight = <double>elapsed / <double>self.utilization_window_ns
        if weight > 1.0:
            weight = 1.0
        self._utilization += weight * (<double>busy / <double>elapsed - self._utilization)
        return 0

    cpdef list on_tick(self, int64_t now_ns, int64_t queue_delay_ns):
        """AIMD on the pool, then demand speculation: one credit per drained session, oldest
        first, while the pool has room. Returns the standalone credit frames to send."""
        cdef int64_t n, target, pool, whole, ceiling, room
        cdef double step, factor
        cdef _Session s
        cdef list grants = []
        self._last_delay = queue_delay_ns
        self._ticks += 1
        self._update_utilization(now_ns)
        n = self._n_sessions
        target = self.target_delay_ns
        pool = self._pool
        if queue_delay_ns < target:
            # Anti-windup (not in the reference): grow only while the pool binds, i.e. is
            # less than twice what is issued. At low load the reference climbs to its
            # ceiling (64 x sessions) and, on a spike, must first be cut back down from there.
            if pool < 2 * self._issued + self.min_pool:
                step = self.alpha * <double>n
                self._carry += step if step > 1.0 else 1.0  # A = max(alpha * N, 1), Eq. (3)
                whole = <int64_t>self._carry
                pool += whole
                self._carry -= <double>whole
        else:
            # d == d_t decreases by a factor 1, as the reference: it only resets the carry.
            factor = 1.0 - self.beta * <double>(queue_delay_ns - target) / <double>target
            if factor < self.md_floor:
                factor = self.md_floor
            pool = <int64_t>(<double>pool * factor)
            self._carry = 0.0
        ceiling = self.max_window * n
        if pool > ceiling:
            pool = ceiling
        if pool < self.min_pool:
            pool = self.min_pool
        self._pool = pool
        if pool < self._pool_min:
            self._pool_min = pool
        if pool > self._pool_max:
            self._pool_max = pool

        room = pool - self._issued
        while room > 0 and self._drained:
            s = self._pop_oldest_drained()
            self._window_event(s.sid, s, s.state, EV_GRANT)
            grants.append((s.sid, s.win))
            room -= 1
        return grants

    def statistics(self):
        return PolicyStatistics(
            policy="Breakwater",
            pool=self._pool,
            issued=self._issued,
            sessions=self._n_sessions,
            drained_sessions=len(self._drained),
            in_flight=self._in_flight,
            admitted=self._admitted,
            rejected=self._rejected_aqm + self._rejected_limit,
            rejected_aqm=self._rejected_aqm,
            rejected_limit=self._rejected_limit,
            completed=self._completed,
            credit_messages=self._credit_messages,
            credits_granted=self._credits_granted,
            last_queue_delay_ns=self._last_delay,
            ticks=self._ticks,
            pool_min=self._pool_min,
            pool_max=self._pool_max,
        )

    def session_state(self, sid):
        """The table state of ``sid`` (UNKNOWN if never seen or forgotten)."""
        cdef _Session s = self._find(sid)
        return _STATES[ST_UNKNOWN if s is None else s.state]

    def session_window(self, sid):
        """The window ``sid`` holds now (0 if unknown)."""
        cdef _Session s = self._find(sid)
        return 0 if s is None else s.win

    # ------------------------------------------------------------------ lookups

    @cython.final
    cdef inline _Session _find(self, object sid):
        """The record of ``sid``, None if it has none (state UNKNOWN)."""
        o = self._sessions.get(sid)
        return None if o is None else <_Session>o

    @cython.final
    cdef _Session _pop_oldest_drained(self):
        # The first key in insertion order; the caller checked that the dict is not empty.
        cdef Py_ssize_t pos = 0
        cdef PyObject* key
        cdef PyObject* value
        PyDict_Next(self._drained, &pos, &key, &value)
        return <_Session>self._drained.pop(<object>key)

    # ------------------------------------------------------------------ window arithmetic

    @cython.final
    cdef int64_t _update_window(self, _Session s, bint keep_alive) except -1:
        """Recompute the window of ``s`` for the response about to be sent (Eqs. 4-6 and
        the clamps of the reference ``srpc_update_window``); park it if it reaches 0."""
        cdef int64_t old = s.win
        cdef int64_t room = self._pool - self._issued
        cdef int64_t oc, win, cap
        if room > 0:
            oc = room // self._n_sessions  # overcommitment share, Eq. (4)
            if oc < 1:
                oc = 1
            win = s.pending + s.demand + oc  # Eq. (5)
            if win > old + room:
                win = old + room
        else:
            oc = 1
            # Over-issued: take one credit back with this response (Eq. 6, lazily).
            win = old - 1 if room < 0 else old
        if s.woken or self._n_sessions <= self.min_pool:
            # A session just woken by speculation (or one of very few) keeps at least its share.
            s.woken = False
            if win < oc:
                win = oc
        if keep_alive and old > 0 and win <= 0:
            # Starvation guard of the reference: a session whose requests succeed keeps a
            # credit, so only AQM rejects push sessions onto the drained list.
            win = oc
        cap = s.pending + s.demand + oc
        if win > cap:
            win = cap
        if win > self.max_window:
            win = self.max_window
        if win < s.pending:
            win = s.pending
        s.win = win
        self._issued += win - old
        if win == 0:  # implies pending == 0 (win >= pending)
            s.state = ST_DRAINED
            self._drained[s.sid] = s
        return win

    # ------------------------------------------------------------------ table actions
    # One method per action name of SESSION_TABLE. The window actions return the window
    # the session is left with (0 for those that have none), the admission actions whether
    # the request is admitted. ``s`` is None only in state UNKNOWN, whose row _compile
    # limits to the actions that do not read it.

    @cython.final
    cdef int64_t _window_event(self, object sid, _Session s, int state, int event) except -1:
        """Run the action SESSION_TABLE names for (state, event), event not REQUEST."""
        cdef int act = _ACTION[state][event]
        if act == ACT_COMPLETE:
            return self._act_complete(sid, s)
        elif act == ACT_REJECT_WINDOW:
            return self._act_reject_window(sid, s)
        elif act == ACT_REGISTER:
            return self._act_register(sid).win
        elif act == ACT_CURRENT_WINDOW:
            return s.win
        elif act == ACT_REOPEN:
            return self._act_reopen(sid, s)
        elif act == ACT_CLOSED_WINDOW:
            return self._act_closed_window(sid, s)
        elif act == ACT_COMPLETE_CLOSED:
            return self._act_complete_closed(sid, s)
        elif act == ACT_GRANT:
            return self._act_grant(sid, s)
        elif act == ACT_CLOSE:
            return self._act_close(sid, s)
        elif act == ACT_NOTHING:
            return 0
        return _illegal(sid, state, event)

    @cython.final
    cdef bint _request_event(
        self, object sid, _Session s, int state, int64_t demand, int64_t queue_delay_ns
    ) except -1:
        """Run the action SESSION_TABLE names for (state, REQUEST)."""
        cdef int act = _ACTION[state][EV_REQUEST]
        if act == ACT_ADMIT:
            return self._act_admit(sid, s, demand, queue_delay_ns)
        elif act == ACT_REGISTER_AND_ADMIT:
            return self._act_admit(sid, self._act_register(sid), demand, queue_delay_ns)
        elif act == ACT_UNPARK_AND_ADMIT:
            return self._act_unpark_and_admit(sid, s, demand, queue_delay_ns)
        elif act == ACT_REFUSE:
            return self._act_refuse(sid, s)
        return _illegal(sid, state, EV_REQUEST)

    @cython.final
    cdef _Session _act_register(self, object sid):
        # Returns the record, whose window (1: the credit the client spent on the request
        # that brought it here) is the action's result; register_and_admit needs the record.
        cdef _Session s = _Session(sid)
        self._sessions[sid] = s
        s.win = 1
        self._issued += 1
        self._n_sessions += 1
        return s

    @cython.final
    cdef int64_t _act_reopen(self, object sid, _Session s) except -1:
        s.state = ST_ACTIVE
        s.win = s.pending if s.pending > 0 else 1
        s.rejects = 0
        self._issued += s.win
        self._n_sessions += 1
        return s.win

    @cython.final
    cdef bint _act_unpark_and_admit(
        self, object sid, _Session s, int64_t demand, int64_t queue_delay_ns
    ) except -1:
        del self._drained[sid]
        s.state = ST_ACTIVE
        return self._act_admit(sid, s, demand, queue_delay_ns)

    @cython.final
    cdef bint _act_admit(
        self, object sid, _Session s, int64_t demand, int64_t queue_delay_ns
    ) except -1:
        cdef int64_t pending, cap
        s.demand = demand                   # >= 0: on_request checked it before dispatch
        pending = s.pending + 1
        # Surplus revocation at arrival: a window larger than what the client can use
        # (this request + the ones in flight + its queue) goes back to the pool now.
        cap = pending + demand
        if s.win > cap:
            self._issued -= s.win - cap
            s.win = cap
        if queue_delay_ns >= self.aqm_threshold_ns:
            s.rejects += 1
            self._rejected_aqm += 1
            return False
        if pending > self.max_window:
            s.rejects += 1
            self._rejected_limit += 1
            return False
        s.pending = pending
        if pending > s.win:
            # Sent on a credit we revoked after the client spent it (the update crossed the
            # request on the wire): the request is here, so the window covers it.
            self._issued += pending - s.win
            s.win = pending
        self._in_flight += 1
        self._admitted += 1
        return True

    @cython.final
    cdef bint _act_refuse(self, object sid, _Session s) except -1:
        s.rejects += 1
        self._rejected_limit += 1
        return False

    @cython.final
    cdef int64_t _act_reject_window(self, object sid, _Session s) except -1:
        if s.rejects <= 0:
            raise SessionError(f"on_reject({sid}) without a preceding on_request that returned False")
        s.rejects -= 1
        return self._update_window(s, False)  # a reject may take the last credit

    @cython.final
    cdef int64_t _act_closed_window(self, object sid, _Session s) except -1:
        if s.rejects <= 0:
            raise SessionError(f"on_reject({sid}) without a preceding on_request that returned False")
        s.rejects -= 1
        return 0

    @cython.final
    cdef int64_t _act_complete(self, object sid, _Session s) except -1:
        if s.pending <= 0:
            raise SessionError(f"on_complete({sid}) with no admitted request of that session in flight")
        s.pending -= 1
        self._in_flight -= 1
        self._completed += 1
        return self._update_window(s, True)

    @cython.final
    cdef int64_t _act_complete_closed(self, object sid, _Session s) except -1:
        s.pending -= 1  # CLOSED implies pending > 0: the last completion forgets the session
        self._in_flight -= 1
        self._completed += 1
        if s.pending == 0:
            del self._sessions[sid]
        return 0

    @cython.final
    cdef int64_t _act_grant(self, object sid, _Session s) except -1:
        s.state = ST_ACTIVE
        s.win = 1
        s.woken = True
        self._issued += 1
        self._credit_messages += 1
        self._credits_granted += 1
        return 1

    @cython.final
    cdef int64_t _act_close(self, object sid, _Session s) except -1:
        if s.state == ST_DRAINED:
            del self._drained[sid]
        self._issued -= s.win
        s.win = 0
        s.demand = 0
        s.rejects = 0
        self._n_sessions -= 1
        if s.pending > 0:
            s.state = ST_CLOSED
        else:
            del self._sessions[sid]
        if self._n_sessions == 0:
            # As the reference: an idle server starts the next burst from the floor.
            self._pool = self.min_pool
            self._carry = 0.0
        return 0


OverloadPolicy.register(Breakwater)
