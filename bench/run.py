"""Run the project's benchmark suites, one after the other, each in its own process.

    python bench/run.py                 # every suite, full length
    python bench/run.py --quick         # every suite, short (a smoke run, a few minutes)
    python bench/run.py rpc nanolog     # only these suites

Each suite prints its own tables (with the peers it compares against, measured in the same
run), ends with a summary (runs valid, targets met, why not) and writes JSON to
bench/results/<suite>.json. At the end every suite's summary line is printed again.

Exit status: 1 when a suite crashed (exited non-zero, or ended without its summary);
targets that were not met are a measurement, not a crash, and leave it 0. Run from the
repository root, after `pip install '.[bench]'`; run as a script, not with `python -m`, so
that the installed package, not the source tree, is imported.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reporting import SUMMARY_FILE_ENV

HERE = Path(__file__).resolve().parent
SUITES = {
    "rpc": "rpc_bench.py",            # round-trip latency and pipelined throughput vs peers
    "nanolog": "nanolog_bench.py",    # logging cost vs stdlib, picologging, loguru, structlog
    "overload": "overload_bench.py",  # Breakwater vs no control, AQM-only, static limit
    "hostile": "hostile_bench.py",    # a well-behaved client beside each hostile peer
    "proclets": "proclets_bench.py",  # migration time, ref calls vs peers, moving counter
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``suites`` comes back as the names to run, in order, never empty."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # No ``choices=`` here: with nargs="*", argparse (3.11 and earlier) checks the empty
    # default list against the choices and rejects a bare `python bench/run.py`.
    parser.add_argument("suites", nargs="*", metavar="SUITE",
                        help=f"suites to run (default: all of {', '.join(SUITES)})")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    # Intermixed: `rpc --quick nanolog` names two suites, as a reader would expect.
    args = parser.parse_intermixed_args(argv)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite{'s' if len(unknown) > 1 else ''} "
                     f"{', '.join(map(repr, unknown))}: choose from {', '.join(SUITES)}")
    # Named twice is still run once, in the order first named.
    args.suites = list(dict.fromkeys(args.suites)) or list(SUITES)
    return args


def run_suite(name: str, quick: bool, workdir: Path) -> tuple[bool, str]:
    """Runs one suite in its own process: (crashed, its summary line or why it crashed)."""
    script = HERE / SUITES[name]
    if not script.exists():
        return True, f"{script.name} is missing"
    summary_file = workdir / f"{name}.summary"
    env = dict(os.environ, **{SUMMARY_FILE_ENV: str(summary_file)})
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    try:
        rc = subprocess.call(cmd, env=env)
    except OSError as exc:
        return True, f"could not start: {exc}"
    print(f"== {name}: exit {rc} after {time.monotonic() - started:.0f} s", flush=True)
    lines = summary_file.read_text().splitlines() if summary_file.exists() else []
    if rc != 0:
        return True, f"exit {rc}" + (f"; {lines[0]}" if lines else "")
    if not lines:
        return True, "ended without its summary (the report did not finish)"
    return False, lines[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, tuple[bool, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_run_") as tmp:
        for name in args.suites:
            results[name] = run_suite(name, args.quick, Path(tmp))
    print("== summary", flush=True)
    for name, (crashed, line) in results.items():
        print(f"{name} CRASHED: {line}" if crashed else line, flush=True)
    failed = [name for name, (crashed, _) in results.items() if crashed]
    if failed:
        print(f"suites that crashed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
