# cython: language_level=3
"""The client protocol core: everything a microrpc client does that is not I/O.

One :class:`ClientCore` per client owns the table of calls in flight, the handshake, the
Breakwater credits and their expiry, deadlines, cancel frames and the mapping from reply
frames to outcomes. It never touches a socket, a thread or a clock: a driver (``Client``
with threads, ``AsyncClient`` on asyncio) passes the time in, feeds it the frames it read,
sends the bytes the core put in :attr:`ClientCore.out`, and tells the owners of the calls
that :meth:`ClientCore.take_ended` hands back. Tests drive it with a fake clock and no
sockets (tests/microrpc/test_client_core.py).

A call goes NEW -> (QUEUED ->) SENT -> DONE, or to CANCELLED from any pending state, and
reaches exactly one final state exactly once: every call ends in one outcome.

Codec discipline: a reply is decoded only with the codec this client asked for. A RESPONSE
in another codec, or an ERROR whose body is not msgpack, is a protocol violation that
breaks the connection; it is never decoded (a pickle body would run code).
"""
import heapq
import pickle
from collections import deque

import msgpack

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t

from microrpc._core cimport (
    CODEC_MSGPACK, CODEC_PICKLE, CODEC_RAW, ERR_BAD_REQUEST, ERR_DEADLINE, ERR_IN_PROGRESS,
    ERR_LEASE_EXPIRED, ERR_NOT_FOUND, ERR_OVERLOADED, ERR_REMOTE, ERR_TOO_LARGE,
    ERR_UNAUTHENTICATED, ERR_UNAVAILABLE, FLAG_HAS_CREDIT, FLAG_KWARGS, FLAG_ONCE,
    Frame,
    KIND_CANCEL, KIND_CREDIT, KIND_ERROR, KIND_PING, KIND_PONG, KIND_REQUEST, KIND_RESPONSE,
    OutBuffer,
)
from microrpc._decode cimport DecodeLimits
from microrpc._pack cimport pack
from microrpc._once cimport CallNumbers

from breakwater import DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_NS, ClientCredits, Submit
from microrpc._decode import DEFAULT_DECODE_LIMITS
from microrpc.exactly_once import DEFAULT_WINDOW as ONCE_WINDOW
from microrpc.errors import (
    AuthenticationError, ConnectionLost, DeadlineExceeded, MessageTooLarge, MethodNotFound,
    Overloaded, ProtocolError, RemoteError,
)

# Pass as ``timeout`` to use the client's default timeout.
USE_DEFAULT = object()

NEW = CALL_NEW
QUEUED = CALL_QUEUED
SENT = CALL_SENT
DONE = CALL_DONE
CANCELLED = CALL_CANCELLED
IDLE = CONN_IDLE
HANDSHAKE = CONN_HANDSHAKE
READY = CONN_READY
BROKEN = CONN_BROKEN

DEF MAX_DEADLINE_US = 0xFFFFFFFF
# The deque of default-timeout deadlines and the heap of other deadlines keep calls that
# ended until they reach the head; past this many entries (and four times the pending calls)
# they are rebuilt, so a long call at the head cannot make them grow without bound.
DEF COMPACT_AT = 1024
# An exactly-once call answered "in progress" (a copy of it still runs on the server) asks
# again after this, doubling per answer up to the cap (ns).
DEF IN_PROGRESS_FIRST_NS = 1000000
DEF IN_PROGRESS_MAX_NS = 50000000
# The server's built-in lease method (microrpc.server.LEASE_METHOD), called with no
# arguments in msgpack whatever this client's codec: it returns [lease, ttl seconds].
cdef bytes LEASE_NAME = b"_microrpc.lease"
cdef bytes NO_ARGS = msgpack.packb(())

cdef object _SEND = Submit.SEND
cdef object _QUEUED = Submit.QUEUED
cdef tuple _NOTHING = ()


def error_from_body(bytes body):
    """The RpcError an ERROR frame's msgpack body ``[code, type, message, traceback]``
    stands for (a malformed body is itself a ProtocolError)."""
    try:
        code, type_name, message, tb = DEFAULT_DECODE_LIMITS.unpack(body)
        if not (type(code) is int and type(type_name) is str and type(message) is str
                and (tb is None or type(tb) is str)):
            raise ValueError("wrong field types")
    except Exception as exc:
        return ProtocolError(f"malformed error frame body: {exc}")
    if code == ERR_REMOTE:
        return RemoteError(type_name, message, tb)
    if code == ERR_NOT_FOUND:
        return MethodNotFound(message)
    if code == ERR_DEADLINE:
        return DeadlineExceeded(f"server: {message}")
    if code == ERR_TOO_LARGE:
        return MessageTooLarge(message)
    if code == ERR_OVERLOADED:
        return Overloaded(message, side="server")
    if code == ERR_BAD_REQUEST:
        return ProtocolError(f"server could not decode the request: {message}")
    if code == ERR_UNAVAILABLE:
        return ConnectionLost(f"server: {message}")
    if code == ERR_UNAUTHENTICATED:
        return AuthenticationError(f"server: {message}")
    return ProtocolError(f"unknown error code {code} from server ({type_name}: {message})")


cdef class Call:
    """One call as the core tracks it. Drivers may subclass it (the thread client's futures
    are Calls) and use the ``owner``/``callbacks``/``waiters`` slots as they like."""

    @property
    def pending(self):
        return self.state < CALL_DONE

    @property
    def deadline(self):
        """Monotonic ns when the call gives up (0: never)."""
        return self.deadline_ns

    def outcome(self):
        """The result, or raise the call's error. Only for a DONE call."""
        if self.error is not None:
            raise self.error
        return self.value

    def __repr__(self):
        names = ("new", "queued", "sent", "done", "cancelled")
        return f"<Call {self.call_id} {names[self.state]}>"


cdef class ClientCore:
    """The protocol state of one client over one connection at a time (see the module doc).

    ``codec``: the wire codec id of every request, and the only one accepted in replies.
    ``timeout``: the default seconds per call (None: no deadline).

    ``exactly_once``: every call is numbered and sent with this client's lease (RIFL; see
    microrpc.exactly_once), so that a method the server registered ``idempotent=False``
    runs once however often the call is sent. The core then:

    * asks the server for a lease when a connection is ready and it holds none (calls made
      meanwhile are parked and sent when it arrives);
    * on a connection lost (``fail(error, retry=True)``), keeps its pending calls parked
      instead of failing them, and sends them again, with the same numbers, once the driver
      has a new connection; they end when they get an answer or at their deadline;
    * asks again, after a backoff, when the server says a copy of the call still runs;
    * when the server says the lease expired (the call did not run), takes a new lease and
      sends the call again if no copy of it can have run, and otherwise ends it with
      ConnectionLost (it may have run under the old lease, whose record is gone);
    * numbers at most ``once_window`` calls from the oldest one not ended, as the server
      keeps that many records per lease; further calls wait, unnumbered, until older ones
      end (or their deadline passes).
    """

    def __cinit__(self, int codec, uint32_t session=0, Py_ssize_t max_message_size=16777216,
                  object timeout=None, int credit_queue=DEFAULT_MAX_QUEUE,
                  int64_t credit_wait_ns=DEFAULT_MAX_WAIT_NS, DecodeLimits decode_limits=None,
                  bint exactly_once=False, Py_ssize_t once_window=ONCE_WINDOW):
        if codec < CODEC_RAW or codec > CODEC_PICKLE:
            raise ValueError(f"unknown codec {codec}")
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.codec = codec
        self.session = session
        # A hostile server must not make us decode a bomb: replies over these limits fail
        # their call with ProtocolError (see _decode.pyx).
        self.decode_limits = (decode_limits if decode_limits is not None
                              else DEFAULT_DECODE_LIMITS)
        # How many calls may wait for credit, and for how long (breakwater.ClientCredits).
        self.credit_queue = credit_queue
        self.credit_wait_ns = credit_wait_ns
        self.max_message_size = max_message_size
        if timeout is None:
            self.default_timeout_ns = 0
            self.default_timeout_us = 0
        else:
            if not timeout > 0:
                raise ValueError("timeout must be positive or None")
            self.default_timeout_ns = <int64_t>(timeout * 1e9)
            self.default_timeout_us = _wire_us(timeout)
        self.state = CONN_IDLE
        self.out = OutBuffer()
        self.credits = None
        self.error = None
        self.calls = {}
        self.next_id = 1
        self.by_deadline = deque()
        self.heap = []
        self.names = {}
        self.ended = []
        self.exactly_once = exactly_once
        self.numbers = CallNumbers(once_window)
        self.parked = []
        self.window_wait = deque()
        self.retry_heap = []

    # -- connection ---------------------------------------------------------------------

    def begin(self, int64_t now, OutBuffer out=None):
        """A new connection is open: queue the handshake PING (its PONG says whether the
        server hands out credits). Calls may be submitted once :attr:`ready`.

        ``out``: an output buffer to write into instead of a fresh one of this core's own:
        cores of many sessions that share one connection (the load generator) share it, so
        one ``send`` carries the frames of all of them."""
        if self.state == CONN_HANDSHAKE or self.state == CONN_READY:
            raise RuntimeError("the previous connection has not ended")
        self.out = OutBuffer() if out is None else out
        self.state = CONN_HANDSHAKE
        self.error = None
        self.credits = None
        self.handshakes += 1
        self.out.put_frame(KIND_PING, 0, 0, 0, self.session, 0, 0, NULL, 0, NULL, 0)

    @property
    def ready(self):
        return self.state == CONN_READY

    def fail(self, error, bint retry=False):
        """The connection failed (or the client closed): every pending call ends with
        ``error``. ``retry`` (the connection was lost, the client goes on): an exactly-once
        core keeps its numbered calls parked for the next connection instead. Returns the
        watched calls that ended."""
        self._fail(error, retry)
        return self.take_ended()

    cdef _fail(self, error, bint retry=False):
        cdef Call call
        retry = retry and self.exactly_once
        if not retry:
            # The client gives up: calls waiting for a new connection end too.
            waiting = [e[2] for e in self.retry_heap] + self.parked + list(self.window_wait)
            self.retry_heap = []
            self.parked = []
            self.window_wait.clear()
            for call in waiting:
                if call.state < CALL_DONE:
                    self._finish(call, None, error)
        if self.state == CONN_BROKEN or self.state == CONN_IDLE:
            return
        self.state = CONN_BROKEN
        if self.error is None:
            self.error = error
        lease_call = self.lease_call
        self.lease_call = None             # asked again on the next connection
        sent = [call for call in self.calls.values() if call is not lease_call]
        self.calls.clear()
        queued = []
        if self.credits is not None:
            # reset() hands back the head of the queue, an expire() beyond any wait the rest.
            queued.extend(self.credits.reset(0))
            queued.extend(self.credits.expire(1 << 62))
            self.credits = None
        for call in sent:
            if retry and call.seq:
                self._park(call)
            else:
                self._finish(call, None, error)
        for call in queued:
            if call.state == CALL_QUEUED:
                if retry and call.seq:
                    self._park(call)
                else:
                    self._finish(call, None, error)
        if not self.parked and not self.retry_heap:
            self.by_deadline.clear()
            self.heap.clear()
        self.out = OutBuffer()

    def fail_waiting(self, error):
        """The driver could not make a new connection: the parked calls that have no
        deadline end with ``error`` (the others wait for their deadline, or the next
        connection). Returns the watched calls that ended."""
        cdef Call call
        keep = []
        for call in self.parked:
            if call.state >= CALL_DONE:
                continue
            if call.deadline_ns:
                keep.append(call)
            else:
                self._finish(call, None, error)
        self.parked = keep
        return self.take_ended()

    @property
    def waiting(self):
        """True while exactly-once calls wait for a connection (the driver should make
        one)."""
        cdef Call call
        for call in self.parked:
            if call.state < CALL_DONE:
                return True
        for e in self.retry_heap:
            if (<Call>e[2]).state < CALL_DONE:
                return True
        self.parked = []
        return False

    def close_idle(self):
        """After fail(): back to IDLE so that :meth:`begin` may start a new connection."""
        if self.state == CONN_BROKEN:
            self.state = CONN_IDLE

    # -- calls --------------------------------------------------------------------------

    def wire_name(self, method):
        """The UTF-8 name of ``method``, checked and cached."""
        name = self.names.get(method)
        if name is None:
            if type(method) is not str:
                raise TypeError("method name must be a str")
            name = (<str>method).encode("utf-8")
            if not 1 <= len(name) <= 255:
                raise ValueError("a method name must be 1..255 UTF-8 bytes")
            self.names[method] = name
        return name

    def prepare(self, Call call, method, tuple args, object timeout, int64_t now,
                dict kwargs=None):
        """Encode ``method(*args, **kwargs)`` into ``call`` and set its deadline. Bad
        arguments raise TypeError/ValueError here; a body over the size limit raises
        MessageTooLarge. Needs no lock: it touches nothing shared but the name cache.

        Without keywords the body is the arguments alone, as it always was; with them the
        REQUEST carries the KWARGS flag and its body is ``[args, kwargs]`` (docs/wire.md).
        The raw codec has no keywords: its body is the one bytes argument."""
        cdef bytes body
        cdef int codec = self.codec
        if codec == CODEC_RAW:
            if kwargs:
                raise TypeError("the raw codec takes no keyword arguments (its body is one "
                                "bytes argument): use the msgpack or pickle codec")
            if len(args) != 1:
                raise TypeError("the raw codec takes exactly one bytes-like argument")
            arg = args[0]
            if type(arg) is bytes:
                body = <bytes>arg
            elif isinstance(arg, (bytearray, memoryview)):
                body = bytes(arg)
            else:
                raise TypeError("the raw codec takes exactly one bytes-like argument")
        elif codec == CODEC_MSGPACK:
            try:
                body = pack([args, kwargs] if kwargs else args)
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(f"argument cannot be sent with the msgpack codec: {exc}") from None
        else:
            body = pickle.dumps((args, kwargs) if kwargs else args,
                                protocol=pickle.HIGHEST_PROTOCOL)
        call.flags = FLAG_KWARGS if kwargs else 0
        self.prepare_body(call, method, body, timeout, now)

    cdef int _set_deadline(self, Call call, object timeout, int64_t now) except -1:
        if timeout is USE_DEFAULT:
            call.by_default = True
            if self.default_timeout_ns:
                call.deadline_ns = now + self.default_timeout_ns
                call.deadline_us = self.default_timeout_us
        elif timeout is not None:
            if not timeout > 0:
                raise ValueError("timeout must be positive or None")
            call.deadline_ns = now + <int64_t>(timeout * 1e9)
            call.deadline_us = _wire_us(timeout)
        return 0

    def prepare_body(self, Call call, method, bytes body, object timeout, int64_t now):
        """As :meth:`prepare`, for a body already encoded in this core's codec (tools that
        encode their own requests, such as the load generator)."""
        call.name = self.wire_name(method)
        if PyBytes_GET_SIZE(call.name) + PyBytes_GET_SIZE(body) > self.max_message_size:
            raise MessageTooLarge(
                f"request of {PyBytes_GET_SIZE(call.name) + PyBytes_GET_SIZE(body)} bytes is "
                f"over the max_message_size limit of {self.max_message_size}")
        call.body = body
        self._set_deadline(call, timeout, now)

    def submit(self, Call call, int64_t now):
        """Send a prepared call, or hold it for credit; a full credit queue ends it at once
        with ``Overloaded(side="client")``. Returns the call's state afterwards (a call that
        ended here is not handed back by take_ended(): the caller has just been told)."""
        if call.state != CALL_NEW:
            raise RuntimeError("a call is submitted once")
        if self.state != CONN_READY:
            raise ConnectionLost("the client is not connected")
        self.started += 1
        self.last_now = now
        if self.exactly_once:
            self._number(call, now)
        else:
            self._route(call, now)
        if call.state >= CALL_DONE:
            return call.state
        if call.deadline_ns:
            if call.by_default:
                self.by_deadline.append(call)
                if len(self.by_deadline) > COMPACT_AT:
                    self._compact()
            else:
                self.seq += 1
                heapq.heappush(self.heap, (call.deadline_ns, self.seq, call))
                if len(self.heap) > COMPACT_AT:
                    self._compact()
        return call.state

    def abort(self, Call call, error):
        """End a call that could not be submitted (no connection, too large) with
        ``error``, so that it too has exactly one outcome. No-op once it has one."""
        if call.state == CALL_NEW:
            self.started += 1
            self._finish(call, None, error, False)

    cdef int _route(self, Call call, int64_t now) except -1:
        """Send ``call`` now, hold it for credit, or end it (the credit queue is full); an
        exactly-once call without a lease to send it under waits in ``parked``."""
        if call.seq:
            if self.state != CONN_READY:
                return self._park(call)
            if not self.once_lease:
                return self._stale_lease(call)
        credits = self.credits
        if credits is None:
            self._send(call)
        else:
            decision = credits.submit(call, now)
            if decision is _SEND:
                self._send(call)
            elif decision is _QUEUED:
                call.state = CALL_QUEUED
            else:
                self._finish(call, None, Overloaded(
                    "no credit, and the client's local queue is full", side="client"), False)
        return 0

    cdef int _park(self, Call call) except -1:
        call.state = CALL_SENT            # pending, in no table but ``parked``
        call.call_id = 0
        self.parked.append(call)
        return 0

    cdef int _resend_parked(self, int64_t now) except -1:
        """A connection is ready and a lease held: send the parked calls, in order."""
        cdef Call call
        parked = self.parked
        self.parked = []
        for call in parked:
            if call.state == CALL_SENT and call.call_id == 0:
                self._route(call, now)
        return 0

    cdef int _send(self, Call call) except -1:
        # The session is the id's high half, so that the calls of the sessions sharing one
        # connection never share an id (a CANCEL names one call); the low half wraps after
        # 2**32 calls, long after any reply to that id could still come.
        cdef uint64_t cid
        cdef uint32_t demand = 0
        if call.seq and not (self.once_lease and (not call.lease
                                                  or call.lease == self.once_lease)):
            return self._stale_lease(call)
        cid = (<uint64_t>self.session << 32) | self.next_id
        self.next_id = self.next_id + 1 if self.next_id != 0xFFFFFFFF else 1
        call.call_id = cid
        call.state = CALL_SENT
        self.calls[cid] = call
        if self.credits is not None:
            demand = self.credits.demand()
        if call.seq:
            call.lease = self.once_lease
            call.sends += 1
            if call.sends > 1:
                self.resends += 1
            self.out.put_frame_once(KIND_REQUEST, call.flags | FLAG_ONCE, self.codec, cid,
                                    self.session, call.deadline_us, demand,
                                    PyBytes_AS_STRING(call.name), PyBytes_GET_SIZE(call.name),
                                    PyBytes_AS_STRING(call.body), PyBytes_GET_SIZE(call.body),
                                    self.once_lease, call.seq, self.numbers.first_open - 1)
        else:
            self.out.put_frame(KIND_REQUEST, call.flags,
                               CODEC_MSGPACK if call is self.lease_call else self.codec,
                               cid, self.session, call.deadline_us, demand,
                               PyBytes_AS_STRING(call.name), PyBytes_GET_SIZE(call.name),
                               PyBytes_AS_STRING(call.body), PyBytes_GET_SIZE(call.body))
        return 0

    cdef int _stale_lease(self, Call call) except -1:
        """An exactly-once call that cannot go under the lease held (none, or not the one
        its earlier copies went under): it waits for a lease, or it ends."""
        if not call.lease:
            self._park(call)
            return self._request_lease()
        if not self.once_lease:
            return self._park(call)       # (its lease may still be good: see on_lease)
        # A copy went out under an older lease and may have run; that lease's record is
        # gone, so a copy under this one could run it a second time.
        self._finish(call, None, ConnectionLost(
            "the call's lease expired after a copy of it was sent: it may or may not "
            "have run"))
        return 0

    cdef int _request_lease(self) except -1:
        """Ask the server for a lease (one request at a time); the parked calls go out
        when it arrives. It spends no credit of the client's: waiting in the credit queue
        could fail it, and with it every parked call."""
        cdef Call call
        if self.lease_call is not None or self.state != CONN_READY:
            return 0
        call = Call()
        call.name = LEASE_NAME
        call.body = NO_ARGS
        self.lease_call = call
        self._send(call)
        return 0

    cdef int _on_lease_reply(self, Frame f, int64_t now) except -1:
        cdef Call call
        self.lease_call = None
        problem = None
        if f.kind == KIND_RESPONSE:
            try:
                lease, ttl = self.decode_limits.unpack(f.body)
                if type(lease) is not int or not 0 < lease < (1 << 64):
                    raise ValueError(f"lease {lease!r}")
            except Exception as exc:
                problem = ProtocolError(f"the server's lease is malformed: {exc}")
            else:
                self.once_lease = lease
                self.lease_grants += 1
                return self._resend_parked(now)
        else:
            problem = error_from_body(f.body)
            if isinstance(problem, MethodNotFound):
                problem = ProtocolError("the server grants no leases: exactly-once calls need "
                                        "a microrpc server that has them")
        parked = self.parked
        self.parked = []
        for call in parked:
            if call.state < CALL_DONE:
                self._finish(call, None, problem)
        return 0

    cdef bint _on_once_error(self, Call call, bytes body, int64_t now) except -1:
        """An ERROR to an exactly-once call that means "ask again" (in progress) or "take
        a new lease" (expired, not run): handle it and return True; False for any other."""
        cdef int64_t backoff
        try:
            code = DEFAULT_DECODE_LIMITS.unpack(body)[0]
        except Exception:
            return False                  # error_from_body will say what is wrong
        if code == ERR_IN_PROGRESS:
            backoff = IN_PROGRESS_FIRST_NS << min(call.in_progress, 6)
            call.in_progress += 1
            if backoff > IN_PROGRESS_MAX_NS:
                backoff = IN_PROGRESS_MAX_NS
            call.call_id = 0
            self.seq += 1
            heapq.heappush(self.retry_heap, (now + backoff, self.seq, call))
            return True
        if code == ERR_LEASE_EXPIRED:
            if call.lease == self.once_lease:
                self.once_lease = 0       # every later call needs the new one
            if call.sends == 1:
                # Its only copy was refused unrun: it may go again under a new lease.
                call.lease = 0
                call.sends = 0
                self._route(call, now)
            else:
                self._finish(call, None, ConnectionLost(
                    "the call's lease expired while it was being retried: it may or may not "
                    "have run"))
            return True
        return False

    cdef int _drain_ready(self, object ready) except -1:
        """Send the queued calls that a credit let go, in order."""
        cdef Call call
        for call in ready:
            if call.state == CALL_QUEUED:
                self._send(call)
        return 0

    cdef int _finish(self, Call call, object value, object error, bint tell=True) except -1:
        """Give ``call`` its one outcome. ``tell``: hand it back through take_ended() if it
        is watched (not when the caller learns of it from the return value)."""
        call.state = CALL_DONE
        call.value = value
        call.error = error
        if call.seq:
            self._once_ended(call.seq)
        if error is None:
            self.ok += 1
        else:
            self.failed += 1
            if isinstance(error, DeadlineExceeded):
                self.timeouts += 1
        if tell and call.watched:
            self.ended.append(call)
        return 0

    def cancel(self, Call call):
        """The owner gave up on ``call``: forget it, tell the server if it was sent (a
        CANCEL frame; the server's late reply is then dropped here). False if it had
        already ended."""
        if call.state >= CALL_DONE:
            return False
        if call.state == CALL_SENT:
            if self.calls.pop(call.call_id, None) is not None and self.state == CONN_READY:
                self.out.put_frame(KIND_CANCEL, 0, 0, call.call_id, self.session, 0, 0,
                                   NULL, 0, NULL, 0)
        elif call.state == CALL_QUEUED and self.credits is not None:
            self.credits.cancel(call)
        call.state = CALL_CANCELLED
        self.cancelled += 1
        if call.seq:
            self._once_ended(call.seq)
        return True

    cdef int _number(self, Call call, int64_t now) except -1:
        """Give an exactly-once call its number and send it, or have it wait for one
        (FIFO) while ``once_window`` numbered calls are pending from the oldest."""
        cdef uint64_t seq = 0 if self.window_wait else self.numbers.take()
        if seq == 0:
            call.state = CALL_SENT            # pending, unnumbered, in ``window_wait``
            call.call_id = 0
            self.window_wait.append(call)
            return 0
        call.seq = seq
        return self._route(call, now)

    cdef int _once_ended(self, uint64_t seq) except -1:
        """Exactly-once call ``seq`` ended: the ack moves past every call that has, and
        calls waiting for the window get numbers."""
        cdef Call call
        cdef uint64_t next_seq
        if self.numbers.end(seq):
            wait = self.window_wait
            while wait:
                call = wait[0]
                if call.state != CALL_SENT or call.seq != 0:
                    wait.popleft()            # it ended while it waited
                    continue
                next_seq = self.numbers.take()
                if next_seq == 0:
                    break
                wait.popleft()
                call.seq = next_seq
                self._route(call, self.last_now)
        return 0

    # -- replies ------------------------------------------------------------------------

    def receive(self, list frames, int64_t now):
        """Take the frames read from the connection; returns the watched calls that ended.
        A frame a server must not send breaks the connection (state BROKEN, :attr:`error`
        set, every call ended): the driver then closes the channel."""
        cdef Frame f
        self.last_now = now
        for f in frames:
            if self.state == CONN_BROKEN:
                break
            self._on_frame(f, now)
        return self.take_ended()

    def receive_frame(self, Frame f, int64_t now):
        """:meth:`receive` for one frame (a driver that routes frames to the cores of many
        sessions by their session field)."""
        self.last_now = now
        if self.state != CONN_BROKEN:
            self._on_frame(f, now)
        return self.take_ended()

    cdef int _on_frame(self, Frame f, int64_t now) except -1:
        cdef int kind = f.kind
        if kind == KIND_ERROR and self.state == CONN_HANDSHAKE:
            # The server refused the connection instead of answering the PING (a server
            # that requires authentication): the connect fails with the reason it gave.
            self._break(error_from_body(f.body))
        elif kind == KIND_RESPONSE or kind == KIND_ERROR:
            self._on_reply(f, now)
        elif kind == KIND_CREDIT:
            if self.credits is not None:
                try:
                    ready = self.credits.on_credit(f.credit, now)
                except ValueError as exc:
                    self._break(ProtocolError(f"bad credit frame: {exc}"))
                    return 0
                self._drain_ready(ready)
        elif kind == KIND_PONG:
            if self.state == CONN_HANDSHAKE:
                if f.flags & FLAG_HAS_CREDIT:
                    self.credits = ClientCredits(self.credit_queue, self.credit_wait_ns)
                    try:
                        self.credits.on_credit(f.credit, now)
                    except ValueError as exc:    # a window no server grants (over 2**31)
                        self._break(ProtocolError(f"bad credit in the pong: {exc}"))
                        return 0
                self.state = CONN_READY
                if self.exactly_once:
                    if self.once_lease:
                        self._resend_parked(now)
                    else:
                        self._request_lease()
        else:
            self._break(ProtocolError(f"a server sent a frame of kind {kind}, which only "
                                      f"clients send"))
        return 0

    cdef int _on_reply(self, object frame, int64_t now) except -1:
        cdef Frame f = frame
        cdef Call call = self.calls.pop(f.call_id, None)
        ready = _NOTHING
        # A reply in the wrong codec breaks the connection before its credit is counted: a
        # credit counted first could let queued calls go (out of the credit queue) that the
        # break would then never send nor end. (The lease is asked for in msgpack.)
        if call is not None and f.codec != (self.codec if f.kind == KIND_RESPONSE
                                            and call is not self.lease_call
                                            else CODEC_MSGPACK):
            if f.kind == KIND_RESPONSE:
                self._break_with(call, ProtocolError(
                    f"the server answered in codec {f.codec}; this client uses codec "
                    f"{self.codec} and decodes nothing else"))
            else:
                self._break_with(call, ProtocolError(f"an error frame in codec {f.codec}: "
                                                     f"error bodies are msgpack"))
            return 0
        if self.credits is not None:
            # Every reply returns the credit its request spent, also a late one.
            try:
                ready = self.credits.on_response(
                    f.credit if f.flags & FLAG_HAS_CREDIT else None, now)
            except ValueError:
                pass          # a reply the credit machine never counted (sent before credits)
        if call is None:
            self.stray_replies += 1      # to a call that timed out or was cancelled
        elif call is self.lease_call:
            self._on_lease_reply(f, now)
        elif f.kind == KIND_ERROR and call.seq and self._on_once_error(call, f.body, now):
            pass                         # it goes again (now, later, or under a new lease)
        elif f.kind == KIND_RESPONSE:
            if self.codec == CODEC_RAW:
                self._finish(call, f.body, None)
            else:
                try:
                    value = (self.decode_limits.unpack(f.body) if self.codec == CODEC_MSGPACK
                             else pickle.loads(f.body))
                except Exception as exc:     # bytes from the network: any failure
                    self._finish(call, None, ProtocolError(f"undecodable response body: {exc}"))
                else:
                    self._finish(call, value, None)
        else:
            self._finish(call, None, error_from_body(f.body))
        if ready:
            self._drain_ready(ready)
        return 0

    cdef _break(self, error):
        self.error = error
        self._fail(error)

    cdef _break_with(self, Call call, error):
        """Break the connection over ``call``'s reply (already out of the table)."""
        self._finish(call, None, error)
        self._break(error)

    # -- time ---------------------------------------------------------------------------

    def next_deadline(self):
        """The monotonic time (ns) of the next expiry to act on, or 0 if none is set."""
        cdef Call head
        cdef int64_t t = 0, c
        dq = self.by_deadline
        while dq:
            head = dq[0]
            if head.state < CALL_DONE:
                t = head.deadline_ns
                break
            dq.popleft()
        heap = self.heap
        while heap:
            head = heap[0][2]
            if head.state < CALL_DONE:
                if t == 0 or head.deadline_ns < t:
                    t = head.deadline_ns
                break
            heapq.heappop(heap)
        if self.credits is not None:
            nd = self.credits.next_deadline_ns()
            if nd is not None:
                c = nd
                if t == 0 or c < t:
                    t = c
        retry = self.retry_heap
        while retry:
            if (<Call>retry[0][2]).state < CALL_DONE:
                c = retry[0][0]
                if t == 0 or c < t:
                    t = c
                break
            heapq.heappop(retry)
        return t

    def expire(self, int64_t now):
        """End what is due by ``now``: calls past their deadline (DeadlineExceeded, and a
        CANCEL to the server) and calls that waited too long for credit
        (``Overloaded(side="client")``), and sends again the exactly-once calls whose wait
        after "in progress" is over. Returns the watched calls that ended."""
        cdef Call call
        self.last_now = now
        retry = self.retry_heap
        while retry and retry[0][0] <= now:
            call = heapq.heappop(retry)[2]
            if call.state == CALL_SENT and call.call_id == 0:
                self._route(call, now)
        if self.credits is not None and self.credits.demand():
            for call in self.credits.expire(now):
                if call.state == CALL_QUEUED:
                    self._finish(call, None, Overloaded("no credit arrived in time",
                                                        side="client"))
        dq = self.by_deadline
        while dq:
            call = dq[0]
            if call.state < CALL_DONE and call.deadline_ns > now:
                break
            dq.popleft()
            if call.state < CALL_DONE:
                self._expire(call)
        heap = self.heap
        while heap:
            call = heap[0][2]
            if call.state < CALL_DONE and call.deadline_ns > now:
                break
            heapq.heappop(heap)
            if call.state < CALL_DONE:
                self._expire(call)
        return self.take_ended()

    cdef _expire(self, Call call):
        self.cancel(call)
        self.cancelled -= 1          # counted as a timeout, not as a cancel
        self._finish(call, None, DeadlineExceeded("no reply within the deadline"))

    cdef _compact(self):
        cdef Call c
        cdef Py_ssize_t pending = len(self.calls)
        if self.credits is not None:
            pending += self.credits.demand()
        cdef Py_ssize_t keep = 4 * (pending + 16)
        if len(self.by_deadline) > keep:
            self.by_deadline = deque(c for c in self.by_deadline if c.state < CALL_DONE)
        if len(self.heap) > keep:
            self.heap = [e for e in self.heap if (<Call>e[2]).state < CALL_DONE]
            heapq.heapify(self.heap)

    # -- for drivers --------------------------------------------------------------------

    def take_ended(self):
        """The watched calls that ended since the last call (and forget them)."""
        cdef list ended = self.ended
        if not ended:
            return _NOTHING
        self.ended = []
        return ended

    @property
    def in_flight(self):
        """Calls sent and not answered, plus calls waiting for credit."""
        return (len(self.calls) + (self.credits.demand() if self.credits is not None else 0)
                + len(self.parked) + len(self.retry_heap) + len(self.window_wait))

    def credit_statistics(self):
        return self.credits.statistics() if self.credits is not None else None


cdef uint32_t _wire_us(double seconds):
    cdef double us = seconds * 1e6
    if us < 1:
        return 1
    if us > MAX_DEADLINE_US:
        return MAX_DEADLINE_US
    return <uint32_t>us
