"""What must hold for any input to the nanolog decoders, checked on one input.

``check(data)`` decodes ``data`` with the compiled decoder (records, messages, text) and
with the reference decoder, optionally runs the ``nanolog`` CLI on it in-process, and
raises ``Finding`` if any of these fails:

* only the package's errors (``LogFileError`` and its subclasses) come out, never another
  Python exception;
* both decoders agree: the same records (every field, the message included), the same
  text, and the same error (type, offset and words);
* the text is bounded by what the input holds (``text_bound``): no width or precision
  over ``MAX_WIDTH``, nothing read from outside a record;
* the CLI exits 0, 1 or 3 as the outcome says (never 5, never a traceback) and prints
  exactly the decoder's text.

Used by ``tests/nanolog/test_fuzz.py`` (hypothesis) and ``fuzz/nanolog_fuzz.py`` (the
long run). A segfault or a hang cannot be caught here; the long run checks inputs in a
child process for that.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

from click.testing import CliRunner

from nanolog._decode import Decoder
from nanolog.cli import EXIT_DAMAGED, EXIT_NOT_A_LOG, EXIT_OK, main as cli_main
from nanolog.errors import DamagedLogError, LogFileError
from nanolog.format import MAX_WIDTH
from nanolog.reference import format_text, read_reference

# Per line of text: the time, level and brackets; per argument: the widest conversion
# (a precision of MAX_WIDTH on the largest double prints about MAX_WIDTH + 310 digits);
# per byte of text an argument, a format or a thread name holds: at most 4 (a repr or
# a backslash escape).
LINE_OVERHEAD = 64
PER_ARG = MAX_WIDTH + 400
PER_BYTE = 4


class Finding(Exception):
    """A property above does not hold. ``kind`` groups findings for the report."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Outcome:
    records: int
    error: str | None         # "DamagedLogError: ..." or None
    text_bytes: int


def _size(value) -> int:
    if isinstance(value, (str, bytes)):
        return len(value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value)
    return len(repr(value))


def text_bound(rec) -> int:
    """The most text one record may print (see the constants above)."""
    return (LINE_OVERHEAD + PER_BYTE * (_size(rec.format) + _size(rec.thread_name))
            + sum(PER_ARG + PER_BYTE * _size(a) for a in rec.args))


def record_key(r) -> tuple:
    """The fields the decoders must agree on (floats by repr: NaN != NaN)."""
    args = tuple(repr(a) if isinstance(a, float) else a for a in r.args)
    return (r.time, r.level, r.thread, r.thread_name, r.pid, r.format, args, r.file, r.line,
            r.message)


def _error_key(err: LogFileError | None):
    if err is None:
        return None
    return (type(err).__name__, getattr(err, "offset", None), str(err))


def _fast(data: bytes, splits: tuple[int, ...]):
    """(record keys, bounds, error) from the compiled decoder, fed in pieces."""
    dec = Decoder()
    recs = []
    err = None
    prev = 0
    try:
        for cut in sorted(min(c, len(data)) for c in splits) + [len(data)]:
            dec.feed(data[prev:cut])
            recs += dec.take_records()
            prev = cut
        dec.finish()
        recs += dec.take_records()
        err = dec.damage
    except LogFileError as e:
        err = e
    return [record_key(r) for r in recs], [text_bound(r) for r in recs], err


def _fast_text(data: bytes) -> bytes:
    dec = Decoder()
    try:
        dec.feed(data)
        dec.finish()
    except LogFileError:
        return b""
    return dec.take_text()


def _reference(data: bytes):
    recs = []
    err = None
    try:
        for r in read_reference(data):
            recs.append(r)
    except LogFileError as e:
        err = e
    text = "".join(format_text(r) + "\n" for r in recs).encode("utf-8", "backslashreplace")
    return [record_key(r) for r in recs], err, text


def _guard(kind: str, fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # anything but the package's errors is a finding
        raise Finding(kind, f"{type(e).__name__}: {e}") from e


_runner = CliRunner()


def run_cli(path: str, *args: str):
    """``nanolog <args> <path>`` in-process: (exit code, stdout bytes, stderr text)."""
    result = _runner.invoke(cli_main, [*args, path], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise Finding("cli-exception", f"{type(result.exception).__name__}: "
                                       f"{result.exception}")
    return result.exit_code, result.stdout_bytes, result.stderr


def check_cli(data: bytes, outcome_err, text: bytes, nrecords: int, tmpdir: str) -> None:
    path = os.path.join(tmpdir, "input.nlog")
    with open(path, "wb") as f:
        f.write(data)
    if outcome_err is None:
        expect = EXIT_OK
    elif isinstance(outcome_err, DamagedLogError):
        expect = EXIT_DAMAGED
    else:
        expect = EXIT_NOT_A_LOG
    for args in (("decode",), ("decode", "--format", "json")):
        code, out, err = run_cli(path, *args)
        if "Traceback" in err or code != expect:
            raise Finding("cli-exit", f"{' '.join(args)}: exit {code}, expected {expect}; "
                                      f"stderr {err[-300:]!r}")
        if args == ("decode",) and out != text:
            raise Finding("cli-text", f"CLI printed {len(out)} bytes, the decoder {len(text)}")
        lines = out.count(b"\n")
        if args[-1] == "json" and lines != nrecords:
            raise Finding("cli-json", f"{lines} JSON lines for {nrecords} records")


def check(data: bytes, *, splits: tuple[int, ...] = (), cli: bool = True,
          tmpdir: str | None = None) -> Outcome:
    """Check every property above for ``data``; raise ``Finding`` if one fails."""
    fast, bounds, fast_err = _guard("fast-decoder-exception", _fast, data, splits)
    text = _guard("fast-text-exception", _fast_text, data)
    ref, ref_err, ref_text = _guard("reference-exception", _reference, data)
    if _error_key(fast_err) != _error_key(ref_err):
        raise Finding("disagree-error", f"fast {_error_key(fast_err)} != reference "
                                        f"{_error_key(ref_err)}")
    if fast != ref:
        first = next((i for i, (a, b) in enumerate(zip(fast, ref)) if a != b),
                     min(len(fast), len(ref)))
        raise Finding("disagree-records", f"{len(fast)} vs {len(ref)} records, first "
                                          f"difference at {first}")
    if text != ref_text:
        raise Finding("disagree-text", f"{len(text)} vs {len(ref_text)} bytes of text")
    if len(text) > sum(bounds):
        raise Finding("text-too-large", f"{len(text)} bytes of text for {len(bounds)} "
                                        f"records (bound {sum(bounds)})")
    if cli:
        if tmpdir is None:
            with tempfile.TemporaryDirectory(prefix="nanolog_check_") as tmp:
                check_cli(data, fast_err, text, len(fast), tmp)
        else:
            check_cli(data, fast_err, text, len(fast), tmpdir)
    err = None if fast_err is None else f"{type(fast_err).__name__}: {fast_err}"
    return Outcome(len(fast), err, len(text))


def timed_check(data: bytes, **kw) -> tuple[Outcome, float]:
    t0 = time.perf_counter()
    out = check(data, **kw)
    return out, time.perf_counter() - t0

