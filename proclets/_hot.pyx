# cython: language_level=3
"""A runtime's per-call path in C-level code: the entry of a proclet, the CALL handler's
usual case (an inline turn) and the turn itself with the completion table's verdict.

proclets.runtime owns everything else (spawn, migration, queued and blocking turns, lease
checks); the rules here are the ones it documents, written once, here. Every call through
a ref goes through this path, which as Python methods cost ~2-2.6 us: a seventh of a whole
call on loopback (issue #11's target is a ref call within 1.3x a plain microrpc call).
"""
from collections import deque

from microrpc._once cimport (
    CHECK_DONE, CHECK_EXPIRED, CHECK_NEW, CHECK_RUNNING, CHECK_WINDOW_FULL, CompletionTable,
)

from proclets import _protocol as P
from proclets.lifecycle import State
from proclets.proclet import method_table

from proclets._turn cimport enter, leave
from proclets._turn import INLINE
from proclets._wire cimport decode_call, encode_reply
from proclets.ref import ProcletRef, from_wire, to_wire

cdef object _PRESENT = State.PRESENT
cdef object _ABSENT = State.ABSENT
cdef int _OK = P.OK
cdef int _ERROR = P.ERROR
# The replies that carry no value, encoded once.
cdef bytes _RETRY = encode_reply(P.RETRY, None)
cdef bytes _EXPIRED = encode_reply(P.EXPIRED, None)
cdef bytes _STALE = encode_reply(P.STALE, None)
cdef bytes _NOT_HERE = encode_reply(P.WRONG_TARGET, None)


class Unavailable(Exception):
    """The controller could not be asked (restarting): answer RETRY, run nothing."""


cdef class Entry:
    """One proclet on a runtime: its lifecycle state, object, class (and the class's table
    of remote methods, proclet.method_table), completion table and epoch; ``running``
    while a turn runs (or is handed to a worker), the calls queued behind it, the event a
    migration waits on for the turn to end, and the tombstone."""

    cdef public object pid, state, obj, path, epoch, queue, drained, moved_to
    cdef public CompletionTable table
    cdef public bint running
    cdef object _cls
    cdef readonly dict methods

    def __init__(self, pid):
        self.pid = pid
        self.state = _ABSENT
        self.obj = self.cls = self.path = None
        self.table = None
        self.epoch = 0
        self.running = False
        self.queue = deque()
        self.drained = None
        self.moved_to = None

    @property
    def cls(self):
        return self._cls

    @cls.setter
    def cls(self, cls):
        self._cls = cls
        self.methods = method_table(cls) if cls is not None else None


cpdef bytes turn(Entry e, object fn, object args, object kwargs, object lease, object seq,
                 object ack):
    """One turn: the completion table's verdict, then (if new) the call, its encoded
    reply saved in the same step (runtime.Runtime documents the codes)."""
    cdef CompletionTable table
    cdef int code
    cdef bytes out
    if e.state is not _PRESENT:
        return _RETRY                    # it waited in the queue and the proclet is moving
    table = e.table
    try:
        code = table.check_code(lease, seq, ack)
    except Unavailable:
        return _RETRY
    except (ValueError, OverflowError, TypeError):
        return encode_reply(_ERROR, ["ValueError", f"malformed call id (lease {lease!r}, "
                                                   f"seq {seq!r}, ack {ack!r})"])
    if code == CHECK_NEW:
        try:
            value = fn(e.obj, *args, **kwargs) if kwargs else fn(e.obj, *args)
            try:
                out = encode_reply(_OK, to_wire(value) if type(value) is ProcletRef
                                   else value)
            except TypeError as exc:     # it ran: its outcome is this error, saved too
                out = encode_reply(_ERROR, ["TypeError", str(exc)])
        except Exception as exc:
            out = encode_reply(_ERROR, [type(exc).__name__, str(exc)])
        table.finish(lease, seq, out)
        return out
    if code == CHECK_DONE:
        return table.saved
    if code == CHECK_RUNNING or code == CHECK_WINDOW_FULL:
        return _RETRY
    if code == CHECK_EXPIRED:
        return _EXPIRED
    return _STALE


cdef class CallHandler:
    """The runtime's CALL handler (registered with ``context=True``; the request is the
    bytes of proclets._wire, and so is the reply it returns). The usual case, a
    proclet present and idle and a method that is not blocking, runs its turn here, in
    line and without a lock: only this thread (the server's I/O thread, the only one that
    admits calls) sets ``running``; a worker clears it only while it is set; and the order
    of the steps pairs with Runtime.migrate_out's (running is set before the turn reads
    the state, and cleared before ``drained`` is read; migrate_out sets the state, then
    ``drained``, then reads ``running``), so a drain never misses the end of a turn. Every
    other case goes to the runtime's Python methods."""

    cdef dict entries
    cdef object serving, method_of, refusal, queued

    def __init__(self, dict entries, serving, method_of, refusal, queued):
        self.entries = entries            # the runtime's own dict: pid -> Entry
        self.serving = serving            # the states the lifecycle table runs a call in
        self.method_of = method_of
        self.refusal = refusal            # (state, entry) -> the reply to a refused call
        self.queued = queued              # (ctx, entry, fn, blocking, args, kwargs, lease,
                                          #  seq, ack): a busy proclet, a blocking method

    def __call__(self, ctx, bytes body):
        cdef Entry e
        pid, method, args, kwargs, lease, seq, ack = decode_call(body)
        found = self.entries.get(pid)
        if found is None:
            return _NOT_HERE
        e = <Entry>found
        state = e.state
        if state is not _PRESENT and state not in self.serving:
            return self.refusal(state, e)
        # The class's table first (a C-level lookup; the name is a str, _wire decoded
        # it); method_of fills it, and refuses what is not a remote method.
        found = e.methods.get(method)
        if found is None:
            found = self.method_of(e.cls, method)
            if found is None:
                return encode_reply(_ERROR, [
                    "AttributeError", f"{e.cls.__name__} has no public method {method!r}"])
        fn, blocking = <tuple>found
        for a in <list>args:
            if type(a) is dict:
                args = from_wire(args)         # a ref passed as an argument
                break
        if e.running or blocking:
            return self.queued(ctx, e, fn, blocking, args, kwargs, lease, seq, ack)
        e.running = True
        return inline_turn(e, fn, args, kwargs, lease, seq, ack)


cpdef bytes inline_turn(Entry e, object fn, object args, object kwargs, object lease,
                         object seq, object ack):
    """A turn on the I/O thread, ``e.running`` already set by the caller: marked inline
    (a ref used in it raises: it would block the I/O thread), then ``running`` cleared
    and a waiting drain told, in the order CallHandler explains (no lock needed)."""
    enter(INLINE)
    try:
        return turn(e, fn, args, kwargs, lease, seq, ack)
    finally:
        leave()
        e.running = False
        drained = e.drained
        if drained is not None:
            drained.set()
