"""A chunk cut short at the end of a file (the writer was killed mid-write, a copy stopped
early) gives up its whole records: both decoders take the same ones and put the damage at
the first record that is not whole (issue #12). The whole-file tests of truncation are in
test_decode.py; these cut one crafted chunk at every byte."""
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanolog
import nanolog_craft as c
from nanolog.format import F_PREFORMAT
from nanolog_check import check

# One RECORDS chunk of varied records (every argument kind, several bytes each), after a
# first chunk whose one record is whole in every cut. The records' byte boundaries are
# known, so the test can say which records each cut must give up.
RECORDS = [
    c.record(1, 0, c.arg_int(7)),
    c.record(2, 300, c.arg_str("10.0.0.1"), c.arg_float(12.5)),
    c.record(3, 5, c.arg_text("Decimal('2.25')")),
    c.record(2, 70_000, c.arg_str("na\u00efve"), c.arg_int(-2**40)),
    c.record(4, 1, c.arg_bytes(b"\x00\x01\x02"), c.arg_bigint("9" * 30), c.arg_none()),
    c.record(1, 2, c.arg_int(8)),
]
HEAD = c.log(c.session(), c.dict_entry(1, "ok %d", 1), c.dict_entry(2, "from %s took %.1f", 2),
             c.dict_entry(3, "p", 1, flags=F_PREFORMAT), c.dict_entry(4, "%r %d %s", 3),
             c.thread(), c.records(c.record(1, 0, c.arg_int(1)), rnd=0))
PAYLOAD_HEADER = c.varint(0) + c.varint(1) + c.varint(1_000_000_100)  # thread, round, ts
CUT = c.chunk(4, PAYLOAD_HEADER + b"".join(RECORDS))
DATA = HEAD + CUT
CHUNK_AT = len(HEAD)
FIRST_RECORD_AT = CHUNK_AT + 5 + len(PAYLOAD_HEADER)
RECORD_ENDS = [FIRST_RECORD_AT + sum(len(r) for r in RECORDS[:i + 1])
               for i in range(len(RECORDS))]


def _decode(decoder, data, tmp_path):
    path = tmp_path / "cut.nlog"
    path.write_bytes(data)
    got = []
    with pytest.raises(nanolog.DamagedLogError) as info:
        for r in decoder(path):
            got.append(r.message)
    return got, info.value


MESSAGES = ["ok 1", "ok 7", "from 10.0.0.1 took 12.5", "Decimal('2.25')",
            "from na\u00efve took -1099511627776.0",
            "b'\\x00\\x01\\x02' " + "9" * 30 + " None", "ok 8"]


def test_the_crafted_log_is_whole():
    assert [r.message for r in nanolog.read_reference(DATA)] == MESSAGES


@pytest.mark.parametrize("cut", range(CHUNK_AT + 1, len(DATA)))
def test_every_cut_of_a_chunk_keeps_its_whole_records(cut, tmp_path):
    data = DATA[:cut]
    ref, ref_err = _decode(nanolog.read_reference, data, tmp_path)
    fast, fast_err = _decode(nanolog.read, data, tmp_path)
    assert fast == ref
    assert (fast_err.offset, str(fast_err)) == (ref_err.offset, str(ref_err))
    assert "truncated: " in str(ref_err)
    whole = sum(end <= cut for end in RECORD_ENDS)
    assert ref == MESSAGES[:1 + whole]
    if cut < FIRST_RECORD_AT:       # not even the payload's header: the chunk is the damage
        assert ref_err.offset == CHUNK_AT
    else:                           # the first record not taken is the damage
        assert ref_err.offset == ([FIRST_RECORD_AT] + RECORD_ENDS)[whole]
    check(data, splits=(cut // 3, cut - 2), cli=cut % 7 == 0)  # text and CLI agree too


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(CHUNK_AT + 1, len(DATA) - 1),
       splits=st.lists(st.integers(0, len(DATA)), max_size=6))
def test_a_cut_chunk_fed_in_any_pieces_decodes_the_same(cut, splits):
    check(DATA[:cut], splits=tuple(splits), cli=False)


def test_a_cut_chunk_in_a_later_round_keeps_the_earlier_rounds_order(tmp_path):
    # Two threads in round 0, then round 1 cut: round 0 comes out merged, then round 1.
    data = c.log(c.session(), c.dict_entry(1, "r%d", 1), c.thread(0), c.thread(1, 101, "b"),
                 c.records(c.record(1, 0, c.arg_int(2)), rnd=0, base_ts=1_000_000_002),
                 c.records(c.record(1, 0, c.arg_int(1)), number=1, rnd=0,
                           base_ts=1_000_000_001),
                 c.records(c.record(1, 0, c.arg_int(3)), c.record(1, 1, c.arg_int(4)), rnd=1,
                           base_ts=1_000_000_003))
    cut = data[:-6]  # the CRC and the last record's argument
    assert check(cut).records == 3
    got, _ = _decode(nanolog.read, cut, tmp_path)
    assert got == ["r1", "r2", "r3"]


def test_a_log_of_one_chunk_cut_in_half_decodes_its_first_half(tmp_path):
    # The case: a short program's records all sit in one RECORDS chunk, and a
    # file cut in the middle of it used to decode to 0 records.
    path = tmp_path / "one.nlog"
    with nanolog.Logger(path, mode="w", flush_interval=60) as log:
        for i in range(2000):
            log.info("request %d from %s took %.1f us", i, "10.0.0.7", 12.5)
    data = path.read_bytes()
    assert len(data) > 20_000
    half = tmp_path / "half.nlog"
    half.write_bytes(data[:len(data) // 2])
    got = list(nanolog.read(half, strict=False))
    assert 900 <= len(got) < 1100  # about half of the 2000 records
    assert [r.message for r in got] == [f"request {i} from 10.0.0.7 took 12.5 us"
                                        for i in range(len(got))]
    proc = subprocess.run([sys.executable, "-m", "nanolog.cli", "decode", str(half)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1  # EXIT_DAMAGED
    assert proc.stdout.count("\n") == len(got)
    assert "truncated: chunk at offset" in proc.stderr and "Traceback" not in proc.stderr
    records = nanolog.read(half, strict=False)
    list(records)
    offset = records.damage.offset
    assert f"everything before offset {offset} was decoded" in proc.stderr
    # The start of the one torn record, or the cut itself when it fell between two records
    # (record sizes vary with the timestamps' varints: seen once in CI).
    assert 0 <= len(data) // 2 - offset < 100
