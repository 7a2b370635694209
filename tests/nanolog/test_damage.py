"""Crafted files no writer makes: both decoders report them as damage, in the same words.

Each case is a checksum-valid file that lies about something (a DICT flag, an argument
tag, a clock, a width). The decoders must raise ``DamagedLogError`` at the same offset
with the same message, decode everything before it identically, print nothing they
did not read from a record, and the CLI must exit 1 without a traceback. The issue #10
probe's four findings are the first cases; the others came from reviewing the decoders
and from the fuzzers (``tests/nanolog/test_fuzz.py``, ``fuzz/nanolog_fuzz.py``).
"""
import io
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import nanolog
import nanolog_craft as c
import nanolog_mutate
from nanolog._decode import Decoder
from nanolog.cli import EXIT_DAMAGED, EXIT_INTERNAL, main as cli_main
from nanolog.format import F_PREFORMAT, F_VERBATIM, MAX_IDS, MAX_TIME, MAX_WIDTH, SESSION
from nanolog_check import check

CORPUS = Path(__file__).parent / "corpus"   # inputs the fuzzers found, kept as files
DICT_AT = 41                                 # offset of the first DICT chunk in one_record_log
RECORDS_AT = 87                              # ... and of its RECORDS chunk (one-byte format)


def _two_records(fmt, *args, flags=0, nargs=None):
    """A good record, then one of ``fmt``: the damage must not hide the record before it."""
    return c.log(c.session(), c.dict_entry(1, "ok %d", 1), c.thread(),
                 c.records(c.record(1, 0, c.arg_int(7))),
                 c.dict_entry(2, fmt, len(args) if nargs is None else nargs, flags=flags),
                 c.records(c.record(2, 5, *args), base_ts=1_000_000_010))


# name -> (file, words the damage message must contain)
CASES = {
    # 1. A preformatted entry whose records carry no text: the renderer read the tag and
    #    length of the next bytes in memory and printed heap bytes with exit 0.
    "preformatted without arguments": (
        c.one_record_log("x", nargs=0, flags=F_PREFORMAT), "preformatted but has 0 arguments"),
    "preformatted with an int": (
        c.one_record_log("x", c.arg_int(5), flags=F_PREFORMAT), "(int) does not fit"),
    "preformatted record cut short": (
        c.log(c.session(), c.dict_entry(1, "x", 1, flags=F_PREFORMAT), c.thread(),
              c.records(c.record(1, 0))), "record runs past the end of the chunk"),
    "verbatim with arguments": (
        c.one_record_log("x", c.arg_int(1), flags=F_VERBATIM), "verbatim but has 1 arguments"),
    "both flags": (c.one_record_log("x", c.arg_text("t"), flags=3), "unknown flags 0x3"),
    "unknown flag": (c.one_record_log("%d", c.arg_int(1), flags=0x80), "unknown flags 0x80"),
    # 2. Values Python's % (or the decoders' own C types) rejected with a bare error.
    "invalid UTF-8 in a text argument": (
        c.one_record_log("%s", c.arg_text(b"\xff\xfe")), "invalid UTF-8"),
    "invalid UTF-8 in a surrogate str": (
        c.one_record_log("%s", c.arg_surr(b"a\xffb")), "invalid UTF-8"),
    "%d given a str": (c.one_record_log("%d", c.arg_str("abc")), "(str) does not fit"),
    "%c given 2**40": (c.one_record_log("%c", c.arg_int(2**40)), "(int) does not fit"),
    "%d given inf": (c.one_record_log("%d", c.arg_float(float("inf"))), "(float) does not fit"),
    "%i given nan": (c.one_record_log("%i", c.arg_float(float("nan"))), "(float) does not fit"),
    "%x given a float": (c.one_record_log("%x", c.arg_float(1.5)), "(float) does not fit"),
    "%e given a big int": (c.one_record_log("%e", c.arg_bigint("9" * 400)),
                           "(big int) does not fit"),
    "bad big-int digits": (c.one_record_log("%d", c.arg_bigint("12a")), "invalid big-int"),
    "SESSION monotonic clock >= 2**63": (
        c.one_record_log("hi %d", c.arg_int(1), mono=2**63, real=2**63 + 5),
        "clock reading past"),
    "SESSION real clock >= 2**63": (
        c.one_record_log("hi", real=2**64 - 1), "clock reading past"),
    "record time >= 2**63": (
        c.one_record_log("hi", base_ts=MAX_TIME + 1), "timestamp past"),
    "record delta wraps 64 bits": (
        c.log(c.session(), c.dict_entry(1, "hi", 0, flags=F_VERBATIM), c.thread(),
              c.records(c.record(1, 2**64 - 1), base_ts=10)), "timestamp past"),
    "wall-clock time >= 2**63": (
        c.one_record_log("hi", mono=0, real=MAX_TIME - 5, base_ts=10), "wall-clock time past"),
    # 3. A width that printed 100 MB per record (9 s and a MemoryError in the probe).
    "width 100000000": (c.one_record_log("%100000000d", c.arg_int(1)),
                        f"a width or precision over {MAX_WIDTH}"),
    "precision over the limit": (c.one_record_log(f"%.{MAX_WIDTH + 1}f", c.arg_float(1.0)),
                                 f"a width or precision over {MAX_WIDTH}"),
    # Entries no writer makes.
    "mapping key without the preformat flag": (
        c.one_record_log("%(a)s", c.arg_str("x"), nargs=1), "a mapping key"),
    "star width without the preformat flag": (
        c.one_record_log("%*d", c.arg_int(1), nargs=1), "'*' width"),
    "unknown conversion": (c.one_record_log("%k", c.arg_int(1), nargs=1), "conversion '%k'"),
    "a width in non-ASCII digits": (
        c.one_record_log("%\u0663d", c.arg_int(1), nargs=1), "conversion"),
    "argument count differs from the format": (
        c.one_record_log("%d %d", c.arg_int(1), nargs=1), "2 conversions, DICT says 1"),
    "too many arguments": (c.one_record_log("%s", nargs=256), "256 arguments (limit 255)"),
    "format id out of range": (
        c.log(c.session(), c.dict_entry(MAX_IDS, "x", 0, flags=F_VERBATIM)), "out of range"),
    "unknown tag": (c.one_record_log("%s", bytes([10])), "unknown argument tag 10"),
    "varint with bits past 64": (
        c.log(c.session(), c.chunk(3, b"\x80" * 9 + b"\x81" + b"\x01" + c.text("t"))),
        "varint exceeds 64 bits"),
    "DICT cut after its id": (c.log(c.session(), c.chunk(2, b"\x01\x14")),
                              "field of 2 bytes runs past"),
    "float cut short": (c.log(c.session(), c.dict_entry(1, "%f", 1), c.thread(),
                              c.records(c.record(1, 0, b"\x04\x00\x00"))),
                        "field of 8 bytes runs past"),
}

# The damage at the second RECORDS chunk of _two_records, with the good record before it.
TWO = {
    "two records, %d given bytes": (_two_records("%d", c.arg_bytes(b"x")), "does not fit"),
    "two records, preformatted without text": (
        _two_records("p", nargs=0, flags=F_PREFORMAT), "preformatted but has 0"),
}


def _outcome(decoder, data, tmp_path):
    path = tmp_path / "case.nlog"
    path.write_bytes(data)
    recs = []
    with pytest.raises(nanolog.DamagedLogError) as info:
        for r in decoder(path):
            recs.append((r.time, r.message, r.thread, r.pid, r.line))
    return recs, info.value


@pytest.mark.parametrize("name", sorted(CASES) + sorted(TWO))
def test_both_decoders_report_the_same_damage(name, tmp_path):
    data, words = {**CASES, **TWO}[name]
    fast, fast_err = _outcome(nanolog.read, data, tmp_path)
    ref, ref_err = _outcome(nanolog.read_reference, data, tmp_path)
    assert words in str(ref_err)
    assert (fast_err.offset, str(fast_err)) == (ref_err.offset, str(ref_err))
    assert fast == ref
    if name in TWO:
        assert [m for _, m, *_ in fast] == ["ok 7"]
    check(data)  # and the text, the bounds and the CLI (which must exit 1)


def test_heap_bytes_are_never_printed(tmp_path):
    # Issue 1 as the probe saw it: `nanolog decode` printed the bytes after the record.
    data = CASES["preformatted without arguments"][0]
    path = tmp_path / "probe.nlog"
    path.write_bytes(data)
    result = CliRunner().invoke(cli_main, ["decode", str(path)])
    assert result.exit_code == EXIT_DAMAGED and result.stdout_bytes == b""
    assert "preformatted but has 0 arguments" in result.stderr
    assert "Traceback" not in result.output


def test_decoding_stops_at_damage_in_the_text_renderer_too():
    data, _ = TWO["two records, %d given bytes"]
    out = io.BytesIO()
    dec = Decoder()
    dec.feed(data)
    dec.finish()
    out.write(dec.take_text())
    assert out.getvalue().endswith(b"ok 7\n") and out.getvalue().count(b"\n") == 1
    assert isinstance(dec.damage, nanolog.DamagedLogError)


def test_a_width_at_the_limit_is_still_deferred_and_formatted(tmp_path):
    fmt = f"%{MAX_WIDTH}d|%.{MAX_WIDTH}f"
    data = c.one_record_log(fmt, c.arg_int(7), c.arg_float(1e308))
    out = check(data)
    assert out.error is None and out.records == 1
    msg = next(iter(nanolog.read_reference(data))).message
    assert msg == fmt % (7, 1e308)


def test_identical_duplicate_entries_keep_the_first_file_and_line(tmp_path):
    # The reference used to take the second entry's file and line, the C decoder the first.
    data = c.log(c.session(), c.dict_entry(1, "x %d", 1, line=10), c.thread(),
                 c.dict_entry(1, "x %d", 1, file="other.py", line=20),
                 c.records(c.record(1, 0, c.arg_int(1))))
    assert check(data).error is None
    assert [(r.file, r.line) for r in nanolog.read_reference(data)] == [("app.py", 10)]
    path = tmp_path / "dup.nlog"
    path.write_bytes(data)
    assert [(r.file, r.line) for r in nanolog.read(path)] == [("app.py", 10)]


def test_a_record_in_the_second_before_the_epoch_gets_its_date(tmp_path):
    # Found by the long fuzz run: the text renderer took second -1 for "no second
    # cached yet" and printed the record without its date.
    data = c.one_record_log("hi", flags=F_VERBATIM, mono=2_000_000_000, real=0,
                            base_ts=1_000_000_007)
    dec = Decoder()
    dec.feed(data)
    dec.finish()
    text = dec.take_text()
    [r] = nanolog.read_reference(data)
    assert r.time == -999_999_993
    assert text == (nanolog.reference.format_text(r) + "\n").encode()
    assert text[:4] in (b"1969", b"1970")  # the local date of that second
    check(data)


def test_ids_past_32_bits_read_the_same_in_both_decoders(tmp_path):
    # Thread ids, pids and line numbers went through a C int in the compiled decoder.
    data = c.log(c.chunk(1, SESSION.pack(1_000_000_000, 1_700_000_000_000_000_000, 2**32 - 1)),
                 c.dict_entry(1, "x", 0, flags=F_VERBATIM, line=2**63), c.thread(0, 2**40, "t"),
                 c.records(c.record(1, 0)))
    assert check(data).error is None
    path = tmp_path / "big.nlog"
    path.write_bytes(data)
    [r] = nanolog.read(path)
    assert (r.pid, r.thread, r.line) == (2**32 - 1, 2**40, 2**63)


# ---- time: linear in the input ---------------------------------------------------------
# These measure time on purpose: what they guard is complexity. CPU time, so a busy
# machine does not fail them; each bound is over ten times what the linear code takes on
# the project's 2-core VM and far below what the quadratic code took.

def _decode_seconds(data: bytes) -> tuple[float, int]:
    t0 = time.process_time()
    dec = Decoder()
    dec.feed(data)
    dec.finish()
    n = dec.take_text().count(b"\n")
    return time.process_time() - t0, n


def test_one_chunk_repeated_in_a_round_decodes_in_linear_time():
    # Issue 4: the probe's 2.7 MB file (one chunk, K = 6,000 copies) took 24.7 s; the
    # merge compared every chunk of the round for every record. This 1 MB one took 8.3 s
    # before the heap merge and takes 0.08 s with it.
    chunk = c.records(*[c.record(1, 10, c.arg_int(i)) for i in range(40)])
    data = c.log(c.session(), c.dict_entry(1, "n %d", 1), c.thread(), chunk * 6000)
    took, lines = _decode_seconds(data)
    assert lines == 6000 * 40
    assert took < 2.0, f"{took:.2f} s"


def test_many_sessions_after_a_large_id_are_cheap():
    # A SESSION cleared the whole id table (sized by the largest id, up to 16 M entries);
    # 2,000 such SESSIONs took tens of seconds. Now it clears the ids it defined.
    data = c.log(c.session(), c.dict_entry(MAX_IDS - 1, "x", 0, flags=F_VERBATIM),
                 *[c.session() for _ in range(2000)])
    took, _ = _decode_seconds(data)
    assert took < 2.0, f"{took:.2f} s"


def test_a_giant_round_fed_in_small_blocks_stays_linear():
    # Every feed() hands out the complete rounds; the incomplete one used to be copied
    # and re-indexed each time, so feeding one big round in N blocks cost O(N * round).
    chunk = c.records(*[c.record(1, 1, c.arg_int(i)) for i in range(50)])
    data = c.log(c.session(), c.dict_entry(1, "n %d", 1), c.thread(), chunk * 4000)
    t0 = time.process_time()
    dec = Decoder()
    step = 4096
    for i in range(0, len(data), step):
        dec.feed(data[i:i + step])
        dec.take_text()
    dec.finish()
    assert dec.take_text().count(b"\n") == 4000 * 50
    took = time.process_time() - t0
    assert took < 3.0, f"{took:.2f} s"


# ---- the CLI ------------------------------------------------------------------------------

class _BrokenDecoder(Decoder):
    def take_text(self):
        raise RuntimeError("a bug")


def test_cli_turns_its_own_bugs_into_exit_5_without_a_traceback(tmp_path, monkeypatch):
    path = tmp_path / "ok.nlog"
    path.write_bytes(c.one_record_log("hi", flags=F_VERBATIM))
    monkeypatch.setattr("nanolog.cli.Decoder", _BrokenDecoder)
    result = CliRunner().invoke(cli_main, ["decode", str(path)])
    assert result.exit_code == EXIT_INTERNAL
    assert "internal error (RuntimeError: a bug)" in result.stderr
    assert "Traceback" not in result.output
    monkeypatch.setenv("NANOLOG_DEBUG", "1")
    result = CliRunner().invoke(cli_main, ["decode", str(path)])
    assert result.exit_code == EXIT_INTERNAL and "Traceback" in result.stderr


def test_cli_output_it_cannot_open_is_an_io_error(tmp_path):
    path = tmp_path / "ok.nlog"
    path.write_bytes(c.one_record_log("hi", flags=F_VERBATIM))
    result = CliRunner().invoke(cli_main, ["decode", "-o", str(tmp_path / "no" / "x.txt"),
                                           str(path)])
    assert result.exit_code == 4 and "Traceback" not in result.output


# ---- the corpus: every file both decoders and the CLI must agree on -----------------------

def test_corpus_of_damaged_files(fuzz_seeds):
    """Both decoders and the CLI over: the crafted cases, the fuzzers' findings kept in
    tests/nanolog/corpus/, and 300 fixed mutants of the seed logs."""
    inputs = [data for data, _ in CASES.values()] + [data for data, _ in TWO.values()]
    inputs += [p.read_bytes() for p in sorted(CORPUS.glob("*.nlog"))]
    inputs += [nanolog_mutate.mutant(fuzz_seeds, f"corpus:{i}") for i in range(300)]
    kinds = {"whole": 0, "damaged": 0}
    for data in inputs:
        out = check(data)  # raises Finding on any disagreement, leak or traceback
        kinds["damaged" if out.error else "whole"] += 1
    assert kinds["damaged"] > 100 and kinds["whole"] > 10, kinds
