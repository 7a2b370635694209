# The server core's C-level contract: what a driver (the epoll loop in _native.pyx, a zmq
# ROUTER loop) cimports to feed frames in and take replies out without Python calls.
# See _dispatch.pyx for the rules a driver follows.
cimport cython
from libc.stdint cimport int64_t, uint32_t, uint64_t

from breakwater._server cimport Breakwater
from microrpc._core cimport Frame, OutBuffer
from microrpc._decode cimport DecodeLimits
from microrpc._once cimport CompletionTable


cdef class Clock:
    """The time source the core reads between handlers of one pass and on worker threads.
    Everything else gets its time passed in. Drivers subclass it in C; tests pass a callable."""
    cdef int64_t now(self) except? -1


@cython.final
cdef class Method:
    cdef readonly object function
    cdef readonly bint blocking    # runs on the worker pool
    cdef readonly bint context     # called with a CallContext first
    cdef readonly bint idempotent  # False: exactly-once calls of it keep completion records


cdef class Peer:
    """One client connection as the core sees it. A driver subclasses it to add its own
    handle (fd and parser; a zmq routing id) and registers it with ServerCore.add_peer."""
    cdef readonly uint64_t id      # 0 until registered; never reused by one core
    cdef readonly str label        # the driver's name for the peer (its address)
    cdef readonly OutBuffer out    # replies and credit frames, for the driver to send
    cdef readonly bint closed
    cdef bint dirty                # on the core's list of peers with new output
    cdef dict sessions             # wire session id -> policy session id
    # Requests read and admitted but not started. Up to the core's line_share of them wait
    # in the core's shared line (first come, first served with everyone's); the rest wait
    # here, in arrival order, and join the line one by one as the peer's requests in it
    # start. While `out` is over its limit (held) they all wait here.
    cdef object queue              # deque of Request: the ones not in the line
    cdef dict queued               # call id -> Request not started (CANCEL in O(1)); None
                                   # until the peer's first CANCEL: most never send one
    cdef readonly Py_ssize_t nqueued   # not started: in the line and in `queue`
    cdef Py_ssize_t nline          # of those, in the core's line
    cdef object inline             # deque of those, in line order (len == nline)
    cdef Py_ssize_t queued_bytes   # name + body bytes of the requests not started
    cdef bint held                 # `out` was over its limit: its requests wait for resume()
    cdef bint rejoining            # on the core's rejoin list
    cdef bint waiting              # over a queue bound: the driver stopped reading it
    cdef bint in_global_wait       # on ServerCore.global_waiting


@cython.final
cdef class Request:
    """One request from admission to its single reply."""
    cdef Peer peer
    cdef Frame frame
    cdef Method method
    cdef object sid                # policy session id; None without overload control
    cdef int64_t arrival_ns
    cdef int64_t deadline_ns       # 0: none
    cdef int64_t start_ns          # when an inline handler started it; 0 if none did
    cdef int kind                  # outcome: KIND_RESPONSE, KIND_ERROR, or a worker's OUT_*
    cdef bytes body                # reply body, set by whoever produced the outcome
    cdef bint cancelled            # the client cancelled it (or the server stopped)
    cdef bint running              # its handler is on the stack (defer() is allowed)
    cdef bint deferred             # the handler called ctx.defer()
    cdef bint answered             # a deferred reply or the handler's error claimed the outcome
    cdef bint done                 # the core gave its one reply, or ended it silently
    cdef object reply              # the DeferredReply, once defer() was called
    cdef bint once                 # an exactly-once call that started: keep its outcome
    cdef bint inline               # in the core's line (False: not, or pulled out of it)


@cython.final
cdef class ServerCore:
    cdef dict methods              # name bytes -> Method (the Server's dict, shared)
    cdef object executor
    cdef object wake               # callable, any thread: the driver should look at us
    cdef readonly Clock clock
    cdef readonly object policy
    cdef Breakwater bw             # policy, when it is a Breakwater: called in C
    cdef bint policy_credits
    cdef readonly int64_t tick_ns
    cdef readonly int64_t next_tick
    cdef object completions        # deque of Requests finished off this thread
    # The line: requests to start, first come first served, at most line_share of each peer
    # (a peer with more keeps the rest in Peer.queue: see the module docstring).
    cdef object line               # deque of Request
    cdef list rejoin               # peers over their share, to put their next in line
    cdef Py_ssize_t nline_live     # requests in `line` not pulled out (the line's length)
    cdef readonly Py_ssize_t line_share
    cdef Py_ssize_t nqueued        # requests read and not started, every peer
    cdef readonly Py_ssize_t queued_bytes   # their name + body bytes
    cdef Py_ssize_t nrunnable      # of those, the ones of peers not held
    cdef list global_waiting       # peers paused because nqueued reached max_queued
    cdef list dirty
    cdef dict inflight             # (peer id, call id) -> Request on a worker or deferred
    cdef dict peers                # peer id -> Peer, open ones
    cdef dict sid_peer             # policy sid -> (Peer, wire session)
    cdef uint64_t next_sid
    cdef uint64_t next_peer_id
    cdef int accept_codecs         # bit mask of accepted codec ids
    cdef readonly Py_ssize_t max_message_size
    cdef readonly Py_ssize_t out_limit               # max_output_per_connection
    cdef readonly Py_ssize_t max_queued
    cdef readonly Py_ssize_t max_queued_bytes
    cdef readonly Py_ssize_t max_connections
    cdef readonly Py_ssize_t max_queued_per_connection
    cdef readonly Py_ssize_t max_queued_bytes_per_connection
    cdef readonly Py_ssize_t max_sessions_per_connection
    cdef readonly DecodeLimits decode_limits
    cdef bint send_tracebacks
    cdef readonly CompletionTable once   # exactly-once records (microrpc._once), or None
    cdef readonly uint64_t once_duplicates   # retries answered with a saved outcome
    cdef object packer             # msgpack.Packer for this thread's replies
    cdef public int64_t loop_lag_ns         # the driver's measure of how far behind it reads
    cdef readonly int64_t per_request_ns    # EWMA of this thread's time per inline call
    cdef int64_t last_done_ns
    cdef readonly bint stopping
    cdef int64_t stop_deadline
    # statistics
    cdef readonly uint64_t calls, errors, protocol_errors, rejects, credit_frames
    cdef readonly uint64_t cancelled, deadline_skipped
    cdef readonly uint64_t paused_reads        # times a peer was paused at a queue bound
    cdef readonly uint64_t session_rejects     # requests refused: too many sessions
    cdef readonly uint64_t undecodable         # requests whose arguments were refused
    cdef readonly uint64_t connections_refused # new connections closed at max_connections
    cdef readonly Py_ssize_t queued_peak, queued_peak_per_connection
    cdef readonly Py_ssize_t output_peak_per_connection

    # -- the driver's interface
    cpdef bint add_peer(self, Peer p, str label) except -1
    cpdef bint feed(self, Peer p, Frame f, int64_t now) except -1
    cpdef protocol_error(self, Peer p)
    cpdef bint over_limit(self, Peer p) except -1
    cpdef bint has_work(self) noexcept
    cpdef int run(self, int64_t now, int64_t budget_ns) except -1
    cpdef int drain_completions(self, int64_t now) except -1
    cpdef int64_t tick(self, int64_t now) except -1
    cpdef resume(self, Peer p)
    cpdef list take_dirty(self)
    cpdef close_peer(self, Peer p, int64_t now)
    cpdef request_stop(self, int64_t now, int64_t grace_ns)
    cpdef bint stop_step(self, int64_t now) except -1
    cpdef int64_t queue_delay(self, int64_t now) except -1

    # -- inside
    cdef int _admit(self, Peer p, Frame f, int64_t now) except -1
    cdef int _enqueue(self, Peer p, Request r) except -1
    cdef int _taken(self, Peer p, Request r) except -1
    cdef int _line_fill(self, Peer p) except -1
    cdef int _rejoin(self) except -1
    cdef int _line_put(self, Peer p, Request r) except -1
    cdef int _trim(self) except -1
    cdef list _line_pull(self, Peer p)
    cdef int _hold(self, Peer p, Request r) except -1
    cdef int _wake_waiting(self, Peer p) except -1
    cdef bint _may_resume(self, Peer p) noexcept
    cdef bint _global_full(self) noexcept
    cdef bint _global_drained(self) noexcept
    cdef int _cancel(self, Peer p, uint64_t call_id) except -1
    cdef int _pong(self, Peer p, Frame f, int64_t now) except -1
    cdef object _session_id(self, Peer p, uint32_t session, int64_t now)
    cdef int _mark_dirty(self, Peer p) except -1
    cdef int _run_one(self, Request r, int64_t now) except -1
    cdef bytes _execute(self, Request r, object packer)
    cdef bint _check_once(self, Request r, int64_t now) except -1
    cdef int _once_outcome(self, Request r, int kind, bytes body) except -1
    cdef int _post(self, Request r) except -1
    cdef int _reply(self, Request r, int kind, bytes body, int64_t now) except -1
    cdef int _reply_error(self, Request r, int code, str type_name, str message,
                          int64_t now) except -1
    cdef int _reply_reject(self, Request r, int64_t now) except -1
    cdef int _finish_silently(self, Request r, int64_t now) except -1
    cdef int _count_done(self, Request r, int64_t now) except -1
    cdef int64_t _peer_delay(self, Peer p, int64_t now) except -1
    cdef int _credit_frames(self, list grants) except -1
    cdef int _policy_open(self, object sid, int64_t now) except -1
    cdef bint _policy_request(self, object sid, uint32_t demand, int64_t now,
                              int64_t delay) except -1
    cdef int64_t _policy_complete(self, object sid, int64_t now) except -1
    cdef int64_t _policy_reject(self, object sid, int64_t now) except -1
