"""bench/run.py, the main job's entry point: which suites a command line selects, that a
crashing suite fails the whole run and a missed target does not, and the closing summary.
The suites themselves are replaced by stubs here (they take minutes); the rpc suite has its
own smoke test."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import run as bench_run                            # noqa: E402
from reporting import SUMMARY_FILE_ENV             # noqa: E402


def test_no_suite_named_means_every_suite():
    # Python 3.11's argparse rejected the empty default when the positional had choices=.
    args = bench_run.parse_args([])
    assert args.suites == ["rpc", "nanolog", "overload", "hostile", "proclets"]
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
    assert "choose from rpc, nanolog, overload, hostile, proclets" in err


def _record_calls(monkeypatch, failing: set[str]) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_call(cmd, *args, env, **kwargs):
        calls.append(cmd)
        name = Path(cmd[1]).name
        Path(env[SUMMARY_FILE_ENV]).write_text(f"{name}: runs valid 1/1; targets met 0/1\n"
                                               "  NOT MET something: measured 2, needs <= 1\n")
        return 1 if name in failing else 0

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
    out, err = capsys.readouterr()
    assert "suites that crashed: nanolog" in err
    assert "nanolog CRASHED: exit 1; nanolog_bench.py: runs valid 1/1" in out


def test_missed_targets_alone_exit_0_and_every_summary_line_is_repeated(monkeypatch, capsys):
    _record_calls(monkeypatch, failing=set())
    assert bench_run.main(["--quick"]) == 0
    out = capsys.readouterr().out
    closing = out[out.index("== summary"):].splitlines()[1:]
    assert closing == [f"{script}: runs valid 1/1; targets met 0/1"
                       for script in bench_run.SUITES.values()]


def _stub_suites(monkeypatch, tmp_path, scripts: dict[str, str]) -> None:
    """Real suites replaced by tiny scripts, run as real child processes."""
    suites = {}
    for name, body in scripts.items():
        path = tmp_path / f"{name}.py"
        path.write_text(body)
        suites[name] = str(path)     # absolute: HERE / it is it
    monkeypatch.setattr(bench_run, "SUITES", suites)


GOOD_SUITE = f"""
import os, pathlib
line = "good: runs valid 2/3 (INVALID: a); targets met 1/2"
print(line)
pathlib.Path(os.environ[{SUMMARY_FILE_ENV!r}]).write_text(line + "\\n")
"""


def test_a_suite_that_raises_makes_run_exit_non_zero(monkeypatch, tmp_path, capsys):
    _stub_suites(monkeypatch, tmp_path, {
        "boom": "raise RuntimeError('the suite broke')\n", "good": GOOD_SUITE})
    assert bench_run.main(["boom", "good"]) == 1
    out, err = capsys.readouterr()
    assert "boom CRASHED: exit 1" in out
    assert "good: runs valid 2/3 (INVALID: a); targets met 1/2" in out
    assert "suites that crashed: boom" in err


def test_a_suite_that_exits_0_without_its_summary_counts_as_crashed(monkeypatch, tmp_path, capsys):
    _stub_suites(monkeypatch, tmp_path, {"silent": "print('a table')\n", "good": GOOD_SUITE})
    assert bench_run.main(["silent", "good"]) == 1
    assert "silent CRASHED: ended without its summary" in capsys.readouterr().out
    assert bench_run.main(["good"]) == 0


def test_the_script_run_as_a_command_parses_the_same_way():
    # Neither command line gets as far as running a suite.
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SUITE" in proc.stdout
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown suite 'nope'" in proc.stderr
