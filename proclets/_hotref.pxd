# The C-level call of a ref's usual case (see _hotref.pyx).
cdef class FastCall:
    cdef object session, ids, locations, clients, faults, ref_type, lost, result
    cdef object call_name, default_timeout, monotonic

    cdef object call(self, pid, method, tuple args, dict kwargs, timeout)
