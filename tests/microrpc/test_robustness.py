"""Bad peers hurt only themselves: garbage, half frames, abrupt closes, floods, non-readers."""
import socket
import threading

import pytest

import microrpc
from microrpc import _core, transport


def raw_socket(address):
    sock = transport.connect(address, 5)
    sock.setblocking(True)
    sock.settimeout(5)
    return sock


def request(cid, name=b"add", body=None):
    import msgpack
    return _core.encode_frame(_core.REQUEST, cid, name, msgpack.packb(body or [1, 2]),
                              codec=_core.MSGPACK)


def test_garbage_closes_that_connection_only(server, until):
    good = microrpc.Client(server.address, timeout=5)
    bad = raw_socket(server.address)
    bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert bad.recv(100) == b""                      # the server hung up on it
    until(lambda: server.statistics().protocol_errors == 1, what="protocol error counted")
    assert good.call("add", 1, 2) == 3
    good.close()
    bad.close()


def test_half_frame_staller_holds_up_nobody(server):
    staller = raw_socket(server.address)
    staller.sendall(request(1)[:20])                 # half a header, then silence
    with microrpc.Client(server.address, timeout=5) as c:
        for i in range(100):
            assert c.call("add", i, 1) == i + 1
    staller.sendall(request(1)[20:])                 # finishing it later still works
    frames = _core.FrameParser()
    while not (got := frames.frames()):
        frames.feed(staller.recv(4096))
    assert got[0].kind == _core.RESPONSE and got[0].call_id == 1
    staller.close()


def test_close_mid_frame_and_oversized_frames(make_server, until):
    server = make_server(max_message_size=1000)
    mid = raw_socket(server.address)
    mid.sendall(request(1, body=[b"x" * 500])[:200])
    mid.close()                                       # EOF in the middle of a body
    big = raw_socket(server.address)
    big.sendall(_core.encode_frame(_core.REQUEST, 2, b"echo", b"y" * 5000)[:32])
    assert big.recv(10) == b""                        # refused from the header alone
    big.close()
    wrong_way = raw_socket(server.address)
    wrong_way.sendall(_core.encode_frame(_core.RESPONSE, 3, b"", b""))  # clients don't answer
    assert wrong_way.recv(10) == b""
    wrong_way.close()
    until(lambda: server.statistics().protocol_errors == 2, what="two protocol errors")
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("add", 2, 2) == 4


def test_client_sees_protocol_error_from_a_bad_server():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def bad_server():
        conn, _ = listener.accept()
        conn.recv(1000)
        conn.sendall(b"\x00" * 64)                   # not microrpc
        conn.recv(1000)
        conn.close()

    t = threading.Thread(target=bad_server, daemon=True)
    t.start()
    # The client's connection handshake (a ping) already sees the garbage.
    with pytest.raises(microrpc.ProtocolError, match="magic"):
        microrpc.Client(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout=5)
    t.join(5)
    listener.close()


def test_a_client_that_never_reads_cannot_grow_server_memory(make_server):
    """Pipeline requests with large replies and never read them: the server stops reading
    that peer once its unsent replies pass the limit, and keeps serving others."""
    server = make_server(max_message_size=2_000_000)   # per-connection output limit: 4 MiB
    hog = raw_socket(server.address)
    hog.setblocking(False)
    frame = request(1, b"big", [1_000_000])          # each reply is 1 MB
    sent = 0
    try:
        for _ in range(200):                          # asks for up to 200 MB of replies
            sent += hog.send(frame)
    except BlockingIOError:
        pass                                          # the server stopped reading: good
    with microrpc.Client(server.address, timeout=5) as c:
        assert c.call("add", 1, 1) == 2
    stats = server.statistics()
    # Replies waiting for the hog stay near the per-connection limit (4 MiB) plus one reply;
    # the requests behind them wait, unrun, in the queue.
    assert stats.buffered_output < 4 * 2**20 + 2 * 10**6
    assert stats.queue_depth > 0
    assert stats.bytes_out < 20 * 10**6
    hog.close()


# The flooder is another process, as a hostile client is: in this one, a pump thread would
# contend for the GIL with the server's I/O thread and the client, and the test would measure
# the interpreter's thread switching (seconds, now and then) instead of the server.
_FLOOD = """
import socket, sys, time
address, burst = sys.argv[1], bytes.fromhex(sys.argv[2]) * 2000
if address.startswith("unix://"):
    s = socket.socket(socket.AF_UNIX)
    s.connect(address[len("unix://"):])
else:
    host, port = address[len("tcp://"):].rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
s.setblocking(False)
sys.stdout.write("flooding\\n"); sys.stdout.flush()
end = time.monotonic() + 30
view, off = memoryview(burst), 0
while time.monotonic() < end:
    try:
        off = (off + s.send(view[off:])) % len(burst)   # a partial send resumes mid-frame
    except BlockingIOError:
        time.sleep(0.001)
    except OSError:
        break
"""


def test_flooding_client_does_not_starve_others(server, until):
    import subprocess
    import sys

    flood = subprocess.Popen([sys.executable, "-c", _FLOOD, server.address, request(1).hex()],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "flooding"
        until(lambda: server.statistics().calls > 2000)     # the flood is being served
        before = server.statistics().calls
        with microrpc.Client(server.address, timeout=5) as c:
            for i in range(50):
                assert c.call("add", i, i) == 2 * i
        assert server.statistics().calls > before + 50     # and was on meanwhile
    finally:
        flood.kill()
        flood.wait(5)

def _spin(seconds):
    import time
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _start_flood(address, burst):
    import subprocess
    import sys
    flood = subprocess.Popen([sys.executable, "-c", _FLOOD, address, burst.hex()],
                             stdout=subprocess.PIPE, text=True)
    assert flood.stdout.readline().strip() == "flooding"
    return flood


def test_a_flood_that_runs_slower_than_it_arrives_is_bounded_and_dropped_when_it_leaves(
        make_server, until):
    """Issue #10, item 1: requests sent faster than they run, replies never read. The
    server stops reading the flooder at its queue bound, serves an honest client in turn
    with it, and drops the flooder's queue when it leaves instead of running it."""
    import time
    server = make_server(start=False, max_queued_per_connection=256)
    ran = [0]

    def slow():
        ran[0] += 1
        # Sleeps rather than spins: a spinning handler holds the GIL that this test's own
        # client needs, and every call would then wait for the interpreter's switch
        # interval (5 ms) several times over, whatever the server's queueing does.
        time.sleep(0.0002)
    server.register("slow", slow)
    server.start()
    flood = _start_flood(server.address, _core.encode_frame(_core.REQUEST, 1, b"slow", b"\x90",
                                                            codec=_core.MSGPACK))
    try:
        until(lambda: server.statistics().paused_reads > 0, what="the flooder paused")
        waits = []
        with microrpc.Client(server.address, timeout=5) as c:
            for i in range(200):
                t = time.perf_counter()
                assert c.call("add", i, 1) == i + 1
                waits.append(time.perf_counter() - t)
        stats = server.statistics()
        assert stats.queued_peak_per_connection == 256 and stats.queued <= 256
        # Round-robin: a call waits for about one flood handler (0.2 ms), not for the 256
        # queued ahead of it (51 ms, every call). The median, not the maximum: this process
        # also runs the server, and on a shared 2-core machine a GIL switch or a
        # descheduling can cost one call tens of ms.
        assert sorted(waits)[len(waits) // 2] < 0.01
    finally:
        flood.kill()
        flood.wait(5)
    until(lambda: server.statistics().queued == 0, what="the flood's queue dropped")
    after = ran[0]
    with microrpc.Client(server.address, timeout=5) as c:   # a round trip: the loop moved on
        assert c.call("add", 1, 1) == 2
    assert ran[0] - after <= 1


def test_a_decode_bomb_is_refused_while_others_complete_handshakes(server):
    """Issue #10, item 2: a 16 MiB body of ~16.7M empty arrays took 17.5 s and 1.24 GB."""
    import time
    n = 16 * 1024 * 1024 - 64
    bomb = _core.encode_frame(_core.REQUEST, 7, b"echo",
                              b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n,
                              codec=_core.MSGPACK)
    sock = raw_socket(server.address)
    sock.settimeout(10)
    sock.sendall(bomb)
    t = time.perf_counter()
    with microrpc.Client(server.address, timeout=5) as c:    # handshake + call meanwhile
        assert c.call("add", 1, 2) == 3
    parser = _core.FrameParser()
    f = None
    while f is None:
        parser.feed(sock.recv(65536))
        f = parser.next()
    assert time.perf_counter() - t < 2.0
    code, type_name, message, _ = __import__("msgpack").unpackb(f.body)
    assert (f.kind, code, type_name) == (_core.ERROR, _core.BAD_REQUEST, "ProtocolError")
    assert "max_array_len" in message
    assert server.statistics().undecodable == 1
    sock.close()


def test_a_cancel_flood_does_not_stall_the_server(make_server, until):
    """Issue #10, item 3: CANCELs for unknown ids each scanned the whole run queue."""
    server = make_server(start=False)
    server.register("slow", lambda: _spin(0.0002))
    server.start()
    queued = b"".join(_core.encode_frame(_core.REQUEST, i, b"slow", b"\x90",
                                         codec=_core.MSGPACK) for i in range(2000))
    cancels = b"".join(_core.encode_frame(_core.CANCEL, 10**9 + i) for i in range(2000))
    flood = _start_flood(server.address, cancels)
    hog = raw_socket(server.address)
    hog.sendall(queued)
    try:
        until(lambda: server.statistics().bytes_in > 4 * 2**20, what="4 MB of CANCELs read")
        with microrpc.Client(server.address, timeout=2) as c:
            for i in range(200):
                assert c.call("add", i, 1) == i + 1
    finally:
        flood.kill()
        flood.wait(5)
        hog.close()


def test_a_session_flood_leaves_an_honest_client_served(make_server):
    """Issue #10, item 4: 100,000 sessions on one connection inflated the pool to ~200,000
    credits and made an honest client fail 15 % of its calls with Overloaded."""
    import breakwater
    # The AQM is set out of reach: what is tested here is the credit pool and the session
    # cap. With it on, a descheduling of this process on a shared machine (several ms of
    # loop lag) rejects the honest client's calls whatever the hog does; the fake-clock
    # test in test_server_core.py covers admission under a session flood.
    bw = breakwater.Breakwater(aqm_threshold_ns=10**12)
    server = make_server(overload=bw)
    hog = raw_socket(server.address)
    stop = threading.Event()

    def drain():                                     # the hog reads its replies
        hog.settimeout(0.1)
        while not stop.is_set():
            try:
                if not hog.recv(1 << 20):
                    return
            except socket.timeout:
                pass
            except OSError:
                return
    reader = threading.Thread(target=drain)
    reader.start()
    try:
        frames = []
        for s in range(1, 5001):
            frames.append(_core.encode_frame(_core.PING, s, session=s))
            frames.append(_core.encode_frame(_core.REQUEST, s, b"add", b"\x92\x01\x02",
                                             codec=_core.MSGPACK, session=s))
        hog.sendall(b"".join(frames))
        failed = 0
        with microrpc.Client(server.address, timeout=2) as c:
            for i in range(2000):
                try:
                    assert c.call("add", i, 1) == i + 1
                except microrpc.Overloaded:
                    failed += 1
        stats = server.statistics()
        assert failed == 0
        assert stats.session_rejects == 5000 - 1024 and stats.overload.sessions <= 1025
        assert stats.overload.pool_max <= 2 * 1025 + 64
    finally:
        stop.set()
        reader.join()
        hog.close()


def test_a_connection_past_max_connections_is_closed_and_the_others_go_on(make_server,
                                                                           until):
    server = make_server(max_connections=2)
    first = microrpc.Client(server.address, timeout=5)
    assert first.call("add", 1, 2) == 3
    second = raw_socket(server.address)
    second.sendall(request(1))
    assert len(second.recv(4096)) > 0                # served: two connections are allowed
    third = raw_socket(server.address)
    assert third.recv(100) == b""                    # closed at once, nothing sent
    until(lambda: server.statistics().connections_refused == 1, what="refusal counted")
    stats = server.statistics()
    assert stats.max_connections == 2 and stats.connections == 2
    assert first.call("add", 2, 3) == 5
    for s in (second, third):
        s.close()
    first.close()


def _thread_state(native_id):
    with open(f"/proc/self/task/{native_id}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_a_signal_on_the_serving_thread_does_not_stop_it(make_server, until):
    """Any thread may take a process-directed signal, and a debugger's attach interrupts
    system calls the same way: the serving thread's epoll_wait then fails with EINTR,
    which once ended that thread with a SystemError."""
    import signal
    server = make_server(poll="block")
    thread = server._thread
    taken = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: taken.append(1))
    try:
        with microrpc.Client(server.address, timeout=5) as client:
            for i in range(5):
                # Only once it sleeps in epoll_wait does the signal interrupt a wait.
                until(lambda: _thread_state(thread.native_id) == "S",
                      what="the serving thread waiting")
                signal.pthread_kill(thread.ident, signal.SIGUSR1)
                assert client.call("add", i, 1) == i + 1
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert thread.is_alive()
    assert taken                     # the handler ran (in the main thread), so they landed
