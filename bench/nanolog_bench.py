#!/usr/bin/env python
"""nanolog against the Python loggers a user would otherwise pick, in one run.

    python bench/nanolog_bench.py [--quick] [--reps N] [--pin CPU] [--json PATH]
                                  [--decode-only [--cpu-time]]

Measured, each case once per repetition in a rotated order (so background noise hits
every case alike), in one process:

* ns per enabled call of ``log.info("request %d from %s took %f us", i, ip, t)``
  (loguru: ``"request {} from {} took {:f} us"``) for nanolog, stdlib ``logging`` with a
  ``FileHandler``, picologging, loguru and structlog, each writing a file in a temporary
  directory; and ns per call below the level (disabled) for each;
* bytes per record of each file;
* two threads logging at once (ns per record over both threads, wall clock), nanolog and
  stdlib;
* the decoder: records/s to sorted text (``nanolog.write_text``) and to records
  without formatting (``nanolog.read``), against the pure-Python reference decoder and
  against just reading the stdlib text log line by line; on a file of the benchmark
  message and on a file of mixed formats (``--decode-only`` measures just this);
* "nothing lost": a child process logs N records from 4 threads and exits without
  calling ``close()``; the file must decode to exactly N records in per-thread order
  (10 million in the full run, 1 million with ``--quick``).

A repetition's figure for a case is the fastest of three loops of calls (per-call mean of
each loop); "net" = minus the median empty ``for`` loop of the run (as in
``shared/notes/nanolog.md``). A call to an empty Python function with the same arguments
is reported as the floor. Reported: median (min..max) over repetitions, and ratios
taken within each repetition (peer time / nanolog time, both gross), then their median. Placement: the
process is pinned to one CPU with ``--pin`` (the writer thread then shares it), else the
scheduler places the main and writer threads on the machine's cores. Results go to
``bench/results/nanolog_bench.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import nanolog
from reporting import Target, emit_summary, fmt_spread, make_console, summary_lines, table

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "nanolog_bench.json"
DEFAULT_DECODE_JSON = HERE / "results" / "nanolog_bench_decode.json"
FMT = "request %d from %s took %f us"
BRACE_FMT = "request {} from {} took {:f} us"
IP = "10.0.0.1"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Targets (ratios are against peers measured in the same repetition).
TARGETS = {
    "enabled_ns_max": 100.0,
    "x_vs_stdlib_min": 50.0,
    "x_vs_picologging_min": 30.0,
    "disabled_ns_max": 40.0,
    "bytes_ratio_max": 0.35,
    "text_rec_per_s_min": 2e6,
    "records_rec_per_s_min": 10e6,
}


# ---- the loggers under test ----------------------------------------------------------------

class Case:
    """One logger: setup, an enabled call, a disabled call, teardown, file size."""

    name = ""
    calls_factor = 1  # peers are ~100x slower: fewer calls keep each repetition short

    def __init__(self, tmp: Path):
        self.path = tmp / f"{self.name}.log"
        self.records = 0

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


class Nanolog(Case):
    name = "nanolog"

    def setup(self):
        self.path = self.path.with_suffix(".nlog")
        self.log = nanolog.Logger(self.path, level="INFO", mode="w")
        self.on, self.off = self.log.info, self.log.debug

    def close(self):
        self.log.close()


class Stdlib(Case):
    name = "stdlib"
    calls_factor = 50

    def setup(self):
        lg = logging.getLogger("bench.stdlib")
        lg.handlers.clear()
        h = logging.FileHandler(self.path, mode="w")
        h.setFormatter(logging.Formatter(TEXT_FORMAT))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)
        lg.propagate = False
        self.handler, self.lg = h, lg
        self.on, self.off = lg.info, lg.debug

    def close(self):
        self.lg.removeHandler(self.handler)
        self.handler.close()


class Picologging(Case):
    name = "picologging"
    calls_factor = 50

    def setup(self):
        import picologging
        lg = picologging.getLogger("bench.pico")
        h = picologging.FileHandler(str(self.path), mode="w")
        # picologging 0.9.3 prints garbage for the default asctime (microsoft/picologging#203);
        # an explicit datefmt is correct (to the second).
        h.setFormatter(picologging.Formatter(TEXT_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        lg.addHandler(h)
        lg.setLevel(picologging.INFO)
        self.handler, self.lg = h, lg
        self.on, self.off = lg.info, lg.debug

    def close(self):
        self.lg.removeHandler(self.handler)
        self.handler.close()


class Loguru(Case):
    name = "loguru"
    calls_factor = 50

    def setup(self):
        from loguru import logger
        logger.remove()
        self.sink = logger.add(str(self.path), level="INFO", enqueue=False, mode="w",
                               format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level} {name} {message}")
        self.logger = logger
        self.on, self.off = logger.info, logger.debug

    def close(self):
        self.logger.remove(self.sink)


class Structlog(Case):
    name = "structlog"
    calls_factor = 50

    def setup(self):
        import structlog
        self.file = open(self.path, "w")
        structlog.configure(
            processors=[structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso"),
                        structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.WriteLoggerFactory(file=self.file),
            cache_logger_on_first_use=True)
        lg = structlog.get_logger()
        self.on, self.off = lg.info, lg.debug

    def close(self):
        self.file.close()


CASES = [Nanolog, Stdlib, Picologging, Loguru, Structlog]


def available(cls) -> str | None:
    """None if the peer can run here, else why not."""
    mod = {"picologging": "picologging", "loguru": "loguru", "structlog": "structlog"}.get(cls.name)
    if mod is None:
        return None
    try:
        __import__(mod)
    except ImportError:
        return f"{mod} not installed (pip install '.[bench]')"
    return None


# ---- timing loops ------------------------------------------------------------------------------

def time_calls(fn, fmt, n: int) -> float:
    ip, t = IP, 12.5
    start = time.perf_counter_ns()
    for i in range(n):
        fn(fmt, i, ip, t)
    return (time.perf_counter_ns() - start) / n


def best_of(fn, fmt, n: int, k: int = 3) -> float:
    """The fastest of k loops of n/k calls: one repetition's figure. A loop that another
    process preempted only loses; the median over repetitions then shows the spread."""
    return min(time_calls(fn, fmt, max(1, n // k)) for _ in range(k))


def _loop(n: int) -> float:
    start = time.perf_counter_ns()
    for _i in range(n):
        pass
    return (time.perf_counter_ns() - start) / n


def time_loop(n: int) -> float:
    """The empty ``for`` loop: what "net" subtracts."""
    return min(_loop(max(1, n // 3)) for _ in range(3))


def time_empty_function(n: int) -> float:
    """A call to an empty Python function with the same arguments: the floor of any
    logger called from Python."""
    def fn(fmt, i, ip, t):
        pass
    return best_of(fn, FMT, n)


def time_two_threads(fn, fmt, n: int) -> float:
    """ns per record, wall clock, two threads each making n/2 calls."""
    barrier = threading.Barrier(3)

    def work():
        barrier.wait()
        time_calls(fn, fmt, n // 2)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for th in threads:
        th.join()
    return (time.perf_counter_ns() - start) / (n // 2 * 2)


def summary(values):
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "samples": values}


# ---- the decoder --------------------------------------------------------------------------------

def decoder_rates(path: Path, text_log: Path, reps: int, ref_limit: int,
                  clock=time.perf_counter) -> dict:
    n = sum(1 for _ in nanolog.read(path))
    rates = {"records": [], "text": [], "text_lines_baseline": [], "reference": []}
    for _ in range(reps):
        t0 = clock()
        count = 0
        for _r in nanolog.read(path):
            count += 1
        t1 = clock()
        assert count == n
        rates["records"].append(n / (t1 - t0))
        with open(os.devnull, "wb") as out:
            t0 = clock()
            nanolog.write_text(path, out)
            t1 = clock()
        rates["text"].append(n / (t1 - t0))
        t0 = clock()
        lines = 0
        with open(text_log, "rb") as f:
            for _line in f:
                lines += 1
        t1 = clock()
        rates["text_lines_baseline"].append(lines / (t1 - t0))
        t0 = clock()
        k = 0
        for r in nanolog.read_reference(path):
            r.message
            k += 1
            if k >= ref_limit:
                break
        t1 = clock()
        rates["reference"].append(k / (t1 - t0))
    return {"records_in_file": n, **{k: summary(v) for k, v in rates.items()}}


def write_decoder_log(tmp: Path, n: int) -> tuple[Path, Path]:
    """A log of ``n`` benchmark messages, and the stdlib text log of the same lines."""
    dec_path = tmp / "decode.nlog"
    with nanolog.Logger(dec_path, mode="w") as dlog:
        info = dlog.info
        for i in range(n):
            info(FMT, i, IP, 12.5)
    text_log = tmp / "decode.log"
    with open(text_log, "w") as f:  # what the stdlib would have written, line for line
        stamp = time.strftime("%Y-%m-%d %H:%M:%S,123")
        for i in range(n):
            f.write(f"{stamp} INFO bench.stdlib {FMT % (i, IP, 12.5)}\n")
    return dec_path, text_log


# Conversions the benchmark message does not reach: flags and widths (snprintf), hex,
# %r of bytes (Python's %), an object logged as call-time text, a no-argument message.
MIXED = (
    ("user %s logged in from %s", lambda i: (f"user{i % 97}", IP)),
    ("queue depth %5d, %x pending, load %6.2f%%", lambda i: (i % 1000, i, i / 7)),
    ("payload %r (%d bytes)", lambda i: (b"\x00\x01abc", 5)),
    ("status %s", lambda i: (ValueError("bad input"),)),
    ("heartbeat", lambda i: ()),
)


def write_mixed_log(tmp: Path, n: int) -> Path:
    path = tmp / "mixed.nlog"
    with nanolog.Logger(path, mode="w") as dlog:
        info = dlog.info
        for i in range(n):
            fmt, args = MIXED[i % len(MIXED)]
            info(fmt, *args(i))
    return path


def decoder_section(tmp: Path, quick: bool, reps: int, clock=time.perf_counter) -> dict:
    """Decoder rates on a file of the benchmark message and on a file of mixed formats."""
    n_dec = 500_000 if quick else 2_000_000
    dec_path, text_log = write_decoder_log(tmp, n_dec)
    out = decoder_rates(dec_path, text_log, reps=max(3, reps // 2),
                        ref_limit=50_000 if quick else 200_000, clock=clock)
    mixed = write_mixed_log(tmp, n_dec // 2)
    out["mixed"] = decoder_rates(mixed, text_log, reps=max(3, reps // 2),
                                 ref_limit=20_000 if quick else 100_000, clock=clock)
    return out


def run_decode_only(args) -> dict:
    """Just the decoder section (``--decode-only``): for checking a decoder change."""
    reps = args.reps or (5 if args.quick else 7)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    # CPU time (--cpu-time) compares two builds of the decoder on a shared machine, where
    # wall time mostly measures the neighbours.
    clock = time.process_time if args.cpu_time else time.perf_counter
    with tempfile.TemporaryDirectory(prefix="nanolog_bench_") as tmp:
        decoder = decoder_section(Path(tmp), args.quick, reps, clock)
    return {"suite": "nanolog_bench --decode-only", "quick": args.quick, "reps": reps,
            "clock": "CPU time" if args.cpu_time else "wall time",
            "machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpus": os.cpu_count()},
            "results": {"decoder": decoder}}


CHILD = """
import sys, threading, nanolog
path, n, nthreads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
log = nanolog.Logger(path, mode="w")
def work(t):
    info = log.info
    for i in range(n // nthreads):
        info("thread %d record %d", t, i)
threads = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
for th in threads:
    th.start()
for th in threads:
    th.join()
# exit without close(): the atexit flush must write everything
"""


def nothing_lost(tmp: Path, n: int, nthreads: int = 4) -> dict:
    path = tmp / "lossless.nlog"
    t0 = time.perf_counter()
    # The child starts in the directory this process imported nanolog from: `python -c`
    # puts its working directory first on sys.path, and from the repository root would
    # import the source tree, not the installed package (as microrpc.loadgen.procs does).
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(n), str(nthreads)],
                          capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(nanolog.__file__))))
    t1 = time.perf_counter()
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr[-2000:]}
    expect = [0] * nthreads
    count = 0
    in_order = True
    for r in nanolog.read(path):
        t, i = r.args
        if i != expect[t]:
            in_order = False
        expect[t] = i + 1
        count += 1
    t2 = time.perf_counter()
    per_thread = n // nthreads
    ok = count == per_thread * nthreads and in_order and expect == [per_thread] * nthreads
    return {"ok": ok, "records": count, "expected": per_thread * nthreads, "threads": nthreads,
            "in_per_thread_order": in_order, "write_s": t1 - t0, "decode_s": t2 - t1,
            "bytes": path.stat().st_size}


# ---- main ----------------------------------------------------------------------------------

def run(args) -> dict:
    quick = args.quick
    reps = args.reps or (5 if quick else 7)
    n_nano = 200_000 if quick else 1_000_000
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    tmp = Path(tempfile.mkdtemp(prefix="nanolog_bench_"))
    skipped = {}
    cases = []
    for cls in CASES:
        why = available(cls)
        if why:
            skipped[cls.name] = why
            continue
        case = cls(tmp)
        case.setup()
        cases.append(case)
    enabled = {c.name: [] for c in cases}
    disabled = {c.name: [] for c in cases}
    empty = []
    floor = []
    for rep in range(reps):
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]
        empty.append(time_loop(n_nano))
        floor.append(time_empty_function(n_nano))
        for c in order:
            n = max(1000, n_nano // c.calls_factor)
            fmt = BRACE_FMT if c.name == "loguru" else FMT
            enabled[c.name].append(best_of(c.on, fmt, n))
            c.records += n // 3 * 3
            disabled[c.name].append(best_of(c.off, fmt, n_nano))
    for c in cases:
        c.close()
    sizes = {c.name: c.size() / c.records for c in cases}
    loop = statistics.median(empty)

    def net(values):
        # Minus the median empty loop of the run (a per-repetition difference of two
        # noisy figures can even go negative on a busy machine).
        return [v - loop for v in values]

    results = {"enabled_ns": {k: summary(v) for k, v in enabled.items()},
               "enabled_net_ns": {k: summary(net(v)) for k, v in enabled.items()},
               "disabled_ns": {k: summary(v) for k, v in disabled.items()},
               "disabled_net_ns": {k: summary(net(v)) for k, v in disabled.items()},
               "empty_loop_ns": summary(empty),
               "empty_function_call_ns": summary(floor),
               "bytes_per_record": sizes}
    ratios = {}
    if "nanolog" in enabled:
        for name in enabled:
            if name != "nanolog":
                # Per repetition, gross over gross: the loop overhead counts for both,
                # which understates nanolog's advantage slightly but never divides noise.
                per_rep = [p / q for p, q in zip(enabled[name], enabled["nanolog"])]
                ratios[f"{name}_vs_nanolog_enabled"] = summary(per_rep)
        if "stdlib" in sizes:
            ratios["bytes_nanolog_over_stdlib"] = sizes["nanolog"] / sizes["stdlib"]

    # Two threads at once, nanolog and stdlib.
    two = {"nanolog": [], "stdlib": []}
    tlog = nanolog.Logger(tmp / "two.nlog", mode="w")
    stdlib2 = Stdlib(tmp)
    stdlib2.path = tmp / "two.log"
    stdlib2.setup()
    for _ in range(reps):
        two["nanolog"].append(time_two_threads(tlog.info, FMT, n_nano))
        two["stdlib"].append(time_two_threads(stdlib2.on, FMT, max(2000, n_nano // 50)))
    tlog.close()
    stdlib2.close()
    results["two_threads_ns_per_record"] = {k: summary(v) for k, v in two.items()}
    ratios["two_threads_stdlib_vs_nanolog"] = summary([s / q for s, q in zip(two["stdlib"],
                                                                           two["nanolog"])])

    results["decoder"] = decoder_section(tmp, quick, reps)

    results["nothing_lost"] = nothing_lost(tmp, 1_000_000 if quick else 10_000_000)

    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()

    # Each check with what was measured for it, for the targets table and the summary.
    checks: dict[str, bool] = {}
    measured: dict[str, str] = {}

    def check(name: str, ok: bool, value: str) -> None:
        checks[name] = ok
        measured[name] = value

    if "nanolog" in enabled:
        med = results["enabled_ns"]["nanolog"]["median"]
        check("enabled_median_ns <= 100 (gross)", med <= TARGETS["enabled_ns_max"],
              f"{med:.1f} ns")
        med = results["enabled_net_ns"]["nanolog"]["median"]
        check("enabled_median_ns <= 100 (net of loop)", med <= TARGETS["enabled_ns_max"],
              f"{med:.1f} ns")
        for peer, key in (("stdlib", "x_vs_stdlib_min"), ("picologging", "x_vs_picologging_min")):
            if f"{peer}_vs_nanolog_enabled" in ratios:
                x = ratios[f"{peer}_vs_nanolog_enabled"]["median"]
                check(f">= {TARGETS[key]:g}x {peer}", x >= TARGETS[key],
                      f"{x:.1f}x ({peer} time / nanolog time)")
        med = results["disabled_ns"]["nanolog"]["median"]
        check("disabled_median_ns <= 40 (gross)", med <= TARGETS["disabled_ns_max"],
              f"{med:.1f} ns")
        if "bytes_nanolog_over_stdlib" in ratios:
            x = ratios["bytes_nanolog_over_stdlib"]
            check("bytes <= 0.35x stdlib", x <= TARGETS["bytes_ratio_max"],
                  f"{x:.3f}x (nanolog bytes / stdlib text bytes)")
    d = results["decoder"]
    check("decoder text >= 2M rec/s", d["text"]["median"] >= TARGETS["text_rec_per_s_min"],
          f"{d['text']['median'] / 1e6:.2f} M rec/s")
    check("decoder records >= 10M rec/s",
          d["records"]["median"] >= TARGETS["records_rec_per_s_min"],
          f"{d['records']['median'] / 1e6:.2f} M rec/s")
    nl = results["nothing_lost"]
    check("nothing lost", bool(nl.get("ok")),
          f"{nl.get('records', 0):,} of {nl.get('expected', 0):,} records" if "records" in nl
          else "the child failed")

    return {
        "suite": "nanolog_bench",
        "quick": quick,
        "reps": reps,
        "calls_per_rep": {c.name: max(1000, n_nano // c.calls_factor) for c in cases},
        "placement": (f"pinned to CPU {args.pin} (writer thread shares it)" if args.pin is not None
                      else f"not pinned ({os.cpu_count()} CPUs, scheduler's choice)"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "skipped": skipped,
        "results": results,
        "ratios": ratios,
        "checks": checks,
        "measured": measured,
    }


def report_decoder(console, d: dict) -> None:
    for title, rates in (("the benchmark message", d), ("mixed formats", d.get("mixed"))):
        if rates is None:
            continue
        t3 = table(f"decoder: records/s over a {rates['records_in_file']:,}-record file "
                   f"of {title}, median (min..max)",
                   ["path", "M records/s", "x reference decoder"],
                   legend="Higher is better in both columns. x reference decoder: median "
                          "over the pure-Python reference decoder's, same file, same run.")
        ref = rates["reference"]["median"]
        for key, label in (("records", "nanolog.read (records, no formatting)"),
                           ("text", "nanolog.write_text (sorted text)"),
                           ("reference", "reference decoder (records + message)"),
                           ("text_lines_baseline",
                            "baseline: iterate lines of the stdlib text log")):
            if key == "text_lines_baseline" and rates is not d:
                continue  # the stdlib text log holds the benchmark message only
            t3.add_row(label, fmt_spread(rates[key], 2, scale=1e-6),
                       f"{rates[key]['median'] / ref:.1f}")
        console.print(t3)


def report(out: dict) -> None:
    console = make_console()
    res, ratios = out["results"], out["ratios"]

    loop = res["empty_loop_ns"]["median"]
    # Net figures (minus the empty loop) are in the JSON: each is the gross one minus the
    # same constant, given in the legend, so columns of them would only widen the table.
    t = table(f"nanolog_bench: ns per call, median (min..max) over {out['reps']} reps",
              ["logger", "enabled ns", "x slower than nanolog", "disabled ns", "bytes/record"],
              legend="Lower is better: ns and bytes/record. x slower than nanolog: the logger's "
                     "enabled time over nanolog's, per repetition (higher: nanolog is further "
                     f"ahead). Placement: {out['placement']}. Net of the loop: subtract the "
                     f"empty loop, {loop:.1f} ns. Floor: an empty Python function call, "
                     f"{fmt_spread(res['empty_function_call_ns'])} ns.")
    for name in res["enabled_ns"]:
        r = ratios.get(f"{name}_vs_nanolog_enabled")
        t.add_row(name, fmt_spread(res["enabled_ns"][name], None),
                  fmt_spread(r, None) if r else "1", fmt_spread(res["disabled_ns"][name], None),
                  f"{res['bytes_per_record'][name]:.1f}")
    console.print(t)
    for name, why in out["skipped"].items():
        console.print(f"skipped {name}: {why}")

    t2 = table("two threads logging at once: ns per record (wall clock)",
               ["logger", "median (min..max)"],
               legend="Lower is better for the loggers; stdlib / nanolog: higher means nanolog "
                      "is further ahead.")
    for name, s in res["two_threads_ns_per_record"].items():
        t2.add_row(name, fmt_spread(s, None))
    t2.add_row("stdlib / nanolog", fmt_spread(ratios["two_threads_stdlib_vs_nanolog"], None))
    console.print(t2)

    report_decoder(console, res["decoder"])

    nl = res["nothing_lost"]
    console.print(f"nothing lost: {nl.get('records', 0):,} of {nl.get('expected', 0):,} records "
                  f"from {nl.get('threads', 0)} threads, exit without close(), per-thread order "
                  f"{'kept' if nl.get('in_per_thread_order') else 'BROKEN'}: "
                  f"{'ok' if nl.get('ok') else 'FAILED'}"
                  + (f" (write {nl['write_s']:.1f} s, decode+check {nl['decode_s']:.1f} s)"
                     if nl.get("ok") else f" {nl.get('error', '')}"), markup=False)
    if "bytes_nanolog_over_stdlib" in ratios:
        console.print(f"bytes per record, nanolog / stdlib text (lower is better): "
                      f"{ratios['bytes_nanolog_over_stdlib']:.3f}")
    t4 = table("targets", ["target", "measured", "met"])
    for name, ok in out["checks"].items():
        t4.add_row(name, out["measured"][name], "yes" if ok else "NO")
    console.print(t4)
    emit_summary(console, summary_lines(
        "nanolog", out["reps"], [],
        [Target(name, ok, out["measured"][name]) for name, ok in out["checks"].items()]))


# Checks whose failure fails the suite (exit 1). The speed targets depend on the machine
# and are reported, not enforced; losing records is a defect, and so is a child that could
# not log at all (it once imported the source tree instead of the installed package, and
# the suite still exited 0).
REQUIRED_CHECKS = ("nothing lost",)


def failed_required_checks(out: dict) -> list[str]:
    return [name for name in REQUIRED_CHECKS if not out["checks"].get(name)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run for smoke tests (< 60 s)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 5 quick, 7 full)")
    ap.add_argument("--pin", type=int, default=None, help="pin the process to this CPU")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    ap.add_argument("--decode-only", action="store_true",
                    help="measure only the decoder (records/s to records and to text)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="with --decode-only: records per second of CPU time, not wall time")
    args = ap.parse_args(argv)
    if args.reps and args.reps < 5:
        ap.error("--reps must be at least 5 (medians of fewer are not reported)")
    if args.decode_only:
        out = run_decode_only(args)
        if args.json == DEFAULT_JSON:
            args.json = DEFAULT_DECODE_JSON
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        report_decoder(make_console(), out["results"]["decoder"])
        print(f"results written to {args.json}")
        return 0
    out = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    report(out)
    print(f"results written to {args.json}")
    failed = failed_required_checks(out)
    if failed:
        print(f"nanolog_bench: required check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
