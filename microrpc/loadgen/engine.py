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

from breakwater import DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_NS
from microrpc import _clientcore, _core, _native, channel, codecs, transport
from microrpc._clientcore import Call, ClientCore
from microrpc.errors import ConnectionLost, DeadlineExceeded, Overloaded, RpcError
from microrpc.loadgen.result import Tally
from microrpc.loadgen.synthetic import ServiceTime, encode_service

__all__ = ["LoadSpec", "PoissonSchedule", "schedule_seed", "ProcessShare", "Engine", "DRIVERS",
           "make_generator", "outcome_name", "pin"]

_MAX_SESSION = 0xFFFFFFFF
_PROGRESS_NS = 200_000_000        # progress callbacks at most this often
_SPIN_BEFORE_NS = 2_000_000       # spin (no sleep) when the next event is this close
_USE_DEFAULT = _clientcore.USE_DEFAULT
_DONE, _QUEUED, _BROKEN = _clientcore.DONE, _clientcore.QUEUED, _clientcore.BROKEN
_FOREVER = 1 << 62                # a time past every deadline and credit wait
#: The ways to send the schedule (LoadSpec.driver).
DRIVERS = ("engine", "client", "asyncio", "uvloop")


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """What to run. Times are in seconds, rates in requests per second over all processes.

    ``schedule`` (a tuple of ``(rate, seconds)`` segments) replaces ``rate`` and
    ``duration`` when given; the warm-up runs at the first segment's rate and is not
    measured. ``closed`` > 0 switches to a closed loop with that many requests outstanding
    (one per client; ``rate`` is then ignored), which measures capacity.
    ``driver``: ``"engine"`` (the default) multiplexes ``clients`` sessions over
    ``connections`` connections, each session a client protocol core; ``"client"``,
    ``"asyncio"`` and ``"uvloop"`` send every request through a public client instead
    (``Client.call_async`` with a done-callback, or ``AsyncClient.call``), ``clients`` of
    them with a connection each (``connections`` is then unused; see ``public.py``).
    ``service`` (e.g. ``"exp:100us"``) makes each request body ask the synthetic ``spin``
    method for a service time drawn here; with ``service=None`` the body is ``payload``
    zero bytes (raw codec) or ``[bytes]`` (msgpack), for any other method.
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
    driver: str = "engine"
    # The server's pre-shared key (Server(auth_key=)); never written to results.
    auth_key: bytes | None = dataclasses.field(default=None, repr=False)

    def config(self) -> dict:
        """The spec as plain data for results and reports: without the key."""
        out = dataclasses.asdict(self)
        del out["auth_key"]
        return out

    def to_wire(self) -> dict:
        """The spec as JSON-able data for a generator process (the key as hex)."""
        out = dataclasses.asdict(self)
        out["auth_key"] = self.auth_key.hex() if self.auth_key is not None else None
        return out

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
        if self.driver not in DRIVERS:
            raise ValueError(f"driver must be one of {', '.join(DRIVERS)}, not {self.driver!r}")
        if self.driver != "engine":
            if self.closed:
                raise ValueError(f"driver {self.driver!r} runs open-loop schedules only")
            if self.clients > 64 * self.procs:
                raise ValueError(f"driver {self.driver!r} opens one public client (a "
                                 f"connection) per client: at most 64 per process")

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


class _Req(Call):
    """One request of the schedule: a core call that remembers when it was due."""
    __slots__ = ("client", "intended", "measured")


class _Client:
    """One simulated client: a Breakwater session with its own protocol core."""
    __slots__ = ("core", "conn")

    def __init__(self, core: ClientCore, conn: "_Conn") -> None:
        self.core = core
        self.conn = conn


class _Conn:
    """One connection and the output buffer that all its sessions' cores write into."""
    __slots__ = ("chan", "fd", "out", "dirty", "dead", "clients", "sessions")

    def __init__(self, chan: Any) -> None:
        self.chan = chan
        self.fd = chan.fileno()
        self.out = _core.OutBuffer()
        self.dirty = False
        self.dead = False
        self.clients: list[_Client] = []
        self.sessions: dict[int, _Client] = {}


def _share(total: int, index: int, n: int) -> int:
    return total // n + (1 if index < total % n else 0)


def outcome_name(error: BaseException | None) -> tuple[str, str | None]:
    """The tally's outcome for a call that ended with ``error`` (and the error's type for
    the "error" outcome)."""
    if error is None:
        return "ok", None
    if isinstance(error, Overloaded):
        return ("rejected_server" if error.side == "server" else "rejected_client"), None
    if isinstance(error, DeadlineExceeded):
        return "timeout", None
    return "error", type(error).__name__


class ProcessShare:
    """What one generator process ``index`` of ``spec`` draws and counts, whatever sends its
    requests: its share of the clients and of the schedule (warm-up at the first rate
    included), its random streams and its tally."""

    def __init__(self, spec: LoadSpec, index: int) -> None:
        self.spec = spec
        self.clock = _native.monotonic_ns
        n = spec.procs
        # Separate generators: the arrival times depend on the seed alone, whatever the
        # clients and service times drew.
        self.schedule_seed = schedule_seed(spec, index)
        self.rng = random.Random(self.schedule_seed ^ 0x5DEECE66D)
        self.service = ServiceTime.parse(spec.service) if spec.service else None
        self.n_clients = _share(spec.clients, index, n)
        self.session_base = index * spec.clients + 1
        segs = [(r / n, s) for r, s in spec.segments()]
        self.segments = ([(segs[0][0], spec.warmup)] if spec.warmup > 0 else []) + segs
        self.warmup_ns = int(spec.warmup * 1e9)
        self.drain_ns = int(spec.drain * 1e9)
        self.start_ns = self.m0 = 0                     # set by run()
        bucket_ns = max(int(spec.bucket * 1e9), 1000)
        horizon = int(spec.measured_s * 1e9) + self.drain_ns + int(spec.timeout * 1e9)
        self.tally = Tally(int(spec.slo * 1e9), bucket_ns, horizon // bucket_ns + 2)

    def count_offer(self, intended: int, now: int) -> bool:
        """Count one arrival of the schedule (and how late it was sent); True if it falls
        in the measured window."""
        t = self.tally
        if intended < self.m0:
            t.warmup_offered += 1
            return False
        t.offered += 1
        lag = now - intended
        t.lag_ns.append(lag if lag > 1000 else 1000)
        t.series["offered"][t.bucket(intended - self.m0)] += 1
        return True

    def count_outcome(self, intended: int, measured: bool, error: BaseException | None,
                      now: int) -> None:
        """Count the one outcome of a request: its error (None: ok) decides which."""
        t = self.tally
        if not measured:
            t.warmup_done += 1
            return
        outcome, error_type = outcome_name(error)
        if outcome == "ok":
            t.record_ok(now - intended, now - self.m0)
        else:
            t.record(outcome, now - intended, now - self.m0)
            if error_type is not None:
                t.record_error_type(error_type)


class Engine(ProcessShare):
    """One generator process: its share of the clients, connections and rate.

    Every simulated client is a :class:`microrpc._clientcore.ClientCore` (the same protocol
    core as ``Client`` and ``AsyncClient``: credits, deadlines, cancel, outcomes); the engine
    is only a driver that multiplexes them over a few connections and keeps the schedule.
    """

    def __init__(self, spec: LoadSpec, index: int,
                 progress: Callable[[dict], None] | None = None) -> None:
        ProcessShare.__init__(self, spec, index)
        self.closed = _share(spec.closed, index, spec.procs) if spec.closed else 0
        n_clients = self.closed or self.n_clients
        n_conns = min(spec.connections, n_clients)
        self.end_ns = 0                                 # set by run()
        self.schedule: PoissonSchedule | None = None
        self.max_wait_ns = int(spec.client_max_wait * 1e9)
        self.method = spec.method
        self.fixed_body = (b"\0" * spec.payload if spec.codec == "raw"
                           else msgpack.packb([b"\0" * spec.payload]))
        self.progress = progress
        self.pending = 0                  # offered and not yet given an outcome
        self.next_t: int | None = None    # intended time of the next scheduled arrival
        self.reissue: list[_Client] = []  # closed loop: clients whose request just ended
        # (time, client) FIFOs of when a client's core has something to expire: the
        # deadline of a call (all calls share spec.timeout, so submission order is
        # deadline order) and the credit wait of a queued call.
        self.expiries: collections.deque = collections.deque()
        self.deadlines: collections.deque = collections.deque()
        self.dirty: list[_Conn] = []
        self.conns: list[_Conn] = []
        self.by_fd: dict[int, _Conn] = {}
        self.epoll = select.epoll()
        for _ in range(n_conns):
            chan = channel.open_channel(spec.address, connect_timeout=5.0,
                                        max_message_size=_core.DEFAULT_MAX_MESSAGE_SIZE,
                                        auth_key=spec.auth_key)
            conn = _Conn(chan)
            self.conns.append(conn)
            self.by_fd[conn.fd] = conn
            self.epoll.register(conn.fd, select.EPOLLIN)
        base = index * spec.clients + 1 if not self.closed else index * spec.closed + 1
        codec = codecs.codec_id(spec.codec)
        self.clients = []
        for i in range(n_clients):
            conn = self.conns[i % n_conns]
            core = ClientCore(codec, base + i, _core.DEFAULT_MAX_MESSAGE_SIZE, spec.timeout,
                              spec.client_queue, self.max_wait_ns)
            c = _Client(core, conn)
            conn.clients.append(c)
            conn.sessions[base + i] = c
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
        req = _Req()
        req.watched = True
        req.client = client
        req.intended = intended
        req.measured = self.count_offer(intended, now)
        self.pending += 1
        conn = client.conn
        core = client.core
        try:
            if conn.dead:
                raise ConnectionLost("the connection was lost")
            core.prepare_body(req, self.method, self._body(), _USE_DEFAULT, now)
            state = core.submit(req, now)
        except RpcError as exc:
            core.abort(req, exc)
            self._finish(req, now)
            return
        if state == _DONE:
            self._finish(req, now)            # the client's credit queue was full
            return
        self.deadlines.append((req.deadline, client))
        if state == _QUEUED:
            self.expiries.append((now + self.max_wait_ns, client))
        if not conn.dirty and len(conn.out):
            conn.dirty = True
            self.dirty.append(conn)

    def _finish(self, req: _Req, now: int) -> None:
        self.pending -= 1
        self.count_outcome(req.intended, req.measured, req.error, now)
        if self.closed and now < self.end_ns and not req.client.conn.dead:
            self.reissue.append(req.client)

    def _ended(self, ended: Any, now: int) -> None:
        for req in ended:
            self._finish(req, now)

    # -- replies -----------------------------------------------------------------------

    def _read(self, conn: _Conn) -> None:
        try:
            frames = conn.chan.recv_frames(0, False)
        except RpcError as exc:
            self._lose(conn, self.clock(), exc)
            return
        now = self.clock()
        sessions = conn.sessions
        for i, f in enumerate(frames):
            if i & 31 == 31:
                # A big batch of replies takes ms to process: keep the schedule on time.
                now = self.clock()
                self._arrivals(now)
            client = sessions.get(f.session)
            if client is None:
                self.tally.stray_frames += 1
                continue
            ended = client.core.receive_frame(f, now)
            if ended:
                self._ended(ended, now)
            if client.core.state == _BROKEN:
                self._lose(conn, now, client.core.error)
                return
        if not conn.dirty and len(conn.out):
            conn.dirty = True                  # requests that credits let go
            self.dirty.append(conn)

    def _lose(self, conn: _Conn, now: int, error: BaseException) -> None:
        """The connection failed: every call of its clients ends with that error, and its
        clients send no more."""
        if conn.dead:
            return
        conn.dead = True
        self.tally.connections_lost += 1
        try:
            self.epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.chan.close()
        if not isinstance(error, RpcError):
            error = ConnectionLost(str(error))
        for client in conn.clients:
            self._ended(client.core.fail(error), now)

    # -- registration -------------------------------------------------------------------

    def connect(self, timeout_s: float = 30.0) -> None:
        """Every session's handshake, before the schedule starts: its PING registers it at
        the server and the PONG gives its first window (or says the server hands out no
        credits), so that the run does not measure 1,000 sessions discovering the server."""
        now = self.clock()
        for client in self.clients:
            client.core.begin(now, client.conn.out)
        for conn in self.conns:
            conn.dirty = True
            self.dirty.append(conn)
        give_up = now + int(timeout_s * 1e9)
        waiting = len(self.clients)
        while waiting:
            if self.dirty:
                self._flush()
            for fd, _ in self.epoll.poll(0.001 if not self.dirty else 0):
                conn = self.by_fd.get(fd)
                if conn is not None and not conn.dead:
                    self._read(conn)
            dead = next((c for c in self.conns if c.dead), None)
            if dead is not None:
                # Say why (a refused handshake, say: AuthenticationError), as an RpcError
                # the command line prints as one line.
                cause = next((cl.core.error for cl in dead.clients
                              if cl.core.error is not None), None)
                if isinstance(cause, RpcError) and not isinstance(cause, ConnectionLost):
                    raise cause
                raise ConnectionLost("a connection was lost while registering the sessions"
                                     + (f": {cause}" if cause is not None else ""))
            waiting = sum(1 for c in self.clients if not c.core.ready)
            if waiting and self.clock() > give_up:
                raise RuntimeError(f"{waiting} of {len(self.clients)} session handshakes "
                                   f"unanswered after {timeout_s:g} s")

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
        for fifo in (self.expiries, self.deadlines):
            while fifo and fifo[0][0] <= now:
                client = fifo.popleft()[1]
                ended = client.core.expire(now)
                if ended:
                    self._ended(ended, now)
                conn = client.conn
                if not conn.dirty and len(conn.out) and not conn.dead:
                    conn.dirty = True          # CANCEL frames for what timed out
                    self.dirty.append(conn)

    def _flush(self) -> None:
        still = []
        for conn in self.dirty:
            if conn.dead:
                continue
            try:
                done = conn.chan.send_from(conn.out)
            except RpcError as exc:
                self._lose(conn, self.clock(), exc)
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
                if self.deadlines:
                    wake = min(wake, self.deadlines[0][0])
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
        """The drain is over: whatever is still unanswered (a timeout) or waiting for credit
        (a client-side reject) gets its outcome."""
        for client in self.clients:
            core = client.core
            self._ended(core.expire(_FOREVER), now)
            self.tally.late_replies += core.stray_replies
        for conn in self.conns:
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


def make_generator(spec: LoadSpec, index: int,
                   progress: Callable[[dict], None] | None = None) -> Any:
    """Generator process ``index`` of ``spec``: ``connect()``, then ``run(start_ns)``."""
    if spec.driver == "engine":
        return Engine(spec, index, progress)
    from microrpc.loadgen.public import PUBLIC_DRIVERS
    return PUBLIC_DRIVERS[spec.driver](spec, index, progress)


def pin(spec: LoadSpec, index: int) -> None:
    """Pin the calling process to its CPU of ``spec.cpus`` (if any)."""
    if spec.cpus:
        os.sched_setaffinity(0, {spec.cpus[index % len(spec.cpus)]})
