"""Body codecs: how call arguments and results become bytes.

``msgpack`` (the default) carries data only: None, bool, int, float, str, bytes, lists and
dicts. It can never run code on decode, so it is safe on untrusted networks.
``raw`` passes one ``bytes`` argument and a ``bytes`` result through untouched: the fastest
path, for callers that do their own encoding.
``pickle`` carries arbitrary Python objects, and unpickling runs arbitrary code chosen by the
sender. It is only used when both the client and the server name it explicitly; never enable
it on a network you do not fully trust.
"""
from __future__ import annotations

import pickle
from typing import Any

import msgpack

from microrpc import _core
# Error codes carried in ERROR frames: declared once, in _core.pxd (table in docs/wire.md).
from microrpc._core import (
    BAD_REQUEST,
    DEADLINE_EXCEEDED,
    LOST,
    MESSAGE_TOO_LARGE,
    METHOD_NOT_FOUND,
    OVERLOADED,
    REMOTE_ERROR,
    RETRY_ELSEWHERE,
    UNAVAILABLE,
    WRONG_TARGET,
)
from microrpc.errors import ProtocolError

__all__ = [
    "CODECS", "codec_id", "encode_args", "decode_result", "encode_error", "decode_error",
    "REMOTE_ERROR", "METHOD_NOT_FOUND", "DEADLINE_EXCEEDED", "MESSAGE_TOO_LARGE", "OVERLOADED",
    "BAD_REQUEST", "UNAVAILABLE", "WRONG_TARGET", "RETRY_ELSEWHERE", "LOST",
]

CODECS = {"raw": _core.RAW, "msgpack": _core.MSGPACK, "pickle": _core.PICKLE}
_NAMES = {v: k for k, v in CODECS.items()}

def codec_id(name: str) -> int:
    """The wire id of a codec name; a clear error for anything else."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r}: choose one of {sorted(CODECS)}") from None


def codec_name(cid: int) -> str:
    return _NAMES.get(cid, f"codec {cid}")


def encode_args(codec: int, args: tuple) -> bytes:
    """The request body for ``args`` in ``codec``."""
    if codec == _core.MSGPACK:
        try:
            return msgpack.packb(args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"argument cannot be sent with the msgpack codec: {exc}") from None
    if codec == _core.RAW:
        if len(args) != 1 or not isinstance(args[0], (bytes, bytearray, memoryview)):
            raise TypeError("the raw codec takes exactly one bytes-like argument")
        return bytes(args[0])
    return pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)


def decode_result(codec: int, body: bytes) -> Any:
    """The result carried by a RESPONSE body. Undecodable bytes raise ProtocolError."""
    if codec == _core.RAW:
        return body
    try:
        if codec == _core.MSGPACK:
            return msgpack.unpackb(body)
        return pickle.loads(body)
    except Exception as exc:  # any failure to decode untrusted bytes is a protocol error
        raise ProtocolError(f"undecodable {codec_name(codec)} response body: {exc}") from None


def encode_error(code: int, type_name: str, message: str, traceback_text: str | None) -> bytes:
    return msgpack.packb([code, type_name, message, traceback_text])


def decode_error(body: bytes) -> tuple[int, str, str, str | None]:
    try:
        code, type_name, message, tb = msgpack.unpackb(body)
        if not (isinstance(code, int) and isinstance(type_name, str) and isinstance(message, str)
                and (tb is None or isinstance(tb, str))):
            raise ValueError("wrong field types")
    except Exception as exc:
        raise ProtocolError(f"malformed error frame body: {exc}") from None
    return code, type_name, message, tb
