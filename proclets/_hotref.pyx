# cython: language_level=3
"""A ref call's usual case in C-level code: a process's own call (not a proclet calling
another), no injected faults, a lease held, the proclet's location known and its runtime
connected, and the answer OK. Anything else, or any other answer, goes to the session's
Python methods (proclets.ref._Session), with the call's number if it already has one, so
the rules stay written once, there.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

from microrpc._once cimport CallNumbers
from microrpc.errors import ConnectionLost

from proclets import _protocol as P
from proclets._turn cimport here
from proclets._wire cimport decode_reply, encode_call

cdef int _OK = P.OK


cdef class MethodCall:
    """The base of a ref's method (proclets.ref._Method): ``ref.name(*args, timeout=None,
    **kwargs)`` goes to its session's FastCall without a Python frame on the way. The
    session is the ref's (bound on first use, as the ref binds it: for good)."""

    cdef readonly object _ref, _name
    cdef object pid
    cdef FastCall fast

    def __init__(self, ref, name):
        self._ref = ref
        self._name = name
        self.pid = ref.pid
        self.fast = None

    def __call__(self, *args, timeout=None, **kwargs):
        cdef FastCall fast = self.fast
        if fast is None:
            ref = self._ref
            fast = self.fast = (ref._session or ref._bind()).fast
        return fast.call(self.pid, self._name, args, kwargs, timeout)


cdef class FastCall:
    """A session's call (see the module doc), made by MethodCall through ``call``."""

    def __init__(self, session, ids, locations, clients, faults, ref_type, lost,
                 result, call_name, default_timeout, monotonic):
        self.session = session
        self.ids = ids                    # the process's _CallIds (lease and numbers)
        self.locations = locations        # the session's own dicts (never replaced)
        self.clients = clients
        self.faults = faults
        self.ref_type = ref_type          # ProcletRef: an argument that is one goes slow
        self.lost = lost                  # ref._LOST_CONNECTION
        self.result = result              # ref._result: a dict result may hold refs
        self.call_name = call_name
        self.default_timeout = default_timeout
        self.monotonic = monotonic

    cdef object call(self, pid, method, tuple args, dict kwargs, timeout):
        cdef CallNumbers numbers
        cdef uint64_t seq
        session = self.session
        ids = self.ids
        if here() is not None or self.faults.active or not ids.lease:
            return session.invoke(pid, method, args, kwargs, timeout)
        ref_type = self.ref_type
        for a in args:
            if type(a) is ref_type:
                return session.invoke(pid, method, args, kwargs, timeout)
        address = self.locations.get(pid)
        client = self.clients.get(address) if address is not None else None
        if client is None:
            return session.invoke(pid, method, args, kwargs, timeout)
        numbers = ids.numbers
        seq = numbers.take()
        if not seq:
            return session.invoke(pid, method, args, kwargs, timeout)
        lease = ids.lease
        deadline = self.monotonic() + (self.default_timeout if timeout is None else timeout)
        try:
            body = encode_call(pid, method, args, kwargs, lease, seq, numbers.ack)
            # The session's call clients default to DEFAULT_TIMEOUT: no keyword to pass.
            if timeout is None:
                reply = client.call(self.call_name, body)
            else:
                reply = client.call(self.call_name, body, timeout=timeout)
        except ConnectionLost:
            reply = self.lost
        except BaseException:
            numbers.end(seq)
            raise
        if type(reply) is bytes and PyBytes_GET_SIZE(reply) and \
                (<const unsigned char*>PyBytes_AS_STRING(reply))[0] == _OK:
            numbers.end(seq)
            value = decode_reply(reply)[1]
            return self.result(value) if type(value) is dict else value
        return session.numbered(pid, method, args, kwargs, ids, lease, seq, deadline, reply)
