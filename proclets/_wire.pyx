# cython: language_level=3
"""The bytes of a proclet call (``CALL``) and of its reply: written and read here only, by
the ref's paths (proclets.ref, proclets._hotref) and the runtime's (proclets._hot).

A call is a raw-codec microrpc request, so that neither side runs msgpack over the call's
own fields: on loopback, msgpack for the seven fields of a call cost ~0.6 us of a ~13 us
round trip, more than the rest of the exactly-once bookkeeping (issue #11's target is a
ref call within 1.3x a plain microrpc call). Only the method's arguments and its result
are msgpack, decoded within microrpc's DecodeLimits. Integers are little-endian.

Request::

    0   u64 pid   u64 lease   u64 seq   u64 ack      the proclet, the caller's RIFL id
    32  u8 flags (bit 0: keyword arguments follow)
    33  u8 n, then n bytes: the method name (UTF-8)
    34+n  msgpack: the positional arguments (an array), or [array, map] with the flag

Reply: ``u8 code`` (proclets._protocol: OK, ERROR, ...), then the msgpack of its value,
or nothing when the value is None.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from microrpc._decode cimport DecodeLimits
from microrpc._pack cimport pack
from microrpc.errors import ProtocolError

from microrpc._decode import DEFAULT_DECODE_LIMITS

__all__ = ["decode_call", "decode_reply", "encode_call", "encode_reply", "HEADER"]

cdef enum:
    _HEADER = 34          # bytes before the method name
    FLAG_KWARGS = 1
HEADER = _HEADER

cdef DecodeLimits _limits = DEFAULT_DECODE_LIMITS

cdef inline void _put64(char* p, uint64_t v) noexcept:
    cdef int i
    for i in range(8):
        p[i] = <char>((v >> (8 * i)) & 0xff)


cdef inline uint64_t _get64(const uint8_t* p) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v |= (<uint64_t>p[i]) << (8 * i)
    return v


cpdef bytes encode_call(object pid, object method, object args, object kwargs, object lease,
                        object seq, object ack):
    """A CALL request (see the module docstring). TypeError if an argument cannot be sent
    (msgpack) or the method name is not a str of 1 to 255 bytes."""
    if type(method) is not str:
        raise TypeError(f"a method name is a str, not {type(method).__name__}")
    cdef bytes name = PyUnicode_AsUTF8String(method)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    if n == 0 or n > 255:
        raise TypeError(f"a method name has 1 to 255 bytes, not {n}")
    try:
        payload = pack([args, kwargs] if kwargs else args)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"an argument cannot be sent (msgpack): {exc}") from None
    cdef Py_ssize_t m = PyBytes_GET_SIZE(payload)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER + n + m)
    cdef char* p = PyBytes_AS_STRING(out)
    _put64(p, pid)
    _put64(p + 8, lease)
    _put64(p + 16, seq)
    _put64(p + 24, ack)
    p[32] = <char>(FLAG_KWARGS if kwargs else 0)
    p[33] = <char>n
    memcpy(p + _HEADER, PyBytes_AS_STRING(name), n)
    memcpy(p + _HEADER + n, PyBytes_AS_STRING(payload), m)
    return out


cpdef tuple decode_call(bytes body):
    """``(pid, method, args, kwargs, lease, seq, ack)`` from a CALL request; ProtocolError
    (microrpc's) if it is malformed, or its arguments are over microrpc's decode limits."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(body)
    if size < _HEADER:
        raise ProtocolError(f"a proclet call of {size} bytes (its header has {_HEADER})")
    cdef Py_ssize_t n = p[33]
    if n == 0 or size < _HEADER + n + 1:
        raise ProtocolError("a proclet call cut short (method name or arguments missing)")
    try:
        method = PyUnicode_DecodeUTF8(<const char*>p + _HEADER, n, NULL)
    except UnicodeDecodeError:
        raise ProtocolError("a proclet call's method name is not UTF-8") from None
    decoded = _limits.unpack(body[_HEADER + n:])
    kwargs = None
    if p[32] & FLAG_KWARGS:
        if type(decoded) is not list or len(<list>decoded) != 2 \
                or type((<list>decoded)[1]) is not dict:
            raise ProtocolError("a proclet call's keyword arguments are not [args, map]")
        decoded, kwargs = (<list>decoded)[0], (<list>decoded)[1]
    if type(decoded) is not list:
        raise ProtocolError("a proclet call's arguments are not an array")
    return (_get64(p), method, decoded, kwargs, _get64(p + 8), _get64(p + 16),
            _get64(p + 24))


cpdef bytes encode_reply(int code, object value):
    """A CALL reply. TypeError if ``value`` cannot be sent (msgpack)."""
    cdef bytes out
    cdef char* q
    if value is None:
        out = PyBytes_FromStringAndSize(NULL, 1)
        PyBytes_AS_STRING(out)[0] = <char>code
        return out
    try:
        payload = pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"the result cannot be sent (msgpack): {exc}") from None
    cdef Py_ssize_t m = PyBytes_GET_SIZE(payload)
    out = PyBytes_FromStringAndSize(NULL, 1 + m)
    q = PyBytes_AS_STRING(out)
    q[0] = <char>code
    memcpy(q + 1, PyBytes_AS_STRING(payload), m)
    return out


cpdef tuple decode_reply(object body):
    """``(code, value)`` from a CALL reply; ProtocolError if it is malformed."""
    if type(body) is not bytes or PyBytes_GET_SIZE(body) == 0:
        raise ProtocolError(f"a proclet call's reply is not a code and a value: {body!r:.80}")
    cdef int code = (<const uint8_t*>PyBytes_AS_STRING(body))[0]
    if PyBytes_GET_SIZE(body) == 1:
        return (code, None)
    return (code, _limits.unpack(body[1:]))
