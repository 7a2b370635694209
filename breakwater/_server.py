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
"""
from __future__ import annotations

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
SESSION_TABLE: dict[tuple[SessionState, SessionEvent], tuple[str, tuple[SessionState, ...]]] = {
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

_UNKNOWN = SessionState.UNKNOWN
_ACTIVE = SessionState.ACTIVE
_DRAINED = SessionState.DRAINED
_CLOSED = SessionState.CLOSED


class _Session:
    __slots__ = ("sid", "state", "win", "pending", "demand", "rejects", "woken")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.state = _ACTIVE
        self.win = 0  # credits held, in-flight requests included (what responses carry)
        self.pending = 0  # admitted requests not yet completed
        self.demand = 0  # requests queued at the client, from its latest request
        self.rejects = 0  # rejects decided by on_request, waiting for on_reject
        self.woken = False  # got a speculative credit; its next window is at least oc


class Breakwater(OverloadPolicy):
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
    aqm_min_utilization, utilization_window_ns
        the AQM threshold applies while the server is busy at least this fraction of the
        time (an EWMA over about ``utilization_window_ns``, 10 ms); below it the threshold
        is ``slack_aqm_factor`` (2) times higher. Not in the reference, which runs on ten
        cores where a queue at light load is rare. On one worker a queue at light load is a
        Poisson burst that drains by itself (at 0.5 load the wait passes 1 ms ~0.5 % of the
        time, and no-control's p99 is within the SLO up to ~0.7 load), while the credits'
        incast, which the AQM is there for, only happens when the pool binds, that is when
        the server is nearly always busy. 0.7: the highest load at which a single-worker
        M/M/1 server's p99 still fits the issue's SLO; 10 ms is 5 SLOs, short against the
        100-SLO convergence budget.
    """

    __slots__ = (
        "target_delay_ns",
        "aqm_threshold_ns",
        "tick_interval_ns",
        "alpha",
        "beta",
        "md_floor",
        "min_pool",
        "max_window",
        "_sessions",
        "_drained",
        "_n_sessions",
        "_pool",
        "_issued",
        "_carry",
        "_in_flight",
        "_admitted",
        "_rejected_aqm",
        "_rejected_limit",
        "_completed",
        "_credit_messages",
        "_credits_granted",
        "_last_delay",
        "_ticks",
        "_pool_min",
        "_pool_max",
        "aqm_min_utilization",
        "utilization_window_ns",
        "slack_aqm_factor",
        "_busy_since",
        "_busy_ns",
        "_util_at",
        "_utilization",
    )

    uses_credits = True

    def __init__(
        self,
        *,
        target_delay_ns: int = DEFAULT_TARGET_DELAY_NS,
        aqm_threshold_ns: int | None = None,
        tick_interval_ns: int = 200_000,
        alpha: float = 0.02,
        beta: float = 0.05,
        md_floor: float = 0.5,
        min_pool: int = 1,
        max_window: int = 64,
        aqm_min_utilization: float = 0.7,
        utilization_window_ns: int = 50_000_000,
        slack_aqm_factor: float = 3.0,
    ) -> None:
        if aqm_threshold_ns is None:
            aqm_threshold_ns = 2 * target_delay_ns
        for name, value in (
            ("target_delay_ns", target_delay_ns),
            ("aqm_threshold_ns", aqm_threshold_ns),
            ("tick_interval_ns", tick_interval_ns),
            ("min_pool", min_pool),
            ("max_window", max_window),
            ("utilization_window_ns", utilization_window_ns),
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
        # Utilization: busy = some admitted request not yet completed. _busy_ns collects busy
        # time since the last tick; each tick folds it into the _utilization EWMA.
        self._busy_since = 0
        self._busy_ns = 0
        self._util_at = -1
        self._utilization = 0.0

        self._sessions: dict[int, _Session] = {}
        # Drained sessions in the order they drained (dict as an ordered set: O(1) unpark).
        self._drained: dict[int, _Session] = {}
        self._n_sessions = 0  # ACTIVE + DRAINED (closed sessions no longer share the pool)
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

    def __repr__(self) -> str:
        return (
            f"Breakwater(target_delay_ns={self.target_delay_ns}, "
            f"aqm_threshold_ns={self.aqm_threshold_ns}, tick_interval_ns={self.tick_interval_ns}, "
            f"alpha={self.alpha}, beta={self.beta}, md_floor={self.md_floor}, "
            f"min_pool={self.min_pool}, max_window={self.max_window}, "
            f"aqm_min_utilization={self.aqm_min_utilization}, "
            f"utilization_window_ns={self.utilization_window_ns}, "
            f"slack_aqm_factor={self.slack_aqm_factor})"
        )

    # ------------------------------------------------------------------ public interface
    # Each method finds the session's state and runs the action SESSION_TABLE names for it.

    def open_session(self, sid: int, now_ns: int) -> int:
        """Register ``sid``; returns the window it holds (1: the credit its first request
        used). The server need not send it: the response to that request carries the real one.
        """
        s = self._sessions.get(sid)
        return _OPEN[_UNKNOWN if s is None else s.state](self, sid, s)

    def close_session(self, sid: int, now_ns: int) -> None:
        s = self._sessions.get(sid)
        _CLOSE[_UNKNOWN if s is None else s.state](self, sid, s)

    def on_request(self, sid: int, demand: int, now_ns: int, queue_delay_ns: int) -> bool:
        self._last_delay = queue_delay_ns
        s = self._sessions.get(sid)
        idle = self._in_flight == 0
        if self._utilization < self.aqm_min_utilization:
            # Slack: a queue now is a burst that drains by itself; only a far longer one
            # is rejected (see aqm_min_utilization).
            queue_delay_ns = int(queue_delay_ns / self.slack_aqm_factor)
        admitted = _REQUEST[_UNKNOWN if s is None else s.state](self, sid, s, demand, queue_delay_ns)
        if idle and self._in_flight:
            self._busy_since = now_ns
        return admitted

    def on_reject(self, sid: int, now_ns: int) -> int:
        s = self._sessions.get(sid)
        return _REJECT[_UNKNOWN if s is None else s.state](self, sid, s)

    def on_complete(self, sid: int, now_ns: int) -> int:
        s = self._sessions.get(sid)
        window = _COMPLETE[_UNKNOWN if s is None else s.state](self, sid, s)
        if self._in_flight == 0:
            self._busy_ns += now_ns - self._busy_since
        return window

    @property
    def utilization(self) -> float:
        """The server's busy fraction, an EWMA over about utilization_window_ns."""
        return self._utilization

    def _update_utilization(self, now_ns: int) -> None:
        busy = self._busy_ns
        if self._in_flight:
            busy += now_ns - self._busy_since
            self._busy_since = now_ns
        self._busy_ns = 0
        if self._util_at < 0:
            self._util_at = now_ns
            return
        elapsed = now_ns - self._util_at
        self._util_at = now_ns
        if elapsed <= 0:
            return
        weight = elapsed / self.utilization_window_ns
        if weight > 1.0:
            weight = 1.0
        self._utilization += weight * (busy / elapsed - self._utilization)

    def on_tick(self, now_ns: int, queue_delay_ns: int) -> list[tuple[int, int]]:
        """AIMD on the pool, then demand speculation: one credit per drained session, oldest
        first, while the pool has room. Returns the standalone credit frames to send."""
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
                step = self.alpha * n
                self._carry += step if step > 1.0 else 1.0  # A = max(alpha * N, 1), Eq. (3)
                whole = int(self._carry)
                pool += whole
                self._carry -= whole
        else:
            # d == d_t decreases by a factor 1, as the reference: it only resets the carry.
            factor = 1.0 - self.beta * (queue_delay_ns - target) / target
            if factor < self.md_floor:
                factor = self.md_floor
            pool = int(pool * factor)
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

        grants: list[tuple[int, int]] = []
        room = pool - self._issued
        drained = self._drained
        while room > 0 and drained:
            s = drained.pop(next(iter(drained)))
            _GRANT[s.state](self, s.sid, s)
            grants.append((s.sid, s.win))
            room -= 1
        return grants

    def statistics(self) -> PolicyStatistics:
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

    def session_state(self, sid: int) -> SessionState:
        """The table state of ``sid`` (UNKNOWN if never seen or forgotten)."""
        s = self._sessions.get(sid)
        return _UNKNOWN if s is None else s.state

    def session_window(self, sid: int) -> int:
        """The window ``sid`` holds now (0 if unknown)."""
        s = self._sessions.get(sid)
        return 0 if s is None else s.win

    # ------------------------------------------------------------------ window arithmetic

    def _update_window(self, s: _Session, keep_alive: bool) -> int:
        """Recompute the window of ``s`` for the response about to be sent (Eqs. 4-6 and
        the clamps of the reference ``srpc_update_window``); park it if it reaches 0."""
        old = s.win
        room = self._pool - self._issued
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
            s.state = _DRAINED
            self._drained[s.sid] = s
        return win

    # ------------------------------------------------------------------ table actions
    # Signatures by event: OPEN/REJECT/COMPLETE/GRANT/CLOSE (self, sid, s);
    # REQUEST (self, sid, s, demand, queue_delay_ns).

    def _act_register(self, sid: int, s: _Session | None) -> int:
        s = _Session(sid)
        self._sessions[sid] = s
        s.win = 1
        self._issued += 1
        self._n_sessions += 1
        return 1

    def _act_current_window(self, sid: int, s: _Session) -> int:
        return s.win

    def _act_reopen(self, sid: int, s: _Session) -> int:
        s.state = _ACTIVE
        s.win = s.pending if s.pending > 0 else 1
        s.rejects = 0
        self._issued += s.win
        self._n_sessions += 1
        return s.win

    def _act_register_and_admit(
        self, sid: int, s: _Session | None, demand: int, queue_delay_ns: int
    ) -> bool:
        self._act_register(sid, s)
        return self._act_admit(sid, self._sessions[sid], demand, queue_delay_ns)

    def _act_unpark_and_admit(self, sid: int, s: _Session, demand: int, queue_delay_ns: int) -> bool:
        del self._drained[sid]
        s.state = _ACTIVE
        return self._act_admit(sid, s, demand, queue_delay_ns)

    def _act_admit(self, sid: int, s: _Session, demand: int, queue_delay_ns: int) -> bool:
        if demand < 0:
            raise ValueError(f"demand must be >= 0, got {demand!r} (session {sid})")
        s.demand = demand
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

    def _act_refuse(self, sid: int, s: _Session, demand: int, queue_delay_ns: int) -> bool:
        s.rejects += 1
        self._rejected_limit += 1
        return False

    def _act_reject_window(self, sid: int, s: _Session) -> int:
        if s.rejects <= 0:
            raise SessionError(f"on_reject({sid}) without a preceding on_request that returned False")
        s.rejects -= 1
        return self._update_window(s, False)  # a reject may take the last credit

    def _act_closed_window(self, sid: int, s: _Session) -> int:
        if s.rejects <= 0:
            raise SessionError(f"on_reject({sid}) without a preceding on_request that returned False")
        s.rejects -= 1
        return 0

    def _act_complete(self, sid: int, s: _Session) -> int:
        if s.pending <= 0:
            raise SessionError(f"on_complete({sid}) with no admitted request of that session in flight")
        s.pending -= 1
        self._in_flight -= 1
        self._completed += 1
        return self._update_window(s, True)

    def _act_complete_closed(self, sid: int, s: _Session) -> int:
        s.pending -= 1  # CLOSED implies pending > 0: the last completion forgets the session
        self._in_flight -= 1
        self._completed += 1
        if s.pending == 0:
            del self._sessions[sid]
        return 0

    def _act_grant(self, sid: int, s: _Session) -> int:
        s.state = _ACTIVE
        s.win = 1
        s.woken = True
        self._issued += 1
        self._credit_messages += 1
        self._credits_granted += 1
        return 1

    def _act_close(self, sid: int, s: _Session) -> None:
        if s.state == _DRAINED:
            del self._drained[sid]
        self._issued -= s.win
        s.win = 0
        s.demand = 0
        s.rejects = 0
        self._n_sessions -= 1
        if s.pending > 0:
            s.state = _CLOSED
        else:
            del self._sessions[sid]
        if self._n_sessions == 0:
            # As the reference: an idle server starts the next burst from the floor.
            self._pool = self.min_pool
            self._carry = 0.0

    def _act_nothing(self, sid: int, s: _Session | None) -> None:
        return None


def _compile(event: SessionEvent) -> list:
    """One dispatch row per event, indexed by state, built from SESSION_TABLE."""
    row = []
    for state in SessionState:
        entry = SESSION_TABLE.get((state, event))
        if entry is None:
            row.append(_illegal(state, event))
        else:
            row.append(getattr(Breakwater, "_act_" + entry[0]))
    return row


def _illegal(state: SessionState, event: SessionEvent):
    def act(self: Breakwater, sid: int, *args: object) -> None:
        raise SessionError(
            f"session {sid}: event {event.name} is not allowed in state {state.name} "
            "(see breakwater.SESSION_TABLE)"
        )

    return act


_OPEN = _compile(SessionEvent.OPEN)
_REQUEST = _compile(SessionEvent.REQUEST)
_REJECT = _compile(SessionEvent.REJECT)
_COMPLETE = _compile(SessionEvent.COMPLETE)
_GRANT = _compile(SessionEvent.GRANT)
_CLOSE = _compile(SessionEvent.CLOSE)
