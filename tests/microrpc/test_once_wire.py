"""Exactly-once calls on the wire: the ONCE flag's 24-byte id, and a live server's lease
methods and completion records (the core's rules: tests/microrpc/test_server_core.py)."""
import msgpack
import pytest

import microrpc
from microrpc import ProtocolError, _core, transport


def once_frame(call_id, name, *args, lease=1, seq=1, ack=0, codec=_core.MSGPACK):
    return _core.encode_frame(_core.REQUEST, call_id, name, msgpack.packb(list(args)),
                              codec=codec, flags=_core.ONCE, lease=lease, seq=seq, ack=ack)


# -- the frame ---------------------------------------------------------------------------


# Small bodies, and one read in place; byte by byte only through the small ones.
SPLITS = [(body, chunk) for body in (b"", b"x" * 100, b"y" * 300_000)
          for chunk in (1, 7, 4096, 1 << 30) if chunk > 1 or len(body) < 1000]


@pytest.mark.parametrize("body, chunk", SPLITS)
def test_the_once_id_travels_before_the_body_in_any_split(body, chunk):
    data = (_core.encode_frame(_core.PING, 9)
            + _core.encode_frame(_core.REQUEST, 5, b"m", body, flags=_core.ONCE,
                                 lease=2**64 - 1, seq=7, ack=6)
            + _core.encode_frame(_core.PING, 10))
    assert len(data) == 3 * 32 + 1 + _core.ONCE_ID + len(body)
    parser = _core.FrameParser()
    frames = []
    for i in range(0, len(data), chunk):
        parser.feed(data[i:i + chunk])
        frames.extend(parser.frames())
    assert [f.call_id for f in frames] == [9, 5, 10]
    f = frames[1]
    assert (f.lease, f.seq, f.ack, f.body, f.name) == (2**64 - 1, 7, 6, body, b"m")
    assert (frames[0].lease, frames[0].seq) == (0, 0)        # no id without the flag


def test_a_once_flag_off_a_request_or_without_room_for_the_id_is_a_protocol_error():
    with pytest.raises(ValueError, match="exactly-once"):
        _core.encode_frame(_core.PING, 1, flags=_core.ONCE)
    bad = bytearray(_core.encode_frame(_core.PING, 1))
    bad[4] = _core.ONCE                                       # flags byte
    parser = _core.FrameParser()
    parser.feed(bytes(bad))
    with pytest.raises(ProtocolError, match="ONCE flag on a frame of kind"):
        parser.next()
    short = bytearray(_core.encode_frame(_core.REQUEST, 1, b"m", b"x" * 10))
    short[4] = _core.ONCE
    parser = _core.FrameParser()
    parser.feed(bytes(short))
    with pytest.raises(ProtocolError, match="shorter than its 24-byte"):
        parser.next()


# -- a live server -----------------------------------------------------------------------


def send_copies(address, request, copies):
    """Send ``request`` ``copies`` times on one raw connection; the replies' values."""
    sock = transport.connect(address, 5)
    sock.setblocking(True)
    sock.settimeout(5)
    try:
        sock.sendall(request * copies)
        parser = _core.FrameParser()
        replies = []
        while len(replies) < copies:
            parser.feed(sock.recv(65536))
            replies.extend(parser.frames())
    finally:
        sock.close()
    return [msgpack.unpackb(f.body) for f in replies]


def test_a_live_server_grants_leases_and_runs_a_retried_call_once():
    server = microrpc.Server("tcp://127.0.0.1:0", lease_ttl=30.0)
    ran = []
    server.register("incr", lambda by: ran.append(by) or sum(ran), idempotent=False)
    with server:
        with microrpc.Client(server.address, timeout=5) as c:
            lease, ttl = c.call("_microrpc.lease")
            assert lease >= 1 and ttl == 30.0
            assert c.call("_microrpc.renew", lease) is True
        request = once_frame(1, b"incr", 10, lease=lease, seq=1, ack=0)
        assert send_copies(server.address, request, 2) == [10, 10]   # the same call twice
    assert ran == [10]


def test_a_service_class_marks_a_method_not_idempotent():
    class Bank:
        def __init__(self):
            self.total = 0

        @microrpc.expose(idempotent=False)
        def deposit(self, amount):
            self.total += amount
            return self.total

        @microrpc.expose
        def balance(self):
            return self.total

    bank = Bank()
    server = microrpc.Server("tcp://127.0.0.1:0")
    assert server.register_object(bank, prefix="bank.") == ["bank.balance", "bank.deposit"]
    with server:
        with microrpc.Client(server.address, timeout=5) as c:
            lease, _ = c.call("_microrpc.lease")
        request = once_frame(1, b"bank.deposit", 7, lease=lease, seq=1, ack=0)
        assert send_copies(server.address, request, 3) == [7, 7, 7]
    assert bank.total == 7


def test_a_large_once_body_arriving_counts_its_id_as_buffered():
    data = _core.encode_frame(_core.REQUEST, 1, b"m", b"z" * 200_000, flags=_core.ONCE,
                              lease=1, seq=1, ack=0)
    parser = _core.FrameParser()
    parser.feed(data[:1000])
    assert parser.next() is None and parser.buffered() == 1000
    parser.feed(data[1000:])
    assert parser.next().body == b"z" * 200_000 and parser.buffered() == 0
