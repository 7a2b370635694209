#!/usr/bin/env python
"""Proclets benchmark: migration time, call latency through a ref against its peers, and a
counter migrated continuously while four client processes call it.

    python bench/proclets_bench.py [--quick] [--reps N] [--calls N] [--seconds S]
        [--placement split|os] [--json PATH]

1. Migration: a proclet holding 1 KiB, 64 KiB, 1 MiB or 16 MiB of state, as one bytes
   attribute and as a dict of small objects (ints -> 8-character strings, sized to about
   the same pickled bytes), moved back and forth between two runtimes (repetitions
   alternate the direction, after one untimed round trip that opens the runtimes'
   connections). Timed from ``cluster.migrate()`` until the first call served at the
   destination returns, with the per-phase split of MigrationStats.
   The 16 MiB dict (a million objects, ~1 s to build) runs only in the full run.
2. Call latency, closed loop (one call in flight): ``ref.add(1)`` against
   ``microrpc.Client.call("add", 1)`` on a plain microrpc Server doing the same work, a
   Pyro5 proxy call, and a Ray actor call when ray is installed; in each repetition the
   peers take turns in blocks of a twentieth of their calls (so that they share the
   machine's moments), into HdrHistograms merged over repetitions. Ray's
   copy-and-kill "move" is the migration baseline.
3. Continuous migration: a counter migrated between three runtimes every 250 ms while four
   client processes call it, with injected lost replies and duplicated requests
   (``proclets.faults()`` in each client), against the same run without migration: lost
   calls, double executions (the counter's final value against the increments the clients
   saw succeed), each client's own results in order, throughput, and the latency of the
   calls that overlapped a migration.

Placement ``split`` (default, on 2 cores): the bench process (the caller), the client
processes and the controller on CPU 0; the runtimes and the peers' servers on CPU 1 (every
thread of each, as ``taskset -a -p``). ``os``: no pinning. JSON goes to
bench/results/proclets_bench.json.
"""
from __future__ import annotations

import argparse
import bisect
import importlib.util
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hdrh.histogram import HdrHistogram                 # noqa: E402
from rich.markup import escape                          # noqa: E402

import microrpc                                         # noqa: E402
import proclets                                         # noqa: E402
from overload.analysis import spread                    # noqa: E402
from overload.servers import stop_process               # noqa: E402
from procbench.workloads import Adder, Blob, SharedCounter  # noqa: E402
from reporting import (Target, emit_summary, fmt_spread, make_console,  # noqa: E402
                       summary_lines, table)

DEFAULT_JSON = HERE / "results" / "proclets_bench.json"
PEERS_SCRIPT = HERE / "procbench" / "peers.py"
CLIENT_SCRIPT = HERE / "procbench" / "client.py"
KIB, MIB = 1024, 1024 * 1024
SIZES = [KIB, 64 * KIB, MIB, 16 * MIB]
KINDS = ["bytes", "dict"]
QUICK_SKIP = {(16 * MIB, "dict")}       # a million objects: ~1 s to build, ~0.6 s a move
# Targets (issue #11): median migration time of the bytes state, ms.
MIGRATION_TARGET_MS = {KIB: 1.0, 64 * KIB: 1.5, MIB: 4.0, 16 * MIB: 40.0}
REF_P50_MAX_RATIO = 1.3                 # ref p50 / plain microrpc p50
THROUGHPUT_MIN_RATIO = 0.9              # with migration / without
# Continuous migration.
RUNTIMES = 3
CLIENTS = 4
MIGRATE_EVERY_S = 0.25
DROP_RATE = 0.01                        # injected lost replies, per call
DUPLICATE_RATE = 0.01                   # injected duplicated requests, per call
CLIENT_CALL_TIMEOUT_S = 5.0
CLIENT_MAX_CALLS = 2_000_000            # a bound beside the time bound
READY_TIMEOUT_S = 60.0                  # a client's start (imports, lease) on a busy machine
HIST_ARGS = (1, 60_000_000_000, 3)      # 1 ns .. 60 s, 3 significant digits
LATENCY_WARMUP = 200
# Blocks per repetition in which the peers take turns (see measure_latency).
LATENCY_BLOCKS = 20
RAY_SKIP = "skipped: ray not installed (pip install '.[ray-bench]')"
PEERS = ["ref", "microrpc", "pyro5", "ray"]
PEER_TEXT = {"ref": "proclets ref.add(1)", "microrpc": "plain microrpc Client.call",
             "pyro5": "Pyro5 proxy call", "ray": "Ray actor call"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def size_text(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


# --------------------------------------------------------------------------- placement


class Placement:
    """Where the bench's processes run (see the module docstring)."""

    def __init__(self, name: str) -> None:
        cpus = os.sched_getaffinity(0)
        self.warning = None
        if name == "split" and not {0, 1} <= cpus:
            self.warning = f"CPUs 0 and 1 are not both usable ({sorted(cpus)}): not pinned"
            name = "os"
        self.name = name
        self.caller_cpu = 0 if name == "split" else None
        self.server_cpu = 1 if name == "split" else None

    def describe(self) -> str:
        if self.name == "os":
            return "not pinned (the OS places every process)"
        return (f"caller, client processes and controller on CPU {self.caller_cpu}; runtimes "
                f"and peer servers on CPU {self.server_cpu}")

    def pin_self(self) -> None:
        if self.caller_cpu is not None:
            os.sched_setaffinity(0, {self.caller_cpu})

    def pin_server(self, pid: int) -> None:
        pin_all_threads(pid, self.server_cpu)

    def pin_caller(self, pid: int) -> None:
        pin_all_threads(pid, self.caller_cpu)


def pin_all_threads(pid: int, cpu: int | None) -> None:
    """Every thread of ``pid`` to ``cpu`` (``taskset -a -p``): sched_setaffinity on a pid
    moves only its main thread, and a runtime has started its others by the time it
    serves. Threads started later inherit the mask."""
    if cpu is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except (ProcessLookupError, OSError):
            pass                                # the thread ended meanwhile


def start_peer(kind: str, placement: Placement, max_seconds: float) -> tuple[subprocess.Popen, str]:
    """A peer server process (procbench/peers.py), pinned with taskset; its address."""
    argv = [sys.executable, str(PEERS_SCRIPT), kind, "--max-seconds", str(int(max_seconds))]
    if placement.server_cpu is not None:
        argv = ["taskset", "-c", str(placement.server_cpu)] + argv
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = read_line(proc, READY_TIMEOUT_S)
    if not line.startswith("READY "):
        stop_process(proc)
        raise RuntimeError(f"the {kind} peer did not start (said {line!r})")
    return proc, line.split(" ", 1)[1]


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The next line of ``proc``'s stdout, or "" when it ends or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(min(0.2, max(0.0, deadline - time.monotonic()))):
                return proc.stdout.readline().strip()
            if proc.poll() is not None:
                return ""
    return ""


# --------------------------------------------------------------------------- 1. migration


def measure_migration(cluster: proclets.LocalCluster, size: int, kind: str,
                      reps: int) -> dict:
    """``reps`` migrations of one Blob between runtimes 0 and 1: per repetition the time
    from migrate() to the first call's answer at the destination, and MigrationStats."""
    ref = cluster.spawn(Blob, size, kind, on=0, timeout=60.0)
    ref.ping(0)
    at = 0
    runs, errors = [], []
    for warm in (1, 0):                  # untimed: opens runtime-to-runtime connections
        cluster.migrate(ref, to=warm)
        ref.ping(0)
    for rep in range(reps):
        to = 1 - at
        t0 = time.perf_counter()
        try:
            stats = cluster.migrate(ref, to=to)
            ref.ping(rep)
        except Exception as exc:         # recorded and reported; the next rep starts over
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            ref = cluster.spawn(Blob, size, kind, on=0, timeout=60.0)
            ref.ping(0)
            at = 0
            continue
        runs.append({"ms": (time.perf_counter() - t0) * 1e3, **stats.as_dict()})
        at = to
    return {"size": size, "kind": kind, "runs": runs, "errors": errors}


def summarize_migration(case: dict) -> dict:
    runs = case["runs"]
    phases = ("drain", "serialize", "transfer", "install", "directory", "total")
    return {"size": case["size"], "kind": case["kind"], "n": len(runs),
            "errors": case["errors"], "ms": spread([r["ms"] for r in runs]),
            "bytes": spread([r["bytes"] for r in runs]),
            "buffers": spread([r["buffers"] for r in runs]),
            "phases_ms": {p: spread([r[p] * 1e3 for r in runs]) for p in phases}}


# --------------------------------------------------------------------------- 2. latency


def closed_loop(call: Callable[[int], Any], calls: int, hist: HdrHistogram) -> None:
    """``calls`` calls, one in flight, into ``hist``: ns per call."""
    clock = time.perf_counter_ns
    record = hist.record_value
    for _ in range(calls):
        t0 = clock()
        call(1)
        record(max(1, clock() - t0))


def latency_peers(cluster: proclets.LocalCluster, placement: Placement, ray_ok: bool,
                  stack: list) -> dict[str, Callable[[int], Any]]:
    """Each peer's one call (``add(1)``), ready to be timed. Processes go on ``stack``."""
    ref = cluster.spawn(Adder, on=0)
    out: dict[str, Callable[[int], Any]] = {"ref": ref.add}
    proc, address = start_peer("microrpc", placement, 3600)
    stack.append(proc)
    client = microrpc.Client(address)
    stack.append(client)
    out["microrpc"] = lambda k: client.call("add", k)
    try:
        import Pyro5.api
    except ImportError:
        pass
    else:
        proc, uri = start_peer("pyro5", placement, 3600)
        stack.append(proc)
        proxy = Pyro5.api.Proxy(uri)
        stack.append(proxy)
        out["pyro5"] = proxy.add
    if ray_ok:
        from procbench import ray_peer
        actor = ray_peer.actor()
        out["ray"] = lambda k: ray_peer.call(actor, k)
    return out


def measure_latency(calls_by_peer: dict[str, Callable], calls: int, reps: int) -> dict:
    """Per peer: one histogram per repetition (base64), and its p50. A repetition runs
    every peer's ``calls`` calls in LATENCY_BLOCKS blocks, the peers taking turns block by
    block (in an order rotated each repetition), so that the peers whose ratio is reported
    see the same machine: on this shared 2-core machine the plain call's own p50 moves by
    a third between runs of a few hundred milliseconds, and back-to-back runs of 20,000
    calls put that drift into the ratio."""
    names = list(calls_by_peer)
    hists: dict[str, list[str]] = {n: [] for n in names}
    p50: dict[str, list[float]] = {n: [] for n in names}
    block = max(1, calls // LATENCY_BLOCKS)
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        rep_hists = {n: HdrHistogram(*HIST_ARGS) for n in names}
        for name in order:
            for _ in range(LATENCY_WARMUP):
                calls_by_peer[name](1)
        done = 0
        while done < calls:
            n = min(block, calls - done)
            for name in order:
                closed_loop(calls_by_peer[name], n, rep_hists[name])
            done += n
        for name in names:
            hists[name].append(rep_hists[name].encode().decode("ascii"))
            p50[name].append(rep_hists[name].get_value_at_percentile(50) / 1e3)
        log(f"  rep {rep}: p50 " + ", ".join(f"{n} {p50[n][-1]:.1f} us" for n in names))
    return {"hists": hists, "p50_us": p50}


def summarize_latency(raw: dict, peer: str) -> dict | None:
    if peer not in raw["hists"]:
        return None
    merged = HdrHistogram(*HIST_ARGS)
    for encoded in raw["hists"][peer]:
        merged.add(HdrHistogram.decode(encoded.encode("ascii")))
    return {"p50_us": spread(raw["p50_us"][peer]),
            "merged": {"count": merged.get_total_count(),
                       **{f"p{q:g}_us": merged.get_value_at_percentile(q) / 1e3
                          for q in (50, 90, 99, 99.9)},
                       "max_us": merged.get_max_value() / 1e3},
            "hist": merged.encode().decode("ascii")}


def per_rep_ratio(raw: dict, a: str, b: str) -> dict | None:
    if a not in raw["p50_us"] or b not in raw["p50_us"]:
        return None
    return spread([x / y for x, y in zip(raw["p50_us"][a], raw["p50_us"][b]) if y])


# --------------------------------------------------------------------------- 3. continuous


def start_clients(ref: proclets.ProcletRef, seconds: float, placement: Placement,
                  tmp: Path, tag: str) -> list[tuple[subprocess.Popen, Path]]:
    out = []
    try:
        for c in range(CLIENTS):
            times = tmp / f"{tag}-client{c}.bin"
            cfg = {"controller": ref.controller, "pid": ref.pid, "client": c,
                   "seconds": seconds, "max_calls": CLIENT_MAX_CALLS,
                   "timeout": CLIENT_CALL_TIMEOUT_S, "drop_rate": DROP_RATE,
                   "duplicate_rate": DUPLICATE_RATE, "times": str(times)}
            argv = [sys.executable, str(CLIENT_SCRIPT), json.dumps(cfg)]
            if placement.caller_cpu is not None:
                argv = ["taskset", "-c", str(placement.caller_cpu)] + argv
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
            out.append((proc, times))
        for proc, _ in out:
            line = read_line(proc, READY_TIMEOUT_S)
            if line != "ready":
                raise RuntimeError(f"a client did not start (said {line!r})")
    except BaseException:
        for proc, _ in out:
            stop_process(proc)
        raise
    return out


def migrate_every(cluster: proclets.LocalCluster, ref: proclets.ProcletRef, start_ns: int,
                  seconds: float) -> dict:
    """Migrations on a fixed schedule (every MIGRATE_EVERY_S from ``start_ns``, round robin
    over the runtimes), each stamped with CLOCK_MONOTONIC ns as the clients stamp calls."""
    windows, totals_ms, errors = [], [], []
    at = 0
    for i in range(int(seconds / MIGRATE_EVERY_S)):
        due = start_ns + int((i + 1) * MIGRATE_EVERY_S * 1e9)
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)            # the schedule's tick, not a wait for an event
        to = (at + 1) % RUNTIMES
        t0 = time.monotonic_ns()
        try:
            stats = cluster.migrate(ref, to=to)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        t1 = time.monotonic_ns()
        windows.append((t0, t1))
        totals_ms.append(stats.total * 1e3)
        at = to
    return {"windows": windows, "source_total_ms": totals_ms, "errors": errors}


def run_continuous(cluster: proclets.LocalCluster, seconds: float, migrate: bool,
                   placement: Placement, tmp: Path, tag: str) -> dict:
    ref = cluster.spawn(SharedCounter, on=0)
    ref.read()
    clients = start_clients(ref, seconds, placement, tmp, tag)
    try:
        start_ns = time.monotonic_ns()
        for proc, _ in clients:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        moves = (migrate_every(cluster, ref, start_ns, seconds) if migrate
                 else {"windows": [], "source_total_ms": [], "errors": []})
        reports = []
        for proc, times in clients:
            line = read_line(proc, seconds + 4 * CLIENT_CALL_TIMEOUT_S + 30)
            if not line.startswith("{"):
                raise RuntimeError(f"a client ended without its report (said {line!r})")
            report = json.loads(line)
            data = array("q")
            with open(times, "rb") as f:
                data.frombytes(f.read())
            half = len(data) // 2
            report["starts"], report["ends"] = data[:half], data[half:]
            reports.append(report)
    finally:
        for proc, _ in clients:
            stop_process(proc)
    total, per_client = ref.read()
    return analyze_continuous(reports, moves, total, per_client, migrate)


def analyze_continuous(reports: list[dict], moves: dict, total: int, per_client: dict,
                       migrate: bool) -> dict:
    """Lost calls, double executions, order, throughput and the latency of the calls that
    overlapped a migration window."""
    all_hist, overlap_hist = HdrHistogram(*HIST_ARGS), HdrHistogram(*HIST_ARGS)
    w_starts = [w[0] for w in moves["windows"]]
    w_ends = [w[1] for w in moves["windows"]]
    first, last = None, None
    overlapped = 0
    for r in reports:
        for s, e in zip(r["starts"], r["ends"]):
            all_hist.record_value(max(1, e - s))
            j = bisect.bisect_left(w_starts, e) - 1     # the last window begun before e
            if j >= 0 and w_ends[j] > s:
                overlap_hist.record_value(max(1, e - s))
                overlapped += 1
            first = s if first is None else min(first, s)
            last = e if last is None else max(last, e)
    ok = sum(r["ok"] for r in reports)
    lost = sum(sum(r["errors"].values()) for r in reports)
    elapsed = (last - first) / 1e9 if ok else 0.0
    # Each ok call added 1. With no lost call, the counter must equal the ok calls; a lost
    # call may have run once (never twice), so then up to `lost` more is not a double run.
    excess = total - ok
    double = excess if lost == 0 else max(0, excess - lost)
    # Per client too: the proclet's count of a client's calls against the calls it saw.
    client_excess = {str(r["client"]): per_client.get(str(r["client"]), 0) - r["ok"]
                     for r in reports}

    def pct(h: HdrHistogram, q: float) -> float | None:
        return h.get_value_at_percentile(q) / 1e3 if h.get_total_count() else None

    return {
        "migrate": migrate, "clients": [{k: v for k, v in r.items()
                                         if k not in ("starts", "ends")} for r in reports],
        "calls": sum(r["calls"] for r in reports), "ok": ok, "lost": lost,
        "lost_by_kind": _merge_counts(r["errors"] for r in reports),
        "counter_total": total, "double_executions": double, "client_excess": client_excess,
        "order_violations": sum(r["order_violations"] for r in reports),
        "dropped_replies": sum(r["dropped"] for r in reports),
        "duplicated_requests": sum(r["duplicated"] for r in reports),
        "retries": sum(r["retries"] for r in reports),
        "elapsed_s": elapsed, "throughput": ok / elapsed if elapsed else 0.0,
        "migrations": len(moves["windows"]), "migration_errors": moves["errors"],
        "migration_source_ms": spread(moves["source_total_ms"]),
        "migration_window_ms": spread([(b - a) / 1e6 for a, b in moves["windows"]]),
        "p50_us": pct(all_hist, 50), "p99_us": pct(all_hist, 99),
        "max_us": all_hist.get_max_value() / 1e3 if ok else None,
        "overlapped": overlapped, "overlap_p50_us": pct(overlap_hist, 50),
        "overlap_p99_us": pct(overlap_hist, 99),
        "overlap_max_us": overlap_hist.get_max_value() / 1e3 if overlapped else None,
        "hist": all_hist.encode().decode("ascii"),
        "overlap_hist": overlap_hist.encode().decode("ascii"),
    }


def _merge_counts(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# --------------------------------------------------------------------------- Ray


def measure_ray_moves(cases: list[tuple[int, str]], reps: int) -> dict:
    from procbench import ray_peer
    out = {}
    for size, kind in cases:
        try:
            secs = ray_peer.move(size, kind, reps)
        except Exception as exc:          # a Ray failure is the peer's row, not a crash
            out[f"{size}/{kind}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        out[f"{size}/{kind}"] = {"ms": spread([s * 1e3 for s in secs])}
        log(f"  Ray move {size_text(size)} {kind}: {out[f'{size}/{kind}']['ms']['median']:.1f} ms")
    return out


# --------------------------------------------------------------------------- targets


def evaluate(migration: dict, latency_ratio: dict | None, cont: list[dict],
             tput_ratio: dict | None, quick: bool) -> list[Target]:
    targets = []
    for size, bar in MIGRATION_TARGET_MS.items():
        name = f"migration {size_text(size)} bytes median <= {bar:g} ms"
        m = migration.get(f"{size}/bytes")
        if not m or m["ms"] is None:
            targets.append(Target(name, None, "no migration of this case succeeded"))
            continue
        med = m["ms"]["median"]
        targets.append(Target(name, med <= bar, f"{med:.2f} ms (min {m['ms']['min']:.2f}, "
                                                f"max {m['ms']['max']:.2f}, {m['n']} reps)"))
    failed = {k: m["errors"] for k, m in migration.items() if m["errors"]}
    targets.append(Target("every migration succeeds", not failed,
                          "; ".join(f"{k}: {len(v)} failed ({v[0]})" for k, v in failed.items())))
    name = f"ref p50 <= {REF_P50_MAX_RATIO:g} x plain microrpc p50"
    if latency_ratio is None:
        targets.append(Target(name, None, "plain microrpc or the ref was not measured"))
    else:
        med = latency_ratio["median"]
        targets.append(Target(name, med <= REF_P50_MAX_RATIO,
                              f"{med:.2f} x (per repetition {latency_ratio['min']:.2f}.."
                              f"{latency_ratio['max']:.2f})"))
    moving = [r for r in cont if r["migrate"]]
    for what, key in (("0 lost calls", "lost"), ("0 double executions", "double_executions"),
                      ("each client sees its own results in order", "order_violations")):
        bad = [r[key] for r in cont if r[key]]
        targets.append(Target(f"continuous migration: {what}", not bad,
                              f"{key} {bad} over {len(cont)} runs" if bad else ""))
    name = f"continuous migration: throughput >= {THROUGHPUT_MIN_RATIO:g} x without migration"
    if tput_ratio is None or not moving:
        targets.append(Target(name, None, "no pair of runs with and without migration"))
    else:
        med = tput_ratio["median"]
        targets.append(Target(name, med >= THROUGHPUT_MIN_RATIO,
                              f"{med:.3f} x (per pair {tput_ratio['min']:.3f}.."
                              f"{tput_ratio['max']:.3f}; {moving[0]['migrations']} "
                              f"migrations in the first run"
                              f"{', a short --quick run' if quick else ''})"))
    return targets


# --------------------------------------------------------------------------- report


def ms(s: dict | None) -> str:
    return fmt_spread(s, None)


def median(s: dict | None) -> str:
    return "-" if s is None else fmt_spread({**s, "min": s["median"], "max": s["median"]}, None)


def us(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def print_report(console, out: dict, targets: list[Target]) -> None:
    plain = not console.is_terminal
    mig, ray_moves = out["migration"], out["ray_moves"]
    t = table(f"migration: from migrate() until the first call at the destination returns, ms, "
              f"median (min..max) of {out['reps']['migration']} reps; phases at the source "
              "(MigrationStats), medians",
              ["state", "kind", "bytes sent", "migrate + 1st call", "drain", "serialize",
               "transfer", "install", "directory", "Ray copy-and-kill", "target"],
              left=2, plain=plain,
              legend="Lower is better in every time column. Ray copy-and-kill (get the state, "
                     "a new actor with it, kill the old; until its first call returns) is the "
                     "baseline, in the same run. Target: the bytes state's median.")
    for key, m in mig.items():
        ph = m["phases_ms"]
        ray = ray_moves.get(key)
        ray_text = (out["ray_skipped"] or (ray and ("error: " + ray["error"] if "error" in ray
                                                    else ms(ray["ms"])))
                    or "-")
        bar = MIGRATION_TARGET_MS.get(m["size"]) if m["kind"] == "bytes" else None
        t.add_row(size_text(m["size"]), m["kind"],
                  "-" if m["bytes"] is None else f"{m['bytes']['median']:,.0f}",
                  ms(m["ms"]) + (f" ({len(m['errors'])} FAILED)" if m["errors"] else ""),
                  *(median(ph[p]) for p in ("drain", "serialize", "transfer", "install",
                                            "directory")),
                  escape(ray_text), f"<= {bar:g}" if bar else "-")
    for key in out["migration_skipped"]:
        size, kind = key.split("/")
        t.add_row(size_text(int(size)), kind, "-", "skipped: full run only", "", "", "", "",
                  "", "", "")
    console.print(t)

    lat = out["latency"]
    t = table(f"call latency, closed loop (one call in flight), us; {out['calls']:,} calls x "
              f"{out['reps']['latency']} reps per peer",
              ["peer", "p50 (per rep)", "p50 merged", "p99 merged", "p99.9 merged",
               "p50 / plain microrpc"], plain=plain,
              legend="Lower is better. Every peer does the same work (add k to a counter, "
                     "return it) in the same run; the ratio is per repetition against the "
                     "plain microrpc call (Client.call to a Server). Percentiles 'merged' come "
                     "from the repetitions' histograms merged (not averaged).")
    for peer in PEERS:
        s = lat["peers"].get(peer)
        if s is None:
            t.add_row(PEER_TEXT[peer], escape(lat["skipped"].get(peer, "skipped")), "", "",
                      "", "")
            continue
        m = s["merged"]
        t.add_row(PEER_TEXT[peer], fmt_spread(s["p50_us"], 1), us(m["p50_us"]),
                  us(m["p99_us"]), us(m["p99.9_us"]),
                  fmt_spread(lat["ratio_to_plain"].get(peer), 2))
    console.print(t)

    t = table(f"continuous migration: a counter moved every {MIGRATE_EVERY_S * 1e3:.0f} ms "
              f"between {RUNTIMES} runtimes, {CLIENTS} client processes, "
              f"{out['seconds']:g} s per run; injected per call: {DROP_RATE:.0%} lost replies, "
              f"{DUPLICATE_RATE:.0%} duplicated requests",
              ["run", "ok calls", "lost / double / disorder", "calls/s", "x still",
               "p50 / p99 us", "overlapping calls", "their p50 / p99 / max us",
               "migrations (ms)", "injected drops / dups"],
              plain=plain,
              legend="moving: the counter migrates; still: the same run without migration. "
                     "lost, double (runs of one call), disorder (a client's results out of "
                     "order): must be 0. Higher is better: calls/s and 'x still' (throughput "
                     "against the still run of the same repetition). Lower is better: "
                     "latencies. Overlapping: the calls whose time overlapped a migrate() "
                     "call. migrations: how many, and migrate()'s time, median (min..max).")
    for i, r in enumerate(out["continuous"]["runs"]):
        ratio = out["continuous"]["ratios"][i // 2] if r["migrate"] else None
        t.add_row(f"{'moving' if r['migrate'] else 'still'} {i // 2}", f"{r['ok']:,}",
                  f"{r['lost']} / {r['double_executions']} / {r['order_violations']}",
                  f"{r['throughput']:,.0f}", "-" if ratio is None else f"{ratio:.3f}",
                  f"{us(r['p50_us'])} / {us(r['p99_us'])}",
                  f"{r['overlapped']:,}" if r["migrate"] else "-",
                  f"{us(r['overlap_p50_us'])} / {us(r['overlap_p99_us'])} / "
                  f"{us(r['overlap_max_us'])}" if r["overlapped"] else "-",
                  f"{r['migrations']} ({ms(r['migration_window_ms'])})" if r["migrate"] else "-",
                  f"{r['dropped_replies']} / {r['duplicated_requests']}")
    console.print(t)
    t = table("targets", ["target", "verdict", "measured"], plain=plain,
              legend=f"Placement: {out['placement']}. The machine was shared: see the "
                     "spreads.")
    for tg in targets:
        t.add_row(tg.name, "not measured" if tg.met is None else "met" if tg.met else "NOT MET",
                  tg.why)
    console.print(t)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (~30 s)")
    ap.add_argument("--reps", type=int, default=None,
                    help="migrations per case (default 20, quick 5)")
    ap.add_argument("--latency-reps", type=int, default=None,
                    help="latency repetitions (default 5, quick 2)")
    ap.add_argument("--calls", type=int, default=None,
                    help="latency calls per peer and repetition (default 20,000, quick 2,000)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="continuous-migration run length (default 30, quick 2)")
    ap.add_argument("--continuous-reps", type=int, default=None,
                    help="pairs of continuous runs, with and without migration, their order "
                         "alternating (default 3, quick 2: on this shared machine the same "
                         "30 s run's throughput ranged 25-37k calls/s, so one pair decides "
                         "nothing)")
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                    help="state sizes in bytes for the migration cases")
    ap.add_argument("--placement", choices=["split", "os"], default="split")
    ap.add_argument("--no-ray", action="store_true", help="skip Ray even when installed")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 20)
    args.latency_reps = args.latency_reps or (2 if args.quick else 5)
    args.calls = args.calls or (2_000 if args.quick else 20_000)
    args.seconds = args.seconds or (2.0 if args.quick else 30.0)
    args.continuous_reps = args.continuous_reps or (2 if args.quick else 3)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        ap.error(f"--sizes takes byte counts, not {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        ap.error("--sizes needs at least one positive size")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    placement = Placement(args.placement)
    placement.pin_self()
    console = make_console()
    if placement.warning:
        console.print(f"WARNING: {placement.warning}", markup=False, highlight=False)
    ray_skip = ("skipped: --no-ray" if args.no_ray else
                None if importlib.util.find_spec("ray") is not None else RAY_SKIP)
    t_start = time.monotonic()
    cases = [(s, k) for s in args.sizes for k in KINDS
             if not (args.quick and (s, k) in QUICK_SKIP)]
    skipped_cases = [f"{s}/{k}" for s in args.sizes for k in KINDS
                     if args.quick and (s, k) in QUICK_SKIP]
    stack: list = []
    with tempfile.TemporaryDirectory(prefix="proclets_bench_") as tmp, \
            proclets.Cluster.local(runtimes=RUNTIMES) as cluster:
        placement.pin_caller(cluster.controller_process.pid)
        for p in cluster.runtime_processes:
            placement.pin_server(p.pid)
        for i in range(RUNTIMES):
            cluster.info(i)                      # the bench's connection to each runtime
        if ray_skip is None:
            from procbench import ray_peer
            log("starting Ray ...")
            try:
                ray_peer.start()
            except Exception as exc:     # a peer that cannot start is a skipped row
                ray_skip = f"skipped: Ray did not start ({type(exc).__name__}: {exc})"[:300]
        try:
            log("migration ...")
            migration = {}
            for size, kind in cases:
                m = summarize_migration(measure_migration(cluster, size, kind, args.reps))
                migration[f"{size}/{kind}"] = m
                log(f"  {size_text(size)} {kind}: {ms(m['ms'])} ms"
                    + (f", {len(m['errors'])} failed: {m['errors'][0]}" if m["errors"] else ""))
            ray_moves = {} if ray_skip else measure_ray_moves(cases, min(args.reps, 5))

            log("latency ...")
            try:
                peers = latency_peers(cluster, placement, ray_skip is None, stack)
                raw = measure_latency(peers, args.calls, args.latency_reps)
            finally:
                for item in reversed(stack):
                    (stop_process(item) if isinstance(item, subprocess.Popen)
                     else item._pyroRelease() if hasattr(item, "_pyroRelease")
                     else item.close())
            skipped = {p: "skipped: Pyro5 not installed (pip install '.[bench]')"
                       for p in ("pyro5",) if p not in raw["hists"]}
            if ray_skip:
                skipped["ray"] = ray_skip
            latency = {"peers": {p: summarize_latency(raw, p) for p in raw["hists"]},
                       "ratio_to_plain": {p: per_rep_ratio(raw, p, "microrpc")
                                          for p in raw["hists"]},
                       "skipped": skipped}
        finally:
            if ray_skip is None:
                ray_peer.stop()

        log("continuous migration ...")
        runs, ratios = [], []
        for rep in range(args.continuous_reps):
            pair = {}
            # Alternate which goes first, so that drift on a shared machine hits both.
            for migrate in ((True, False) if rep % 2 == 0 else (False, True)):
                r = run_continuous(cluster, args.seconds, migrate, placement, Path(tmp),
                                   f"rep{rep}-{'mig' if migrate else 'still'}")
                pair[migrate] = r
                log(f"  rep {rep} {'with' if migrate else 'without'} migration: "
                    f"{r['throughput']:,.0f} calls/s, ok {r['ok']}, lost {r['lost']}, double "
                    f"{r['double_executions']}, out of order {r['order_violations']}, "
                    f"migrations {r['migrations']}"
                    + (f", {len(r['migration_errors'])} failed" if r["migration_errors"] else ""))
            runs += [pair[True], pair[False]]
            if pair[False]["throughput"]:
                ratios.append(pair[True]["throughput"] / pair[False]["throughput"])
            else:
                ratios.append(None)

    cont = {"runs": runs, "ratios": ratios, "throughput_ratio": spread(ratios)}
    targets = evaluate(migration, latency["ratio_to_plain"].get("ref"), runs,
                       cont["throughput_ratio"], args.quick)
    out = {
        "suite": "proclets_bench", "quick": args.quick,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "placement": placement.describe(), "placement_warning": placement.warning,
        "reps": {"migration": args.reps, "latency": args.latency_reps,
                 "continuous": args.continuous_reps},
        "calls": args.calls, "seconds": args.seconds,
        "migration": migration, "migration_skipped": skipped_cases,
        "ray_moves": ray_moves, "ray_skipped": ray_skip,
        "latency": {**latency, "raw_p50_us": raw["p50_us"]},
        "continuous": cont,
        "targets": [{"name": t.name, "met": t.met, "why": t.why} for t in targets],
        "elapsed_s": time.monotonic() - t_start,
    }
    print_report(console, out, targets)
    # Every run here is closed loop: none can fall behind a schedule and be INVALID.
    emit_summary(console, summary_lines(
        "proclets", len(migration) + len(latency["peers"]) + len(runs), [], targets,
        note=f"placement {placement.name}" + (f" ({placement.warning})"
                                              if placement.warning else "")))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    log(f"results: {args.json} ({out['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
