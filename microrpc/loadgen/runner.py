"""Running a load: one engine in the calling thread, or ``procs`` child processes, then the
merged tallies checked (every request accounted for exactly once) and judged valid or not.
"""
from __future__ import annotations

from typing import Callable

from microrpc import _native
from microrpc.client import Client
from microrpc.errors import RpcError
from microrpc.loadgen.engine import LoadSpec, make_generator, pin
from microrpc.loadgen.result import AccountingError, LoadResult, Tally

# A run in which more than this fraction of calls ended in an error (not a reject, not a
# timeout: a refusal, a lost connection, a handler's exception) is marked invalid.
ERROR_TOLERANCE = 0.001

__all__ = ["run", "fetch_server_stats"]


def run(spec: LoadSpec, progress: Callable[[dict], None] | None = None,
        stats_method: str | None = None) -> LoadResult:
    """Run the load described by ``spec`` and return the merged, checked result.

    ``progress`` (optional) is called about every 200 ms with a dict of running counts.
    With one process the generator runs in the calling thread (pinned to ``spec.cpus[0]``
    when given: that pins the caller). ``stats_method``: a method of the server that returns
    its statistics (the synthetic server's ``synthetic.stats``), fetched after the run.
    Raises AccountingError if any request is not accounted for exactly once.
    """
    if spec.procs == 1:
        pin(spec, 0)
        engine = make_generator(spec, 0, progress)
        engine.connect()
        tallies = [engine.run(_native.monotonic_ns() + 1_000_000)]
    else:
        # Imported here, not at the top: `python -m microrpc.loadgen.procs` (each child)
        # imports this package first, and runpy warns about, and runs twice, a module
        # that the package had already imported.
        from microrpc.loadgen.procs import run_processes
        tallies = run_processes(spec, progress)
    for i, t in enumerate(tallies):
        t.check(f"process {i}")
    merged = Tally.merge(tallies)
    merged.check("merged run")
    if sum(t.offered for t in tallies) != merged.offered:
        raise AccountingError("merged offered count differs from the processes' sum")
    measured_s = spec.measured_s
    reasons = invalid_reasons(merged, spec)
    per_process = [{"offered": t.offered, "outcomes": dict(t.counts), "good": t.good,
                    "latency_count": t.latency.get_total_count(),
                    "send_lag_p99_us": (t.send_lag.get_value_at_percentile(99.0) / 1e3
                                        if t.send_lag.get_total_count() else None),
                    "elapsed_s": t.elapsed_ns / 1e9,
                    "cpu_share": t.cpu_ns / t.elapsed_ns if t.elapsed_ns else None}
                   for t in tallies]
    result = LoadResult(
        config=spec.config(), tally=merged, measured_s=measured_s,
        offered_rate=merged.offered / measured_s if measured_s else 0.0,
        per_process=per_process, valid=not reasons, invalid_reasons=reasons)
    if stats_method:
        result.server_stats = fetch_server_stats(spec.address, stats_method,
                                                 auth_key=spec.auth_key)
    return result


def fetch_server_stats(address: str, method: str, timeout: float = 5.0,
                       auth_key: bytes | None = None) -> dict:
    """Call a statistics method on the server (msgpack codec) and return its dict."""
    with Client(address, timeout=timeout, auth_key=auth_key) as c:
        stats = c.call(method)
    if not isinstance(stats, dict):
        raise RpcError(f"{method} returned {type(stats).__name__}, not a dict")
    return stats


def invalid_reasons(merged: Tally, spec: LoadSpec) -> list[str]:
    """Why a run does not measure what it claims (empty: it does)."""
    reasons = []
    lag = merged.send_lag
    if lag.get_total_count():
        p99 = lag.get_value_at_percentile(99.0)
        limit = spec.max_lag_fraction * spec.slo * 1e9
        if p99 > limit:
            reasons.append(f"generator fell behind its schedule: p99 send lag "
                           f"{p99 / 1e3:.0f} us > {limit / 1e3:.0f} us "
                           f"({spec.max_lag_fraction:g} x SLO)")
    if merged.connections_lost:
        reasons.append(f"{merged.connections_lost} connection(s) lost")
    if merged.stray_frames:
        reasons.append(f"{merged.stray_frames} replies to unknown calls (server bug?)")
    errors = merged.counts["error"]
    if errors > ERROR_TOLERANCE * max(merged.offered, 1):
        kinds = ", ".join(f"{name} {n}" for name, n in sorted(merged.error_types.items()))
        reasons.append(f"{errors / merged.offered:.1%} of calls ended in an error other "
                       f"than a reject or a timeout ({kinds or 'untyped'}): the run "
                       f"measures those failures, not the server's service")
    return reasons
