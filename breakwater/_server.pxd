# The compiled Breakwater policy's C-level contract. microrpc's server core cimports it so
# that its per-request calls (on_request, on_complete, on_reject, open_session, on_tick) are
# C calls when the policy is a Breakwater, not Python method lookups. See _server.pyx.
cimport cython
from libc.stdint cimport int64_t


@cython.final
cdef class _Session:
    # readonly: the tests check the invariants on the records
    cdef readonly object sid
    cdef readonly int state  # an ST_* code
    cdef readonly int64_t win  # credits held, in-flight requests included (what responses carry)
    cdef readonly int64_t pending  # admitted requests not yet completed
    cdef readonly int64_t demand  # requests queued at the client, from its latest request
    cdef readonly int64_t rejects  # rejects decided by on_request, waiting for on_reject
    cdef readonly bint woken  # got a speculative credit; its next window is at least oc


cdef class Breakwater:
    # The parameters, fixed at construction.
    cdef readonly int64_t target_delay_ns
    cdef readonly int64_t aqm_threshold_ns
    cdef readonly int64_t tick_interval_ns
    cdef readonly double alpha
    cdef readonly double beta
    cdef readonly double md_floor
    cdef readonly int64_t min_pool
    cdef readonly int64_t max_window
    cdef readonly double aqm_min_utilization
    cdef readonly int64_t utilization_window_ns
    cdef readonly double slack_aqm_factor
    cdef readonly int64_t busy_run_requests

    # readonly (the attribute, not the dict): the tests check the invariants on them.
    cdef readonly dict _sessions  # sid -> _Session
    # Drained sessions in the order they drained (dict as an ordered set: O(1) unpark).
    cdef readonly dict _drained

    cdef int64_t _n_sessions  # ACTIVE + DRAINED (closed sessions no longer share the pool)
    cdef int64_t _pool
    cdef int64_t _issued
    cdef double _carry
    cdef int64_t _in_flight
    cdef int64_t _admitted
    cdef int64_t _rejected_aqm
    cdef int64_t _rejected_limit
    cdef int64_t _completed
    cdef int64_t _credit_messages
    cdef int64_t _credits_granted
    cdef int64_t _last_delay
    cdef int64_t _ticks
    cdef int64_t _pool_min
    cdef int64_t _pool_max
    # Utilization: busy = some admitted request not yet completed. _busy_ns collects busy
    # time since the last tick; each tick folds it into the _utilization EWMA.
    cdef int64_t _busy_since
    cdef int64_t _busy_run_done        # completions since the server last went idle -> busy
    cdef int64_t _busy_ns
    cdef int64_t _util_at
    cdef double _utilization

    cpdef int64_t open_session(self, object sid, object now_ns) except -1
    cpdef bint on_request(
        self, object sid, int64_t demand, int64_t now_ns, int64_t queue_delay_ns
    ) except -1
    cpdef int64_t on_reject(self, object sid, object now_ns) except -1
    cpdef int64_t on_complete(self, object sid, int64_t now_ns) except -1
    cpdef list on_tick(self, int64_t now_ns, int64_t queue_delay_ns)

    @cython.final
    cdef int _update_utilization(self, int64_t now_ns) except -1
    @cython.final
    cdef _Session _find(self, object sid)
    @cython.final
    cdef _Session _pop_oldest_drained(self)
    @cython.final
    cdef int64_t _update_window(self, _Session s, bint keep_alive) except -1
    @cython.final
    cdef int64_t _window_event(self, object sid, _Session s, int state, int event) except -1
    @cython.final
    cdef bint _request_event(
        self, object sid, _Session s, int state, int64_t demand, int64_t queue_delay_ns
    ) except -1
    @cython.final
    cdef _Session _act_register(self, object sid)
    @cython.final
    cdef int64_t _act_reopen(self, object sid, _Session s) except -1
    @cython.final
    cdef bint _act_unpark_and_admit(
        self, object sid, _Session s, int64_t demand, int64_t queue_delay_ns
    ) except -1
    @cython.final
    cdef bint _act_admit(
        self, object sid, _Session s, int64_t demand, int64_t queue_delay_ns
    ) except -1
    @cython.final
    cdef bint _act_refuse(self, object sid, _Session s) except -1
    @cython.final
    cdef int64_t _act_reject_window(self, object sid, _Session s) except -1
    @cython.final
    cdef int64_t _act_closed_window(self, object sid, _Session s) except -1
    @cython.final
    cdef int64_t _act_complete(self, object sid, _Session s) except -1
    @cython.final
    cdef int64_t _act_complete_closed(self, object sid, _Session s) except -1
    @cython.final
    cdef int64_t _act_grant(self, object sid, _Session s) except -1
    @cython.final
    cdef int64_t _act_close(self, object sid, _Session s) except -1
