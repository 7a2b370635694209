"""bench/nanolog_bench.py's "nothing lost" check, which runs nanolog in a child process: the
child must import the installed nanolog, not a source tree in the working directory, and
the suite fails when the check does (speed targets only report)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import nanolog_bench                                # noqa: E402


def test_nothing_lost_child_imports_the_installed_nanolog(source_tree_in_cwd, tmp_path):
    # From the repository root, the `python -c` child used to import the source tree in
    # the working directory (no compiled modules after a non-editable install).
    out = nanolog_bench.nothing_lost(tmp_path, 4_000, nthreads=4)
    assert out.get("error") is None
    assert out["ok"] is True
    assert out["records"] == out["expected"] == 4_000


def test_a_lost_record_fails_the_suite_and_a_missed_speed_target_does_not():
    checks = {"enabled_median_ns <= 100 (gross)": False, "nothing lost": True}
    assert nanolog_bench.failed_required_checks({"checks": checks}) == []
    checks["nothing lost"] = False
    assert nanolog_bench.failed_required_checks({"checks": checks}) == ["nothing lost"]
