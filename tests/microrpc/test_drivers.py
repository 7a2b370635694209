"""One outcome suite, run through every client driver on every transport.

Drivers: ``sync`` (``Client.call``), ``future`` (``Client.call_async(...).result()``),
``callback`` (``call_async`` read only through ``add_done_callback``), ``asyncio``
(``AsyncClient`` on a loop in a background thread) and ``uvloop`` (the same on uvloop, when
it is installed). Each is wrapped in the same small façade (:class:`Driver`), so every test
below states an outcome once and checks it for all of them, statistics included.

Also here: codec discipline against a rogue server (a reply is never decoded in a codec the
client did not ask for: a pickle body would run code), and the done-callback and
``concurrent.futures`` behaviour of ``call_async`` futures.
"""
import asyncio
import concurrent.futures
import logging
import pickle
import selectors
import sys
import threading

import msgpack
import pytest

import microrpc
from microrpc import _core, transport as transport_mod

# Seconds a façade waits past a call's own timeout before declaring the driver hung.
HANG_BOUND = 5.0


def bound_for(timeout):
    return (timeout if timeout is not None else 10.0) + HANG_BOUND


def reraise_unless_hung(exc, what):
    """A TimeoutError that is not an RpcError means our bound ran out: the driver hung."""
    if isinstance(exc, microrpc.RpcError):
        raise exc
    raise AssertionError(f"{what}: no outcome within the test's bound") from None


# -- the façade -----------------------------------------------------------------------------


class SyncConn:
    """``call`` returns the result or raises the call's error; ``statistics``; ``close``."""

    def __init__(self, client):
        self.client = client

    def call(self, method, /, *args, timeout=5.0, **kwargs):
        return self.client.call(method, *args, timeout=timeout, **kwargs)

    def statistics(self):
        return self.client.statistics()

    def close(self):
        self.client.close()


class FutureConn(SyncConn):
    def call(self, method, /, *args, timeout=5.0, **kwargs):
        fut = self.client.call_async(method, *args, timeout=timeout, **kwargs)
        try:
            return fut.result(timeout=bound_for(timeout))
        except concurrent.futures.TimeoutError as exc:
            reraise_unless_hung(exc, f"future of {method}")


class CallbackConn(SyncConn):
    """Reads the outcome only inside the done-callback; this thread never calls result()."""

    def call(self, method, /, *args, timeout=5.0, **kwargs):
        fut = self.client.call_async(method, *args, timeout=timeout, **kwargs)
        box = {}
        fired = threading.Event()

        def on_done(f):
            assert f.done()
            error = f.exception()            # done: returns at once
            if error is not None:
                box["error"] = error
            else:
                box["value"] = f.result()
            fired.set()

        fut.add_done_callback(on_done)
        if not fired.wait(bound_for(timeout)):
            raise AssertionError(f"the done-callback of {method} never ran")
        if "error" in box:
            raise box["error"]
        return box["value"]


class LoopThread:
    """An event loop running in a daemon thread; ``run`` drives a coroutine to its end."""

    def __init__(self, new_loop):
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="test-event-loop")
        self.thread.start()

    def run(self, coro, bound):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(bound)
        except concurrent.futures.TimeoutError as exc:
            if not isinstance(exc, microrpc.RpcError):
                fut.cancel()
            reraise_unless_hung(exc, "coroutine")

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        assert not self.thread.is_alive(), "the event loop did not stop"
        self.loop.close()


class AsyncConn:
    def __init__(self, loop_thread, client):
        self.lt = loop_thread
        self.client = client

    def call(self, method, /, *args, timeout=5.0, **kwargs):
        return self.lt.run(self.client.call(method, *args, timeout=timeout, **kwargs),
                           bound_for(timeout))

    def statistics(self):
        async def read():
            return self.client.statistics()
        return self.lt.run(read(), HANG_BOUND)

    def close(self):
        self.lt.run(self.client.close(), HANG_BOUND)


class Driver:
    """``connect(address, **client_options)`` -> a connection with the façade above."""

    def __init__(self, name):
        self.name = name
        self.conns = []
        self.loop_thread = None
        if name == "asyncio":
            self.loop_thread = LoopThread(asyncio.new_event_loop)
        elif name == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            self.loop_thread = LoopThread(uvloop.new_event_loop)

    def connect(self, address, **options):
        if self.loop_thread is not None:
            client = microrpc.AsyncClient(address, **options)
            conn = AsyncConn(self.loop_thread, client)
            self.loop_thread.run(client.connect(), bound_for(options.get("connect_timeout")))
        else:
            client = microrpc.Client(address, **options)
            cls = {"sync": SyncConn, "future": FutureConn, "callback": CallbackConn}[self.name]
            conn = cls(client)
        self.conns.append(conn)
        return conn

    def close(self):
        try:
            for c in self.conns:
                c.close()
        finally:
            if self.loop_thread is not None:
                self.loop_thread.stop()


DRIVERS = ["sync", "future", "callback", "asyncio", "uvloop"]


@pytest.fixture(params=DRIVERS)
def driver(request):
    d = Driver(request.param)
    yield d
    d.close()


def assert_counts(conn, *, calls, ok, errors, timeouts=0):
    """Every call counted once; after everything ended, ok + errors == calls."""
    s = conn.statistics()
    assert (s.calls, s.ok, s.errors, s.timeouts, s.in_flight) == (
        calls, ok, errors, timeouts, 0), s
    assert s.ok + s.errors == s.calls


# -- outcomes, every driver x every transport ----------------------------------------------


def test_result_in_msgpack_and_raw(driver, server):
    c = driver.connect(server.address, timeout=5)
    value = {"a": [1, 2.5, None, True, "s", b"b"], "n": -(2**63)}
    assert c.call("echo", value) == value
    assert c.call("add", 2, 3) == 5
    assert c.call("echo", []) == []
    assert_counts(c, calls=3, ok=3, errors=0)

    r = driver.connect(server.address, codec="raw", timeout=5)
    assert r.call("echo", b"\x00raw\xff") == b"\x00raw\xff"
    assert r.call("echo", b"") == b""
    with pytest.raises(TypeError, match="raw codec"):
        r.call("echo", "not bytes")          # refused before it is a call: not counted
    assert_counts(r, calls=2, ok=2, errors=0)


def _keywords(a, b=2, *, c=3):
    return [a, b, c]


def _keywords_with_context(ctx, a, *, c=3):
    return [ctx.call_id > 0, a, c]


@pytest.mark.parametrize("codec", ["msgpack", "pickle"])
def test_keyword_arguments(driver, make_server, codec):
    server = make_server(codec=("msgpack", "pickle"))
    server.register("kw", _keywords)
    server.register("kw_pool", _keywords, blocking=True)
    server.register("kw_ctx", _keywords_with_context, context=True)
    c = driver.connect(server.address, codec=codec, timeout=5)
    assert list(c.call("kw", 1, c=30)) == [1, 2, 30]
    assert list(c.call("kw", a=1, b=20)) == [1, 20, 3]
    assert list(c.call("kw_pool", 1, 2, c=4)) == [1, 2, 4]
    assert list(c.call("kw_ctx", a=5, c=6)) == [True, 5, 6]
    assert list(c.call("kw", 7)) == [7, 2, 3]       # no keywords: the plain body
    # A keyword the handler does not take is the handler's TypeError, as a local call's.
    with pytest.raises(microrpc.RemoteError) as info:
        c.call("kw", 1, d=4)
    assert info.value.remote_type == "TypeError" and "'d'" in str(info.value)
    # `timeout` is the call's own deadline, not a keyword for the method; `method` is
    # positional-only, so a method may take a keyword of that name.
    server.register("named", lambda *, method, timeout: [method, timeout])
    with pytest.raises(microrpc.RemoteError, match="timeout"):
        c.call("named", method="m", timeout=1.0)
    assert_counts(c, calls=7, ok=5, errors=2)


def test_keyword_arguments_with_the_raw_codec_are_refused_before_sending(driver, server):
    c = driver.connect(server.address, codec="raw", timeout=5)
    with pytest.raises(TypeError, match="keyword"):
        c.call("echo", b"x", flag=True)
    assert c.call("echo", b"x") == b"x"
    assert server.statistics().calls == 1           # the refused call never left


def test_remote_error_carries_type_and_message(driver, server):
    c = driver.connect(server.address, timeout=5)
    with pytest.raises(microrpc.RemoteError) as info:
        c.call("fail", "bad thing")
    err = info.value
    assert (err.remote_type, err.message, err.remote_traceback) == ("ValueError", "bad thing", None)
    assert c.call("add", 1, 1) == 2
    assert_counts(c, calls=2, ok=1, errors=1)


def test_method_not_found_leaves_the_connection_usable(driver, server):
    c = driver.connect(server.address, timeout=5)
    with pytest.raises(microrpc.MethodNotFound, match="nosuch"):
        c.call("nosuch")
    assert c.call("add", 1, 1) == 2
    assert c.statistics().reconnects == 0
    assert_counts(c, calls=2, ok=1, errors=1)


def test_deadline_exceeded_and_the_late_reply_is_not_misrouted(driver, server, until):
    c = driver.connect(server.address, timeout=5)
    with pytest.raises(microrpc.DeadlineExceeded) as info:
        c.call("wait", 5.0, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    server.release.set()
    # Let the server finish the expired call, so its late reply is on the wire before the
    # next request: a reply matched by anything but its call id would be taken for it.
    until(lambda: server.statistics().queue_depth == 0, what="the late call finished")
    assert [c.call("echo", i) for i in range(3)] == [0, 1, 2]
    assert_counts(c, calls=4, ok=3, errors=1, timeouts=1)


def test_message_too_large_on_either_side(driver, make_server):
    server = make_server(max_message_size=10_000)
    c = driver.connect(server.address, timeout=5, max_message_size=10_000)
    sent = c.statistics().bytes_sent
    seen = server.statistics().calls
    with pytest.raises(microrpc.MessageTooLarge, match="10000"):
        c.call("echo", b"x" * 20_000)                   # the client refuses to send it
    assert c.statistics().bytes_sent == sent
    with pytest.raises(microrpc.MessageTooLarge, match="10000"):
        c.call("big", 20_000)                           # the server refuses its reply
    assert server.statistics().calls == seen + 1        # only the second reached it
    assert c.call("big", 10) == b"x" * 10
    s = c.statistics()       # exact counts: test_a_request_refused_before_sending_is_counted
    assert s.ok == 1 and s.ok + s.errors == s.calls and s.in_flight == 0


def test_a_request_refused_before_sending_is_counted(driver, server):
    """A request over max_message_size is a call that ended in MessageTooLarge (the core's
    ``abort`` exists so that it "too has exactly one outcome"), counted like any other."""
    c = driver.connect(server.address, timeout=5, max_message_size=1000)
    with pytest.raises(microrpc.MessageTooLarge):
        c.call("echo", b"x" * 2000)
    assert_counts(c, calls=1, ok=0, errors=1)


def test_overloaded_from_a_server_that_rejects_everything(driver, make_server,
                                                         rejecting_policy):
    policy = rejecting_policy()
    server = make_server(overload=policy)
    c = driver.connect(server.address, timeout=5)
    for _ in range(2):
        with pytest.raises(microrpc.Overloaded) as info:
            c.call("add", 1, 1)
        assert info.value.side == "server"
    assert server.statistics().rejects == 2 and policy.seen == 2
    assert_counts(c, calls=2, ok=0, errors=2)


def test_connection_lost_in_flight_then_reconnect_after_restart(driver, make_server, until):
    first = make_server()
    address = first.address
    c = driver.connect(address, timeout=10)
    assert c.call("add", 1, 1) == 2
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(c.call, "wait", 30.0) for _ in range(3)]
        until(lambda: first.statistics().queue_depth == 3, what="three calls running")
        first.stop(grace=0.05)
        for p in pending:
            with pytest.raises(microrpc.ConnectionLost):
                p.result(timeout=bound_for(10))
    with pytest.raises(microrpc.ConnectionLost):
        c.call("add", 1, 1)                              # nobody listens now
    second = make_server(address=address)               # same port, same path
    assert second.address == address
    assert c.call("add", 2, 2) == 4                      # reconnects on this call
    assert c.statistics().reconnects == 1
    assert_counts(c, calls=6, ok=2, errors=4)


def test_protocol_error_when_the_server_refuses_the_codec(driver, server):
    c = driver.connect(server.address, codec="pickle", timeout=5)
    with pytest.raises(microrpc.ProtocolError, match="codec"):
        c.call("echo", 1)
    assert_counts(c, calls=1, ok=0, errors=1)


def test_a_response_over_the_clients_limit_breaks_that_connection_only(driver, server):
    c = driver.connect(server.address, timeout=5, max_message_size=10_000)
    with pytest.raises(microrpc.ProtocolError, match="10000"):
        c.call("big", 20_000)                   # the server's limit is 16 MiB: it sends it
    assert c.call("big", 10) == b"x" * 10        # a new connection
    assert c.statistics().reconnects == 1
    assert_counts(c, calls=2, ok=1, errors=1)


# -- codec discipline with a rogue server --------------------------------------------------


class Pwn:
    """Unpickling this runs code: what a malicious server would put in a pickle body."""

    def __reduce__(self):
        return (exec, ("import sys; sys._microrpc_pwned = True",))


def _rogue_pickle(f):
    return _core.encode_frame(_core.RESPONSE, f.call_id, b"", pickle.dumps(Pwn()),
                              codec=_core.PICKLE)


def _rogue_raw_error(f):
    # A well-formed msgpack error body, but the frame says raw: error bodies are msgpack only.
    return _core.encode_frame(_core.ERROR, f.call_id, b"",
                              msgpack.packb([1, "ValueError", "x", None]), codec=_core.RAW)


def _rogue_request(f):
    return _core.encode_frame(_core.REQUEST, f.call_id, b"echo", msgpack.packb([1]),
                              codec=_core.MSGPACK)


def _rogue_msgpack_to_raw(f):
    return _core.encode_frame(_core.RESPONSE, f.call_id, b"", msgpack.packb(b"x"),
                              codec=_core.MSGPACK)


ROGUES = {  # name -> (the client's codec, the reply to every REQUEST)
    "pickle response": ("msgpack", _rogue_pickle),
    "raw error frame": ("msgpack", _rogue_raw_error),
    "request to the client": ("msgpack", _rogue_request),
    "msgpack response to a raw client": ("raw", _rogue_msgpack_to_raw),
}


class RogueServer:
    """Answers PING with PONG and every REQUEST with ``reply(frame)``; counts connections
    accepted and connections the client closed."""

    def __init__(self, transport, reply, pong=True):
        address = ("tcp://127.0.0.1:0" if transport == "tcp"
                   else f"unix://{_tmp_socket_path()}")
        self.listener, self.bound = transport_mod.listen(address, backlog=8)
        self.address = str(self.bound)
        self.reply = reply
        self.pong = pong
        self.accepted = 0
        self.hangups = 0
        self.requests = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="rogue-server")
        self.thread.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.02):
                    if key.data is None:
                        try:
                            conn, _ = self.listener.accept()
                        except BlockingIOError:
                            continue
                        conn.settimeout(5)
                        sel.register(conn, selectors.EVENT_READ, _core.FrameParser())
                        self.accepted += 1
                        continue
                    conn = key.fileobj
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(conn)
                        conn.close()
                        self.hangups += 1
                        continue
                    key.data.feed(data)
                    for f in key.data.frames():
                        if f.kind == _core.PING and self.pong:
                            conn.sendall(_core.encode_frame(_core.PONG, f.call_id))
                        elif f.kind == _core.REQUEST:
                            self.requests += 1
                            conn.sendall(self.reply(f))
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()
            sel.close()

    def close(self):
        self._stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        if self.bound.scheme == "unix":
            import os
            try:
                os.unlink(self.bound.path)
            except OSError:
                pass


def _tmp_socket_path():
    import os
    import tempfile
    return os.path.join(tempfile.mkdtemp(prefix="mrpc"), "rogue.sock")


@pytest.fixture
def rogue(transport):
    servers = []

    def make(reply, pong=True):
        s = RogueServer(transport, reply, pong)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.mark.parametrize("case", ROGUES.values(), ids=ROGUES.keys())
def test_a_reply_outside_the_clients_codec_is_a_protocol_error(driver, rogue, until, case):
    codec, reply = case
    server = rogue(reply)
    c = driver.connect(server.address, codec=codec, timeout=2)
    arg = b"x" if codec == "raw" else 1
    try:
        with pytest.raises(microrpc.ProtocolError):
            c.call("echo", arg)
        assert not hasattr(sys, "_microrpc_pwned"), "the client unpickled the server's reply"
        until(lambda: server.hangups >= 1, what="the client closing the broken connection")
        # The next call reconnects (and meets the same rogue) or fails; it never hangs.
        with pytest.raises((microrpc.ProtocolError, microrpc.ConnectionLost)):
            c.call("echo", arg)
        assert not hasattr(sys, "_microrpc_pwned")
    finally:
        sys.__dict__.pop("_microrpc_pwned", None)
    assert_counts(c, calls=2, ok=0, errors=2)


def _rogue_nested(f):
    # 2,000 empty arrays in one array: well-formed msgpack, over the client's item limit.
    return _core.encode_frame(_core.RESPONSE, f.call_id, b"",
                              b"\xdd" + (2000).to_bytes(4, "big") + b"\x90" * 2000,
                              codec=_core.MSGPACK)


def test_a_reply_over_the_clients_decode_limits_is_a_protocol_error(driver, rogue):
    """Every driver passes decode_limits to the core: a hostile server cannot make a client
    decode a bomb, and the call ends (issue #10)."""
    server = rogue(_rogue_nested)
    c = driver.connect(server.address, timeout=2,
                       decode_limits=microrpc.DecodeLimits(max_items=1000))
    with pytest.raises(microrpc.ProtocolError, match="max_array_len=1000"):
        c.call("echo", 1)
    assert_counts(c, calls=1, ok=0, errors=1)


def test_connecting_where_nobody_answers_is_connection_lost(driver, transport, rogue):
    # Nobody listens: a socket bound to the address without listen() refuses at once.
    holder, address = _bound_not_listening(transport)
    try:
        with pytest.raises(microrpc.ConnectionLost):
            driver.connect(address, timeout=2, connect_timeout=2)
    finally:
        holder.close()
    # Someone accepts but never answers the handshake PING: connect_timeout ends it.
    silent = rogue(_rogue_request, pong=False)
    with pytest.raises(microrpc.ConnectionLost):
        driver.connect(silent.address, timeout=2, connect_timeout=0.2)
    assert silent.accepted == 1


def _bound_not_listening(transport):
    import socket
    if transport == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        return sock, f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = _tmp_socket_path()
    sock.bind(path)
    return sock, f"unix://{path}"


# -- done-callbacks and concurrent.futures (the thread client) -----------------------------


def test_a_done_callback_fires_with_nobody_calling_result(server, until):
    with microrpc.Client(server.address, timeout=5) as c:
        seen = []
        fut = c.call_async("wait", 5.0)
        fut.add_done_callback(lambda f: seen.append((threading.current_thread(), f.result())))
        assert seen == []
        server.release.set()
        until(lambda: seen, what="the done-callback")
        [(thread, value)] = seen
        assert value is True and thread is not threading.current_thread()
        assert_counts(SyncConn(c), calls=1, ok=1, errors=0)


def test_a_callback_added_to_a_finished_future_runs_at_once_here(server):
    with microrpc.Client(server.address, timeout=5) as c:
        fut = c.call_async("add", 1, 2)
        assert fut.result(timeout=5) == 3
        ran = []
        fut.add_done_callback(lambda f: ran.append((threading.current_thread(), f.result())))
        assert ran == [(threading.current_thread(), 3)]
        # Also for a call whose outcome was known before it was sent.
        bad = c.call_async("echo", b"x" * (_core.DEFAULT_MAX_MESSAGE_SIZE + 1))
        bad.add_done_callback(lambda f: ran.append((threading.current_thread(), f.exception())))
        assert ran[1][0] is threading.current_thread()
        assert isinstance(ran[1][1], microrpc.MessageTooLarge)
        assert_counts(SyncConn(c), calls=2, ok=1, errors=1)


def test_a_raising_callback_is_logged_and_breaks_nothing(server, until, caplog):
    caplog.set_level(logging.ERROR, logger="concurrent.futures")

    def boom(f):
        raise RuntimeError("boom in a callback")

    with microrpc.Client(server.address, timeout=5) as c:
        after = []
        fut = c.call_async("wait", 5.0)
        fut.add_done_callback(boom)
        fut.add_done_callback(lambda f: after.append(f.result()))   # still runs
        server.release.set()
        until(lambda: after, what="the callback after the raising one")
        assert after == [True]
        done = c.call_async("add", 1, 1)
        assert done.result(timeout=5) == 2
        done.add_done_callback(boom)                     # runs here: logged, not raised
        assert c.call("add", 2, 2) == 4
        again = []
        c.call_async("add", 3, 3).add_done_callback(lambda f: again.append(f.result()))
        until(lambda: again, what="a callback after the failures")
        assert again == [6]
        assert_counts(SyncConn(c), calls=4, ok=4, errors=0)
    logged = [r for r in caplog.records
              if r.exc_info and str(r.exc_info[1]) == "boom in a callback"]
    assert len(logged) == 2
    assert all("exception calling callback" in r.getMessage() for r in logged)


def test_callbacks_that_call_again_run_a_closed_loop(server):
    n = 200
    with microrpc.Client(server.address, timeout=5) as c:
        results, errors = [], []
        finished = threading.Event()

        def step(f):
            try:
                results.append(f.result())
                if len(results) < n:
                    c.call_async("add", len(results), 1).add_done_callback(step)
                else:
                    finished.set()
            except BaseException as exc:        # reported below; the client would only log it
                errors.append(exc)
                finished.set()

        c.call_async("add", 0, 1).add_done_callback(step)
        assert finished.wait(10), f"{len(results)} of {n} outcomes arrived"
        assert errors == []
        assert results == [i + 1 for i in range(n)]
        assert_counts(SyncConn(c), calls=n, ok=n, errors=0)


def test_wait_and_as_completed_on_call_futures(server):
    with microrpc.Client(server.address, timeout=5) as c:
        slow = c.call_async("wait", 5.0)
        fast = c.call_async("add", 1, 1)
        done, not_done = concurrent.futures.wait(
            [slow, fast], timeout=5, return_when=concurrent.futures.FIRST_COMPLETED)
        assert fast in done and slow in not_done
        failing = c.call_async("fail", "x")
        done, not_done = concurrent.futures.wait(
            [slow, failing], timeout=5, return_when=concurrent.futures.FIRST_EXCEPTION)
        assert done == {failing} and not_done == {slow}
        assert isinstance(failing.exception(), microrpc.RemoteError)
        server.release.set()
        more = [c.call_async("add", i, i) for i in range(50)]
        everything = [slow, fast, failing] + more
        seen = list(concurrent.futures.as_completed(everything, timeout=5))
        assert len(seen) == len(everything) and set(seen) == set(everything)
        assert slow.result() is True and [f.result() for f in more] == [2 * i for i in range(50)]
        done, not_done = concurrent.futures.wait(everything, timeout=5)
        assert not not_done
        assert_counts(SyncConn(c), calls=53, ok=52, errors=1)


def test_cancel_a_pending_call(server, until):
    with microrpc.Client(server.address, timeout=5) as c:
        fut = c.call_async("wait", 5.0)
        seen = []
        fut.add_done_callback(lambda f: seen.append(f.cancelled()))
        assert fut.cancel() is True
        assert fut.cancelled() and fut.done() and not fut.running()
        assert seen == [True]                        # as concurrent.futures: run by cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.exception()
        late = []
        fut.add_done_callback(lambda f: late.append(f.cancelled()))     # runs at once
        assert late == [True]
        done, _ = concurrent.futures.wait([fut], timeout=0)
        assert done == {fut}
        until(lambda: server.statistics().cancelled >= 1, what="the server saw the cancel")
        server.release.set()
        assert c.call("add", 2, 2) == 4
        assert [f.result(timeout=5) for f in [c.call_async("echo", i) for i in range(5)]] == [
            0, 1, 2, 3, 4]
        s = c.statistics()
        # A cancelled call is started but neither ok nor an error (statistics have no
        # cancelled count), so the sum is one short by design.
        assert (s.calls, s.ok, s.errors, s.in_flight) == (7, 6, 0, 0)


def test_cancel_a_finished_call_is_false_and_it_is_a_real_future(server):
    with microrpc.Client(server.address, timeout=5) as c:
        fut = c.call_async("add", 1, 2)
        assert isinstance(fut, concurrent.futures.Future)
        assert fut.result(timeout=5) == 3
        assert fut.cancel() is False
        assert not fut.cancelled() and fut.result() == 3
        assert_counts(SyncConn(c), calls=1, ok=1, errors=0)


def test_wait_across_clients_and_executor_futures(make_server):
    server = make_server()
    with microrpc.Client(server.address, timeout=5) as a, \
            microrpc.Client(server.address, timeout=5) as b, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        mine = pool.submit(gate.wait, 5)
        fs = [a.call_async("wait", 5.0), b.call_async("wait", 5.0), mine]
        gate.set()                                   # the executor's future ends first
        done, not_done = concurrent.futures.wait(
            fs, timeout=5, return_when=concurrent.futures.FIRST_COMPLETED)
        assert mine in done and not_done == set(fs[:2])
        server.release.set()
        assert set(concurrent.futures.as_completed(fs, timeout=5)) == set(fs)
        assert [f.result() for f in fs] == [True, True, True]
        assert_counts(SyncConn(a), calls=1, ok=1, errors=0)
        assert_counts(SyncConn(b), calls=1, ok=1, errors=0)


def test_cancel_wakes_a_thread_blocked_in_result(make_server, until, in_kernel_wait):
    server = make_server(start=False)
    running = threading.Event()

    def hold():
        running.set()
        return server.release.wait(5)

    server.register("hold", hold, blocking=True)
    server.start()
    with microrpc.Client(server.address, timeout=10, poll="block") as c:
        fut = c.call_async("hold")
        # Once the handler runs, the server only marks it cancelled and sends nothing
        # until it returns: nothing but cancel() itself can wake the reader.
        until(running.is_set, what="the handler running")
        outcome = []

        def waiter():
            try:
                outcome.append(fut.result(timeout=1.5))
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        until(lambda: in_kernel_wait(t), what="the waiter reading the socket")
        assert fut.cancel() is True
        t.join(0.75)
        woke = not t.is_alive()
        t.join(5)
        server.release.set()
        assert woke, f"result() still blocked 0.75 s after cancel() (then: {outcome!r})"
        assert isinstance(outcome[0], concurrent.futures.CancelledError)


def test_a_blocking_call_inside_a_done_callback_completes(server):
    # Regression (f5f813c): the reader deferred every request made while it ran callbacks
    # to the batch's end, so a callback that waited on its own call timed out.
    with microrpc.Client(server.address, timeout=5) as c:
        outcome = []
        fired = threading.Event()

        def callback(f):
            try:
                outcome.append(c.call("add", f.result(), 1, timeout=0.5))
            except BaseException as exc:
                outcome.append(exc)
            fired.set()

        fut = c.call_async("wait", 5.0)
        fut.add_done_callback(callback)              # run by the reader when the reply comes
        server.release.set()
        assert fired.wait(5)
        assert outcome == [2]


def test_cancel_twice_is_true_like_concurrent_futures(server):
    # Regression (4b6f22f): the second cancel() returned False.
    with microrpc.Client(server.address, timeout=5) as c:
        fut = c.call_async("wait", 5.0)
        assert fut.cancel() is True
        server.release.set()
        assert fut.cancel() is True
