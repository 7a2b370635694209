# cython: language_level=3
"""The server core: everything a microrpc server does with a frame, and no I/O.

:class:`ServerCore` owns dispatch once, for every transport: peers and their sessions,
admission through the overload policy and the congestion signal it is fed, the run queue
and its batching, deadlines, cancel, the hand-off to a worker pool, deferred replies,
replies and error bodies, graceful stop and the statistics. It never touches a socket,
starts a thread or reads the system clock: events come with their time (``now``, ns on the
driver's monotonic clock), and the one place that needs time *during* a pass (between
handlers, to end a batch and to time handlers for the overload signal) asks the
:class:`Clock` the driver gave it. Tests give it a fake one.

A driver (``_native.ServerLoop`` on epoll; a zmq ROUTER loop) does the rest::

    core.add_peer(peer, label)          # a connection came in (peer: a Peer subclass)
    core.feed(peer, frame, now)         # each frame it received, while not over_limit(peer);
                                        # False: close the peer
    core.protocol_error(peer)           # its parser failed: count it, then close the peer
    core.drain_completions(now)         # after a wake: replies from workers, deferred ones
    core.run(now, budget_ns)            # start queued requests for about budget_ns
    core.tick(now)                      # the overload policy's control loop; next due time
    for peer in core.take_dirty():      # peers with new bytes in peer.out: send them
        ...; if not core.over_limit(peer): core.resume(peer)
    core.close_peer(peer, now)          # the connection went away
    core.request_stop(now, grace_ns)    # then core.stop_step(now) each pass until True

and stops reading a peer while ``core.over_limit(peer)``. That is the server's memory
bound (issue #10: one connection that sent faster than its requests ran, and never read
its replies, grew a server from 25 MB to 3.5 GB). Everything a peer can make the server
hold is bounded: its replies not yet sent (``max_output_per_connection``), its requests
read and not started (``max_queued_per_connection``, and their bytes,
``max_queued_bytes_per_connection``), everyone's requests not started (``max_queued``, and
their bytes, ``max_queued_bytes``), the connections (``max_connections``: past it a new one
is closed at once),
its sessions (``max_sessions_per_connection``, refused with BAD_REQUEST past it) and the
objects one msgpack body may decode to (``decode_limits``). At a queue bound the core marks
the peer waiting and puts it on the dirty list again once its queue (or the global one) has
drained to half the bound, so the driver looks at it and reads again: TCP backpressure,
not an error. The driver bounds the rest: the bytes its parser buffers per peer, and how
many frames of one peer it feeds per pass.

Requests start first come, first served while each peer stays within its share, and
round-robin for a peer over it. The core's *line* holds at most ``line_share`` (default 8)
requests of a peer; a peer with more keeps the rest in its own queue, and from then until
that queue has drained it has one request at a time in the line: when it starts, the
peer's next one joins the line's end at the next pass, behind what arrived meanwhile. So
peers sending a few calls at a time (and a burst of up to line_share) are served in
arrival order, which keeps the tail short and is what the overload signal measures; and a
peer with a thousand queued requests delays another peer's request by about the one
handler running when it arrives, not a thousand (plain round-robin did that too but
also served every burst behind later requests of other peers, which cost the overload
bench's p99 a quarter; docs/breakwater.md). CANCEL finds a request by call id in O(1).
Worker threads and deferred replies hand their results back through a thread-safe queue and
call the ``wake`` callable the driver gave; the driver then calls ``drain_completions``.

Every admitted request ends in exactly one way: one RESPONSE or ERROR frame, or, when its
peer is gone, silently (its credit still goes back to the policy). ``Request.done`` marks
it; anything that arrives for a done request (a worker finishing after the stop's grace, a
deferred reply to a closed peer) is dropped.
"""
import collections
import pickle
import traceback

import msgpack

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t

from breakwater._server cimport Breakwater
from microrpc._core cimport (
    CODEC_MSGPACK, CODEC_RAW, ERR_BAD_REQUEST, ERR_DEADLINE, ERR_NOT_FOUND, ERR_OVERLOADED,
    ERR_IN_PROGRESS, ERR_LEASE_EXPIRED, ERR_REMOTE, ERR_TOO_LARGE, ERR_UNAVAILABLE,
    FLAG_HAS_CREDIT, FLAG_KWARGS, FLAG_ONCE, HEADER_SIZE, KIND_CANCEL,
    KIND_CREDIT, KIND_ERROR, KIND_PING, KIND_PONG, KIND_REQUEST, KIND_RESPONSE, Frame,
    OutBuffer,
)
from microrpc._core import DEFAULT_MAX_MESSAGE_SIZE
from microrpc._decode cimport DecodeLimits
from microrpc._decode import DEFAULT_DECODE_LIMITS
from microrpc._once cimport (
    CHECK_DONE, CHECK_EXPIRED, CHECK_NEW, CHECK_RUNNING, CHECK_STALE, CompletionTable,
)

# Outcomes of a request besides a frame kind (Request.kind).
cdef enum:
    OUT_CANCELLED = -1     # a worker found it cancelled before starting it
    OUT_SKIPPED = -2       # a worker found its deadline passed before starting it

# The default bounds (Server options; the Server docstring and docs/wire.md say what a
# client sees at each). Replies queued for a peer that does not read them: 4 MiB, about
# 30,000 small replies or one 4 MiB one; past it the peer's requests wait.
DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024
# Requests read and not started, per connection: 16 times the 64 a pipelining client keeps
# in flight (bench/rpc_bench.py), so no honest client meets it; at ~1 KB a request, 1 MB.
DEFAULT_MAX_QUEUED_PER_CONNECTION = 1024
# Their bytes: one frame of the default max_message_size. (A frame is always taken when
# the connection is under the bound, so a bound below one frame cannot wedge a peer.)
DEFAULT_MAX_QUEUED_BYTES = 16 * 1024 * 1024
# Every connection's: 64 connections at their bound. Hitting it pauses every reader.
DEFAULT_MAX_QUEUED = 65536
# Their bytes, every connection's: 16 connections at their byte bound. Without it the
# per-connection byte bound times the connections was the only limit (64 GiB).
DEFAULT_MAX_QUEUED_BYTES_TOTAL = 256 * 1024 * 1024
# Open connections. Each costs a few hundred bytes idle, but up to its bounds (16 MiB of
# requests, one reply of max_message_size) when busy; 4096 is far past what a server
# thread serves at microsecond latency, and far under the default fd limit of many hosts.
DEFAULT_MAX_CONNECTIONS = 4096
# Breakwater sessions per connection (microrpc's clients use one). Each costs a policy
# record and, once it sent a request, a share of the credit pool (issue #10: 100,000
# sessions on one connection inflated the pool to ~200,000 credits).
DEFAULT_MAX_SESSIONS = 1024
# Requests of one peer in the shared line (the module docstring says why a line with a
# cap). 8: a client keeping a few calls in flight never meets it, so honest clients are
# served in arrival order; a flooding connection meets it at once and from then on has one
# request at a time in the line.
DEFAULT_LINE_SHARE = 8

# Always accepted: they carry data only. Pickle runs code on decode, so only when asked.
_SAFE_CODECS = (1 << CODEC_RAW) | (1 << CODEC_MSGPACK)


cdef class Clock:
    """A monotonic time source in ns. Subclass it (in Cython, override ``now``) or wrap a
    callable with :func:`clock_from`."""

    cdef int64_t now(self) except? -1:
        raise NotImplementedError("Clock.now")

    def __call__(self):
        return self.now()


@cython.final
cdef class _CallableClock(Clock):
    cdef object fn

    cdef int64_t now(self) except? -1:
        return self.fn()


def clock_from(source):
    """``source`` as a Clock: a Clock is used as is, a callable returning ns is wrapped."""
    if isinstance(source, Clock):
        return source
    if not callable(source):
        raise TypeError(f"a clock must be a Clock or a callable returning ns, not {source!r}")
    cdef _CallableClock c = _CallableClock.__new__(_CallableClock)
    c.fn = source
    return c


@cython.final
cdef class Method:
    """A registered handler and how to call it."""

    def __init__(self, function, *, bint blocking=False, bint context=False,
                 bint idempotent=True):
        if not callable(function):
            raise TypeError(f"{function!r} is not callable")
        self.function = function
        self.blocking = blocking
        self.context = context
        self.idempotent = idempotent

    def __repr__(self):
        return (f"Method({self.function!r}, blocking={self.blocking}, "
                f"context={self.context}, idempotent={self.idempotent})")


cdef class Peer:
    """A client connection as the core sees it (see the module docstring)."""

    def __cinit__(self):
        self.out = OutBuffer()
        self.sessions = {}
        self.queue = collections.deque()
        self.inline = collections.deque()
        self.label = ""

    def __repr__(self):
        return f"<Peer {self.id} {self.label}{' closed' if self.closed else ''}>"


@cython.final
cdef class Request:
    pass


@cython.final
cdef class CallContext:
    """What a handler registered with ``context=True`` gets as its first argument.

    ``peer``: the client's address as the transport names it (``tcp://host:port``,
    ``unix://path``, empty path for an unbound client socket); ``peer_id``: the connection's
    number, unique for the server's lifetime; ``session``: the client session the call
    belongs to (several may share a connection); ``call_id``: the call's id on that
    connection; ``deadline``: when the caller gives up, in seconds on the server's
    monotonic clock (``time.monotonic()``), or None; ``cancelled``: the client cancelled the
    call (or the server is stopping) and will ignore the reply.

    :meth:`defer` lets the handler return without replying and reply later, from any thread.
    """
    cdef ServerCore _core
    cdef Request _req

    def __init__(self):
        raise TypeError("the server creates call contexts; handlers receive them")

    @property
    def peer(self):
        return self._req.peer.label

    @property
    def peer_id(self):
        return self._req.peer.id

    @property
    def session(self):
        return self._req.frame.session

    @property
    def call_id(self):
        return self._req.frame.call_id

    @property
    def deadline(self):
        return self._req.deadline_ns / 1e9 if self._req.deadline_ns else None

    @property
    def cancelled(self):
        return self._req.cancelled

    def defer(self):
        """Take the reply out of the handler's hands: what the handler returns is ignored and
        the call stays open until the returned :class:`DeferredReply` is given a result or an
        error (once, from any thread). If the handler raises before that, the error is the
        reply. Only while the handler runs; calling it again returns the same object."""
        cdef Request r = self._req
        if r.reply is not None:
            return r.reply
        if not r.running:
            raise RuntimeError("defer() must be called while the handler runs")
        cdef DeferredReply d = DeferredReply.__new__(DeferredReply)
        d._core = self._core
        d._req = r
        r.reply = d
        r.deferred = True
        return d

    def __repr__(self):
        r = self._req
        return (f"<CallContext peer={r.peer.label!r} session={r.frame.session} "
                f"call_id={r.frame.call_id}>")


@cython.final
cdef class DeferredReply:
    """The reply of a deferred call. Give it exactly one of :meth:`result` or :meth:`error`,
    from any thread; a second answer raises RuntimeError. The reply travels to the server's
    I/O thread as a worker's does. It is dropped if the client's connection has closed, or
    if the server stopped and already answered Unavailable after its grace period."""
    cdef ServerCore _core
    cdef Request _req

    def __init__(self):
        raise TypeError("deferred replies come from CallContext.defer()")

    cdef int _claim(self) except -1:
        # Check-and-set with no Python call in between: under the GIL no other thread can
        # run between the two, so exactly one answer wins.
        if self._req.answered:
            raise RuntimeError("this call was already answered")
        self._req.answered = True
        return 0

    def result(self, value=None):
        """Reply with ``value``, encoded in the codec of the request."""
        self._claim()
        cdef Request r = self._req
        r.body = _encode_result(r, value, msgpack.Packer(), self._core.max_message_size)
        self._core._post(r)

    def error(self, exc):
        """Reply with the exception ``exc`` as a remote error (the client raises RemoteError
        with its type name and message)."""
        if not isinstance(exc, BaseException):
            raise TypeError(f"error() takes an exception, not {type(exc).__name__}")
        self._claim()
        cdef Request r = self._req
        r.kind = KIND_ERROR
        tb = None
        if self._core.send_tracebacks and exc.__traceback__ is not None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        r.body = _error_body(msgpack.Packer(), ERR_REMOTE, type(exc).__name__, str(exc), tb)
        self._core._post(r)

    @property
    def done(self):
        """True once an answer was given (it may not have been sent yet)."""
        return self._req.answered


cdef inline int _check_peer(Peer p) except -1:
    # The driver's entry points are cpdef (C calls from a compiled driver), and a cpdef
    # argument may be None: refuse it rather than dereference it.
    if p is None:
        raise TypeError("a Peer is needed, not None")
    return 0


cdef inline int _reply_codec(Request r, int kind) noexcept:
    # A response is in the request's codec; error bodies are always msgpack.
    return r.frame.codec if kind == KIND_RESPONSE else CODEC_MSGPACK


cdef bytes _error_body(object packer, int code, str type_name, str message, object tb):
    try:
        return packer.pack([code, type_name, message, tb])
    except UnicodeEncodeError:
        # A message may hold lone surrogates (os.fsdecode of a path that is not UTF-8),
        # which UTF-8, and so msgpack, cannot encode: the error is still one reply, with
        # those characters escaped. A fresh packer: the failed one may hold a partial body.
        return msgpack.packb([code, _printable(type_name), _printable(message),
                              None if tb is None else _printable(tb)])


cdef str _printable(str text):
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


cdef bytes _encode_result(Request r, object result, object packer,
                          Py_ssize_t max_message_size):
    """The reply body for a handler's result, in the request's codec; sets r.kind."""
    cdef int codec = r.frame.codec
    cdef bytes body
    try:
        if codec == CODEC_MSGPACK:
            body = packer.pack(result)
        elif codec == CODEC_RAW:
            if type(result) is not bytes:
                if not isinstance(result, (bytearray, memoryview)):
                    raise TypeError(f"a raw-codec handler must return bytes, "
                                    f"not {type(result).__name__}")
                result = bytes(result)
            body = result
        else:
            body = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        r.kind = KIND_ERROR
        return _error_body(packer, ERR_REMOTE, type(exc).__name__,
                           f"result could not be encoded: {exc}", None)
    if PyBytes_GET_SIZE(body) > max_message_size:
        r.kind = KIND_ERROR
        return _error_body(packer, ERR_TOO_LARGE, "MessageTooLarge",
                           f"response of {PyBytes_GET_SIZE(body)} bytes is over the "
                           f"max_message_size limit of {max_message_size}", None)
    r.kind = KIND_RESPONSE
    return body


cdef tuple _split_kwargs(object body, type args_type):
    """``(args, kwargs)`` from the body of a KWARGS request: a 2-element array (msgpack) or
    tuple (pickle) of the positional arguments and a map of str keyword names. Anything
    else raises TypeError, which the caller answers with BAD_REQUEST."""
    if len(body) != 2:
        raise TypeError(f"a KWARGS body must be [args, kwargs], not {len(body)} items")
    args, kwargs = body
    if type(args) is not args_type:
        raise TypeError(f"positional arguments must be a {args_type.__name__}, "
                        f"not {type(args).__name__}")
    if type(kwargs) is not dict:
        raise TypeError(f"keyword arguments must be a map, not {type(kwargs).__name__}")
    for key in kwargs:
        if type(key) is not str:
            raise TypeError(f"keyword names must be str, not {type(key).__name__}")
    return args, kwargs


def _run_in_worker(ServerCore core, Request r):
    """Body of a worker-pool task. The outcome goes back through core._post."""
    if r.cancelled:
        r.kind = OUT_CANCELLED
    elif r.deadline_ns and core.clock.now() >= r.deadline_ns:
        r.kind = OUT_SKIPPED
    else:
        # r.start_ns stays 0: a worker's time is not the I/O thread's (see _count_done).
        body = core._execute(r, msgpack.Packer())
        if body is None:
            return                         # deferred: the DeferredReply posts it
        r.body = body
    core._post(r)


@cython.final
cdef class ServerCore:
    """Dispatch for one server, without I/O (see the module docstring for the driver's side).

    ``methods`` maps method names (bytes) to :class:`Method` and is read at each call, so
    methods registered later are served. ``executor`` runs blocking handlers (``submit``);
    ``wake`` is called, from any thread, when a worker or a deferred reply has a result for
    :meth:`drain_completions`. ``clock`` is a :class:`Clock` or a callable returning ns.
    ``policy`` is an overload policy (breakwater) or None. ``accept_codecs`` is a bit mask of
    codec ids (raw and msgpack are always accepted). The bounds are those of
    :class:`microrpc.Server` (its docstring has what each means and why its default).
    """

    def __init__(self, dict methods not None, *, executor, wake, clock, policy=None,
                 int accept_codecs=_SAFE_CODECS,
                 Py_ssize_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                 bint send_tracebacks=False,
                 Py_ssize_t max_queued=DEFAULT_MAX_QUEUED,
                 Py_ssize_t max_queued_bytes=DEFAULT_MAX_QUEUED_BYTES_TOTAL,
                 Py_ssize_t max_connections=DEFAULT_MAX_CONNECTIONS,
                 Py_ssize_t max_queued_per_connection=DEFAULT_MAX_QUEUED_PER_CONNECTION,
                 Py_ssize_t max_queued_bytes_per_connection=DEFAULT_MAX_QUEUED_BYTES,
                 Py_ssize_t max_output_per_connection=DEFAULT_MAX_OUTPUT,
                 Py_ssize_t max_sessions_per_connection=DEFAULT_MAX_SESSIONS,
                 Py_ssize_t line_share=DEFAULT_LINE_SHARE,
                 DecodeLimits decode_limits=None, once=None):
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        for name, value in (("max_queued", max_queued),
                            ("max_queued_bytes", max_queued_bytes),
                            ("max_connections", max_connections),
                            ("max_queued_per_connection", max_queued_per_connection),
                            ("max_queued_bytes_per_connection",
                             max_queued_bytes_per_connection),
                            ("max_output_per_connection", max_output_per_connection),
                            ("max_sessions_per_connection", max_sessions_per_connection),
                            ("line_share", line_share)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not callable(wake):
            raise TypeError("wake must be callable")
        self.methods = methods
        self.executor = executor
        self.wake = wake
        self.clock = clock_from(clock)
        self.policy = policy
        self.bw = policy if isinstance(policy, Breakwater) else None
        self.policy_credits = bool(policy is not None and policy.uses_credits)
        self.tick_ns = policy.tick_interval_ns if policy is not None else 0
        self.next_tick = 0
        self.completions = collections.deque()
        self.line = collections.deque()
        self.rejoin = []
        self.line_share = line_share
        self.global_waiting = []
        self.dirty = []
        self.inflight = {}
        self.peers = {}
        self.sid_peer = {}
        self.next_sid = 1
        self.next_peer_id = 1
        self.accept_codecs = accept_codecs | _SAFE_CODECS
        self.max_message_size = max_message_size
        # At least one whole reply must fit, or a peer could never be served again.
        self.out_limit = max(max_output_per_connection, max_message_size + HEADER_SIZE)
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.max_connections = max_connections
        self.max_queued_per_connection = max_queued_per_connection
        self.max_queued_bytes_per_connection = max_queued_bytes_per_connection
        self.max_sessions_per_connection = max_sessions_per_connection
        self.decode_limits = (decode_limits if decode_limits is not None
                              else DEFAULT_DECODE_LIMITS)
        self.send_tracebacks = send_tracebacks
        self.once = once
        self.packer = msgpack.Packer()
        self.stopping = False

    # -- peers --------------------------------------------------------------------------

    cpdef bint add_peer(self, Peer p, str label) except -1:
        """Register a new connection. ``p`` is fresh (a Peer or a driver's subclass).
        False: the server has max_connections already; the driver closes the new one."""
        _check_peer(p)
        if p.id:
            raise ValueError(f"{p!r} is already registered")
        if len(self.peers) >= self.max_connections:
            self.connections_refused += 1
            return False
        p.id = self.next_peer_id
        self.next_peer_id += 1
        p.label = label
        self.peers[p.id] = p
        return True

    cpdef close_peer(self, Peer p, int64_t now):
        """The connection is gone. Requests that were waiting for it end silently (their
        credit goes back to the policy); a worker still running one finishes and its reply
        is dropped. Idempotent."""
        cdef Request r
        _check_peer(p)
        if p.closed:
            return
        p.closed = True
        self.peers.pop(p.id, None)
        # Its queued requests are dropped, not run (issue #10: a server went on running a
        # flood for 8-13 s after the flooder left).
        if not p.held:
            self.nrunnable -= p.nqueued
        self.nqueued -= p.nqueued
        self.queued_bytes -= p.queued_bytes
        for r in self._line_pull(p):
            self._finish_silently(r, now)
        for r in p.queue:
            self._finish_silently(r, now)
        p.queue.clear()
        p.queued = None
        p.nqueued = 0
        p.queued_bytes = 0
        p.waiting = False
        # A deferred reply may never come now (its handler may be waiting on this very
        # client), and a call on the worker pool may still defer: end all of the peer's
        # calls in flight here rather than keep them open forever. A worker that has not
        # started its call skips it; one that has runs on, and its late answer is dropped.
        for key, r in list(self.inflight.items()):
            if r.peer is p:
                del self.inflight[key]
                r.cancelled = True
                self._finish_silently(r, now)
        if self.policy is not None:
            for sid in p.sessions.values():
                self.sid_peer.pop(sid, None)
                self.policy.close_session(sid, now)
        p.sessions.clear()

    cpdef protocol_error(self, Peer p):
        """The driver could not parse the peer's bytes (it closes the peer next)."""
        self.protocol_errors += 1

    cpdef bint over_limit(self, Peer p) except -1:
        """True while the driver must not read (or feed) the peer: its unsent replies are
        over max_output_per_connection (it reads again once it has read its replies), or
        a queue is at its bound (the core puts the peer on the dirty list when the queue
        has drained to half of it; see the module docstring)."""
        _check_peer(p)
        if p.out.end - p.out.start > self.out_limit:
            return True
        if p.waiting:
            # Paused at a bound: not until half of it has drained, or the driver would
            # re-arm and drop its read interest (two epoll_ctl calls) for every request.
            if not self._may_resume(p):
                return True
            p.waiting = False
        if (p.nqueued < self.max_queued_per_connection
                and p.queued_bytes < self.max_queued_bytes_per_connection
                and not self._global_full()):
            return False
        if not p.waiting:
            p.waiting = True
            self.paused_reads += 1
        if self._global_full() and not p.in_global_wait:
            p.in_global_wait = True          # its own queue may be empty: wake it from here
            self.global_waiting.append(p)
        return True

    cpdef list take_dirty(self):
        """The peers whose ``out`` got bytes since the last call (each once)."""
        cdef Peer p
        cdef list dirty = self.dirty
        if not dirty:
            return dirty
        self.dirty = []
        for p in dirty:
            p.dirty = False
        return dirty

    cdef int _mark_dirty(self, Peer p) except -1:
        cdef Py_ssize_t n = p.out.end - p.out.start
        if n > self.output_peak_per_connection:
            self.output_peak_per_connection = n
        if not p.dirty:
            p.dirty = True
            self.dirty.append(p)
        return 0

    cpdef resume(self, Peer p):
        """The driver sent some of the peer's replies: if they are under the limit now, its
        held requests join the line again. Cheap; call it after each send. The driver
        then feeds what its parser kept, unless over_limit(p)."""
        _check_peer(p)
        if p.held and not p.closed and p.out.end - p.out.start <= self.out_limit:
            p.held = False
            self.nrunnable += p.nqueued
            self._line_fill(p)

    cdef int _rejoin(self) except -1:
        """Peers over their share put their next request at the line's end, one each. They
        are put on the ``rejoin`` list when their request in the line starts, and rejoin at
        the next pass (after the driver fed what arrived meanwhile), or at once if the line
        ran dry. So a request that arrived while an over-share peer's request ran goes
        before that peer's next one: a light client waits for the request running when it
        arrives, not for the flood's next one too (start-time fair queueing, roughly)."""
        cdef Peer p
        cdef list peers = self.rejoin
        if not peers:
            return 0
        self.rejoin = []
        for p in peers:
            p.rejoining = False
            if p.queue and not p.nline and not p.held and not p.closed:
                self._line_put(p, p.queue.popleft())
        return 0

    cdef int _line_fill(self, Peer p) except -1:
        """Move ``p``'s oldest waiting requests into the line, up to its share."""
        cdef Request r
        while p.nline < self.line_share and p.queue:
            self._line_put(p, p.queue.popleft())
        return 0

    cdef int _line_put(self, Peer p, Request r) except -1:
        """``r`` joins the line's end (it is ``p``'s newest there)."""
        self.line.append(r)
        p.inline.append(r)
        r.inline = True
        p.nline += 1
        self.nline_live += 1
        return 0

    cdef list _line_pull(self, Peer p):
        """Take ``p``'s requests out of the line, in order, in O(its share): they stay in
        the deque, marked, and run() drops them when it reaches them (a scan of the line
        per closed connection would let a client that connects, queues and closes in a loop
        make the server scan it each time)."""
        cdef list mine = list(p.inline)
        for r in mine:
            (<Request>r).inline = False
        p.inline.clear()
        self.nline_live -= p.nline
        p.nline = 0
        return mine

    cdef int _trim(self) except -1:
        """Drop the marked (pulled out) requests at the head of the line."""
        while self.line and not (<Request>self.line[0]).inline:
            self.line.popleft()
        return 0

    cdef int _hold(self, Peer p, Request r) except -1:
        """``r``, next in line, belongs to ``p``, whose unsent replies are over the limit: it
        and p's other requests wait in p's queue, in order, until resume()."""
        cdef list mine = self._line_pull(p)
        mine.insert(0, r)
        p.queue.extendleft(reversed(mine))
        p.held = True
        self.nrunnable -= p.nqueued
        return 0

    cdef int _enqueue(self, Peer p, Request r) except -1:
        cdef Frame f = r.frame
        cdef Py_ssize_t n
        if p.held:
            p.queue.append(r)
        else:
            if p.nline < self.line_share and not p.queue:
                self._line_put(p, r)
            else:
                p.queue.append(r)
            self.nrunnable += 1
        if p.queued is not None:
            p.queued[f.call_id] = r
        p.nqueued += 1
        n = PyBytes_GET_SIZE(f.body) + PyBytes_GET_SIZE(f.name)
        p.queued_bytes += n
        self.queued_bytes += n
        self.nqueued += 1
        if p.nqueued > self.queued_peak_per_connection:
            self.queued_peak_per_connection = p.nqueued
        if self.nqueued > self.queued_peak:
            self.queued_peak = self.nqueued
        return 0

    cdef int _taken(self, Peer p, Request r) except -1:
        """``r``, a request of ``p`` not held, leaves the queues to start."""
        cdef Frame f = r.frame
        cdef Py_ssize_t n
        if p.queued is not None and p.queued.get(f.call_id) is r:
            del p.queued[f.call_id]
        p.nqueued -= 1
        n = PyBytes_GET_SIZE(f.body) + PyBytes_GET_SIZE(f.name)
        p.queued_bytes -= n
        self.queued_bytes -= n
        self.nqueued -= 1
        self.nrunnable -= 1
        if p.waiting:
            self._wake_waiting(p)
        if self.global_waiting and self._global_drained():
            waiting = self.global_waiting
            self.global_waiting = []
            for q in waiting:
                (<Peer>q).in_global_wait = False
                self._wake_waiting(<Peer>q)
        return 0

    cdef int _wake_waiting(self, Peer p) except -1:
        """Put a paused peer on the dirty list once its queue and the global one have
        drained to half their bounds (half: a peer at a bound is not woken and paused again
        for every request taken)."""
        if p.waiting and not p.closed and self._may_resume(p):
            p.waiting = False
            self._mark_dirty(p)
        return 0

    cdef bint _may_resume(self, Peer p) noexcept:
        return (p.nqueued <= self.max_queued_per_connection // 2
                and p.queued_bytes <= self.max_queued_bytes_per_connection // 2
                and self._global_drained())

    cdef bint _global_full(self) noexcept:
        """Everyone's requests not started are at max_queued or max_queued_bytes."""
        return self.nqueued >= self.max_queued or self.queued_bytes >= self.max_queued_bytes

    cdef bint _global_drained(self) noexcept:
        """... and have drained to half of both since."""
        return (self.nqueued <= self.max_queued // 2
                and self.queued_bytes <= self.max_queued_bytes // 2)

    # -- frames in ----------------------------------------------------------------------

    cpdef bint feed(self, Peer p, Frame f, int64_t now) except -1:
        """One frame received from ``p`` at ``now``. False: a frame no client may send (it
        is counted as a protocol error); the driver must close the peer."""
        _check_peer(p)
        if f is None:
            raise TypeError("feed() needs a Frame, not None")
        cdef int kind = f.kind
        if kind == KIND_REQUEST:
            self._admit(p, f, now)
        elif kind == KIND_CANCEL:
            self._cancel(p, f.call_id)
        elif kind == KIND_PING:
            self._pong(p, f, now)
        else:
            # Responses, errors and credits only travel server -> client.
            self.protocol_errors += 1
            return False
        return True

    cdef int _admit(self, Peer p, Frame f, int64_t now) except -1:
        cdef Request r = Request.__new__(Request)
        cdef object sid
        r.peer = p
        r.frame = f
        r.arrival_ns = now
        r.deadline_ns = now + <int64_t>f.deadline_us * 1000 if f.deadline_us else 0
        self.calls += 1
        if self.stopping:
            self._reply_error(r, ERR_UNAVAILABLE, "Unavailable", "the server is stopping", now)
            return 0
        if self.policy is not None:
            sid = self._session_id(p, f.session, now)
            if sid is None:
                self.session_rejects += 1
                self._reply_error(r, ERR_BAD_REQUEST, "ProtocolError",
                                  f"too many sessions on this connection (the server's "
                                  f"max_sessions_per_connection is "
                                  f"{self.max_sessions_per_connection})", now)
                return 0
            r.sid = sid
            if not self._policy_request(sid, f.credit, now, self._peer_delay(p, now)):
                self.rejects += 1
                self._reply_reject(r, now)
                return 0
        self._enqueue(p, r)
        return 0

    cdef int _cancel(self, Peer p, uint64_t call_id) except -1:
        # Best effort: a request not started yet is skipped (and still answered, below); a
        # running handler finishes; a deferred handler can see ctx.cancelled.
        # O(1) whatever is queued (issue #10: a scan of the run queue per CANCEL let ~1 MB
        # of CANCELs for unknown ids stall the server for seconds).
        cdef Request r = None
        if p.nqueued:
            if p.queued is None:             # the first CANCEL of this peer: index its queue
                p.queued = {(<Request>q).frame.call_id: q for q in p.inline}
                p.queued.update({(<Request>q).frame.call_id: q for q in p.queue})
            r = p.queued.get(call_id)
        if r is None:
            r = self.inflight.get((p.id, call_id))
        if r is not None and not r.cancelled:
            r.cancelled = True
            self.cancelled += 1
        return 0

    cdef int _pong(self, Peer p, Frame f, int64_t now) except -1:
        """Answer a ping. With a credit policy the pong registers the session and carries its
        first window: that is how a client learns, before its first call, that this server
        hands out credits (a pong without HAS_CREDIT means it does not)."""
        cdef int flags = 0
        cdef uint32_t window = 0
        if self.policy_credits:
            # A session the policy knows gets its current window. A new one gets the one
            # credit its first request needs and is registered by that request: a session
            # that only pings costs nothing and takes no share of the pool.
            sid = p.sessions.get(f.session)
            window = self._policy_open(sid, now) if sid is not None else 1
            flags = FLAG_HAS_CREDIT
            self.credit_frames += 1
        p.out.put_frame(KIND_PONG, flags, 0, f.call_id, f.session, 0, window, NULL, 0, NULL, 0)
        self._mark_dirty(p)
        return 0

    cdef object _session_id(self, Peer p, uint32_t session, int64_t now):
        """The policy's id for (peer, wire session), registering it on first sight; None
        if it is new and the peer has max_sessions_per_connection already."""
        sid = p.sessions.get(session)
        if sid is None:
            if len(p.sessions) >= self.max_sessions_per_connection:
                return None
            sid = self.next_sid
            self.next_sid += 1
            p.sessions[session] = sid
            self.sid_peer[sid] = (p, session)
            self._policy_open(sid, now)
        return sid

    # -- the overload policy: C calls for Breakwater, Python calls for any other -----------

    cdef int _policy_open(self, object sid, int64_t now) except -1:
        if self.bw is not None:
            return <int>self.bw.open_session(sid, now)
        return self.policy.open_session(sid, now)

    cdef bint _policy_request(self, object sid, uint32_t demand, int64_t now,
                              int64_t delay) except -1:
        if self.bw is not None:
            return self.bw.on_request(sid, demand, now, delay)
        return bool(self.policy.on_request(sid, demand, now, delay))

    cdef int64_t _policy_complete(self, object sid, int64_t now) except -1:
        if self.bw is not None:
            return self.bw.on_complete(sid, now)
        return self.policy.on_complete(sid, now)

    cdef int64_t _policy_reject(self, object sid, int64_t now) except -1:
        if self.bw is not None:
            return self.bw.on_reject(sid, now)
        return self.policy.on_reject(sid, now)

    cpdef int64_t queue_delay(self, int64_t now) except -1:
        """The congestion signal the policy sees: how long a request arriving now will wait
        before it starts, plus how far the driver is behind its sockets (loop_lag_ns).

        The wait is the larger of two measures. The age of the oldest request not yet started
        is Breakwater's own signal, but it lags a burst: ten requests that arrived together
        are young, yet the last of them will wait ten service times. So the work queued ahead
        (requests in the run queue, at the measured time per request) counts too; it is what
        lets the AQM threshold bound the wait of what it admits.

        Only this thread's queue counts. A call running on the worker pool, or waiting for a
        deferred reply, delays nobody in the run queue; counting it made one long blocking
        call reject every short call of other sessions while it ran. Nor do the requests of
        a peer held back until it reads its replies.

        The head measured is the line's: the oldest request of a peer within its share,
        which is the oldest of all unless some peer is over its share (then the work-ahead
        term, which counts every runnable request, bounds the difference)."""
        cdef Request head
        cdef int64_t d = 0, ahead
        self._trim()
        if self.nline_live:
            head = self.line[0]
            d = now - head.arrival_ns
        ahead = self.nrunnable * self.per_request_ns
        if ahead > d:
            d = ahead
        return d + self.loop_lag_ns

    cdef int64_t _peer_delay(self, Peer p, int64_t now) except -1:
        """What admission control sees for a request of ``p``: the wait it will have. Within
        p's share it joins the line's end and waits for the line, the same for every peer:
        queue_delay() without the requests of peers over their share. Past the share it
        joins p's queue, behind k others, and p gets one request into the line per pass
        through it: after the pass that starts p's requests now in the line, k + 1 more,
        so about len(line) * (k + 2) requests go first, capped by every runnable request
        (issue #10: with the whole queue as the signal, a session flood of 1024 requests on
        one connection got an honest client on another rejected)."""
        cdef Request head
        cdef int64_t d = 0, ahead
        cdef Py_ssize_t n = self.nline_live
        self._trim()
        if n:
            head = self.line[0]
            d = now - head.arrival_ns
        if p.queue or p.nline >= self.line_share:
            n *= len(p.queue) + 2
            if n > self.nrunnable:
                n = self.nrunnable
        ahead = n * self.per_request_ns
        if ahead > d:
            d = ahead
        return d + self.loop_lag_ns

    cdef int _count_done(self, Request r, int64_t now) except -1:
        """Fold one completion of a handler run on this thread into per_request_ns: the time
        since it started or since the previous such completion, whichever is later. While the
        run queue is backlogged that is the time between completions (1 / throughput of this
        thread, GIL contention included); after an idle spell it is the request's own service
        time. Worker-pool and deferred calls are not folded in: they do not hold up the run
        queue, and a long one would price every queued request at its duration."""
        cdef int64_t since
        if r.start_ns == 0:
            return 0
        since = r.start_ns if r.start_ns > self.last_done_ns else self.last_done_ns
        self.last_done_ns = now
        if self.per_request_ns == 0:
            self.per_request_ns = now - since
        else:                               # weight 1/32: exponential service is noisy
            self.per_request_ns += (now - since - self.per_request_ns) >> 5
        return 0

    cpdef int64_t tick(self, int64_t now) except -1:
        """Run the policy's control loop if it is due; send the credits it grants. Returns
        when it is next due (0: the policy has no control loop)."""
        if self.tick_ns == 0:
            return 0
        if now >= self.next_tick:
            self.next_tick = now + self.tick_ns
            if self.bw is not None:
                grants = self.bw.on_tick(now, self.queue_delay(now))
            else:
                grants = self.policy.on_tick(now, self.queue_delay(now))
            if grants:
                self._credit_frames(grants)
        return self.next_tick

    cdef int _credit_frames(self, list grants) except -1:
        cdef Peer p
        for sid, window in grants:
            target = self.sid_peer.get(sid)
            if target is None:
                continue
            p = target[0]
            if p.closed:
                continue
            p.out.put_frame(KIND_CREDIT, FLAG_HAS_CREDIT, 0, 0, target[1], 0, window,
                            NULL, 0, NULL, 0)
            self.credit_frames += 1
            self._mark_dirty(p)
        return 0

    # -- running requests ---------------------------------------------------------------

    cpdef bint has_work(self) noexcept:
        """Requests to start or completions to drain: the driver should not sleep."""
        return self.nline_live > 0 or bool(self.rejoin) or bool(self.completions)

    cpdef int run(self, int64_t now, int64_t budget_ns) except -1:
        """Start requests from the line, in order, until none is left or ``budget_ns``
        has passed since ``now`` (at least one is started), so that replies go out and new
        requests are read (and the policy sees them) promptly. Returns how many were taken.
        A peer whose unsent replies are over the limit is held until resume()."""
        cdef int64_t end = now + budget_ns
        cdef int n = 0
        cdef Request r
        cdef Peer p
        cdef Py_ssize_t popped = 0
        # The requests in line before this pass's rejoins: of peers within their share, or
        # of over-share peers already waiting. Once they have started, the pass ends before
        # the rejoined ones (if there are others), so that their replies go out first: a
        # light client's reply does not wait for a flood's next request to run.
        cdef Py_ssize_t before_rejoin = self.nline_live
        self._rejoin()
        while self.nline_live or self.rejoin:
            if not self.nline_live:
                self._rejoin()
                if not self.nline_live:
                    break
            elif popped == before_rejoin and n:
                break
            r = self.line.popleft()
            if not r.inline:
                continue                     # pulled out: its peer closed or was held
            popped += 1
            p = r.peer
            p.inline.popleft()               # r: a peer's requests leave the line in order
            r.inline = False
            p.nline -= 1
            self.nline_live -= 1
            if p.out.end - p.out.start > self.out_limit:
                self._hold(p, r)             # run once the peer has read its replies
                continue
            if p.queue and not p.nline and not p.rejoining:
                p.rejoining = True           # over its share: see _rejoin
                self.rejoin.append(p)
            self._taken(p, r)
            self._run_one(r, now)
            n += 1
            now = self.clock.now()
            if now >= end:
                break
        if not self.nline_live:
            self.line.clear()                # only marked requests are left, if any
        return n

    cdef int _run_one(self, Request r, int64_t now) except -1:
        """Start one request (inline, or on the worker pool); ``now``: its start time."""
        cdef Peer p = r.peer
        cdef Frame f = r.frame
        cdef bytes body
        cdef object key = None   # (peer, call id), for the calls that may stay in flight
        if p.closed:
            self._finish_silently(r, now)     # nobody to answer: do not run it
            return 0
        if r.cancelled:
            # The client gave up and ignores the answer, but every request gets exactly one
            # response frame: the client's credit accounting counts on it.
            self._reply_error(r, ERR_DEADLINE, "Cancelled", "cancelled by the client", now)
            return 0
        m = self.methods.get(f.name)
        if m is None:
            self._reply_error(r, ERR_NOT_FOUND, "MethodNotFound",
                              f"no method named {f.name.decode('utf-8', 'replace')!r}", now)
            return 0
        if not (self.accept_codecs >> f.codec) & 1:
            self._reply_error(r, ERR_BAD_REQUEST, "ProtocolError",
                              f"this server does not accept codec {f.codec}", now)
            return 0
        if r.deadline_ns and now >= r.deadline_ns:
            self.deadline_skipped += 1
            self._reply_error(r, ERR_DEADLINE, "DeadlineExceeded",
                              "deadline passed before the call started", now)
            return 0
        r.method = <Method>m
        if f.flags & FLAG_ONCE and not r.method.idempotent and self.once is not None:
            if not self._check_once(r, now):
                return 0
        if r.method.blocking or r.method.context:
            key = (p.id, f.call_id)
            if key in self.inflight:
                # Call ids are unique among a client's calls in flight (docs/wire.md); a
                # reused one would take the first call's place in the table, and that call
                # could then lose its reply (at stop) or its end (when the client leaves).
                self._reply_error(r, ERR_BAD_REQUEST, "ProtocolError",
                                  f"call id {f.call_id} is already in flight", now)
                return 0
        if r.method.blocking:
            self.inflight[key] = r
            self.executor.submit(_run_in_worker, self, r)
            return 0
        if self.policy is not None:          # only the overload signal needs the timing
            r.start_ns = now
        body = self._execute(r, self.packer)
        if body is None:                     # deferred
            r.start_ns = 0                   # the reply's wait is not this thread's work
            self.inflight[key] = r           # only a context method defers: key is set
            return 0
        self._reply(r, r.kind, body, self.clock.now() if self.policy is not None else 0)
        return 0

    cdef bint _check_once(self, Request r, int64_t now) except -1:
        """An exactly-once call (microrpc.exactly_once): True if it is new and may run (its
        reply will be saved); otherwise it is answered here (the saved reply of its first
        run, "in progress", or a refusal) and False."""
        cdef Frame f = r.frame
        cdef int check
        try:
            check = self.once.check_code(f.lease, f.seq, f.ack)
        except ValueError as exc:
            self._reply_error(r, ERR_BAD_REQUEST, "ProtocolError", str(exc), now)
            return False
        if check == CHECK_NEW:
            r.once = True
            return True
        if check == CHECK_DONE:
            kind, codec, body = self.once.saved
            if kind == KIND_RESPONSE and codec != f.codec:
                self._reply_error(r, ERR_BAD_REQUEST, "ProtocolError",
                                  f"call {f.seq} of lease {f.lease} was first sent with codec "
                                  f"{codec}: a retry must use the same one", now)
            else:
                self.once_duplicates += 1
                self._reply(r, kind, body, now)
        elif check == CHECK_RUNNING:
            self._reply_error(r, ERR_IN_PROGRESS, "InProgress",
                              f"call {f.seq} of lease {f.lease} is still running", now)
        elif check == CHECK_EXPIRED:
            self._reply_error(r, ERR_LEASE_EXPIRED, "LeaseExpired",
                              f"lease {f.lease} has expired: the call was not run", now)
        else:
            reason = ("stale: already acknowledged" if check == CHECK_STALE
                      else f"over the window of {self.once.window} calls not acknowledged")
            self._reply_error(r, ERR_BAD_REQUEST, "ProtocolError",
                              f"call {f.seq} of lease {f.lease} refused: {reason}", now)
        return False

    cdef bytes _execute(self, Request r, object packer):
        """Decode the arguments, call the handler, encode the outcome. Returns the reply
        body and sets r.kind; None if the handler deferred its reply (then r.kind and r.body
        belong to the DeferredReply, which may be writing them on another thread now).
        Runs on any thread."""
        cdef Frame f = r.frame
        cdef int codec = f.codec
        cdef Method m = r.method
        cdef CallContext ctx
        fn = m.function
        kwargs = None
        try:
            if codec == CODEC_MSGPACK:
                args = self.decode_limits.unpack(f.body)
                if type(args) is not list:
                    raise TypeError("arguments must be a msgpack array")
                if f.flags & FLAG_KWARGS:
                    args, kwargs = _split_kwargs(args, list)
            elif codec == CODEC_RAW:
                if f.flags & FLAG_KWARGS:
                    raise TypeError("the raw codec carries no keyword arguments")
                args = None
            else:
                args = pickle.loads(f.body)
                if type(args) is not tuple:
                    raise TypeError("arguments must be a pickled tuple")
                if f.flags & FLAG_KWARGS:
                    args, kwargs = _split_kwargs(args, tuple)
        except Exception as exc:
            self.undecodable += 1
            r.kind = KIND_ERROR
            return _error_body(packer, ERR_BAD_REQUEST, "ProtocolError",
                               f"undecodable arguments: {exc}", None)
        try:
            if not m.context:
                if args is None:
                    result = fn(f.body)
                elif kwargs is None:
                    result = fn(*args)
                else:
                    result = fn(*args, **kwargs)
            else:
                ctx = CallContext.__new__(CallContext)
                ctx._core = self
                ctx._req = r
                r.running = True
                try:
                    if args is None:
                        result = fn(ctx, f.body)
                    elif kwargs is None:
                        result = fn(ctx, *args)
                    else:
                        result = fn(ctx, *args, **kwargs)
                finally:
                    r.running = False
                if r.deferred:
                    return None
        except Exception as exc:
            if r.deferred:
                if r.answered:
                    return None              # answered from another thread: that stands
                r.answered = True            # (same check-and-set as DeferredReply._claim)
            r.kind = KIND_ERROR
            tb = traceback.format_exc() if self.send_tracebacks else None
            return _error_body(packer, ERR_REMOTE, type(exc).__name__, str(exc), tb)
        return _encode_result(r, result, packer, self.max_message_size)

    # -- replies ------------------------------------------------------------------------

    cdef int _post(self, Request r) except -1:
        """Any thread: ``r`` has its outcome in r.kind / r.body; hand it to the driver's
        thread. deque.append is atomic, so no lock is needed."""
        self.completions.append(r)
        self.wake()
        return 0

    cpdef int drain_completions(self, int64_t now) except -1:
        """Reply to what workers and deferred replies finished. Returns how many."""
        cdef Request r
        cdef int n = 0
        cdef object key
        while self.completions:
            r = self.completions.popleft()
            n += 1
            if r.once:
                self._once_outcome(r, r.kind, r.body)
            if r.done:
                continue                     # ended meanwhile (stop, closed peer)
            key = (r.peer.id, r.frame.call_id)
            if self.inflight.get(key) is r:
                del self.inflight[key]
            if r.kind == OUT_CANCELLED:
                self._reply_error(r, ERR_DEADLINE, "Cancelled", "cancelled by the client", now)
            elif r.kind == OUT_SKIPPED:
                self.deadline_skipped += 1
                self._reply_error(r, ERR_DEADLINE, "DeadlineExceeded",
                                  "deadline passed before the call started", now)
            else:
                self._reply(r, r.kind, r.body, now)
        return n

    cdef int _reply(self, Request r, int kind, bytes body, int64_t now) except -1:
        """The one reply of ``r`` (dropped if its peer is gone; the credit still returns)."""
        cdef Peer p = r.peer
        cdef int flags = 0
        cdef uint32_t window = 0
        if r.once:
            self._once_outcome(r, kind, body)
        if r.done:
            return 0
        r.done = True
        if kind == KIND_ERROR:
            self.errors += 1
        if self.policy is not None:
            self._count_done(r, now)
            if r.sid is not None:
                window = <uint32_t>self._policy_complete(r.sid, now)
                if self.policy_credits:
                    flags = FLAG_HAS_CREDIT
        if p.closed:
            return 0
        p.out.put_frame(kind, flags, _reply_codec(r, kind), r.frame.call_id, r.frame.session, 0,
                        window, NULL, 0, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self._mark_dirty(p)
        return 0

    cdef int _once_outcome(self, Request r, int kind, bytes body) except -1:
        """Keep the outcome of an exactly-once call that ran, for its retries (also when
        its connection is gone: the retry comes on a new one); forget one that did not run
        after all, so that a retry may run it."""
        cdef Frame f = r.frame
        r.once = False
        if kind == KIND_RESPONSE or kind == KIND_ERROR:
            self.once.finish(f.lease, f.seq, (kind, f.codec, body))
        else:                                # OUT_CANCELLED, OUT_SKIPPED: never started
            self.once.forget(f.lease, f.seq)
        return 0

    cdef int _reply_error(self, Request r, int code, str type_name, str message,
                          int64_t now) except -1:
        self._reply(r, KIND_ERROR, _error_body(self.packer, code, type_name, message, None), now)
        return 0

    cdef int _reply_reject(self, Request r, int64_t now) except -1:
        cdef Peer p = r.peer
        cdef uint32_t window = <uint32_t>self._policy_reject(r.sid, now)
        cdef bytes body = _error_body(self.packer, ERR_OVERLOADED, "Overloaded",
                                      "rejected by the server's overload control", None)
        r.done = True
        self.errors += 1
        p.out.put_frame(KIND_ERROR, FLAG_HAS_CREDIT if self.policy_credits else 0,
                        CODEC_MSGPACK, r.frame.call_id, r.frame.session, 0, window, NULL, 0,
                        PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self._mark_dirty(p)
        return 0

    cdef int _finish_silently(self, Request r, int64_t now) except -1:
        """End ``r`` without a reply (its peer is gone); the policy gets its credit back."""
        if r.done:
            return 0
        r.done = True
        if self.policy is not None and r.sid is not None:
            self._policy_complete(r.sid, now)
        return 0

    # -- stopping -----------------------------------------------------------------------

    cpdef request_stop(self, int64_t now, int64_t grace_ns):
        """Stop: new requests are answered Unavailable at once; those admitted get until
        ``now + grace_ns`` to finish (see stop_step). May be called from any thread (two
        plain stores); the driver should wake its thread afterwards."""
        if grace_ns < 0:
            grace_ns = 0
        self.stop_deadline = now + grace_ns
        self.stopping = True

    cpdef bint stop_step(self, int64_t now) except -1:
        """While stopping, once per pass: True when every admitted request has its reply.
        When the grace period is over, every request still queued, on a worker or deferred
        gets an Unavailable error now (a late result is dropped), and this returns True."""
        cdef Request r
        cdef Peer p
        if not self.nqueued and not self.inflight and not self.completions:
            return True
        if now < self.stop_deadline:
            return False
        waiting = [r for r in self.line if (<Request>r).inline]
        for r in waiting:
            (<Request>r).inline = False
        self.line.clear()
        self.nline_live = 0
        self.rejoin = []
        for p in list(self.peers.values()):
            waiting.extend(p.queue)
            p.queue.clear()
            p.queued = None
            p.rejoining = False
            p.inline.clear()
            p.nline = 0
            p.nqueued = 0
            p.queued_bytes = 0
        self.nqueued = 0
        self.queued_bytes = 0
        self.nrunnable = 0
        for r in waiting:
            self._reply_error(r, ERR_UNAVAILABLE, "Unavailable",
                              "the server stopped before the call finished", now)
        for r in list(self.inflight.values()):
            r.once = False                   # it may still run: no outcome to keep
            r.cancelled = True               # a worker that has not started it skips it
            self._reply_error(r, ERR_UNAVAILABLE, "Unavailable",
                              "the server stopped before the call finished", now)
        self.inflight.clear()
        self.completions.clear()
        return True

    # -- statistics ---------------------------------------------------------------------

    def queue_depth(self):
        """Requests admitted and not finished: queued (also those held back for a peer
        that does not read its replies), on a worker, deferred."""
        return self.nqueued + len(self.inflight)

    def queued(self):
        """Requests read and not started, every connection."""
        return self.nqueued

    def buffered_output(self):
        """Reply bytes produced and not yet taken by the driver."""
        cdef Peer p
        cdef Py_ssize_t total = 0
        for p in self.peers.values():
            total += p.out.end - p.out.start
        return total

    def peer_count(self):
        return len(self.peers)
