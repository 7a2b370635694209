"""Breakwater: the AIMD control loop, the window arithmetic, demand speculation, AQM, and
every entry of SESSION_TABLE, with a fake clock."""
from __future__ import annotations

import random
import re

import pytest

import breakwater
from breakwater import SESSION_TABLE, Breakwater, SessionError, SessionEvent, SessionState

US = 1_000
MS = 1_000_000
UNKNOWN, ACTIVE, DRAINED, CLOSED = (
    SessionState.UNKNOWN,
    SessionState.ACTIVE,
    SessionState.DRAINED,
    SessionState.CLOSED,
)
BIG = 10**12  # a queueing delay far past any threshold


def grow(bw: Breakwater, clock, ticks: int) -> None:
    for _ in range(ticks):
        bw.on_tick(clock.advance(bw.tick_interval_ns), 0)


def drained(bw: Breakwater, clock, sid: int) -> None:
    """Make ``sid`` DRAINED: over-issue the pool, then an AQM reject takes its last credit."""
    bw.open_session(sid, clock())
    bw.open_session(10_000 + sid, clock())  # a second session: issued 2 > pool 1
    assert bw.on_request(sid, 0, clock(), BIG) is False
    assert bw.on_reject(sid, clock()) == 0
    assert bw.session_state(sid) == DRAINED


def closed(bw: Breakwater, clock, sid: int) -> None:
    """Make ``sid`` CLOSED: its connection closed while one request runs."""
    bw.open_session(sid, clock())
    assert bw.on_request(sid, 0, clock(), 0) is True
    bw.close_session(sid, clock())
    assert bw.session_state(sid) == CLOSED


def check_invariants(bw: Breakwater, after_tick: bool = False) -> None:
    sessions = bw._sessions
    st = bw.statistics()
    live = [s for s in sessions.values() if s.state != CLOSED]
    assert st.issued == sum(s.win for s in live)
    assert st.in_flight == sum(s.pending for s in sessions.values())
    assert st.sessions == len(live)
    assert all(s.win >= s.pending for s in live)
    assert all(s.win <= bw.max_window for s in live)
    assert {s.sid for s in live if s.state == DRAINED} == set(bw._drained)
    assert all(s.win == 0 and s.pending == 0 for s in bw._drained.values())
    assert st.pool >= bw.min_pool
    if after_tick:  # the ceiling follows the session count at each tick
        assert st.pool <= max(bw.min_pool, bw.max_window * st.sessions)


# --- parameters --------------------------------------------------------------------------


def test_defaults_are_documented_values():
    bw = Breakwater()
    assert bw.uses_credits is True
    assert bw.target_delay_ns == breakwater.DEFAULT_TARGET_DELAY_NS
    assert bw.aqm_threshold_ns == breakwater.DEFAULT_AQM_THRESHOLD_NS
    assert bw.tick_interval_ns > 0
    assert 0 < bw.md_floor < 1 and bw.min_pool >= 1 and bw.max_window == 64
    assert "Breakwater(" in repr(bw)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_delay_ns": 0},
        {"aqm_threshold_ns": -1},
        {"tick_interval_ns": 1.5},
        {"alpha": 0},
        {"beta": -0.1},
        {"md_floor": 1.0},
        {"md_floor": 0},
        {"min_pool": 0},
        {"max_window": True},
    ],
)
def test_bad_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        Breakwater(**kwargs)


# --- AIMD on the pool --------------------------------------------------------------------


def test_additive_increase_is_alpha_times_sessions_per_tick(clock):
    bw = Breakwater(alpha=0.02, min_pool=1)
    for sid in range(100):
        bw.open_session(sid, clock())
    grow(bw, clock, 5)
    assert bw.statistics().pool == 1 + 5 * 2


def test_additive_increase_is_at_least_one_credit(clock):
    bw = Breakwater(alpha=0.02, min_pool=1)
    for sid in range(10):  # alpha * N = 0.2 < 1
        bw.open_session(sid, clock())
    grow(bw, clock, 4)
    assert bw.statistics().pool == 1 + 4


def test_additive_increase_carries_fractions(clock):
    bw = Breakwater(alpha=0.015, min_pool=1)
    for sid in range(100):  # 1.5 per tick
        bw.open_session(sid, clock())
    pools = []
    for _ in range(4):
        grow(bw, clock, 1)
        pools.append(bw.statistics().pool)
    assert pools == [2, 4, 5, 7]


def ramped(clock, pool: int, n: int = 100, **kw) -> Breakwater:
    bw = Breakwater(alpha=0.01, min_pool=1, **kw)  # +1 per tick with 100 sessions
    for sid in range(n):
        bw.open_session(sid, clock())
    grow(bw, clock, pool - 1)
    assert bw.statistics().pool == pool
    return bw


def test_multiplicative_decrease_is_proportional_to_overshoot(clock):
    bw = ramped(clock, 101, beta=0.4)
    t = bw.target_delay_ns
    bw.on_tick(clock.advance(bw.tick_interval_ns), t + t // 2)  # 50 % over: x (1 - 0.4 * 0.5)
    assert bw.statistics().pool == 80
    bw.on_tick(clock.advance(bw.tick_interval_ns), t + t // 4)  # 25 % over: x 0.9
    assert bw.statistics().pool == 72


def test_multiplicative_decrease_never_worse_than_md_floor(clock):
    bw = ramped(clock, 101, beta=0.4, md_floor=0.5)
    bw.on_tick(clock.advance(bw.tick_interval_ns), 100 * bw.target_delay_ns)
    assert bw.statistics().pool == 50


def test_delay_equal_to_target_holds_the_pool_and_drops_the_carry(clock):
    bw = Breakwater(alpha=0.015, min_pool=1)
    for sid in range(100):
        bw.open_session(sid, clock())
    grow(bw, clock, 1)  # pool 2, carry 0.5
    bw.on_tick(clock.advance(bw.tick_interval_ns), bw.target_delay_ns)
    assert bw.statistics().pool == 2
    grow(bw, clock, 1)  # the lost half credit is not paid out: +1, not +2
    assert bw.statistics().pool == 3


def test_pool_never_below_min_pool(clock):
    bw = Breakwater(alpha=0.01, min_pool=4)
    for sid in range(100):
        bw.open_session(sid, clock())
    grow(bw, clock, 20)
    for _ in range(20):
        bw.on_tick(clock.advance(bw.tick_interval_ns), BIG)
    st = bw.statistics()
    assert st.pool == 4 and st.pool_min == 4 and st.pool_max == 24


def test_pool_never_above_max_window_per_session(clock):
    bw = Breakwater(alpha=1.0, max_window=2)
    for sid in range(3):
        bw.open_session(sid, clock())
        bw.on_request(sid, 0, clock(), 0)
        bw.on_request(sid, 0, clock(), 0)  # each holds 2: issued 6
    grow(bw, clock, 100)
    assert bw.statistics().pool == 6


def test_pool_does_not_wind_up_when_it_does_not_bind(clock):
    # Anti-windup: below target the pool grows only while pool < 2 * issued + min_pool.
    bw = Breakwater(alpha=1.0, min_pool=1)
    for sid in range(10):  # issued 10
        bw.open_session(sid, clock())
    grow(bw, clock, 100)
    assert bw.statistics().pool == 21
    for sid in range(10):  # more credits issued: the pool may grow again
        for _ in range(3):
            bw.on_request(sid, 0, clock(), 0)
    grow(bw, clock, 100)
    assert bw.statistics().pool == 2 * 30 + 1  # 21 + 4 ticks of 10


def test_pool_resets_when_the_last_session_closes(clock):
    bw = ramped(clock, 50, n=100)
    for sid in range(100):
        bw.close_session(sid, clock())
    st = bw.statistics()
    assert st.pool == bw.min_pool and st.sessions == 0 and st.issued == 0


# --- windows -------------------------------------------------------------------------------


def test_window_is_demand_plus_overcommitment_share(clock):
    bw = Breakwater(alpha=0.1, min_pool=1)
    for sid in range(10):
        bw.open_session(sid, clock())
    grow(bw, clock, 40)  # +1 per tick (alpha * N = 1), up to 2 * issued + 1 (anti-windup)
    assert bw.statistics().pool == 21 and bw.statistics().issued == 10
    assert bw.on_request(0, 25, clock(), 0) is True  # 1 running, 25 more queued at the client
    # Eq. (5): min(pending + demand + oc, win + room) = min(0 + 25 + 11 // 10, 1 + 11) = 12
    assert bw.on_complete(0, clock()) == 12
    assert bw.statistics().issued == 21
    bw.on_request(1, 3, clock(), 0)
    # room 0 now: share 1, and the window stays put (Eq. 5 needs room): min(0 + 3 + 1, 1) = 1
    assert bw.on_complete(1, clock()) == 1
    bw.on_tick(clock.advance(bw.tick_interval_ns), 0)  # pool 22: room 1
    bw.on_request(1, 3, clock(), 0)
    assert bw.on_complete(1, clock()) == 2  # min(0 + 3 + 1, 1 + 1)


def test_window_capped_by_room(clock):
    bw = Breakwater(alpha=0.1, min_pool=1)
    for sid in range(10):
        bw.open_session(sid, clock())
    grow(bw, clock, 3)  # pool 4, issued 10: over-issued
    for sid in range(1, 10):
        bw.close_session(sid, clock())  # issued 1, pool 4, one session left
    bw.on_request(0, 50, clock(), 0)
    # room = 4 - 1 = 3 -> win = min(0 + 50 + 3, 1 + 3) = 4
    assert bw.on_complete(0, clock()) == 4


def test_window_never_above_max_window(clock):
    bw = Breakwater(alpha=10.0, max_window=16)
    bw.open_session(1, clock())
    bw.open_session(2, clock())
    grow(bw, clock, 10)
    bw.on_request(1, 1000, clock(), 0)
    assert bw.on_complete(1, clock()) == 16


def test_over_issued_pool_takes_one_credit_back_per_response(clock):
    bw = Breakwater(alpha=0.5, min_pool=1)
    bw.open_session(1, clock())
    bw.open_session(2, clock())
    for _ in range(6):
        assert bw.on_request(1, 30, clock(), 0)
    grow(bw, clock, 20)  # issued 7: the pool stops at 2 * 7 + 1 = 15
    assert bw.statistics().pool == 15
    # room 8, share 4: min(5 running + 30 queued + 4, 6 + 8) = 14
    assert bw.on_complete(1, clock()) == 14
    for _ in range(10):  # pool collapses to the floor
        bw.on_tick(clock.advance(bw.tick_interval_ns), BIG)
    assert bw.statistics().pool == 1
    wins = [bw.on_complete(1, clock()) for _ in range(5)]
    assert wins == [13, 12, 11, 10, 9]  # Eq. (6): one back per response, lazily


def test_surplus_revoked_when_a_request_shows_less_demand(clock):
    bw = Breakwater(alpha=0.5, min_pool=1)
    bw.open_session(1, clock())
    bw.open_session(2, clock())
    grow(bw, clock, 20)  # pool 5 (anti-windup: 2 * issued + 1)
    bw.on_request(1, 10, clock(), 0)
    assert bw.on_complete(1, clock()) == 4  # min(0 + 10 + 1, 1 + 3)
    issued = bw.statistics().issued
    win = bw.session_window(1)
    assert bw.on_request(1, 0, clock(), 0) is True  # the client's queue is empty now
    assert bw.session_window(1) == 1
    assert bw.statistics().issued == issued - (win - 1)


def test_request_beyond_window_enlarges_it(clock):
    # The client spent credits the server had already revoked (update crossed on the wire).
    bw = Breakwater()
    bw.open_session(1, clock())
    assert all(bw.on_request(1, 2 - i, clock(), 0) for i in range(3))
    assert bw.session_window(1) == 3 and bw.statistics().issued == 3


def test_requests_beyond_max_window_are_rejected(clock):
    bw = Breakwater(max_window=4)
    bw.open_session(1, clock())
    assert [bw.on_request(1, 0, clock(), 0) for _ in range(5)] == [True] * 4 + [False]
    bw.on_reject(1, clock())
    st = bw.statistics()
    assert st.rejected_limit == 1 and st.in_flight == 4


def test_successful_session_keeps_a_credit_even_when_over_issued(clock):
    bw = Breakwater(min_pool=1)
    bw.open_session(1, clock())
    bw.open_session(2, clock())  # issued 2 > pool 1
    bw.on_request(1, 0, clock(), 0)
    assert bw.on_complete(1, clock()) == 1  # starvation guard: success never drains
    assert bw.session_state(1) == ACTIVE


def test_reject_can_take_the_last_credit_and_parks(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    st = bw.statistics()
    assert st.drained_sessions == 1 and st.rejected_aqm == 1 and st.issued == 1


def test_aqm_rejects_at_and_above_threshold(clock):
    bw = Breakwater(target_delay_ns=100 * US, aqm_threshold_ns=200 * US, aqm_min_utilization=0.0)
    bw.open_session(1, clock())
    assert bw.on_request(1, 0, clock(), 200 * US - 1) is True
    assert bw.on_request(1, 0, clock(), 200 * US) is False
    assert bw.statistics().rejected_aqm == 1
    assert bw.statistics().last_queue_delay_ns == 200 * US


def test_negative_demand_is_an_error_and_changes_nothing(clock):
    bw = Breakwater()
    bw.open_session(1, clock())
    with pytest.raises(ValueError, match="demand"):
        bw.on_request(1, -1, clock(), 0)
    assert bw.statistics().admitted == 0 and bw.session_window(1) == 1
    # Nor for a session never seen, nor for a drained one (it stays parked).
    with pytest.raises(ValueError, match="demand"):
        bw.on_request(2, -1, clock(), 0)
    assert bw.session_state(2) == UNKNOWN
    drained(bw, clock, 3)
    with pytest.raises(ValueError, match="demand"):
        bw.on_request(3, -1, clock(), 0)
    assert bw.session_state(3) == DRAINED and bw.statistics().drained_sessions == 1


# --- demand speculation --------------------------------------------------------------------


def test_speculation_wakes_drained_sessions_fifo_while_pool_has_room(clock):
    bw = Breakwater(min_pool=1, alpha=0.001)
    for sid in (7, 3, 5):
        drained(bw, clock, sid)
    st = bw.statistics()
    assert st.drained_sessions == 3 and st.issued == 3  # the three helper sessions
    # pool 1 -> +1 per tick (alpha * N < 1): room appears only after 3 ticks
    grants = []
    for _ in range(4):  # pool 2, 3, 4, 5 against issued 3, 3, 4: two grants
        grants += bw.on_tick(clock.advance(bw.tick_interval_ns), 0)
    assert grants == [(7, 1), (3, 1)]
    st = bw.statistics()
    assert st.credit_messages == 2 and st.credits_granted == 2 and st.drained_sessions == 1
    assert bw.session_state(7) == ACTIVE and bw.session_state(5) == DRAINED


def test_no_speculation_while_delay_is_high(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    for _ in range(10):
        assert bw.on_tick(clock.advance(bw.tick_interval_ns), BIG) == []


def test_woken_session_gets_at_least_its_share(clock):
    bw = Breakwater(min_pool=1, alpha=0.5)
    drained(bw, clock, 1)
    grants = []
    for _ in range(20):
        grants += bw.on_tick(clock.advance(bw.tick_interval_ns), 0)
    assert grants == [(1, 1)]
    assert bw.on_request(1, 0, clock(), 0) is True
    room = bw.statistics().pool - bw.statistics().issued
    w = bw.on_complete(1, clock())
    assert w == max(1, room // 2)  # demand 0, but the woken session keeps the overcommit share


def test_credit_messages_per_completion(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    grow(bw, clock, 3)
    for _ in range(4):
        assert bw.on_request(1, 0, clock(), 0)
        bw.on_complete(1, clock())
    st = bw.statistics()
    assert st.credit_messages == 1 and st.completed == 4
    assert st.credit_messages_per_completion == 0.25


# --- every entry of the session table ------------------------------------------------------


def test_table_entries_name_real_actions():
    # The methods switch on SESSION_TABLE compiled at import (a compiled class has no
    # _act_* attributes to look up): every entry names an action of its event's kind.
    from breakwater import _server

    assert _server._compiled() == _server._compile(SESSION_TABLE)
    for (state, event), (action, nexts) in SESSION_TABLE.items():
        kind = _server._REQUEST_ACTIONS if event == SessionEvent.REQUEST else _server._WINDOW_ACTIONS
        assert action in kind, action
        assert nexts and all(isinstance(s, SessionState) for s in nexts)


@pytest.mark.parametrize(
    "key, action, message",
    [
        ((ACTIVE, SessionEvent.OPEN), "teleport", "is not a window action"),
        ((ACTIVE, SessionEvent.OPEN), "admit", "is not a window action"),
        ((ACTIVE, SessionEvent.REQUEST), "complete", "is not an admission action"),
        ((UNKNOWN, SessionEvent.COMPLETE), "complete", "needs a session record"),
        ((7, SessionEvent.OPEN), "register", "is not a (SessionState, SessionEvent)"),
    ],
)
def test_table_compiler_refuses_entries_the_code_cannot_run(key, action, message):
    from breakwater import _server

    table = dict(SESSION_TABLE)
    table[key] = (action, (ACTIVE,))
    with pytest.raises(ValueError, match=re.escape(message)):
        _server._compile(table)


MISSING = sorted(
    {(s, e) for s in SessionState for e in SessionEvent} - set(SESSION_TABLE),
)


def test_missing_pairs_are_exactly_the_impossible_ones():
    assert MISSING == [
        (UNKNOWN, SessionEvent.REJECT),
        (UNKNOWN, SessionEvent.COMPLETE),
        (UNKNOWN, SessionEvent.GRANT),
        (ACTIVE, SessionEvent.GRANT),
        (DRAINED, SessionEvent.REJECT),
        (DRAINED, SessionEvent.COMPLETE),
        (CLOSED, SessionEvent.GRANT),
    ]


def test_unknown_open_registers_with_window_one(clock):
    bw = Breakwater()
    assert bw.open_session(1, clock()) == 1
    assert bw.session_state(1) == ACTIVE
    st = bw.statistics()
    assert st.sessions == 1 and st.issued == 1


def test_unknown_request_registers_and_admits(clock):
    bw = Breakwater()
    assert bw.on_request(1, 3, clock(), 0) is True
    assert bw.session_state(1) == ACTIVE and bw.statistics().admitted == 1


def test_unknown_close_is_ignored(clock):
    bw = Breakwater()
    bw.close_session(1, clock())
    assert bw.session_state(1) == UNKNOWN and bw.statistics().sessions == 0


@pytest.mark.parametrize("method", ["on_reject", "on_complete"])
def test_unknown_reject_or_complete_raises(method, clock):
    bw = Breakwater()
    with pytest.raises(SessionError, match="not allowed in state UNKNOWN"):
        getattr(bw, method)(1, clock())


def test_active_open_again_returns_current_window(clock):
    bw = Breakwater()
    bw.open_session(1, clock())
    bw.on_request(1, 0, clock(), 0)
    bw.on_request(1, 0, clock(), 0)
    assert bw.open_session(1, clock()) == 2
    assert bw.statistics().issued == 2 and bw.statistics().sessions == 1


def test_active_request_admits(clock):
    bw = Breakwater()
    bw.open_session(1, clock())
    assert bw.on_request(1, 0, clock(), 0) is True
    assert bw.session_state(1) == ACTIVE and bw.statistics().in_flight == 1


def test_active_reject_needs_a_refused_request(clock):
    bw = Breakwater()
    bw.open_session(1, clock())
    with pytest.raises(SessionError, match="without a preceding"):
        bw.on_reject(1, clock())
    assert bw.on_request(1, 0, clock(), BIG) is False
    assert bw.on_reject(1, clock()) == 1  # one session: it keeps its share
    assert bw.session_state(1) == ACTIVE


def test_active_complete_needs_an_admitted_request(clock):
    bw = Breakwater()
    bw.open_session(1, clock())
    with pytest.raises(SessionError, match="no admitted request"):
        bw.on_complete(1, clock())
    bw.on_request(1, 0, clock(), 0)
    assert bw.on_complete(1, clock()) >= 1
    st = bw.statistics()
    assert st.completed == 1 and st.in_flight == 0


def test_active_close_with_nothing_running_forgets(clock):
    bw = Breakwater()
    bw.open_session(1, clock())
    bw.open_session(2, clock())
    bw.close_session(1, clock())
    assert bw.session_state(1) == UNKNOWN
    st = bw.statistics()
    assert st.sessions == 1 and st.issued == 1


def test_active_close_with_requests_running_lingers(clock):
    bw = Breakwater()
    bw.open_session(2, clock())
    closed(bw, clock, 1)
    st = bw.statistics()
    assert st.sessions == 1 and st.issued == 1 and st.in_flight == 1


def test_drained_open_returns_zero(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    assert bw.open_session(1, clock()) == 0 and bw.session_state(1) == DRAINED


def test_drained_request_unparks(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    assert bw.on_request(1, 0, clock(), 0) is True
    assert bw.session_state(1) == ACTIVE and bw.statistics().drained_sessions == 0
    assert bw.session_window(1) == 1


def test_drained_request_rejected_by_aqm_parks_again(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    assert bw.on_request(1, 0, clock(), BIG) is False
    assert bw.on_reject(1, clock()) == 0
    assert bw.session_state(1) == DRAINED and bw.statistics().drained_sessions == 1


def test_drained_grant(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    grants = []
    while not grants:
        grants = bw.on_tick(clock.advance(bw.tick_interval_ns), 0)
    assert grants == [(1, 1)] and bw.session_state(1) == ACTIVE


def test_drained_close_unparks_and_forgets(clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    bw.close_session(1, clock())
    assert bw.session_state(1) == UNKNOWN and bw.statistics().drained_sessions == 0
    grow(bw, clock, 10)
    assert bw.statistics().credit_messages == 0


@pytest.mark.parametrize("method", ["on_reject", "on_complete"])
def test_drained_reject_or_complete_raises(method, clock):
    bw = Breakwater(min_pool=1)
    drained(bw, clock, 1)
    with pytest.raises(SessionError, match="not allowed in state DRAINED"):
        getattr(bw, method)(1, clock())


def test_grant_rows_for_other_states_raise(clock):
    # Only on_tick raises GRANT, and only for sessions on the drained list: reach the
    # illegal row by putting an ACTIVE session on that list by hand.
    bw = Breakwater()
    bw.open_session(1, clock())
    bw._drained[1] = bw._sessions[1]
    with pytest.raises(SessionError, match="GRANT is not allowed in state ACTIVE"):
        bw.on_tick(clock.advance(bw.tick_interval_ns), 0)  # pool 2 > issued 1: room for 1


def test_closed_open_reopens(clock):
    bw = Breakwater()
    closed(bw, clock, 1)
    assert bw.open_session(1, clock()) == 1  # its running request keeps its credit
    assert bw.session_state(1) == ACTIVE
    assert bw.on_complete(1, clock()) >= 1
    check_invariants(bw)


def test_closed_request_refused(clock):
    bw = Breakwater()
    closed(bw, clock, 1)
    assert bw.on_request(1, 0, clock(), 0) is False
    assert bw.on_reject(1, clock()) == 0
    assert bw.session_state(1) == CLOSED and bw.statistics().rejected_limit == 1


def test_closed_reject_needs_a_refused_request(clock):
    bw = Breakwater()
    closed(bw, clock, 1)
    with pytest.raises(SessionError):
        bw.on_reject(1, clock())


def test_closed_complete_forgets_with_the_last_request(clock):
    bw = Breakwater()
    closed(bw, clock, 1)
    assert bw.on_request(1, 0, clock(), 0) is False  # refused: does not extend its life
    bw.on_reject(1, clock())
    assert bw.on_complete(1, clock()) == 0
    assert bw.session_state(1) == UNKNOWN
    st = bw.statistics()
    assert st.in_flight == 0 and st.completed == 1


def test_closed_close_again_is_ignored(clock):
    bw = Breakwater()
    closed(bw, clock, 1)
    bw.close_session(1, clock())
    assert bw.session_state(1) == CLOSED and bw.statistics().in_flight == 1


def test_random_walk_respects_table_and_invariants(clock):
    """Random legal call sequences over 30 sessions: every transition is one the table lists,
    and issued credits, in-flight counts and the drained list stay consistent."""
    rng = random.Random(3)
    bw = Breakwater(min_pool=2, alpha=0.05, beta=0.5, max_window=6)
    running: dict[int, int] = {}  # sid -> admitted requests not completed
    for _ in range(20_000):
        sid = rng.randrange(30)
        before = bw.session_state(sid)
        now = clock.advance(rng.randrange(20 * US))
        r = rng.random()
        if r < 0.05:
            event = SessionEvent.OPEN
            bw.open_session(sid, now)
        elif r < 0.45:
            event = SessionEvent.REQUEST
            delay = rng.choice([0, 0, bw.target_delay_ns, BIG])
            if bw.on_request(sid, rng.randrange(4), now, delay):
                running[sid] = running.get(sid, 0) + 1
            else:
                # The server answers a refused request at once: on_reject follows directly.
                middle = bw.session_state(sid)
                assert middle in SESSION_TABLE[(before, event)][1], (before, event)
                before, event = middle, SessionEvent.REJECT
                bw.on_reject(sid, now)
        elif r < 0.9 and running.get(sid):
            event = SessionEvent.COMPLETE
            running[sid] -= 1
            bw.on_complete(sid, now)
        elif r < 0.92:
            event = SessionEvent.CLOSE
            bw.close_session(sid, now)
        else:
            drained_before = {s: bw.session_state(s) for s in bw._drained}
            grants = bw.on_tick(now, 0 if rng.random() < 0.9 else 2 * bw.target_delay_ns)
            for gsid, w in grants:
                assert w == 1 and drained_before[gsid] == DRAINED
                assert bw.session_state(gsid) in SESSION_TABLE[(DRAINED, SessionEvent.GRANT)][1]
            check_invariants(bw, after_tick=True)
            continue
        assert bw.session_state(sid) in SESSION_TABLE[(before, event)][1], (before, event)
        check_invariants(bw)
    assert bw.statistics().completed > 1000 and bw.statistics().credit_messages > 10


# --- AQM and utilization ---------------------------------------------------------------------


def _busy(bw, clock, sid, busy_ns, idle_ns, tick_ns):
    """One admitted request held for busy_ns, then idle_ns of nothing, ticking every tick_ns."""
    assert bw.on_request(sid, 0, clock(), 0) is True
    for step in (busy_ns, idle_ns):
        end = clock.now + step
        while clock.now < end:
            clock.advance(min(tick_ns, end - clock.now))
            bw.on_tick(clock(), 0)
        if step is busy_ns:
            bw.on_complete(sid, clock())


def test_utilization_is_the_busy_fraction(clock):
    bw = Breakwater(utilization_window_ns=10 * MS)
    bw.open_session(1, clock())
    assert bw.utilization == 0.0
    for _ in range(200):          # 80 % busy for 200 ms: 20 windows
        _busy(bw, clock, 1, 800 * US, 200 * US, 200 * US)
    assert 0.75 <= bw.utilization <= 0.85, bw.utilization
    for _ in range(200):          # then 20 % busy
        _busy(bw, clock, 1, 200 * US, 800 * US, 200 * US)
    assert 0.15 <= bw.utilization <= 0.25, bw.utilization


def test_aqm_threshold_is_relaxed_while_the_server_has_slack(clock):
    bw = Breakwater(target_delay_ns=100 * US, aqm_threshold_ns=200 * US,
                    aqm_min_utilization=0.7, slack_aqm_factor=3.0, utilization_window_ns=10 * MS)
    bw.open_session(1, clock())
    # Idle server: a 200 us queue is a burst that drains by itself; 3 x 200 us is not.
    assert bw.on_request(1, 0, clock(), 200 * US) is True
    bw.on_complete(1, clock())
    assert bw.on_request(1, 0, clock(), 600 * US) is False
    bw.on_reject(1, clock())
    # Busy 90 % of the time for 50 ms: the plain threshold applies again.
    for _ in range(50):
        _busy(bw, clock, 1, 900 * US, 100 * US, 200 * US)
    assert bw.utilization >= 0.7
    assert bw.on_request(1, 0, clock(), 200 * US - 1) is True
    bw.on_complete(1, clock())
    assert bw.on_request(1, 0, clock(), 200 * US) is False
    assert bw.statistics().rejected_aqm == 2


@pytest.mark.parametrize("kwargs", [{"aqm_min_utilization": 1.5}, {"slack_aqm_factor": 0.5},
                                    {"utilization_window_ns": 0}])
def test_gate_parameters_are_checked(kwargs):
    with pytest.raises(ValueError):
        Breakwater(**kwargs)


def test_a_long_busy_run_applies_the_plain_threshold_at_once(clock):
    # A step up: the 50 ms utilization average is still low, but the server has completed
    # busy_run_requests requests without going idle, which a burst at light load almost
    # never does.
    bw = Breakwater(target_delay_ns=100 * US, aqm_threshold_ns=200 * US, busy_run_requests=3)
    bw.open_session(1, clock())
    assert bw.on_request(1, 4, clock(), 0) is True          # the server becomes busy
    for _ in range(2):
        assert bw.on_request(1, 3, clock(), 100 * US) is True
        clock.advance(100 * US)
        bw.on_complete(1, clock())
    # Two completions into the run: still slack, 300 us < 4 x 200 us.
    assert bw.on_request(1, 0, clock(), 300 * US) is True
    clock.advance(100 * US)
    bw.on_complete(1, clock())
    # The third completion made the run long: the plain threshold.
    assert bw.on_request(1, 0, clock(), 300 * US) is False
    bw.on_reject(1, clock())
    assert bw.utilization < 0.7


def test_a_stall_is_not_a_busy_run(clock):
    # The process descheduled for 10 ms with a request admitted: no request completed, so
    # the run is still short and the slack threshold (4 x 200 us) applies.
    bw = Breakwater(target_delay_ns=100 * US, aqm_threshold_ns=200 * US, busy_run_requests=3)
    bw.open_session(1, clock())
    assert bw.on_request(1, 1, clock(), 0) is True
    clock.advance(10 * MS)
    assert bw.on_request(1, 0, clock(), 800 * US - 1) is True
    assert bw.on_request(1, 0, clock(), 800 * US) is False
    bw.on_reject(1, clock())
