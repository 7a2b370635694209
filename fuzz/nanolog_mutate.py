"""Seed logs and the mutations the nanolog fuzzers apply to them.

A mutation works on a file split into its chunks, so most mutants get past the checksum
(every chunk's CRC is recomputed unless a mutation breaks it on purpose) and reach the
payload checks and the formatting behind them. Every random choice comes from one
``random.Random``: ``mutate(seed, random.Random(key), seeds)`` gives the same bytes for
the same key, which is how the long run (``nanolog_fuzz.py``) recovers the input that
killed a child, and how hypothesis (``tests/nanolog/test_fuzz.py``) replays and shrinks.
"""
from __future__ import annotations

import random
import struct
import tempfile
from pathlib import Path

import nanolog
import nanolog_craft as craft
from nanolog.format import (CHUNK_HEADER, CHUNK_TRAILER, FILE_HEADER, K_DICT, K_RECORDS,
                            K_SESSION, K_THREAD, MAX_CHUNK, MAX_IDS, MAX_TIME, MAX_WIDTH,
                            SESSION, BadEntry, FormatShape, check_entry)

# Values where a check changes its answer, as varints.
INTERESTING = (0, 1, 2, 9, 10, 127, 128, 255, 256, MAX_WIDTH, MAX_WIDTH + 1, MAX_IDS - 1,
               MAX_IDS, 2**31 - 1, 2**31, 2**32, MAX_CHUNK + 1, MAX_TIME, MAX_TIME + 1,
               2**64 - 1)
INTERESTING_BYTES = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 0x7F, 0x80, 0xC0, 0xED, 0xFF)
FORMATS = (
    "%d", "%s", "%r", "%a", "%c", "%x", "%X", "%o", "%u", "%i", "%f", "%e", "%g", "%E",
    "%G", "%F", "%s %d", "%%", "100%%", "100%", "%", "%(a)s", "%*d", "%.*f", "%4096d",
    "%4097d", "%.4096f", "%.4097f", "%100000000d", "%ld", "%5.3s", "%-+ 0#x", "%\u0663d",
    "%#o", "%+.3e", "%010.4f", "% d", "%-5c", "\u00e9 %s \u2713", "\udc80 %s", "%.f",
    "%s" * 255, "%-8s|%+05d|%x|%10.2e|%s|%s", "",
)
FLOATS = (0.0, -0.0, 1.5, 1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan"))
STRINGS = (b"", b"abc", "\u00e9\u2713".encode(), b"\xff\xfe", b"\xed\xb2\x80", b"\xc3",
           b"a\x00b", b"%s%d")
DIGITS = (b"0", b"-5", b"123456789012345678901234567890", b"12a", b"", b" 1_0 ", b"\xff",
          b"9" * 4301, b"+7")


# ---- seeds -----------------------------------------------------------------------------

def _logged(path: Path) -> None:
    """A small log from the real writer: every argument type and format kind."""
    import decimal
    with nanolog.Logger(path, mode="w", buffer_size=4096) as log:
        log.info("start %s", "\u00e9 \u00fcn\u00efcode \u2713")
        log.debug("ints %d %x %o %5d|%-5d|%+d", -7, 255, 8, 42, 42, 3)
        log.warning("floats %f %.2e %g %10.3f %s", 2.5, 1e10, float("nan"), -0.0, float("inf"))
        log.error("big %d tiny %d", 2**100, -2**63)
        log.info("bytes %r %s, none %s, bools %s %s", b"\x00\xff", b"ab", None, True, False)
        log.info("surrogate %s", "a\udc80b")
        log.info("decimal %5.1f, object %s", decimal.Decimal("2.25"), ValueError("bad"))
        log.info("mapping %(a)s and %(b)d", {"a": "x", "b": 2})
        log.info("star %*d", 5, 3)
        log.info("char %c", 65)
        log.critical("verbatim 100%")
        log.info("wide %50s|%.60f", "w", 1 / 3)
        for i in range(6):
            log.info("loop %d of %s", i, "six")


def _threads(path: Path) -> None:
    """Three threads and several rounds (a small buffer is drained often)."""
    import threading
    with nanolog.Logger(path, mode="w", buffer_size=4096, flush_interval=0.001) as log:
        def work(t):
            for i in range(8):
                log.info("thread %d step %d %s", t, i, "x" * (i % 3))
        threads = [threading.Thread(target=work, args=(t,), name=f"w{t}") for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _sessions(path: Path) -> None:
    """Two runs appended to one file: two SESSIONs, ids reused."""
    for run in range(2):
        with nanolog.Logger(path, mode="a") as log:
            log.info("run %d says %s", run, "hi")
            log.warning("run %d", run)


def _crafted() -> bytes:
    """Two threads, interleaved chunks of one round, drops: what a writer rarely shows."""
    c = craft
    return c.log(
        c.session(), c.dict_entry(1, "a %d %s", 2), c.dict_entry(2, "plain", 0, flags=1),
        c.dict_entry(3, "%s", 1, flags=2), c.thread(0, 11, "t0"), c.thread(1, 12, "t1"),
        c.records(c.record(1, 5, c.arg_int(1), c.arg_str("x")), c.record(2, 3),
                  number=0, rnd=0, base_ts=1_000_000_100),
        c.records(c.record(3, 0, c.arg_text("pre")), c.record(1, 2, c.arg_int(-1),
                  c.arg_bytes(b"\x00")), number=1, rnd=0, base_ts=1_000_000_050),
        c.records(c.record(2, 1), number=0, rnd=0, base_ts=1_000_000_200),
        c.drops(3, number=1),
        c.records(c.record(1, 9, c.arg_bool(True), c.arg_none()), number=1, rnd=1,
                  base_ts=1_000_001_000))


def seed_logs() -> list[bytes]:
    """The seeds every mutant starts from (made fresh: times and pids differ per call)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="nanolog_seeds_") as tmp:
        for make in (_logged, _threads, _sessions):
            path = Path(tmp) / f"{make.__name__}.nlog"
            make(path)
            out.append(path.read_bytes())
    out.append(_crafted())
    return out


# ---- a file as chunks ------------------------------------------------------------------

class Parsed:
    """A file split into its header, its whole chunks and whatever trails them."""

    def __init__(self, data: bytes):
        self.header = bytearray(data[:FILE_HEADER.size])
        self.chunks: list[list] = []  # [kind, payload bytearray, crc or None (= right)]
        pos = FILE_HEADER.size
        framing = CHUNK_HEADER.size + CHUNK_TRAILER.size
        while pos + framing <= len(data):
            kind, length = CHUNK_HEADER.unpack_from(data, pos)
            if pos + framing + length > len(data):
                break
            body = pos + CHUNK_HEADER.size
            self.chunks.append([kind, bytearray(data[body:body + length]), None])
            pos = body + length + CHUNK_TRAILER.size
        self.tail = bytes(data[pos:])
        self.cut: int | None = None  # truncate the joined file here

    def join(self) -> bytes:
        out = bytes(self.header) + b"".join(
            craft.chunk(kind, bytes(payload), crc) for kind, payload, crc in self.chunks
        ) + self.tail
        return out[:self.cut] if self.cut is not None else out

    def pick(self, rng: random.Random, kind: int | None = None) -> list | None:
        pool = [c for c in self.chunks if kind is None or c[0] == kind]
        return rng.choice(pool) if pool else None

    def ids(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """(format id, nargs, ACCEPT mask per argument) of the DICT chunks that parse."""
        out = []
        for kind, payload, _ in self.chunks:
            if kind == K_DICT:
                try:
                    fid, pos = _read_varint(payload, 0)
                    flags = payload[pos + 1]
                    nargs, pos = _read_varint(payload, pos + 2)
                    length, pos = _read_varint(payload, pos)
                    fmt = bytes(payload[pos:pos + length]).decode("utf-8", "surrogatepass")
                except (IndexError, UnicodeDecodeError):
                    continue
                try:
                    _, accept = check_entry(fid, flags, nargs, fmt)
                except BadEntry:
                    accept = ()
                out.append((fid, nargs, accept))
        return out

    def after(self, rng, *kinds: int) -> int:
        """A place for a new chunk, mostly after the last chunk of ``kinds`` (which it needs)."""
        last = max((i for i, c in enumerate(self.chunks) if c[0] in kinds), default=-1)
        if rng.random() < 0.1:
            last = -1
        return rng.randint(last + 1, len(self.chunks))

    def threads(self) -> list[int]:
        out = []
        for kind, payload, _ in self.chunks:
            if kind == K_THREAD:
                try:
                    out.append(_read_varint(payload, 0)[0])
                except IndexError:
                    pass
        return out


def _read_varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80 or shift > 70:
            return value, pos
        shift += 7


# ---- mutations -------------------------------------------------------------------------

def _payload_pos(rng, payload) -> int:
    return rng.randrange(len(payload) + 1)


def flip_bits(p: Parsed, rng, seeds):
    c = p.pick(rng)
    if c and c[1]:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(c[1]))
            c[1][i] ^= 1 << rng.randrange(8)


def set_byte(p: Parsed, rng, seeds):
    c = p.pick(rng)
    if c and c[1]:
        c[1][rng.randrange(len(c[1]))] = rng.choice(INTERESTING_BYTES)


def put_varint(p: Parsed, rng, seeds):
    """Overwrite (or insert) a varint with a value where some check flips."""
    c = p.pick(rng)
    if c is None:
        return
    v = craft.varint((rng.choice(INTERESTING) + rng.choice((0, 0, -1, 1))) % (1 << 64))
    if rng.random() < 0.1:
        v = b"\xff" * rng.randint(9, 11) + b"\x01"  # too long, or bit 64 and up
    i = _payload_pos(rng, c[1])
    n = len(v) if rng.random() < 0.7 else 0
    c[1][i:i + n] = v


def insert_or_delete(p: Parsed, rng, seeds):
    c = p.pick(rng)
    if c is None:
        return
    i = _payload_pos(rng, c[1])
    if rng.random() < 0.5:
        c[1][i:i] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.randint(1, 4)))
    else:
        del c[1][i:i + rng.randint(1, 8)]


def truncate_payload(p: Parsed, rng, seeds):
    c = p.pick(rng)
    if c:
        del c[1][_payload_pos(rng, c[1]):]


def truncate_file(p: Parsed, rng, seeds):
    size = len(p.join())
    p.cut = rng.randrange(size + 1) if rng.random() < 0.3 else max(0, size - rng.randint(1, 12))


def duplicate_chunk(p: Parsed, rng, seeds):
    c = p.pick(rng)
    if c:
        p.chunks.insert(rng.randrange(len(p.chunks) + 1), [c[0], bytearray(c[1]), c[2]])


def repeat_chunk(p: Parsed, rng, seeds):
    """One chunk K times in a row (mostly a RECORDS chunk: many runs in one round)."""
    c = p.pick(rng, K_RECORDS if rng.random() < 0.8 else None)
    if c is None:
        return
    k = rng.choice((2, 3, 5, 10, 30)) if rng.random() < 0.9 else rng.randint(50, 400)
    i = p.chunks.index(c)
    p.chunks[i:i + 1] = [[c[0], bytearray(c[1]), c[2]] for _ in range(k)]


def delete_chunk(p: Parsed, rng, seeds):
    if p.chunks:
        del p.chunks[rng.randrange(len(p.chunks))]


def swap_chunks(p: Parsed, rng, seeds):
    if len(p.chunks) > 1:
        i, j = rng.sample(range(len(p.chunks)), 2)
        p.chunks[i], p.chunks[j] = p.chunks[j], p.chunks[i]


def splice(p: Parsed, rng, seeds):
    """Chunks of another seed (other ids, other sessions) in the middle of this one."""
    other = Parsed(rng.choice(seeds))
    if other.chunks:
        a = rng.randrange(len(other.chunks))
        b = min(len(other.chunks), a + rng.randint(1, 4))
        at = rng.randrange(len(p.chunks) + 1)
        p.chunks[at:at] = [[k, bytearray(pl), crc] for k, pl, crc in other.chunks[a:b]]


def craft_dict(p: Parsed, rng, seeds):
    """A DICT entry with an unusual format; half of them lie about their records."""
    ids = p.ids() or [(1, 1, ())]
    fid, nargs, _ = rng.choice(ids)
    old = p.pick(rng, K_DICT) if rng.random() < 0.5 else None
    if old is not None:  # redefine an entry, before any of its records
        fid = _read_varint(old[1], 0)[0] if old[1] else fid
    elif rng.random() < 0.8:
        fid = max(i for i, _, _ in ids) + 1
    else:
        fid = rng.choice((0, 2, 99, MAX_IDS - 1, MAX_IDS, 2**40))
    fmt = rng.choice(FORMATS)
    if rng.random() < 0.5:  # what a writer would say about this format
        shape = FormatShape(fmt)
        flags, nargs = (0, shape.nargs) if shape.simple else (2, 1)
    else:
        flags = rng.choice((0, 0, 0, 1, 2, 3, 4, 0x80))
        nargs = rng.choice((nargs, nargs, nargs + 1, max(0, nargs - 1), 0, 1, 255, 256))
    entry = craft.dict_entry(fid, fmt, nargs, flags=flags, level=rng.choice((10, 20, 0, 255)),
                             line=rng.choice((1, 2**31, 2**64 - 1)))
    chunk = [K_DICT, bytearray(entry[CHUNK_HEADER.size:-CHUNK_TRAILER.size]), None]
    if old is not None:
        p.chunks[p.chunks.index(old)] = chunk
    else:
        p.chunks.insert(p.after(rng, K_SESSION), chunk)


def _random_arg(rng, accept: int = 0) -> bytes:
    """An argument of any tag, or (if ``accept``) of a tag in that ACCEPT mask."""
    tags = [t for t in range(10) if (accept >> t) & 1]
    tag = rng.choice(tags) if tags else rng.randrange(12)
    if tag == 0:
        return craft.arg_none()
    if tag in (1, 2):
        return craft.arg_bool(tag == 2)
    if tag == 3:
        return craft.arg_int(rng.choice((0, -1, 65, 2**40, -(2**63), 2**63 - 1)))
    if tag == 4:
        return craft.arg_float(rng.choice(FLOATS))
    if tag == 5:
        return craft.arg_str(rng.choice(STRINGS))
    if tag == 6:
        return craft.arg_bytes(rng.choice(STRINGS))
    if tag == 7:
        return craft.arg_bigint(rng.choice(DIGITS))
    if tag == 8:
        return craft.arg_text(rng.choice(STRINGS))
    if tag == 9:
        return craft.arg_surr(rng.choice(STRINGS))
    return bytes([rng.choice((10, 11, 0x7F, 0xFF))])


def craft_records(p: Parsed, rng, seeds):
    """A RECORDS chunk of known ids and threads with arguments of any tag."""
    ids = p.ids() or [(1, 1, ())]
    threads = p.threads() or [0]
    fitting = rng.random() < 0.6  # arguments of tags their conversions take
    recs = []
    for _ in range(rng.randint(1, 6)):
        fid, nargs, accept = rng.choice(ids)
        if fitting and len(accept) == nargs:
            args = [_random_arg(rng, a) for a in accept]
        else:
            n = min(nargs, 8) + rng.choice((0, 0, 0, 1, -1))
            args = [_random_arg(rng) for _ in range(max(0, n))]
        delta = rng.choice((0, 1, 1000, MAX_TIME, 2**64 - 1)) if rng.random() < 0.2 else 7
        recs.append(craft.record(fid, delta, *args))
    base = rng.choice((1_000_000_000, 0, MAX_TIME, 2**64 - 1)) if rng.random() < 0.2 \
        else 1_000_000_000
    body = craft.records(*recs, number=rng.choice(threads), rnd=rng.choice((0, 1, 5)),
                         base_ts=base)
    p.chunks.insert(p.after(rng, K_DICT, K_THREAD),
                    [K_RECORDS, bytearray(body[CHUNK_HEADER.size:-CHUNK_TRAILER.size]), None])


def craft_session(p: Parsed, rng, seeds):
    """Clock readings near and past the int64 range."""
    c = p.pick(rng, K_SESSION)
    if c is not None:
        c[1][:] = SESSION.pack(rng.choice((0, 1, MAX_TIME, MAX_TIME + 1, 2**64 - 1)),
                               rng.choice((0, 1, MAX_TIME - 10**9, MAX_TIME, MAX_TIME + 1)),
                               rng.choice((0, 2**31, 2**32 - 1)))


def change_kind(p: Parsed, rng, seeds):
    c = p.pick(rng)
    if c:
        c[0] = rng.choice((0, 1, 2, 3, 4, 5, 6, 0xFF))


def break_crc(p: Parsed, rng, seeds):
    c = p.pick(rng)
    if c:
        c[2] = rng.randrange(1 << 32)


def damage_header(p: Parsed, rng, seeds):
    i = rng.randrange(len(p.header)) if p.header else 0
    if p.header:
        p.header[i] ^= 1 << rng.randrange(8)
    if rng.random() < 0.3:
        p.header[8:10] = struct.pack("<H", rng.choice((0, 2, 0xFFFF)))


# (mutation, weight): payload-level damage most often, file-level damage least.
MUTATIONS = (
    (flip_bits, 10), (set_byte, 8), (put_varint, 10), (insert_or_delete, 6),
    (truncate_payload, 4), (truncate_file, 3), (duplicate_chunk, 4), (repeat_chunk, 4),
    (delete_chunk, 3), (swap_chunks, 3), (splice, 4), (craft_dict, 10),
    (craft_records, 12), (craft_session, 2), (change_kind, 1), (break_crc, 1),
    (damage_header, 1),
)
_OPS = [m for m, _ in MUTATIONS]
_WEIGHTS = [w for _, w in MUTATIONS]


def mutate(seed: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """``seed`` with one to four mutations applied."""
    p = Parsed(seed)
    for op in rng.choices(_OPS, _WEIGHTS, k=rng.choice((1, 1, 2, 2, 3, 4))):
        op(p, rng, seeds)
    return p.join()


def mutant(seeds: list[bytes], key) -> bytes:
    """The mutant numbered ``key``: the same bytes for the same seeds and key."""
    rng = random.Random(key)
    return mutate(rng.choice(seeds), rng, seeds)


def splits(data: bytes, key) -> tuple[int, ...]:
    """Where to cut ``data`` into the pieces fed to the incremental decoder (a quarter of
    the keys cut it, at up to four places)."""
    rng = random.Random(f"{key}:splits")
    if rng.random() >= 0.25:
        return ()
    return tuple(rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 4)))
