"""A client written from docs/wire.md alone (struct and a plain socket, nothing of microrpc's
frame code) interoperates with the server, credits included."""
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
