"""Handlers with a call context, and replies deferred to another thread, over both transports."""
import threading
import time

import pytest

import microrpc


def test_a_context_handler_sees_its_call(make_server):
    server = make_server(start=False)
    seen = []

    @server.method(context=True)
    def whoami(ctx, x):
        seen.append(ctx)
        return [ctx.peer, ctx.peer_id, ctx.session, ctx.call_id, ctx.deadline, x]

    server.register("plain_ctx", lambda ctx: ctx.deadline, context=True, blocking=True)
    server.start()
    with microrpc.Client(server.address, timeout=5) as c:
        before = time.monotonic()
        peer, peer_id, session, call_id, deadline, x = c.call("whoami", "x", timeout=2.0)
        assert peer.startswith(("tcp://127.0.0.1:", "unix://"))
        assert peer_id >= 1 and call_id >= 1
        assert isinstance(session, int) and x == "x"
        assert before < deadline <= time.monotonic() + 2.0     # the caller's deadline
        assert c.call("plain_ctx", timeout=None) is None       # no deadline: None
    assert isinstance(seen[0], microrpc.CallContext)
    with pytest.raises(TypeError):
        microrpc.CallContext()


def test_a_deferred_reply_from_another_thread(make_server, until):
    server = make_server(start=False)
    waiting = []

    @server.method(context=True)
    def later(ctx, x):
        waiting.append((ctx.defer(), x))

    server.start()
    with microrpc.Client(server.address, timeout=5) as c:
        ok = c.call_async("later", 20)
        failing = c.call_async("later", "boom")
        until(lambda: len(waiting) == 2, what="both calls deferred")
        assert server.statistics().queue_depth == 2
        replies = dict((x, reply) for reply, x in waiting)
        answer = threading.Thread(target=lambda: (replies[20].result(22),
                                                  replies["boom"].error(KeyError("boom"))))
        answer.start()
        answer.join(5)
        assert ok.result(timeout=5) == 22
        with pytest.raises(microrpc.RemoteError) as info:
            failing.result(timeout=5)
        assert info.value.remote_type == "KeyError"
        with pytest.raises(RuntimeError):
            replies[20].result(23)                 # one answer per call
        assert c.call("echo", 1) == 1
    assert server.statistics().queue_depth == 0


def test_a_deferred_call_ends_when_the_server_stops(make_server, until):
    server = make_server(start=False)
    waiting = []
    server.register("never", lambda ctx: waiting.append(ctx.defer()), context=True)
    server.start()
    c = microrpc.Client(server.address, timeout=10)
    fut = c.call_async("never")
    until(lambda: waiting, what="call deferred")
    server.stop(grace=0.05)                        # nobody answers within the grace
    with pytest.raises(microrpc.ConnectionLost):
        fut.result(timeout=5)
    waiting[0].result("too late")                  # dropped, without an error here
    c.close()


def test_the_public_names_are_exported():
    for name in ("CallContext", "DeferredReply"):
        assert name in microrpc.__all__ and hasattr(microrpc, name)
