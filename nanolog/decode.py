"""Reading log files with the compiled decoder: records, text, and damage reports."""
from __future__ import annotations

import os
from typing import BinaryIO

from nanolog._decode import Decoder, Record, RecordIterator
from nanolog.errors import DamagedLogError

# Bytes read per step. A round is sorted once it is complete, so memory holds one read
# block plus the current round (all threads' staging buffers at most).
READ_SIZE = 4 << 20


def _decoder(path, ordered, min_level=0, time_from=None, time_to=None) -> Decoder:
    return Decoder(ordered=ordered, path=os.fspath(path), min_level=min_level,
                   time_from=time_from, time_to=time_to)


def read(path, *, ordered: bool = True, strict: bool = True) -> RecordIterator:
    """Iterate over the records of a log file, merged into time order across threads.

    A damaged or truncated file yields every whole record before the damage and then
    raises ``DamagedLogError`` (with ``.offset``), unless ``strict`` is false, in which
    case the iteration just ends there (and the iterator's ``.damage`` says why). A file
    that is empty, not a nanolog file or of an unknown version raises before yielding
    anything.
    """
    dec = _decoder(path, ordered)
    f = open(path, "rb")
    try:
        head = f.read(READ_SIZE)
        dec.feed(head)
        if not head:
            dec.finish()
    except BaseException:
        f.close()
        raise
    it = RecordIterator(dec, f, strict, READ_SIZE)
    return it


def write_text(path, out: BinaryIO, *, ordered: bool = True, min_level: int = 0,
               time_from: int | None = None, time_to: int | None = None) -> DamagedLogError | None:
    """Decode ``path`` to text lines (UTF-8) on ``out``; return the damage, if any."""
    dec = _decoder(path, ordered, min_level, time_from, time_to)
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_SIZE)
            if not data:
                break
            dec.feed(data)
            out.write(dec.take_text())
            if dec.damage is not None:
                break
    dec.finish()
    out.write(dec.take_text())
    return dec.damage
