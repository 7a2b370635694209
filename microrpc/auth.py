"""Connection authentication with a pre-shared key: the handshake of the native transport.

``Server(addr, auth_key=key)``, ``Client(addr, auth_key=key)`` and
``AsyncClient(addr, auth_key=key)``: before any frame, each side of a connection proves
that it holds the key, with an HMAC-SHA256 challenge/response over fresh random nonces
from both sides (mutual). Without a key nothing of this runs and the bytes on the wire
are those of docs/wire.md. It authenticates, it does not encrypt: see docs/wire.md,
*Authentication*, for the layout and what it does and does not protect against.

Everything about the handshake is here, once: the constants, the message layout, the
proofs, and the two sides as sans-I/O state machines (:class:`ClientHandshake`,
:class:`ServerHandshake`) that take bytes and return bytes. The server's epoll thread
feeds a :class:`ServerHandshake` (microrpc/_native.pyx) without ever blocking; the clients
run theirs on the new socket before it is handed to the channel (:func:`authenticate`,
:func:`authenticate_async`), within the connect timeout.

::

    client                                              server
      | CLIENT_HELLO  magic version 1 | nonce_c (32)      |
      |-------------------------------------------------->|
      |      SERVER_HELLO  magic version 2 | nonce_s (32) |
      |                | HMAC(key, SERVER_LABEL nc ns) (32)|
      |<--------------------------------------------------|
      | (client checks the server's proof: else it closes)|
      | CLIENT_PROOF  magic version 3 | HMAC(key, CLIENT_LABEL nc ns) (32)
      |-------------------------------------------------->|
      | then frames (PING first), as in docs/wire.md      | (server checks the proof
      |                                                   |  before reading a frame)
"""
from __future__ import annotations

import asyncio
import hmac
import secrets
import socket
import struct
import time
from typing import Any

import msgpack

from microrpc import _core
from microrpc.errors import AuthenticationError, ConnectionLost, RpcError

__all__ = ["new_auth_key", "check_key", "read_key_file", "ClientHandshake", "ServerHandshake",
           "authenticate", "authenticate_async", "is_hello", "MIN_KEY_SIZE",
           "DEFAULT_AUTH_TIMEOUT", "MAX_MESSAGE"]

# 0xB5 like a frame's magic, then 'A' (a frame has 'R'): a frame parser refuses a hello at
# its second byte, and a handshake refuses a frame there, so a peer without a key and a
# peer with one find out from the first bytes either sends, never by waiting.
MAGIC = b"\xb5A"
VERSION = 1
# kinds
CLIENT_HELLO = 1
SERVER_HELLO = 2
CLIENT_PROOF = 3
HEADER = struct.Struct("<2sBB")          # magic, version, kind
NONCE_SIZE = 32
PROOF_SIZE = 32                          # HMAC-SHA256
CLIENT_HELLO_SIZE = HEADER.size + NONCE_SIZE                  # 36
SERVER_HELLO_SIZE = HEADER.size + NONCE_SIZE + PROOF_SIZE     # 68
CLIENT_PROOF_SIZE = HEADER.size + PROOF_SIZE                  # 36
#: The largest handshake message: what a connection that is still authenticating may make
#: the server buffer (the server reads no more than the message it waits for).
MAX_MESSAGE = max(CLIENT_HELLO_SIZE, SERVER_HELLO_SIZE, CLIENT_PROOF_SIZE)
# Domain separation: a proof names the side that made it, so a server's proof (which any
# client can ask for, with a nonce of its choosing) is never a valid client proof, and
# the reverse. The version is in the label: a proof of one version proves nothing in another.
SERVER_LABEL = b"microrpc auth v1 server proof\x00"
CLIENT_LABEL = b"microrpc auth v1 client proof\x00"
#: Shorter keys are refused: 16 random bytes (128 bits) cannot be guessed offline from a
#: recorded handshake; a password typed by a person can.
MIN_KEY_SIZE = 16
#: Seconds a server lets a new connection take to authenticate before closing it.
DEFAULT_AUTH_TIMEOUT = 2.0

_FRAME_MAGIC = b"\xb5R"


def new_auth_key() -> bytes:
    """A new random key (32 bytes) for ``auth_key=``. Keep it in a file only its owner
    can read (``microrpc stats --key-file`` reads such a file, raw bytes)."""
    return secrets.token_bytes(32)


def check_key(key: Any) -> bytes | None:
    """``key`` as bytes (None: no authentication), or a clear error for a bad one."""
    if key is None:
        return None
    if isinstance(key, str):
        raise TypeError("auth_key must be bytes, not str: pass the key's bytes (for example "
                        "read from a key file with open(path, 'rb').read(), or made by "
                        "microrpc.new_auth_key())")
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"auth_key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) < MIN_KEY_SIZE:
        raise ValueError(f"auth_key is {len(key)} bytes; at least {MIN_KEY_SIZE} random bytes "
                         f"are needed (microrpc.new_auth_key() makes 32)")
    return key


def read_key_file(path: str) -> bytes:
    """The key in the file at ``path``, checked: the one rule for key files, used by every
    command that takes ``--key-file``. The file holds the key as hex text (what
    ``python -c 'import secrets; print(secrets.token_hex(32))'`` writes; surrounding
    whitespace is ignored), or else as raw bytes, taken exactly. OSError if it cannot be
    read; ValueError for an empty or too short key."""
    with open(path, "rb") as f:
        data = f.read()
    text = data.strip()
    try:
        key = bytes.fromhex(text.decode("ascii")) if text else b""
    except (UnicodeDecodeError, ValueError):
        key = data                        # not hex text: the raw bytes, as they are
    if not key:
        raise ValueError(f"the key file {path} is empty")
    return check_key(key)


def _proof(key: bytes, label: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
    # Label and nonces have fixed sizes, so the concatenation is unambiguous.
    return hmac.digest(key, label + nonce_c + nonce_s, "sha256")


def is_hello(data: bytes) -> bool:
    """Whether ``data`` (a connection's first bytes) starts like a handshake message: how
    a server without a key recognises a client that has one."""
    return data[:2] == MAGIC


def _check_header(buf: bytearray, kind: int, who: str) -> None:
    """Refuse a message from its first bytes that show it is wrong (the rest may never
    come). ``who``: the peer, for the messages."""
    head = bytes(buf[:2])
    if head != MAGIC[:len(head)]:
        if head == _FRAME_MAGIC:
            raise AuthenticationError(f"{who} does not use authentication: it sent microrpc "
                                      f"frames where the handshake was expected")
        raise AuthenticationError(f"{who} sent {head!r}, not a microrpc authentication "
                                  f"handshake")
    if len(buf) > 2 and buf[2] != VERSION:
        raise AuthenticationError(f"{who} speaks handshake version {buf[2]}; this side "
                                  f"speaks {VERSION}")
    if len(buf) > 3 and buf[3] != kind:
        raise AuthenticationError(f"{who} sent handshake message kind {buf[3]} where "
                                  f"{kind} was expected")


class ClientHandshake:
    """The client's side, sans I/O: send :meth:`hello`, feed the server's bytes to
    :meth:`feed` until it returns the client's proof, send that; then frames may follow.
    Any failure raises :class:`AuthenticationError`."""

    def __init__(self, key: bytes, who: str = "the server"):
        self._key = check_key(key)
        self._who = who
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._buf = bytearray()

    def hello(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, CLIENT_HELLO) + self._nonce

    def want(self) -> int:
        """Bytes still missing from the server's hello."""
        return SERVER_HELLO_SIZE - len(self._buf)

    def feed(self, data: bytes) -> bytes | None:
        """Take bytes from the server (no more than :meth:`want`); the client's proof once
        the server's hello is whole and its proof is right, None while more is needed."""
        if len(data) > self.want():
            raise AuthenticationError(f"{self._who} sent more than its handshake")
        self._buf += data
        _check_header(self._buf, SERVER_HELLO, self._who)
        if self.want():
            return None
        nonce_s = bytes(self._buf[HEADER.size:HEADER.size + NONCE_SIZE])
        proof = bytes(self._buf[HEADER.size + NONCE_SIZE:])
        expected = _proof(self._key, SERVER_LABEL, self._nonce, nonce_s)
        if not hmac.compare_digest(proof, expected):
            raise AuthenticationError(f"authentication failed: {self._who} could not prove "
                                      f"it holds the key (the keys differ)")
        return (HEADER.pack(MAGIC, VERSION, CLIENT_PROOF)
                + _proof(self._key, CLIENT_LABEL, self._nonce, nonce_s))

    def closed(self) -> AuthenticationError:
        """The error for a server that closed the connection in the middle."""
        if not self._buf:
            return AuthenticationError(
                f"authentication failed: {self._who} closed the connection without answering "
                f"the handshake (it may have no auth_key, or be at max_connections)")
        return AuthenticationError(f"authentication failed: {self._who} closed the "
                                   f"connection in the middle of the handshake")


# What a server with a key answers a client that sent a frame first (a client without a
# key), and a server without one answers a handshake: an ERROR frame the client maps to
# AuthenticationError (error code UNAUTHENTICATED), then the server closes.
def _refusal(message: str) -> bytes:
    body = msgpack.packb([_core.UNAUTHENTICATED, "AuthenticationError", message, None])
    return _core.encode_frame(_core.ERROR, 0, body=body, codec=_core.MSGPACK)


KEY_REQUIRED = _refusal("this server requires authentication: connect with its auth_key")
NO_AUTH_HERE = _refusal("this server does not use authentication: connect without auth_key")

_HELLO, _PROOF, _DONE = 0, 1, 2


class ServerHandshake:
    """The server's side of one connection, sans I/O. The driver reads at most
    :meth:`want` bytes at a time and passes them to :meth:`feed`, sends what it returns,
    and lets frames through once :attr:`done`. A failure raises
    :class:`AuthenticationError`; the driver then sends :attr:`farewell` (maybe empty)
    and closes the connection."""

    __slots__ = ("_key", "_buf", "_state", "_nonce_c", "_nonce_s", "done", "farewell")

    def __init__(self, key: bytes):
        self._key = key
        self._buf = bytearray()
        self._state = _HELLO
        self._nonce_c = self._nonce_s = b""
        self.done = False
        self.farewell = b""

    def want(self) -> int:
        """Bytes still missing from the message the server waits for (0 when done)."""
        if self._state == _HELLO:
            return CLIENT_HELLO_SIZE - len(self._buf)
        if self._state == _PROOF:
            return CLIENT_PROOF_SIZE - len(self._buf)
        return 0

    def feed(self, data: bytes) -> bytes:
        """Take the client's bytes (no more than :meth:`want`); returns what to send."""
        if len(data) > self.want():
            raise AuthenticationError("more bytes than the handshake message")
        self._buf += data
        kind = CLIENT_HELLO if self._state == _HELLO else CLIENT_PROOF
        try:
            _check_header(self._buf, kind, "the client")
        except AuthenticationError:
            if self._state == _HELLO and self._buf[:2] == _FRAME_MAGIC:
                self.farewell = KEY_REQUIRED
            raise
        if self.want():
            return b""
        body = bytes(self._buf[HEADER.size:])
        self._buf.clear()
        if self._state == _HELLO:
            self._nonce_c = body
            self._nonce_s = secrets.token_bytes(NONCE_SIZE)
            self._state = _PROOF
            return (HEADER.pack(MAGIC, VERSION, SERVER_HELLO) + self._nonce_s
                    + _proof(self._key, SERVER_LABEL, self._nonce_c, self._nonce_s))
        expected = _proof(self._key, CLIENT_LABEL, self._nonce_c, self._nonce_s)
        if not hmac.compare_digest(body, expected):
            raise AuthenticationError("the client's proof is wrong")
        self._state = _DONE
        self.done = True
        return b""


# -- the clients' I/O: on a connected socket, before it becomes a channel --------------------

def authenticate(sock: socket.socket, key: bytes, timeout: float | None,
                 address: str) -> None:
    """Run the client's handshake on the connected socket ``sock`` (blocking, within
    ``timeout`` seconds in all; None: 30). Raises AuthenticationError, or ConnectionLost
    when the server does not answer in time or the connection fails."""
    hs = ClientHandshake(key, f"the server at {address}")
    deadline = time.monotonic() + (30.0 if timeout is None else timeout)

    def left() -> float:
        t = deadline - time.monotonic()
        if t <= 0:
            raise socket.timeout()
        return t

    try:
        sock.settimeout(left())
        sock.sendall(hs.hello())
        proof = None
        while proof is None:
            sock.settimeout(left())
            data = sock.recv(hs.want())
            if not data:
                raise hs.closed()
            proof = hs.feed(data)
        sock.settimeout(left())
        sock.sendall(proof)
    except OSError as exc:        # (socket.timeout is one)
        raise _handshake_failed(exc, address, timeout) from None


async def authenticate_async(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                             key: bytes, timeout: float | None, address: str) -> None:
    """:func:`authenticate` on an event loop (``sock`` non-blocking, as for sock_connect)."""
    hs = ClientHandshake(key, f"the server at {address}")

    async def run() -> None:
        await loop.sock_sendall(sock, hs.hello())
        proof = None
        while proof is None:
            data = await loop.sock_recv(sock, hs.want())
            if not data:
                raise hs.closed()
            proof = hs.feed(data)
        await loop.sock_sendall(sock, proof)

    try:
        await asyncio.wait_for(run(), 30.0 if timeout is None else timeout)
    except (asyncio.TimeoutError, OSError) as exc:
        raise _handshake_failed(exc, address, timeout) from None


def _handshake_failed(exc: BaseException, address: str, timeout: float | None) -> RpcError:
    """The error a client's handshake ends with when the socket times out or fails."""
    if isinstance(exc, (socket.timeout, asyncio.TimeoutError)):
        return ConnectionLost(f"no authentication answer from {address} within {timeout} s")
    return ConnectionLost(f"authentication with {address} failed: "
                          f"{getattr(exc, 'strerror', None) or exc}")
