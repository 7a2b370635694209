# cython: language_level=3
"""Bounded msgpack decoding: the one place where microrpc turns msgpack bytes from a peer
into Python objects (request arguments at the server, replies and error bodies at the
client).

Why a scan before ``msgpack.unpackb``: msgpack bounds the length of each container and
string (``max_array_len`` etc., by default the body's length), but not the total number of
objects, and each object costs 30-60 bytes of Python memory and some 0.1-1.5 us to build.
A 16 MiB body of 16.7M empty arrays took 17.5 s and 1.24 GB to decode (issue #10), and
any split into nested containers each under msgpack's per-container limits does the same.
So :meth:`DecodeLimits.unpack` first walks the bytes in C, without building anything, and
refuses the body as soon as it passes a limit: total objects, nesting depth, or the length
of one container, string, binary or extension. The walk touches each object header once
and skips string payloads, so a refused bomb costs at most ``max_items`` header reads
(measured: a 16 MiB bomb is refused in microseconds; see docs/wire.md, *Limits*).

msgpack's C unpacker has its own fixed depth limit (1024, an explicit stack, no
recursion); ``max_depth`` is a tighter one applied by the walk.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t

import msgpack

from microrpc.errors import ProtocolError

# The walk's stack is a fixed C array: max_depth cannot go past it. msgpack's own unpacker
# stops at 1024 levels, so nothing deeper could be decoded anyway.
DEF DEPTH_CAP = 1024

# Looked up once: a module attribute lookup per decode is measurable on the fast path.
cdef object _unpackb = msgpack.unpackb

DEFAULT_MAX_DEPTH = 64
# 2**18 objects: ~15-60 MB of Python objects and ~50-400 ms of decoding in the worst case
# (all empty containers) on the 2-core test machine, the most one call may hold the I/O
# thread for. Real argument lists are far smaller; raise it for bulk payloads.
DEFAULT_MAX_ITEMS = 262144
# Strings, binaries and extensions are one object each whatever their size: the frame size
# limit (max_message_size, 16 MiB by default) already bounds them.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


cdef inline uint32_t _be16(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


# What the walk found wrong (0: nothing); the message is built out of line.
cdef enum:
    BAD_TRUNCATED = 1
    BAD_DEPTH = 2
    BAD_ITEMS = 3
    BAD_ARRAY = 4
    BAD_MAP = 5
    BAD_STR = 6
    BAD_BIN = 7
    BAD_EXT = 8
    BAD_BYTE = 9
    BAD_EXTRA = 10

cdef enum:
    K_SCALAR = 0
    K_ARRAY = 1
    K_MAP = 2
    K_STR = 3
    K_BIN = 4
    K_EXT = 5


@cython.final
cdef class DecodeLimits:
    """Limits on msgpack bodies received from a peer (see the module docstring).

    ``max_depth``: nesting of arrays and maps (a flat argument list is depth 1; at most
    1024). ``max_items``: objects in one body, counting every container, key and value.
    ``max_array_len`` / ``max_map_len``: entries of one array / pairs of one map (default:
    ``max_items``). ``max_str_len`` / ``max_bin_len`` / ``max_ext_len``: bytes of one
    string / binary / extension value (default 16 MiB, the default frame size limit).
    A body over any of them raises :class:`microrpc.ProtocolError` before any object is
    built.
    """

    def __init__(self, *, int max_depth=DEFAULT_MAX_DEPTH,
                 Py_ssize_t max_items=DEFAULT_MAX_ITEMS, max_array_len=None,
                 max_map_len=None, Py_ssize_t max_str_len=DEFAULT_MAX_BYTES,
                 Py_ssize_t max_bin_len=DEFAULT_MAX_BYTES,
                 Py_ssize_t max_ext_len=DEFAULT_MAX_BYTES):
        if not 1 <= max_depth <= DEPTH_CAP:
            raise ValueError(f"max_depth must be in 1..{DEPTH_CAP}, got {max_depth}")
        array_len = max_items if max_array_len is None else max_array_len
        map_len = max_items if max_map_len is None else max_map_len
        for name, value in (("max_items", max_items), ("max_array_len", array_len),
                            ("max_map_len", map_len), ("max_str_len", max_str_len),
                            ("max_bin_len", max_bin_len), ("max_ext_len", max_ext_len)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.max_depth = max_depth
        self.max_items = max_items
        self.max_array_len = array_len
        self.max_map_len = map_len
        self.max_str_len = max_str_len
        self.max_bin_len = max_bin_len
        self.max_ext_len = max_ext_len

    def as_dict(self):
        """The limits as plain data (for statistics)."""
        return {"max_depth": self.max_depth, "max_items": self.max_items,
                "max_array_len": self.max_array_len, "max_map_len": self.max_map_len,
                "max_str_len": self.max_str_len, "max_bin_len": self.max_bin_len,
                "max_ext_len": self.max_ext_len}

    def __repr__(self):
        return (f"DecodeLimits(max_depth={self.max_depth}, max_items={self.max_items}, "
                f"max_array_len={self.max_array_len}, max_map_len={self.max_map_len}, "
                f"max_str_len={self.max_str_len}, max_bin_len={self.max_bin_len}, "
                f"max_ext_len={self.max_ext_len})")

    cpdef object unpack(self, bytes body):
        """``body`` decoded, or ProtocolError if it is malformed or over a limit."""
        cdef Py_ssize_t where = 0
        cdef int64_t value = 0
        cdef int bad = self._walk(<const uint8_t*>PyBytes_AS_STRING(body),
                                  PyBytes_GET_SIZE(body), &where, &value)
        if bad:
            self._refuse(bad, where, value)
        try:
            return _unpackb(body)
        except Exception as exc:          # e.g. a map key msgpack refuses (strict_map_key)
            raise ProtocolError(f"undecodable msgpack: {exc}") from None

    cdef int _walk(self, const uint8_t* p, Py_ssize_t n, Py_ssize_t* where,
                   int64_t* value) noexcept:
        """Check that ``p[:n]`` is one msgpack object within the limits. Returns 0 or a
        BAD_* code, with the offset where it was found and the offending number."""
        cdef int64_t left[DEPTH_CAP + 1]   # objects still to read at each open level
        cdef int depth = 0
        cdef Py_ssize_t pos = 0
        cdef int64_t items = 0, size, count
        cdef uint8_t b
        cdef int lb, extra, kind   # length bytes, bytes after them, KIND_*
        left[0] = 1
        while True:
            while left[depth] == 0:
                if depth == 0:
                    where[0] = pos
                    return BAD_EXTRA if pos != n else 0
                depth -= 1
            left[depth] -= 1
            items += 1
            where[0] = pos
            if items > self.max_items:
                return BAD_ITEMS
            if pos >= n:
                return BAD_TRUNCATED
            b = p[pos]
            kind = K_SCALAR
            lb = 0          # bytes of big-endian length after the type byte
            extra = 0       # header bytes after those (an extension's type)
            size = 0        # payload bytes after the header
            count = 0       # entries of a container
            if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3:
                pass                                     # fixint, nil, bool
            elif b <= 0x8f:
                kind = K_MAP
                count = b & 0x0f
            elif b <= 0x9f:
                kind = K_ARRAY
                count = b & 0x0f
            elif b <= 0xbf:
                kind = K_STR
                size = b & 0x1f
            elif b == 0xc1:
                value[0] = b
                return BAD_BYTE
            elif b <= 0xc6:
                kind = K_BIN
                lb = 1 << (b - 0xc4)                     # bin 8/16/32
            elif b <= 0xc9:
                kind = K_EXT
                lb = 1 << (b - 0xc7)                     # ext 8/16/32, then the type
                extra = 1
            elif b == 0xca:
                size = 4                                 # float 32
            elif b == 0xcb:
                size = 8                                 # float 64
            elif b <= 0xcf:
                size = 1 << (b - 0xcc)                   # uint 8..64
            elif b <= 0xd3:
                size = 1 << (b - 0xd0)                   # int 8..64
            elif b <= 0xd8:
                kind = K_EXT
                extra = 1
                size = 1 << (b - 0xd4)                   # fixext 1..16
            elif b <= 0xdb:
                kind = K_STR
                lb = 1 << (b - 0xd9)                     # str 8/16/32
            elif b <= 0xdd:
                kind = K_ARRAY
                lb = 2 << (b - 0xdc)                     # array 16/32
            else:
                kind = K_MAP
                lb = 2 << (b - 0xde)                     # map 16/32
            if lb + extra > n - pos - 1:
                return BAD_TRUNCATED
            if lb == 1:
                size = p[pos + 1]
            elif lb == 2:
                size = _be16(p + pos + 1)
            elif lb == 4:
                size = _be32(p + pos + 1)
            if kind == K_ARRAY or kind == K_MAP:
                if lb:
                    count = size
                    size = 0
                if kind == K_ARRAY and count > self.max_array_len:
                    value[0] = count
                    return BAD_ARRAY
                if kind == K_MAP:
                    if count > self.max_map_len:
                        value[0] = count
                        return BAD_MAP
                    count *= 2
            elif kind == K_STR and size > self.max_str_len:
                value[0] = size
                return BAD_STR
            elif kind == K_BIN and size > self.max_bin_len:
                value[0] = size
                return BAD_BIN
            elif kind == K_EXT and size > self.max_ext_len:
                value[0] = size
                return BAD_EXT
            pos += 1 + lb + extra
            if size > n - pos:
                return BAD_TRUNCATED
            pos += size
            if count:
                # Refuse a container whose entries alone pass the limit before walking them.
                if items + count > self.max_items:
                    return BAD_ITEMS
                # Each entry takes at least a byte: a count past the bytes left is a lie.
                if count > n - pos:
                    return BAD_TRUNCATED
                if depth + 1 > self.max_depth:
                    value[0] = depth + 1
                    return BAD_DEPTH
                depth += 1
                left[depth] = count

    cdef int _refuse(self, int bad, Py_ssize_t where, int64_t value) except -1:
        # Out of line: only refused bodies pay for the message.
        if bad == BAD_ITEMS:
            why = f"more than max_items={self.max_items} objects"
        elif bad == BAD_DEPTH:
            why = f"nesting deeper than max_depth={self.max_depth}"
        elif bad == BAD_ARRAY:
            why = f"an array of {value} entries, over max_array_len={self.max_array_len}"
        elif bad == BAD_MAP:
            why = f"a map of {value} pairs, over max_map_len={self.max_map_len}"
        elif bad == BAD_STR:
            why = f"a string of {value} bytes, over max_str_len={self.max_str_len}"
        elif bad == BAD_BIN:
            why = f"a binary of {value} bytes, over max_bin_len={self.max_bin_len}"
        elif bad == BAD_EXT:
            why = f"an extension of {value} bytes, over max_ext_len={self.max_ext_len}"
        elif bad == BAD_BYTE:
            why = f"the reserved byte 0x{value:02x}"
        elif bad == BAD_EXTRA:
            why = "extra bytes after the object"
        else:
            why = "it is truncated"
        raise ProtocolError(f"msgpack body refused at byte {where}: {why}")


#: The limits a Server or Client applies when given none.
DEFAULT_DECODE_LIMITS = DecodeLimits()
