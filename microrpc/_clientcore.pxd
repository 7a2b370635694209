# The client protocol core's C-level contract (see _clientcore.pyx). Drivers written in
# Cython cimport it to read a call's state without a Python attribute lookup.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from microrpc._core cimport Frame, OutBuffer
from microrpc._decode cimport DecodeLimits
from microrpc._once cimport CallNumbers

cdef enum:
    # The life of one call. QUEUED and SENT are pending; DONE and CANCELLED are final, and a
    # call reaches exactly one of them exactly once.
    CALL_NEW = 0         # built, arguments encoded, not submitted
    CALL_QUEUED = 1      # waiting for a Breakwater credit in the client's local queue
    CALL_SENT = 2        # its REQUEST is in the output buffer or on the wire
    CALL_DONE = 3        # has its outcome: ``value`` or ``error``
    CALL_CANCELLED = 4   # its owner cancelled it before an outcome arrived

    # The life of one connection as the core sees it.
    CONN_IDLE = 0        # no connection (before the first, or after a failure)
    CONN_HANDSHAKE = 1   # PING sent, waiting for the PONG
    CONN_READY = 2       # calls may be sent
    CONN_BROKEN = 3      # the connection failed; every call on it has ended


cdef class Call:
    cdef readonly int state
    cdef readonly uint64_t call_id
    cdef readonly object value         # the result, once DONE without error
    cdef readonly object error         # the RpcError, once DONE with one
    cdef bytes name
    cdef bytes body
    cdef int flags                     # the REQUEST's flags: KWARGS when it has keywords
    cdef int64_t deadline_ns           # monotonic; 0 = none
    cdef uint32_t deadline_us          # sent on the wire (relative)
    cdef bint by_default               # its deadline is now + the client's default timeout
    # Exactly-once calls (microrpc.exactly_once): its number (0: not such a call), the lease
    # its copies were sent under (0: none sent yet, or every copy was refused unrun), and
    # how many copies went out.
    cdef readonly uint64_t seq
    cdef uint64_t lease
    cdef int sends
    cdef int in_progress               # "in progress" answers so far (its retry backoff)
    # Slots for the driver: the core only reads ``watched`` (tell the driver when this call
    # ends) and never looks at the others.
    cdef public bint watched
    cdef public object owner
    cdef public object callbacks
    cdef public object waiters


cdef class ClientCore:
    cdef readonly int codec
    cdef readonly uint32_t session
    cdef readonly Py_ssize_t max_message_size
    cdef readonly int state
    cdef readonly OutBuffer out
    cdef readonly object credits       # breakwater.ClientCredits, or None: no credits
    cdef readonly object error         # what broke the connection (CONN_BROKEN)
    cdef dict calls                    # call id -> Call, for calls SENT
    cdef uint32_t next_id              # low half of the next call id
    cdef readonly int credit_queue
    cdef readonly int64_t credit_wait_ns
    cdef int64_t default_timeout_ns    # 0: none
    cdef uint32_t default_timeout_us
    cdef object by_deadline            # deque of Calls with the default timeout, in order
    cdef list heap                     # (deadline_ns, seq, Call) for other timeouts
    cdef uint64_t seq
    cdef dict names                    # method str -> wire name
    cdef object packer
    cdef readonly DecodeLimits decode_limits   # on every msgpack reply body
    cdef list ended                    # watched calls that ended since take_ended()
    cdef readonly uint64_t started, ok, failed, timeouts, cancelled, stray_replies
    cdef readonly uint64_t handshakes
    # Exactly-once calls: the lease (0 while none is held), the numbering and its ack, the
    # calls waiting for a connection or a lease (``parked``) or to ask again after "in
    # progress" (``retry_heap``: (time ns, n, Call)), and the lease request in flight.
    cdef readonly bint exactly_once
    cdef readonly uint64_t once_lease
    cdef readonly CallNumbers numbers  # the calls' numbers and the ack (microrpc._once)
    cdef list parked
    cdef object window_wait            # deque of calls not numbered yet: the window is full
    cdef int64_t last_now              # the latest time a driver passed in (ns)
    cdef list retry_heap
    cdef Call lease_call
    cdef readonly uint64_t resends, lease_grants

    cdef int _finish(self, Call call, object value, object error, bint tell=*) except -1
    cdef int _send(self, Call call) except -1
    cdef int _on_reply(self, object frame, int64_t now) except -1
    cdef int _on_frame(self, Frame f, int64_t now) except -1
    cdef int _set_deadline(self, Call call, object timeout, int64_t now) except -1
    cdef int _drain_ready(self, object ready) except -1
    cdef _fail(self, error, bint retry=*)
    cdef int _route(self, Call call, int64_t now) except -1
    cdef int _park(self, Call call) except -1
    cdef int _stale_lease(self, Call call) except -1
    cdef int _resend_parked(self, int64_t now) except -1
    cdef int _once_ended(self, uint64_t seq) except -1
    cdef int _number(self, Call call, int64_t now) except -1
    cdef int _request_lease(self) except -1
    cdef int _on_lease_reply(self, Frame f, int64_t now) except -1
    cdef bint _on_once_error(self, Call call, bytes body, int64_t now) except -1
    cdef _break(self, error)
    cdef _break_with(self, Call call, error)
    cdef _expire(self, Call call)
    cdef _compact(self)
