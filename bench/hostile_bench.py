#!/usr/bin/env python
"""Hostile clients: what each attacker does to a well-behaved client of the same server.

    python bench/hostile_bench.py [--quick] [--reps N] [--attacks a,b,...] [--seconds S]
        [--json PATH] [--server-cpu 1] [--client-cpu 0]

For each attacker of bench/hostile/attackers.py (1,000 idle connections, half frames that
stall, garbage on 10 connections, a flood that never reads its replies, a connect/close
loop, a 16 MiB msgpack bomb, a CANCEL flood, a session flood), on a fresh
`microrpc serve-synthetic` server pinned to one core (no overload policy; Breakwater for
the session flood, which attacks its credit pool):

1. the well-behaved client alone: ``Client.call("spin", 20 us of work)``, one call in flight
   (closed loop: these are closed-loop latencies), for ``--seconds``;
2. the attacker starts (its own process, lowest CPU priority) and the same client runs again
   beside it, on the same server, for ``--seconds``;
3. the attacker is stopped, and the time until the client's next call answers is taken.

Reported per attacker (median [min..max] over repetitions): the client's p50/p99 alone and
beside the attacker and their ratio, its failed calls, the server's peak RSS above its idle
RSS (VmHWM - VmRSS from /proc), the time to the first answer after the attacker left, and
whether the server survived. Targets: every call succeeds, p99 beside <= 2x p99 alone,
RSS <= 256 MiB above idle, next answer within 100 ms. Placement: server on CPU 1, client
and attacker on CPU 0 (the attacker niced to 19). JSON goes to
bench/results/hostile_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hdrh.histogram import HdrHistogram                 # noqa: E402

import microrpc                                         # noqa: E402
from microrpc.loadgen.synthetic import encode_service   # noqa: E402
from overload import analysis, servers                  # noqa: E402
from reporting import (Target, emit_summary, fmt_spread, make_console,  # noqa: E402
                       summary_lines, table)

DEFAULT_JSON = HERE / "results" / "hostile_bench.json"
ATTACKERS = HERE / "hostile" / "attackers.py"
ATTACKS = ["idle", "half-frame", "garbage", "flood", "connect-close", "msgpack-bomb",
           "cancel-flood", "session-flood"]
POLICY = {"session-flood": "breakwater"}       # the rest attack the default server
WORK = encode_service(20_000, "raw")            # 20 us of work per call
CALL_TIMEOUT_S = 1.0
NEXT_CALL_BOUND_S = 5.0
READY_TIMEOUT_S = 30.0
# Targets.
P99_RATIO_MAX = 2.0
RSS_MAX_MIB = 256.0
NEXT_CALL_MAX_MS = 100.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def honest_run(client: microrpc.Client, seconds: float) -> dict:
    """Closed-loop calls for ``seconds``: latency histogram (ns) and failures by kind."""
    hist = HdrHistogram(1, 60_000_000_000, 3)
    failures: dict[str, int] = {}
    clock = time.perf_counter_ns
    end = clock() + int(seconds * 1e9)
    calls = 0
    while clock() < end:
        t0 = clock()
        try:
            client.call("spin", WORK, timeout=CALL_TIMEOUT_S)
        except microrpc.RpcError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        hist.record_value(max(1, clock() - t0))
        calls += 1
    return {"calls": calls, "failures": failures, "failed": sum(failures.values()),
            "p50_us": hist.get_value_at_percentile(50) / 1e3,
            "p99_us": hist.get_value_at_percentile(99) / 1e3}


def first_answer_ms(address: str) -> float | None:
    """Milliseconds until a call (on a new client: the old connection may be gone) answers;
    None if none does within NEXT_CALL_BOUND_S."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < NEXT_CALL_BOUND_S:
        try:
            with microrpc.Client(address, codec="raw", timeout=CALL_TIMEOUT_S,
                                 connect_timeout=CALL_TIMEOUT_S) as c:
                c.call("spin", WORK)
            return (time.monotonic() - t0) * 1e3
        except microrpc.RpcError:
            continue
    return None


def start_attacker(kind: str, address: str, seconds: float, cpu: int | None) -> subprocess.Popen:
    argv = [sys.executable, str(ATTACKERS), kind, address, "--seconds", str(seconds)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()       # blocks until "ready" or the process ends
    if line != "ready":
        servers.stop_process(proc)
        raise RuntimeError(f"attacker {kind} did not start: {proc.stderr.read()[-1000:]}")
    return proc


def run_attack(kind: str, seconds: float, server_cpu: int | None,
               client_cpu: int | None) -> dict:
    with servers.synthetic_server(POLICY.get(kind, "none"), server_cpu) as address:
        pid = servers.pid(address)
        with microrpc.Client(address, codec="raw", timeout=CALL_TIMEOUT_S) as client:
            honest_run(client, min(0.3, seconds))              # warm-up
            alone = honest_run(client, seconds)
            idle_kib = rss_kib(pid, "VmRSS") or 0
            attacker = start_attacker(kind, address, seconds + 30.0, client_cpu)
            try:
                beside = honest_run(client, seconds)
            finally:
                servers.stop_process(attacker)
        survived = servers.pid(address) is not None
        next_ms = first_answer_ms(address) if survived else None
        peak_kib = rss_kib(pid, "VmHWM") if survived else None
    ratio = beside["p99_us"] / alone["p99_us"] if alone["p99_us"] else None
    rss_mib = (peak_kib - idle_kib) / 1024 if peak_kib is not None else None
    r = {"attack": kind, "policy": POLICY.get(kind, "none"), "alone": alone,
         "beside": beside, "p99_ratio": ratio, "rss_above_idle_mib": rss_mib,
         "next_call_ms": next_ms, "server_survived": survived}
    r["misses"] = misses(r)
    r["met"] = not r["misses"]
    return r


def misses(r: dict) -> list[str]:
    """The targets one attack run missed, each with its measured value (empty: all met)."""
    out = []
    if not r["server_survived"]:
        out.append("the server died")
    if r["beside"]["failed"]:
        out.append(f"{r['beside']['failed']} of {r['beside']['calls']} calls failed")
    ratio = r["p99_ratio"]
    if ratio is None or ratio > P99_RATIO_MAX:
        out.append("p99 beside / alone " + ("not measured" if ratio is None else
                                            f"{ratio:.2f} > {P99_RATIO_MAX:g}"))
    rss = r["rss_above_idle_mib"]
    if rss is None or rss > RSS_MAX_MIB:
        out.append("RSS above idle " + ("not measured" if rss is None else
                                        f"{rss:.0f} MiB > {RSS_MAX_MIB:g}"))
    nxt = r["next_call_ms"]
    if nxt is None or nxt > NEXT_CALL_MAX_MS:
        out.append("next answer " + (f"none within {NEXT_CALL_BOUND_S:g} s" if nxt is None
                                     else f"{nxt:.1f} ms > {NEXT_CALL_MAX_MS:g}"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (~1 minute)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="length of each phase (default 4, quick 1)")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    args = ap.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        ap.error(f"unknown attacks {sorted(unknown)}; choose from {ATTACKS}")
    reps = args.reps or (1 if args.quick else 3)
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    cpus = os.sched_getaffinity(0)
    server_cpu = args.server_cpu if args.server_cpu in cpus else None
    client_cpu = args.client_cpu if args.client_cpu in cpus else None
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    t_start = time.monotonic()

    runs: dict[str, list[dict]] = {a: [] for a in attacks}
    for rep in range(reps):
        for kind in attacks:
            r = run_attack(kind, seconds, server_cpu, client_cpu)
            runs[kind].append(r)
            log(f"  rep {rep} {kind:14s} p99 alone {r['alone']['p99_us']:.0f} us, beside "
                f"{r['beside']['p99_us']:.0f} us, failed {r['beside']['failed']}/"
                f"{r['beside']['calls']}, RSS +{r['rss_above_idle_mib'] or 0:.0f} MiB, next call "
                f"{r['next_call_ms'] if r['next_call_ms'] is None else round(r['next_call_ms'], 1)}"
                f" ms{'' if r['server_survived'] else ', SERVER DIED'}")

    def spread(kind: str, get) -> dict | None:
        return analysis.spread([get(r) for r in runs[kind]])

    summary = {}
    for kind in attacks:
        summary[kind] = {
            "alone_p99_us": spread(kind, lambda r: r["alone"]["p99_us"]),
            "beside_p50_us": spread(kind, lambda r: r["beside"]["p50_us"]),
            "beside_p99_us": spread(kind, lambda r: r["beside"]["p99_us"]),
            "p99_ratio": spread(kind, lambda r: r["p99_ratio"]),
            "failed": spread(kind, lambda r: r["beside"]["failed"]),
            "rss_above_idle_mib": spread(kind, lambda r: r["rss_above_idle_mib"]),
            "next_call_ms": spread(kind, lambda r: r["next_call_ms"]),
            "all_survived": all(r["server_survived"] for r in runs[kind]),
            "met": all(r["met"] for r in runs[kind]),
            "misses": [f"rep {i}: {'; '.join(r['misses'])}" if len(runs[kind]) > 1
                       else "; ".join(r["misses"])
                       for i, r in enumerate(runs[kind]) if r["misses"]],
        }

    console = make_console()
    t = table(f"A well-behaved client beside each attacker (closed loop, 20 us of work per "
              f"call; latencies in us; median (min..max) of {reps} rep(s))",
              ["attacker", "server", "p99 alone", "p50 beside", "p99 beside", "p99 ratio",
               "failed calls", "RSS MiB", "next ms", "targets"], left=2,
              legend="Lower is better in every column. Compared against the same client alone "
                     "on the same server, just before the attacker started. p99 ratio: p99 "
                     "beside / p99 alone; RSS: the server's peak above its idle RSS; next: "
                     "until a call answers after the attacker left. Targets: p99 ratio <= "
                     f"{P99_RATIO_MAX:g}, no failed call, RSS <= {RSS_MAX_MIB:g} MiB, next "
                     f"<= {NEXT_CALL_MAX_MS:g} ms.")
    for kind, s in summary.items():
        t.add_row(kind, POLICY.get(kind, "none"), fmt_spread(s["alone_p99_us"], 0),
                  fmt_spread(s["beside_p50_us"], 0), fmt_spread(s["beside_p99_us"], 0),
                  fmt_spread(s["p99_ratio"], 2), fmt_spread(s["failed"], 0),
                  fmt_spread(s["rss_above_idle_mib"], 0), fmt_spread(s["next_call_ms"], 1),
                  ("met" if s["met"] else "NOT MET")
                  + ("" if s["all_survived"] else " (server died)"))
    console.print(t)
    # Every attack run is valid: nothing here can fall behind a schedule (closed loop).
    emit_summary(console, summary_lines(
        "hostile", sum(len(r) for r in runs.values()), [],
        [Target(f"beside {kind}", s["met"], " | ".join(s["misses"]))
         for kind, s in summary.items()]))

    out = {
        "suite": "hostile_bench", "quick": args.quick, "reps": reps, "seconds": seconds,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "placement": f"server on CPU {server_cpu}, client and attacker on CPU {client_cpu}",
        "summary": summary, "runs": runs, "elapsed_s": time.monotonic() - t_start,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    log(f"results: {args.json} ({out['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
