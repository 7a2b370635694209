"""The nanolog file format, version 1: constants, the chunk layout, and %-format analysis.

Everything that writes or reads a log file takes its numbers from here, so the layout is
defined once. ``docs/nanolog-format.md`` says the same in prose.

A file is a fixed header followed by chunks::

    file header (12 bytes)
    +--------+--------+--------+--------+--------+--------+--------+--------+
    | 0x93  'N'  'A'  'N'  'O'  'L'  'O'  'G' |  version u16 |  flags u16  |
    +--------+--------+--------+--------+--------+--------+--------+--------+
      magic (8 bytes)                           (1, little-endian) (0)

    chunk (9 bytes of framing around the payload)
    +------+-----------------+------------------------------+------------+
    | kind |   length  u32   |   payload (length bytes)     |  crc32 u32 |
    +------+-----------------+------------------------------+------------+
     u8     little-endian     at most MAX_CHUNK bytes        over kind, length and payload

All integers inside payloads are unsigned LEB128 varints ("v" below) unless a width is
given; signed ints are zigzag-mapped first. Strings are ``v length`` + UTF-8 bytes.

    SESSION  (kind 1)  mono_ns u64 | real_ns u64 | pid u32
        Clock calibration: one pair of readings of CLOCK_MONOTONIC and CLOCK_REALTIME
        taken together. Record times are monotonic; wall time = real_ns + (t - mono_ns).
        A SESSION starts a new id space: format ids and thread numbers after it refer to
        the DICT and THREAD chunks that follow it (a file appended to by several runs has
        one SESSION per run).
    DICT     (kind 2)  id v | level u8 | flags u8 | nargs v | format str | file str | line v
        One format string, registered the first time it is logged at that level.
    THREAD   (kind 3)  thread v | native_id v | name str
        A producer thread: thread numbers are small and local to the session.
    RECORDS  (kind 4)  thread v | round v | base_ts v | record*
        The records one thread staged between two drains, in the order it logged them.
        All RECORDS chunks of one round were drained at the same instant, so every record
        of round r is older than every record of round r+1: sorting a round sorts the file.
    DROPS    (kind 5)  thread v | count v | ts v
        ``count`` records of that thread were dropped because its buffer was full.

    record:  id v | delta v | arg * nargs(id)
        delta is nanoseconds since the previous record of the same chunk (base_ts for the
        first). Each argument is a tag byte and a payload:

        tag  type                payload
        0    None                -
        1    False               -
        2    True                -
        3    int (64-bit)        zigzag v
        4    float               8 bytes, IEEE 754 little-endian
        5    str                 v length + UTF-8
        6    bytes               v length + bytes
        7    int (any size)      v length + decimal ASCII text
        8    text                v length + UTF-8: the text the argument's own conversion
                                 produced at call time (the slow path for other types)
        9    str with surrogates v length + UTF-8 with surrogatepass
"""
from __future__ import annotations

import re
import struct

MAGIC = b"\x93NANOLOG"
VERSION = 1
FILE_HEADER = struct.Struct("<8sHH")
CHUNK_HEADER = struct.Struct("<BI")
CHUNK_TRAILER = struct.Struct("<I")
SESSION = struct.Struct("<QQI")

# Chunk kinds.
K_SESSION = 1
K_DICT = 2
K_THREAD = 3
K_RECORDS = 4
K_DROPS = 5
KIND_NAMES = {K_SESSION: "SESSION", K_DICT: "DICT", K_THREAD: "THREAD",
              K_RECORDS: "RECORDS", K_DROPS: "DROPS"}

# Argument tags.
T_NONE, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_BYTES, T_BIGINT, T_TEXT, T_SURR = range(10)

# DICT flags.
F_VERBATIM = 1   # logged with no arguments: the message is the format string, unformatted
F_PREFORMAT = 2  # the single T_TEXT argument is the whole message, formatted at call time

# A chunk is one thread's staging buffer at most (1 MiB by default); 64 MiB leaves room for
# large buffers and a single large record, and bounds what a damaged length can make a
# reader allocate.
MAX_CHUNK = 64 << 20
# The largest record a producer may stage (a call with a huge string raises instead).
MAX_RECORD = 16 << 20
MAX_ARGS = 255
# Format ids a decoder accepts. A writer caps at 100,000 by default; the decoders keep a
# dense table of ids, 4 bytes each, so a damaged id can make them allocate 64 MiB at most.
MAX_IDS = 1 << 24
# The largest width or precision a conversion may have and still be formatted at decode
# time. Each record is a few bytes, so without a bound one DICT entry ('%100000000d') makes
# every record of it print 100 MB. A format with a larger one is formatted at call time by
# the writer (flag F_PREFORMAT), so such a DICT entry without that flag is damage.
MAX_WIDTH = 4096
# Clock readings, record times and wall-clock times are nanoseconds in a signed 64-bit
# integer (CLOCK_MONOTONIC and CLOCK_REALTIME fit until the year 2262); a file that says
# otherwise is damaged.
MAX_TIME = (1 << 63) - 1

LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
LEVELS = {name: value for value, name in LEVEL_NAMES.items()}
LEVELS["WARN"] = 30
LEVELS["FATAL"] = 50


def level_name(level: int) -> str:
    return LEVEL_NAMES.get(level, f"Level {level}")


def parse_level(level: int | str) -> int:
    """Level number from a stdlib-style name or number."""
    if isinstance(level, bool):
        raise TypeError("level must be a name or an int, not bool")
    if isinstance(level, int):
        if not 0 <= level <= 255:
            raise ValueError(f"level {level} out of range 0..255")
        return level
    if isinstance(level, str):
        try:
            return LEVELS[level.upper()]
        except KeyError:
            raise ValueError(f"unknown level name {level!r}; use one of "
                             f"{', '.join(LEVEL_NAMES.values())} or a number") from None
    raise TypeError(f"level must be a name or an int, not {type(level).__name__}")


# ---------------------------------------------------------------------------------------
# %-format analysis, shared by the logger (which argument types a conversion accepts
# without a call-time check) and the decoders (where a T_TEXT argument is substituted).

# ASCII digits only: '%' reads no others ('%\u0663d' % 1 is an error, not a width of 3).
_SPEC = re.compile(
    r"%(?P<key>\([^)]*\))?(?P<flags>[-#0 +]*)(?P<width>\*|[0-9]+)?"
    r"(?:\.(?P<prec>\*|[0-9]+))?[hlL]?(?P<conv>.?)", re.S)

_ANY = (1 << 10) - 1
_NUM = (1 << T_FALSE) | (1 << T_TRUE) | (1 << T_INT) | (1 << T_FLOAT)
_INT = (1 << T_FALSE) | (1 << T_TRUE) | (1 << T_INT)
# In an ACCEPT mask, beside the tag bits: a float is accepted only if it is finite
# ('%d' % float('inf') raises, '%d' % 2.5 does not).
A_FINITE = 1 << 15
_INTCONV = _NUM | (1 << T_BIGINT) | A_FINITE
# Which tags each conversion formats without error at decode time. T_TEXT is always
# accepted (it is substituted verbatim). Anything else is checked once at call time by the
# writer, and is damage to a decoder.
ACCEPT = {
    "s": _ANY, "r": _ANY, "a": _ANY,
    "d": _INTCONV, "i": _INTCONV, "u": _INTCONV,
    "x": _INT | (1 << T_BIGINT), "X": _INT | (1 << T_BIGINT), "o": _INT | (1 << T_BIGINT),
    "e": _NUM, "E": _NUM, "f": _NUM, "F": _NUM, "g": _NUM, "G": _NUM,
    "c": 0,
}
for _c in ACCEPT:
    ACCEPT[_c] |= 1 << T_TEXT
TAG_NAMES = ("None", "False", "True", "int", "float", "str", "bytes", "big int", "text",
             "str with surrogates")


class FormatShape:
    """What a %-format needs: its conversions, in order, or why it must be preformatted."""

    __slots__ = ("specs", "accept", "simple", "why", "pieces")

    def __init__(self, fmt: str):
        self.specs: list[tuple[int, int, str]] = []  # (start, end, conversion char)
        # No mapping keys, no '*', every conversion known, widths within MAX_WIDTH.
        self.simple = True
        self.why = ""  # what made it not simple (the first such conversion)
        pieces: list[str] = []
        pos = 0
        for m in _SPEC.finditer(fmt):
            conv = m.group("conv")
            if conv == "%" and m.end() - m.start() == 2:
                continue
            why = _not_simple(m)
            if why:
                if self.simple:
                    self.simple, self.why = False, why
                continue
            pieces.append(fmt[pos:m.start()])
            pos = m.end()
            self.specs.append((m.start(), m.end(), conv))
        pieces.append(fmt[pos:])
        self.pieces = pieces
        self.accept = [ACCEPT[c] for _, _, c in self.specs]

    @property
    def nargs(self) -> int:
        return len(self.specs)

    def with_text_at(self, fmt: str, positions: frozenset[int]) -> str:
        """``fmt`` with the conversions at ``positions`` replaced by a plain ``%s``.

        A T_TEXT argument already holds its conversion's output (width and precision
        applied), so it must be inserted as is.
        """
        out = []
        pos = 0
        for i, (start, end, _) in enumerate(self.specs):
            if i in positions:
                out.append(fmt[pos:start])
                out.append("%s")
                pos = end
        out.append(fmt[pos:])
        return "".join(out)


def _not_simple(m: re.Match) -> str:
    """Why the conversion ``m`` cannot be deferred to the decoder ('' if it can)."""
    if m.group("key"):
        return "a mapping key"
    if m.group("width") == "*" or m.group("prec") == "*":
        return "a '*' width or precision"
    if m.group("conv") not in ACCEPT:
        return f"the conversion {m.group()!r}"
    for digits in (m.group("width"), m.group("prec")):
        # Compared as text first: int() of a long digit string is slow (and limited).
        if digits is not None and (len(digits) > 5 or int(digits) > MAX_WIDTH):
            return f"a width or precision over {MAX_WIDTH}"
    return ""


class BadEntry(ValueError):
    """A DICT entry that no writer makes (the reason is the message)."""


def check_entry(fid: int, flags: int, nargs: int, fmt: str) -> tuple[FormatShape | None,
                                                                        tuple[int, ...]]:
    """The rules a DICT entry must follow before its records can be trusted.

    Returns the format's shape (None for a verbatim or preformatted entry) and, per
    argument, the ACCEPT mask its records' tags are checked against, so that formatting a
    record that passed can never fail. Raises ``BadEntry``. Both decoders call this, so
    they refuse the same entries with the same words.
    """
    if fid >= MAX_IDS:
        raise BadEntry(f"format id {fid} out of range (limit {MAX_IDS})")
    if nargs > MAX_ARGS:
        raise BadEntry(f"format id {fid} has {nargs} arguments (limit {MAX_ARGS})")
    if flags == F_VERBATIM:
        if nargs:
            raise BadEntry(f"format id {fid} is verbatim but has {nargs} arguments")
        return None, ()
    if flags == F_PREFORMAT:
        if nargs != 1:
            raise BadEntry(f"format id {fid} is preformatted but has {nargs} arguments, not 1")
        return None, (1 << T_TEXT,)
    if flags:
        raise BadEntry(f"format id {fid} has unknown flags {flags:#x}")
    shape = FormatShape(fmt)
    if not shape.simple:
        raise BadEntry(f"format id {fid} has {shape.why}, so its records must be "
                       f"preformatted, and they are not")
    if shape.nargs != nargs:
        raise BadEntry(f"format id {fid} has {shape.nargs} conversions, DICT says {nargs}")
    return shape, tuple(shape.accept)


def misfit(fid: int, index: int, tag: int) -> str:
    """Why argument ``index`` (from 0) of a record of ``fid`` cannot be formatted."""
    return (f"argument {index + 1} of format id {fid} ({TAG_NAMES[tag]}) does not fit its "
            f"conversion")


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)
