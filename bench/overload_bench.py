#!/usr/bin/env python
"""Overload benchmark: Breakwater against no control, AQM only and a static concurrency
limit, on a CPU-bound Python server, driven by the open-loop generator ``microrpc bench``.

    python bench/overload_bench.py [--quick] [--reps N] [--json PATH] [--no-plot]
        [--breakwater k=v,...] [--limit N] [--server-cpu 1] [--gen-cpu 0]

1. Unloaded round trip: closed loop, one request outstanding, zero service time.
2. Capacity mu: no control, closed loop with 16 requests outstanding, exp service.
3. SLO = 10 x (mean service time + unloaded round trip), as the Breakwater artifact.
4. Sweep: offered load 0.5 .. 4 x mu (open loop, Poisson, 1,000 clients over 4
   connections) for each policy, a fresh server per point, the policies' order rotated
   every repetition so that background noise hits all alike.
5. Step 0.5 -> 2 -> 0.5 x mu: goodput, p99 and rejects per bucket of 10 x SLO; convergence
   and recovery times in SLO units.
6. 10,000 clients at 2 x mu (Breakwater), against the 1,000-client run of the same
   repetition.
7. Breakwater at 2 x and 4 x mu through the public clients (``--drivers``): a Poisson
   schedule sent with ``Client.call_async`` and done-callbacks, and with ``AsyncClient``
   on asyncio and on uvloop, 4 client objects in one process: what an application sees,
   beside the load generator's own engine. These rows ask for a mean service time of
   200 us (``--public-service-us``), with their own mu and SLO measured the same way: at
   100 us, 4 x mu is ~37,000 requests/s, more than one Python process on one core offers
   through ``Client`` (each call costs its thread hand-offs), so those rows would measure
   the generator rather than the overload control.

Placement: server pinned to CPU 1 (``serve-synthetic --cpu``), generator to CPU 0
(``os.sched_setaffinity``). Every number is a median over repetitions with min..max; the
run's JSON goes to bench/results/overload_bench.json and a PNG plot beside it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from microrpc import loadgen                            # noqa: E402
from overload import analysis, servers                  # noqa: E402
from overload.plot import plot                          # noqa: E402
from reporting import (Target, emit_summary, fmt_spread, make_console,  # noqa: E402
                       summary_lines, table)

DEFAULT_JSON = HERE / "results" / "overload_bench.json"
SERVICE_US = 100.0
PUBLIC_SERVICE_US = 200.0
CLIENTS = 1000
CONNECTIONS = 4
# Sessions the generator multiplexes on one connection, at most: under the server's
# default max_sessions_per_connection (1024), which refuses a further session's requests.
# (With 2,500 on each of 4 connections, 59 % of the 10,000-client run's calls ended in
# that refusal, and its goodput alone did not show it.)
SESSIONS_PER_CONNECTION = 1000
CAPACITY_OUTSTANDING = 16
LOADS_FULL = [0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0]
LOADS_QUICK = [0.5, 2.0, 4.0]
POLICY_ORDER = ["breakwater", "none", "aqm", "limit"]
# The rows driven through the public clients: a few client objects in one process.
PUBLIC_CLIENTS = 4
PUBLIC_LOADS = [2.0, 4.0]
# Short: the first column of a table that must fit 80 columns (the legend says the rest).
DRIVER_TEXT = {"client": "Client + callback", "asyncio": "AsyncClient asyncio",
               "uvloop": "AsyncClient uvloop"}


class Ctx:
    def __init__(self, args: argparse.Namespace, service_us: float = SERVICE_US) -> None:
        self.quick = args.quick
        self.reps = args.reps or (1 if args.quick else 3)
        self.server_cpu = args.server_cpu
        self.gen_cpu = args.gen_cpu
        self.duration = 0.8 if args.quick else 2.0
        self.warmup = 0.3 if args.quick else 0.5
        self.step_segment = 0.6 if args.quick else 1.0
        self.loads = LOADS_QUICK if args.quick else LOADS_FULL
        self.policies = {
            "breakwater": "breakwater" + (f":{args.breakwater}" if args.breakwater else ""),
            "none": "none",
            "aqm": "aqm" + (f":{args.aqm}" if args.aqm else ""),
            "limit": f"limit:{args.limit}",
        }
        self.service_us = service_us
        self.service = f"exp:{service_us:g}us"
        self.drivers = [d for d in args.drivers.split(",") if d]
        if "uvloop" in self.drivers and importlib.util.find_spec("uvloop") is None:
            log("uvloop is not installed: its rows are skipped")
            self.drivers.remove("uvloop")
        self.slo_s = 0.0
        self.mu = 0.0
        self.seed = 1

    @property
    def timeout(self) -> float:
        # Long enough that Breakwater never times out, short enough that a collapsed
        # no-control server drains within the bound.
        return max(0.1, 50 * self.slo_s)

    def spec(self, address: str, **kw: Any) -> loadgen.LoadSpec:
        self.seed += 1
        base = dict(address=address, clients=CLIENTS, connections=CONNECTIONS,
                    service=self.service, slo=self.slo_s or 0.002, timeout=self.timeout
                    if self.slo_s else 1.0, drain=2 * self.timeout if self.slo_s else 2.0,
                    warmup=self.warmup, duration=self.duration, seed=self.seed,
                    cpus=(self.gen_cpu,) if self.gen_cpu is not None else (),
                    bucket=10 * (self.slo_s or 0.002))
        base.update(kw)
        return loadgen.LoadSpec(**base)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measurements


def measure_base(ctx: Ctx, rtt: bool = True) -> dict:
    """Unloaded round trip (unless ``rtt`` is False) and capacity mu at ``ctx``'s service
    time, each repetition on a fresh no-control server."""
    rtts, mus = [], []
    for rep in range(ctx.reps):
        with servers.synthetic_server("none", ctx.server_cpu) as addr:
            if rtt:
                r = loadgen.run(ctx.spec(addr, closed=1, service="const:0us",
                                         duration=0.5 if ctx.quick else 1.0, warmup=0.2))
                rtts.append(r.latency_us(50))
            r = loadgen.run(ctx.spec(addr, closed=CAPACITY_OUTSTANDING,
                                     duration=1.0 if ctx.quick else 2.0, warmup=0.3))
            mus.append(r.throughput)
        log(f"  rep {rep}: {f'unloaded RTT p50 {rtts[-1]:.0f} us, ' if rtt else ''}"
            f"mu {mus[-1]:.0f}/s at {ctx.service}")
    return {"rtt_us": analysis.spread(rtts) if rtt else None, "mu": analysis.spread(mus)}


def summarize(r: loadgen.LoadResult, ctx: Ctx, stats: dict | None,
              server_cpu: float | None = None) -> dict:
    slo_us = ctx.slo_s * 1e6
    t = r.tally
    ok = t.counts["ok"]
    # A run with no ok response at all: every request took at least the timeout.
    p99 = r.latency_us(99) if ok else ctx.timeout * 1e6
    rej = r.reject_latency_us(99)
    completed = (stats or {}).get("overload", {}).get("completed") or 0
    credit_frames = (stats or {}).get("credit_frames", 0)
    return {
        "offered": r.offered, "offered_rate": r.offered_rate, "outcomes": r.counts,
        "goodput": r.goodput, "goodput_mu": r.goodput / ctx.mu,
        "throughput_mu": r.throughput / ctx.mu,
        "p50_us": r.latency_us(50), "p99_us": p99, "p99_slo": p99 / slo_us,
        "no_ok": ok == 0,
        "reject_p99_us": rej, "reject_p99_slo": None if rej is None else rej / slo_us,
        "reject_frac": (t.counts["rejected_server"] + t.counts["rejected_client"]) / r.offered
        if r.offered else 0.0,
        "timeout_frac": r.fraction("timeout"), "error_frac": r.fraction("error"),
        "send_lag_p99_us": t.send_lag.get_value_at_percentile(99) / 1e3,
        "send_lag_slo": t.send_lag.get_value_at_percentile(99) / 1e3 / slo_us,
        "gen_cpu_share": r.per_process[0]["cpu_share"],
        "server_cpu_share": server_cpu,
        "valid": r.valid, "invalid_reasons": r.invalid_reasons,
        "credit_frames": credit_frames, "completed": completed,
        "credit_per_req": credit_frames / completed if completed else None,
        "pool_min": (stats or {}).get("overload", {}).get("pool_min"),
        "pool_max": (stats or {}).get("overload", {}).get("pool_max"),
    }


def run_point(ctx: Ctx, policy: str, load: float, clients: int = CLIENTS,
              driver: str = "engine") -> dict:
    connections = max(CONNECTIONS, -(-clients // SESSIONS_PER_CONNECTION))
    with servers.synthetic_server(ctx.policies[policy], ctx.server_cpu) as addr:
        before = servers.cpu_clock(addr)
        r = loadgen.run(ctx.spec(addr, rate=load * ctx.mu, clients=clients,
                                 connections=connections, driver=driver))
        share = servers.cpu_share(before, servers.cpu_clock(addr))
        stats = servers.stats(addr)
    return summarize(r, ctx, stats, share)


def run_step(ctx: Ctx, policy: str) -> dict:
    seg = ctx.step_segment
    schedule = ((0.5 * ctx.mu, seg), (2.0 * ctx.mu, seg), (0.5 * ctx.mu, seg))
    with servers.synthetic_server(ctx.policies[policy], ctx.server_cpu) as addr:
        r = loadgen.run(ctx.spec(addr, schedule=schedule))
        stats = servers.stats(addr)
    out = summarize(r, ctx, stats)
    series = r.series()
    slo_us = ctx.slo_s * 1e6
    bucket_s = r.tally.bucket_ns / 1e9
    up = analysis.converged_after(series, seg, 2 * seg, slo_us, bucket_s)
    down = analysis.converged_after(series, 2 * seg, 3 * seg, slo_us, bucket_s)
    out.update(converge=up, recover=down, bucket_s=bucket_s,
               series=[{k: row[k] for k in ("t_s", "offered", "goodput", "p99_us",
                                            "rejected_server", "rejected_client", "timeout")}
                       for row in series])
    return out


# --------------------------------------------------------------------------- output


def fmt(s: dict | None, digits: int = 2, pct: bool = False) -> str:
    return fmt_spread(s, digits, scale=100 if pct else 1)


def fmt_settle(runs: list[dict], key: str) -> str:
    """A step's convergence (``key`` "converge") or recovery time over repetitions, in SLO
    units: the spread of the repetitions that settled, and why when some or all did not."""
    values = [r[key]["slo_units"] for r in runs]
    settled = analysis.spread(values)
    whys = sorted({r[key]["why"] for r in runs if r[key]["slo_units"] is None})
    if settled is None:
        return "; ".join(whys) or "-"
    text = fmt(settled, 0)
    if whys:
        text += f" ({len(runs) - settled['n']} of {len(runs)} {'; '.join(whys)})"
    return text


def settle_why(runs: list[dict], key: str) -> str | None:
    """Why a step target has no median: the reasons of the repetitions that did not settle."""
    whys = sorted({r[key]["why"] for r in runs if r[key]["slo_units"] is None})
    return "; ".join(whys) or None


def placement_warning(cpus: set[int], server_cpu: int | None, gen_cpu: int | None) -> str | None:
    """Why the load generator cannot have a core of its own, or None when it can. On a
    shared core the generator falls behind its schedule and the server loses time to it:
    the numbers measure the machine as much as the overload control."""
    if len(cpus) < 2:
        return (f"only {len(cpus)} usable CPU ({sorted(cpus)}): the load generator and the "
                "server share it")
    if server_cpu is not None and server_cpu == gen_cpu:
        return f"the server and the load generator are both pinned to CPU {server_cpu}"
    return None


def invalid_runs(named_runs: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """(run name, reason) for each run the generator could not drive on schedule."""
    return [(name, "; ".join(s["invalid_reasons"]) or "marked invalid")
            for name, s in named_runs if not s["valid"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (< 60 s)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--gen-cpu", type=int, default=0)
    ap.add_argument("--breakwater", default="",
                    help="Breakwater parameters, k=v,... (e.g. target_delay_ns=400000)")
    ap.add_argument("--aqm", default="", help="AQM-only threshold in ns (default: Breakwater's)")
    ap.add_argument("--limit", type=int, default=8, help="ConcurrencyLimit n")
    ap.add_argument("--policies", default=",".join(POLICY_ORDER))
    ap.add_argument("--drivers", default="client,asyncio,uvloop",
                    help="public clients to drive Breakwater with at 2x and 4x "
                         "(client, asyncio, uvloop; empty: none)")
    ap.add_argument("--public-service-us", type=float, default=PUBLIC_SERVICE_US,
                    help="mean service time of the public-client rows (their mu and SLO "
                         f"are measured for it; default {PUBLIC_SERVICE_US:g})")
    args = ap.parse_args()
    cpus = os.sched_getaffinity(0)
    for name in ("server_cpu", "gen_cpu"):
        if getattr(args, name) not in cpus:
            log(f"CPU {getattr(args, name)} is not available; not pinning the {name[:-4]}")
            setattr(args, name, None)
    ctx = Ctx(args)
    policies = [p for p in args.policies.split(",") if p]
    unknown = set(policies) - set(POLICY_ORDER)
    if unknown:
        ap.error(f"unknown policies {sorted(unknown)}; choose from {POLICY_ORDER}")
    unknown = set(ctx.drivers) - set(DRIVER_TEXT)
    if unknown:
        ap.error(f"unknown drivers {sorted(unknown)}; choose from {list(DRIVER_TEXT)}")
    console = make_console()
    plain = not console.is_terminal
    warning = placement_warning(cpus, ctx.server_cpu, ctx.gen_cpu)
    if warning:
        # Up front, on the report's own stream: every table below is read in its light.
        console.print(f"WARNING: the load generator has no core of its own: {warning}. "
                      "Runs will likely be INVALID (the generator falls behind) and the "
                      "numbers are the machine's as much as the overload control's.",
                      markup=False, highlight=False)
    t_start = time.monotonic()

    log("measuring the unloaded round trip and capacity mu ...")
    base = measure_base(ctx)
    ctx.mu = base["mu"]["median"]
    rtt = base["rtt_us"]["median"]
    ctx.slo_s = 10 * (SERVICE_US + rtt) / 1e6
    log(f"mu = {ctx.mu:.0f}/s, RTT = {rtt:.0f} us, SLO = {ctx.slo_s * 1e6:.0f} us, "
        f"timeout = {ctx.timeout * 1e3:.0f} ms")
    # The public clients' rows: their own service time, hence their own mu and SLO.
    pctx = Ctx(args, args.public_service_us)
    pctx.seed = 100_000
    public_base = None
    if ctx.drivers and "breakwater" in policies:
        if args.public_service_us == SERVICE_US:
            public_base = base
        else:
            public_base = measure_base(pctx, rtt=False)
        pctx.mu = public_base["mu"]["median"]
        pctx.slo_s = 10 * (args.public_service_us + rtt) / 1e6
        log(f"public clients: mu = {pctx.mu:.0f}/s at {pctx.service}, "
            f"SLO = {pctx.slo_s * 1e6:.0f} us")

    raw: dict[str, dict[float, list[dict]]] = {p: {l: [] for l in ctx.loads} for p in policies}
    steps: dict[str, list[dict]] = {p: [] for p in policies
                                    if p in (("breakwater",) if ctx.quick
                                             else ("breakwater", "none", "aqm"))}
    many: list[dict] = []
    public_raw: dict[str, dict[float, list[dict]]] = {d: {l: [] for l in PUBLIC_LOADS}
                                                      for d in ctx.drivers}
    for rep in range(ctx.reps):
        order = policies[rep % len(policies):] + policies[:rep % len(policies)]
        for load in ctx.loads:
            for policy in order:
                s = run_point(ctx, policy, load)
                raw[policy][load].append(s)
                log(f"  rep {rep} {policy:10s} {load:3.1f}x: goodput {s['goodput_mu']:.2f} mu, "
                    f"p99 {s['p99_slo']:.2f} SLO, rejects {100 * s['reject_frac']:.1f}%, "
                    f"timeouts {100 * s['timeout_frac']:.2f}%, gen CPU {s['gen_cpu_share']:.2f}"
                    f"{'' if s['valid'] else '  INVALID: ' + '; '.join(s['invalid_reasons'])}")
        for policy in steps:
            s = run_step(ctx, policy)
            steps[policy].append(s)
            log(f"  rep {rep} step {policy}: converged {s['converge']['slo_units']} SLO, "
                f"recovered {s['recover']['slo_units']} SLO")
        if "breakwater" in policies:
            for driver in ctx.drivers:
                for load in PUBLIC_LOADS:
                    s = run_point(pctx, "breakwater", load, clients=PUBLIC_CLIENTS,
                                  driver=driver)
                    public_raw[driver][load].append(s)
                    log(f"  rep {rep} {driver:10s} {load:3.1f}x: goodput {s['goodput_mu']:.2f} mu"
                        f", p99 {s['p99_slo']:.2f} SLO, reject p99 "
                        f"{s['reject_p99_slo'] or 0:.2f} SLO, send lag p99 {s['send_lag_slo']:.2f}"
                        f" SLO{'' if s['valid'] else '  INVALID: ' + '; '.join(s['invalid_reasons'])}")
            s = run_point(ctx, "breakwater", 2.0, clients=10_000)
            many.append(s)
            log(f"  rep {rep} 10,000 clients at 2x: goodput {s['goodput_mu']:.2f} mu")

    keys = ("goodput_mu", "p99_slo", "p99_us", "reject_p99_slo", "reject_frac",
            "timeout_frac", "credit_per_req", "send_lag_p99_us", "throughput_mu",
            "gen_cpu_share", "server_cpu_share")
    points = {p: {l: {k: analysis.spread([s[k] for s in runs]) for k in keys}
                  for l, runs in table.items()} for p, table in raw.items()}
    step_summary = {p: {"converge_slo": analysis.spread([s["converge"]["slo_units"] for s in runs]),
                        "recover_slo": analysis.spread([s["recover"]["slo_units"] for s in runs]),
                        "converge_why": settle_why(runs, "converge"),
                        "recover_why": settle_why(runs, "recover"),
                        "goodput_mu": analysis.spread([s["goodput_mu"] for s in runs]),
                        "p99_slo": analysis.spread([s["p99_slo"] for s in runs])}
                    for p, runs in steps.items()}
    many_summary = None
    if many:
        peer = raw["breakwater"].get(2.0) or []
        ratios = [m["goodput_mu"] / p["goodput_mu"] for m, p in zip(many, peer)
                  if p["goodput_mu"]]
        many_summary = {"goodput_mu": analysis.spread([m["goodput_mu"] for m in many]),
                        "p99_slo": analysis.spread([m["p99_slo"] for m in many]),
                        "ratio_to_1000_clients": analysis.spread(ratios)}
    public = {d: {l: {k: analysis.spread([s[k] for s in runs]) for k in keys + ("send_lag_slo",)}
                  for l, runs in table.items() if runs} for d, table in public_raw.items()}
    targets = analysis.evaluate(points, step_summary.get("breakwater"), many_summary, ctx.loads,
                                public)
    named_runs = ([(f"{p} {l:g}x rep {i}", s) for p, t in raw.items() for l, runs in t.items()
                   for i, s in enumerate(runs)]
                  + [(f"{DRIVER_TEXT[d]} {l:g}x rep {i}", s) for d, t in public_raw.items()
                     for l, runs in t.items() for i, s in enumerate(runs)]
                  + [(f"step {p} rep {i}", s) for p, runs in steps.items()
                     for i, s in enumerate(runs)]
                  + [(f"10,000 clients 2x rep {i}", s) for i, s in enumerate(many)])
    invalid = invalid_runs(named_runs)

    # ---- tables
    peers = {"breakwater": "Breakwater", "none": "no control", "aqm": "AQM only",
             "limit": f"a static limit of {args.limit} in flight"}
    against = ", ".join(peers[p] for p in policies)
    sweep = table(
        f"overload sweep: mu {ctx.mu:.0f}/s, SLO {ctx.slo_s * 1e6:.0f} us, {CLIENTS} clients, "
        f"median (min..max) of {ctx.reps} rep(s)",
        ["policy", "load", "goodput / mu", "p99 / SLO", "reject p99 / SLO", "rejects %",
         "timeouts %"], left=2, plain=plain,
        legend=f"Each policy on the same server, in the same run: {against}. Higher is "
               "better: goodput/mu. Lower is better: p99/SLO, reject p99/SLO, timeouts %. "
               "rejects %: the load shed (expected above 1x mu; lower is better below it).")
    diag = table(
        "overload sweep, costs and the generator's health (same runs)",
        ["policy", "load", "credit msg/req", "gen lag p99 us", "gen CPU share",
         "server CPU share"], left=2, plain=plain,
        legend=f"Lower is better: credit msg/req (standalone credit messages per completed "
               f"request). gen lag: how late the generator sent (a run is INVALID when its p99 "
               f"is above 0.1 x SLO, {ctx.slo_s * 1e5:.0f} us); CPU shares are for reading the "
               "others, not better or worse.")
    for p in policies:
        for l in ctx.loads:
            pt = points[p][l]
            sweep.add_row(p, f"{l:g}x", fmt(pt["goodput_mu"]), fmt(pt["p99_slo"]),
                          fmt(pt["reject_p99_slo"]), fmt(pt["reject_frac"], 2, True),
                          fmt(pt["timeout_frac"], 3, True))
            diag.add_row(p, f"{l:g}x", fmt(pt["credit_per_req"], 3),
                         fmt(pt["send_lag_p99_us"], 0), fmt(pt["gen_cpu_share"], 2),
                         fmt(pt["server_cpu_share"], 3))
    console.print(sweep)
    console.print(diag)
    if any(public.values()):
        t = table(
            f"Breakwater through the public clients ({PUBLIC_CLIENTS} clients, a connection "
            f"each, in one process; {pctx.service}: mu {pctx.mu:.0f}/s, SLO "
            f"{pctx.slo_s * 1e6:.0f} us), median (min..max) of {ctx.reps} rep(s)",
            ["client", "load", "goodput / mu", "p99 / SLO", "reject p99 / SLO", "rejects %",
             "timeouts %", "gen lag p99 / SLO", "gen CPU share"], left=2, plain=plain,
            legend="The same Breakwater server as the sweep, driven by an application's "
                   "clients instead of the load generator's engine (Client + callback: "
                   "Client.call_async with a done-callback). Higher is better: "
                   "goodput/mu. Lower is better: p99/SLO, reject p99/SLO, timeouts %, gen lag "
                   "p99/SLO (above 0.2 the row measures the client, not Breakwater).")
        for d, tbl in public.items():
            for l, pt in tbl.items():
                t.add_row(DRIVER_TEXT[d], f"{l:g}x", fmt(pt["goodput_mu"]), fmt(pt["p99_slo"]),
                          fmt(pt["reject_p99_slo"]), fmt(pt["reject_frac"], 2, True),
                          fmt(pt["timeout_frac"], 3, True), fmt(pt["send_lag_slo"], 3),
                          fmt(pt["gen_cpu_share"], 2))
        console.print(t)
    if steps:
        t = table(
            f"step 0.5 -> 2 -> 0.5 x mu ({ctx.step_segment:g} s each, buckets of 10 x SLO), "
            f"median (min..max) of {ctx.reps} rep(s)",
            ["policy", "converge (SLO units)", "recover (SLO units)", "goodput / mu",
             "p99 / SLO"],
            plain=plain,
            legend=f"converge: from the step up to the first of {analysis.CONVERGE_BUCKETS} "
                   f"buckets in a row with goodput >= {analysis.CONVERGE_GOODPUT:g} x steady and "
                   "p99 <= SLO; recover: the same after the step down. Lower is better: "
                   "converge, recover, p99/SLO. Higher is better: goodput/mu.")
        for p, sm in step_summary.items():
            t.add_row(p, fmt_settle(steps[p], "converge"), fmt_settle(steps[p], "recover"),
                      fmt(sm["goodput_mu"]), fmt(sm["p99_slo"]))
        console.print(t)
    t = table("targets: Breakwater (engine and public clients) against the bars it must meet",
              ["target", "measured as", "value", "bar", "verdict"], left=2, plain=plain,
              legend="Rows that name no control or AQM only compare Breakwater with that "
                     "policy in the same run.")
    for tg in targets:
        t.add_row(tg["target"], tg["detail"], "-" if tg["value"] is None else f"{tg['value']:.3f}",
                  f"{tg['op']} {tg['limit']:g}", "met" if tg["met"] else "NOT MET")
    console.print(t)
    emit_summary(console, summary_lines(
        "overload", len(named_runs), invalid,
        [Target(tg["target"], tg["met"], tg["why"]) for tg in targets],
        note="the generator had no core of its own" if warning else ""))

    out = {
        "suite": "overload_bench", "quick": ctx.quick, "reps": ctx.reps,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "placement": f"server on CPU {ctx.server_cpu}, generator on CPU {ctx.gen_cpu}",
        "service": ctx.service, "clients": CLIENTS, "connections": CONNECTIONS,
        "policies": {p: ctx.policies[p] for p in policies},
        "mu": base["mu"], "rtt_us": base["rtt_us"], "slo_us": ctx.slo_s * 1e6,
        "timeout_s": ctx.timeout, "loads": ctx.loads,
        "points": {p: {str(l): v for l, v in t.items()} for p, t in points.items()},
        "runs": {p: {str(l): v for l, v in t.items()} for p, t in raw.items()},
        "step": {"summary": step_summary, "runs": steps},
        "many_clients": {"summary": many_summary, "runs": many},
        "public_clients": {"clients": PUBLIC_CLIENTS, "service": pctx.service,
                           "mu": public_base and public_base["mu"],
                           "slo_us": pctx.slo_s * 1e6, "points": {
            d: {str(l): v for l, v in t.items()} for d, t in public.items()},
            "runs": {d: {str(l): v for l, v in t.items()} for d, t in public_raw.items()}},
        "targets": targets, "invalid_runs": [name for name, _ in invalid],
        "placement_warning": warning,
        "elapsed_s": time.monotonic() - t_start,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    if not args.no_plot:
        png = plot(points, ctx.loads, args.json.with_suffix(".png"),
                   f"mu {ctx.mu:.0f}/s, SLO {ctx.slo_s * 1e6:.0f} us, {ctx.service}, "
                   f"{CLIENTS} clients ({out['placement']})")
        log(f"plot: {png}" if png else "matplotlib is not installed: no plot")
    log(f"results: {args.json} ({out['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
