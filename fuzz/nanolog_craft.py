"""Build nanolog files chunk by chunk, valid or not, for tests and the fuzzer.

The writer (``nanolog.Logger``) only makes files it believes are right; these helpers make
whatever a test asks for: a DICT entry whose flags lie about its records, an argument tag a
format cannot take, a clock reading past 2**63, a chunk with a wrong checksum. The layout
is the one ``nanolog/format.py`` defines, and the constants come from there.
"""
from __future__ import annotations

import struct
import zlib

from nanolog.format import (CHUNK_HEADER, CHUNK_TRAILER, FILE_HEADER, K_DICT, K_DROPS,
                            K_RECORDS, K_SESSION, K_THREAD, MAGIC, SESSION, T_BIGINT,
                            T_BYTES, T_FALSE, T_FLOAT, T_INT, T_NONE, T_STR, T_SURR, T_TEXT,
                            T_TRUE, VERSION, zigzag)


def varint(n: int) -> bytes:
    """Unsigned LEB128; any size, so a test can write one that is too long."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def text(s: str | bytes) -> bytes:
    """A length-prefixed string field (bytes are taken as already encoded)."""
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogatepass")
    return varint(len(b)) + b


def header(version: int = VERSION) -> bytes:
    return FILE_HEADER.pack(MAGIC, version, 0)


def chunk(kind: int, payload: bytes, crc: int | None = None) -> bytes:
    """A framed chunk; ``crc`` overrides the right checksum."""
    head = CHUNK_HEADER.pack(kind, len(payload))
    if crc is None:
        crc = zlib.crc32(head + payload)
    return head + payload + CHUNK_TRAILER.pack(crc)


def session(mono: int = 1_000_000_000, real: int = 1_700_000_000_000_000_000,
            pid: int = 4242) -> bytes:
    return chunk(K_SESSION, SESSION.pack(mono, real, pid))


def dict_entry(fid: int, fmt: str | bytes, nargs: int, *, level: int = 20, flags: int = 0,
               file: str = "app.py", line: int = 1) -> bytes:
    return chunk(K_DICT, varint(fid) + bytes([level, flags]) + varint(nargs) + text(fmt)
                 + text(file) + varint(line))


def thread(number: int = 0, native: int = 100, name: str = "MainThread") -> bytes:
    return chunk(K_THREAD, varint(number) + varint(native) + text(name))


def record(fid: int, delta: int = 0, *args: bytes) -> bytes:
    """One record: the arguments are encoded already (``arg_int(7)``...)."""
    return varint(fid) + varint(delta) + b"".join(args)


def records(*recs: bytes, number: int = 0, rnd: int = 0, base_ts: int = 1_000_000_000) -> bytes:
    return chunk(K_RECORDS, varint(number) + varint(rnd) + varint(base_ts) + b"".join(recs))


def drops(count: int, number: int = 0, ts: int = 0) -> bytes:
    return chunk(K_DROPS, varint(number) + varint(count) + varint(ts))


def log(*chunks: bytes) -> bytes:
    """A whole file: the header and then ``chunks``."""
    return header() + b"".join(chunks)


# ---- arguments ------------------------------------------------------------------------

def arg_none() -> bytes:
    return bytes([T_NONE])


def arg_bool(v: bool) -> bytes:
    return bytes([T_TRUE if v else T_FALSE])


def arg_int(v: int) -> bytes:
    return bytes([T_INT]) + varint(zigzag(v) & ((1 << 64) - 1))


def arg_float(v: float) -> bytes:
    return bytes([T_FLOAT]) + struct.pack("<d", v)


def arg_str(s: str | bytes) -> bytes:
    return bytes([T_STR]) + text(s)


def arg_text(s: str | bytes) -> bytes:
    return bytes([T_TEXT]) + text(s)


def arg_surr(s: str | bytes) -> bytes:
    return bytes([T_SURR]) + text(s)


def arg_bytes(b: bytes) -> bytes:
    return bytes([T_BYTES]) + varint(len(b)) + b


def arg_bigint(digits: str | bytes) -> bytes:
    return bytes([T_BIGINT]) + text(digits)


def one_record_log(fmt: str | bytes, *args: bytes, nargs: int | None = None, flags: int = 0,
                   mono: int = 1_000_000_000, real: int = 1_700_000_000_000_000_000,
                   base_ts: int = 1_000_000_000) -> bytes:
    """A session, one format, one thread and one record of it: the smallest useful file."""
    return log(session(mono, real),
               dict_entry(1, fmt, len(args) if nargs is None else nargs, flags=flags),
               thread(),
               records(record(1, 0, *args), base_ts=base_ts))
