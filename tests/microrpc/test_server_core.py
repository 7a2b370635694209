"""The server core without sockets: frames in, reply bytes out, a fake clock, a manual
worker pool. Everything time-dependent (deadlines, batching, grace, the overload signal) is
driven by advancing the clock by hand."""
import threading

import msgpack
import pytest

import breakwater
from microrpc import _core, _dispatch
from microrpc.exactly_once import CompletionTable, LocalLeases

MS = 1_000_000
US = 1_000


class FakeClock:
    def __init__(self, t=10_000 * MS):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, ns):
        self.t += ns


class ManualPool:
    """An executor that holds tasks until the test runs them."""

    def __init__(self):
        self.tasks = []

    def submit(self, fn, *args):
        self.tasks.append((fn, args))

    def run_all(self):
        tasks, self.tasks = self.tasks, []
        for fn, args in tasks:
            fn(*args)
        return len(tasks)


class CountingPolicy(breakwater.NoControl):
    """Admits what ``admit`` says, issues credits if asked, and records every call."""

    def __init__(self, credits=False):
        super().__init__()
        self.uses_credits = credits
        self.admit = True
        self.delays = []
        self.completes = 0
        self.closed = []

    def on_request(self, sid, demand, now_ns, queue_delay_ns):
        self.delays.append(queue_delay_ns)
        if not self.admit:
            self._rejected_aqm += 1
            return False
        return super().on_request(sid, demand, now_ns, queue_delay_ns)

    def on_reject(self, sid, now_ns):
        return 3

    def on_complete(self, sid, now_ns):
        self.completes += 1
        super().on_complete(sid, now_ns)
        return 7

    def close_session(self, sid, now_ns):
        self.closed.append(sid)
        super().close_session(sid, now_ns)


def frame(kind, call_id, name=b"", body=b"", **fields):
    parser = _core.FrameParser()
    parser.feed(_core.encode_frame(kind, call_id, name, body, **fields))
    return parser.next()


class Harness:
    def __init__(self, policy=None, **options):
        self.clock = FakeClock()
        self.pool = ManualPool()
        self.methods = {}
        self.wakes = 0
        self._lock = threading.Lock()
        self.core = _dispatch.ServerCore(self.methods, executor=self.pool, wake=self._wake,
                                         clock=self.clock, policy=policy, **options)

    def _wake(self):
        with self._lock:
            self.wakes += 1

    def register(self, name, fn, **kind):
        self.methods[name.encode()] = _dispatch.Method(fn, **kind)

    def peer(self, label="peer"):
        p = _dispatch.Peer()
        self.core.add_peer(p, label)
        return p

    def call(self, peer, call_id, name, *args, codec=_core.MSGPACK, **fields):
        body = args[0] if codec == _core.RAW else msgpack.packb(list(args))
        f = frame(_core.REQUEST, call_id, name.encode(), body, codec=codec, **fields)
        return self.core.feed(peer, f, self.clock.t)

    def cancel(self, peer, call_id):
        return self.core.feed(peer, frame(_core.CANCEL, call_id), self.clock.t)

    def step(self, budget_ns=200_000):
        """One driver pass without I/O: completions, then the run queue."""
        self.core.drain_completions(self.clock.t)
        return self.core.run(self.clock.t, budget_ns)

    @staticmethod
    def frames(peer):
        parser = _core.FrameParser()
        parser.feed(peer.out.take())
        return parser.frames()

    def replies(self, peer):
        """{call id: result, or (error code, type name) for an ERROR frame}."""
        out = {}
        for f in self.frames(peer):
            assert f.kind in (_core.RESPONSE, _core.ERROR)
            assert f.call_id not in out, "two replies to one call"
            if f.kind == _core.RESPONSE:
                out[f.call_id] = msgpack.unpackb(f.body) if f.codec == _core.MSGPACK else f.body
            else:
                code, type_name, _message, _tb = msgpack.unpackb(f.body)
                out[f.call_id] = (code, type_name)
        return out


@pytest.fixture
def h():
    return Harness()


def test_a_request_runs_inline_and_its_reply_is_in_the_peer_buffer(h):
    h.register("add", lambda a, b: a + b)
    p = h.peer()
    assert h.call(p, 1, "add", 2, 3)
    assert h.core.queue_depth() == 1 and h.core.has_work()
    assert h.step() == 1
    assert h.core.take_dirty() == [p]
    assert h.core.take_dirty() == []                 # each peer once per batch of output
    assert h.replies(p) == {1: 5}
    assert (h.core.calls, h.core.errors, h.core.queue_depth()) == (1, 0, 0)


def test_error_bodies(h):
    def fail():
        raise KeyError("k")

    h.register("fail", fail)
    h.register("echo", lambda x: x)
    h.register("obj", lambda: object())
    p = h.peer()
    h.call(p, 1, "nosuch")
    h.call(p, 2, "fail")
    h.call(p, 3, "echo", 1, codec=_core.PICKLE)       # pickle was not enabled
    h.core.feed(p, frame(_core.REQUEST, 4, b"echo", b"\xc1", codec=_core.MSGPACK),
                h.clock.t)                            # 0xc1: never valid msgpack
    h.call(p, 5, "obj")
    h.call(p, 6, "echo", b"raw", codec=_core.RAW)
    h.step()
    assert h.replies(p) == {
        1: (_core.METHOD_NOT_FOUND, "MethodNotFound"),
        2: (_core.REMOTE_ERROR, "KeyError"),
        3: (_core.BAD_REQUEST, "ProtocolError"),
        4: (_core.BAD_REQUEST, "ProtocolError"),
        5: (_core.REMOTE_ERROR, "TypeError"),
        6: b"raw",
    }
    assert h.core.errors == 5


def test_frames_a_client_may_not_send_are_a_protocol_error(h):
    p = h.peer()
    assert not h.core.feed(p, frame(_core.RESPONSE, 1), h.clock.t)
    assert h.core.protocol_errors == 1
    h.core.protocol_error(p)                          # what a driver's parser failure reports
    assert h.core.protocol_errors == 2
    with pytest.raises(TypeError):
        h.core.feed(None, frame(_core.PING, 1), h.clock.t)


def test_ping_without_and_with_a_credit_policy():
    plain = Harness()
    p = plain.peer()
    plain.core.feed(p, frame(_core.PING, 9, session=4), plain.clock.t)
    (pong,) = plain.frames(p)
    assert (pong.kind, pong.call_id, pong.session, pong.flags) == (_core.PONG, 9, 4, 0)

    credited = Harness(policy=breakwater.Breakwater())
    p = credited.peer()
    credited.core.feed(p, frame(_core.PING, 9, session=4), credited.clock.t)
    (pong,) = credited.frames(p)
    assert pong.flags == _core.HAS_CREDIT and pong.credit == 1
    assert credited.core.credit_frames == 1


def test_admission_and_reject_through_a_policy():
    policy = CountingPolicy(credits=True)
    h = Harness(policy=policy)
    h.register("echo", lambda x: x)
    p = h.peer()
    h.call(p, 1, "echo", "a", session=5)
    policy.admit = False
    h.call(p, 2, "echo", "b", session=5)
    h.step()
    frames = {f.call_id: f for f in h.frames(p)}
    assert frames[1].kind == _core.RESPONSE and frames[1].credit == 7
    assert frames[2].kind == _core.ERROR and frames[2].credit == 3
    assert all(f.flags == _core.HAS_CREDIT for f in frames.values())
    assert msgpack.unpackb(frames[2].body)[0] == _core.OVERLOADED
    assert (h.core.rejects, policy.completes) == (1, 1)
    h.core.close_peer(p, h.clock.t)
    assert len(policy.closed) == 1 and h.core.peer_count() == 0


def test_breakwater_is_driven_through_its_c_interface():
    bw = breakwater.Breakwater()
    h = Harness(policy=bw)
    h.register("echo", lambda x: x)
    p = h.peer()
    for i in range(20):
        h.call(p, i, "echo", i, session=1)
    h.step(budget_ns=10 * MS)
    replies = h.frames(p)
    assert [msgpack.unpackb(f.body) for f in replies] == list(range(20))
    assert all(f.flags == _core.HAS_CREDIT and f.credit >= 1 for f in replies)
    stats = bw.statistics()
    assert (stats.admitted, stats.completed, stats.in_flight) == (20, 20, 0)
    h.clock.advance(bw.tick_interval_ns)
    assert h.core.tick(h.clock.t) == h.clock.t + bw.tick_interval_ns
    assert bw.statistics().ticks == 1


def test_the_signal_prices_the_run_queue_at_the_inline_service_time():
    policy = CountingPolicy()
    h = Harness(policy=policy)

    def work():
        h.clock.advance(MS)                           # each call takes 1 ms of "CPU"
        return True

    h.register("work", work)
    p = h.peer()
    h.call(p, 1, "work")
    h.step()
    assert h.core.per_request_ns == MS
    for i in range(2, 6):
        h.call(p, i, "work")
    # Four queued and none started: each saw the ones ahead of it at 1 ms apiece.
    assert policy.delays[1:] == [0, MS, 2 * MS, 3 * MS]
    h.core.loop_lag_ns = 250_000                      # the driver fell behind its sockets
    assert h.core.queue_delay(h.clock.t) == 4 * MS + 250_000
    h.clock.advance(10 * MS)                          # the oldest one's age now dominates
    assert h.core.queue_delay(h.clock.t) == 10 * MS + 250_000


def test_worker_pool_calls_are_not_queueing_delay_of_the_io_thread():
    policy = CountingPolicy()
    h = Harness(policy=policy)

    def slow():
        h.clock.advance(500 * MS)                     # a 0.5 s call on a worker
        return "slow"

    h.register("slow", slow, blocking=True)
    h.register("echo", lambda x: x)
    fast, other = h.peer("a"), h.peer("b")
    h.call(fast, 1, "slow")
    h.step()
    assert h.pool.run_all() == 1                      # the first long call completes
    h.step()
    assert h.replies(fast) == {1: "slow"}
    assert h.core.per_request_ns == 0                 # it cost the I/O thread nothing
    h.call(fast, 2, "slow")
    h.step()                                          # the second one is on a worker now
    assert h.core.queue_depth() == 1
    for i in range(10):
        h.call(other, 100 + i, "echo", i)
        h.step()
    assert h.replies(other) == {100 + i: i for i in range(10)}
    assert policy.delays[-10:] == [0] * 10


def test_deadline_passed_before_the_start_is_skipped_inline_and_on_a_worker(h):
    ran = []
    h.register("inline", ran.append)
    h.register("blocking", ran.append, blocking=True)
    p = h.peer()
    h.call(p, 1, "inline", "a", deadline_us=1000)
    h.call(p, 2, "blocking", "b", deadline_us=5000)
    h.call(p, 3, "inline", "c", deadline_us=5000)
    h.clock.advance(2 * MS)
    h.step()
    h.pool.run_all()
    h.step()
    assert h.replies(p) == {1: (_core.DEADLINE_EXCEEDED, "DeadlineExceeded"),
                            2: None, 3: None}         # 2 started on a worker in time ...
    assert sorted(ran) == ["b", "c"]
    h.call(p, 4, "blocking", "d", deadline_us=1000)
    h.step()                                          # ... 4 reaches the worker too late
    h.clock.advance(2 * MS)
    h.pool.run_all()
    h.step()
    assert h.replies(p) == {4: (_core.DEADLINE_EXCEEDED, "DeadlineExceeded")}
    assert sorted(ran) == ["b", "c"] and h.core.deadline_skipped == 2


def test_cancel_a_queued_call_and_a_call_waiting_for_a_worker(h):
    ran = []
    h.register("inline", ran.append)
    h.register("blocking", ran.append, blocking=True)
    p = h.peer()
    h.call(p, 1, "inline", 1)
    h.cancel(p, 1)
    h.step()
    h.call(p, 2, "blocking", 2)
    h.step()
    h.cancel(p, 2)
    h.cancel(p, 99)                                   # unknown: ignored
    h.pool.run_all()
    h.step()
    cancelled = (_core.DEADLINE_EXCEEDED, "Cancelled")
    assert h.replies(p) == {1: cancelled, 2: cancelled}   # still one reply each
    assert ran == [] and h.core.cancelled == 2


def test_run_stops_when_the_batch_budget_is_spent(h):
    def work():
        h.clock.advance(100_000)                      # 100 us each
        return True

    h.register("work", work)
    p = h.peer()
    for i in range(10):
        h.call(p, i, "work")
    assert h.core.run(h.clock.t, 250_000) == 3        # 100, 200 < 250; 300 >= 250: stop
    assert h.core.has_work()
    assert h.core.run(h.clock.t, 0) == 1              # a zero budget still makes progress
    assert h.core.run(h.clock.t, 10 * MS) == 6
    assert not h.core.has_work() and len(h.replies(p)) == 10


def test_graceful_stop_lets_calls_finish_within_grace(h):
    h.register("blocking", lambda: "done", blocking=True)
    h.register("echo", lambda x: x)
    p = h.peer()
    h.call(p, 1, "blocking")
    h.step()
    h.core.request_stop(h.clock.t, 1000 * MS)
    h.call(p, 2, "echo", 1)                           # refused at once while stopping
    assert not h.core.stop_step(h.clock.t)
    h.clock.advance(10 * MS)
    h.pool.run_all()
    h.step()
    assert h.core.stop_step(h.clock.t)
    assert h.replies(p) == {1: "done", 2: (_core.UNAVAILABLE, "Unavailable")}


def test_stop_ends_what_is_left_with_unavailable_after_the_grace(h):
    h.register("blocking", lambda: "late", blocking=True)
    h.register("echo", lambda x: x)
    p = h.peer()
    h.call(p, 1, "blocking")
    h.step()
    h.call(p, 2, "echo", 2)                           # still queued when the stop comes
    h.core.request_stop(h.clock.t, 100 * MS)
    h.clock.advance(99 * MS)
    assert not h.core.stop_step(h.clock.t)
    h.clock.advance(1 * MS)
    assert h.core.stop_step(h.clock.t)
    unavailable = (_core.UNAVAILABLE, "Unavailable")
    assert h.replies(p) == {1: unavailable, 2: unavailable}
    h.pool.run_all()                                  # the worker skips it (cancelled) ...
    h.step()
    assert h.replies(p) == {}                         # ... and nothing else is sent


def test_a_reply_backlog_holds_requests_back_until_the_peer_reads():
    h = Harness(max_message_size=1_000_000)           # per-peer reply limit: 4 MiB
    h.register("big", lambda: b"x" * 900_000)
    p = h.peer()
    for i in range(8):
        h.call(p, i, "big")
    h.core.run(h.clock.t, 10 * MS)
    assert h.core.over_limit(p)
    assert 4 * 2**20 < len(p.out) < 4 * 2**20 + 1_000_000
    assert h.core.queue_depth() == 3                  # held back, not run
    assert len(h.frames(p)) == 5                      # the driver sent what was there
    assert not h.core.over_limit(p)
    h.core.resume(p)
    h.core.run(h.clock.t, 10 * MS)
    assert len(h.frames(p)) == 3 and h.core.queue_depth() == 0


def test_requests_of_a_closed_peer_do_not_run_and_return_their_credit():
    policy = CountingPolicy()
    h = Harness(policy=policy)
    ran = []
    h.register("work", ran.append)
    p = h.peer()
    h.call(p, 1, "work", 1)
    h.core.close_peer(p, h.clock.t)
    h.core.close_peer(p, h.clock.t)                   # idempotent
    h.step()
    assert ran == [] and policy.completes == 1 and len(p.out) == 0


def test_call_context_fields_and_a_deferred_reply_from_another_thread(h):
    seen = {}
    pending = []

    def handler(ctx, x):
        seen.update(peer=ctx.peer, peer_id=ctx.peer_id, session=ctx.session,
                    call_id=ctx.call_id, deadline=ctx.deadline)
        pending.append(ctx.defer())
        assert ctx.defer() is pending[0]              # asking again changes nothing
        return "ignored"                              # the deferred reply is the answer

    h.register("later", handler, context=True)
    p = h.peer("10.0.0.1:5")
    h.call(p, 7, "later", 21, session=3, deadline_us=2000)
    h.step()
    assert seen == {"peer": "10.0.0.1:5", "peer_id": p.id, "session": 3, "call_id": 7,
                    "deadline": (h.clock.t + 2 * MS) / 1e9}
    assert h.replies(p) == {} and h.core.queue_depth() == 1
    reply = pending[0]
    t = threading.Thread(target=reply.result, args=(42,))
    t.start()
    t.join(5)
    assert not t.is_alive() and h.wakes == 1 and reply.done
    h.step()
    assert h.replies(p) == {7: 42} and h.core.queue_depth() == 0
    with pytest.raises(RuntimeError, match="already answered"):
        reply.result(43)
    with pytest.raises(RuntimeError, match="already answered"):
        reply.error(ValueError("no"))


def test_deferred_error_and_a_handler_that_raises_after_deferring(h):
    pending = []

    def defer_then(ctx, fail):
        pending.append(ctx.defer())
        if fail:
            raise ValueError("handler failed")

    h.register("d", defer_then, context=True)
    p = h.peer()
    h.call(p, 1, "d", False)
    h.call(p, 2, "d", True)
    h.step()
    assert h.replies(p) == {2: (_core.REMOTE_ERROR, "ValueError")}
    with pytest.raises(RuntimeError):
        pending[1].result(1)                          # the handler's error was the answer
    pending[0].error(LookupError("deferred failure"))
    h.step()
    assert h.replies(p) == {1: (_core.REMOTE_ERROR, "LookupError")}


def test_defer_is_only_possible_while_the_handler_runs(h):
    contexts = []
    h.register("keep", lambda ctx: contexts.append(ctx), context=True)
    p = h.peer()
    h.call(p, 1, "keep")
    h.step()
    assert h.replies(p) == {1: None}
    with pytest.raises(RuntimeError, match="while the handler runs"):
        contexts[0].defer()


def test_a_context_handler_on_the_worker_pool_can_defer_too(h):
    pending = []
    h.register("w", lambda ctx: pending.append(ctx.defer()), blocking=True, context=True)
    p = h.peer()
    h.call(p, 1, "w")
    h.step()
    h.pool.run_all()
    h.step()
    assert h.replies(p) == {} and h.core.queue_depth() == 1
    pending[0].result("from elsewhere")
    h.step()
    assert h.replies(p) == {1: "from elsewhere"}


def test_a_deferred_reply_to_a_closed_peer_is_dropped_and_its_credit_returned():
    policy = CountingPolicy()
    h = Harness(policy=policy)
    pending = []
    h.register("d", lambda ctx: pending.append(ctx.defer()), context=True)
    p = h.peer()
    h.call(p, 1, "d")
    h.step()
    h.core.close_peer(p, h.clock.t)
    assert policy.completes == 1 and h.core.queue_depth() == 0
    pending[0].result("too late")                     # no error for the replier ...
    h.step()
    assert len(p.out) == 0 and policy.completes == 1  # ... and nothing sent or counted twice


def test_a_deferred_call_ends_with_unavailable_when_the_stop_grace_runs_out(h):
    pending = []
    h.register("d", lambda ctx: pending.append(ctx.defer()), context=True)
    p = h.peer()
    h.call(p, 1, "d")
    h.step()
    h.core.request_stop(h.clock.t, 50 * MS)
    assert not h.core.stop_step(h.clock.t)
    assert pending[0] is not None
    h.clock.advance(50 * MS)
    assert h.core.stop_step(h.clock.t)
    assert h.replies(p) == {1: (_core.UNAVAILABLE, "Unavailable")}
    pending[0].result("after the stop")
    h.step()
    assert h.replies(p) == {}


def test_statistics_counters(h):
    h.register("echo", lambda x: x)
    h.register("blocking", lambda: 1, blocking=True)
    a, b = h.peer("a"), h.peer("b")
    assert h.core.peer_count() == 2
    for i in range(5):
        h.call(a, i, "echo", i)
    h.call(b, 1, "blocking")
    h.call(b, 2, "nosuch")
    assert h.core.queue_depth() == 7
    h.step()
    assert h.core.queue_depth() == 1                  # the blocking one, on the pool
    assert h.core.buffered_output() == len(a.out) + len(b.out) > 0
    h.pool.run_all()
    h.step()
    assert (h.core.calls, h.core.errors, h.core.queue_depth()) == (7, 1, 0)
    h.core.close_peer(a, h.clock.t)
    assert h.core.peer_count() == 1


def test_a_driver_written_in_python_brings_its_own_peer_type(h):
    # What a zmq ROUTER driver would do: one Peer per routing id, whole frames per message,
    # and the reply bytes taken from peer.out for the reply message.
    class RoutedPeer(_dispatch.Peer):
        def __init__(self, identity):
            self.identity = identity

    h.register("echo", lambda x: x)
    p = RoutedPeer(b"\x00k")
    h.core.add_peer(p, "zmq+tcp://10.0.0.2:7")
    with pytest.raises(ValueError, match="already registered"):
        h.core.add_peer(p, "again")
    h.call(p, 1, "echo", "hi")
    h.step()
    (dirty,) = h.core.take_dirty()
    assert dirty is p and dirty.identity == b"\x00k"
    assert h.replies(dirty) == {1: "hi"}


# -- bounds, fairness, hostile input (issue #10) -----------------------------------------

def ticking(h, log, ns=1 * MS):
    """An inline handler that takes ``ns`` of the fake clock and logs its argument, so that
    run(budget=ns) starts exactly one request."""
    def handler(tag):
        log.append(tag)
        h.clock.advance(ns)
        return tag
    return handler


def test_a_peer_at_its_queue_bound_is_not_read_until_half_of_it_has_run():
    h = Harness(max_queued_per_connection=4)
    log = []
    h.register("t", ticking(h, log))
    p, other = h.peer(), h.peer()
    for i in range(3):
        h.call(p, i, "t", i)
        assert not h.core.over_limit(p)
    h.call(p, 3, "t", 3)
    assert h.core.over_limit(p) and not h.core.over_limit(other)
    assert h.core.over_limit(p)                       # asked again: still one pause
    assert h.core.paused_reads == 1 and h.core.queued_peak_per_connection == 4
    h.core.take_dirty()
    h.core.run(h.clock.t, 1 * MS)                     # 3 left: under the bound, but
    assert h.core.over_limit(p)                       # not read until half has drained
    h.core.take_dirty()
    h.core.run(h.clock.t, 1 * MS)                     # at half, the core wakes it
    assert p in h.core.take_dirty()
    assert not h.core.over_limit(p)
    assert log == [0, 1] and p.nqueued == 2
    for i in range(4, 6):
        h.call(p, i, "t", i)
    assert h.core.over_limit(p) and h.core.paused_reads == 2


def test_the_global_bound_pauses_every_peer_and_wakes_them_at_half():
    h = Harness(max_queued=4)
    log = []
    h.register("t", ticking(h, log))
    a, b = h.peer("a"), h.peer("b")
    for i in range(4):
        h.call(a, i, "t", i)
    assert h.core.over_limit(a) and h.core.over_limit(b)   # b sent nothing, yet waits
    assert h.core.queued() == 4 and h.core.queued_peak == 4
    h.core.run(h.clock.t, 1 * MS)
    assert h.core.take_dirty() == [a]                 # a's reply; b not woken at 3 queued
    h.core.run(h.clock.t, 1 * MS)
    assert b in h.core.take_dirty()                   # 2 queued: half, every waiter woken
    assert not h.core.over_limit(b)
    assert h.core.paused_reads == 2


def test_queued_bytes_per_connection_are_bounded_but_one_frame_is_always_taken():
    h = Harness(max_queued_bytes_per_connection=100)
    h.register("echo", lambda x: x)
    p = h.peer()
    assert not h.core.over_limit(p)
    h.call(p, 1, "echo", b"x" * 500, codec=_core.RAW)  # bigger than the bound: still taken
    assert h.core.over_limit(p)
    h.step()
    assert not h.core.over_limit(p) and h.replies(p) == {1: b"x" * 500}


def test_peers_within_their_share_are_served_in_arrival_order():
    h = Harness()
    log = []
    h.register("t", ticking(h, log))
    a, b, c = h.peer("a"), h.peer("b"), h.peer("c")
    order = [(a, "a0"), (a, "a1"), (b, "b0"), (a, "a2"), (c, "c0"), (b, "b1"), (a, "a3")]
    for i, (peer, tag) in enumerate(order):
        h.call(peer, i, "t", tag)
    h.core.run(h.clock.t, 100 * MS)
    assert log == [tag for _, tag in order]           # first come, first served


def test_a_flooding_peer_delays_another_by_at_most_its_line_share():
    share = _dispatch.DEFAULT_LINE_SHARE
    h = Harness()
    log = []
    h.register("t", ticking(h, log))
    flood, honest = h.peer("flood"), h.peer("honest")
    for i in range(100):
        h.call(flood, i, "t", f"f{i}")
    h.call(honest, 1, "t", "h")
    h.core.run(h.clock.t, (share + 2) * MS)
    # Behind the flood's requests in the line (its share), not behind the 92 others.
    assert log == [f"f{i}" for i in range(share)] + ["h", f"f{share}"]
    assert h.replies(honest) == {1: "h"}
    h.core.run(h.clock.t, 200 * MS)
    assert log[share + 1:] == [f"f{i}" for i in range(share, 100)]   # the flood, in order


def test_a_line_share_of_one_is_round_robin():
    h = Harness(line_share=1)
    log = []
    h.register("t", ticking(h, log))
    flood, honest = h.peer("flood"), h.peer("honest")
    for i in range(100):
        h.call(flood, i, "t", f"f{i}")
    h.call(honest, 1, "t", "h")
    h.core.run(h.clock.t, 3 * MS)
    assert log == ["f0", "h", "f1"]


def test_line_share_must_be_positive():
    with pytest.raises(ValueError, match="line_share"):
        Harness(line_share=0)


def test_a_peer_not_reading_its_replies_leaves_the_line_and_others_go_on():
    h = Harness(max_message_size=1000, max_output_per_connection=1)   # limit: one frame
    h.register("big", lambda: b"x" * 900)
    h.register("add", lambda a, b: a + b)
    slow, other = h.peer(), h.peer()
    for i in range(5):
        h.call(slow, i, "big")
    h.call(other, 1, "add", 1, 2)
    h.step()
    assert h.replies(other) == {1: 3}
    assert slow.nqueued == 3 and h.core.queue_depth() == 3           # held back, not run
    assert h.core.queue_delay(h.clock.t) == 0        # nor counted as queueing delay
    assert len(h.frames(slow)) == 2                  # the driver sent them
    h.core.resume(slow)
    h.core.run(h.clock.t, 10 * MS)
    assert slow.nqueued == 1                         # over the limit again after 2 more


def test_the_queue_of_a_closed_peer_is_dropped_not_run():
    policy = CountingPolicy()
    h = Harness(policy=policy)
    ran = []
    h.register("work", ran.append)
    gone, stays = h.peer(), h.peer()
    for i in range(50):
        h.call(gone, i, "work", i)
    h.call(stays, 1, "work", "x")
    h.core.close_peer(gone, h.clock.t)
    assert h.core.queued() == 1 and policy.completes == 50
    h.step()
    assert ran == ["x"] and h.core.queue_depth() == 0 and not h.core.has_work()


def test_cancel_finds_a_queued_call_by_its_id_and_forgets_it_once_started(h):
    blocked = []
    h.register("work", lambda: blocked.append(1), blocking=True)
    p = h.peer()
    for i in range(1000):
        h.call(p, i, "work")
    for i in range(10_000, 20_000):                  # unknown ids: ignored, no reply
        h.cancel(p, i)
    assert h.core.cancelled == 0
    h.cancel(p, 999)                                 # the last of 1000 queued
    assert h.core.cancelled == 1
    h.step()
    assert h.pool.run_all() == 999                   # the cancelled one is answered at once
    h.step()
    replies = h.replies(p)
    assert replies[999] == (_core.DEADLINE_EXCEEDED, "Cancelled") and len(replies) == 1000
    h.cancel(p, 5)                                   # finished: nothing to find
    assert h.core.cancelled == 1


def test_a_pong_to_a_new_session_does_not_register_it_with_the_policy():
    bw = breakwater.Breakwater()
    h = Harness(policy=bw)
    p = h.peer()
    for s in range(1, 1001):
        h.core.feed(p, frame(_core.PING, s, session=s), h.clock.t)
    pongs = h.frames(p)
    assert len(pongs) == 1000
    assert all(f.flags & _core.HAS_CREDIT and f.credit == 1 for f in pongs)
    assert bw.statistics().sessions == 0 and bw.statistics().issued == 0
    h.register("add", lambda a, b: a + b)
    h.call(p, 1, "add", 1, 2, session=1)            # the first request registers it
    assert bw.statistics().sessions == 1


def test_sessions_per_connection_are_capped_with_a_bad_request():
    bw = breakwater.Breakwater()
    h = Harness(policy=bw, max_sessions_per_connection=3)
    h.register("add", lambda a, b: a + b)
    p, other = h.peer(), h.peer()
    for s in range(1, 6):
        h.call(p, s, "add", s, 0, session=s)
    h.call(other, 1, "add", 1, 1, session=1)
    h.step()
    assert h.replies(p) == {1: 1, 2: 2, 3: 3, 4: (_core.BAD_REQUEST, "ProtocolError"),
                            5: (_core.BAD_REQUEST, "ProtocolError")}
    assert h.replies(other) == {1: 2}
    assert h.core.session_rejects == 2 and bw.statistics().sessions == 4


def test_a_session_flood_on_one_connection_leaves_an_honest_session_served():
    bw = breakwater.Breakwater()
    h = Harness(policy=bw)
    h.register("add", lambda a, b: a + b)
    flood, honest = h.peer("flood"), h.peer("honest")
    for s in range(1, 20_001):                       # one request per session, 20,000 sessions
        h.core.feed(flood, frame(_core.PING, s, session=s), h.clock.t)
        h.call(flood, s, "add", s, 0, session=s)
    h.step(10 * MS)
    h.frames(flood)
    assert bw.statistics().sessions == 1024 and h.core.session_rejects == 20_000 - 1024
    rejected = 0
    for i in range(2000):                            # the honest session, one call at a time
        h.clock.advance(100_000)
        h.core.tick(h.clock.t)
        h.call(honest, i, "add", i, 1, session=9)
        h.step()
        reply = h.replies(honest)[i]
        rejected += reply == (_core.OVERLOADED, "Overloaded")
    assert rejected == 0
    # Credits are for sessions that sent requests, at most 1024 of them on this connection.
    assert bw.statistics().pool_max <= 2 * (1024 + 1) + 64


def test_argument_bodies_over_the_decode_limits_get_bad_request(h):
    from microrpc import DecodeLimits
    h = Harness(decode_limits=DecodeLimits(max_items=100, max_depth=4))
    h.register("echo", lambda *a: len(a))
    p = h.peer()
    n = 16 * 1024 * 1024 - 64                        # the bomb of issue #10, 16.7M empty arrays
    bomb = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    h.core.feed(p, frame(_core.REQUEST, 1, b"echo", bomb, codec=_core.MSGPACK), h.clock.t)
    h.call(p, 2, "echo", *([[]] * 50))               # 51 objects: fine
    h.call(p, 3, "echo", *([[1]] * 60))              # 121 objects: over max_items
    h.call(p, 4, "echo", [[[[1]]]])                  # depth 5: over max_depth
    h.step()
    assert h.replies(p) == {1: (_core.BAD_REQUEST, "ProtocolError"), 2: 50,
                            3: (_core.BAD_REQUEST, "ProtocolError"),
                            4: (_core.BAD_REQUEST, "ProtocolError")}
    assert h.core.undecodable == 3


def test_the_bounds_are_checked_and_reported():
    with pytest.raises(ValueError, match="max_queued_per_connection"):
        Harness(max_queued_per_connection=0)
    h = Harness(max_queued=10, max_sessions_per_connection=5)
    assert (h.core.max_queued, h.core.max_sessions_per_connection) == (10, 5)
    assert h.core.max_queued_per_connection == _dispatch.DEFAULT_MAX_QUEUED_PER_CONNECTION


def test_admission_sees_the_wait_in_the_line_not_the_whole_queue():
    share = _dispatch.DEFAULT_LINE_SHARE
    policy = CountingPolicy()
    h = Harness(policy=policy)
    log = []
    h.register("t", ticking(h, log))
    flood, honest = h.peer("flood"), h.peer("honest")
    h.call(flood, 0, "t", 0)
    h.step(1 * MS)                                   # measures 1 ms per inline request
    assert h.core.per_request_ns == 1 * MS
    for i in range(1, 101):
        h.call(flood, i, "t", i)
    h.call(honest, 1, "t", "h")
    # The honest request waits for the flood's requests in the line (its share); the
    # flood's next request waits for its 100 queued ones.
    assert policy.delays[-1] == share * MS
    h.call(flood, 101, "t", 101)
    assert policy.delays[-1] >= 100 * MS
    assert h.core.queue_delay(h.clock.t) >= 101 * MS  # the control loop sees all the work


def test_a_held_peer_resumes_its_requests_in_order():
    h = Harness(max_message_size=1000, max_output_per_connection=1, line_share=2)
    log = []
    h.register("big", lambda tag: log.append(tag) or b"x" * 900)
    slow, other = h.peer(), h.peer()
    for i in range(6):
        h.call(slow, i, "big", i)
    h.call(other, 1, "big", "o")
    h.core.run(h.clock.t, 10 * MS)
    # Two replies pass the limit (the first fits; the second goes over it): then held.
    assert log == [0, 1, "o"] and slow.nqueued == 4
    assert h.core.queue_delay(h.clock.t) == 0        # held requests are not queueing delay
    h.frames(slow)                                   # the driver sent its replies
    h.core.resume(slow)
    h.core.run(h.clock.t, 10 * MS)
    h.frames(slow)
    h.core.resume(slow)
    h.core.run(h.clock.t, 10 * MS)
    assert log == [0, 1, "o", 2, 3, 4, 5]            # in order across the hold
    assert slow.nqueued == 0 and h.core.queue_depth() == 0


def test_a_closed_peer_leaves_the_line():
    h = Harness()
    log = []
    h.register("t", ticking(h, log))
    gone, stays = h.peer("gone"), h.peer("stays")
    for i in range(20):
        h.call(gone, i, "t", f"g{i}")
    h.call(stays, 1, "t", "s")
    h.core.close_peer(gone, h.clock.t)
    assert h.core.queued() == 1
    h.core.run(h.clock.t, 100 * MS)
    assert log == ["s"] and h.core.queue_depth() == 0


def test_queued_bytes_of_every_peer_are_bounded_together():
    h = Harness(max_queued_bytes=1000)
    h.register("echo", lambda x: x)
    a, b = h.peer("a"), h.peer("b")
    h.call(a, 1, "echo", b"x" * 600, codec=_core.RAW)
    assert not h.core.over_limit(b)
    h.call(b, 1, "echo", b"y" * 600, codec=_core.RAW)
    assert h.core.queued_bytes >= 1200
    assert h.core.over_limit(a) and h.core.over_limit(b)   # each under its own bound
    h.step()
    assert not h.core.over_limit(a) and not h.core.over_limit(b)
    assert h.core.queued_bytes == 0


def test_connections_past_max_connections_are_refused():
    h = Harness(max_connections=2)
    a, b = h.peer("a"), h.peer("b")
    extra = _dispatch.Peer()
    assert h.core.add_peer(extra, "extra") is False
    assert h.core.connections_refused == 1 and h.core.peer_count() == 2
    h.core.close_peer(a, h.clock.t)
    assert h.core.add_peer(_dispatch.Peer(), "later") is True


def test_a_request_arriving_while_a_flood_request_runs_goes_before_the_floods_next():
    h = Harness(line_share=2)
    log = []
    h.register("t", ticking(h, log))
    flood, honest = h.peer("flood"), h.peer("honest")
    for i in range(10):
        h.call(flood, i, "t", f"f{i}")
    h.core.run(h.clock.t, 1 * MS)                     # f0
    h.core.run(h.clock.t, 1 * MS)                     # f1: the flood is now over its share
    h.call(honest, 1, "t", "h")                       # arrived while f1 ran
    h.core.run(h.clock.t, 1 * MS)
    assert log == ["f0", "f1", "h"]
    h.core.run(h.clock.t, 100 * MS)                   # alone again: the flood, in order
    assert log[3:] == [f"f{i}" for i in range(2, 10)]


def test_a_lone_peer_over_its_share_is_served_in_one_pass():
    h = Harness(line_share=2)
    log = []
    h.register("t", ticking(h, log))
    p = h.peer()
    for i in range(10):
        h.call(p, i, "t", i)
    assert h.core.run(h.clock.t, 100 * MS) == 10      # the line runs dry: it rejoins at once
    assert log == list(range(10)) and not h.core.has_work()


def test_a_pass_ends_before_a_rejoining_flood_request_so_earlier_replies_go_out():
    h = Harness(line_share=1)
    log = []
    h.register("t", ticking(h, log, 10_000))          # 10 us each: a 3 ms budget fits many
    flood, honest = h.peer("flood"), h.peer("honest")
    for i in range(10):
        h.call(flood, i, "t", f"f{i}")
    h.core.run(h.clock.t, 10 * US)                    # f0; the flood rejoins next pass
    h.call(honest, 1, "t", "h")
    assert h.core.run(h.clock.t, 3 * MS) == 1         # h, then the pass ends: its reply first
    assert log == ["f0", "h"] and h.replies(honest) == {1: "h"}
    assert h.core.run(h.clock.t, 3 * MS) == 9         # alone: the flood runs on in one pass


# -- exactly-once calls (microrpc.exactly_once) ---------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.n = 0

    def incr(self, by):
        self.n += by
        return self.n


def once_harness(ttl=5.0):
    seconds = FakeClock(t=100.0)
    leases = LocalLeases(ttl, clock=seconds)
    h = Harness(once=CompletionTable(leases.valid, window=8))
    h.leases, h.seconds = leases, seconds
    counter = Counter()
    h.register("incr", counter.incr)
    h.methods[b"incr_once"] = _dispatch.Method(counter.incr, idempotent=False)
    h.methods[b"slow_once"] = _dispatch.Method(counter.incr, idempotent=False, blocking=True)
    h.counter = counter
    return h


def send_once(h, peer, call_id, name, *args, **ids):
    f = frame(_core.REQUEST, call_id, name.encode(), msgpack.packb(list(args)),
              codec=_core.MSGPACK, flags=_core.ONCE, **ids)
    return h.core.feed(peer, f, h.clock.t)


def test_a_retried_call_runs_once_and_every_copy_gets_the_first_reply():
    h = once_harness()
    lease = h.leases.grant()
    p = h.peer()
    send_once(h, p, 1, "incr_once", 5, lease=lease, seq=1, ack=0)
    send_once(h, p, 2, "incr_once", 5, lease=lease, seq=1, ack=0)    # a retry of seq 1
    h.step()
    assert h.replies(p) == {1: 5, 2: 5} and h.counter.n == 5
    assert h.core.once_duplicates == 1


def test_an_idempotent_method_runs_every_time_whatever_the_id():
    h = once_harness()
    lease = h.leases.grant()
    p = h.peer()
    for cid in (1, 2):
        send_once(h, p, cid, "incr", 1, lease=lease, seq=1, ack=0)
    h.step()
    assert h.replies(p) == {1: 1, 2: 2}


def test_a_retry_while_the_first_still_runs_is_told_it_is_in_progress():
    h = once_harness()
    lease = h.leases.grant()
    p = h.peer()
    send_once(h, p, 1, "slow_once", 2, lease=lease, seq=1, ack=0)
    h.step()                                          # handed to the (manual) pool
    send_once(h, p, 2, "slow_once", 2, lease=lease, seq=1, ack=0)
    h.step()
    assert h.replies(p) == {2: (_core.IN_PROGRESS, "InProgress")}
    h.pool.run_all()
    h.step()
    assert h.replies(p) == {1: 2} and h.counter.n == 2


def test_the_outcome_is_kept_when_the_connection_drops_and_the_retry_comes_on_another():
    h = once_harness()
    lease = h.leases.grant()
    first, second = h.peer("first"), h.peer("second")
    send_once(h, first, 1, "slow_once", 3, lease=lease, seq=1, ack=0)
    h.step()
    h.pool.run_all()                                  # it ran; its reply is not sent yet
    h.core.close_peer(first, h.clock.t)
    h.step()                                          # the reply has nowhere to go
    send_once(h, second, 7, "slow_once", 3, lease=lease, seq=1, ack=0)
    h.step()
    assert h.replies(second) == {7: 3} and h.counter.n == 3       # ran once


def test_a_call_that_never_started_may_run_on_retry():
    h = once_harness()
    lease = h.leases.grant()
    first, second = h.peer("first"), h.peer("second")
    send_once(h, first, 1, "slow_once", 4, lease=lease, seq=1, ack=0)
    h.step()
    h.core.close_peer(first, h.clock.t)               # the worker has not started it
    h.pool.run_all()
    h.step()
    send_once(h, second, 2, "slow_once", 4, lease=lease, seq=1, ack=0)
    h.step()
    h.pool.run_all()
    h.step()
    assert h.replies(second) == {2: 4} and h.counter.n == 4


def test_a_call_of_an_expired_lease_is_refused_without_running():
    h = once_harness(ttl=1.0)
    lease = h.leases.grant()
    p = h.peer()
    h.seconds.t += 2
    send_once(h, p, 1, "incr_once", 1, lease=lease, seq=1, ack=0)
    h.step()
    assert h.replies(p) == {1: (_core.LEASE_EXPIRED, "LeaseExpired")} and h.counter.n == 0


def test_malformed_and_stale_ids_are_bad_requests_and_run_nothing():
    h = once_harness()
    lease = h.leases.grant()
    p = h.peer()
    send_once(h, p, 1, "incr_once", 1, lease=lease, seq=0, ack=0)          # seq 0
    send_once(h, p, 2, "incr_once", 1, lease=lease, seq=3, ack=0)
    send_once(h, p, 3, "incr_once", 1, lease=lease, seq=4, ack=3)          # acks 3
    send_once(h, p, 4, "incr_once", 1, lease=lease, seq=3, ack=0)          # late copy of 3
    h.step(10 * MS)
    replies = h.replies(p)
    assert replies[1] == (_core.BAD_REQUEST, "ProtocolError")
    assert replies[2] == 1 and replies[3] == 2
    assert replies[4] == (_core.BAD_REQUEST, "ProtocolError")
    assert h.counter.n == 2


def test_the_requests_of_a_closed_peer_no_longer_count_in_the_line():
    h = Harness(policy=CountingPolicy())
    log = []
    h.register("t", ticking(h, log))
    gone, stays = h.peer("gone"), h.peer("stays")
    for i in range(5):
        h.call(gone, i, "t", f"g{i}")
    h.clock.advance(5 * MS)
    h.call(stays, 1, "t", "s")
    h.core.close_peer(gone, h.clock.t)
    assert h.core.queue_delay(h.clock.t) == 0        # the line's head is now the new one
    for cycle in range(100):                          # connect, queue, close, in a loop
        p = h.peer(f"c{cycle}")
        for i in range(8):
            h.call(p, i, "t", "x")
        h.core.close_peer(p, h.clock.t)
    assert h.core.queued() == 1 and h.core.has_work()
    assert h.core.run(h.clock.t, 100 * MS) == 1 and log == ["s"]
    assert not h.core.has_work() and h.core.queue_depth() == 0
