"""Every call ends in exactly one outcome: a result or one RpcError subclass. Both transports."""
import threading

import pytest

import microrpc
from microrpc import _core


def test_result_and_codecs(server):
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("echo", {"a": [1, 2.5, None, True, "s", b"b"]}) == {
            "a": [1, 2.5, None, True, "s", b"b"]}
        assert c.call("add", 2, 3) == 5
    with microrpc.Client(server.address, codec="raw", timeout=5) as c:
        assert c.call("echo", b"\x00raw bytes") == b"\x00raw bytes"
        with pytest.raises(TypeError, match="raw codec"):
            c.call("echo", "not bytes")


def test_decorator_forms(make_server):
    server = make_server(start=False)

    @server.method
    def shout(s):
        return s.upper()

    @server.method(name="whisper")
    def _quiet(s):
        return s.lower()

    server.start()
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("shout", "hi") == "HI"
        assert c.call("whisper", "HI") == "hi"


def test_remote_error_without_and_with_traceback(make_server):
    plain = make_server()
    with microrpc.Client(plain.address, timeout=5) as c:
        with pytest.raises(microrpc.RemoteError) as info:
            c.call("fail", "bad thing")
    err = info.value
    assert err.remote_type == "ValueError" and err.message == "bad thing"
    assert err.remote_traceback is None
    assert isinstance(err, microrpc.RpcError)

    verbose = make_server(send_tracebacks=True)
    with microrpc.Client(verbose.address, timeout=5) as c:
        with pytest.raises(microrpc.RemoteError) as info:
            c.call("fail", "bad thing")
    assert "Traceback" in info.value.remote_traceback
    assert "ValueError: bad thing" in info.value.remote_traceback


def test_method_not_found(server):
    with microrpc.Client(server.address, timeout=5) as c:
        with pytest.raises(microrpc.MethodNotFound, match="nosuch"):
            c.call("nosuch")
        assert c.call("add", 1, 1) == 2        # the connection is still good


def test_deadline_exceeded_is_a_timeout_error(server):
    with microrpc.Client(server.address, timeout=5) as c:
        with pytest.raises(microrpc.DeadlineExceeded) as info:
            c.call("wait", 5.0, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        server.release.set()
        assert c.call("add", 1, 2) == 3        # the late reply is ignored, not misrouted
        assert c.statistics().timeouts == 1


def test_server_skips_work_whose_deadline_passed(make_server, until):
    server = make_server(workers=1)
    ran = []
    server.register("record", lambda x: ran.append(x), blocking=True)
    with microrpc.Client(server.address, timeout=5) as c:
        blocker = c.call_async("wait", 5.0)                 # occupies the only worker
        until(lambda: server.statistics().queue_depth == 1, what="blocker running")
        late = c.call_async("record", 1, timeout=0.05)      # queued behind it
        with pytest.raises(microrpc.DeadlineExceeded):
            late.result(timeout=5)
        # The worker must not pick the call up before the server has seen either its
        # CANCEL or its deadline pass: on a loaded machine the I/O thread may not have read
        # the CANCEL yet when the blocker returns.
        until(lambda: server.statistics().cancelled >= 1, what="the server saw the cancel")
        server.release.set()
        assert blocker.result(timeout=5) is True
        # The client's cancel or the server's own deadline check stops it, whichever is first.
        until(lambda: (server.statistics().deadline_skipped
                       + server.statistics().cancelled) >= 1, what="skip counted")
        assert c.call("add", 1, 1) == 2
    assert ran == []                                        # the expired call never ran


def test_message_too_large_on_both_sides(make_server):
    server = make_server(max_message_size=10_000)
    with microrpc.Client(server.address, timeout=5, max_message_size=10_000) as c:
        with pytest.raises(microrpc.MessageTooLarge, match="10000"):
            c.call("echo", b"x" * 20_000)                   # refused before sending
        with pytest.raises(microrpc.MessageTooLarge, match="10000"):
            c.call("big", 20_000)                           # the server refuses its reply
        assert c.call("big", 10) == b"x" * 10


def test_protocol_error_for_a_codec_the_server_refuses(server):
    with microrpc.Client(server.address, codec="pickle", timeout=5) as c:
        with pytest.raises(microrpc.ProtocolError, match="codec"):
            c.call("echo", 1)


def test_pickle_when_both_sides_ask_for_it(make_server):
    server = make_server(codec="pickle")
    with microrpc.Client(server.address, codec="pickle", timeout=5) as c:
        assert c.call("echo", {1, 2, 3}) == {1, 2, 3}       # a set: msgpack could not


def test_unserializable_result_is_a_remote_error(make_server):
    server = make_server(start=False)
    server.register("weird", lambda: object())
    server.start()
    with microrpc.Client(server.address, timeout=5) as c:
        with pytest.raises(microrpc.RemoteError, match="could not be encoded"):
            c.call("weird")


def test_connection_lost_when_server_stops_mid_call(make_server, until):
    server = make_server()
    c = microrpc.Client(server.address, timeout=10)
    fut = c.call_async("wait", 30.0)
    until(lambda: server.statistics().queue_depth == 1, what="call running")
    server.stop(grace=0.05)               # grace runs out: the call ends with an error
    with pytest.raises(microrpc.ConnectionLost):
        fut.result(timeout=5)
    with pytest.raises(microrpc.ConnectionLost):
        c.call("echo", 1)                  # nobody listens any more
    c.close()


def test_stop_with_grace_lets_calls_finish(make_server, until):
    server = make_server()
    c = microrpc.Client(server.address, timeout=10)
    fut = c.call_async("wait", 0.2)
    until(lambda: server.statistics().queue_depth == 1, what="call running")
    threading.Timer(0.05, server.release.set).start()
    server.stop(grace=5.0)
    assert fut.result(timeout=5) is True
    c.close()


def test_overloaded_from_a_rejecting_policy(make_server, rejecting_policy):
    server = make_server(overload=rejecting_policy(admit_every=2))
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("add", 1, 1) == 2
        with pytest.raises(microrpc.Overloaded) as info:
            c.call("add", 1, 1)
        assert info.value.side == "server"
    stats = server.statistics()
    assert stats.rejects == 1 and stats.overload == {"seen": 2}


def test_every_error_is_an_rpc_error():
    for cls in (microrpc.RemoteError, microrpc.DeadlineExceeded, microrpc.Overloaded,
                microrpc.MethodNotFound, microrpc.ConnectionLost, microrpc.ProtocolError,
                microrpc.MessageTooLarge):
        assert issubclass(cls, microrpc.RpcError)


def test_bad_addresses_and_options():
    for bad in ["127.0.0.1:80", "udp://x:1", "tcp://host", "tcp://h:99999", "unix://rel"]:
        with pytest.raises(ValueError):
            microrpc.Client(bad)
    with pytest.raises(ValueError, match="pyzmq"):
        microrpc.Server("zmq+tcp://127.0.0.1:0")
    with pytest.raises(ValueError, match="codec"):
        microrpc.Client("tcp://127.0.0.1:1", codec="json")
    with pytest.raises(ValueError, match="poll"):
        microrpc.Server("tcp://127.0.0.1:0", poll="fast")
    with pytest.raises(microrpc.ConnectionLost, match="cannot connect"):
        microrpc.Client("tcp://127.0.0.1:1")
    for cls in (microrpc.Client, microrpc.AsyncClient):
        with pytest.raises(ValueError, match="credit_queue"):
            cls("tcp://127.0.0.1:1", credit_queue=-1)
        with pytest.raises(ValueError, match="credit_wait"):
            cls("tcp://127.0.0.1:1", credit_wait=-0.001)


def test_credit_options_reach_the_credit_queue(make_server):
    import breakwater

    server = make_server(overload=breakwater.Breakwater())
    with microrpc.Client(server.address, timeout=5, credit_queue=3, credit_wait=0.002) as c:
        assert c.call("add", 1, 2) == 3
        credits = c._core.credits
        assert (credits.max_queue, credits.max_wait_ns) == (3, 2_000_000)


def test_statistics_count_calls_and_bytes(server):
    with microrpc.Client(server.address, timeout=5) as c:
        for i in range(10):
            c.call("add", i, i)
        with pytest.raises(microrpc.MethodNotFound):
            c.call("nosuch")
        cs = c.statistics()
    assert (cs.calls, cs.ok, cs.errors, cs.in_flight) == (11, 10, 1, 0)
    assert cs.bytes_sent > 11 * _core.HEADER
    ss = server.statistics()
    assert ss.calls == 11 and ss.errors == 1 and ss.bytes_in == cs.bytes_sent


def test_failed_calls_leave_no_reference_cycles(server):
    """A raised error's traceback keeps the raising frame: a frame that still holds the call
    (or the future) that holds the error is a cycle per failed call, which only the cyclic GC
    frees (pauses of ms under load). MethodNotFound: the server side raises nothing."""
    import asyncio
    import gc

    async def failing_async(n):
        async with microrpc.AsyncClient(server.address, timeout=5) as ac:
            for _ in range(n):
                with pytest.raises(microrpc.MethodNotFound):
                    await ac.call("nosuch")

    with microrpc.Client(server.address, timeout=5) as c:
        c.ping()
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(100):
                with pytest.raises(microrpc.MethodNotFound):
                    c.call("nosuch")
                with pytest.raises(microrpc.MethodNotFound):
                    c.call_async("nosuch").result()
            assert gc.collect() == 0
        finally:
            if was_enabled:
                gc.enable()
    asyncio.run(failing_async(1))        # warm up asyncio's own one-time objects
    gc.collect()
    gc.disable()
    try:
        asyncio.run(failing_async(100))
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < 50              # asyncio.run's loop itself, not 100 x per call
