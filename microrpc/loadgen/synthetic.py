"""The synthetic workload: service-time distributions, a CPU-bound server method that spins
for a requested time, and the overload-policy names the command line accepts.

The method ``spin`` busy-waits on the monotonic clock with the GIL held, on the server's I/O
thread: exactly what a real CPU-bound handler does to a microrpc server (nothing else runs
while it spins). Its request body names the service time, so the load generator draws the
times and any distribution can be run against one server without restarting it:

* codec raw: 8 bytes, the service time in ns as a little-endian u64 (empty body: the
  server draws from its own default distribution);
* codec msgpack: one int argument, the service time in ns.
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
import struct
import time
from typing import Any

__all__ = [
    "ServiceTime",
    "parse_duration_ns",
    "parse_policy",
    "spin_ns",
    "encode_service",
    "decode_service",
    "register_synthetic",
    "SPIN_METHOD",
    "STATS_METHOD",
    "MAX_SERVICE_NS",
]

SPIN_METHOD = "spin"
STATS_METHOD = "synthetic.stats"
# A single request may not ask the server to spin longer than this: a malformed or hostile
# body must not be able to stall the I/O thread for minutes.
MAX_SERVICE_NS = 1_000_000_000
_U64 = struct.Struct("<Q")

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|ms|s)?\s*$")


def parse_duration_ns(text: str, default_unit: str = "us") -> int:
    """``"100us"``, ``"1.5ms"``, ``"250"`` (in ``default_unit``) -> nanoseconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 100us, 1.5ms, 2s, 500ns)")
    value = float(m.group(1)) * _UNITS[m.group(2) or default_unit]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"duration out of range: {text!r}")
    return int(round(value))


@dataclasses.dataclass(frozen=True)
class ServiceTime:
    """A service-time distribution with mean ``mean_ns``.

    ``exp``: exponential. ``const``: always the mean. ``bimodal``: 20% of requests take
    4x the mean and 80% take 0.25x (so the mean is the mean), the bimodal workload of the
    Breakwater evaluation (docs/loadgen.md).
    """

    kind: str
    mean_ns: int

    KINDS = ("exp", "const", "bimodal")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown service-time distribution {self.kind!r}: "
                             f"choose one of {', '.join(self.KINDS)}")
        if not 0 <= self.mean_ns <= MAX_SERVICE_NS:
            raise ValueError(f"mean service time must be 0..{MAX_SERVICE_NS} ns, "
                             f"got {self.mean_ns}")

    @classmethod
    def parse(cls, spec: str) -> "ServiceTime":
        """``"exp:100us"``, ``"const:50us"``, ``"bimodal:1ms"``."""
        kind, sep, mean = str(spec).partition(":")
        if not sep:
            raise ValueError(f"service time {spec!r} must look like KIND:MEAN, e.g. exp:100us")
        return cls(kind.strip(), parse_duration_ns(mean))

    def draw(self, rng: random.Random) -> int:
        """One service time in ns (capped at MAX_SERVICE_NS)."""
        m = self.mean_ns
        if self.kind == "const":
            return m
        if self.kind == "exp":
            v = int(rng.expovariate(1.0) * m)
        else:
            v = 4 * m if rng.random() < 0.2 else m // 4
        return v if v < MAX_SERVICE_NS else MAX_SERVICE_NS

    def __str__(self) -> str:
        return f"{self.kind}:{self.mean_ns / 1000:g}us"


def spin_ns(ns: int) -> None:
    """Busy-wait ``ns`` nanoseconds on the monotonic clock, holding the GIL (a CPU-bound
    handler: nothing else in this process runs meanwhile)."""
    clock = time.perf_counter_ns      # CLOCK_MONOTONIC on Linux, like microrpc's own clock
    end = clock() + ns
    while clock() < end:
        pass


def encode_service(ns: int, codec: str) -> bytes:
    """The request body that asks ``spin`` for ``ns`` of service."""
    if codec == "raw":
        return _U64.pack(ns)
    import msgpack
    return msgpack.packb([ns])


def decode_service(arg: Any) -> int | None:
    """The service time a ``spin`` argument asks for, None for "draw one yourself"."""
    if isinstance(arg, (bytes, bytearray, memoryview)):
        if len(arg) == 0:
            return None
        if len(arg) != 8:
            raise ValueError(f"a raw spin body is 8 bytes (u64 ns), got {len(arg)}")
        ns = _U64.unpack(arg)[0]
    elif isinstance(arg, int) and not isinstance(arg, bool):
        ns = arg
    else:
        raise TypeError(f"spin takes a service time in ns (int or 8 raw bytes), "
                        f"not {type(arg).__name__}")
    if not 0 <= ns <= MAX_SERVICE_NS:
        raise ValueError(f"service time {ns} ns is outside 0..{MAX_SERVICE_NS}")
    return ns


def register_synthetic(server: Any, default: ServiceTime, seed: int = 0) -> None:
    """Register ``spin`` and ``synthetic.stats`` on a ``microrpc.Server``."""
    rng = random.Random(seed)

    def spin(arg: Any = b"") -> bytes:
        ns = decode_service(arg)
        spin_ns(default.draw(rng) if ns is None else ns)
        return b""

    def stats() -> dict:
        return statistics_dict(server.statistics())

    server.register(SPIN_METHOD, spin)
    server.register(STATS_METHOD, stats)


def statistics_dict(stats: Any) -> dict:
    """A ServerStatistics (with its policy statistics) as plain msgpack-able data."""
    return stats.as_dict()


# --------------------------------------------------------------------------- policies

def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _keywords(text: str, spec: str) -> dict[str, int | float]:
    kw: dict[str, int | float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"policy {spec!r}: expected key=value, got {item!r}")
        try:
            kw[key.strip()] = _number(value.strip())
        except ValueError:
            raise ValueError(f"policy {spec!r}: {key.strip()} needs a number, "
                             f"got {value.strip()!r}") from None
    return kw


def parse_policy(spec: str) -> Any:
    """An overload policy from its command-line name.

    ``none`` (NoControl: admit everything), ``breakwater`` or
    ``breakwater:target_delay_ns=300000,alpha=0.02`` (any Breakwater keyword),
    ``aqm`` or ``aqm:THRESHOLD_NS``, ``limit:N`` (ConcurrencyLimit).
    """
    import breakwater

    name, _, rest = str(spec).strip().partition(":")
    name = name.lower()
    try:
        if name in ("none", "nocontrol"):
            if rest:
                raise ValueError("takes no parameters")
            return breakwater.NoControl()
        if name == "breakwater":
            return breakwater.Breakwater(**_keywords(rest, spec))
        if name == "aqm":
            if not rest:
                return breakwater.AQMOnly()
            if "=" in rest:
                return breakwater.AQMOnly(**_keywords(rest, spec))
            return breakwater.AQMOnly(parse_duration_ns(rest, "ns"))
        if name == "limit":
            if not rest.strip().isdigit():
                raise ValueError("needs a positive integer, e.g. limit:16")
            return breakwater.ConcurrencyLimit(int(rest))
    except TypeError as exc:        # an unknown keyword
        raise ValueError(f"policy {spec!r}: {exc}") from None
    except ValueError as exc:
        if str(exc).startswith("policy "):
            raise
        raise ValueError(f"policy {spec!r}: {exc}") from None
    raise ValueError(f"unknown policy {spec!r}: use none, breakwater[:k=v,...], "
                     f"aqm[:THRESHOLD], or limit:N")
