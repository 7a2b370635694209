"""The microrpc server: registered methods served from one epoll I/O thread."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from microrpc import _core, _decode, _dispatch, _native, auth, transport
from microrpc.codecs import DecodeLimits, codec_id
from microrpc.exactly_once import DEFAULT_LEASE_TTL, CompletionTable, LocalLeases
from microrpc.service import exposed_methods

__all__ = ["Server", "ServerStatistics", "CallContext", "DeferredReply", "STATS_METHOD",
           "RESERVED_PREFIX"]

# The call context and the deferred reply are the core's own classes (compiled).
CallContext = _dispatch.CallContext
DeferredReply = _dispatch.DeferredReply

# The default: the codecs that are always accepted (the server core adds them to any
# choice); pickle only when named (it runs code on decode).
_SAFE_CODECS = ("raw", "msgpack")

# Method names under this prefix belong to microrpc itself; users cannot register them.
RESERVED_PREFIX = "_microrpc."
# The built-in statistics method (``Server(expose_stats=False)`` turns it off): returns
# ``statistics().as_dict()``. Read by ``microrpc stats ADDRESS``.
STATS_METHOD = RESERVED_PREFIX + "stats"
# The built-in lease methods of exactly-once calls (microrpc.exactly_once): ``lease()``
# returns ``[lease id, ttl seconds]``; ``renew(lease)`` returns whether it was still alive.
LEASE_METHOD = RESERVED_PREFIX + "lease"
RENEW_METHOD = RESERVED_PREFIX + "renew"


@dataclass(frozen=True)
class ServerStatistics:
    calls: int                 # requests received (including rejected ones)
    errors: int                # ERROR replies sent (handler raised, not found, rejected, ...)
    protocol_errors: int       # connections closed for malformed or oversized frames
    rejects: int               # requests refused by overload control
    bytes_in: int
    bytes_out: int
    queue_depth: int           # requests admitted and not finished (queued, running, held back)
    buffered_output: int       # reply bytes waiting for slow readers (bounded per connection)
    connections: int           # open now
    connections_accepted: int
    credit_frames: int         # standalone credit frames sent (Breakwater)
    cancelled: int             # cancel requests that found their call
    deadline_skipped: int      # calls not run because their deadline had passed
    service_time_ns: int = 0   # measured I/O-thread time per completed inline call (EWMA,
                               # 1/throughput while backlogged; worker-pool calls excluded):
                               # prices the run queue in the overload signal; measured only
                               # when the server has an overload policy
    overload: Any = None       # the overload policy's own statistics(), if any
    # The memory bounds (the Server options of the same names) and what they acted on.
    max_queued: int = 0
    max_queued_bytes: int = 0
    max_connections: int = 0
    max_queued_per_connection: int = 0
    max_queued_bytes_per_connection: int = 0
    max_output_per_connection: int = 0
    max_sessions_per_connection: int = 0
    decode_limits: Any = None  # DecodeLimits.as_dict()
    queued: int = 0                       # requests read and not started, now
    queued_peak: int = 0                  # its highest value
    queued_peak_per_connection: int = 0   # the most one connection ever had queued
    output_peak_per_connection: int = 0   # the most reply bytes one connection had unsent
    paused_reads: int = 0      # times a connection was not read because a queue was full
    session_rejects: int = 0   # requests refused (BAD_REQUEST): too many sessions
    undecodable: int = 0       # requests refused (BAD_REQUEST): arguments malformed or
                               # over decode_limits
    connections_refused: int = 0   # new connections closed at once: max_connections open
    auth_failures: int = 0     # connections closed before authenticating (auth_key): wrong
                               # or missing key, garbage, too slow (auth_timeout)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (the policy's statistics as a dict too): what the
        built-in ``_microrpc.stats`` method returns, safe for msgpack and JSON."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
        return out


class Server:
    """Serve registered methods on ``address`` (``tcp://host:port`` or ``unix:///path``).

    The socket is bound at construction, so ``server.address`` (with the real port when
    port 0 was asked for) is known before :meth:`start`. Plain handlers run to completion on
    the I/O thread, which is the fastest path for short handlers; register a handler with
    ``blocking=True`` when it sleeps, does I/O or runs long, and it runs on a pool of
    ``workers`` threads instead.

    ``poll`` works as for :class:`microrpc.Client` ("adaptive" by default): between passes the
    I/O thread busy-polls epoll for up to ``spin_us`` while requests keep arriving that fast.

    A handler registered with ``context=True`` gets a :class:`CallContext` as its first
    argument, before the call's own arguments: ``ctx.peer`` (the client's address),
    ``ctx.peer_id`` (its connection's number), ``ctx.session``, ``ctx.call_id``,
    ``ctx.deadline`` (when the caller gives up, in ``time.monotonic()`` seconds, or None) and
    ``ctx.cancelled``. Such a handler may also answer later: ``reply = ctx.defer()`` (while it
    runs) makes the server ignore what it returns, and ``reply.result(value)`` or
    ``reply.error(exc)``, once, from any thread, sends the answer::

        @server.method(context=True)
        def lookup(ctx, key):
            reply = ctx.defer()
            pending[key].append(reply)        # answered when the value arrives elsewhere

    A deferred call holds no thread. It still ends exactly once: a reply to a client that
    has disconnected is dropped, and when the server stops, calls not answered within the
    grace period end with an error (the client sees ConnectionLost), as other calls do.

    Only registered methods are callable. Tracebacks are sent to clients only with
    ``send_tracebacks=True`` (they can reveal server internals). A name is registered once:
    registering it again (``register``, ``method``, ``register_object``) raises ValueError
    unless the call says ``replace=True``. :meth:`register_object` serves the methods of an
    object that are marked with :func:`microrpc.expose` (a service as a class).

    **Statistics from outside.** The built-in method ``_microrpc.stats`` (no arguments)
    returns ``statistics().as_dict()``, so ``microrpc stats ADDRESS`` can show a running
    server's counters. It is read-only and on by default; ``expose_stats=False`` turns it
    off (a call then gets MethodNotFound). Names starting with ``_microrpc.`` are
    microrpc's own and cannot be registered.

    **Lifecycle.** :meth:`start` serves on a background thread, :meth:`serve_forever` on the
    calling one, :meth:`stop` ends it; a stopped server cannot be started again. Used as a
    context manager, ``with Server(...) as server:`` starts the server if it is not running
    yet (so do not call ``start()`` inside the block: it raises, saying so) and stops it when
    the block ends, also on an exception. Registering methods inside the block is fine:
    methods registered while the server runs are served from their next call.

    **Bounds.** Whatever clients send, the server's memory stays bounded and one connection
    cannot take the server from the others (issue #10). When a connection reaches a queue
    bound the server stops reading it until it is back under half of it (TCP backpressure:
    the client's sends block or its buffer fills; nothing is refused):

    * ``max_queued_per_connection`` (1024): requests read and not started, per connection.
    * ``max_queued_bytes_per_connection`` (16 MiB): their bytes (a frame is always taken
      when the connection is under the bound).
    * ``max_queued`` (65536): requests read and not started, every connection together;
      at it, no connection is read.
    * ``max_queued_bytes`` (256 MiB): their bytes, every connection together; the same.
    * ``max_output_per_connection`` (4 MiB, at least one reply of ``max_message_size``):
      reply bytes the client has not read; past it its requests wait and it is not read.

    Requests are started first come, first served, but at most 8 of one connection's wait
    in that shared line (its further requests join it one at a time as its own start), so a
    flooding connection delays another's request by at most 8 handlers; and the I/O thread
    takes at most 1 MiB and 128 frames from one connection per pass. Work of
    a connection that closed is dropped, not run. Two bounds refuse instead, with an ERROR
    ``BAD_REQUEST`` (``ProtocolError`` at the client), and the connection stays open:

    * ``max_sessions_per_connection`` (1024): Breakwater sessions per connection (only
      counted with an overload policy); a request of a further session is refused. A
      session that only pings is not registered and takes no share of the credit pool.
    * ``decode_limits`` (a :class:`microrpc.DecodeLimits`; by default 262,144 objects,
      nesting 64): a msgpack argument body over them is refused before any object is
      built, so a 16 MiB body of millions of empty arrays costs microseconds, not seconds.

    ``max_connections`` (4096) bounds the connections: one more is accepted and closed at
    once (the client sees the connection closed), and counted in ``connections_refused``.

    ``statistics()`` reports the bounds and what they acted on (peaks, pauses, refusals).

    **Authentication.** With ``auth_key`` (bytes, at least 16; ``microrpc.new_auth_key()``
    makes one) a connection carries no frame until both ends have proved they hold the key
    (an HMAC challenge/response, docs/wire.md *Authentication*); clients pass the same
    ``auth_key``. A connection that has not finished within ``auth_timeout`` seconds, or
    gets it wrong, is closed and counted in ``auth_failures``; until then it counts toward
    ``max_connections``. It authenticates, it does not encrypt: on a network you do not
    trust, run it inside a VPN (WireGuard).

    **Binding.** A server reachable from other machines (a TCP address that is not
    loopback, the wildcards 0.0.0.0 and :: included) needs ``auth_key``, or
    ``insecure=True`` to say that anyone who reaches it may call its methods: without
    either, the constructor raises ValueError and binds nothing. Loopback and unix
    addresses need neither.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:0",
        *,
        codec: str | Iterable[str] = _SAFE_CODECS,
        overload: Any = None,
        max_message_size: int = _core.DEFAULT_MAX_MESSAGE_SIZE,
        poll: str = "adaptive",
        spin_us: float = 50.0,
        workers: int = 4,
        send_tracebacks: bool = False,
        max_queued: int = _dispatch.DEFAULT_MAX_QUEUED,
        max_queued_bytes: int = _dispatch.DEFAULT_MAX_QUEUED_BYTES_TOTAL,
        max_connections: int = _dispatch.DEFAULT_MAX_CONNECTIONS,
        max_queued_per_connection: int = _dispatch.DEFAULT_MAX_QUEUED_PER_CONNECTION,
        max_queued_bytes_per_connection: int = _dispatch.DEFAULT_MAX_QUEUED_BYTES,
        max_output_per_connection: int = _dispatch.DEFAULT_MAX_OUTPUT,
        max_sessions_per_connection: int = _dispatch.DEFAULT_MAX_SESSIONS,
        decode_limits: DecodeLimits | None = None,
        expose_stats: bool = True,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        auth_key: bytes | None = None,
        auth_timeout: float = auth.DEFAULT_AUTH_TIMEOUT,
        insecure: bool = False,
    ):
        if poll not in _native.POLL_MODES:
            raise ValueError(f"poll must be one of {sorted(_native.POLL_MODES)}, not {poll!r}")
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        names = {codec} if isinstance(codec, str) else set(codec)
        mask = 0
        for name in names:               # (the core always adds the safe ones)
            mask |= 1 << codec_id(name)
        self._codec_mask = mask
        self._methods: dict[bytes, _dispatch.Method] = {}
        self._overload = overload
        self._max_message_size = max_message_size
        self._poll = poll
        self._spin_us = spin_us
        self._workers = workers
        self._send_tracebacks = send_tracebacks
        self._bounds = dict(
            max_queued=max_queued, max_queued_bytes=max_queued_bytes,
            max_connections=max_connections,
            max_queued_per_connection=max_queued_per_connection,
            max_queued_bytes_per_connection=max_queued_bytes_per_connection,
            max_output_per_connection=max_output_per_connection,
            max_sessions_per_connection=max_sessions_per_connection)
        for name, value in self._bounds.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if decode_limits is not None and not isinstance(decode_limits, DecodeLimits):
            raise TypeError(f"decode_limits must be a DecodeLimits, not {decode_limits!r}")
        self._decode_limits = decode_limits or _decode.DEFAULT_DECODE_LIMITS
        self._auth_key = auth.check_key(auth_key)
        if not auth_timeout > 0:
            raise ValueError("auth_timeout must be positive")
        self._auth_timeout = auth_timeout
        self._sock, self._bound = transport.listen(address)
        if self._auth_key is None and not insecure and \
                transport.reachable_from_other_hosts(self._sock):
            self._sock.close()
            raise ValueError(
                f"{address} is reachable from other machines: give the server an auth_key "
                f"(a pre-shared key; the native transport authenticates, it does not "
                f"encrypt), or insecure=True to let anyone who reaches it call its methods")
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._core: _dispatch.ServerCore | None = None
        self._loop: _native.ServerLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._entered = False            # the `with` block started it (start() says so)
        if expose_stats:
            self._methods[STATS_METHOD.encode()] = _dispatch.Method(self._stats_method)
        # Exactly-once calls: this server is its clients' lease authority.
        self._leases = LocalLeases(lease_ttl)
        # A new call keeps its lease alive (the table renews it, at most once per half
        # ttl): a client that keeps calling never loses its records; one silent for a ttl
        # does (and a call of it is refused).
        self._once = CompletionTable(self._leases)
        self._methods[LEASE_METHOD.encode()] = _dispatch.Method(self._grant_lease)
        self._methods[RENEW_METHOD.encode()] = _dispatch.Method(self._leases.renew)

    # -- registration ------------------------------------------------------------------

    @property
    def address(self) -> str:
        return str(self._bound)

    def register(self, name: str, function: Callable, *, blocking: bool = False,
                 context: bool = False, idempotent: bool = True,
                 replace: bool = False) -> Callable:
        """Make ``function`` callable as ``name``. Returns ``function``.

        ``blocking``: run it on the worker pool. ``context``: pass it a
        :class:`CallContext` first (see the class docstring). ``idempotent=False``: an
        exactly-once call of it (one carrying a lease and a sequence number) runs once
        however often it is retried; its outcome is kept until the client acknowledges it
        (see microrpc.exactly_once). A name already registered raises ValueError unless
        ``replace=True``."""
        if not callable(function):
            raise TypeError(f"{function!r} is not callable")
        raw = self._check_name(name, replace)
        self._methods[raw] = _dispatch.Method(function, blocking=bool(blocking),
                                              context=bool(context),
                                              idempotent=bool(idempotent))
        return function

    def method(self, function: Callable | None = None, *, name: str | None = None,
               blocking: bool = False, context: bool = False, idempotent: bool = True,
               replace: bool = False):
        """Decorator: ``@server.method`` or ``@server.method(name=..., blocking=True,
        context=True, idempotent=False, replace=True)``."""
        def decorate(fn: Callable) -> Callable:
            return self.register(name or fn.__name__, fn, blocking=blocking, context=context,
                                 idempotent=idempotent, replace=replace)
        return decorate(function) if function is not None else decorate

    def register_object(self, obj: Any, prefix: str = "", *,
                        replace: bool = False) -> list[str]:
        """Serve the methods of ``obj`` marked with :func:`microrpc.expose`, each as
        ``prefix`` + its name (``expose(name=...)`` renames it; ``blocking``, ``context``
        and ``idempotent`` as for :meth:`register`). Returns the names registered, in order. Nothing else of
        ``obj`` is reachable. A marked name starting with ``_``, an object with no marked
        method, or a name already registered (without ``replace=True``) raises ValueError,
        and then nothing of ``obj`` is registered::

            class Accounts:
                @microrpc.expose
                def balance(self, who): ...

            server.register_object(Accounts(), prefix="accounts.")   # "accounts.balance"
        """
        found = exposed_methods(obj, prefix)
        raws = [self._check_name(m.name, replace) for m in found]
        if len(set(raws)) != len(raws):
            raise ValueError(f"{type(obj).__name__} exposes two methods under one name")
        for raw, m in zip(raws, found):
            self._methods[raw] = _dispatch.Method(m.function, blocking=m.blocking,
                                                  context=m.context, idempotent=m.idempotent)
        return [m.name for m in found]

    def _check_name(self, name: str, replace: bool) -> bytes:
        """The wire name of ``name``, after the checks every registration makes."""
        raw = name.encode("utf-8") if isinstance(name, str) else b""
        if not 1 <= len(raw) <= 255:
            raise ValueError("a method name must be a str of 1..255 UTF-8 bytes")
        if name.startswith(RESERVED_PREFIX):
            raise ValueError(f"method names starting with {RESERVED_PREFIX!r} are "
                             f"microrpc's own: {name!r} cannot be registered")
        if raw in self._methods and not replace:
            raise ValueError(f"a method named {name!r} is already registered; pass "
                             f"replace=True to replace it")
        return raw

    def _grant_lease(self) -> list:
        # Each grant also sweeps the leases that expired, with their records: the records
        # kept are bounded by the leases granted within a ttl (times the window).
        for lease in self._leases.expired():
            self._once.drop_lease(lease)
        return [self._leases.grant(), self._leases.ttl]

    def _stats_method(self) -> dict[str, Any]:
        # Runs on the I/O thread like any plain handler, so it reads the core's counters
        # from the thread that writes them.
        return self.statistics().as_dict()

    # -- lifecycle ---------------------------------------------------------------------

    def _make_loop(self) -> _native.ServerLoop:
        with self._lock:
            if self._stopped:
                raise RuntimeError("this server was stopped; create a new one")
            if self._loop is not None:
                if self._entered:
                    raise RuntimeError(
                        "the server is already running: its `with` block started it (and "
                        "stops it at the end), so do not call start() inside the block")
                raise RuntimeError("the server is already running: start() or "
                                   "serve_forever() was called before; stop() ends it")
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self._workers, thread_name_prefix="microrpc-worker")
            # Dispatch lives in the core; the epoll loop only moves bytes and reads the clock.
            waker = _native.Waker()
            self._core = _dispatch.ServerCore(
                self._methods, executor=self._executor, wake=waker.wake,
                clock=_native.MonotonicClock(), policy=self._overload,
                accept_codecs=self._codec_mask, max_message_size=self._max_message_size,
                send_tracebacks=self._send_tracebacks, decode_limits=self._decode_limits,
                once=self._once, **self._bounds)
            self._loop = _native.ServerLoop(self._core, waker, self._poll, self._spin_us,
                                            auth_key=self._auth_key,
                                            auth_timeout=self._auth_timeout)
            self._loop.add_listener(self._sock.fileno())
            return self._loop

    def start(self) -> "Server":
        """Serve on a background thread; returns at once."""
        loop = self._make_loop()
        self._thread = threading.Thread(target=loop.run, name="microrpc-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until :meth:`stop` (from another thread) or Ctrl-C."""
        loop = self._make_loop()
        try:
            loop.run()
        except KeyboardInterrupt:
            pass
        finally:
            self._finish()

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting calls; give calls in flight ``grace`` seconds, then end them with
        an error. Every call in flight ends with a result or an error; nothing hangs."""
        loop = self._loop
        if loop is None:
            self._finish()
            return
        loop.request_stop(grace)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(grace + 5.0)
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._sock.close()
        if self._bound.scheme == "unix":
            try:
                os.unlink(self._bound.path)
            except OSError:
                pass

    def __enter__(self) -> "Server":
        """Start the server unless it runs already; the block's end stops it."""
        if self._loop is None:
            self.start()
            self._entered = True
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- statistics --------------------------------------------------------------------

    def statistics(self) -> ServerStatistics:
        loop, core = self._loop, self._core
        policy = self._overload
        if loop is None or core is None:
            return ServerStatistics(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                    policy.statistics() if policy is not None else None,
                                    decode_limits=self._decode_limits.as_dict(),
                                    **self._bounds)
        return ServerStatistics(
            calls=core.calls, errors=core.errors, protocol_errors=core.protocol_errors,
            rejects=core.rejects, bytes_in=loop.bytes_in, bytes_out=loop.bytes_out,
            queue_depth=core.queue_depth(), buffered_output=core.buffered_output(),
            connections=loop.connection_count(),
            connections_accepted=loop.connections_accepted, credit_frames=core.credit_frames,
            cancelled=core.cancelled, deadline_skipped=core.deadline_skipped,
            service_time_ns=core.per_request_ns,
            overload=policy.statistics() if policy is not None else None,
            max_queued=core.max_queued, max_queued_bytes=core.max_queued_bytes,
            max_connections=core.max_connections,
            connections_refused=core.connections_refused,
            max_queued_per_connection=core.max_queued_per_connection,
            max_queued_bytes_per_connection=core.max_queued_bytes_per_connection,
            max_output_per_connection=core.out_limit,
            max_sessions_per_connection=core.max_sessions_per_connection,
            decode_limits=core.decode_limits.as_dict(), queued=core.queued(),
            queued_peak=core.queued_peak,
            queued_peak_per_connection=core.queued_peak_per_connection,
            output_peak_per_connection=core.output_peak_per_connection,
            paused_reads=core.paused_reads, session_rejects=core.session_rejects,
            undecodable=core.undecodable, auth_failures=loop.auth_failures,
        )

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else ("running" if self._loop else "not started")
        return f"<microrpc.Server {self.address} {state}>"
