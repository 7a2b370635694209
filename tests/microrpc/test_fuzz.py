"""Fuzz harnesses that stay (issue #10), and a regression test for each finding.

The generators, mutators and invariant checks live in ``fuzz/microrpc_targets.py``; the
long run (``fuzz/microrpc_fuzz.py``) draws millions of cases from them with plain seeded
``random.Random`` objects. Here hypothesis draws a few hundred per target through a
``random.Random`` it controls (``st.randoms``), so that a failure shrinks; the examples are
fixed (``derandomize``) so CI sees the same cases each run, and exploring is the long run's
job. The whole module runs in about 20 s.

Each ``check_*`` raises ``Finding`` when an invariant breaks; any exception other than
microrpc's own that escapes one is a finding too, so the tests let only ``RpcError`` pass.
"""
import gc
import os
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import breakwater
from microrpc import _clientcore, _core, _dispatch, codecs
from microrpc.errors import ProtocolError, RpcError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
import microrpc_targets as targets  # noqa: E402

# A case from st.randoms is hundreds of draws: the size and speed checks do not apply.
fuzz_settings = settings(deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])
rngs = st.randoms(use_true_random=False, note_method_calls=False)


def run_check(check, case):
    """``check(case)``; an error of microrpc's own escaping the code under test is allowed."""
    try:
        check(case)
    except RpcError:
        pass


# -- (a) the frame parser ------------------------------------------------------------------

@settings(fuzz_settings, max_examples=1000)
@given(st.sampled_from((1, 64, 300, _core.DEFAULT_MAX_MESSAGE_SIZE)),
       st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_parser_on_arbitrary_bytes(max_size, data, cuts):
    targets.check_parser((max_size, data, tuple(sorted(min(c, len(data)) for c in cuts))))


@settings(fuzz_settings, max_examples=1000)
@given(rngs)
def test_parser_on_mutated_frame_streams(rng):
    targets.check_parser(targets.gen_parser(rng))


# -- (b) bodies and codecs -----------------------------------------------------------------

@settings(fuzz_settings, max_examples=1200)
@given(rngs)
def test_hostile_bodies_at_the_server_and_the_client(rng):
    run_check(targets.check_codecs, targets.gen_codecs(rng))


@settings(fuzz_settings, max_examples=500)
@given(st.binary(max_size=200))
def test_any_error_body_maps_to_an_rpc_error(body):
    assert isinstance(_clientcore.error_from_body(body), RpcError)


@settings(fuzz_settings, max_examples=200)
@given(st.one_of(st.text(max_size=10), st.none(), st.integers(), st.lists(st.integers())))
def test_codec_names_are_known_or_a_value_error(name):
    try:
        assert codecs.CODECS[name] == codecs.codec_id(name)
    except (KeyError, TypeError):
        with pytest.raises(ValueError, match="unknown codec"):
            codecs.codec_id(name)


# -- (c) the server core -------------------------------------------------------------------

@settings(fuzz_settings, max_examples=400)
@given(rngs)
def test_server_core_on_hostile_frame_sequences(rng):
    # The known findings have their own xfail tests below; a case that only shows them
    # again would hide anything new.
    run_check(targets.check_server,
              targets.gen_server(rng, avoid=targets.KNOWN_SERVER_FINDINGS))


# -- (d) the client core -------------------------------------------------------------------

@settings(fuzz_settings, max_examples=600)
@given(rngs)
def test_client_core_on_hostile_reply_sequences(rng):
    run_check(targets.check_client, targets.gen_client(rng))


# -- the harnesses catch what they are for --------------------------------------------------

def test_the_parser_check_knows_the_wire_rules():
    """The reference rules the parser is compared with refuse what docs/wire.md refuses."""
    ok = targets.raw_frame(_core.PING, 1)
    assert targets.reference_frames(ok + ok[:10], 64) == (1, False)
    assert targets.reference_frames(ok + b"GET / HTTP", 64) == (1, True)
    assert targets.reference_frames(targets.raw_frame(_core.RESPONSE, 1, b"x"), 64) == (0, True)
    assert targets.reference_frames(targets.raw_frame(_core.PING, 1, body_len=65), 64) == (
        0, True)
    # KWARGS (flag bit 1) is a request's; on any other kind the frame is malformed.
    kw = targets.raw_frame(_core.REQUEST, 1, b"f", b"\x92\x90\x80", flags=_core.KWARGS)
    assert targets.reference_frames(kw, 64) == (1, False)
    assert targets.reference_frames(targets.raw_frame(_core.PING, 1, flags=_core.KWARGS),
                                    64) == (0, True)
    assert targets.reference_frames(targets.raw_frame(_core.REQUEST, 1, b"f", flags=4),
                                    64) == (0, True)


def test_the_pickle_guard_sees_an_unpickling():
    with targets.pickle_guard() as guard:
        import pickle
        assert pickle.loads(b"\x80\x05N.") == ("unpickled",)
    assert guard.calls == 1 and pickle.loads(b"\x80\x05N.") is None


def test_a_reused_call_id_passes_the_server_check():
    """Once a known finding (a reused call id lost a reply at stop): the reused id is now
    refused with BAD_REQUEST, and the check sees one reply per request."""
    case = ({"policy": None, "pickle": False, "max": 4096, "abandon": True,
             "unique_ids": False},
            (("bytes", 0, (_block(7) + _block(7),)), ("run", 10 ** 9), ("pool", 2),
             ("stop", 0), ("stop_step",)))
    targets.check_server(case)


# -- regression tests: client core ---------------------------------------------------------

def _frame(kind, call_id=0, body=b"", **fields):
    return targets._frame(targets.raw_frame(kind, call_id, body=body, session=7, **fields))


@pytest.mark.parametrize("window", [(1 << 31) + 1, 0xFFFFFFFF])
def test_a_pong_with_an_impossible_window_is_a_protocol_error(window):
    """Found by the client target: the handshake's window went to ClientCredits unchecked,
    and its ValueError escaped ClientCore.receive (a CREDIT frame was already checked)."""
    core = _clientcore.ClientCore(_core.MSGPACK, 7)
    core.begin(0)
    core.out.take()
    assert core.receive([_frame(_core.PONG, flags=_core.HAS_CREDIT, credit=window)], 0) == ()
    assert core.state == _clientcore.BROKEN and isinstance(core.error, ProtocolError)


@pytest.mark.parametrize("kind, codec", [(_core.RESPONSE, _core.PICKLE),
                                         (_core.ERROR, _core.RAW)])
def test_a_reply_in_the_wrong_codec_also_ends_the_calls_waiting_for_credit(kind, codec):
    """Found by the client target: the reply's credit was counted before its codec was
    checked, so the queued call it let go was neither sent nor ended by the break."""
    core = _clientcore.ClientCore(_core.MSGPACK, 7, credit_queue=4)
    core.begin(0)
    core.out.take()
    core.receive([_frame(_core.PONG, flags=_core.HAS_CREDIT, credit=2)], 0)
    calls = []
    for _ in range(3):
        call = _clientcore.Call()
        call.watched = True
        core.prepare(call, "echo", (1,), None, 0)
        core.submit(call, 0)
        calls.append(call)
    assert [c.state for c in calls] == [_clientcore.SENT, _clientcore.SENT, _clientcore.QUEUED]
    first = targets._frames(core.out.take())[1].call_id
    ended = core.receive([_frame(kind, first, b"\x80\x05N.", codec=codec)], 0)
    assert core.state == _clientcore.BROKEN
    assert all(c.state == _clientcore.DONE and isinstance(c.error, ProtocolError)
               for c in calls)
    assert sorted(map(id, ended)) == sorted(map(id, calls))


def test_calls_that_ended_do_not_pile_up_behind_a_pending_deadline():
    """Found reading the client core for the fuzz target's bounded-state invariant: the
    heap of explicit deadlines kept every ended call until the earliest pending deadline
    passed (the default-timeout deque was already compacted), so one hung call with a 10 s
    timeout kept the calls of the next 10 s alive, at any call rate."""
    core = _clientcore.ClientCore(_core.RAW, 7, 1 << 16)
    core.begin(0)
    core.out.take()
    core.receive([_frame(_core.PONG)], 0)

    def call(timeout):
        c = _clientcore.Call()
        core.prepare(c, "echo", (b"x",), timeout, 0)
        core.submit(c, 0)
        return c

    hung = call(10.0)
    core.out.take()
    for _ in range(5000):
        call(20.0)
        (request,) = targets._frames(core.out.take())
        core.receive([_frame(_core.RESPONSE, request.call_id, b"y", codec=_core.RAW)], 0)
    gc.collect()
    alive = sum(type(o) is _clientcore.Call for o in gc.get_objects())
    assert hung.pending and alive < 1500          # the compaction bound, not 5,001


# -- regression tests: server core (findings of the fuzzer, fixed) --

def _block(call_id, name=b"block", **fields):
    return targets.raw_frame(_core.REQUEST, call_id, name, msgpack.packb([]),
                             codec=_core.MSGPACK, **fields)


def _sim(policy=None):
    return targets.ServerSim({"policy": None, "pickle": False, "max": 4096, "abandon": True},
                             policy)


def test_a_reused_call_id_loses_no_reply_at_stop():
    sim = _sim()
    ps = sim.add_peer()
    sim.deliver(ps, _block(7) + _block(7))          # both go to the worker pool
    sim.core.run(sim.t, 10 ** 9)
    while sim.tasks:                                 # both finish; neither is drained yet
        fn, args = sim.tasks.pop(0)
        fn(*args)
    sim.core.request_stop(sim.t, 0)
    assert sim.core.stop_step(sim.t)
    sim.read(ps)
    assert ps.replies[7] == 2


def test_a_reused_call_id_of_a_deferred_call_is_ended_when_its_client_leaves():
    limit = breakwater.ConcurrencyLimit(2)
    sim = _sim(limit)
    ps = sim.add_peer()
    sim.deliver(ps, _block(7, b"defer") + _block(7, b"defer"))
    sim.core.run(sim.t, 10 ** 9)
    # The reused id is refused (BAD_REQUEST) without running; the first call waits.
    assert len(sim.deferred) == 1
    sim.read(ps)
    assert ps.replies[7] == 1
    sim.close(ps)
    stats = limit.statistics()
    # Otherwise each such client leaves the limit one slot smaller, for good.
    assert (stats.in_flight, sim.core.queue_depth()) == (0, 0)


def test_a_call_deferred_after_its_client_left_is_ended():
    limit = breakwater.ConcurrencyLimit(2)
    sim = _sim(limit)
    ps = sim.add_peer()
    sim.deliver(ps, _block(7, b"wdefer"))
    sim.core.run(sim.t, 10 ** 9)                            # on the worker pool, not started
    sim.close(ps)
    fn, args = sim.tasks.pop(0)
    fn(*args)                                         # the handler defers: nobody to answer
    sim.core.drain_completions(sim.t)
    assert (limit.statistics().in_flight, sim.core.queue_depth()) == (0, 0)


class _Pool:
    """A worker pool that runs nothing until the test says so."""

    def __init__(self):
        self.tasks = []

    def submit(self, fn, *args):
        self.tasks.append((fn, args))


def _not_utf8_error(*args):
    # What open(path) raises for a bytes path that is not UTF-8: os.fsdecode keeps the
    # undecodable bytes as lone surrogates, which UTF-8 (and so msgpack) cannot encode.
    raise FileNotFoundError(os.fsdecode(b"\xffname"))


@pytest.mark.parametrize("how", ["inline", "blocking", "deferred"])
def test_a_handler_error_that_is_not_utf8_is_still_one_error_reply(how):
    deferred = []
    if how == "deferred":
        method = _dispatch.Method(lambda ctx: deferred.append(ctx.defer()), context=True)
    else:
        method = _dispatch.Method(_not_utf8_error, blocking=how == "blocking")
    pool = _Pool()
    core = _dispatch.ServerCore({b"m": method}, executor=pool, wake=lambda: None,
                                clock=lambda: 0)
    peer = _dispatch.Peer()
    core.add_peer(peer, "peer")
    core.feed(peer, targets._frame(targets.raw_frame(_core.REQUEST, 1, b"m", msgpack.packb([]),
                                                     codec=_core.MSGPACK)), 0)
    core.run(0, 10 ** 9)
    for fn, args in pool.tasks:
        fn(*args)
    for d in deferred:
        try:
            raise FileNotFoundError(os.fsdecode(b"\xffname"))
        except FileNotFoundError as exc:
            d.error(exc)
    core.drain_completions(0)
    (reply,) = targets._frames(peer.out.take())
    assert reply.kind == _core.ERROR
    assert msgpack.unpackb(reply.body)[:3] == [_core.REMOTE_ERROR, "FileNotFoundError",
                                               "\\udcffname"]
