"""Shared fixtures for the breakwater tests: a fake clock and a discrete-event simulation of
one single-worker server under open-loop Poisson load from many credit-limited clients.

The simulation drives the real policy and client objects exactly as microrpc will: the server
calls open_session / on_request / on_reject / on_complete / on_tick, each client session is a
ClientCredits. Time is simulated (integers, ns); all randomness comes from one seeded RNG,
so a run is reproducible bit for bit.
"""
from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import pytest

import breakwater

US = 1_000
MS = 1_000_000
S = 1_000_000_000


class FakeClock:
    """A monotonic ns clock that moves only when told to."""

    def __init__(self, start_ns: int = 1_000 * S) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> int:
        assert ns >= 0
        self.now += ns
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ----------------------------------------------------------------------------- simulation

# event kinds
_ARRIVAL, _SERVER_RECV, _DONE, _CLIENT_RESP, _TICK, _CLIENT_CREDIT, _EXPIRE = range(7)


@dataclass
class SimResult:
    policy: str
    duration_ns: int  # measured interval (after warm-up)
    mu: float  # capacity, requests/s
    slo_ns: int
    offered: int = 0  # requests whose intended send time is in the measured interval
    ok: int = 0
    good: int = 0  # ok within the SLO
    rejected_server: int = 0
    rejected_client: int = 0  # local queue full
    expired_client: int = 0
    unfinished: int = 0  # no outcome when the simulation stopped
    latencies: list[int] = field(default_factory=list)  # of ok requests, from intended send
    client_waits: list[int] = field(default_factory=list)  # of ok requests: intended -> transmitted
    busy_ns: int = 0  # server busy time inside the measured interval
    reject_latencies: list[int] = field(default_factory=list)  # server rejects, from intended send
    buckets: list[dict] = field(default_factory=list)  # time series (all of the run)
    pool_samples: list[tuple[int, int]] = field(default_factory=list)  # (t, pool) per tick
    stats: breakwater.PolicyStatistics | None = None
    events: int = 0

    @property
    def goodput(self) -> float:
        return self.good / (self.duration_ns / S)

    @property
    def goodput_ratio(self) -> float:
        return self.goodput / self.mu

    def p(self, q: float, values: list[int] | None = None) -> float:
        v = sorted(self.latencies if values is None else values)
        if not v:
            return math.nan
        return v[min(len(v) - 1, int(q * len(v)))]

    @property
    def utilization(self) -> float:
        return self.busy_ns / self.duration_ns

    @property
    def p99(self) -> float:
        return self.p(0.99)

    def summary(self) -> str:
        st = self.stats
        cm = st.credit_messages_per_completion if st else 0.0
        return (
            f"{self.policy}: goodput/mu={self.goodput_ratio:.3f} util={self.utilization:.3f} p50={self.p(0.5)/US:.0f}us "
            f"p99={self.p99/US:.0f}us ({self.p99/self.slo_ns:.2f} SLO) offered={self.offered} "
            f"ok={self.ok} rej_srv={self.rejected_server} rej_cli={self.rejected_client} "
            f"expired={self.expired_client} unfinished={self.unfinished} "
            f"credit_msgs/completion={cm:.3f} pool[min,max]={st.pool_min if st else 0},"
            f"{st.pool_max if st else 0} events={self.events}"
        )


def run_simulation(
    policy: breakwater.OverloadPolicy,
    *,
    load: float | list[tuple[int, float]] = 2.0,
    n_clients: int = 1000,
    service_ns: int = 100 * US,
    service: str = "exp",
    one_way_ns: int = 35 * US,
    duration_ns: int = 600 * MS,
    warmup_ns: int = 150 * MS,
    seed: int = 1,
    max_queue: int = breakwater.DEFAULT_MAX_QUEUE,
    max_wait_ns: int = breakwater.DEFAULT_MAX_WAIT_NS,
    bucket_ns: int = 0,
    delay_signal: str = "max",
) -> SimResult:
    """Simulate ``duration_ns`` of a single-worker FIFO server (mean service ``service_ns``)
    behind ``policy``, with ``n_clients`` sessions offering Poisson load.

    ``load`` is a multiple of capacity mu = 1/service_ns, either constant or a schedule
    ``[(t_ns, load), ...]`` (a step experiment). The network adds ``one_way_ns`` each way.
    The SLO follows the issue: 10 x (mean service time + round trip).
    """
    rng = random.Random(seed)
    mu = S / service_ns
    rtt = 2 * one_way_ns
    slo = 10 * (service_ns + rtt)
    schedule = [(0, load)] if not isinstance(load, list) else sorted(load)
    res = SimResult(type(policy).__name__, duration_ns - warmup_ns, mu, slo)

    clients = [breakwater.ClientCredits(max_queue=max_queue, max_wait_ns=max_wait_ns) for _ in range(n_clients)]
    registered = [False] * n_clients
    expire_at: list[int | None] = [None] * n_clients
    intended: list[int] = []  # by request id
    sent_at: list[int] = []  # by request id: when the client transmitted it
    owner: list[int] = []
    uses_credits = policy.uses_credits
    tick = policy.tick_interval_ns

    heap: list = []
    seq = 0

    def push(t: int, kind: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, a, b, c))

    server_q: deque[tuple[int, int, int]] = deque()  # (recv time, client, req)
    busy = False
    measuring_from = warmup_ns
    bucket_of = (lambda t: t // bucket_ns) if bucket_ns else None
    buckets: dict[int, dict] = {}

    def bucket(t: int) -> dict:
        k = bucket_of(t)
        b = buckets.get(k)
        if b is None:
            b = buckets[k] = {"t": k * bucket_ns, "good": 0, "ok": 0, "rejected": 0, "lat": []}
        return b

    def measured(req: int) -> bool:
        return intended[req] >= measuring_from

    def start_service(now: int, cl: int, req: int) -> None:
        if service == "exp":
            t = max(1, int(rng.expovariate(1.0 / service_ns)))
        elif service == "const":
            t = service_ns
        elif service == "bimodal":  # 20 % take 4 S, 80 % 0.25 S: mean S (netbench)
            t = 4 * service_ns if rng.random() < 0.2 else service_ns // 4
        else:
            raise ValueError(service)
        end = now + t
        res.busy_ns += max(0, min(end, duration_ns) - max(now, measuring_from))
        push(end, _DONE, cl, req)

    def queue_delay(now: int) -> int:
        oldest = now - server_q[0][0] if server_q else 0
        if delay_signal == "oldest":
            return oldest
        # the wait a request arriving now would see: work queued ahead at the mean
        predicted = (len(server_q) + busy) * service_ns
        return predicted if delay_signal == "predicted" else max(predicted, oldest)

    def transmit(now: int, c: int, req: int) -> None:
        sent_at[req] = now
        push(now + one_way_ns, _SERVER_RECV, c, req, clients[c].demand())

    def arm_expiry(c: int) -> None:
        d = clients[c].next_deadline_ns()
        if d is not None and (expire_at[c] is None or d < expire_at[c]):
            expire_at[c] = d
            push(d, _EXPIRE, c)

    def finish_client_side(now: int, req: int, outcome: str) -> None:
        if measured(req):
            if outcome == "rejected_client":
                res.rejected_client += 1
            elif outcome == "expired":
                res.expired_client += 1
        if bucket_of is not None:
            bucket(now)["rejected"] += 1

    def load_at(t: int) -> float:
        current = schedule[0][1]
        for start, value in schedule:
            if t >= start:
                current = value
        return current

    def next_change(t: int) -> int | None:
        for start, _ in schedule:
            if start > t:
                return start
        return None

    def schedule_arrival(now: int) -> None:
        # Poisson process with a piecewise-constant rate: if the gap crosses a rate change,
        # restart from the change (memorylessness makes this exact).
        rate = load_at(now) * mu / S  # per ns
        t = now + int(rng.expovariate(rate)) + 1
        change = next_change(now)
        if change is not None and t >= change:
            push(change, _ARRIVAL, 1)  # a = 1: restart marker, no request
        else:
            push(t, _ARRIVAL, 0)

    schedule_arrival(0)
    if tick:
        push(tick, _TICK)

    while heap:
        now, _, kind, a, b, c = heapq.heappop(heap)
        if now >= duration_ns:
            break
        res.events += 1
        if kind == _ARRIVAL:
            schedule_arrival(now)
            if a:  # rate change marker
                continue
            cl = rng.randrange(n_clients)
            req = len(intended)
            intended.append(now)
            sent_at.append(-1)
            owner.append(cl)
            if now >= measuring_from:
                res.offered += 1
            verdict = clients[cl].submit(req, now)
            if verdict == breakwater.Submit.SEND:
                transmit(now, cl, req)
            elif verdict == breakwater.Submit.QUEUED:
                arm_expiry(cl)
            else:
                finish_client_side(now, req, "rejected_client")
        elif kind == _SERVER_RECV:
            cl, req, demand = a, b, c
            if not registered[cl]:
                registered[cl] = True
                policy.open_session(cl, now)
            if policy.on_request(cl, demand, now, queue_delay(now)):
                server_q.append((now, cl, req))
                if not busy:
                    busy = True
                    t0, cl0, req0 = server_q.popleft()
                    start_service(now, cl0, req0)
            else:
                w = policy.on_reject(cl, now)
                push(now + one_way_ns, _CLIENT_RESP, cl, req, -1 - w)  # negative: a reject
        elif kind == _DONE:
            cl, req = a, b
            w = policy.on_complete(cl, now)
            push(now + one_way_ns, _CLIENT_RESP, cl, req, w)
            if server_q:
                t0, cl0, req0 = server_q.popleft()
                start_service(now, cl0, req0)
            else:
                busy = False
        elif kind == _CLIENT_RESP:
            cl, req, w = a, b, c
            rejected = w < 0
            if rejected:
                w = -1 - w
            lat = now - intended[req]
            if measured(req):
                if rejected:
                    res.rejected_server += 1
                    res.reject_latencies.append(lat)
                else:
                    res.ok += 1
                    res.latencies.append(lat)
                    res.client_waits.append(sent_at[req] - intended[req])
                    if lat <= slo:
                        res.good += 1
            if bucket_of is not None:
                bk = bucket(now)
                if rejected:
                    bk["rejected"] += 1
                else:
                    bk["ok"] += 1
                    bk["lat"].append(lat)
                    if lat <= slo:
                        bk["good"] += 1
            for tok in clients[cl].on_response(w if uses_credits else None, now):
                transmit(now, cl, tok)
            arm_expiry(cl)
        elif kind == _TICK:
            for sid, w in policy.on_tick(now, queue_delay(now)):
                push(now + one_way_ns, _CLIENT_CREDIT, sid, w)
            res.pool_samples.append((now, policy.statistics().pool))
            push(now + tick, _TICK)
        elif kind == _CLIENT_CREDIT:
            cl, w = a, b
            for tok in clients[cl].on_credit(w, now):
                transmit(now, cl, tok)
            arm_expiry(cl)
        elif kind == _EXPIRE:
            cl = a
            expire_at[cl] = None
            for tok in clients[cl].expire(now):
                finish_client_side(now, tok, "expired")
            arm_expiry(cl)

    res.unfinished = res.offered - (
        res.ok + res.rejected_server + res.rejected_client + res.expired_client
    )
    res.stats = policy.statistics()
    if bucket_of is not None:
        for k in sorted(buckets):
            bk = buckets[k]
            lat = sorted(bk.pop("lat"))
            bk["p99"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else math.nan
            bk["goodput_ratio"] = bk["good"] / (bucket_ns / S) / mu
            res.buckets.append(bk)
    return res


@pytest.fixture(scope="session")
def simulate() -> Callable[..., SimResult]:
    """The simulation function (a fixture because test files may not import each other)."""
    return run_simulation
