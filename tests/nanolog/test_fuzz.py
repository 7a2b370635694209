"""Hypothesis fuzzing of the decoders and the CLI with mutated logs (bounded for CI).

The mutations and the check are those of the long run (``fuzz/nanolog_fuzz.py``); here
hypothesis draws the random choices, so a failure shrinks to few mutations and is
replayed from its database. ``NANOLOG_FUZZ_EXAMPLES`` raises the number of inputs.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

import nanolog_craft as craft
import nanolog_mutate
from nanolog_check import Finding, check

EXAMPLES = int(os.environ.get("NANOLOG_FUZZ_EXAMPLES", 150))
# CPU seconds one input may take: the seeds are about 1 KB and every decoder is linear,
# so a mutant takes milliseconds; a quadratic path or a runaway width takes far longer.
PER_INPUT_S = 2.0

fuzz_settings = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])


def checked(data: bytes, splits=()):
    t0 = time.process_time()
    try:
        out = check(data, splits=splits)
    except Finding as f:
        raise AssertionError(f"{f} for input {data!r}") from None
    took = time.process_time() - t0
    assert took < PER_INPUT_S, f"{took:.2f} s for {len(data)} bytes: {data[:200]!r}"
    return out


@fuzz_settings
@given(rng=st.randoms(use_true_random=False),
       cuts=st.lists(st.integers(0, 1 << 20), max_size=3))
def test_mutated_logs_raise_only_package_errors_and_decoders_agree(fuzz_seeds, rng, cuts):
    data = nanolog_mutate.mutate(rng.choice(fuzz_seeds), rng, fuzz_seeds)
    checked(data, splits=tuple(cuts))


@st.composite
def interleaved_round(draw):
    """Several threads, several chunks each, all in one round: the merge's input."""
    nthreads = draw(st.integers(1, 6))
    chunks = []
    for _ in range(draw(st.integers(1, 12))):
        t = draw(st.integers(0, nthreads - 1))
        recs = [craft.record(1, draw(st.sampled_from((0, 0, 1, 5, 100))), craft.arg_int(i))
                for i in range(draw(st.integers(1, 5)))]
        base = 1_000_000_000 + draw(st.integers(0, 300))
        chunks.append(craft.records(*recs, number=t, rnd=draw(st.integers(0, 1)),
                                    base_ts=base))
    return craft.log(craft.session(), craft.dict_entry(1, "n=%d", 1),
                     *(craft.thread(t, 100 + t, f"t{t}") for t in range(nthreads)), *chunks)


@fuzz_settings
@given(data=interleaved_round())
def test_rounds_of_many_chunks_sort_like_the_reference(data):
    # Equal times and chunks that overlap in time: the heap merge must give the
    # reference's stable sort, record for record.
    assert checked(data).error is None


def test_the_long_run_catches_a_crash_and_a_hang_and_keeps_the_inputs(tmp_path):
    # fuzz/nanolog_fuzz.py checks inputs in a child; a defect planted at input 3 (SIGSEGV)
    # and 7 (no progress) must be saved as findings with the bytes that input has, and
    # the run must go on to the end.
    script = Path(__file__).resolve().parents[2] / "fuzz" / "nanolog_fuzz.py"
    out = tmp_path / "findings"
    proc = subprocess.run(
        [sys.executable, str(script), "--count", "40", "--workers", "1", "--hang", "1",
         "--report-every", "100", "--out", str(out), "--plant", "crash:3",
         "--plant", "hang:7"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    seeds = [p.read_bytes() for p in sorted((out / "seeds").glob("*.nlog"))]
    for kind, i in (("crash", 3), ("hang", 7)):
        assert (out / f"{kind}-{i}.nlog").read_bytes() == nanolog_mutate.mutant(
            seeds, f"nanolog:{i}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["findings"] == {"crash": 1, "hang": 1}
    assert summary["checked"] == 40


def test_the_long_runs_slowest_input_stays_fast(fuzz_seeds):
    # The 1,000,000-input run's one finding: input nanolog:714840 (seed 0 with a RECORDS
    # chunk repeated, 6,138 records, 110 KB) took 1.02 CPU s with the CLI on a machine
    # with a load of 4-5; replayed it takes 0.2 s, most of it the pure-Python reference
    # decoder. Rebuilt from fresh seeds (the same mutations), it must stay within the
    # per-input bound.
    data = nanolog_mutate.mutant(fuzz_seeds, "nanolog:714840")
    out = checked(data)
    assert out.records > 5000 and out.error is None
