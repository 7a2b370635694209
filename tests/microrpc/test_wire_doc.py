"""A client written from docs/wire.md alone (struct and a plain socket, nothing of microrpc's
frame code) interoperates with the server, credits included."""
import pickle
import socket
import struct

import msgpack
import pytest

import breakwater
import microrpc

# docs/wire.md: magic, version, kind, flags, codec, name_len, call_id, session,
# deadline_us, credit, body_len; little-endian, 32 bytes.
HEADER = struct.Struct("<2sBBBBHQIIII")
REQUEST, RESPONSE, ERROR, CREDIT, CANCEL, PING, PONG = range(1, 8)
HAS_CREDIT = 1
KWARGS = 2
RAW, MSGPACK, PICKLE = 0, 1, 2


def frame(kind, call_id=0, name=b"", body=b"", *, flags=0, codec=0, session=0,
          deadline_us=0, credit=0):
    return HEADER.pack(b"\xb5R", 1, kind, flags, codec, len(name), call_id, session,
                       deadline_us, credit, len(body)) + name + body


class WireClient:
    def __init__(self, address):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def read(self):
        """One frame as a dict, or None if the server closed the connection."""
        while len(self.buf) < HEADER.size:
            more = self.sock.recv(65536)
            if not more:
                return None
            self.buf += more
        (magic, version, kind, flags, codec, name_len, call_id, session, deadline_us, credit,
         body_len) = HEADER.unpack_from(self.buf)
        assert magic == b"\xb5R" and version == 1
        total = HEADER.size + name_len + body_len
        while len(self.buf) < total:
            self.buf += self.sock.recv(65536)
        body = self.buf[HEADER.size + name_len:total]
        self.buf = self.buf[total:]
        return dict(kind=kind, flags=flags, codec=codec, call_id=call_id, session=session,
                    credit=credit, body=body)



@pytest.fixture
def bw_server():
    server = microrpc.Server("tcp://127.0.0.1:0", overload=breakwater.Breakwater())
    server.register("echo", lambda x: x)
    server.start()
    yield server
    server.stop(grace=0.5)


def test_handshake_credits_calls_and_cancel_as_documented(bw_server):
    c = WireClient(bw_server.address)
    c.send(frame(PING, 77, session=5))
    pong = c.read()
    # The PONG echoes call id and session, and says this server hands out credits.
    assert (pong["kind"], pong["call_id"], pong["session"]) == (PONG, 77, 5)
    assert pong["flags"] & HAS_CREDIT and pong["credit"] >= 1
    window = pong["credit"]
    # Send as many requests as the window allows, each with its demand (none queued here).
    n = min(window, 4)
    for i in range(n):
        c.send(frame(REQUEST, (5 << 32) | (i + 1), b"echo", msgpack.packb([i]), codec=MSGPACK,
                     session=5, deadline_us=1_000_000, credit=0))
    replies = [c.read() for _ in range(n)]
    assert sorted(msgpack.unpackb(r["body"]) for r in replies) == list(range(n))
    for r in replies:
        assert r["kind"] == RESPONSE and r["codec"] == MSGPACK and r["session"] == 5
        assert r["flags"] & HAS_CREDIT            # every reply carries the session's window
    # A CANCEL that names no call in flight gets no reply; a PING still does.
    c.send(frame(CANCEL, 999, session=5))
    c.send(frame(PING, 1, session=5))
    assert c.read()["kind"] == PONG


def test_a_server_without_credits_says_so_in_its_pong():
    with microrpc.Server("tcp://127.0.0.1:0") as server:
        server.register("echo", lambda x: x)
        c = WireClient(server.address)
        c.send(frame(PING, 1))
        pong = c.read()
        assert pong["kind"] == PONG and not pong["flags"] & HAS_CREDIT


def test_refused_and_unknown_codecs_as_documented(bw_server):
    c = WireClient(bw_server.address)
    c.send(frame(PING, 1))
    c.read()
    # Pickle is a known codec this server refuses: ERROR BAD_REQUEST (6), in msgpack.
    c.send(frame(REQUEST, 2, b"echo", b"\x80\x05N.", codec=PICKLE))
    err = c.read()
    assert err["kind"] == ERROR and err["codec"] == MSGPACK
    assert msgpack.unpackb(err["body"])[0] == 6
    # Codec 9 is no codec at all: a malformed frame, and the connection is closed.
    c.send(frame(REQUEST, 3, b"echo", b"", codec=9))
    assert c.read() is None


def test_a_frame_only_servers_send_closes_the_connection(bw_server):
    c = WireClient(bw_server.address)
    c.send(frame(RESPONSE, 1, body=b"x"))
    assert c.read() is None


def _kw(a, b=0, *, c=0):
    return [a, b, c]


@pytest.mark.parametrize("codec, body, code", [
    (MSGPACK, msgpack.packb([[1], {"c": 3}]), None),
    (MSGPACK, msgpack.packb([[], {"a": 1, "b": 2}]), None),
    (MSGPACK, msgpack.packb([[1], {}]), None),                 # the flag with no keyword
    (MSGPACK, msgpack.packb([[1], {"d": 4}]), 1),              # the handler's TypeError
    (MSGPACK, msgpack.packb([[1], {b"c": 3}]), 6),             # a keyword name not a str
    (MSGPACK, msgpack.packb([[1], {1: 3}], strict_types=False), 6),
    (MSGPACK, msgpack.packb([[1], [3]]), 6),                   # kwargs not a map
    (MSGPACK, msgpack.packb([{"c": 3}, [1]]), 6),              # args not an array
    (MSGPACK, msgpack.packb([[1], {"c": 3}, None]), 6),        # not 2 items
    (MSGPACK, msgpack.packb([1]), 6),
    (MSGPACK, msgpack.packb([[[[[1]]]], {"c": 3}]), 6),        # over the decode limits
    (PICKLE, pickle.dumps(((1,), {"c": 3})), None),
    (PICKLE, pickle.dumps(((1,), {2: 3})), 6),
    (PICKLE, pickle.dumps(([1], {"c": 3})), 6),                # args not a tuple
    (RAW, b"x", 6),                                            # raw has no keywords
])
def test_keyword_arguments_as_documented(codec, body, code):
    limits = microrpc.DecodeLimits(max_depth=3)
    with microrpc.Server("tcp://127.0.0.1:0", codec=("msgpack", "pickle"),
                         decode_limits=limits) as server:
        server.register("kw", _kw)
        server.register("raw", lambda body: body)
        c = WireClient(server.address)
        c.send(frame(PING, 1))
        c.read()
        c.send(frame(REQUEST, 2, b"raw" if codec == RAW else b"kw", body, codec=codec,
                     flags=KWARGS))
        reply = c.read()
        if code is None:
            assert reply["kind"] == RESPONSE and reply["codec"] == codec
            result = (msgpack.unpackb(reply["body"]) if codec == MSGPACK
                      else pickle.loads(reply["body"]))
            args, kwargs = (msgpack.unpackb(body) if codec == MSGPACK else pickle.loads(body))
            assert list(result) == _kw(*args, **kwargs)
        else:
            assert reply["kind"] == ERROR
            assert msgpack.unpackb(reply["body"])[0] == code
        # Whatever the body, the connection stays open: a request without keywords works.
        c.send(frame(REQUEST, 3, b"kw", msgpack.packb([9]), codec=MSGPACK))
        assert msgpack.unpackb(c.read()["body"]) == [9, 0, 0]


def test_the_kwargs_flag_on_a_frame_other_than_a_request_closes_the_connection(bw_server):
    c = WireClient(bw_server.address)
    c.send(frame(PING, 1, flags=KWARGS))
    assert c.read() is None
