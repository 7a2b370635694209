# The C-level contract of the exactly-once server side (see _once.pyx): the server core
# cimports it to check and record a call without a Python method call.
cimport cython
from libc.stdint cimport uint64_t

cdef enum:
    # check_code's answers, in the order of microrpc.exactly_once.Check
    CHECK_NEW = 0
    CHECK_DONE = 1
    CHECK_RUNNING = 2
    CHECK_STALE = 3
    CHECK_EXPIRED = 4
    CHECK_WINDOW_FULL = 5


@cython.final
cdef class CallNumbers:
    cdef readonly Py_ssize_t window
    cdef uint64_t next_seq            # the next number to give
    cdef uint64_t first_open          # the lowest number not ended
    cdef set done                     # numbers above first_open that ended

    cdef uint64_t take(self) except? 0
    cdef bint end(self, uint64_t seq) except -1


@cython.final
cdef class CachedLeases:
    cdef dict until                   # lease -> valid until (the clock's seconds)
    cdef object clock
    cdef object ask                   # lease -> bool, for a lease not valid in the cache

    cpdef bint valid(self, lease) except -1


@cython.final
cdef class LocalLeases:
    cdef public double ttl
    cdef object _clock
    cdef dict _deadline
    cdef object _ids

    cpdef bint renew(self, lease) except -1
    cpdef bint valid(self, lease) except -1


cdef class _Client:
    cdef public uint64_t acked
    cdef public dict records
    cdef double renew_at               # a LocalLeases lease: renew it again from then on


@cython.final
cdef class CompletionTable:
    cdef object _lease_valid
    cdef LocalLeases _leases          # the same authority when it is a LocalLeases, else None
    cdef CachedLeases _cached         # ... when it is a CachedLeases, else None
    cdef readonly Py_ssize_t window
    cdef dict _clients
    cdef uint64_t _last_lease         # the lease of the last call checked, and its records:
    cdef _Client _last                # most calls come from the client of the call before
    cdef readonly object saved        # the saved reply found by the last check (DONE)
    cdef public uint64_t duplicates   # retries answered from a record
    cdef public uint64_t refused      # stale, expired or over the window

    cdef int check_code(self, uint64_t lease, uint64_t seq, uint64_t ack) except -1
    cpdef finish(self, lease, seq, reply)
    cpdef forget(self, lease, seq)
    cdef int _ack(self, _Client client, uint64_t ack) except -1
    cdef _Client _client(self, uint64_t lease)
    cdef bint _valid(self, _Client client, uint64_t lease) except -1
