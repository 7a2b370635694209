# The bounded msgpack decoder's C-level contract: the server and client cores cimport it and
# call DecodeLimits.unpack without a Python call. See _decode.pyx.
cimport cython
from libc.stdint cimport int64_t, uint8_t


# Final: unpack is a cpdef method, and a class that could be subclassed in Python would
# look for an override on every call (~40 ns per decode, measured).
@cython.final
cdef class DecodeLimits:
    cdef readonly int max_depth
    cdef readonly Py_ssize_t max_items
    cdef readonly Py_ssize_t max_array_len
    cdef readonly Py_ssize_t max_map_len
    cdef readonly Py_ssize_t max_str_len
    cdef readonly Py_ssize_t max_bin_len
    cdef readonly Py_ssize_t max_ext_len

    cpdef object unpack(self, bytes body)
    cdef int _walk(self, const uint8_t* p, Py_ssize_t n, Py_ssize_t* where,
                   int64_t* value) noexcept
    cdef int _refuse(self, int bad, Py_ssize_t where, int64_t value) except -1
