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