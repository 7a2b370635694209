"""Shared pieces of the rpc_bench peer processes (servers and clients).

Every peer is a separate OS process started by ``bench/rpc_bench.py``, which pins it
(``os.sched_setaffinity`` before exec) and stops it by pid. Each peer also arms
``signal.alarm`` so that it dies on its own if the harness is gone: nothing may outlive
its time bound.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from array import array
from typing import Callable

PAYLOAD = b"x" * 32
# HdrHistogram range used everywhere in this suite: 1 ns .. 60 s, 3 significant digits.
HIST_ARGS = (1, 60_000_000_000, 3)


def arm_alarm(seconds: float) -> None:
    """Kill this process with SIGALRM (default action: terminate) after ``seconds``.

    The kernel delivers it even when a spin loop never returns to the interpreter.
    """
    signal.alarm(max(1, int(seconds)))


def announce(address: str) -> None:
    """Tell the harness the server is listening (the harness waits for this line)."""
    sys.stdout.write(f"READY {address}\n")
    sys.stdout.flush()


def emit(result: dict) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def latency_loop(call: Callable[[bytes], bytes], calls: int, warmup: int, max_seconds: float) -> dict:
    """Closed-loop ping-pong: one call in flight, each timed with perf_counter_ns.

    The round-trip times go into a preallocated array and are recorded into the
    HdrHistogram after the loop, so the histogram's own Python cost (~1 us per value)
    is not inside the timed region. Every reply is compared with the request.
    """
    from hdrh.histogram import HdrHistogram

    for _ in range(warmup):
        if call(PAYLOAD) != PAYLOAD:
            raise SystemExit("echo mismatch during warm-up")
    lat = array("q", bytes(8 * calls))
    clock = time.perf_counter_ns
    payload = PAYLOAD
    deadline = clock() + int(max_seconds * 1e9)
    bad = 0
    n = 0
    truncated = False
    while n < calls:
        t0 = clock()
        reply = call(payload)
        t1 = clock()
        lat[n] = t1 - t0
        n += 1
        if reply != payload:
            bad += 1
        if t1 > deadline:
            truncated = n < calls
            break
    if bad:
        raise SystemExit(f"{bad} echo replies differed from the request")
    hist = HdrHistogram(*HIST_ARGS)
    for v in lat[:n]:
        hist.record_value(max(1, v))
    return {"calls": n, "truncated": truncated, "hist": hist.encode().decode("ascii")}


def throughput_window(step: Callable[[], int], warmup_seconds: float, seconds: float) -> dict:
    """Runs ``step`` (which completes some calls and returns how many) for a warm-up
    window, then counts completions over a measured window of ``seconds``."""
    clock = time.perf_counter_ns
    end_warm = clock() + int(warmup_seconds * 1e9)
    while clock() < end_warm:
        step()
    t0 = clock()
    stop = t0 + int(seconds * 1e9)
    done = 0
    t = t0
    while t < stop:
        done += step()
        t = clock()
    return {"completed": done, "elapsed_ns": t - t0}
