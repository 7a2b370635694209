"""ClientCredits: every method, and every entry of CLIENT_TABLE, driven with a fake clock."""
from __future__ import annotations

import pytest

import breakwater
from breakwater import CLIENT_TABLE, ClientCredits, ClientEvent, ClientState, Submit

US = 1_000

READY, BLOCKED, UNLIMITED = ClientState.READY, ClientState.BLOCKED, ClientState.UNLIMITED


def in_state(state: ClientState, clock, *, queued: int = 0, max_queue: int = 4) -> ClientCredits:
    """A machine in ``state`` with ``queued`` tokens waiting (BLOCKED only)."""
    cc = ClientCredits(max_queue=max_queue, max_wait_ns=100 * US)
    if state == READY:
        assert cc.submit("f0", clock()) == Submit.SEND
        assert cc.on_response(3, clock()) == ()  # window 3, nothing in flight
    elif state == BLOCKED:
        assert cc.submit("f0", clock()) == Submit.SEND  # the implicit credit
        for i in range(queued):
            assert cc.submit(f"q{i}", clock()) == Submit.QUEUED
    else:
        assert cc.submit("f0", clock()) == Submit.SEND
        assert cc.on_response(None, clock()) == ()
    assert cc.state == state
    return cc


def test_table_is_complete_and_names_real_actions():
    for state in ClientState:
        for event in ClientEvent:
            action, nexts = CLIENT_TABLE[(state, event)]
            assert callable(getattr(ClientCredits, "_act_" + action))
            assert nexts and all(isinstance(s, ClientState) for s in nexts)


def test_initial_state_is_an_implicit_window_of_one(clock):
    cc = ClientCredits()
    assert cc.state == READY and cc.window == 1 and cc.in_flight == 0 and cc.demand() == 0
    assert cc.max_queue == breakwater.DEFAULT_MAX_QUEUE
    assert cc.max_wait_ns == breakwater.DEFAULT_MAX_WAIT_NS
    assert cc.next_deadline_ns() is None


@pytest.mark.parametrize("kwargs", [{"max_queue": -1}, {"max_wait_ns": -5}, {"max_queue": 1.5}, {"max_wait_ns": True}])
def test_bad_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        ClientCredits(**kwargs)


# --- SUBMIT ----------------------------------------------------------------------------


def test_ready_submit_sends_and_blocks_on_last_credit(clock):
    cc = in_state(READY, clock)  # window 3
    assert [cc.submit(i, clock()) for i in range(3)] == [Submit.SEND] * 3
    assert cc.in_flight == 3 and cc.state == BLOCKED
    assert CLIENT_TABLE[(READY, ClientEvent.SUBMIT)][1] == (READY, BLOCKED)


def test_blocked_submit_queues_then_rejects_when_full(clock):
    cc = in_state(BLOCKED, clock, max_queue=2)
    assert cc.submit("a", clock()) == Submit.QUEUED
    assert cc.submit("b", clock()) == Submit.QUEUED
    assert cc.submit("c", clock()) == Submit.REJECTED  # the new one is refused; a, b kept
    assert cc.demand() == 2 and cc.state == BLOCKED
    st = cc.statistics()
    assert (st.rejected, st.queued, st.max_queued, st.sent) == (1, 2, 2, 1)


def test_zero_queue_rejects_at_once(clock):
    cc = ClientCredits(max_queue=0)
    cc.submit("a", clock())
    assert cc.submit("b", clock()) == Submit.REJECTED


def test_unlimited_submit_always_sends(clock):
    cc = in_state(UNLIMITED, clock)
    assert all(cc.submit(i, clock()) == Submit.SEND for i in range(1000))
    assert cc.in_flight == 1000 and cc.state == UNLIMITED and cc.window is None


# --- RESPONSE --------------------------------------------------------------------------


def test_ready_response_sets_window(clock):
    cc = in_state(READY, clock)
    cc.submit("a", clock())
    assert cc.on_response(5, clock()) == ()
    assert cc.window == 5 and cc.in_flight == 0 and cc.state == READY


def test_ready_response_with_window_zero_blocks(clock):
    cc = in_state(READY, clock)
    cc.submit("a", clock())
    cc.on_response(0, clock())
    assert cc.state == BLOCKED
    assert cc.submit("b", clock()) == Submit.QUEUED


def test_blocked_response_drains_fifo_up_to_window(clock):
    cc = in_state(BLOCKED, clock, queued=4)
    sent = cc.on_response(3, clock.advance(10 * US))  # one credit back, window 3: three go
    assert list(sent) == ["q0", "q1", "q2"]
    assert cc.in_flight == 3 and cc.demand() == 1 and cc.state == BLOCKED
    assert cc.statistics().sent_from_queue == 3


def test_blocked_response_that_empties_queue_goes_ready(clock):
    cc = in_state(BLOCKED, clock, queued=1)
    assert list(cc.on_response(4, clock())) == ["q0"]
    assert cc.state == READY and cc.in_flight == 1 and cc.demand() == 0


def test_blocked_response_with_shrunk_window_sends_nothing(clock):
    cc = in_state(READY, clock)  # window 3
    for i in range(3):
        cc.submit(i, clock())
    cc.submit("q", clock())
    # One of three responses back, but the server shrank the window to 1: 2 still in flight.
    assert cc.on_response(1, clock()) == ()
    assert cc.state == BLOCKED and cc.in_flight == 2 and cc.demand() == 1


def test_unlimited_response_with_window_returns_to_credits(clock):
    cc = in_state(UNLIMITED, clock)
    cc.submit("a", clock())
    cc.submit("b", clock())
    cc.on_response(1, clock())  # a server that uses credits answered (e.g. after a reconnect)
    assert cc.state == BLOCKED and cc.window == 1 and cc.in_flight == 1


def test_response_without_credits_info_unlimits_and_flushes_queue(clock):
    cc = in_state(BLOCKED, clock, queued=3)
    assert list(cc.on_response(None, clock())) == ["q0", "q1", "q2"]
    assert cc.state == UNLIMITED and cc.in_flight == 3 and cc.demand() == 0


@pytest.mark.parametrize("state", [READY, UNLIMITED])
def test_response_unlimited_from_other_states(state, clock):
    cc = in_state(state, clock)
    cc.submit("x", clock())
    assert cc.on_response(None, clock()) == ()
    assert cc.state == UNLIMITED


def test_stray_response_raises_and_changes_nothing(clock):
    cc = ClientCredits()
    with pytest.raises(ValueError, match="no request in flight"):
        cc.on_response(3, clock())
    assert cc.state == READY and cc.window == 1 and cc.statistics().responses == 0


@pytest.mark.parametrize("bad", [-1, 1 << 40])
def test_window_out_of_range_raises(bad, clock):
    cc = in_state(BLOCKED, clock, queued=1)
    with pytest.raises(ValueError, match="out of range"):
        cc.on_credit(bad, clock())
    assert cc.demand() == 1  # nothing lost


# --- CREDIT ----------------------------------------------------------------------------


def test_blocked_credit_frame_drains(clock):
    cc = in_state(BLOCKED, clock, queued=2)
    assert list(cc.on_credit(2, clock())) == ["q0"]  # 1 in flight + 1 new = window 2
    assert cc.state == BLOCKED and cc.statistics().credit_frames == 1


def test_ready_credit_frame_changes_window(clock):
    cc = in_state(READY, clock)
    assert cc.on_credit(7, clock()) == () and cc.window == 7 and cc.state == READY
    assert cc.on_credit(0, clock()) == () and cc.state == BLOCKED


def test_unlimited_credit_frame_returns_to_credits(clock):
    cc = in_state(UNLIMITED, clock)
    cc.on_credit(2, clock())
    assert cc.state == READY and cc.window == 2


def test_drained_client_woken_by_speculative_credit(clock):
    # The pattern the server's demand speculation relies on: window 0, nothing in flight,
    # a request waits; a standalone credit of 1 sends it.
    cc = in_state(READY, clock)
    cc.submit("a", clock())
    cc.on_response(0, clock())
    assert cc.submit("b", clock()) == Submit.QUEUED
    assert list(cc.on_credit(1, clock.advance(50 * US))) == ["b"]
    assert cc.in_flight == 1 and cc.state == BLOCKED


# --- EXPIRE / deadlines ----------------------------------------------------------------


def test_expire_drops_only_old_tokens_in_order(clock):
    cc = in_state(BLOCKED, clock)
    t0 = clock()
    cc.submit("a", t0)
    cc.submit("b", clock.advance(30 * US))
    cc.submit("c", clock.advance(30 * US))
    assert cc.next_deadline_ns() == t0 + 100 * US
    assert cc.expire(t0 + 100 * US - 1) == ()
    assert list(cc.expire(t0 + 130 * US)) == ["a", "b"]  # a at 100, b at exactly 130
    assert cc.next_deadline_ns() == t0 + 160 * US
    assert cc.statistics().expired == 2 and cc.demand() == 1
    assert cc.state == BLOCKED


@pytest.mark.parametrize("state", [READY, UNLIMITED])
def test_expire_with_empty_queue_is_nothing(state, clock):
    cc = in_state(state, clock)
    assert cc.expire(clock.advance(10**9)) == () and cc.state == state
    assert cc.next_deadline_ns() is None


def test_zero_max_wait_expires_at_once(clock):
    cc = ClientCredits(max_wait_ns=0)
    cc.submit("a", clock())
    cc.submit("b", clock())
    assert cc.next_deadline_ns() == clock()
    assert list(cc.expire(clock())) == ["b"]


# --- CANCEL ----------------------------------------------------------------------------


def test_blocked_cancel_removes_queued_token(clock):
    cc = in_state(BLOCKED, clock, queued=3)
    assert cc.cancel("q1") is True
    assert cc.cancel("q1") is False  # already gone
    assert cc.cancel("f0") is False  # in flight: its credit returns with its response
    assert list(cc.on_response(5, clock())) == ["q0", "q2"]
    assert cc.statistics().cancelled == 1


@pytest.mark.parametrize("state", [READY, UNLIMITED])
def test_cancel_when_nothing_queued(state, clock):
    cc = in_state(state, clock)
    assert cc.cancel("f0") is False and cc.state == state


def test_tokens_compare_by_equality(clock):
    cc = in_state(BLOCKED, clock)
    cc.submit(12345678901, clock())
    assert cc.cancel(12345678901) is True


# --- RESET -----------------------------------------------------------------------------


def test_blocked_reset_sends_head_on_implicit_credit(clock):
    cc = in_state(BLOCKED, clock, queued=2)
    assert list(cc.reset(clock())) == ["q0"]
    assert cc.in_flight == 1 and cc.window == 1 and cc.state == BLOCKED and cc.demand() == 1


@pytest.mark.parametrize("state", [READY, UNLIMITED])
def test_reset_goes_back_to_implicit_window(state, clock):
    cc = in_state(state, clock)
    cc.submit("x", clock())
    assert cc.reset(clock()) == ()
    assert cc.state == READY and cc.window == 1 and cc.in_flight == 0


# --- table conformance over random sequences ---------------------------------------------


def test_random_walk_respects_table_and_invariants(clock):
    """Drive random events; after each, the state is one the table allows, credit is never
    overspent, and every token ends in exactly one outcome."""
    import random

    rng = random.Random(7)
    cc = ClientCredits(max_queue=5, max_wait_ns=200 * US)
    outcome: dict[int, str] = {}
    flying: list[int] = []
    next_tok = 0
    for _ in range(5000):
        before = cc.state
        ev = rng.choice(list(ClientEvent))
        now = clock.advance(rng.randrange(0, 80 * US))
        if ev == ClientEvent.SUBMIT:
            tok, next_tok = next_tok, next_tok + 1
            v = cc.submit(tok, now)
            if v == Submit.SEND:
                flying.append(tok)
            elif v == Submit.REJECTED:
                outcome[tok] = "rejected"
        elif ev in (ClientEvent.RESPONSE, ClientEvent.RESPONSE_UNLIMITED):
            if not flying:
                continue
            outcome[flying.pop(rng.randrange(len(flying)))] = "done"
            # Mostly windows; sometimes a server without credits (RESPONSE_UNLIMITED).
            w = None if rng.random() < 0.1 else rng.randrange(0, 6)
            ev = ClientEvent.RESPONSE_UNLIMITED if w is None else ClientEvent.RESPONSE
            flying.extend(cc.on_response(w, now))
        elif ev == ClientEvent.CREDIT:
            flying.extend(cc.on_credit(rng.randrange(0, 6), now))
        elif ev == ClientEvent.EXPIRE:
            for t in cc.expire(now):
                outcome[t] = "expired"
        elif ev == ClientEvent.CANCEL:
            tok = rng.randrange(max(next_tok, 1))
            if cc.cancel(tok):
                outcome[tok] = "cancelled"
        elif ev == ClientEvent.RESET:
            for t in flying:
                outcome[t] = "lost"
            flying = list(cc.reset(now))
        assert cc.state in CLIENT_TABLE[(before, ev)][1], (before, ev, cc.state)
        assert cc.in_flight == len(flying)
        if cc.state != UNLIMITED and cc.demand():
            assert cc.in_flight >= cc.window  # nothing waits while a credit is free
    queued = next_tok - len(outcome) - len(flying)
    assert queued == cc.demand()
