"""Body codecs: their names and wire ids (the encoding itself is the protocol cores' job:
``microrpc/_clientcore.pyx`` for requests and replies at the client, ``_dispatch.pyx`` at
the server).

``msgpack`` (the default) carries data only: None, bool, int, float, str, bytes, lists and
dicts. It can never run code on decode, so it is safe on untrusted networks.
``raw`` passes one ``bytes`` argument and a ``bytes`` result through untouched: the fastest
path, for callers that do their own encoding.
``pickle`` carries arbitrary Python objects, and unpickling runs arbitrary code chosen by the
sender. It is only used when both the client and the server name it explicitly; never enable
it on a network you do not fully trust.
"""
from __future__ import annotations

from microrpc import _core
# Limits on msgpack bodies from a peer: one compiled decoder for both ends (_decode.pyx).
from microrpc._decode import DEFAULT_DECODE_LIMITS, DecodeLimits
# Error codes carried in ERROR frames: declared once, in _core.pxd (table in docs/wire.md).
from microrpc._core import (
    BAD_REQUEST,
    DEADLINE_EXCEEDED,
    IN_PROGRESS,
    LEASE_EXPIRED,
    LOST,
    MESSAGE_TOO_LARGE,
    METHOD_NOT_FOUND,
    OVERLOADED,
    REMOTE_ERROR,
    RETRY_ELSEWHERE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    WRONG_TARGET,
)

__all__ = [
    "CODECS", "codec_id", "DecodeLimits", "DEFAULT_DECODE_LIMITS",
    "REMOTE_ERROR", "METHOD_NOT_FOUND", "DEADLINE_EXCEEDED", "MESSAGE_TOO_LARGE", "OVERLOADED",
    "BAD_REQUEST", "UNAVAILABLE", "WRONG_TARGET", "RETRY_ELSEWHERE", "LOST", "IN_PROGRESS",
    "LEASE_EXPIRED", "UNAUTHENTICATED",
]

CODECS = {"raw": _core.RAW, "msgpack": _core.MSGPACK, "pickle": _core.PICKLE}


def codec_id(name: str) -> int:
    """The wire id of a codec name; a clear error for anything else."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r}: choose one of {sorted(CODECS)}") from None
