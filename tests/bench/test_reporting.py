"""What the benchmark suites print: the summary line each one ends with, tables that fold
instead of cutting cells, the overload suite's step cells and placement warning, and one
real (short) suite run read as a user at an 80-column terminal would read it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import hostile_bench                                 # noqa: E402
import overload_bench                                # noqa: E402
import reporting                                     # noqa: E402
from reporting import Target, summary_lines          # noqa: E402


def test_summary_of_a_clean_run_is_one_line():
    lines = summary_lines("demo", 4, [], [Target("a", True), Target("b", True)])
    assert lines == ["demo: runs valid 4/4; targets met 2/2"]


def test_summary_counts_and_names_invalid_runs_and_missed_targets():
    lines = summary_lines(
        "demo", 5, [("bw 2x rep 0", "generator fell behind"), ("none 4x rep 1", "lag")],
        [Target("goodput", False, "0.5, needs >= 0.9"), Target("p99", True, "0.8"),
         Target("step", None, "run too short")], note="shared core")
    assert lines[0] == ("demo: runs valid 3/5 (INVALID: bw 2x rep 0, none 4x rep 1); "
                        "targets met 1/2, 1 not measured; shared core")
    assert lines[1:] == ["  INVALID bw 2x rep 0: generator fell behind",
                         "  INVALID none 4x rep 1: lag",
                         "  NOT MET goodput: 0.5, needs >= 0.9",
                         "  not measured step: run too short"]


def test_emit_summary_hands_the_lines_to_run_py(tmp_path, monkeypatch):
    target = tmp_path / "summary"
    monkeypatch.setenv(reporting.SUMMARY_FILE_ENV, str(target))
    console = Console(file=open(os.devnull, "w"), width=80)
    reporting.emit_summary(console, ["demo: runs valid 1/1; targets met 0/0", "  detail"])
    assert target.read_text().splitlines() == ["demo: runs valid 1/1; targets met 0/0",
                                                "  detail"]


def test_a_spread_keeps_its_brackets_and_a_single_value_stands_alone():
    assert reporting.fmt_spread({"min": 0.064, "median": 0.066, "max": 0.07, "n": 3}, 3) \
        == "0.066 (0.064..0.070)"
    assert reporting.fmt_spread({"min": 2, "median": 2, "max": 2, "n": 3}, 0) == "2"
    assert reporting.fmt_spread(None) == "-"
    assert reporting.fmt_spread({"min": 14099.2, "median": 24119.4, "max": 36204.4}, None) \
        == "24,119 (14,099..36,204)"
    assert reporting.fmt_spread({"min": 27.4, "median": 41.8, "max": 49.04}, None) \
        == "41.8 (27.4..49.0)"
    assert reporting.fmt_spread({"min": .1, "median": .2, "max": .3, "n": 2}, 1, 100) \
        == "20.0 (10.0..30.0)"


def test_a_long_cell_folds_instead_of_being_cut():
    console = Console(width=30, record=True, file=open(os.devnull, "w"))
    long_name = "a-case-name-much-longer-than-thirty-columns-of-terminal"
    t = reporting.table("t", ["case"])
    t.add_row(long_name)
    console.print(t)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 30
    # Every character is still there, over several lines.
    assert long_name in "".join(text.split())


def test_columns_sets_the_width_even_when_piped(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert reporting.make_console().width == 80
    monkeypatch.delenv("COLUMNS")
    # pytest captures stdout: not a terminal.
    assert reporting.make_console().width == reporting.PIPED_WIDTH


@pytest.mark.parametrize("cpus, server, gen, warned", [
    ({0}, None, None, True),          # one CPU: the generator shares it, pinned or not
    ({0, 1}, 1, 1, True),             # pinned onto the same CPU
    ({0, 1}, 1, 0, False),
    ({0, 1, 2}, None, None, False),   # the scheduler can spread them
])
def test_overload_warns_when_the_generator_has_no_core_of_its_own(cpus, server, gen, warned):
    assert (overload_bench.placement_warning(cpus, server, gen) is not None) == warned


def _step(converge, why=None):
    return {"converge": {"slo_units": converge, "why": why}}


def test_step_cells_say_why_there_is_no_time():
    never = "never (no 5 good buckets in a row)"
    assert overload_bench.fmt_settle([_step(None, never)], "converge") == never
    assert overload_bench.fmt_settle([_step(None, "n/a (run too short)")] * 2,
                                     "converge") == "n/a (run too short)"
    assert overload_bench.fmt_settle([_step(12.0), _step(30.0), _step(None, never)],
                                     "converge") == f"21 (12..30) (1 of 3 {never})"
    assert overload_bench.fmt_settle([_step(12.0)], "converge") == "12"


def test_overload_convergence_says_why_when_it_cannot_be_computed():
    from overload import analysis
    short = analysis.converged_after([{"t_s": 0.0, "goodput": 1.0, "offered": 1,
                                       "p99_us": 1.0}], 0.0, 0.1, 1000.0, 0.01)
    assert short["slo_units"] is None and short["why"].startswith("n/a (run too short")


def test_hostile_misses_name_each_target_missed():
    run = {"server_survived": True, "beside": {"failed": 0, "calls": 10}, "p99_ratio": 1.5,
           "rss_above_idle_mib": 10.0, "next_call_ms": 5.0}
    assert hostile_bench.misses(run) == []
    run.update(p99_ratio=3.0, next_call_ms=None)
    assert hostile_bench.misses(run) == [
        "p99 beside / alone 3.00 > 2",
        f"next answer none within {hostile_bench.NEXT_CALL_BOUND_S:g} s"]


def test_a_real_suite_run_at_80_columns_cuts_no_cell(tmp_path):
    # The hostile suite on one attack for a fraction of a second: a few seconds in all.
    proc = subprocess.run(
        [sys.executable, str(BENCH / "hostile_bench.py"), "--attacks", "idle", "--seconds",
         "0.2", "--reps", "1", "--json", str(tmp_path / "h.json")],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="80"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "Lower is better in every column" in out
    assert "hostile: runs valid 1/1; targets met" in out
    assert "issue" not in out.lower()
    assert json.loads((tmp_path / "h.json").read_text())["summary"]["idle"]["misses"] is not None
