#!/usr/bin/env python
"""RPC latency and throughput benchmark: microrpc side by side with its peers.

    python bench/rpc_bench.py [--quick] [--rounds N] [--calls N]
        [--placements same,split,os] [--cases PATTERN,...] [--json PATH]

One run measures, in interleaved rounds (every case once per round and placement, in a
rotated order, so that background noise hits every case alike):

* closed-loop latency of a 32-byte echo (one call in flight; p50/p99/p99.9 over
  ``--calls`` timed calls after a warm-up, timed with ``time.perf_counter_ns`` in Python
  and ``CLOCK_MONOTONIC`` in C, into HdrHistograms in ns) for microrpc (raw and msgpack
  codecs, block and spin polling, tcp and a unix row), pyzmq REQ/REP and DEALER/ROUTER,
  grpcio sync unary with a raw-bytes method, a Python socket ping-pong and a C
  ping-pong floor (blocking, and busy-polling on both sides);
* pipelined throughput with 64 calls in flight: microrpc with its Python client
  (``call_async``) and with a C load client that speaks the microrpc wire format,
  against pyzmq DEALER->ROUTER.

Every server and client is its own OS process, pinned per placement (``same``: both on
CPU 1; ``split``: client CPU 0, server CPU 1; ``os``: no pinning), stopped by pid, and
bounded in time. Percentiles are reported per round and as the median over rounds
(never averaged); ratios are taken per round against the peer measured in the same
round and placement, then the median over rounds is reported with min..max.
Results go to ``bench/results/rpc_bench.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any, Callable

from hdrh.histogram import HdrHistogram

import reporting
from reporting import emit_summary, fmt_spread, make_console, summary_lines, table

HERE = Path(__file__).resolve().parent
PEERS = HERE / "rpc"
C_SOURCES = HERE / "c"
DEFAULT_JSON = HERE / "results" / "rpc_bench.json"
HIST_ARGS = (1, 60_000_000_000, 3)  # 1 ns .. 60 s, 3 significant digits
INFLIGHT = 64
NOISY_OTHER_CPU = 0.1  # CPUs used by other processes above which a run should be repeated

# (client CPU, server CPU); None = leave it to the scheduler.
PLACEMENTS: dict[str, tuple[int | None, int | None]] = {
    "same": (1, 1),
    "split": (0, 1),
    "os": (None, None),
}
PLACEMENT_TEXT = {
    "same": "client and server both on CPU 1",
    "split": "client on CPU 0, server on CPU 1",
    "os": "no pinning (OS default)",
}

REF_LATENCY = "zmq-reqrep-tcp"
REF_THROUGHPUT = "tput-zmq-dealer-router"


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    label: str
    kind: str  # "latency" | "throughput"
    server: Callable[["Ctx"], list[str]]
    client: Callable[["Ctx", str], list[str]]
    requires: str | None = None  # "microrpc" | "grpc" | "gcc"
    # Busy-polls without bound on both sides: meaningless when they share a core (each
    # spins away the other's time slice). microrpc's "spin" spins for spin_us and then
    # sleeps, so its rows run in every placement.
    spins: bool = False
    c_latency: bool = False  # client writes raw int64 ns to a file instead of a histogram


@dataclasses.dataclass
class Ctx:
    tmp: Path
    calls: int
    warmup: int
    max_seconds: float
    tput_seconds: float
    tput_warmup: float
    serial: int = 0

    def fresh(self, stem: str) -> Path:
        self.serial += 1
        return self.tmp / f"{stem}-{self.serial}"


def py_server(kind: str, *extra: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: [sys.executable, str(PEERS / "server.py"), kind, "--max-seconds",
                        str(int(ctx.max_seconds * 3 + 60)), *extra]


def microrpc_server(poll: str, transport: str = "tcp") -> Callable[[Ctx], list[str]]:
    def argv(ctx: Ctx) -> list[str]:
        addr = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{ctx.fresh('mrpc')}.sock"
        return py_server("microrpc", "--address", addr, "--poll", poll)(ctx)
    return argv


def py_latency_client(kind: str, *extra: str) -> Callable[[Ctx, str], list[str]]:
    return lambda ctx, addr: [sys.executable, str(PEERS / "client.py"), kind, addr,
                              "--calls", str(ctx.calls), "--warmup", str(ctx.warmup),
                              "--max-seconds", str(ctx.max_seconds), *extra]


def py_tput_client(kind: str, *extra: str) -> Callable[[Ctx, str], list[str]]:
    return lambda ctx, addr: [sys.executable, str(PEERS / "client.py"), kind, addr,
                              "--inflight", str(INFLIGHT), "--seconds", str(ctx.tput_seconds),
                              "--warmup-seconds", str(ctx.tput_warmup), *extra]


def c_server(mode: str, transport: str = "tcp") -> Callable[[Ctx], list[str]]:
    def argv(ctx: Ctx) -> list[str]:
        addr = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{ctx.fresh('c')}.sock"
        return [str(ctx.tmp / "rpc_pingpong"), "server", addr, mode, str(int(ctx.max_seconds * 3 + 60))]
    return argv


def c_client(mode: str) -> Callable[[Ctx, str], list[str]]:
    return lambda ctx, addr: [str(ctx.tmp / "rpc_pingpong"), "client", addr, mode, str(ctx.calls),
                              str(ctx.warmup), str(ctx.fresh("lat")) + ".bin", str(ctx.max_seconds)]


def c_load_client(ctx: Ctx, addr: str) -> list[str]:
    return [str(ctx.tmp / "rpc_microrpc_load"), addr, str(INFLIGHT), str(ctx.tput_warmup), str(ctx.tput_seconds)]


def _microrpc_latency(codec: str, poll: str, transport: str = "tcp") -> Case:
    return Case(
        f"microrpc-{codec}-{poll}-{transport}",
        f"microrpc {codec}, {poll} poll, {transport}",
        "latency",
        microrpc_server(poll, transport),
        py_latency_client("microrpc", "--codec", codec, "--poll", poll),
        requires="microrpc",
    )


CASES: list[Case] = [
    _microrpc_latency("raw", "block"),
    _microrpc_latency("raw", "spin"),
    _microrpc_latency("msgpack", "block"),
    _microrpc_latency("msgpack", "spin"),
    _microrpc_latency("raw", "block", "unix"),
    # Extra row: adaptive polling, which should spin only while replies keep coming and so
    # avoid the cost of spinning when client and server share a core.
    _microrpc_latency("raw", "adaptive"),
    # call_async consumed only through add_done_callback: the client's reader thread reads
    # the reply and runs the callback (one call in flight).
    Case("microrpc-callback-raw-adaptive-tcp", "microrpc raw call_async, done-callback, tcp",
         "latency", microrpc_server("adaptive"), py_latency_client("microrpc-callback", "--codec", "raw",
                                                                   "--poll", "adaptive"),
         requires="microrpc"),
    # Exactly-once calls (RIFL) of a method the server keeps completion records for,
    # against the plain adaptive row: what the bookkeeping costs (issue #11).
    Case("microrpc-once-raw-adaptive-tcp", "microrpc raw, exactly-once calls, adaptive, tcp",
         "latency", microrpc_server("adaptive"),
         py_latency_client("microrpc", "--codec", "raw", "--poll", "adaptive", "--once"),
         requires="microrpc"),
    Case(REF_LATENCY, "pyzmq REQ/REP tcp (reference)", "latency",
         py_server("zmq-rep"), py_latency_client("zmq-req")),
    Case("zmq-dealer-router-tcp", "pyzmq DEALER/ROUTER tcp", "latency",
         py_server("zmq-router"), py_latency_client("zmq-dealer")),
    Case("grpc-unary-raw", "grpcio sync unary, raw bytes", "latency",
         py_server("grpc"), py_latency_client("grpc"), requires="grpc"),
    Case("py-socket-tcp", "Python socket ping-pong tcp", "latency",
         py_server("socket"), py_latency_client("socket")),
    Case("c-tcp-block", "C ping-pong tcp, blocking (floor)", "latency",
         c_server("block"), c_client("block"), requires="gcc", c_latency=True),
    Case("c-tcp-spin", "C ping-pong tcp, busy-poll both sides (floor)", "latency",
         c_server("spin"), c_client("spin"), requires="gcc", spins=True, c_latency=True),
    Case("c-unix-block", "C ping-pong unix, blocking (floor)", "latency",
         c_server("block", "unix"), c_client("block"), requires="gcc", c_latency=True),
    Case("tput-microrpc-py", f"microrpc, Python client call_async, {INFLIGHT} in flight", "throughput",
         microrpc_server("block"), py_tput_client("microrpc-pipe"), requires="microrpc"),
    Case("tput-microrpc-once", f"microrpc, Python client call_async, exactly-once, {INFLIGHT} in flight",
         "throughput", microrpc_server("block"), py_tput_client("microrpc-pipe", "--once"),
         requires="microrpc"),
    Case("tput-microrpc-aio", f"microrpc, AsyncClient, {INFLIGHT} tasks awaiting calls", "throughput",
         microrpc_server("block"), py_tput_client("microrpc-aio-pipe"), requires="microrpc"),
    Case("tput-microrpc-uvloop", f"microrpc, AsyncClient on uvloop, {INFLIGHT} tasks awaiting calls",
         "throughput", microrpc_server("block"), py_tput_client("microrpc-uvloop-pipe"),
         requires="microrpc+uvloop"),
    Case("tput-microrpc-c", f"microrpc server, C load client (microrpc wire format), {INFLIGHT} in flight",
         "throughput", microrpc_server("block"), c_load_client, requires="microrpc+gcc"),
    Case(REF_THROUGHPUT, f"pyzmq DEALER->ROUTER tcp, {INFLIGHT} in flight (reference)", "throughput",
         py_server("zmq-router"), py_tput_client("zmq-dealer-pipe")),
]
CASE_BY_NAME = {c.name: c for c in CASES}


# --------------------------------------------------------------------------- peers present?


def microrpc_status() -> str | None:
    """None when microrpc's Server and Client can be used, else why not."""
    try:
        import microrpc
    except Exception as exc:  # a missing compiled module shows up as ImportError
        return f"microrpc does not import ({type(exc).__name__}: {exc}); try `python setup.py build_ext --inplace`"
    missing = [n for n in ("Server", "Client") if not hasattr(microrpc, n)]
    if missing:
        return f"microrpc has no {' / '.join(missing)} yet"
    return None


def build_c(tmp: Path) -> dict[str, str | None]:
    """Compiles the C peers into ``tmp``; maps each binary to None (built) or why not."""
    gcc = shutil.which("gcc")
    out: dict[str, str | None] = {}
    for name in ("rpc_pingpong", "rpc_microrpc_load"):
        if gcc is None:
            out[name] = "gcc not found: C peers skipped"
            continue
        proc = subprocess.run([gcc, "-O2", "-o", str(tmp / name), str(C_SOURCES / f"{name}.c")],
                              capture_output=True, text=True, timeout=120)
        out[name] = None if proc.returncode == 0 else f"gcc failed: {proc.stderr.strip()[-500:]}"
    return out


def why_skipped(case: Case, placement: str, avail: dict[str, str | None]) -> str | None:
    for need in (case.requires or "").split("+"):
        if need == "gcc":
            binary = "rpc_microrpc_load" if case.kind == "throughput" else "rpc_pingpong"
            if avail[binary]:
                return avail[binary]
        elif need and avail.get(need):
            return avail[need]
    if case.spins and placement == "same":
        return "n/a in 'same' placement: both sides would busy-poll one core"
    return None


# --------------------------------------------------------------------------- noise meter


def _proc_stat() -> tuple[int, int]:
    """(busy jiffies, steal jiffies) summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


class NoiseMeter:
    """CPU used by processes other than this harness and its children, and host steal,
    over a window, in CPUs (1.0 = one core busy the whole window).

    Our own CPU is this process's rusage plus RUSAGE_CHILDREN, which grows only when a
    child is reaped: every child of a case is reaped inside its window, so the delta
    is exactly what the case's own processes used."""

    hz = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stat0 = _proc_stat()
        self.own0 = self._own()

    @staticmethod
    def _own() -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def read(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        busy1, steal1 = _proc_stat()
        busy = (busy1 - self.stat0[0]) / self.hz
        own = self._own() - self.own0
        return {
            "wall_s": round(wall, 3),
            "own_cpu": round(own / wall, 3),
            "other_cpu": round(max(0.0, busy - own) / wall, 3),
            "steal_cpu": round((steal1 - self.stat0[1]) / self.hz / wall, 3),
        }


# --------------------------------------------------------------------------- processes


class CaseFailed(Exception):
    pass


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def _stop(proc: subprocess.Popen) -> None:
    """Stops one of our children by pid: SIGTERM, then SIGKILL, each wait bounded."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state); nothing more we can do without hanging


def _start_server(argv: list[str], cpu: int | None, ctx: Ctx, timeout: float = 20.0):
    stem = ctx.fresh("srv")
    out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                preexec_fn=_pin(cpu), close_fds=True)
    deadline = time.monotonic() + timeout
    # The server writes "READY <address>" once it accepts connections. Read it from a
    # file (not a pipe) so a chatty server can never block on a full pipe.
    while True:
        text = out.read_text(errors="replace")
        if "\n" in text:
            first = text.split("\n", 1)[0].split()
            if len(first) == 2 and first[0] == "READY":
                return proc, first[1], err
            _stop(proc)
            raise CaseFailed(f"server said {text[:200]!r} instead of READY; stderr: {_tail(err)}")
        if proc.poll() is not None:
            raise CaseFailed(f"server exited with {proc.returncode} before READY; stderr: {_tail(err)}")
        if time.monotonic() > deadline:
            _stop(proc)
            raise CaseFailed(f"server not READY within {timeout:.0f} s; stderr: {_tail(err)}")
        time.sleep(0.01)


def run_once(case: Case, placement: str, ctx: Ctx) -> dict[str, Any]:
    """One measurement of one case in one placement; raises CaseFailed on any error."""
    client_cpu, server_cpu = PLACEMENTS[placement]
    meter = NoiseMeter()
    server, address, server_err = _start_server(case.server(ctx), server_cpu, ctx)
    affinity = {"server": sorted(os.sched_getaffinity(server.pid))}
    try:
        argv = case.client(ctx, address)
        stem = ctx.fresh("cli")
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        limit = (ctx.max_seconds if case.kind == "latency" else ctx.tput_seconds + ctx.tput_warmup) + 30
        with open(out, "wb") as fo, open(err, "wb") as fe:
            client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                      preexec_fn=_pin(client_cpu), close_fds=True)
        try:
            affinity["client"] = sorted(os.sched_getaffinity(client.pid))
        except OSError:
            pass  # already exited
        try:
            rc = client.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise CaseFailed(f"client still running after {limit:.0f} s; killed; stderr: {_tail(err)}")
        finally:
            _stop(client)  # no-op when it exited; also runs on SIGTERM/Ctrl-C of the harness
        if rc != 0:
            raise CaseFailed(f"client exited with {rc}; stderr: {_tail(err)}; server stderr: {_tail(server_err)}")
        lines = out.read_text().strip().splitlines()
        if not lines:
            raise CaseFailed(f"client printed nothing; stderr: {_tail(err)}")
        result = json.loads(lines[-1])
    finally:
        _stop(server)
    result["noise"] = meter.read()
    result["affinity"] = affinity
    if case.kind == "latency":
        if case.c_latency:
            lat = array("q")
            lat_file = Path(argv[6])
            lat.frombytes(lat_file.read_bytes())
            lat_file.unlink()
            hist = HdrHistogram(*HIST_ARGS)
            for v in lat:
                hist.record_value(max(1, v))
            result["hist"] = hist.encode().decode("ascii")
        hist = HdrHistogram.decode(result["hist"].encode("ascii"))
        if hist.get_total_count() == 0:
            raise CaseFailed("no calls were timed")
        result.update(_percentiles(hist))
    else:
        if result["completed"] <= 0:
            raise CaseFailed("no calls completed in the measured window")
        result["rate"] = result["completed"] / (result["elapsed_ns"] / 1e9)
    return result


def _percentiles(hist: HdrHistogram) -> dict[str, Any]:
    return {
        "count": hist.get_total_count(),
        "p50_us": hist.get_value_at_percentile(50) / 1e3,
        "p99_us": hist.get_value_at_percentile(99) / 1e3,
        "p999_us": hist.get_value_at_percentile(99.9) / 1e3,
        "max_us": hist.get_max_value() / 1e3,
        "mean_us": hist.get_mean_value() / 1e3,
    }


# --------------------------------------------------------------------------- statistics


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def _round_value(rounds: dict, case: str, round_idx: int, key: str) -> float | None:
    r = rounds.get(case, {}).get(round_idx)
    return None if not r or r.get("status") != "ok" else r.get(key)


def compute_ratios(rounds: dict[str, dict[int, dict]], n_rounds: int) -> dict[str, Any]:
    """Per-round ratios (each against the peer of the same round), then min/median/max."""
    def per_round(fn: Callable[[int], float | None]) -> dict | None:
        vals = [v for v in (fn(i) for i in range(n_rounds)) if v is not None]
        return spread(vals)

    def ratio(a: str, b: str, key: str) -> Callable[[int], float | None]:
        def f(i: int) -> float | None:
            x, y = _round_value(rounds, a, i, key), _round_value(rounds, b, i, key)
            return None if x is None or not y else x / y
        return f

    def diff(a: str, b: str, key: str) -> Callable[[int], float | None]:
        def f(i: int) -> float | None:
            x, y = _round_value(rounds, a, i, key), _round_value(rounds, b, i, key)
            return None if x is None or y is None else x - y
        return f

    def tail(case: str) -> Callable[[int], float | None]:
        def f(i: int) -> float | None:
            p99, p50 = _round_value(rounds, case, i, "p99_us"), _round_value(rounds, case, i, "p50_us")
            return None if p99 is None or not p50 else p99 / p50
        return f

    out: dict[str, Any] = {"p50_vs_zmq_reqrep": {}, "p99_over_p50": {}, "throughput_vs_zmq_dealer_router": {}}
    for case in CASES:
        if case.kind == "latency":
            out["p50_vs_zmq_reqrep"][case.name] = per_round(ratio(case.name, REF_LATENCY, "p50_us"))
            out["p99_over_p50"][case.name] = per_round(tail(case.name))
        else:
            out["throughput_vs_zmq_dealer_router"][case.name] = per_round(ratio(case.name, REF_THROUGHPUT, "rate"))
    # The targets judge microrpc in its default poll mode (adaptive).
    out["microrpc_raw_block_vs_grpc_p50"] = per_round(ratio("microrpc-raw-adaptive-tcp", "grpc-unary-raw", "p50_us"))
    out["callback_vs_sync_p50"] = per_round(ratio("microrpc-callback-raw-adaptive-tcp", "microrpc-raw-adaptive-tcp", "p50_us"))
    out["once_vs_plain_p50"] = per_round(ratio("microrpc-once-raw-adaptive-tcp", "microrpc-raw-adaptive-tcp", "p50_us"))
    out["once_vs_plain_tput"] = per_round(ratio("tput-microrpc-once", "tput-microrpc-py", "rate"))
    out["microrpc_raw_spin_vs_c_busy_poll_p50"] = per_round(ratio("microrpc-raw-spin-tcp", "c-tcp-spin", "p50_us"))
    out["msgpack_minus_raw_p50_us"] = {
        "block": per_round(diff("microrpc-msgpack-block-tcp", "microrpc-raw-block-tcp", "p50_us")),
        "spin": per_round(diff("microrpc-msgpack-spin-tcp", "microrpc-raw-spin-tcp", "p50_us")),
    }
    return out


@dataclasses.dataclass(frozen=True)
class Target:
    id: str
    text: str
    limit: float
    at_most: bool  # True: value <= limit is met; False: value >= limit is met
    gate: str  # the placement the target is judged at
    # (ratios, placement) -> (min/median/max over rounds or None, what was compared)
    value: Callable[[dict, str], tuple[dict | None, str]]


def _worst(table: dict[str, dict | None], prefix: str, what: str,
           skip: Callable[[str], bool] = lambda k: False) -> tuple[dict | None, str]:
    """The entry with the highest median: a target over several rows holds only if it
    holds for the worst of them."""
    vals = {k: v for k, v in table.items() if k.startswith(prefix) and v and not skip(k)}
    if not vals:
        return None, f"no {what} measured"
    worst = max(vals, key=lambda k: vals[k]["median"])
    return vals[worst], f"worst {what}: {worst}"


TARGETS = [
    Target("sync-vs-zmq", "sync echo, raw, tcp, default poll: p50 <= 0.6x pyzmq REQ/REP", 0.6, True, "os",
           lambda r, pl: (r["p50_vs_zmq_reqrep"].get("microrpc-raw-adaptive-tcp"), "microrpc-raw-adaptive-tcp / zmq-reqrep-tcp")),
    Target("sync-vs-grpc", "sync echo, raw, tcp, default poll: p50 <= 0.15x grpcio", 0.15, True, "os",
           lambda r, pl: (r["microrpc_raw_block_vs_grpc_p50"], "microrpc-raw-adaptive-tcp / grpc-unary-raw")),
    Target("spin-vs-c", "spin both sides: p50 <= 2.5x C busy-poll floor", 2.5, True, "split",
           lambda r, pl: (r["microrpc_raw_spin_vs_c_busy_poll_p50"], "microrpc-raw-spin-tcp / c-tcp-spin")),
    # Spin rows with both sides on one core are reported, but they are not a steady state
    # anyone would run (each side spins away the other's slice), so they do not count here.
    Target("p99", "p99 <= 3x p50 (microrpc cases)", 3.0, True, "same",
           lambda r, pl: _worst(r["p99_over_p50"], "microrpc", "microrpc case" + (" (spin rows excluded on one core)" if pl == "same" else ""),
                                lambda k: pl == "same" and "-spin-" in k)),
    Target("tput-py", "call_async, 64 in flight: throughput >= 1.0x pyzmq DEALER->ROUTER", 1.0, False, "split",
           lambda r, pl: (r["throughput_vs_zmq_dealer_router"].get("tput-microrpc-py"), "tput-microrpc-py / tput-zmq-dealer-router")),
    Target("tput-aio", "AsyncClient, 64 tasks: throughput >= 1.0x pyzmq DEALER->ROUTER", 1.0, False, "split",
           lambda r, pl: (r["throughput_vs_zmq_dealer_router"].get("tput-microrpc-aio"), "tput-microrpc-aio / tput-zmq-dealer-router")),
    Target("callback", "done-callback p50 <= 2x sync call p50 (one in flight)", 2.0, True, "os",
           lambda r, pl: (r["callback_vs_sync_p50"], "microrpc-callback-raw-adaptive-tcp / microrpc-raw-adaptive-tcp")),
    Target("tput-c", "throughput >= 1.5x pyzmq DEALER->ROUTER (C load client)", 1.5, False, "split",
           lambda r, pl: (r["throughput_vs_zmq_dealer_router"].get("tput-microrpc-c"), "tput-microrpc-c / tput-zmq-dealer-router")),
    Target("once-p50", "exactly-once calls: p50 <= 1.10x plain calls (sync, raw, adaptive)", 1.10, True, "os",
           lambda r, pl: (r["once_vs_plain_p50"], "microrpc-once-raw-adaptive-tcp / microrpc-raw-adaptive-tcp")),
    Target("once-tput", "exactly-once calls: throughput >= 0.90x plain call_async", 0.90, False, "split",
           lambda r, pl: (r["once_vs_plain_tput"], "tput-microrpc-once / tput-microrpc-py")),
    Target("msgpack", "msgpack adds <= 3 us to p50", 3.0, True, "same",
           lambda r, pl: _worst(r["msgpack_minus_raw_p50_us"], "", "poll mode")),
]


def evaluate_targets(ratios: dict, placement: str) -> list[dict]:
    out = []
    for t in TARGETS:
        sp, what = t.value(ratios, placement)
        value = None if sp is None else sp["median"]
        if value is None:
            verdict = "n/a"
        else:
            verdict = "met" if (value <= t.limit if t.at_most else value >= t.limit) else "not met"
        out.append({"id": t.id, "target": t.text, "limit": t.limit, "at_most": t.at_most,
                    "value": value,
                    "spread": sp, "compared": what, "verdict": verdict, "judged_at": t.gate})
    return out


def summarize_case(case: Case, rounds: dict[int, dict]) -> dict[str, Any]:
    ok = [r for _, r in sorted(rounds.items()) if r.get("status") == "ok"]
    summary: dict[str, Any] = {"rounds_ok": len(ok), "rounds_failed": sum(r.get("status") == "failed" for r in rounds.values())}
    if case.kind == "latency" and ok:
        for key in ("p50_us", "p99_us", "p999_us", "max_us"):
            summary[key] = spread([r[key] for r in ok])
        merged = HdrHistogram(*HIST_ARGS)
        for r in ok:
            merged.decode_and_add(r["hist"].encode("ascii"))
        summary["merged_histogram"] = _percentiles(merged)
        summary["truncated_rounds"] = sum(bool(r.get("truncated")) for r in ok)
    elif ok:
        summary["rate"] = spread([r["rate"] for r in ok])
    return summary


# --------------------------------------------------------------------------- output


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _fmt_spread(s: dict | None, digits: int = 1) -> str:
    return fmt_spread(s, digits)


def _per_round(rounds: list[dict], key: str, digits: int) -> str:
    """Each round's own figure, in round order ('x' for a failed round): the noise at a glance."""
    return ", ".join(_fmt(r[key], digits) if r.get("status") == "ok" else "x" for r in rounds)


def _where(placement: str, tg: dict) -> str:
    return placement if tg["judged_at"] == placement else \
        f"{placement} (judged at {tg['judged_at']})"


def _targets_table(console: Any, title: str, rows: list[tuple[str, dict]]) -> None:
    t = table(title, ("target", "placement", "compared", "measured, median (min..max)",
                      "verdict"), left=3,
              legend="Each target states its bar (<= or >=); 'compared' names the two cases "
                     "whose ratio (or difference) was taken, in the same round and placement.")
    for placement, tg in rows:
        style = {"met": "green", "not met": "red"}.get(tg["verdict"], "dim")
        t.add_row(tg["target"], _where(placement, tg), tg["compared"],
                  _fmt_spread(tg["spread"], 2), f"[{style}]{tg['verdict']}[/{style}]")
    console.print(t)


def summary(report: dict) -> list[str]:
    """The suite's summary: case runs that completed, and the targets judged at the
    placement each names (the others are listed as not run)."""
    runs = [r for pl in report["placements"].values() for c in pl["cases"].values()
            for r in c.get("rounds", []) if r.get("status") in ("ok", "failed")]
    failed = [(f"{f['case']} '{f['placement']}' round {f['round'] + 1}",
               "failed: " + (f["error"].splitlines() or [""])[0][:160] + " (full error above)")
              for f in report["failures"]]
    targets = []
    for tg in report["targets"]:
        met = None if tg["verdict"] == "n/a" else tg["verdict"] == "met"
        op = "<=" if tg["at_most"] else ">="
        why = (f"no value: needs {tg['compared']}" if met is None else
               f"{tg['value']:.3g} ({tg['compared']}), needs {op} {tg['limit']:g}")
        targets.append(reporting.Target(f"{tg['target']} (at {tg['judged_at']})", met, why))
    not_run = sorted({t.gate for t in TARGETS} - set(report["placements"]))
    notes = []
    if not_run:
        n = sum(1 for t in TARGETS if t.gate in not_run)
        notes.append(f"{n} target(s) judged at placements not run ({', '.join(not_run)})")
    if report["noise"]["noisy"]:
        notes.append("NOISY machine: repeat for numbers to quote")
    return summary_lines("rpc", len(runs), failed, targets, note="; ".join(notes))


def print_report(report: dict) -> None:
    console = make_console()
    meta = report["meta"]
    console.print(f"[bold]rpc_bench[/bold]: {meta['calls']:,} timed calls per case after {meta['warmup']:,} warm-up, "
                  f"{meta['rounds']} interleaved round(s); throughput {INFLIGHT} in flight over {meta['tput_seconds']} s. "
                  "Latency is [bold]closed loop[/bold] (one call in flight), 32-byte echo, us.")
    for placement in meta["placements"]:
        pl = report["placements"][placement]
        skipped: list[tuple[str, str]] = []
        t = table(f"Closed-loop latency, placement '{placement}' ({PLACEMENT_TEXT[placement]}), "
                  "median (min..max) over rounds",
                  ("case", "p50 us", "p99 us", "p99.9 us", "p99 / p50", "p50 / REQ/REP p50",
                   "p50 per round"),
                  legend="Lower is better in every column. p50 / REQ/REP p50: against pyzmq "
                         "REQ/REP tcp (the reference row, 1.00) measured in the same round "
                         "and placement.")
        for case in CASES:
            if case.kind != "latency" or case.name not in pl["cases"]:
                continue
            c = pl["cases"][case.name]
            if c.get("skipped"):
                t.add_row(case.label, "[dim]skipped[/dim]", "", "", "", "", "")
                skipped.append((case.name, c["skipped"]))
                continue
            s = c["summary"]
            note = _per_round(c["rounds"], "p50_us", 1)
            if s.get("truncated_rounds"):
                note += f" ({s['truncated_rounds']} truncated)"
            t.add_row(case.label, _fmt_spread(s.get("p50_us")), _fmt_spread(s.get("p99_us")),
                      _fmt_spread(s.get("p999_us")),
                      _fmt_spread(pl["ratios"]["p99_over_p50"].get(case.name), 2),
                      _fmt_spread(pl["ratios"]["p50_vs_zmq_reqrep"].get(case.name), 2), note)
        if t.row_count:
            console.print(t)

        t = table(f"Pipelined throughput, {INFLIGHT} in flight, placement '{placement}'",
                  ("case", "req/s", "x DEALER->ROUTER", "req/s per round"),
                  legend="Higher is better in every column. x DEALER->ROUTER: req/s over "
                         "pyzmq DEALER->ROUTER tcp's (the reference row, 1.00) in the same "
                         "round and placement.")
        for case in CASES:
            if case.kind != "throughput" or case.name not in pl["cases"]:
                continue
            c = pl["cases"][case.name]
            if c.get("skipped"):
                t.add_row(case.label, "[dim]skipped[/dim]", "", "")
                skipped.append((case.name, c["skipped"]))
                continue
            s = c["summary"]
            t.add_row(case.label, _fmt_spread(s.get("rate"), 0),
                      _fmt_spread(pl["ratios"]["throughput_vs_zmq_dealer_router"].get(case.name), 2),
                      _per_round(c["rounds"], "rate", 0))
        if t.row_count:
            console.print(t)

        for name, why in skipped:
            console.print(f"  [dim]skipped {name}: {why}[/dim]")
        r = pl["ratios"]
        t = table(f"Ratios per round, median (min..max), placement '{placement}'",
                  ("ratio", "value", "better"),
                  legend="Each ratio is taken per round between the two cases it names, "
                         "measured in the same round and placement.")
        t.add_row("microrpc raw adaptive (default) tcp p50 / grpcio p50",
                  _fmt_spread(r["microrpc_raw_block_vs_grpc_p50"], 3), "lower")
        t.add_row("microrpc raw spin tcp p50 / C busy-poll p50",
                  _fmt_spread(r["microrpc_raw_spin_vs_c_busy_poll_p50"], 2), "lower")
        t.add_row("msgpack - raw p50, block (us)", _fmt_spread(r["msgpack_minus_raw_p50_us"]["block"], 2), "lower")
        t.add_row("msgpack - raw p50, spin (us)", _fmt_spread(r["msgpack_minus_raw_p50_us"]["spin"], 2), "lower")
        console.print(t)

        _targets_table(console, f"Targets measured at placement '{placement}' (for information "
                                "where a target is judged at another placement)",
                       [(placement, tg) for tg in pl["targets"]])
        n = pl["noise"]
        console.print(f"Noise during '{placement}': other processes {_fmt_spread(n['other_cpu'], 2)} CPUs, "
                      f"host steal {_fmt_spread(n['steal_cpu'], 2)} CPUs (median (min..max) over case runs).")
    # The verdict that counts: each target at the placement it names, when measured.
    gated = [(tg["judged_at"], tg) for tg in report["targets"]]
    if gated:
        _targets_table(console, "Targets, each at the placement it is judged at (the verdict)", gated)
    console.print(f"Noise over the whole run: other processes {report['noise']['other_cpu']:.2f} CPUs on average, "
                  f"steal {report['noise']['steal_cpu']:.2f}"
                  + (f": [red]NOISY[/red], above {NOISY_OTHER_CPU}; repeat the run for numbers to quote."
                     if report["noise"]["noisy"] else "."))
    if report["failures"]:
        console.print(f"[red]{len(report['failures'])} case run(s) failed:[/red]")
        for f in report["failures"][:20]:
            console.print(f"  {f['placement']} round {f['round'] + 1} {f['case']}: {f['error']}",
                          markup=False)
    emit_summary(console, summary(report))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny run for smoke tests: 2,000 calls, 1 round, 'split' placement, 0.5 s throughput")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    ap.add_argument("--calls", type=int, help="timed calls per latency case and round (default 20,000; quick 2,000)")
    ap.add_argument("--warmup", type=int, help="untimed calls before timing (default calls/10)")
    ap.add_argument("--placements", help="comma list of same,split,os (default all; quick split)")
    ap.add_argument("--cases", help="comma list of case names or glob patterns (see --list-cases)")
    ap.add_argument("--tput-seconds", type=float, help="measured window per throughput case (default 2; quick 0.5)")
    ap.add_argument("--max-seconds", type=float, help="time budget per latency run before it is cut short (default 60)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results (default {DEFAULT_JSON})")
    ap.add_argument("--list-cases", action="store_true", help="print the case names and exit")
    args = ap.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.calls = args.calls or (2_000 if q else 20_000)
    args.warmup = args.warmup if args.warmup is not None else max(100, args.calls // 10)
    args.tput_seconds = args.tput_seconds or (0.5 if q else 2.0)
    args.max_seconds = args.max_seconds or (20.0 if q else 60.0)
    placements = (args.placements or ("split" if q else "same,split,os")).split(",")
    bad = [p for p in placements if p not in PLACEMENTS]
    if bad:
        ap.error(f"unknown placement(s) {bad}; choose from {sorted(PLACEMENTS)}")
    args.placements = placements
    if args.cases:
        pats = [p.strip() for p in args.cases.split(",") if p.strip()]
        args.case_list = [c for c in CASES if any(fnmatch.fnmatch(c.name, p) for p in pats)]
        if not args.case_list:
            ap.error(f"--cases {args.cases!r} matches none of {[c.name for c in CASES]}")
    else:
        args.case_list = list(CASES)
    if args.rounds < 1 or args.calls < 1:
        ap.error("--rounds and --calls must be positive")
    return args


def _terminate(signum: int, frame: Any) -> None:
    # Unwind through the finally blocks of run_once, which stop our children by pid.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.list_cases:
        for c in CASES:
            print(f"{c.name}\t{c.kind}\t{c.label}")
        return 0
    cpus = os.sched_getaffinity(0)
    if any(p in ("same", "split") for p in args.placements) and not {0, 1} <= cpus:
        print(f"placements 'same'/'split' need CPUs 0 and 1; this process may use {sorted(cpus)}", file=sys.stderr)
        return 2
    names = {c.name for c in args.case_list}
    for ref in (REF_LATENCY, REF_THROUGHPUT):
        if ref not in names:
            print(f"note: reference case {ref} is filtered out: its ratios will be n/a", file=sys.stderr)

    started = time.time()
    whole = NoiseMeter()
    with tempfile.TemporaryDirectory(prefix="rpc_bench_") as tmpdir:
        tmp = Path(tmpdir)
        ctx = Ctx(tmp, args.calls, args.warmup, args.max_seconds, args.tput_seconds,
                  min(0.5, args.tput_seconds / 2))
        built = build_c(tmp)
        avail: dict[str, str | None] = {
            "microrpc": microrpc_status(),
            "grpc": None if importlib.util.find_spec("grpc") else "grpcio not installed (pip install grpcio, in the 'bench' extra)",
            "uvloop": None if importlib.util.find_spec("uvloop") else "uvloop not installed (pip install uvloop, in the 'bench' extra)",
            **built,
        }
        # rounds[placement][case][round] = result
        rounds: dict[str, dict[str, dict[int, dict]]] = {p: {} for p in args.placements}
        failures: list[dict] = []
        n = len(args.case_list)
        for rnd in range(args.rounds):
            for placement in args.placements:
                # Rotate the order every round so no case always runs first or last.
                order = args.case_list[rnd % n:] + args.case_list[:rnd % n]
                for case in order:
                    if why_skipped(case, placement, avail):
                        continue
                    print(f"[round {rnd + 1}/{args.rounds}] {placement:5s} {case.name} ...", file=sys.stderr, flush=True)
                    try:
                        res = run_once(case, placement, ctx)
                        res["status"] = "ok"
                    except CaseFailed as exc:
                        res = {"status": "failed", "error": str(exc)}
                        failures.append({"case": case.name, "placement": placement, "round": rnd, "error": str(exc)})
                        print(f"    FAILED: {exc}", file=sys.stderr, flush=True)
                    rounds[placement].setdefault(case.name, {})[rnd] = res

    report: dict[str, Any] = {
        "meta": {
            "suite": "rpc_bench",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "mode": "closed loop (one call in flight) for latency; 64 in flight for throughput",
            "payload_bytes": 32,
            "calls": args.calls, "warmup": args.warmup, "rounds": args.rounds,
            "tput_seconds": args.tput_seconds, "inflight": INFLIGHT,
            "placements": args.placements,
            "placement_cpus": {p: {"client": PLACEMENTS[p][0], "server": PLACEMENTS[p][1]} for p in args.placements},
            "histogram": "HdrHistogram(1 ns, 60 s, 3 digits); 'hist' fields are its base64 encoding",
            "host": {"python": platform.python_version(), "machine": platform.machine(),
                     "kernel": platform.release(), "cpus": os.cpu_count()},
            "peers_missing": {k: v for k, v in avail.items() if v},
        },
        "placements": {},
        "failures": failures,
    }
    all_noise = []
    for placement in args.placements:
        pl_rounds = rounds[placement]
        ratios = compute_ratios(pl_rounds, args.rounds)
        cases_out: dict[str, Any] = {}
        noise = []
        for case in args.case_list:
            skip = why_skipped(case, placement, avail)
            if skip:
                cases_out[case.name] = {"label": case.label, "kind": case.kind, "skipped": skip}
                continue
            per = pl_rounds.get(case.name, {})
            noise += [r["noise"] for r in per.values() if r.get("status") == "ok"]
            cases_out[case.name] = {
                "label": case.label, "kind": case.kind,
                "rounds": [per.get(i, {"status": "missing"}) for i in range(args.rounds)],
                "summary": summarize_case(case, per),
            }
        all_noise += noise
        report["placements"][placement] = {
            "cpus": PLACEMENT_TEXT[placement],
            "cases": cases_out,
            "ratios": ratios,
            "targets": evaluate_targets(ratios, placement),
            "noise": {k: spread([x[k] for x in noise]) for k in ("other_cpu", "steal_cpu")},
        }
    report["targets"] = [
        tg for t in TARGETS if t.gate in report["placements"]
        for tg in report["placements"][t.gate]["targets"] if tg["id"] == t.id
    ]
    report["noise"] = whole.read()
    report["noise"]["per_case_other_cpu"] = spread([x["other_cpu"] for x in all_noise])
    report["noise"]["per_case_steal_cpu"] = spread([x["steal_cpu"] for x in all_noise])
    # rpc-peers.md: repeat a run during which other processes used more than ~0.1 CPU.
    report["noise"]["noisy"] = report["noise"]["other_cpu"] > NOISY_OTHER_CPU

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print_report(report)
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
