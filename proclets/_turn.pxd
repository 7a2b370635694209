# Which proclet turn runs on the current thread (see _turn.pyx): cimported by the per-call
# paths of both sides, so that a ref call reads it without a Python call.
cdef object here()
cdef int enter(object value) except -1
cdef int leave() except -1
