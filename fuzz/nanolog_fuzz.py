#!/usr/bin/env python
"""Long-run fuzzing of the nanolog decoders and CLI: millions of mutated logs.

    python fuzz/nanolog_fuzz.py [--count 1000000] [--workers 2] [--seed S] [--out DIR]

Input ``i`` is ``nanolog_mutate.mutant(seeds, f"{seed}:{i}")``: mutations of a few small
seed logs (bit flips, interesting varints, truncations, splices, repeated chunks, crafted
DICT entries, records and clocks). Each is checked by ``nanolog_check.check`` (only the
package's errors, both decoders agree on records, text and errors, text bounded by the
input; a quarter of the inputs are fed to the incremental decoder in pieces); every
``--cli-every``-th input also goes through ``nanolog decode`` (text and JSON) in-process.

Inputs are checked in worker processes, so a segfault or a hang is seen from outside: the
parent notes which input each worker is on, and when a worker dies by a signal or makes
no progress for ``--hang`` seconds, the parent rebuilds that input (the same key gives
the same bytes), saves it as a finding, kills the worker if it still runs, and starts a
new one after it. Findings are written to ``--out`` (``<kind>-<i>.nlog`` plus a line in
``findings.txt``); ``--out/seeds/`` keeps the seeds, so a finding can be rebuilt with
``--replay I``. Progress (inputs/s, findings by kind, slow inputs) is printed every
``--report-every`` seconds and a summary at the end (also ``summary.json``).

Exit status: 0 if nothing was found, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nanolog_check  # noqa: E402
import nanolog_mutate  # noqa: E402

STAT_EVERY = 500  # a worker reports its outcome counts after this many inputs
TICK = 0.5        # seconds between the parent's looks at its workers


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _key(seed: str, i: int) -> str:
    return f"{seed}:{i}"


def _worker_main(*args):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is not ours
    _worker(*args)


def _planted(what: str) -> None:
    """A defect on purpose (``--plant``), to show the harness catches it."""
    if what == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    while what == "hang":
        time.sleep(1)


def _worker(w, seeds, seed, start, stride, count, cli_every, slow, progress, results, plant,
            scratch):
    """Check inputs start, start + stride, ... < count; report through ``results``."""
    outcomes = Counter()
    tmp = os.path.join(scratch, f"w{w}")  # where the CLI reads its input file
    os.makedirs(tmp, exist_ok=True)
    n = 0
    for i in range(start, count, stride):
        progress[w] = i
        if i in plant:
            _planted(plant[i])
        data = nanolog_mutate.mutant(seeds, _key(seed, i))
        # CPU time, not wall time: a nice'd run on a shared machine waits for the CPU.
        t0 = time.process_time()
        try:
            out = nanolog_check.check(data, splits=nanolog_mutate.splits(data, _key(seed, i)),
                                      cli=i % cli_every == 0, tmpdir=tmp)
            outcomes["damaged" if out.error else "whole"] += 1
        except nanolog_check.Finding as f:
            results.put(("finding", w, i, f.kind, f.detail[:500], 0.0))
            outcomes["finding"] += 1
        dt = time.process_time() - t0
        if dt > slow:
            results.put(("finding", w, i, "slow", f"{dt:.2f} CPU s, {len(data)} bytes", dt))
        n += 1
        if n % STAT_EVERY == 0:
            results.put(("stats", w, n, dict(outcomes), i, 0.0))
            outcomes.clear()
            n = 0
    results.put(("stats", w, n, dict(outcomes), i, 0.0))
    results.put(("done", w, count, None, None, 0.0))


class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_dir = self.out / "seeds"
        if args.replay is not None or (seed_dir.is_dir() and args.reuse_seeds):
            self.seeds = [p.read_bytes() for p in sorted(seed_dir.glob("*.nlog"))]
        else:
            self.seeds = nanolog_mutate.seed_logs()
            seed_dir.mkdir(exist_ok=True)
            for old in seed_dir.glob("*.nlog"):
                old.unlink()
            for k, s in enumerate(self.seeds):
                (seed_dir / f"seed{k}.nlog").write_bytes(s)
        self.plant = {int(i): what for what, i in (x.split(":") for x in args.plant)}
        self.ctx = mp.get_context("fork")
        self.results = self.ctx.Queue()
        self.progress = self.ctx.Array("q", args.workers, lock=False)
        self.procs = {}
        # worker -> (index, parent ticks it has been seen there): counted in ticks, not
        # wall time, so a run that was paused (SIGSTOP/SIGCONT) or starved of CPU as a
        # whole does not take its own pause for a hang.
        self.last_move = {}
        self.done_workers = set()
        self.reported = {}    # worker -> the last input its statistics covered
        self.checked = 0
        self.outcomes = Counter()
        self.findings = Counter()
        self.slowest = 0.0

    def start(self, w: int, first: int) -> None:
        self.progress[w] = -1
        p = self.ctx.Process(target=_worker_main, daemon=True, args=(
            w, self.seeds, self.args.seed, first, self.args.workers, self.args.count,
            self.args.cli_every, self.args.slow, self.progress, self.results,
            self.plant, self.scratch))
        p.start()
        self.procs[w] = p
        self.last_move[w] = (-1, 0)
        self.reported[w] = first - self.args.workers

    def save(self, kind: str, i: int, detail: str) -> None:
        data = nanolog_mutate.mutant(self.seeds, _key(self.args.seed, i))
        (self.out / f"{kind}-{i}.nlog").write_bytes(data)
        with open(self.out / "findings.txt", "a") as f:
            f.write(f"{kind}\t{i}\t{_key(self.args.seed, i)}\t{detail}\n")
        self.findings[kind] += 1
        print(f"FINDING {kind} at input {i}: {detail}", flush=True)

    def drain(self) -> None:
        while True:
            try:
                what, w, n, a, b, dt = self.results.get_nowait()
            except queue.Empty:
                return
            if what == "stats":
                self.checked += n
                self.outcomes.update(a)
                self.reported[w] = b
            elif what == "finding":
                self.slowest = max(self.slowest, dt)
                self.save(a, n, b)
            elif what == "done":
                self.done_workers.add(w)

    def lost(self, w: int, i: int) -> None:
        """Count the inputs a stopped worker checked since its last report, up to ``i``
        (their outcomes are unknown; the input it stopped on is a finding)."""
        self.checked += (i - self.reported[w]) // self.args.workers

    def watch(self) -> None:
        """Restart a worker that died by a signal or stopped making progress."""
        for w, p in list(self.procs.items()):
            if w in self.done_workers:
                continue
            i = self.progress[w]
            if not p.is_alive():
                self.drain()
                if w in self.done_workers:
                    continue
                code = p.exitcode
                self.save("crash", i, f"worker exited with {code} "
                                      f"({'signal ' + str(-code) if code < 0 else 'status'})")
                self.lost(w, i)
                self.start(w, i + self.args.workers)
                continue
            seen, ticks = self.last_move[w]
            if i != seen:
                self.last_move[w] = (i, 0)
                continue
            self.last_move[w] = (i, ticks + 1)
            if i >= 0 and (ticks + 1) * TICK > self.args.hang:
                p.kill()  # our own child, by its handle
                p.join(10)
                self.save("hang", i, f"no progress for {(ticks + 1) * TICK:.0f} s")
                self.lost(w, i)
                self.start(w, i + self.args.workers)

    def report(self, t0: float) -> None:
        el = time.monotonic() - t0
        rate = self.checked / el if el else 0.0
        left = (self.args.count - self.checked) / rate if rate else float("inf")
        print(f"[{el:7.0f} s] {self.checked:,} inputs, {rate:,.0f}/s, "
              f"whole {self.outcomes['whole']:,}, damaged {self.outcomes['damaged']:,}, "
              f"findings {dict(self.findings) or 0}, ETA {left / 60:.0f} min", flush=True)

    def run(self) -> int:
        # Stopping the run by its pid (SIGTERM) ends it like Ctrl-C: workers stopped, the
        # summary written. (A run started with '&' by a script ignores SIGINT.)
        signal.signal(signal.SIGTERM, _interrupt)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="nanolog_fuzz_", dir=shm) as self.scratch:
            return self._run()

    def _run(self) -> int:
        t0 = time.monotonic()
        last_report = t0
        for w in range(self.args.workers):
            self.start(w, w)
        try:
            while len(self.done_workers) < self.args.workers:
                time.sleep(TICK)
                self.drain()
                self.watch()
                if time.monotonic() - last_report >= self.args.report_every:
                    self.report(t0)
                    last_report = time.monotonic()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            for p in self.procs.values():
                if p.is_alive():
                    p.kill()
        for p in self.procs.values():
            p.join(10)
        self.drain()
        self.report(t0)
        el = time.monotonic() - t0
        summary = {"count": self.args.count, "checked": self.checked, "seconds": round(el, 1),
                   "inputs_per_s": round(self.checked / el, 1) if el else None,
                   "workers": self.args.workers, "cli_every": self.args.cli_every,
                   "seed": self.args.seed, "outcomes": dict(self.outcomes),
                   "findings": dict(self.findings), "slowest_s": round(self.slowest, 3)}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary), flush=True)
        return 1 if self.findings else 0


def replay(args) -> int:
    """Check one input in this process and print what happens."""
    run = Run(args)
    data = nanolog_mutate.mutant(run.seeds, _key(args.seed, args.replay))
    path = run.out / f"replay-{args.replay}.nlog"
    path.write_bytes(data)
    print(f"input {args.replay}: {len(data)} bytes, written to {path}")
    out, dt = nanolog_check.timed_check(
        data, splits=nanolog_mutate.splits(data, _key(args.seed, args.replay)))
    print(f"{out} in {dt:.3f} s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs to check")
    ap.add_argument("--workers", type=int, default=2, help="checking processes")
    ap.add_argument("--seed", default="nanolog", help="key prefix of the inputs")
    ap.add_argument("--cli-every", type=int, default=10,
                    help="also run the CLI on every N-th input (it costs ~3 ms)")
    ap.add_argument("--slow", type=float, default=1.0,
                    help="CPU seconds that make an input slow")
    ap.add_argument("--hang", type=float, default=30.0,
                    help="seconds without progress after which a worker counts as hung")
    ap.add_argument("--report-every", type=float, default=30.0, help="seconds between reports")
    ap.add_argument("--out", default=str(HERE / "findings"), help="where findings go")
    ap.add_argument("--reuse-seeds", action="store_true",
                    help="use the seeds already in OUT/seeds (to repeat a run)")
    ap.add_argument("--replay", type=int, default=None,
                    help="rebuild input I from OUT/seeds and check it here")
    ap.add_argument("--plant", action="append", default=[], metavar="crash:I|hang:I",
                    help="make the worker crash or hang at input I (tests the harness)")
    args = ap.parse_args(argv)
    if args.replay is not None:
        return replay(args)
    return Run(args).run()


if __name__ == "__main__":
    sys.exit(main())
