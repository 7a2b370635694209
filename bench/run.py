"""Run the project's benchmark suites, one after the other, each in its own process.

    python bench/run.py                 # every suite, full length
    python bench/run.py --quick         # every suite, short (a smoke run, a few minutes)
    python bench/run.py rpc nanolog     # only these suites

Each suite prints its own table (with the peers it compares against, measured in the same
run) and writes JSON to bench/results/<suite>.json. Run from the repository root, after
`pip install '.[bench]'`; run as a script, not with `python -m`, so that the installed
package, not the source tree, is imported.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {
    "rpc": "rpc_bench.py",            # round-trip latency and pipelined throughput vs peers
    "nanolog": "nanolog_bench.py",    # logging cost vs stdlib, picologging, loguru, structlog
    "overload": "overload_bench.py",  # Breakwater vs no control, AQM-only, static limit
    "hostile": "hostile_bench.py",    # a well-behaved client beside each hostile peer
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed = []
    for name in args.suites:
        script = HERE / SUITES[name]
        if not script.exists():
            print(f"== {name}: {script.name} is missing, skipped", flush=True)
            failed.append(name)
            continue
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.monotonic() - started:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"suites that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
