"""Sweep the simulation of tests/breakwater/conftest.py over loads and policies and print a
table (min/median/max over seeds). Not collected by pytest; run from the repo root:

    python tests/breakwater/sweep_simulation.py [--seeds 3] [--clients 1000]

This produced the table in docs/breakwater.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import breakwater

spec = importlib.util.spec_from_file_location("bw_sim", Path(__file__).with_name("conftest.py"))
sim = importlib.util.module_from_spec(spec)
sys.modules["bw_sim"] = sim  # dataclasses look their module up by name
spec.loader.exec_module(sim)

MS = 1_000_000
POLICIES = {"Breakwater": breakwater.Breakwater, "AQMOnly": breakwater.AQMOnly, "NoControl": breakwater.NoControl}


def mmm(xs: list[float]) -> str:
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--loads", default="0.5,0.8,1,1.5,2,3,4")
    args = ap.parse_args()
    print("| policy | load x mu | goodput / mu | p99 / SLO | server rejects | client-side fails | credit msgs / completion |")
    print("|---|---:|---|---|---|---|---|")
    t0 = time.perf_counter()
    for load in (float(x) for x in args.loads.split(",")):
        for name, make in POLICIES.items():
            rs = [
                sim.run_simulation(make(), load=load, n_clients=args.clients, seed=s,
                                   duration_ns=1000 * MS, warmup_ns=200 * MS)
                for s in range(1, args.seeds + 1)
            ]
            print(
                f"| {name} | {load:g} | {mmm([r.goodput_ratio for r in rs])} | {mmm([r.p99 / r.slo_ns for r in rs])} "
                f"| {mmm([100 * r.rejected_server / r.offered for r in rs])} % "
                f"| {mmm([100 * (r.rejected_client + r.expired_client) / r.offered for r in rs])} % "
                f"| {mmm([r.stats.credit_messages_per_completion for r in rs])} |",
                flush=True,
            )
    print(f"\n({args.seeds} seeds, {args.clients} clients, 1 s simulated each, {time.perf_counter() - t0:.0f} s wall)")


if __name__ == "__main__":
    main()
