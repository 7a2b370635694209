"""Smoke test of bench/proclets_bench.py: a cut-down --quick run (two state sizes, few
calls, one short pair of continuous runs) writes its JSON with every section measured or
skipped with a reason, and its correctness targets (no lost call, no double execution,
results in order) hold. Speed targets are NOT checked here: only that they are judged."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "proclets_bench.py"
sys.path.insert(0, str(REPO / "bench"))

import proclets_bench                              # noqa: E402

SIZES = [1024, 65536]
CALLS = 300


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("proclets_bench") / "proclets_bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--sizes", ",".join(map(str, SIZES)),
         "--reps", "3", "--latency-reps", "1", "--calls", str(CALLS), "--seconds", "1",
         "--continuous-reps", "1", "--no-ray", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=150)
    assert out.exists(), f"no JSON written; rc={proc.returncode}\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text())


def test_run_succeeds_and_prints_its_tables(quick):
    proc, report = quick
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("migration: from migrate()", "call latency, closed loop",
                  "continuous migration:", "proclets: runs valid"):
        assert title in proc.stdout
    assert "…" not in proc.stdout                  # no cell cut short
    assert report["quick"] is True and report["placement"]


def test_every_migration_case_is_measured(quick):
    _, report = quick
    assert sorted(report["migration"]) == sorted(f"{s}/{k}" for s in SIZES
                                                 for k in proclets_bench.KINDS)
    for key, case in report["migration"].items():
        assert case["errors"] == [], key
        assert case["n"] == 3
        # 10 us is below any migration (two round trips); 5 s would mean something hangs.
        assert 0.01 <= case["ms"]["min"] <= case["ms"]["median"] <= case["ms"]["max"] < 5000
        assert case["bytes"]["median"] >= case["size"] * 0.7, key   # roughly the size
        assert case["phases_ms"]["total"]["median"] <= case["ms"]["median"]


def test_latency_rows_and_their_ratio(quick):
    _, report = quick
    lat = report["latency"]
    assert {"ref", "microrpc"} <= set(lat["peers"])
    for peer, s in lat["peers"].items():
        assert s["merged"]["count"] == CALLS
        assert 1 <= s["merged"]["p50_us"] <= s["merged"]["p99_us"] < 1_000_000
    assert lat["ratio_to_plain"]["microrpc"]["median"] == 1.0
    assert lat["ratio_to_plain"]["ref"]["median"] > 0
    assert lat["skipped"]["ray"] == "skipped: --no-ray"
    for peer in set(proclets_bench.PEERS) - set(lat["peers"]):
        assert lat["skipped"][peer].startswith("skipped: "), peer


def test_continuous_runs_lose_nothing_and_run_nothing_twice(quick):
    _, report = quick
    moving, still = report["continuous"]["runs"]
    assert moving["migrate"] and not still["migrate"]
    assert moving["migrations"] >= 3 and moving["migration_errors"] == []
    for run in (moving, still):
        assert run["ok"] > 0
        assert run["lost"] == run["double_executions"] == run["order_violations"] == 0
        assert run["counter_total"] == run["ok"]
        assert set(run["client_excess"].values()) == {0}
        assert len(run["clients"]) == proclets_bench.CLIENTS
    # The faults were injected, so the checks above were checks of the retries.
    assert moving["dropped_replies"] + still["dropped_replies"] > 0
    assert report["continuous"]["throughput_ratio"]["median"] > 0


def test_targets_are_judged(quick):
    _, report = quick
    names = [t["name"] for t in report["targets"]]
    assert "every migration succeeds" in names
    judged = {t["name"]: t for t in report["targets"]}
    # 1 MiB and 16 MiB were not run: not measured, with the reason.
    assert judged["migration 16 MiB bytes median <= 40 ms"]["met"] is None
    assert judged["migration 1 KiB bytes median <= 1 ms"]["met"] is not None
    for t in report["targets"]:
        if t["met"] is False or t["met"] is None:
            assert t["why"], t


def test_bad_arguments_get_a_clear_error():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "big"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--sizes takes byte counts" in proc.stderr


def test_overlap_classification():
    # A call overlaps a migration when their times intersect; calls before, after and
    # between windows do not.
    reports = [{"client": 0, "calls": 4, "ok": 4, "errors": {}, "order_violations": 0,
                "dropped": 0, "duplicated": 0, "retries": 0, "redirects": 0,
                "starts": [0, 15, 40, 95], "ends": [10, 25, 60, 99]}]
    moves = {"windows": [(20, 30), (50, 90)], "source_total_ms": [0.01, 0.04], "errors": []}
    r = proclets_bench.analyze_continuous(reports, moves, 4, {"0": 4}, True)
    assert r["overlapped"] == 2                     # (15, 25) and (40, 60)
    assert r["lost"] == r["double_executions"] == 0
