"""Channels: what a client driver reads frames from and writes frames to.

A channel is one connection to a server, opened from an address by :func:`open_channel`.
Drivers (``Client``, ``AsyncClient``, the load generator) move bytes between a channel and
a protocol core and know nothing else of the transport, so a new transport (zmq, next) is
a new channel class and one more branch in :func:`open_channel`. Every transport passes
the same conformance suite (tests/microrpc/test_channel.py).

The interface (``microrpc._native.Channel`` implements it for ``tcp://`` and ``unix://``):

``send_from(out) -> bool``
    Send what the ``_core.OutBuffer`` ``out`` holds without blocking; the bytes sent leave
    ``out``. True when everything went, False when the transport is full (call
    ``wait_writable`` and try again). A failed connection raises ``ConnectionLost``.
``wait_writable(deadline_ns=0)``
    Sleep until ``send_from`` can make progress, or the monotonic deadline (0: a second).
``recv_frames(deadline_ns=0, wait=True) -> list[Frame]``
    The frames that are whole now. With ``wait``, waits (by the channel's poll mode) until
    at least one is, or until the deadline, then returns ``[]``; without, returns at once.
    Malformed bytes raise ``ProtocolError``, a closed connection ``ConnectionLost``; after
    either the channel is closed.
``fileno() -> int``
    A descriptor that polls readable when ``recv_frames(wait=False)`` may return frames
    (what an event loop watches).
``interrupt()``
    Make a ``recv_frames`` blocked in another thread return now, with what it has (a call
    it waited for was cancelled). The connection stays open.
``shutdown()``
    Wake a thread blocked in ``recv_frames`` (it then sees the connection end) without
    freeing the descriptor under it. ``close()`` frees it; both are idempotent.
``closed``, ``bytes_sent``, ``bytes_received``
    State and byte counts of this connection.
"""
from __future__ import annotations

from typing import Any

from microrpc import _native, transport

__all__ = ["open_channel", "check_poll", "POLL_MODES"]

POLL_MODES = tuple(_native.POLL_MODES)


def check_poll(poll: str) -> None:
    if poll not in _native.POLL_MODES:
        raise ValueError(f"poll must be one of {sorted(_native.POLL_MODES)}, not {poll!r}")


def open_channel(address: str, *, connect_timeout: float | None = 5.0,
                 max_message_size: int, poll: str = "block", spin_us: float = 50.0,
                 auth_key: bytes | None = None) -> Any:
    """Connect to ``address`` and return its channel (blocking; failure: ConnectionLost,
    or AuthenticationError when the ``auth_key`` handshake fails)."""
    check_poll(poll)
    sock = transport.connect(address, connect_timeout, auth_key)
    return _native.Channel(sock.detach(), max_message_size, poll, spin_us)


def wrap_socket(sock: Any, *, max_message_size: int, poll: str = "block",
                spin_us: float = 50.0) -> Any:
    """The channel of a socket connected elsewhere (an event loop's ``sock_connect``)."""
    check_poll(poll)
    return _native.Channel(sock.detach(), max_message_size, poll, spin_us)
