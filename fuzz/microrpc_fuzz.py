"""Long-run fuzzing of microrpc: the targets of tests/microrpc/test_fuzz.py, millions of
cases each, without hypothesis.

    nice python fuzz/microrpc_fuzz.py --count 1000000 --out /tmp/microrpc-fuzz
    python fuzz/microrpc_fuzz.py --out /tmp/microrpc-fuzz --resume     # go on after a stop
    python fuzz/microrpc_fuzz.py --replay server 1 12345               # one case, traceback

Case ``i`` of a target is made by ``random.Random(f"{seed}:{target}:{i}")``, so a seed and
an index name a case for good. The cases run in a child process, in chunks, the targets in
turn, so that every target has a count when the run is stopped. A child that dies (a crash
in compiled code) or makes no progress for ``--hang`` seconds is replaced, the case it was
on is written to ``OUT/crashes/`` and the run goes on after it. Invariant findings, errors
that are not microrpc's own, and cases slower than ``--slow`` seconds are counted per target
and the first examples of each kind are written to ``OUT/findings/``. Progress is kept in
``OUT/progress.json`` (``--resume`` goes on from it) and the totals in ``OUT/summary.txt``.

The generators skip the server-core findings that are known and not fixed yet
(``microrpc_targets.KNOWN_SERVER_FINDINGS``); ``--include-known`` makes them again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import microrpc_targets as targets  # noqa: E402
from microrpc.errors import RpcError  # noqa: E402

COUNTERS = ("done", "package_errors", "findings", "non_package", "slow", "crashes")
EXAMPLES_PER_KIND = 3          # cases written for each distinct finding
REPORT_EVERY = 500             # cases between the child's progress reports


def make_case(target, seed, index, include_known):
    rng = targets.case_rng(seed, target, index)
    if target == "server" and not include_known:
        return targets.gen_server(rng, avoid=targets.KNOWN_SERVER_FINDINGS)
    return targets.generate(target, rng)


def signature(exc):
    """A name for what went wrong that is the same for every case it happens in."""
    if isinstance(exc, targets.Finding):
        return "finding: " + re.sub(r"\d+", "N", str(exc))[:100]
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}"


def record(out, target, seed, index, case, sig, detail, seen):
    """Write an example of ``sig`` (the first few per child and signature)."""
    n = seen.get(sig, 0)
    if n >= EXAMPLES_PER_KIND:
        return
    seen[sig] = n + 1
    digest = hashlib.sha1(f"{target}:{sig}".encode()).hexdigest()[:10]
    path = os.path.join(out, "findings", f"{target}-{digest}.txt")
    with open(path, "a") as f:
        f.write(f"== {sig}\nreplay: python fuzz/microrpc_fuzz.py --replay {target} {seed} "
                f"{index}\n{detail}\ncase: {repr(case)[:20000]}\n\n")


def child(target, seed, start, end, options, position, conn):
    """Run cases [start, end) of ``target``; report counts through ``conn``."""
    counts = dict.fromkeys(COUNTERS, 0)
    seen = {}
    for index in range(start, end):
        position.value = index
        case = make_case(target, seed, index, options["include_known"])
        t0 = time.perf_counter()
        try:
            targets.check(target, case)
        except targets.Finding as exc:
            counts["findings"] += 1
            record(options["out"], target, seed, index, case, signature(exc),
                   traceback.format_exc(), seen)
        except RpcError:
            counts["package_errors"] += 1
        except Exception as exc:
            counts["non_package"] += 1
            record(options["out"], target, seed, index, case, signature(exc),
                   traceback.format_exc(), seen)
        elapsed = time.perf_counter() - t0
        if elapsed > options["slow"]:
            counts["slow"] += 1
            record(options["out"], target, seed, index, case, "slow",
                   f"{elapsed:.2f} s", seen)
        counts["done"] += 1
        if counts["done"] % REPORT_EVERY == 0:
            conn.send(dict(counts))
            counts = dict.fromkeys(COUNTERS, 0)
    conn.send(dict(counts))
    position.value = end


def run_chunk(ctx, target, seed, start, end, options, totals):
    """Cases [start, end) in child processes, replacing a child that dies or hangs."""
    index = start
    while index < end:
        position = ctx.Value("q", index, lock=False)
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=child, args=(target, seed, index, end, options, position,
                                               sender))
        proc.start()
        sender.close()
        last, last_move = position.value, time.monotonic()
        while True:
            _collect(receiver, totals)
            proc.join(timeout=1.0)
            if proc.exitcode is not None:
                break
            if position.value != last:
                last, last_move = position.value, time.monotonic()
            elif time.monotonic() - last_move > options["hang"]:
                proc.kill()                       # our own child, by its handle
                proc.join()
                break
        _collect(receiver, totals)
        receiver.close()
        if proc.exitcode == 0 and position.value >= end:
            return
        crashed = position.value
        totals["crashes"] += 1
        _write_crash(options["out"], target, seed, crashed, proc.exitcode, options)
        index = crashed + 1


def _collect(receiver, totals):
    """Add the counts the child reported so far (cases are counted by index, not here:
    a child that dies loses its last report)."""
    while receiver.poll():
        try:
            counts = receiver.recv()
        except EOFError:
            return
        counts.pop("done")
        for key, value in counts.items():
            totals[key] += value


def _write_crash(out, target, seed, index, exitcode, options):
    case = make_case(target, seed, index, options["include_known"])   # generating is safe
    path = os.path.join(out, "crashes", f"{target}-{seed}-{index}.txt")
    with open(path, "w") as f:
        f.write(f"child exit code {exitcode} (negative: killed by that signal; a hang is "
                f"killed with SIGKILL)\nreplay: python fuzz/microrpc_fuzz.py --replay "
                f"{target} {seed} {index}\ncase: {case!r}\n")


def load_progress(options, names):
    path = os.path.join(options["out"], "progress.json")
    if options["resume"] and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        return saved["seed"], saved["targets"]
    return options["seed"], {name: dict.fromkeys(COUNTERS + ("seconds",), 0) for name in names}


def summary(progress, seed):
    lines = [f"seed {seed}",
             f"{'target':8} {'inputs':>10} {'inputs/s':>9} {'crashes':>7} {'non-pkg':>7} "
             f"{'findings':>8} {'slow>1s':>7} {'pkg-err':>8}"]
    for name, t in progress.items():
        rate = t["done"] / t["seconds"] if t["seconds"] else 0.0
        lines.append(f"{name:8} {t['done']:>10,} {rate:>9,.0f} {t['crashes']:>7} "
                     f"{t['non_package']:>7} {t['findings']:>8} {t['slow']:>7} "
                     f"{t['package_errors']:>8}")
    return "\n".join(lines)


def run(options):
    names = options["targets"]
    for sub in ("findings", "crashes"):
        os.makedirs(os.path.join(options["out"], sub), exist_ok=True)
    seed, progress = load_progress(options, names)
    ctx = multiprocessing.get_context("fork")
    count, chunk = options["count"], options["chunk"]
    while any(progress[n]["done"] < count for n in names):
        for name in names:
            t = progress[name]
            if t["done"] >= count:
                continue
            start = t["done"]
            t0 = time.monotonic()
            end = min(count, start + chunk)
            run_chunk(ctx, name, seed, start, end, options, t)
            t["done"] = end
            t["seconds"] += time.monotonic() - t0
            with open(os.path.join(options["out"], "progress.json"), "w") as f:
                json.dump({"seed": seed, "targets": progress}, f, indent=1)
            text = summary(progress, seed)
            with open(os.path.join(options["out"], "summary.txt"), "w") as f:
                f.write(text + "\n")
            print(time.strftime("%H:%M:%S"), text.splitlines()[2 + names.index(name)],
                  flush=True)
    print(summary(progress, seed))


def replay(target, seed, index, include_known):
    case = make_case(target, seed, index, include_known)
    print(repr(case)[:5000])
    targets.check(target, case)
    print("no finding")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="cases per target")
    parser.add_argument("--targets", default=",".join(targets.TARGETS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="microrpc-fuzz-out")
    parser.add_argument("--chunk", type=int, default=20_000,
                        help="cases of one target before the next target's turn")
    parser.add_argument("--slow", type=float, default=1.0, help="seconds that make a case slow")
    parser.add_argument("--hang", type=float, default=60.0,
                        help="seconds without progress after which the child is replaced")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--include-known", action="store_true")
    parser.add_argument("--replay", nargs=3, metavar=("TARGET", "SEED", "INDEX"))
    args = parser.parse_args(argv)
    if args.replay:
        target, seed, index = args.replay
        replay(target, int(seed), int(index), args.include_known)
        return
    names = args.targets.split(",")
    unknown = set(names) - set(targets.TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}: choose from {list(targets.TARGETS)}")
    run({"targets": names, "count": args.count, "seed": args.seed, "out": args.out,
         "chunk": args.chunk, "slow": args.slow, "hang": args.hang, "resume": args.resume,
         "include_known": args.include_known})


if __name__ == "__main__":
    main()
