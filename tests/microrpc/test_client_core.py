"""The client protocol core alone: frames in, frames out, a fake clock, no sockets.

Each test plays the server by hand: it reads the frames the core put in ``core.out`` and
feeds it reply frames with a chosen time.
"""
import pickle
import sys

import msgpack
import pytest

import microrpc
from microrpc import _clientcore, _core
from microrpc._clientcore import Call, ClientCore

MS = 1_000_000
S = 1_000_000_000


def frames_out(core):
    """The frames the core wants sent (and empty its buffer, as a channel would)."""
    parser = _core.FrameParser()
    parser.feed(core.out.take())
    return parser.frames()


def frame(kind, call_id=0, body=b"", **fields):
    parser = _core.FrameParser()
    parser.feed(_core.encode_frame(kind, call_id, b"", body, **fields))
    return parser.frames()[0]


def error_body(code, type_name="T", message="m", tb=None):
    return msgpack.packb([code, type_name, message, tb])


def ready_core(codec=_core.MSGPACK, window=None, timeout=None, now=0, session=7):
    core = ClientCore(codec, session, 1 << 20, timeout)
    core.begin(now)
    (ping,) = frames_out(core)
    assert ping.kind == _core.PING and ping.session == session
    assert not core.ready
    pong = (frame(_core.PONG, flags=_core.HAS_CREDIT, credit=window) if window is not None
            else frame(_core.PONG))
    assert core.receive([pong], now) == ()
    assert core.ready
    return core


def start(core, method="echo", *args, timeout=_clientcore.USE_DEFAULT, now=0, watched=False):
    call = Call()
    call.watched = watched
    core.prepare(call, method, args, timeout, now)
    core.submit(call, now)
    return call


def test_handshake_says_whether_the_server_hands_out_credits():
    assert ready_core().credits is None
    core = ready_core(window=3)
    assert core.credits.window == 3
    with pytest.raises(RuntimeError, match="not ended"):
        core.begin(0)


def test_a_call_is_one_request_frame_and_ends_with_its_response():
    core = ready_core(timeout=2.0)
    call = start(core, "add", 1, 2, now=5 * MS, watched=True)
    assert call.state == _clientcore.SENT and call.pending
    (req,) = frames_out(core)
    assert (req.kind, req.name, req.codec, req.session) == (_core.REQUEST, b"add", _core.MSGPACK, 7)
    assert msgpack.unpackb(req.body) == [1, 2]
    assert req.deadline_us == 2_000_000 and call.deadline == 5 * MS + 2 * S
    ended = core.receive([frame(_core.RESPONSE, req.call_id, msgpack.packb(3),
                                codec=_core.MSGPACK)], 6 * MS)
    assert list(ended) == [call]
    assert call.state == _clientcore.DONE and call.outcome() == 3
    assert (core.started, core.ok, core.failed, core.in_flight) == (1, 1, 0, 0)


def test_only_watched_calls_are_handed_back():
    core = ready_core()
    quiet = start(core)
    (req,) = frames_out(core)
    assert core.receive([frame(_core.RESPONSE, req.call_id, msgpack.packb(None),
                               codec=_core.MSGPACK)], 0) == ()
    assert quiet.state == _clientcore.DONE


@pytest.mark.parametrize("code, error", [
    (1, microrpc.RemoteError), (2, microrpc.MethodNotFound), (3, microrpc.DeadlineExceeded),
    (4, microrpc.MessageTooLarge), (5, microrpc.Overloaded), (6, microrpc.ProtocolError),
    (7, microrpc.ConnectionLost), (99, microrpc.ProtocolError),
])
def test_error_codes_map_to_one_error_each(code, error):
    core = ready_core()
    call = start(core)
    (req,) = frames_out(core)
    core.receive([frame(_core.ERROR, req.call_id, error_body(code), codec=_core.MSGPACK)], 0)
    with pytest.raises(error):
        call.outcome()
    assert core.failed == 1 and core.ready          # an error reply is not a broken connection
    if code == 5:
        assert call.error.side == "server"


def test_a_reply_in_another_codec_is_never_decoded():
    """A pickle body sent to a msgpack client would run code if it were unpickled."""
    class Payload:
        def __reduce__(self):
            return (exec, ("import sys; sys._microrpc_core_pwned = True",))

    core = ready_core()
    a, b = start(core, watched=True), start(core, watched=True)
    req_a, _ = frames_out(core)
    ended = core.receive([frame(_core.RESPONSE, req_a.call_id, pickle.dumps(Payload()),
                                codec=_core.PICKLE)], 0)
    assert not hasattr(sys, "_microrpc_core_pwned")
    assert core.state == _clientcore.BROKEN and isinstance(core.error, microrpc.ProtocolError)
    assert set(ended) == {a, b}                   # every call on the connection ended
    for call in (a, b):
        with pytest.raises(microrpc.ProtocolError, match="codec"):
            call.outcome()


def test_an_error_frame_must_be_msgpack():
    core = ready_core(codec=_core.RAW)
    call = start(core, "echo", b"x")
    (req,) = frames_out(core)
    core.receive([frame(_core.ERROR, req.call_id, error_body(1), codec=_core.RAW)], 0)
    assert core.state == _clientcore.BROKEN
    with pytest.raises(microrpc.ProtocolError):
        call.outcome()


@pytest.mark.parametrize("kind", [_core.REQUEST, _core.CANCEL, _core.PING])
def test_frames_only_clients_send_break_the_connection(kind):
    core = ready_core()
    call = start(core)
    if kind == _core.REQUEST:
        bad = _core.FrameParser()
        bad.feed(_core.encode_frame(kind, 1, b"m", b""))
        bad = bad.frames()[0]
    else:
        bad = frame(kind, 1)
    core.receive([bad], 0)
    assert core.state == _clientcore.BROKEN
    with pytest.raises(microrpc.ProtocolError, match="only clients send"):
        call.outcome()


def test_an_undecodable_body_fails_that_call_only():
    core = ready_core()
    call, other = start(core), start(core)
    req, req2 = frames_out(core)
    core.receive([frame(_core.RESPONSE, req.call_id, b"\xc1", codec=_core.MSGPACK)], 0)
    with pytest.raises(microrpc.ProtocolError, match="undecodable"):
        call.outcome()
    assert core.ready and other.pending


def test_raw_codec_passes_bytes_through_and_checks_its_argument():
    core = ready_core(codec=_core.RAW)
    call = start(core, "echo", bytearray(b"ab"))
    (req,) = frames_out(core)
    assert req.codec == _core.RAW and req.body == b"ab"
    core.receive([frame(_core.RESPONSE, req.call_id, b"\x00\xff", codec=_core.RAW)], 0)
    assert call.outcome() == b"\x00\xff"
    for args in [(), ("text",), (b"a", b"b")]:
        with pytest.raises(TypeError, match="raw codec"):
            core.prepare(Call(), "echo", args, None, 0)


def test_bad_names_and_sizes_are_refused_before_anything_is_sent():
    core = ClientCore(_core.RAW, 0, 100, None)
    with pytest.raises(ValueError, match="1..255"):
        core.prepare(Call(), "", (b"x",), None, 0)
    with pytest.raises(TypeError, match="str"):
        core.prepare(Call(), b"echo", (b"x",), None, 0)
    with pytest.raises(microrpc.MessageTooLarge):
        core.prepare(Call(), "echo", (b"x" * 200,), None, 0)
    with pytest.raises(ValueError, match="positive"):
        core.prepare(Call(), "echo", (b"x",), 0, 0)
    with pytest.raises(microrpc.ConnectionLost):            # not connected yet
        call = Call()
        core.prepare(call, "echo", (b"x",), None, 0)
        core.submit(call, 0)
    core.abort(call, microrpc.ConnectionLost("no"))
    assert call.state == _clientcore.DONE and (core.started, core.failed) == (1, 1)


def test_deadlines_expire_in_order_and_cancel_at_the_server():
    core = ready_core(timeout=1.0)
    slow = start(core, now=0, watched=True)                    # default: due at 1 s
    quick = start(core, timeout=0.1, now=0, watched=True)     # due at 100 ms
    never = start(core, timeout=None, now=0)
    req_slow, req_quick, _ = frames_out(core)
    assert req_quick.deadline_us == 100_000 and req_slow.deadline_us == 1_000_000
    assert core.next_deadline() == 100 * MS
    assert core.expire(99 * MS) == ()
    assert list(core.expire(100 * MS)) == [quick]
    (cancel,) = frames_out(core)
    assert cancel.kind == _core.CANCEL and cancel.call_id == req_quick.call_id
    with pytest.raises(microrpc.DeadlineExceeded):
        quick.outcome()
    assert core.next_deadline() == 1 * S
    # The late reply to the expired call is dropped, and does not touch the others.
    core.receive([frame(_core.RESPONSE, req_quick.call_id, msgpack.packb(1),
                        codec=_core.MSGPACK)], 200 * MS)
    assert core.stray_replies == 1 and slow.pending and never.pending
    assert list(core.expire(1 * S)) == [slow]
    assert core.next_deadline() == 0 and never.pending
    assert (core.timeouts, core.cancelled) == (2, 0)


def test_finished_calls_do_not_pile_up_behind_a_long_one():
    core = ready_core(timeout=10.0)
    long_call = start(core)
    frames_out(core)
    for i in range(5000):
        call = start(core, now=i)
        (req,) = frames_out(core)
        core.receive([frame(_core.RESPONSE, req.call_id, msgpack.packb(0),
                            codec=_core.MSGPACK)], i)
        assert call.state == _clientcore.DONE
    assert core.next_deadline() == 10 * S           # still the long call's
    assert long_call.pending and core.in_flight == 1


def test_credits_queue_send_and_expire():
    core = ready_core(window=1)
    first = start(core, now=0)
    second = start(core, now=0, watched=True)
    third = start(core, now=10 * MS, watched=True)
    assert (first.state, second.state, third.state) == (
        _clientcore.SENT, _clientcore.QUEUED, _clientcore.QUEUED)
    (req,) = frames_out(core)
    assert req.credit == 0                          # demand piggybacked: none queued yet
    assert core.in_flight == 3
    # The response returns the credit and widens the window: the queue head goes out.
    core.receive([frame(_core.RESPONSE, req.call_id, msgpack.packb(1), codec=_core.MSGPACK,
                        flags=_core.HAS_CREDIT, credit=1)], 1 * MS)
    (req2,) = frames_out(core)
    assert req2.call_id != req.call_id and second.state == _clientcore.SENT
    # The third waits longer than the credit wait allows: Overloaded on the client side.
    wait_ns = core.credits.max_wait_ns
    assert core.next_deadline() == 10 * MS + wait_ns
    assert list(core.expire(10 * MS + wait_ns)) == [third]
    with pytest.raises(microrpc.Overloaded) as info:
        third.outcome()
    assert info.value.side == "client"
    # A standalone credit frame lets the next queued call go.
    fourth = start(core, now=20 * MS)
    assert fourth.state == _clientcore.QUEUED
    core.receive([frame(_core.CREDIT, 0, flags=_core.HAS_CREDIT, credit=2)], 21 * MS)
    (req4,) = frames_out(core)
    assert fourth.state == _clientcore.SENT and req4.name == b"echo"


def test_a_full_credit_queue_rejects_at_once():
    core = ready_core(window=0)
    calls = [start(core, watched=True) for _ in range(core.credits.max_queue + 1)]
    assert calls[-1].state == _clientcore.DONE
    assert core.take_ended() == ()          # submit's return value told the caller
    with pytest.raises(microrpc.Overloaded, match="queue is full"):
        calls[-1].outcome()
    assert all(c.state == _clientcore.QUEUED for c in calls[:-1])


def test_cancel_sent_queued_and_finished_calls():
    core = ready_core(window=1)
    sent, queued = start(core), start(core)
    (req,) = frames_out(core)
    assert core.cancel(queued) and queued.state == _clientcore.CANCELLED
    assert core.credits.demand() == 0
    assert core.cancel(sent)
    (cancel,) = frames_out(core)
    assert (cancel.kind, cancel.call_id) == (_core.CANCEL, req.call_id)
    assert not core.cancel(sent)                    # once
    # The server still answers the cancelled call: its credit comes back, nothing else.
    core.receive([frame(_core.ERROR, req.call_id, error_body(3), codec=_core.MSGPACK,
                        flags=_core.HAS_CREDIT, credit=1)], 0)
    assert core.stray_replies == 1 and core.credits.in_flight == 0
    assert core.cancelled == 2


def test_a_failed_connection_ends_every_call_and_a_new_one_starts_clean():
    core = ready_core(window=1, timeout=5.0)
    sent = start(core, watched=True)
    queued = start(core, watched=True)
    frames_out(core)
    lost = microrpc.ConnectionLost("gone")
    assert set(core.fail(lost)) == {sent, queued}
    assert sent.error is lost and queued.error is lost
    assert core.state == _clientcore.BROKEN and core.credits is None and core.in_flight == 0
    assert core.next_deadline() == 0
    with pytest.raises(microrpc.ConnectionLost):
        start(core)
    core.close_idle()
    core.begin(1 * S)
    (ping,) = frames_out(core)                      # nothing of the old connection is resent
    assert ping.kind == _core.PING
    core.receive([frame(_core.PONG)], 1 * S)
    again = start(core, now=1 * S)
    (req,) = frames_out(core)
    assert req.call_id == (7 << 32) | 2             # ids go on: 1 was the lost call's
    core.receive([frame(_core.RESPONSE, req.call_id, msgpack.packb("ok"),
                        codec=_core.MSGPACK)], 1 * S)
    assert again.outcome() == "ok" and core.handshakes == 2
    assert (core.started, core.ok, core.failed) == (3, 1, 2)


def test_sessions_sharing_one_connection_share_its_buffer_not_their_ids():
    """The load generator's layout: a core per simulated client, one output buffer per
    connection, frames routed back to the cores by their session field."""
    out = _core.OutBuffer()
    cores = {s: ClientCore(_core.RAW, s, 1 << 20, 1.0) for s in (1, 2)}
    for core in cores.values():
        core.begin(0, out)
    parser = _core.FrameParser()
    parser.feed(out.take())
    pings = parser.frames()
    assert [p.session for p in pings] == [1, 2]
    for p in pings:
        cores[p.session].receive_frame(frame(_core.PONG, p.call_id, session=p.session), 0)
    calls = {}
    for s, core in cores.items():
        call = Call()
        call.watched = True
        core.prepare_body(call, "echo", b"body%d" % s, _clientcore.USE_DEFAULT, 0)
        core.submit(call, 0)
        calls[s] = call
    parser.feed(out.take())
    reqs = parser.frames()
    assert len({r.call_id for r in reqs}) == 2 and [r.body for r in reqs] == [b"body1", b"body2"]
    for r in reqs:
        ended = cores[r.session].receive_frame(
            frame(_core.RESPONSE, r.call_id, r.body, codec=_core.RAW, session=r.session), 0)
        assert list(ended) == [calls[r.session]]
    assert calls[1].outcome() == b"body1" and calls[2].outcome() == b"body2"


def test_a_reply_over_the_clients_decode_limits_fails_that_call_only():
    # A hostile server must not make a client decode a bomb (issue #10).
    core = ClientCore(_core.MSGPACK, 7, 32 << 20, None,
                      decode_limits=microrpc.DecodeLimits(max_items=1000))
    core.begin(0)
    frames_out(core)
    core.receive([frame(_core.PONG)], 0)
    bomb_call = start(core, "echo", watched=True)
    ok_call = start(core, "echo", watched=True)
    bomb_req, ok_req = frames_out(core)
    n = 16 * 1024 * 1024 - 64
    bomb = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    core.receive([frame(_core.RESPONSE, bomb_req.call_id, bomb, codec=_core.MSGPACK),
                  frame(_core.RESPONSE, ok_req.call_id, msgpack.packb([1] * 999),
                        codec=_core.MSGPACK)], 0)
    with pytest.raises(microrpc.ProtocolError, match="max_array_len=1000"):
        bomb_call.outcome()
    assert ok_call.outcome() == [1] * 999 and core.ready
    n = 100_000                                        # an error body is bounded as well
    bad = start(core, "echo", watched=True)
    (req,) = frames_out(core)
    core.receive([frame(_core.ERROR, req.call_id, msgpack.packb([1, "T", "m" * 10, ["x"] * n]),
                        codec=_core.MSGPACK)], 0)
    with pytest.raises(microrpc.ProtocolError):
        bad.outcome()


# -- exactly-once calls (microrpc.exactly_once) --------------------------------------------


def reply(call_id, value):
    return frame(_core.RESPONSE, call_id, msgpack.packb(value), codec=_core.MSGPACK)


def refusal(call_id, code):
    return frame(_core.ERROR, call_id, error_body(code), codec=_core.MSGPACK)


def once_core(lease=5, now=0, window=None, timeout=None):
    """A ready exactly-once core that asked for a lease and got ``lease``."""
    core = ClientCore(_core.MSGPACK, 7, 1 << 20, timeout, exactly_once=True,
                      **({"once_window": window} if window else {}))
    core.begin(now)
    frames_out(core)
    core.receive([frame(_core.PONG)], now)
    (ask,) = frames_out(core)
    assert (ask.name, ask.codec, ask.flags & _core.ONCE) == (b"_microrpc.lease", _core.MSGPACK, 0)
    core.receive([reply(ask.call_id, [lease, 60.0])], now)
    assert core.once_lease == lease
    return core


def test_once_calls_wait_for_the_lease_then_carry_it_with_their_number_and_ack():
    core = ClientCore(_core.MSGPACK, 7, 1 << 20, None, exactly_once=True)
    core.begin(0)
    frames_out(core)
    core.receive([frame(_core.PONG)], 0)
    a = start(core, "bump", 1)                      # before the lease: parked
    (ask,) = frames_out(core)
    assert ask.name == b"_microrpc.lease" and a.pending
    core.receive([reply(ask.call_id, [9, 60.0])], 0)
    (ra,) = frames_out(core)
    assert ra.flags & _core.ONCE and (ra.lease, ra.seq, ra.ack) == (9, 1, 0)
    b = start(core, "bump", 2)
    (rb,) = frames_out(core)
    assert (rb.lease, rb.seq, rb.ack) == (9, 2, 0)
    core.receive([reply(rb.call_id, 2)], 0)   # out of order
    c = start(core, "bump", 3)
    assert frames_out(core)[0].ack == 0              # call 1 still pending
    core.receive([reply(ra.call_id, 1)], 0)
    d = start(core, "bump", 4)
    assert frames_out(core)[0].ack == 2              # 1 and 2 ended; 3 is pending
    assert (a.value, b.value, c.pending, d.pending) == (1, 2, True, True)


def test_a_server_without_leases_fails_the_waiting_calls_clearly():
    core = ClientCore(_core.MSGPACK, 7, 1 << 20, None, exactly_once=True)
    core.begin(0)
    frames_out(core)
    core.receive([frame(_core.PONG)], 0)
    a = start(core, "bump", 1, watched=True)
    (ask,) = frames_out(core)
    ended = core.receive([refusal(ask.call_id, _core.METHOD_NOT_FOUND)], 0)
    assert ended == [a] and isinstance(a.error, microrpc.ProtocolError)
    assert "grants no leases" in str(a.error)


def test_a_lost_connection_parks_once_calls_and_the_next_sends_them_with_the_same_id():
    core = once_core()
    a = start(core, "bump", 1, watched=True)
    plain = ClientCore(_core.MSGPACK, 7, 1 << 20, None)          # for contrast: no retry
    (first,) = frames_out(core)
    assert core.fail(microrpc.ConnectionLost("reset"), True) == ()
    assert a.pending and core.waiting and core.in_flight == 1
    core.close_idle()
    core.begin(0)
    frames_out(core)
    core.receive([frame(_core.PONG)], 0)                    # lease kept: no new ask
    (again,) = frames_out(core)
    assert (again.lease, again.seq, again.body) == (first.lease, first.seq, first.body)
    assert again.call_id != first.call_id and core.resends == 1
    core.receive([reply(again.call_id, 7)], 0)
    assert a.value == 7 and not core.waiting and plain.state == _clientcore.IDLE


def test_closing_ends_parked_calls_and_a_failed_reconnect_ends_those_without_deadline():
    core = once_core()
    a = start(core, "bump", 1, watched=True)                        # no deadline
    b = start(core, "bump", 2, watched=True, timeout=1.0)
    frames_out(core)
    core.fail(microrpc.ConnectionLost("reset"), True)
    assert core.fail_waiting(microrpc.ConnectionLost("refused")) == [a]
    assert b.pending and core.waiting
    ended = core.expire(2 * S)                               # its deadline: it ends
    assert ended == [b] and isinstance(b.error, microrpc.DeadlineExceeded)
    c = Call()
    c.watched = True
    core2 = once_core()
    core2.prepare(c, "bump", (1,), None, 0)
    core2.submit(c, 0)
    core2.fail(microrpc.ConnectionLost("reset"), True)
    assert core2.fail(microrpc.ConnectionLost("closed")) == [c]      # close: no retry


def test_in_progress_asks_again_after_a_backoff():
    core = once_core()
    a = start(core, "slow", watched=True)
    (r1,) = frames_out(core)
    core.receive([refusal(r1.call_id, _core.IN_PROGRESS)], 0)
    assert a.pending and frames_out(core) == [] and core.next_deadline() == 1 * MS
    core.expire(1 * MS)
    (r2,) = frames_out(core)
    assert (r2.seq, r2.lease) == (r1.seq, r1.lease)
    core.receive([refusal(r2.call_id, _core.IN_PROGRESS)], 1 * MS)
    assert core.next_deadline() == 3 * MS                     # doubled
    core.expire(3 * MS)
    (r3,) = frames_out(core)
    core.receive([reply(r3.call_id, "done")], 3 * MS)
    assert a.value == "done"


def test_an_expired_lease_is_renewed_for_a_call_that_never_ran_and_not_for_a_retry():
    core = once_core(lease=5)
    a = start(core, "bump", 1, watched=True)
    (ra,) = frames_out(core)
    core.receive([refusal(ra.call_id, _core.LEASE_EXPIRED)], 0)
    (ask,) = frames_out(core)                        # refused unrun: a new lease, again
    assert ask.name == b"_microrpc.lease" and a.pending and core.once_lease == 0
    core.receive([reply(ask.call_id, [6, 60.0])], 0)
    (ra2,) = frames_out(core)
    assert (ra2.lease, ra2.seq) == (6, ra.seq)
    core.receive([reply(ra2.call_id, 1)], 0)
    assert a.value == 1
    # A call sent twice (a lost connection between): its first copy may have run under
    # the lease that expired, so it must not go again under a new one.
    b = start(core, "bump", 2, watched=True)
    frames_out(core)
    core.fail(microrpc.ConnectionLost("reset"), True)
    core.close_idle()
    core.begin(0)
    frames_out(core)
    core.receive([frame(_core.PONG)], 0)
    (rb,) = frames_out(core)
    ended = core.receive([refusal(rb.call_id, _core.LEASE_EXPIRED)], 0)
    assert ended == [b] and isinstance(b.error, microrpc.ConnectionLost)
    assert "may or may not have run" in str(b.error)


def test_calls_past_the_window_wait_unnumbered_until_older_ones_end():
    core = once_core(window=2)
    calls = [start(core, "bump", i, watched=True) for i in range(4)]
    sent = frames_out(core)
    assert [f.seq for f in sent] == [1, 2] and core.in_flight == 4
    core.receive([reply(sent[1].call_id, 0)], 0)
    assert frames_out(core) == []                    # 1 is still pending: no room yet
    core.receive([reply(sent[0].call_id, 0)], 0)
    more = frames_out(core)
    assert [(f.seq, f.ack) for f in more] == [(3, 2), (4, 2)]
    assert all(c.pending for c in calls[2:])
    assert core.cancel(calls[3]) and core.in_flight == 1
