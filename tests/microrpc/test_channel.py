"""Conformance suite for the channel interface (microrpc/channel.py): every transport passes it.

The peer is a real ``microrpc.Server`` where a well-behaved one is wanted, and a plain
listening socket run by a thread (:class:`RawPeer`) where the peer must misbehave: close,
send garbage, announce a frame over the limit, or never read. Parametrized over the
``transport`` fixture, so a new transport joins by being added to ``conftest.TRANSPORTS``
(and, for the misbehaving peers, to :func:`raw_listener`).
"""
import os
import select
import socket
import tempfile
import threading

import msgpack
import pytest

import microrpc
from microrpc import _core, _native, channel, transport as transport_mod

SECOND = 1_000_000_000
# Generous upper bound for "returned at once" / "returned by the deadline" on a loaded CI box.
SLACK_S = 2.0


def now() -> int:
    return _native.monotonic_ns()


# -- helpers ------------------------------------------------------------------------------


def raw_listener(transport: str):
    """A blocking listening socket for ``transport`` and its address string."""
    if transport == "tcp":
        address = "tcp://127.0.0.1:0"
    else:
        address = f"unix://{os.path.join(tempfile.mkdtemp(prefix='mrpc'), 'p.sock')}"
    sock, bound = transport_mod.listen(address, backlog=4)
    sock.setblocking(True)
    sock.settimeout(5)
    return sock, bound


class RawPeer:
    """A server you control: accepts one connection and runs ``script(conn)`` on a thread.

    ``conn`` is a blocking socket with a 5 s timeout, so a script can never hang the test.
    """

    def __init__(self, transport: str, script):
        self.listener, self.bound = raw_listener(transport)
        self.address = str(self.bound)
        self.script = script
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="raw-peer")
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with conn:
            conn.settimeout(5)
            try:
                self.script(conn)
            except OSError as exc:        # the channel went away first: fine for a script
                self.error = exc

    def close(self):
        self.thread.join(5)
        alive = self.thread.is_alive()
        self.listener.close()
        if self.bound.scheme == "unix":
            try:
                os.unlink(self.bound.path)
            except OSError:
                pass
        assert not alive, "the raw peer's script did not finish"


@pytest.fixture
def raw_peer(transport):
    peers = []

    def make(script):
        peer = RawPeer(transport, script)
        peers.append(peer)
        return peer

    yield make
    for p in peers:
        p.close()


@pytest.fixture
def open_chan():
    """open_chan(address, **options) -> a channel, closed at the end of the test."""
    chans = []

    def make(address, *, max_message_size=_core.DEFAULT_MAX_MESSAGE_SIZE, poll="block"):
        chan = channel.open_channel(address, connect_timeout=5,
                                    max_message_size=max_message_size, poll=poll)
        chans.append(chan)
        return chan

    yield make
    for c in chans:
        c.close()


def request_frame(call_id: int, method: bytes, *args) -> bytes:
    return _core.encode_frame(_core.REQUEST, call_id, method, msgpack.packb(list(args)),
                              codec=_core.MSGPACK)


def send_request(chan, call_id: int, method: bytes, *args) -> int:
    """Write one REQUEST through ``send_from``; returns its size on the wire."""
    out = _core.OutBuffer()
    out.append(_core.REQUEST, call_id, method, msgpack.packb(list(args)), codec=_core.MSGPACK)
    size = len(out)
    deadline = now() + 5 * SECOND
    while not chan.send_from(out):
        assert now() < deadline, "could not send one small frame in 5 s"
        chan.wait_writable(deadline)
    assert len(out) == 0, "send_from returned True with bytes left in the buffer"
    return size


def recv_until(chan, count: int = 1, timeout: float = 5.0) -> list:
    """At least ``count`` frames, read with deadlines (never blocks past ``timeout``)."""
    deadline = now() + int(timeout * SECOND)
    frames = []
    while len(frames) < count:
        assert now() < deadline, f"got {len(frames)} of {count} frames in {timeout} s"
        frames += chan.recv_frames(deadline)
    return frames


def read_all(conn) -> int:
    """Read what the peer sends until it closes (bounded by the socket's timeout); returns
    the byte count."""
    n = 0
    while chunk := conn.recv(1 << 20):
        n += len(chunk)
    return n


# -- opening ------------------------------------------------------------------------------


def test_open_channel_on_a_good_address(server, open_chan):
    chan = open_chan(server.address)
    assert not chan.closed
    assert isinstance(chan.fileno(), int) and chan.fileno() >= 0
    assert (chan.bytes_sent, chan.bytes_received) == (0, 0)


def test_open_channel_where_nobody_listens_is_connection_lost(transport):
    # A socket bound to the address but not listening: the connect is refused at once.
    if transport == "tcp":
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
    else:
        path = os.path.join(tempfile.mkdtemp(prefix="mrpc"), "dead.sock")
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        holder.bind(path)
        address = f"unix://{path}"
    try:
        with pytest.raises(microrpc.ConnectionLost):
            channel.open_channel(address, connect_timeout=2,
                                 max_message_size=_core.DEFAULT_MAX_MESSAGE_SIZE)
    finally:
        holder.close()
    if transport == "unix":
        os.unlink(path)
        with pytest.raises(microrpc.ConnectionLost):      # and no file at all
            channel.open_channel(address, connect_timeout=2,
                                 max_message_size=_core.DEFAULT_MAX_MESSAGE_SIZE)


def test_open_channel_refuses_an_unknown_poll_mode(server):
    with pytest.raises(ValueError, match="poll"):
        channel.open_channel(server.address, max_message_size=1000, poll="busy")


# -- request and response -----------------------------------------------------------------


def test_send_from_a_request_gets_its_response(server, open_chan):
    chan = open_chan(server.address)
    send_request(chan, 7, b"add", 2, 3)
    [frame] = recv_until(chan)
    assert frame.kind == _core.RESPONSE and frame.call_id == 7
    assert frame.codec == _core.MSGPACK and msgpack.unpackb(frame.body) == 5


def test_many_requests_in_one_buffer_all_answered(server, open_chan):
    chan = open_chan(server.address)
    out = _core.OutBuffer()
    for i in range(1, 201):
        out.append(_core.REQUEST, i, b"add", msgpack.packb([i, 1000]), codec=_core.MSGPACK)
    deadline = now() + 5 * SECOND
    while not chan.send_from(out):
        chan.wait_writable(deadline)
        assert now() < deadline
    frames = recv_until(chan, 200)
    assert len(frames) == 200
    assert {f.call_id: msgpack.unpackb(f.body) for f in frames} == {
        i: i + 1000 for i in range(1, 201)}


def test_send_from_an_empty_buffer_is_true_and_sends_nothing(server, open_chan):
    chan = open_chan(server.address)
    assert chan.send_from(_core.OutBuffer()) is True
    assert chan.bytes_sent == 0


def test_wait_writable_returns_at_once_when_there_is_room(server, open_chan):
    chan = open_chan(server.address)
    t0 = now()
    chan.wait_writable(now() + 10 * SECOND)
    chan.wait_writable(0)                              # 0: "up to a second", not forever
    assert now() - t0 < SLACK_S * SECOND


def test_recv_frames_without_wait_on_an_idle_channel_returns_at_once(server, open_chan):
    chan = open_chan(server.address)
    t0 = now()
    assert chan.recv_frames(0, False) == []
    assert chan.recv_frames(now() + 10 * SECOND, wait=False) == []   # the deadline is moot
    assert now() - t0 < SLACK_S * SECOND
    assert not chan.closed


@pytest.mark.parametrize("poll", channel.POLL_MODES)
def test_recv_frames_returns_empty_at_its_deadline(server, open_chan, poll):
    chan = open_chan(server.address, poll=poll)
    wait_ns = 50_000_000
    t0 = now()
    deadline = t0 + wait_ns
    assert chan.recv_frames(deadline) == []
    t1 = now()
    assert t1 >= deadline, "returned [] before its deadline"
    assert t1 - t0 < SLACK_S * SECOND, "kept waiting long after its deadline"
    assert not chan.closed
    send_request(chan, 1, b"echo", "still usable")
    assert msgpack.unpackb(recv_until(chan)[0].body) == "still usable"


def test_recv_frames_with_a_past_deadline_does_not_wait(server, open_chan):
    chan = open_chan(server.address)
    t0 = now()
    assert chan.recv_frames(t0 - SECOND) == []
    assert now() - t0 < SLACK_S * SECOND


def test_fileno_polls_readable_when_a_reply_waits(server, open_chan):
    chan = open_chan(server.address)
    fd = chan.fileno()
    assert isinstance(fd, int)
    assert select.select([fd], [], [], 0)[0] == []          # idle: nothing to read
    send_request(chan, 3, b"add", 20, 22)
    readable, _, _ = select.select([fd], [], [], 5)
    assert readable == [fd], "no readability within 5 s of a request"
    deadline = now() + 5 * SECOND
    frames = []
    while not frames:                       # readable means "may": the frame can be split
        assert now() < deadline
        frames = chan.recv_frames(0, False)
        if not frames:
            select.select([fd], [], [], 1)
    assert frames[0].call_id == 3 and msgpack.unpackb(frames[0].body) == 42
    assert select.select([fd], [], [], 0)[0] == []          # all taken


def test_byte_counts_are_the_frames_bytes(server, open_chan):
    chan = open_chan(server.address)
    size = send_request(chan, 1, b"echo", "x" * 100)
    assert size == len(request_frame(1, b"echo", "x" * 100))
    assert chan.bytes_sent == size
    [frame] = recv_until(chan)
    assert chan.bytes_received == _core.HEADER + len(frame.name) + len(frame.body)
    size2 = send_request(chan, 2, b"big", 5000)
    [frame2] = recv_until(chan)
    assert len(frame2.body) > 5000                     # msgpack bin header + the bytes
    assert chan.bytes_sent == size + size2
    assert chan.bytes_received == 2 * _core.HEADER + len(frame.body) + len(frame2.body)


def test_a_frame_split_into_single_bytes_arrives_whole(raw_peer, open_chan):
    reply = _core.encode_frame(_core.RESPONSE, 9, b"", msgpack.packb("slow"),
                               codec=_core.MSGPACK)
    go = threading.Event()

    def dribble(conn):
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        go.wait(5)
        for i in range(len(reply)):
            conn.sendall(reply[i:i + 1])
        conn.sendall(reply)                           # then a whole second copy
        read_all(conn)

    peer = raw_peer(dribble)
    chan = open_chan(peer.address)
    go.set()
    frames = recv_until(chan, 2)
    assert [(f.call_id, msgpack.unpackb(f.body)) for f in frames] == [(9, "slow")] * 2
    assert chan.bytes_received == 2 * len(reply)


# -- ending -------------------------------------------------------------------------------


@pytest.mark.parametrize("poll", channel.POLL_MODES)
def test_shutdown_from_another_thread_wakes_a_blocked_reader(server, open_chan, until, poll,
                                                         in_kernel_wait):
    chan = open_chan(server.address, poll=poll)
    outcome = []

    def reader():
        try:
            outcome.append(chan.recv_frames(now() + 10 * SECOND))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    until(lambda: in_kernel_wait(t), what="the reader sleeping in the kernel")
    t0 = now()
    chan.shutdown()
    t.join(5)
    assert not t.is_alive(), "shutdown() did not wake the reader"
    assert now() - t0 < SLACK_S * SECOND
    [got] = outcome
    assert got == [] or isinstance(got, microrpc.ConnectionLost), got
    chan.shutdown()                                    # idempotent
    chan.close()
    chan.close()                                       # idempotent
    chan.shutdown()                                    # and harmless after close
    assert chan.closed
    with pytest.raises(microrpc.ConnectionLost):
        chan.recv_frames(0, False)
    with pytest.raises(microrpc.ConnectionLost):
        chan.send_from(_core.OutBuffer())


def test_close_twice_and_use_after_close(server, open_chan):
    chan = open_chan(server.address)
    chan.close()
    chan.close()
    assert chan.closed
    with pytest.raises(microrpc.ConnectionLost):
        chan.recv_frames(now() + SECOND)
    out = _core.OutBuffer()
    out.append(_core.PING, 0)
    with pytest.raises(microrpc.ConnectionLost):
        chan.send_from(out)
    t0 = now()
    chan.wait_writable(now() + 10 * SECOND)            # nothing to wait for: returns
    assert now() - t0 < SLACK_S * SECOND


def test_a_peer_that_closes_gives_connection_lost(raw_peer, open_chan):
    peer = raw_peer(lambda conn: None)                 # accept, then hang up
    chan = open_chan(peer.address)
    with pytest.raises(microrpc.ConnectionLost):
        recv_until(chan)
    assert chan.closed
    with pytest.raises(microrpc.ConnectionLost):
        chan.recv_frames(0, False)


def test_a_peer_that_closes_mid_frame_gives_connection_lost(raw_peer, open_chan):
    reply = _core.encode_frame(_core.RESPONSE, 1, b"", b"x" * 500, codec=_core.RAW)
    peer = raw_peer(lambda conn: conn.sendall(reply[:100]))
    chan = open_chan(peer.address)
    with pytest.raises(microrpc.ConnectionLost):
        recv_until(chan)
    assert chan.closed


def test_send_to_a_peer_that_closed_gives_connection_lost(raw_peer, open_chan):
    peer = raw_peer(lambda conn: None)
    chan = open_chan(peer.address)
    peer.thread.join(5)
    # Whether the first send fails or a later one does is up to the kernel; the failure
    # must be ConnectionLost, never a bare OSError or BrokenPipeError.
    deadline = now() + 5 * SECOND
    with pytest.raises(microrpc.ConnectionLost):
        while now() < deadline:
            out = _core.OutBuffer()
            out.append(_core.REQUEST, 1, b"echo", b"\x91\x01", codec=_core.MSGPACK)
            chan.send_from(out)
            chan.recv_frames(now() + 10_000_000)
    assert chan.closed


GARBAGE = {
    "http": b"HTTP/1.1 200 OK\r\n\r\n",
    "zeros": b"\x00" * 64,
    "bad version": b"\xb5R\x02" + b"\x00" * 29,
    "unknown kind": _core.encode_frame(_core.RESPONSE, 1)[:3] + b"\x09" + b"\x00" * 28,
    "unknown flags": _core.encode_frame(_core.RESPONSE, 1)[:4] + b"\x80" + b"\x00" * 27,
    "name on a response": (_core.encode_frame(_core.RESPONSE, 1)[:6] + b"\x03\x00"
                           + b"\x00" * 24 + b"abc"),
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_peer_that_sends_garbage_gives_protocol_error(raw_peer, open_chan, garbage):
    def script(conn):
        conn.sendall(garbage)
        read_all(conn)                                 # until the channel hangs up

    peer = raw_peer(script)
    chan = open_chan(peer.address)
    with pytest.raises(microrpc.ProtocolError):
        recv_until(chan)


def test_garbage_after_a_good_frame_still_delivers_nothing_bad(raw_peer, open_chan):
    good = _core.encode_frame(_core.RESPONSE, 1, b"", msgpack.packb(1), codec=_core.MSGPACK)

    def script(conn):
        conn.sendall(good + b"GARBAGE!" * 8)
        read_all(conn)

    peer = raw_peer(script)
    chan = open_chan(peer.address)
    # The good frame may come out first or be lost with the stream; garbage never does.
    deadline = now() + 5 * SECOND
    with pytest.raises(microrpc.ProtocolError):
        while now() < deadline:
            for f in chan.recv_frames(deadline):
                assert (f.kind, f.call_id) == (_core.RESPONSE, 1)


def test_the_channel_is_closed_after_a_protocol_error(raw_peer, open_chan):
    def script(conn):
        conn.sendall(b"\x00" * 64)
        read_all(conn)

    peer = raw_peer(script)
    chan = open_chan(peer.address)
    with pytest.raises(microrpc.ProtocolError):
        recv_until(chan)
    assert chan.closed


def test_a_frame_over_max_message_size_from_a_server_is_protocol_error(server, open_chan):
    chan = open_chan(server.address, max_message_size=1000)
    send_request(chan, 1, b"big", 10)
    [small] = recv_until(chan)
    assert small.call_id == 1
    send_request(chan, 2, b"big", 5000)               # the server's limit is 16 MiB
    with pytest.raises(microrpc.ProtocolError, match="max_message_size"):
        recv_until(chan)


def test_an_oversized_frame_is_refused_from_its_header_alone(raw_peer, open_chan):
    # A header announcing 1 GiB and no body: refused without waiting for (or buffering) it.
    header = _core.encode_frame(_core.RESPONSE, 1, b"", b"", codec=_core.RAW)
    header = header[:28] + (1 << 30).to_bytes(4, "little")

    def script(conn):
        conn.sendall(header)
        read_all(conn)

    peer = raw_peer(script)
    chan = open_chan(peer.address, max_message_size=1 << 20)
    t0 = now()
    with pytest.raises(microrpc.ProtocolError, match="max_message_size"):
        recv_until(chan)
    assert now() - t0 < SLACK_S * SECOND


# -- back-pressure ------------------------------------------------------------------------


def test_send_from_is_false_when_the_peer_never_reads(raw_peer, open_chan):
    start_reading = threading.Event()
    received = []

    def sluggard(conn):
        start_reading.wait(5)                          # read nothing until told
        received.append(read_all(conn))

    peer = raw_peer(sluggard)
    chan = open_chan(peer.address)
    out = _core.OutBuffer()
    chunk = b"z" * (1 << 20)
    for i in range(64):                                # 64 MiB: more than any socket buffer
        out.append(_core.REQUEST, i + 1, b"echo", chunk, codec=_core.RAW)
    total = len(out)
    assert chan.send_from(out) is False
    left = len(out)
    assert 0 < left < total
    assert chan.bytes_sent == total - left             # what went left the buffer
    # A second try also makes no progress and says so without blocking.
    t0 = now()
    assert chan.send_from(out) is False
    assert now() - t0 < SLACK_S * SECOND
    # wait_writable sleeps until the deadline when the peer never reads, then returns.
    deadline = now() + 50_000_000
    chan.wait_writable(deadline)
    t1 = now()
    assert t1 >= deadline - 5_000_000, "wait_writable returned long before its deadline"
    assert t1 - deadline < SLACK_S * SECOND, "wait_writable overslept its deadline"
    assert chan.bytes_sent == total - len(out)
    # Once the peer reads, wait_writable wakes and send_from drains the buffer.
    start_reading.set()
    deadline = now() + 10 * SECOND
    while not chan.send_from(out):
        assert now() < deadline, f"{len(out)} bytes still unsent after 10 s"
        chan.wait_writable(deadline)
    assert len(out) == 0 and chan.bytes_sent == total
    chan.close()                                       # lets the peer see EOF
    peer.close()
    assert received == [total]
