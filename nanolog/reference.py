"""The pure-Python reference decoder: small, slow, and the oracle the tests trust.

It reads a whole file into memory and follows ``nanolog.format`` literally. The fast
decoder (``nanolog._decode``) must produce the same records, the same text and the same
errors at the same offsets; the test suite checks that on every file it writes.
"""
from __future__ import annotations

import math
import struct
import time
import zlib
from typing import Iterator

from nanolog.errors import DamagedLogError, EmptyLogError, NotANanologFile, UnsupportedVersion
from nanolog.format import (A_FINITE, CHUNK_HEADER, CHUNK_TRAILER, F_PREFORMAT,
                            F_VERBATIM, FILE_HEADER, K_DICT, K_DROPS, K_RECORDS, K_SESSION,
                            K_THREAD, KIND_NAMES, MAGIC, MAX_CHUNK, MAX_TIME, SESSION,
                            T_BIGINT, T_BYTES, T_FALSE, T_FLOAT, T_INT, T_NONE, T_STR,
                            T_SURR, T_TEXT, T_TRUE, VERSION, BadEntry, FormatShape,
                            check_entry, level_name, misfit, unzigzag)

_DOUBLE = struct.Struct("<d")


class Record:
    """One decoded log record."""

    __slots__ = ("time", "level", "thread", "thread_name", "pid", "format", "args",
                 "file", "line", "_flags", "_text_at")

    def __init__(self, time, level, thread, thread_name, pid, format, args, file, line,
                 flags, text_at):
        self.time = time              # wall-clock ns since the epoch
        self.level = level
        self.thread = thread          # native thread id
        self.thread_name = thread_name
        self.pid = pid
        self.format = format
        self.args = args              # tuple; a T_TEXT argument appears as its text
        self.file = file
        self.line = line
        self._flags = flags
        self._text_at = text_at       # positions of T_TEXT arguments

    @property
    def level_name(self) -> str:
        return level_name(self.level)

    @property
    def message(self) -> str:
        if self._flags & F_VERBATIM:
            return self.format
        if self._flags & F_PREFORMAT:
            return self.args[0]
        fmt = self.format
        if self._text_at:
            fmt = FormatShape(fmt).with_text_at(fmt, self._text_at)
        return fmt % self.args

    def __repr__(self) -> str:
        return (f"Record(time={self.time}, level={self.level_name}, "
                f"thread={self.thread_name!r}, message={self.message!r})")


def format_time(ns: int) -> str:
    """Local wall-clock time with nanoseconds: ``2024-05-01 12:00:00.123456789``."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)) + f".{frac:09d}"


def format_text(rec) -> str:
    """The text line ``nanolog decode`` prints for a record."""
    return f"{format_time(rec.time)} {level_name(rec.level):<8} [{rec.thread_name}] {rec.message}"


class _Malformed(Exception):
    pass


class _Cursor:
    __slots__ = ("buf", "pos", "end", "mark")

    def __init__(self, buf, pos, end):
        self.buf, self.pos, self.end = buf, pos, end
        self.mark = pos  # where the item being parsed started

    def varint(self) -> int:
        result = shift = 0
        while True:
            if self.pos >= self.end:
                raise _Malformed("varint runs past the end of the chunk")
            b = self.buf[self.pos]
            self.pos += 1
            if shift == 63 and b > 1:  # the 10th byte may hold bit 63 and nothing more
                raise _Malformed("varint exceeds 64 bits")
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise _Malformed(f"field of {n} bytes runs past the end of the chunk")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def text(self, errors: str = "strict") -> str:
        try:
            return self.take(self.varint()).decode("utf-8", errors)
        except UnicodeDecodeError as e:
            raise _Malformed(f"invalid UTF-8: {e.reason}") from None


def _arg(cur: _Cursor):
    """One tagged argument -> (tag, value)."""
    if cur.pos >= cur.end:
        raise _Malformed("record runs past the end of the chunk")
    tag = cur.take(1)[0]
    if tag == T_INT:
        return tag, unzigzag(cur.varint())
    if tag == T_FLOAT:
        return tag, _DOUBLE.unpack(cur.take(8))[0]
    if tag == T_STR or tag == T_TEXT:
        return tag, cur.text()
    if tag == T_NONE:
        return tag, None
    if tag == T_TRUE:
        return tag, True
    if tag == T_FALSE:
        return tag, False
    if tag == T_BYTES:
        return tag, cur.take(cur.varint())
    if tag == T_BIGINT:
        digits = cur.take(cur.varint())
        try:
            return tag, int(digits.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise _Malformed("invalid big-int digits") from None
    if tag == T_SURR:
        return tag, cur.text("surrogatepass")
    raise _Malformed(f"unknown argument tag {tag}")


def _records_header(cur: _Cursor, threads: dict):
    """A RECORDS payload's header -> (round, base timestamp, (native id, thread name))."""
    number = cur.varint()
    rnd = cur.varint()
    ts = cur.varint()
    if number not in threads:
        raise _Malformed(f"unknown thread {number}")
    return rnd, ts, threads[number]


def _records(cur: _Cursor, ts: int, formats: dict, thread: tuple, session: tuple,
             batch: list) -> None:
    """Append the records of a RECORDS payload to ``batch``, checking each; raise
    ``_Malformed`` at the first bad one (``cur.mark`` is where it starts)."""
    native, tname = thread
    mono0, real0, pid = session
    while cur.pos < cur.end:
        cur.mark = cur.pos
        fid = cur.varint()
        ts += cur.varint()
        if ts > MAX_TIME:
            raise _Malformed("timestamp past 2**63 - 1 ns")
        if real0 + ts - mono0 > MAX_TIME:
            raise _Malformed("wall-clock time past 2**63 - 1 ns")
        if fid not in formats:
            raise _Malformed(f"unknown format id {fid}")
        level, flags, nargs, fmt, file, line, accept = formats[fid]
        args, text_at = [], []
        for i in range(nargs):
            tag, value = _arg(cur)
            if not (accept[i] >> tag) & 1 or (
                    tag == T_FLOAT and accept[i] & A_FINITE and not math.isfinite(value)):
                raise _Malformed(misfit(fid, i, tag))
            args.append(value)
            if tag == T_TEXT:
                text_at.append(i)
        batch.append(Record(real0 + ts - mono0, level, native, tname, pid, fmt,
                            tuple(args), file, line, flags, frozenset(text_at)))
    cur.mark = cur.pos


def _torn_records(cur: _Cursor, formats: dict, threads: dict, session: tuple):
    """The whole records at the start of a RECORDS payload cut short (``cur.end`` is where
    the bytes stop): (round, records, file offset of the first record not taken), or None
    if even the payload's header is not whole or names an unknown thread."""
    try:
        rnd, ts, thread = _records_header(cur, threads)
    except _Malformed:
        return None
    batch: list = []
    cur.mark = cur.pos
    try:
        _records(cur, ts, formats, thread, session, batch)
    except _Malformed:
        pass  # cut in this record (or bad from here on): the damage starts at cur.mark
    return rnd, batch, cur.mark


def check_header(data: bytes, path: str | None) -> None:
    """Raise the right error for a file that is not a readable nanolog file."""
    if not data:
        raise EmptyLogError("empty file (0 bytes): not a nanolog log", path)
    if len(data) < FILE_HEADER.size:
        if MAGIC.startswith(data[:len(MAGIC)]):
            raise DamagedLogError(f"truncated: the {FILE_HEADER.size}-byte file header is "
                                  f"incomplete ({len(data)} bytes)", path, 0)
        raise NotANanologFile("not a nanolog file (no nanolog magic at the start)", path)
    magic, version, _ = FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise NotANanologFile("not a nanolog file (no nanolog magic at the start)", path)
    if version != VERSION:
        raise UnsupportedVersion(f"unsupported nanolog format version {version} "
                                 f"(this decoder reads version {VERSION})", path, version)


def read_reference(source, *, ordered: bool = True, path: str | None = None) -> Iterator[Record]:
    """Records of a file (path) or of bytes. Raises DamagedLogError after the whole ones."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = str(source)
        with open(source, "rb") as f:
            data = f.read()
    check_header(data, path)

    formats: dict[int, tuple] = {}
    threads: dict[int, tuple] = {}
    session = None  # (mono, real, pid)
    pending: list[Record] = []
    pending_round = None
    pos = FILE_HEADER.size
    n = len(data)

    def flush_round():
        nonlocal pending
        out = sorted(pending, key=lambda r: r.time) if ordered else pending
        pending = []
        return out

    while pos < n:
        start = pos
        if n - pos < CHUNK_HEADER.size + CHUNK_TRAILER.size:
            yield from flush_round()
            raise DamagedLogError(f"truncated: incomplete chunk at offset {start} "
                                  f"({n - pos} bytes left)", path, start)
        kind, length = CHUNK_HEADER.unpack_from(data, pos)
        if length > MAX_CHUNK:
            yield from flush_round()
            raise DamagedLogError(f"corrupt: chunk at offset {start} claims {length} bytes "
                                  f"(limit {MAX_CHUNK})", path, start)
        body = pos + CHUNK_HEADER.size
        end = body + length
        if end + CHUNK_TRAILER.size > n:
            # A torn tail. Its whole records are still what the writer wrote (a record's
            # encoding ends itself, so a record that parses in the bytes present is the one
            # written), though no checksum vouches for them: keep them, and put the damage
            # at the first record that is not whole.
            offset = start
            if kind == K_RECORDS and session is not None:
                torn = _torn_records(_Cursor(data, body, min(end, n)), formats, threads,
                                     session)
                if torn is not None:
                    rnd, batch, offset = torn
                    if rnd != pending_round:
                        yield from flush_round()
                    pending.extend(batch)
            yield from flush_round()
            raise DamagedLogError(f"truncated: chunk at offset {start} needs "
                                  f"{end + CHUNK_TRAILER.size - start} bytes, the file has "
                                  f"{n - start} left", path, offset)
        (crc,) = CHUNK_TRAILER.unpack_from(data, end)
        if zlib.crc32(data[start:end]) != crc:
            yield from flush_round()
            raise DamagedLogError(f"corrupt: chunk at offset {start} fails its checksum",
                                  path, start)
        pos = end + CHUNK_TRAILER.size
        cur = _Cursor(data, body, end)
        try:
            if kind == K_SESSION:
                yield from flush_round()
                if length != SESSION.size:
                    raise _Malformed(f"SESSION payload of {length} bytes")
                session = SESSION.unpack_from(data, body)
                if max(session[:2]) > MAX_TIME:
                    raise _Malformed("clock reading past 2**63 - 1 ns")
                formats, threads = {}, {}
                pending_round = None
                continue
            if kind not in KIND_NAMES:
                raise _Malformed(f"unknown chunk kind {kind}")
            if session is None:
                raise _Malformed(f"{KIND_NAMES[kind]} chunk before any SESSION")
            if kind == K_DICT:
                fid = cur.varint()
                level, flags = cur.take(2)
                nargs = cur.varint()
                fmt = cur.text("surrogatepass")
                file = cur.text("surrogatepass")
                line = cur.varint()
                if fid in formats:
                    if formats[fid][:4] != (level, flags, nargs, fmt):
                        raise _Malformed(f"format id {fid} defined twice")
                    continue
                try:
                    _, accept = check_entry(fid, flags, nargs, fmt)
                except BadEntry as e:
                    raise _Malformed(str(e)) from None
                formats[fid] = (level, flags, nargs, fmt, file, line, accept)
            elif kind == K_THREAD:
                number = cur.varint()
                threads[number] = (cur.varint(), cur.text("surrogatepass"))
            elif kind == K_DROPS:
                cur.varint(), cur.varint(), cur.varint()
            else:  # K_RECORDS
                rnd, ts, thread = _records_header(cur, threads)
                batch = []
                _records(cur, ts, formats, thread, session, batch)
                if rnd != pending_round:
                    yield from flush_round()
                    pending_round = rnd
                pending.extend(batch)
        except _Malformed as e:
            yield from flush_round()
            raise DamagedLogError(f"corrupt: malformed {KIND_NAMES.get(kind, kind)} chunk "
                                  f"at offset {start}: {e}", path, start) from None
    yield from flush_round()
