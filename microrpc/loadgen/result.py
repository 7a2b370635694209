"""What one load-generator run measured: the per-process tally, merging tallies across
processes, the checked outcome accounting, and the run's result (JSON, ``.hgrm`` files).

Every request the schedule offers ends in exactly one outcome:

=================  ==================================================================
ok                 a response (its latency, from the *intended* send time, is recorded)
rejected_server    the server's overload control refused it (ERROR code OVERLOADED)
rejected_client    no credit arrived in time, or the local credit queue was full
timeout            no reply within the timeout, or the server skipped it (its deadline
                   passed before it started), or still unanswered when the drain ended
error              any other failure (handler error, lost connection, ...)
=================  ==================================================================

``goodput`` counts the ok responses within the SLO, per second of measured schedule.
"""
from __future__ import annotations

import dataclasses
import json
import math
from array import array
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["OUTCOMES", "AccountingError", "Tally", "LoadResult", "new_histogram",
           "percentiles"]

OUTCOMES = ("ok", "rejected_server", "rejected_client", "timeout", "error")
# 1 us .. 100 s at 3 significant digits: every latency a bounded run can produce.
HIST_LOW_NS = 1_000
HIST_HIGH_NS = 100_000_000_000
HIST_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


class AccountingError(RuntimeError):
    """The outcomes do not add up to the requests offered: the run cannot be trusted."""


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOW_NS, HIST_HIGH_NS, HIST_DIGITS)


def _clamp(ns: int) -> int:
    if ns < HIST_LOW_NS:
        return HIST_LOW_NS
    return ns if ns < HIST_HIGH_NS else HIST_HIGH_NS - 1


def percentiles(hist: HdrHistogram) -> dict[str, float | int | None]:
    """count, min/mean/max and the usual percentiles, in microseconds (None when empty)."""
    n = hist.get_total_count()
    out: dict[str, float | int | None] = {"count": n}
    if not n:
        out.update({k: None for k in ("min_us", "mean_us", "max_us")})
        out.update({f"p{p:g}_us": None for p in PERCENTILES})
        return out
    out["min_us"] = hist.get_min_value() / 1e3
    out["mean_us"] = round(hist.get_mean_value() / 1e3, 3)
    out["max_us"] = hist.get_max_value() / 1e3
    for p in PERCENTILES:
        out[f"p{p:g}_us"] = hist.get_value_at_percentile(p) / 1e3
    return out


class Tally:
    """Counters of one generator process. The engine bumps the attributes directly (this is
    its hot path); ``to_wire``/``from_wire`` carry a tally between processes."""

    HISTS = ("latency", "reject_server", "reject_client", "send_lag")
    SERIES = ("offered", "ok", "good", "rejected_server", "rejected_client", "timeout", "error")

    def __init__(self, slo_ns: int, bucket_ns: int, n_buckets: int) -> None:
        self.slo_ns = slo_ns
        self.bucket_ns = bucket_ns
        self.offered = 0
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.good = 0
        # Requests of the warm-up: accounted for separately (and checked), never reported.
        self.warmup_offered = 0
        self.warmup_done = 0
        # latency: ok responses; reject_server / reject_client: time until a reject reached
        # us; send_lag: actual submit time - intended send time. HdrHistogram's
        # record_value is Python (~1 us), too slow for a generator's loop: values are
        # appended to arrays here and recorded when a histogram is first read (fold()).
        self._hists = {k: new_histogram() for k in self.HISTS}
        self._pending = {k: array("q") for k in self.HISTS}
        self.lag_ns = self._pending["send_lag"]           # the generators append to it
        # Per time bucket since the measured start: offered by intended send time, the
        # outcomes by the time they became known.
        self.series = {k: [0] * n_buckets for k in self.SERIES}
        self.bucket_latency = [array("q") for _ in range(n_buckets)]
        self.stray_frames = 0        # replies to calls we never made (a server bug)
        self.late_replies = 0        # replies after we had counted the call a timeout
        self.error_types: dict[str, int] = {}
        self.connections_lost = 0
        self.sessions = 0
        self.connections = 0
        self.elapsed_ns = 0
        self.cpu_ns = 0              # CPU time the generator loop got while it ran

    def fold(self) -> None:
        """Record the values appended since the last fold into the histograms."""
        for k, values in self._pending.items():
            if values:
                h = self._hists[k]
                for v in values:
                    h.record_value(_clamp(v))
                del values[:]

    def _hist(self, name: str) -> HdrHistogram:
        if self._pending[name]:
            self.fold()
        return self._hists[name]

    latency = property(lambda self: self._hist("latency"))
    reject_server = property(lambda self: self._hist("reject_server"))
    reject_client = property(lambda self: self._hist("reject_client"))
    send_lag = property(lambda self: self._hist("send_lag"))

    def bucket(self, since_start_ns: int) -> int:
        """The bucket index of a time (clamped to the last bucket)."""
        i = since_start_ns // self.bucket_ns
        n = len(self.bucket_latency)
        return 0 if i < 0 else (i if i < n else n - 1)

    def record_ok(self, latency_ns: int, since_start_ns: int) -> None:
        self.counts["ok"] += 1
        self._pending["latency"].append(latency_ns)
        b = self.bucket(since_start_ns)
        self.series["ok"][b] += 1
        self.bucket_latency[b].append(latency_ns)
        if latency_ns <= self.slo_ns:
            self.good += 1
            self.series["good"][b] += 1

    def record(self, outcome: str, latency_ns: int, since_start_ns: int) -> None:
        """A measured request that did not succeed."""
        self.counts[outcome] += 1
        self.series[outcome][self.bucket(since_start_ns)] += 1
        if outcome == "rejected_server" or outcome == "rejected_client":
            self._pending["reject_server" if outcome == "rejected_server"
                          else "reject_client"].append(latency_ns)

    def record_error_type(self, name: str) -> None:
        self.error_types[name] = self.error_types.get(name, 0) + 1

    def outcomes_total(self) -> int:
        return sum(self.counts.values())

    def check(self, who: str = "run") -> None:
        """Raise AccountingError unless every offered request has exactly one outcome."""
        total = self.outcomes_total()
        if total != self.offered or self.warmup_done != self.warmup_offered:
            raise AccountingError(
                f"{who}: outcomes do not add up: offered {self.offered}, "
                f"accounted {total} ({self.counts}); warm-up offered {self.warmup_offered}, "
                f"accounted {self.warmup_done}")
        if self.counts["ok"] != self.latency.get_total_count():
            raise AccountingError(f"{who}: {self.counts['ok']} ok but "
                                  f"{self.latency.get_total_count()} latencies recorded")

    # -- between processes ---------------------------------------------------------------

    _NOT_WIRED = ("_hists", "_pending", "lag_ns", "bucket_latency")

    def to_wire(self) -> dict:
        self.fold()
        d = {k: v for k, v in vars(self).items() if k not in self._NOT_WIRED}
        d["histograms"] = {k: h.encode() for k, h in self._hists.items()}
        d["bucket_latency"] = [a.tobytes() for a in self.bucket_latency]
        return d

    @classmethod
    def from_wire(cls, d: dict) -> "Tally":
        t = cls.__new__(cls)
        for k, v in d.items():
            if k == "histograms":
                t._hists = {name: HdrHistogram.decode(enc) for name, enc in v.items()}
            elif k == "bucket_latency":
                t.bucket_latency = [array("q", b) for b in v]
            else:
                setattr(t, k, v)
        t._pending = {k: array("q") for k in cls.HISTS}
        t.lag_ns = t._pending["send_lag"]
        return t

    @classmethod
    def merge(cls, tallies: list["Tally"]) -> "Tally":
        """One tally for the whole run: counters and series added, histograms added."""
        first = tallies[0]
        n = max(len(t.bucket_latency) for t in tallies)
        out = cls(first.slo_ns, first.bucket_ns, n)
        for t in tallies:
            if t.slo_ns != out.slo_ns or t.bucket_ns != out.bucket_ns:
                raise ValueError("tallies of different runs cannot be merged")
            out.offered += t.offered
            out.good += t.good
            out.warmup_offered += t.warmup_offered
            out.warmup_done += t.warmup_done
            for k in OUTCOMES:
                out.counts[k] += t.counts[k]
            for k in cls.HISTS:
                getattr(out, k).add(getattr(t, k))
            for k in cls.SERIES:
                for i, v in enumerate(t.series[k]):
                    out.series[k][i] += v
            for i, a in enumerate(t.bucket_latency):
                out.bucket_latency[i].extend(a)
            for name, v in t.error_types.items():
                out.error_types[name] = out.error_types.get(name, 0) + v
            for k in ("stray_frames", "late_replies", "connections_lost",
                      "sessions", "connections"):
                setattr(out, k, getattr(out, k) + getattr(t, k))
            out.elapsed_ns = max(out.elapsed_ns, t.elapsed_ns)
            out.cpu_ns += t.cpu_ns
        return out


def _p99(values: array) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(0.99 * len(s)) - 1))] / 1e3


@dataclasses.dataclass
class LoadResult:
    """The merged outcome of one run (see the module docstring for the outcome names)."""

    config: dict[str, Any]
    tally: Tally
    measured_s: float            # length of the measured schedule
    offered_rate: float          # requests offered per second (measured window)
    per_process: list[dict[str, Any]]
    valid: bool
    invalid_reasons: list[str]
    server_stats: dict[str, Any] | None = None

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.tally.counts)

    @property
    def offered(self) -> int:
        return self.tally.offered

    @property
    def goodput(self) -> float:
        """ok responses within the SLO per second."""
        return self.tally.good / self.measured_s if self.measured_s else 0.0

    @property
    def throughput(self) -> float:
        return self.tally.counts["ok"] / self.measured_s if self.measured_s else 0.0

    def fraction(self, outcome: str) -> float:
        return self.tally.counts[outcome] / self.offered if self.offered else 0.0

    def latency_us(self, percentile: float) -> float | None:
        h = self.tally.latency
        return h.get_value_at_percentile(percentile) / 1e3 if h.get_total_count() else None

    def reject_latency_us(self, percentile: float) -> float | None:
        """Percentile of the time until a reject (server or client side) reached the caller."""
        h = new_histogram()
        h.add(self.tally.reject_server)
        h.add(self.tally.reject_client)
        return h.get_value_at_percentile(percentile) / 1e3 if h.get_total_count() else None

    def series(self) -> list[dict[str, Any]]:
        """Per time bucket: goodput, throughput, rejects, timeouts per second and p99 (us)."""
        t = self.tally
        width_s = t.bucket_ns / 1e9
        rows = []
        for i in range(len(t.bucket_latency)):
            row: dict[str, Any] = {"t_s": round(i * width_s, 6)}
            for k in Tally.SERIES:
                row[k] = t.series[k][i]
            row["goodput"] = t.series["good"][i] / width_s
            row["p99_us"] = _p99(t.bucket_latency[i])
            rows.append(row)
        # Drop empty buckets at the end (the drain overshoot).
        while rows and not any(rows[-1][k] for k in Tally.SERIES):
            rows.pop()
        return rows

    def to_dict(self, series: bool = True) -> dict[str, Any]:
        t = self.tally
        d: dict[str, Any] = {
            "config": self.config,
            "valid": self.valid,
            "invalid_reasons": self.invalid_reasons,
            "measured_s": self.measured_s,
            "offered": t.offered,
            "offered_rate": self.offered_rate,
            "outcomes": dict(t.counts),
            "good": t.good,
            "goodput": self.goodput,
            "throughput": self.throughput,
            "slo_us": t.slo_ns / 1e3,
            "latency": percentiles(t.latency),
            "reject_latency_server": percentiles(t.reject_server),
            "reject_latency_client": percentiles(t.reject_client),
            "send_lag": percentiles(t.send_lag),
            "error_types": dict(t.error_types),
            "stray_frames": t.stray_frames,
            "late_replies": t.late_replies,
            "connections_lost": t.connections_lost,
            "sessions": t.sessions,
            "connections": t.connections,
            "per_process": self.per_process,
            # HdrHistogram's own compressed, base64 encoding: HdrHistogram.decode() reads it.
            "histograms": {k: getattr(t, k).encode().decode("ascii") for k in Tally.HISTS},
            "server_stats": self.server_stats,
        }
        if series:
            d["bucket_s"] = t.bucket_ns / 1e9
            d["series"] = self.series()
        return d

    def to_json(self, path: str | Path, series: bool = True) -> None:
        Path(path).write_text(json.dumps(self.to_dict(series), indent=1))

    def write_hgrm(self, prefix: str | Path) -> list[Path]:
        """Percentile distributions (microseconds) as ``<prefix>.<name>.hgrm``, the format
        HdrHistogram's plotter reads. Empty histograms are skipped."""
        written = []
        for name in Tally.HISTS:
            h = getattr(self.tally, name)
            if not h.get_total_count():
                continue
            path = Path(f"{prefix}.{name}.hgrm")
            with open(path, "wb") as fh:
                h.output_percentile_distribution(fh, 5, 1000.0)
            written.append(path)
        return written
