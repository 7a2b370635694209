"""Smoke test of bench/rpc_bench.py: run its --quick mode on a tiny count and check that
the JSON it writes has every case, each with sane numbers, or an explicit skip reason
(peer missing), never a silent gap. Speed targets are NOT checked here: only that the
suite measures and reports them."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "rpc_bench.py"
CALLS = 300
PLACEMENT = "split"  # the only placement where every case (spin included) runs


def _run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    # Run as a script from the repo root, the way bench/run.py calls it.
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _case_names() -> list[str]:
    proc = _run("--list-cases", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t")[0] for line in proc.stdout.splitlines() if line.strip()]


CASE_NAMES = _case_names()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpc_bench") / "rpc_bench.json"
    proc = _run("--quick", "--calls", str(CALLS), "--tput-seconds", "0.3",
                "--placements", PLACEMENT, "--json", str(out))
    assert out.exists(), f"no JSON written; rc={proc.returncode}\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text())


def test_run_succeeds_and_prints_tables(quick):
    proc, report = quick
    assert proc.returncode == 0, f"failures: {report['failures']}\n{proc.stderr[-3000:]}"
    assert report["failures"] == []
    assert "closed loop" in proc.stdout
    assert "Targets, each at the placement it is judged at" in proc.stdout
    assert "rpc: runs valid" in proc.stdout
    assert "…" not in proc.stdout          # no cell cut short
    assert report["meta"]["calls"] == CALLS
    assert report["meta"]["placements"] == [PLACEMENT]


def test_every_case_is_reported(quick):
    _, report = quick
    assert len(CASE_NAMES) >= 15
    assert sorted(report["placements"][PLACEMENT]["cases"]) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_has_sane_numbers(quick, name):
    _, report = quick
    pl = report["placements"][PLACEMENT]
    case = pl["cases"][name]
    if "skipped" in case:
        assert case["skipped"].strip(), "a skip must say why"
        pytest.skip(f"{name}: {case['skipped']}")
    (rnd,) = case["rounds"]
    assert rnd["status"] == "ok", rnd.get("error")
    assert 0 <= rnd["noise"]["other_cpu"] < 64 and 0 <= rnd["noise"]["steal_cpu"] < 64
    if PLACEMENT == "split":
        assert rnd["affinity"]["server"] == [1]
        assert rnd["affinity"].get("client", [0]) == [0]
    if case["kind"] == "latency":
        assert rnd["count"] == CALLS and not rnd["truncated"]
        # 0.5 us is below any loopback round trip; 50 ms would mean something is broken.
        assert 0.5 <= rnd["p50_us"] <= 50_000
        assert rnd["p50_us"] <= rnd["p99_us"] <= rnd["p999_us"] <= rnd["max_us"] * 1.001
        assert case["summary"]["p50_us"]["median"] == rnd["p50_us"]
        assert case["summary"]["merged_histogram"]["count"] == CALLS
        ratio = pl["ratios"]["p50_vs_zmq_reqrep"][name]["median"]
        assert math.isfinite(ratio) and ratio > 0
        assert pl["ratios"]["p99_over_p50"][name]["median"] >= 1.0
    else:
        assert rnd["completed"] > 0 and rnd["elapsed_ns"] > 0
        assert 100 <= rnd["rate"] <= 1e8
        ratio = pl["ratios"]["throughput_vs_zmq_dealer_router"][name]["median"]
        assert math.isfinite(ratio) and ratio > 0


def test_targets_are_judged_consistently(quick):
    _, report = quick
    pl = report["placements"][PLACEMENT]
    measured = {n for n, c in pl["cases"].items() if "skipped" not in c}
    # Each target needs these cases; when they all ran, the target must have a value.
    needs = {
        "sync-vs-zmq": {"microrpc-raw-block-tcp", "zmq-reqrep-tcp"},
        "sync-vs-grpc": {"microrpc-raw-block-tcp", "grpc-unary-raw"},
        "spin-vs-c": {"microrpc-raw-spin-tcp", "c-tcp-spin"},
        "p99": {"microrpc-raw-block-tcp"},
        "tput-py": {"tput-microrpc-py", "tput-zmq-dealer-router"},
        "tput-c": {"tput-microrpc-c", "tput-zmq-dealer-router"},
        "tput-aio": {"tput-microrpc-aio", "tput-zmq-dealer-router"},
        "callback": {"microrpc-callback-raw-adaptive-tcp", "microrpc-raw-adaptive-tcp"},
        "msgpack": {"microrpc-raw-block-tcp", "microrpc-msgpack-block-tcp"},
        "once-p50": {"microrpc-once-raw-adaptive-tcp", "microrpc-raw-adaptive-tcp"},
        "once-tput": {"tput-microrpc-once", "tput-microrpc-py"},
    }
    assert {t["id"] for t in pl["targets"]} == set(needs)
    for t in pl["targets"]:
        if needs[t["id"]] <= measured:
            assert t["value"] is not None, t
        if t["value"] is None:
            assert t["verdict"] == "n/a", t
            continue
        met = (t["value"] <= t["limit"] if t["at_most"] else t["value"] >= t["limit"])
        assert t["at_most"] == (t["id"] not in ("tput-py", "tput-c", "tput-aio", "once-tput"))
        assert t["verdict"] == ("met" if met else "not met"), t


def test_noise_meters_reported(quick):
    _, report = quick
    noise = report["noise"]
    assert noise["wall_s"] > 0
    assert 0 <= noise["other_cpu"] < 64 and 0 <= noise["steal_cpu"] < 64
    assert noise["noisy"] == (noise["other_cpu"] > 0.1)


def test_bad_arguments_get_a_clear_error():
    proc = _run("--placements", "nowhere", timeout=60)
    assert proc.returncode == 2 and "unknown placement" in proc.stderr
    proc = _run("--cases", "no-such-case", timeout=60)
    assert proc.returncode == 2 and "matches none" in proc.stderr
