"""bench/run.py, the main job's entry point: which suites a command line selects, and that a
failing suite fails the whole run. The suites themselves are replaced by a stub here (they
take minutes); the rpc suite has its own smoke test."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import run as bench_run                            # noqa: E402


def test_no_suite_named_means_every_suite():
    # Python 3.11's argparse rejected the empty default when the positional had choices=.
    args = bench_run.parse_args([])
    assert args.suites == ["rpc", "nanolog", "overload", "hostile"]
    assert args.quick is False
    assert bench_run.parse_args(["--quick"]).suites == list(bench_run.SUITES)


def test_named_suites_run_in_the_order_given_and_once():
    assert bench_run.parse_args(["overload", "rpc"]).suites == ["overload", "rpc"]
    assert bench_run.parse_args(["nanolog", "--quick", "nanolog"]).suites == ["nanolog"]


def test_an_unknown_suite_is_a_usage_error_that_names_it_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_run.parse_args(["rpc", "tput", "nanolgo"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown suites 'tput', 'nanolgo'" in err
    assert "choose from rpc, nanolog, overload, hostile" in err


def _record_calls(monkeypatch, failing: set[str]) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_call(cmd, *args, **kwargs):
        calls.append(cmd)
        return 1 if Path(cmd[1]).name in failing else 0

    monkeypatch.setattr(bench_run.subprocess, "call", fake_call)
    return calls


def test_main_runs_every_suite_script_with_this_interpreter(monkeypatch):
    calls = _record_calls(monkeypatch, failing=set())
    assert bench_run.main(["--quick"]) == 0
    assert [Path(c[1]).name for c in calls] == list(bench_run.SUITES.values())
    for cmd in calls:
        assert cmd[0] == sys.executable and cmd[2:] == ["--quick"]
        assert Path(cmd[1]).parent == BENCH


def test_a_failing_suite_fails_the_run_but_the_others_still_run(monkeypatch, capsys):
    calls = _record_calls(monkeypatch, failing={"nanolog_bench.py"})
    assert bench_run.main([]) == 1
    assert len(calls) == len(bench_run.SUITES)
    assert "suites that failed: nanolog" in capsys.readouterr().err


def test_the_script_run_as_a_command_parses_the_same_way():
    # Neither command line gets as far as running a suite.
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SUITE" in proc.stdout
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown suite 'nope'" in proc.stderr
