"""Connection authentication with a pre-shared key (``auth_key=``, microrpc/auth.py).

The raw-socket peers below are written from docs/wire.md's *Authentication* section alone
(struct, hmac and a socket; nothing of microrpc's handshake code), so they also check that
the document and the code agree.
"""
import asyncio
import hashlib
import hmac
import os
import socket
import struct
import threading
import time

import pytest

import microrpc
from microrpc import auth

from .conftest import poll_until

# docs/wire.md, Authentication: magic, version, kind; then nonces and proofs of 32 bytes.
AUTH_HEADER = struct.Struct("<2sBB")
AUTH_MAGIC = b"\xb5A"
CLIENT_HELLO, SERVER_HELLO, CLIENT_PROOF = 1, 2, 3
SERVER_LABEL = b"microrpc auth v1 server proof\x00"
CLIENT_LABEL = b"microrpc auth v1 client proof\x00"
# A frame (docs/wire.md): the handshake PING every client sends first.
FRAME_HEADER = struct.Struct("<2sBBBBHQIIII")
PING, PONG, ERROR = 6, 7, 3
PING_FRAME = FRAME_HEADER.pack(b"\xb5R", 1, PING, 0, 0, 0, 9, 0, 0, 0, 0)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def mac(key, label, nonce_c, nonce_s):
    return hmac.new(key, label + nonce_c + nonce_s, hashlib.sha256).digest()


def raw_connect(address):
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address.removeprefix("unix://"))
    else:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
    sock.settimeout(5.0)        # every read below ends within this bound
    return sock


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            break
        data += more
    return data


def closed_by_server(sock):
    """True when the server closes the connection (within the socket's 5 s bound), having
    sent nothing more."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


class WireAuthClient:
    """The client side of the handshake as docs/wire.md describes it."""

    def __init__(self, address, key, nonce=None):
        self.sock = raw_connect(address)
        self.key = key
        self.nonce_c = nonce or os.urandom(32)

    def hello(self):
        self.sock.sendall(AUTH_HEADER.pack(AUTH_MAGIC, 1, CLIENT_HELLO) + self.nonce_c)
        reply = recv_exact(self.sock, 68)
        magic, version, kind = AUTH_HEADER.unpack_from(reply)
        assert (magic, version, kind) == (AUTH_MAGIC, 1, SERVER_HELLO)
        self.nonce_s, self.server_proof = reply[4:36], reply[36:68]
        return reply

    def client_proof(self, key=None):
        return (AUTH_HEADER.pack(AUTH_MAGIC, 1, CLIENT_PROOF)
                + mac(key or self.key, CLIENT_LABEL, self.nonce_c, self.nonce_s))

    def ping(self):
        """Send a PING; the PONG frame's kind, or None if the server closed instead."""
        try:
            self.sock.sendall(PING_FRAME)
            reply = recv_exact(self.sock, 32)
        except (ConnectionResetError, BrokenPipeError):
            return None
        return FRAME_HEADER.unpack(reply)[2] if len(reply) == 32 else None


@pytest.fixture
def keyed(make_server):
    """A started server with KEY and a short handshake timeout."""
    return make_server(auth_key=KEY, auth_timeout=0.3)


def failures(server):
    return server.statistics().auth_failures


# -- the right key --------------------------------------------------------------------------

def test_the_right_key_works_sync_and_async(keyed):
    with microrpc.Client(keyed.address, auth_key=KEY, timeout=5) as c:
        assert c.call("echo", b"hi") == b"hi"
        assert c.call_async("add", 2, 3).result(5) == 5

    async def main():
        async with microrpc.AsyncClient(keyed.address, auth_key=KEY, timeout=5) as ac:
            return await asyncio.gather(*(ac.call("add", i, 1) for i in range(20)))

    assert asyncio.run(main()) == list(range(1, 21))
    assert failures(keyed) == 0


def test_a_client_written_from_the_doc_authenticates(keyed):
    w = WireAuthClient(keyed.address, KEY)
    w.hello()
    # The server proved the key over this client's nonce ...
    assert hmac.compare_digest(w.server_proof, mac(KEY, SERVER_LABEL, w.nonce_c, w.nonce_s))
    # ... and frames flow once the client's proof is in (sent in the same write here).
    w.sock.sendall(w.client_proof())
    assert w.ping() == PONG
    w.sock.close()


def test_stats_show_auth_failures_and_the_cli_reads_them_with_a_key_file(keyed, tmp_path):
    from click.testing import CliRunner

    from microrpc.cli import main

    sock = raw_connect(keyed.address)
    sock.sendall(b"garbage that is no handshake")
    assert closed_by_server(sock)
    sock.close()
    poll_until(lambda: failures(keyed) == 1, what="the failure counted")
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    out = CliRunner().invoke(main, ["stats", keyed.address, "--json", "--key-file",
                                    str(key_file)])
    assert out.exit_code == 0, out.output
    assert '"auth_failures": 1' in out.output
    # Without the key the CLI says why in one line; a bad key file is an argument error.
    out = CliRunner().invoke(main, ["stats", keyed.address])
    assert out.exit_code == 1 and "requires authentication" in out.output
    key_file.write_bytes(b"short")
    out = CliRunner().invoke(main, ["stats", keyed.address, "--key-file", str(key_file)])
    assert out.exit_code == 2 and "at least 16" in out.output
    out = CliRunner().invoke(main, ["stats", keyed.address, "--key-file",
                                    str(tmp_path / "missing")])
    assert out.exit_code == 2 and "cannot read the key file" in out.output


# -- wrong or missing keys: clear errors, fast ----------------------------------------------

def _fails_fast(make_client):
    t0 = time.monotonic()
    with pytest.raises(microrpc.AuthenticationError) as info:
        make_client()
    assert time.monotonic() - t0 < 1.0        # an answer, not a timeout
    return str(info.value)


def _fails_fast_async(address, **options):
    async def main():
        async with microrpc.AsyncClient(address, timeout=5, **options) as ac:
            await ac.call("echo", 1)
    return _fails_fast(lambda: asyncio.run(main()))


def test_a_wrong_key_is_refused_by_the_client(keyed):
    # The server cannot prove OTHER_KEY: the client stops before sending any frame.
    message = _fails_fast(lambda: microrpc.Client(keyed.address, auth_key=OTHER_KEY))
    assert "could not prove it holds the key" in message
    message = _fails_fast_async(keyed.address, auth_key=OTHER_KEY)
    assert "could not prove it holds the key" in message
    # The server saw both connections end without a proof.
    poll_until(lambda: failures(keyed) == 2, what="two failures counted")


def test_a_client_with_a_wrong_proof_is_refused_by_the_server(keyed):
    w = WireAuthClient(keyed.address, OTHER_KEY)
    w.hello()            # this client does not check the server's proof: it goes on
    w.sock.sendall(w.client_proof() + PING_FRAME)
    assert closed_by_server(w.sock)           # no PONG: the PING was never read
    w.sock.close()
    poll_until(lambda: failures(keyed) == 1, what="the failure counted")
    assert keyed.statistics().calls == 0


def test_a_keyless_client_to_a_keyed_server_fails_fast_and_says_why(keyed):
    message = _fails_fast(lambda: microrpc.Client(keyed.address))
    assert "requires authentication" in message
    assert "requires authentication" in _fails_fast_async(keyed.address)
    poll_until(lambda: failures(keyed) == 2, what="two failures counted")


def test_a_keyed_client_to_a_keyless_server_fails_fast_and_says_why(make_server):
    plain = make_server()
    message = _fails_fast(lambda: microrpc.Client(plain.address, auth_key=KEY))
    assert "does not use authentication" in message
    assert "does not use authentication" in _fails_fast_async(plain.address, auth_key=KEY)
    with microrpc.Client(plain.address) as c:       # it serves keyless clients as before
        assert c.call("echo", 1) == 1


def test_a_server_that_cannot_prove_the_key_gets_no_frame():
    """A fake server answers the hello with a proof made with another key: the client
    raises AuthenticationError and sends nothing more (no PING, no call)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5.0)
    received = []

    def fake_server():
        conn, _ = listener.accept()
        conn.settimeout(5.0)
        with conn:
            hello = recv_exact(conn, 36)
            nonce_s = os.urandom(32)
            conn.sendall(AUTH_HEADER.pack(AUTH_MAGIC, 1, SERVER_HELLO) + nonce_s
                         + mac(OTHER_KEY, SERVER_LABEL, hello[4:], nonce_s))
            received.append(hello)
            while more := conn.recv(4096):          # until the client closes
                received.append(more)

    thread = threading.Thread(target=fake_server)
    thread.start()
    try:
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        message = _fails_fast(lambda: microrpc.Client(address, auth_key=KEY))
        assert "could not prove it holds the key" in message
        thread.join(5.0)
        assert not thread.is_alive()
        assert len(received) == 1 and received[0][:4] == AUTH_HEADER.pack(AUTH_MAGIC, 1,
                                                                         CLIENT_HELLO)
    finally:
        listener.close()


# -- hostile peers: closed, and the server keeps serving ------------------------------------

@pytest.mark.parametrize("send", [
    pytest.param(b"\x00" * 64, id="garbage"),
    pytest.param(AUTH_HEADER.pack(AUTH_MAGIC, 9, CLIENT_HELLO) + b"n" * 32, id="version"),
    pytest.param(AUTH_HEADER.pack(AUTH_MAGIC, 1, CLIENT_PROOF) + b"p" * 32, id="kind"),
    pytest.param(AUTH_HEADER.pack(AUTH_MAGIC, 1, CLIENT_HELLO) + b"n" * 10, id="half-hello"),
    pytest.param(b"", id="nothing"),
])
def test_a_peer_that_does_not_authenticate_is_closed_and_others_are_served(keyed, send):
    sock = raw_connect(keyed.address)
    if send:
        sock.sendall(send)
    # While it hangs there (or is being closed) an honest client is served.
    with microrpc.Client(keyed.address, auth_key=KEY, timeout=5) as c:
        assert c.call("echo", 7) == 7
    t0 = time.monotonic()
    assert closed_by_server(sock)
    # Wrong bytes are refused at once; silence at the handshake timeout (0.3 s here).
    assert time.monotonic() - t0 < 2.0
    sock.close()
    poll_until(lambda: failures(keyed) == 1, what="the failure counted")
    with microrpc.Client(keyed.address, auth_key=KEY, timeout=5) as c:
        assert c.call("echo", 8) == 8


def test_too_many_bytes_before_the_servers_hello_are_refused(keyed):
    # The server reads only the message it waits for; what follows the hello is taken as
    # the proof, which it is not.
    w = WireAuthClient(keyed.address, KEY)
    w.sock.sendall(AUTH_HEADER.pack(AUTH_MAGIC, 1, CLIENT_HELLO) + w.nonce_c + b"x" * 4096)
    assert len(recv_exact(w.sock, 68)) == 68     # its hello (the nonce was fine)
    assert closed_by_server(w.sock)
    w.sock.close()
    poll_until(lambda: failures(keyed) == 1, what="the failure counted")


def test_a_frame_before_the_proof_is_refused(keyed):
    w = WireAuthClient(keyed.address, KEY)
    w.hello()
    assert w.ping() is None                      # the PING is no proof: closed, no PONG
    w.sock.close()


def test_a_proof_replayed_from_another_connection_fails(keyed):
    first = WireAuthClient(keyed.address, KEY)
    first.hello()
    proof = first.client_proof()
    first.sock.sendall(proof)
    assert first.ping() == PONG
    # An eavesdropper replays the whole client side (same nonce, same proof) on a new
    # connection: the server's nonce is new, so the old proof proves nothing.
    replay = WireAuthClient(keyed.address, KEY, nonce=first.nonce_c)
    replay.hello()
    assert replay.nonce_s != first.nonce_s
    replay.sock.sendall(proof)
    assert replay.ping() is None
    # The server's proof cannot be replayed as a client's either (domain separation).
    mirror = WireAuthClient(keyed.address, KEY)
    mirror.hello()
    mirror.sock.sendall(AUTH_HEADER.pack(AUTH_MAGIC, 1, CLIENT_PROOF) + mirror.server_proof)
    assert mirror.ping() is None
    for w in (first, replay, mirror):
        w.sock.close()
    poll_until(lambda: failures(keyed) == 2, what="two failures counted")


def test_unauthenticated_connections_count_toward_max_connections(make_server):
    server = make_server(auth_key=KEY, auth_timeout=0.3, max_connections=2)
    idle = [raw_connect(server.address) for _ in range(2)]
    extra = raw_connect(server.address)
    assert closed_by_server(extra)                # refused at once: two are open
    poll_until(lambda: server.statistics().connections_refused == 1, what="the refusal")
    for sock in idle:                             # closed at the handshake timeout
        assert closed_by_server(sock)
        sock.close()
    extra.close()
    poll_until(lambda: server.statistics().connections == 0, what="the slots freed")
    with microrpc.Client(server.address, auth_key=KEY, timeout=5) as c:
        assert c.call("echo", 1) == 1
    assert failures(server) == 2


# -- keys and the handshake objects --------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda key: microrpc.Server("tcp://127.0.0.1:0", auth_key=key),
    lambda key: microrpc.Client("tcp://127.0.0.1:1", auth_key=key),
    lambda key: microrpc.AsyncClient("tcp://127.0.0.1:1", auth_key=key),
], ids=["Server", "Client", "AsyncClient"])
def test_keys_must_be_bytes_of_at_least_16(make):
    with pytest.raises(TypeError, match="bytes, not str"):
        make("a password")
    with pytest.raises(ValueError, match="at least 16"):
        make(b"x" * 15)


def test_new_auth_key_is_32_fresh_random_bytes():
    a, b = microrpc.new_auth_key(), microrpc.new_auth_key()
    assert isinstance(a, bytes) and len(a) == 32 and a != b


def test_the_handshake_objects_agree_fed_whole_or_byte_by_byte():
    for step in (1000, 1):
        client, server = auth.ClientHandshake(KEY), auth.ServerHandshake(KEY)
        to_server = client.hello()
        to_client = b"".join(server.feed(to_server[i:i + step])
                             for i in range(0, len(to_server), step))
        proof = None
        for i in range(0, len(to_client), step):
            assert proof is None
            proof = client.feed(to_client[i:i + step])
        assert not server.done
        assert b"".join(server.feed(proof[i:i + step])
                        for i in range(0, len(proof), step)) == b""
        assert server.done and server.want() == 0


def test_the_server_side_refuses_more_than_it_asked_for():
    server = auth.ServerHandshake(KEY)
    with pytest.raises(microrpc.AuthenticationError):
        server.feed(auth.ClientHandshake(KEY).hello() + b"x")


def test_the_doc_shows_the_handshake_constants():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "wire.md").read_text()
    section = doc[doc.index("## Authentication"):doc.index("## Credits")]
    for label in (auth.SERVER_LABEL, auth.CLIENT_LABEL):
        assert f'b"{label[:-1].decode()}\\x00"' in section
    assert (SERVER_LABEL, CLIENT_LABEL) == (auth.SERVER_LABEL, auth.CLIENT_LABEL)
    for size in (auth.CLIENT_HELLO_SIZE, auth.SERVER_HELLO_SIZE, auth.CLIENT_PROOF_SIZE):
        assert f"{size} bytes" in section
    assert auth.MAGIC == AUTH_MAGIC and "magic 0xB5 'A'" in section


def test_the_server_assembles_a_handshake_sent_byte_by_byte(keyed):
    w = WireAuthClient(keyed.address, KEY)
    if keyed.address.startswith("tcp://"):
        w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = AUTH_HEADER.pack(AUTH_MAGIC, 1, CLIENT_HELLO) + w.nonce_c
    for i in range(len(hello)):
        w.sock.sendall(hello[i:i + 1])
    reply = recv_exact(w.sock, 68)
    w.nonce_s = reply[4:36]
    proof = w.client_proof()
    for i in range(len(proof)):
        w.sock.sendall(proof[i:i + 1])
    assert w.ping() == PONG
    w.sock.close()
    assert failures(keyed) == 0


# The server side waits for one message in each state; every other header is refused
# from the bytes that show it is wrong.
WRONG_HEADERS = {
    "hello": [b"\xb5R", b"XX", AUTH_MAGIC + b"\x02", AUTH_MAGIC + bytes([1, SERVER_HELLO]),
              AUTH_MAGIC + bytes([1, CLIENT_PROOF])],
    "proof": [b"\xb5R", b"XX", AUTH_MAGIC + b"\x02", AUTH_MAGIC + bytes([1, SERVER_HELLO]),
              AUTH_MAGIC + bytes([1, CLIENT_HELLO])],
}


@pytest.mark.parametrize("state,header", [(state, header) for state, headers
                                          in WRONG_HEADERS.items() for header in headers])
def test_every_wrong_header_is_refused_in_every_state(state, header):
    server = auth.ServerHandshake(KEY)
    if state == "proof":
        server.feed(auth.ClientHandshake(KEY).hello())
    with pytest.raises(microrpc.AuthenticationError):
        server.feed(header)
    # Only a client without a key (a frame first, in place of the hello) is told why.
    assert server.farewell == (auth.KEY_REQUIRED if (state, header) == ("hello", b"\xb5R")
                               else b"")


@pytest.mark.parametrize("content, expected", [
    (b"ab" * 32 + b"\n", bytes.fromhex("ab" * 32)),            # hex text, as token_hex writes
    (bytes(range(200, 232)), bytes(range(200, 232))),            # raw bytes, exactly
    (b"  " + b"0f" * 16 + b"  ", bytes.fromhex("0f" * 16)),      # whitespace around hex
])
def test_key_files_hold_hex_text_or_raw_bytes(tmp_path, content, expected):
    path = tmp_path / "k"
    path.write_bytes(content)
    assert microrpc.auth.read_key_file(str(path)) == expected


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"\n", "empty"),
                                              (b"abcd", "at least")])
def test_a_bad_key_file_says_why(tmp_path, content, message):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        microrpc.auth.read_key_file(str(path))


def test_a_server_reachable_from_other_machines_needs_a_key_or_insecure():
    with pytest.raises(ValueError, match="reachable from other machines"):
        microrpc.Server("tcp://0.0.0.0:0")
    with pytest.raises(ValueError, match="auth_key"):
        microrpc.Server("tcp://[::]:0")
    for options in ({"auth_key": microrpc.new_auth_key()}, {"insecure": True}):
        server = microrpc.Server("tcp://0.0.0.0:0", **options)
        server.stop()
    for address in ("tcp://127.0.0.2:0", "tcp://[::1]:0", "tcp://localhost:0"):
        microrpc.Server(address).stop()                       # loopback: no key needed


def test_a_refused_bind_leaves_the_port_free():
    import socket
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ValueError):
        microrpc.Server(f"tcp://0.0.0.0:{port}")
    microrpc.Server(f"tcp://0.0.0.0:{port}", insecure=True).stop()   # the port is free again
