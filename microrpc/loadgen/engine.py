"""One load-generator process: what to run (:class:`LoadSpec`), when each request is due
(:class:`PoissonSchedule`) and the loop that sends them and accounts for every reply
(:class:`Engine`). ``runner.run`` drives one engine in the calling thread or several in
child processes (``procs``), and merges their tallies.

One generator process is one thread that spins on its sockets (epoll with a zero timeout) and
sleeps only when nothing is due for a few milliseconds: it is meant to own a core. Its
``clients`` simulated clients are Breakwater sessions, each with its own
:class:`breakwater.ClientCredits`, multiplexed over a few connections.

The superposition of N independent Poisson processes of rate r/N is one Poisson process of
rate r whose arrivals pick a client uniformly at random, which is how arrivals are drawn.
"""
from __future__ import annotations

import collections
import dataclasses
import gc
import os
import random
import select
import time
from typing import Any, Callable

import msgpack

from breakwater import DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_NS, ClientCredits, Submit
from microrpc import _core, _native, codecs, transport
from microrpc.client import outcome_of
from microrpc.errors import ConnectionLost, RpcError
from microrpc.loadgen.result import Tally
from microrpc.loadgen.synthetic import ServiceTime, encode_service

__all__ = ["LoadSpec", "PoissonSchedule", "schedule_seed", "Engine", "pin"]

_MAX_SESSION = 0xFFFFFFFF
_MAX_DEADLINE_US = 0xFFFFFFFF
_PROGRESS_NS = 200_000_000        # progress callbacks at most this often
_SPIN_BEFORE_NS = 2_000_000       # spin (no sleep) when the next event is this close
_SEND, _QUEUED = Submit.SEND, Submit.QUEUED
_REQUEST, _RESPONSE, _ERROR, _CREDIT = _core.REQUEST, _core.RESPONSE, _core.ERROR, _core.CREDIT
_HAS_CREDIT = _core.HAS_CREDIT


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """What to run. Times are in seconds, rates in requests per second over all processes.

    ``schedule`` (a tuple of ``(rate, seconds)`` segments) replaces ``rate`` and
    ``duration`` when given; the warm-up runs at the first segment's rate and is not
    measured. ``closed`` > 0 switches to a closed loop with that many requests outstanding
    (one per client; ``rate`` is then ignored), which measures capacity.
    ``service`` (e.g. ``"exp:100us"``) makes each request body ask the synthetic ``spin``
    method for a service time drawn here; with ``service=None`` the body is ``payload``
    zero bytes (raw codec) or ``[bytes]`` (msgpack), for any other method.
    ``prime``: register every session with one unmeasured request before the schedule
    starts (see ``Engine.prime``).
    """

    address: str
    rate: float = 1000.0
    duration: float = 5.0
    schedule: tuple[tuple[float, float], ...] = ()
    warmup: float = 0.5
    clients: int = 1000
    connections: int = 4
    procs: int = 1
    method: str = "spin"
    service: str | None = "exp:100us"
    payload: int = 0
    codec: str = "raw"
    slo: float = 0.002
    timeout: float = 1.0
    drain: float = 2.0
    closed: int = 0
    bucket: float = 0.01
    max_lag_fraction: float = 0.1
    client_queue: int = DEFAULT_MAX_QUEUE
    client_max_wait: float = DEFAULT_MAX_WAIT_NS / 1e9
    seed: int = 1
    cpus: tuple[int, ...] = ()
    prime: bool = True

    def __post_init__(self) -> None:
        transport.parse_address(self.address)
        checks = [
            ("duration", self.duration, 0.0, 3600.0, False),
            ("warmup", self.warmup, 0.0, 3600.0, True),
            ("slo", self.slo, 0.0, 3600.0, False),
            ("timeout", self.timeout, 0.0, 3600.0, False),
            ("drain", self.drain, 0.0, 3600.0, True),
            ("bucket", self.bucket, 0.0, 60.0, False),
            ("max_lag_fraction", self.max_lag_fraction, 0.0, 1e6, False),
            ("client_max_wait", self.client_max_wait, 0.0, 3600.0, True),
        ]
        if not self.schedule and not self.closed:
            checks.append(("rate", self.rate, 0.0, 1e9, False))
        for name, value, lo, hi, zero_ok in checks:
            if not isinstance(value, (int, float)) or not (lo < value <= hi or
                                                           (zero_ok and value == lo)):
                raise ValueError(f"{name} must be in {'[' if zero_ok else '('}{lo:g}, "
                                 f"{hi:g}], got {value!r}")
        for name, value, lo in (("clients", self.clients, 1), ("connections", self.connections, 1),
                                ("procs", self.procs, 1), ("closed", self.closed, 0),
                                ("payload", self.payload, 0), ("client_queue", self.client_queue, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
        if self.clients * self.procs > _MAX_SESSION or self.procs > 64:
            raise ValueError("too many clients or processes")
        if self.clients < self.procs:
            raise ValueError(f"need at least one client per process ({self.procs} processes)")
        if self.closed and self.closed < self.procs:
            raise ValueError("closed loop needs at least one outstanding request per process")
        for rate, secs in self.schedule:
            if not (0 <= rate <= 1e9 and 0 < secs <= 3600):
                raise ValueError(f"bad schedule segment ({rate!r}, {secs!r}): rate >= 0, "
                                 f"0 < seconds <= 3600")
        if self.codec not in ("raw", "msgpack"):
            raise ValueError(f"codec must be raw or msgpack, not {self.codec!r}")
        if self.service is not None:
            ServiceTime.parse(self.service)
        if not 1 <= len(self.method.encode()) <= 255:
            raise ValueError("method must be 1..255 UTF-8 bytes")
        for cpu in self.cpus:
            if not isinstance(cpu, int) or cpu < 0:
                raise ValueError(f"bad CPU number {cpu!r}")

    def segments(self) -> list[tuple[float, float]]:
        """The measured schedule as (rate, seconds) segments."""
        return list(self.schedule) if self.schedule else [(float(self.rate), float(self.duration))]

    @property
    def measured_s(self) -> float:
        return self.duration if self.closed else sum(s for _, s in self.segments())


class PoissonSchedule:
    """Intended send times (monotonic ns) of a Poisson process whose rate is constant per
    segment. Pure: the offsets from ``start_ns`` depend only on the segments and the seed."""

    def __init__(self, segments: list[tuple[float, float]], start_ns: int, seed: int) -> None:
        self._rng = random.Random(seed)
        self._segments = []
        end = 0
        for rate, secs in segments:
            end += int(secs * 1e9)
            self._segments.append((end, rate))
        self.start_ns = start_ns
        self.end_ns = start_ns + end
        self._i = 0
        self._t = 0.0          # offset of the last arrival from start_ns

    def __iter__(self):
        return self

    def __next__(self) -> int:
        t = self.next()
        if t is None:
            raise StopIteration
        return t

    def next(self) -> int | None:
        """The next intended send time, or None when the schedule is over."""
        segments = self._segments
        while self._i < len(segments):
            end, rate = segments[self._i]
            if rate > 0:
                t = self._t + self._rng.expovariate(rate) * 1e9
                if t < end:
                    self._t = t
                    return self.start_ns + int(t)
            # Memoryless: the next arrival after a rate change is drawn afresh from the
            # boundary at the new rate.
            self._t = float(end)
            self._i += 1
        return None


def schedule_seed(spec: LoadSpec, index: int) -> int:
    """The seed of process ``index``'s arrival schedule (tests rebuild the schedule with it)."""
    return spec.seed * 1_000_003 + index


class _Req:
    __slots__ = ("client", "intended", "measured", "timed_out", "prime")

    def __init__(self, client: "_Client", intended: int, measured: bool) -> None:
        self.client = client
        self.intended = intended
        self.measured = measured
        self.timed_out = False
        self.prime = False        # a registration request: no outcome, not offered


class _Client:
    __slots__ = ("credits", "session", "conn")

    def __init__(self, credits: ClientCredits, session: int, conn: "_Conn") -> None:
        self.credits = credits
        self.session = session
        self.conn = conn


class _Conn:
    __slots__ = ("chan", "fd", "inflight", "next_id", "dirty", "dead", "clients", "sessions")

    def __init__(self, chan: _native.Channel) -> None:
        self.chan = chan
        self.fd = chan.fileno()
        self.inflight: dict[int, _Req] = {}
        self.next_id = 1
        self.dirty = False
        self.dead = False
        self.clients: list[_Client] = []
        self.sessions: dict[int, _Client] = {}


def _share(total: int, index: int, n: int) -> int:
    return total // n + (1 if index < total % n else 0)


class Engine:
    """One generator process: its share of the clients, connections and rate."""

    def __init__(self, spec: LoadSpec, index: int,
                 progress: Callable[[dict], None] | None = None) -> None:
        self.spec = spec
        self.clock = _native.monotonic_ns
        n = spec.procs
        # Separate generators: the arrival times depend on the seed alone, whatever the
        # clients and service times drew.
        self.schedule_seed = schedule_seed(spec, index)
        self.rng = random.Random(self.schedule_seed ^ 0x5DEECE66D)
        self.service = ServiceTime.parse(spec.service) if spec.service else None
        self.closed = _share(spec.closed, index, n) if spec.closed else 0
        n_clients = self.closed or _share(spec.clients, index, n)
        n_conns = min(spec.connections, n_clients)
        self.warmup_ns = int(spec.warmup * 1e9)
        # This process's share of the schedule, warm-up (at the first rate) included.
        segs = [(r / n, s) for r, s in spec.segments()]
        self.segments = ([(segs[0][0], spec.warmup)] if spec.warmup > 0 else []) + segs
        self.start_ns = self.m0 = self.end_ns = 0      # set by run()
        self.schedule: PoissonSchedule | None = None
        self.slo_ns = int(spec.slo * 1e9)
        self.timeout_ns = int(spec.timeout * 1e9)
        self.deadline_us = min(max(int(spec.timeout * 1e6), 1), _MAX_DEADLINE_US)
        self.max_wait_ns = int(spec.client_max_wait * 1e9)
        self.drain_ns = int(spec.drain * 1e9)
        bucket_ns = max(int(spec.bucket * 1e9), 1000)
        horizon = int(spec.measured_s * 1e9) + self.drain_ns + self.timeout_ns
        self.tally = Tally(self.slo_ns, bucket_ns, horizon // bucket_ns + 2)
        self.name = spec.method.encode()
        self.codec = codecs.codec_id(spec.codec)
        self.fixed_body = (b"\0" * spec.payload if spec.codec == "raw"
                           else msgpack.packb([b"\0" * spec.payload]))
        self.progress = progress
        self.pending = 0                  # offered and not yet given an outcome
        self.priming = 0                  # registration requests not yet answered
        self.next_t: int | None = None    # intended time of the next scheduled arrival
        self.reissue: list[_Client] = []  # closed loop: clients whose request just ended
        self.expiries: collections.deque = collections.deque()  # (time, client), FIFO
        self.timeouts: collections.deque = collections.deque()  # (time, conn, call id), FIFO
        self.dirty: list[_Conn] = []
        self.conns: list[_Conn] = []
        self.by_fd: dict[int, _Conn] = {}
        self.epoll = select.epoll()
        for _ in range(n_conns):
            sock = transport.connect(spec.address, 5.0)
            conn = _Conn(_native.Channel(sock.detach(), _core.DEFAULT_MAX_MESSAGE_SIZE))
            self.conns.append(conn)
            self.by_fd[conn.fd] = conn
            self.epoll.register(conn.fd, select.EPOLLIN)
        base = index * spec.clients + 1 if not self.closed else index * spec.closed + 1
        self.clients = []
        for i in range(n_clients):
            conn = self.conns[i % n_conns]
            c = _Client(ClientCredits(spec.client_queue, self.max_wait_ns), base + i, conn)
            conn.clients.append(c)
            conn.sessions[c.session] = c
            self.clients.append(c)
        self.tally.sessions = n_clients
        self.tally.connections = n_conns

    # -- requests ----------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.service is None:
            return self.fixed_body
        return encode_service(self.service.draw(self.rng), self.spec.codec)

    def _arrive(self, intended: int, client: _Client | None = None) -> None:
        now = self.clock()
        if client is None:
            client = self.clients[int(self.rng.random() * len(self.clients))]
        measured = intended >= self.m0
        req = _Req(client, intended, measured)
        self.pending += 1
        t = self.tally
        if measured:
            t.offered += 1
            lag = now - intended
            t.send_lag.record_value(lag if lag > 1000 else 1000)
            t.series["offered"][t.bucket(intended - self.m0)] += 1
        else:
            t.warmup_offered += 1
        if client.conn.dead:
            self._finish(req, "error", now, "ConnectionLost")
            return
        r = client.credits.submit(req, now)
        if r is _SEND:
            self._send(req, now)
        elif r is _QUEUED:
            self.expiries.append((now + self.max_wait_ns, client))
        else:
            self._finish(req, "rejected_client", now)

    def _send(self, req: _Req, now: int) -> None:
        client = req.client
        conn = client.conn
        if conn.dead:
            self._finish(req, "error", now, "ConnectionLost")
            return
        cid = conn.next_id
        conn.next_id = cid + 1
        try:
            conn.chan.put_frame(_REQUEST, cid, self.name, self._body(), self.codec,
                                client.session, self.deadline_us, client.credits.demand())
        except RpcError as exc:
            self._finish(req, "error", now, type(exc).__name__)
            if isinstance(exc, ConnectionLost):
                self._lose(conn, now)
            else:
                # Not sent (e.g. MessageTooLarge): give the credit it took back, unchanged.
                for token in client.credits.on_response(client.credits.window, now):
                    self._send(token, now)
            return
        conn.inflight[cid] = req
        self.timeouts.append((now + self.timeout_ns, conn, cid))
        if not conn.dirty:
            conn.dirty = True
            self.dirty.append(conn)

    def _finish(self, req: _Req, outcome: str, now: int, error_type: str | None = None) -> None:
        self.pending -= 1
        t = self.tally
        if req.measured:
            since = now - self.m0
            if outcome == "ok":
                t.record_ok(now - req.intended, since)
            else:
                t.record(outcome, now - req.intended, since)
                if error_type is not None:
                    t.record_error_type(error_type)
        else:
            t.warmup_done += 1
        if self.closed and now < self.end_ns and not req.client.conn.dead:
            self.reissue.append(req.client)

    # -- replies -----------------------------------------------------------------------

    def _read(self, conn: _Conn) -> None:
        try:
            frames = conn.chan.recv_frames(0, False)
        except RpcError as exc:
            self._lose(conn, self.clock(), type(exc).__name__)
            return
        now = self.clock()
        for i, f in enumerate(frames):
            if i & 31 == 31:
                # A big batch of replies takes ms to process: keep the schedule on time.
                now = self.clock()
                self._arrivals(now)
            kind = f.kind
            if kind == _RESPONSE or kind == _ERROR:
                req = conn.inflight.pop(f.call_id, None)
                if req is None:
                    self.tally.stray_frames += 1
                    continue
                if req.prime:
                    self.priming -= 1
                    if kind == _ERROR:   # e.g. AQM: 1,000 registrations arrive at once
                        self.tally.prime_rejected += 1
                elif req.timed_out:
                    self.tally.late_replies += 1
                elif kind == _RESPONSE:
                    self._finish(req, "ok", now)
                else:
                    self._finish_error(req, f, now)
                client = req.client
                window = f.credit if f.flags & _HAS_CREDIT else None
                for token in client.credits.on_response(window, now):
                    self._send(token, now)
            elif kind == _CREDIT:
                client = conn.sessions.get(f.session)
                if client is None:
                    self.tally.stray_frames += 1
                    continue
                for token in client.credits.on_credit(f.credit, now):
                    self._send(token, now)
            # PONG and anything else the server may add later: nothing to account for.

    def _finish_error(self, req: _Req, frame: Any, now: int) -> None:
        try:
            code = codecs.decode_error(frame.body)[0]
        except RpcError as exc:
            self._finish(req, "error", now, type(exc).__name__)
            return
        if code == codecs.OVERLOADED:
            self._finish(req, "rejected_server", now)
        elif code == codecs.DEADLINE_EXCEEDED:
            self._finish(req, "timeout", now)
        else:
            try:
                outcome_of(frame)
                name = "RpcError"
            except RpcError as exc:
                name = type(exc).__name__
            self._finish(req, "error", now, name)

    def _lose(self, conn: _Conn, now: int, why: str = "ConnectionLost") -> None:
        """The connection failed: its calls end as errors, its clients send no more."""
        if conn.dead:
            return
        conn.dead = True
        self.tally.connections_lost += 1
        try:
            self.epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.chan.close()
        for req in conn.inflight.values():
            if not req.timed_out:
                self._finish(req, "error", now, why)
        conn.inflight.clear()
        for client in conn.clients:
            for token in client.credits.expire(now + self.max_wait_ns + 1):
                self._finish(token, "error", now, why)

    # -- registration -------------------------------------------------------------------

    def prime(self, timeout_s: float = 30.0) -> None:
        """Register every session before the schedule starts: one request per client with
        zero service time, all answered (or rejected) before this returns.

        A session's first request goes out on an implicit window of 1 and its reply tells
        the client the server's real window (or that it uses no credits). Without this,
        the first seconds of a run would measure 1,000 sessions discovering the server, and
        a server without credits would see client-side rejects until each client's first
        reply. These requests are not offered load and get no outcome.
        """
        self.priming = 0
        now = self.clock()
        body = encode_service(0, self.spec.codec) if self.service else self.fixed_body
        for client in self.clients:
            req = _Req(client, now, False)
            req.prime = True
            if client.credits.submit(req, now) is not _SEND:
                continue          # cannot happen on a fresh session (window 1); be safe
            conn = client.conn
            cid = conn.next_id
            conn.next_id = cid + 1
            conn.chan.put_frame(_REQUEST, cid, self.name, body, self.codec, client.session,
                                self.deadline_us, 0)
            conn.inflight[cid] = req
            self.priming += 1
            if not conn.dirty:
                conn.dirty = True
                self.dirty.append(conn)
        give_up = now + int(timeout_s * 1e9)
        while self.priming > 0:
            if self.dirty:
                self._flush()
            for fd, _ in self.epoll.poll(0.001 if not self.dirty else 0):
                conn = self.by_fd.get(fd)
                if conn is not None and not conn.dead:
                    self._read(conn)
            if self.clock() > give_up:
                raise RuntimeError(f"{self.priming} of {len(self.clients)} registration "
                                   f"requests unanswered after {timeout_s:g} s")
            if any(c.dead for c in self.conns):
                raise RuntimeError("a connection was lost while registering the sessions")

    # -- the loop ----------------------------------------------------------------------

    def _arrivals(self, now: int) -> bool:
        """Offer every request of the schedule that is due by ``now``."""
        t = self.next_t
        if t is None or t > now:
            return False
        schedule = self.schedule
        while t is not None and t <= now:
            self._arrive(t)
            t = schedule.next()
        self.next_t = t
        return True

    def _expire(self, now: int) -> None:
        exp = self.expiries
        while exp and exp[0][0] <= now:
            client = exp.popleft()[1]
            for token in client.credits.expire(now):
                self._finish(token, "rejected_client", now)
        tq = self.timeouts
        while tq and tq[0][0] <= now:
            _, conn, cid = tq.popleft()
            req = conn.inflight.get(cid)
            if req is not None and not req.timed_out:
                # Keep it in flight: its late reply still returns the session's credit.
                req.timed_out = True
                self._finish(req, "timeout", now)

    def _flush(self) -> None:
        still = []
        for conn in self.dirty:
            if conn.dead:
                continue
            try:
                done = conn.chan.flush(0, False)
            except RpcError as exc:
                self._lose(conn, self.clock(), type(exc).__name__)
                continue
            if done:
                conn.dirty = False
            else:
                still.append(conn)      # the socket is full: retry on the next pass
        self.dirty = still

    def run(self, start_ns: int) -> Tally:
        """Run the schedule from the monotonic time ``start_ns`` (spinning until then)."""
        self.start_ns = start_ns
        self.m0 = start_ns + self.warmup_ns                  # the measured window starts
        if self.closed:
            self.end_ns = self.m0 + int(self.spec.duration * 1e9)
        else:
            self.schedule = PoissonSchedule(self.segments, start_ns, self.schedule_seed)
            self.end_ns = self.schedule.end_ns
        clock = self.clock
        epoll = self.epoll
        by_fd = self.by_fd
        schedule = self.schedule
        last_progress = 0
        # A full collection of the cyclic GC walks every live object (tens of ms with the
        # requests in flight and 10,000 sessions) and would show up as send lag. Requests
        # hold no reference cycles once finished, so reference counting frees them.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        while clock() < self.start_ns:
            pass
        cpu0 = time.thread_time_ns()
        if self.closed:
            self.next_t = None
            for c in self.clients:
                self._arrive(self.start_ns, c)
        else:
            self.next_t = schedule.next()
        end = self.end_ns
        drain_until = end + self.drain_ns
        try:
            while True:
                now = clock()
                busy = False
                if self._arrivals(now):
                    busy = True
                if self.reissue:
                    again, self.reissue = self.reissue, []
                    for c in again:
                        self._arrive(clock(), c)
                    busy = True
                if self.dirty:
                    self._flush()
                events = epoll.poll(0)
                for fd, _ in events:
                    conn = by_fd.get(fd)
                    if conn is not None and not conn.dead:
                        self._read(conn)
                now = clock()
                self._expire(now)
                next_t = self.next_t
                if next_t is None and now >= end:
                    if self.pending == 0 or now >= drain_until:
                        break
                if self.progress is not None and now - last_progress >= _PROGRESS_NS:
                    last_progress = now
                    self.progress(self._snapshot(now))
                if events or busy or self.dirty or self.reissue:
                    continue
                # Idle: sleep in epoll until shortly before the next thing that is due.
                wake = drain_until if next_t is None else next_t
                if self.expiries:
                    wake = min(wake, self.expiries[0][0])
                if self.timeouts:
                    wake = min(wake, self.timeouts[0][0])
                if wake - now > _SPIN_BEFORE_NS:
                    epoll.poll((wake - now - _SPIN_BEFORE_NS // 2) / 1e9)
        finally:
            self._close(clock())
            if gc_was_enabled:
                gc.enable()
        self.tally.elapsed_ns = clock() - self.start_ns
        # The loop spins, so on a core of its own it gets ~100% of it; much less means
        # other processes took the CPU and the send lag shows their time slices.
        self.tally.cpu_ns = time.thread_time_ns() - cpu0
        return self.tally

    def _close(self, now: int) -> None:
        """The drain is over: whatever is still unanswered or queued gets its outcome."""
        for conn in self.conns:
            for req in conn.inflight.values():
                if not req.timed_out:
                    self._finish(req, "timeout", now)
            conn.inflight.clear()
            for client in conn.clients:
                for token in client.credits.expire(now + self.max_wait_ns + 1):
                    self._finish(token, "rejected_client", now)
            if not conn.dead:
                conn.chan.close()
        self.epoll.close()

    def _snapshot(self, now: int) -> dict:
        t = self.tally
        return {"elapsed": (now - self.start_ns) / 1e9, "offered": t.offered + t.warmup_offered,
                "ok": t.counts["ok"], "good": t.good,
                "rejected": t.counts["rejected_server"] + t.counts["rejected_client"],
                "timeout": t.counts["timeout"], "error": t.counts["error"],
                "pending": self.pending}


def pin(spec: LoadSpec, index: int) -> None:
    """Pin the calling process to its CPU of ``spec.cpus`` (if any)."""
    if spec.cpus:
        os.sched_setaffinity(0, {spec.cpus[index % len(spec.cpus)]})
