"""One client process of the continuous-migration run of bench/proclets_bench.py.

    python bench/procbench/client.py CONFIG_JSON

CONFIG_JSON: {"controller", "pid", "client", "seconds", "max_calls", "timeout",
"drop_rate", "duplicate_rate", "times"}. The client makes a ref to the SharedCounter
proclet (the cluster key comes from PROCLETS_CLUSTER_KEY, inherited from the bench), sets
this process's injected faults, warms up, prints ``ready`` and waits for a line on stdin
(so that all clients start together). Then it calls ``add(client, 1)`` in a closed loop,
bounded by ``seconds`` and ``max_calls``, checking every answer: its own count must go
1, 2, 3, ... and the total must increase. It writes each ok call's start and end
(CLOCK_MONOTONIC ns, the clock the bench stamps migrations with) to ``times`` as two
int64 arrays, and prints a JSON line of counts.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from array import array

import proclets
from proclets.ref import connect


def main() -> None:
    cfg = json.loads(sys.argv[1])
    # Dies on its own if the bench is gone (the default action of SIGALRM ends it).
    signal.alarm(int(cfg["seconds"] + 4 * cfg["timeout"] + 60))
    ref = proclets.ProcletRef(cfg["pid"], cfg["controller"])
    client = cfg["client"]
    ref.read()                                      # a connection and a lease, off the clock
    faults = proclets.faults()
    faults.drop_rate = cfg["drop_rate"]
    faults.duplicate_rate = cfg["duplicate_rate"]
    print("ready", flush=True)
    sys.stdin.readline()

    starts, ends = array("q"), array("q")
    errors: dict[str, int] = {}
    order_violations = 0
    mine_expected = 0
    last_total = 0
    calls = 0
    clock = time.monotonic_ns
    end = clock() + int(cfg["seconds"] * 1e9)
    while calls < cfg["max_calls"]:
        t0 = clock()
        if t0 >= end:
            break
        calls += 1
        try:
            total, mine = ref.add(client, 1, timeout=cfg["timeout"])
        except Exception as exc:                    # a lost call: counted, not fatal
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            mine_expected = -1                      # it may or may not have run
            continue
        t1 = clock()
        starts.append(t0)
        ends.append(t1)
        if mine_expected >= 0 and (mine != mine_expected + 1 or total <= last_total):
            order_violations += 1
        mine_expected = mine
        last_total = total

    with open(cfg["times"], "wb") as f:
        starts.tofile(f)
        ends.tofile(f)
    session = connect(cfg["controller"])
    print(json.dumps({"client": client, "calls": calls, "ok": len(starts), "errors": errors,
                      "order_violations": order_violations, "dropped": faults.dropped,
                      "duplicated": faults.duplicated, "retries": session.retries,
                      "redirects": session.redirects}), flush=True)


if __name__ == "__main__":
    main()
