# cython: language_level=3
"""microrpc's wire format: frames, an incremental parser, and an output buffer.

Sans-I/O: nothing here touches a socket, a thread or a clock. Transports feed received bytes
to a :class:`FrameParser` and take :class:`Frame` objects out; they put outgoing frames into
an :class:`OutBuffer` and send its bytes however they like (one ``send`` per batch).

Wire format, version 1 (also in docs/wire.md). Little-endian, 32-byte header::

     0               1               2               3
     0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
    +---------------+---------------+---------------+---------------+
    |     magic 0xB5 'R' (2 bytes)  |  version = 1  |     kind      |  0
    +---------------+---------------+---------------+---------------+
    |     flags     |     codec     |       name_len (u16)          |  4
    +---------------+---------------+---------------+---------------+
    |                        call_id (u64)                          |  8
    |                                                               |
    +---------------------------------------------------------------+
    |                        session (u32)                          | 16
    +---------------------------------------------------------------+
    |                      deadline_us (u32)                        | 20
    +---------------------------------------------------------------+
    |                        credit (u32)                           | 24
    +---------------------------------------------------------------+
    |                       body_len (u32)                          | 28
    +---------------------------------------------------------------+
    |  method name (name_len bytes, REQUEST only), then body        | 32
    +---------------------------------------------------------------+

kind: 1 REQUEST, 2 RESPONSE, 3 ERROR, 4 CREDIT, 5 CANCEL, 6 PING, 7 PONG.
flags: bit 0 HAS_CREDIT (``credit`` is an absolute Breakwater window); bit 1 KWARGS (a
REQUEST whose body carries keyword arguments too; on any other kind a protocol error);
bit 2 ONCE (a REQUEST whose body starts with its exactly-once id: lease, seq and ack, three
u64; on any other kind, or with a body shorter than that, a protocol error); other bits
zero.
codec: 0 raw, 1 msgpack, 2 pickle. credit: demand in a REQUEST, window otherwise.
deadline_us: time the caller still waits, relative, 0 = none.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

from microrpc.errors import ProtocolError

# The magic number's two bytes. 0xB5 is the Latin-1 micro sign: a byte no text protocol
# starts with, so a peer speaking HTTP or ZMTP to us fails on the first two bytes.
DEF MAGIC0 = 0xB5
DEF MAGIC1 = 0x52
DEF VERSION = 1
DEF KIND_MAX = 7
DEF MAX_NAME = 255
cdef enum:
    KNOWN_FLAGS = FLAG_HAS_CREDIT | FLAG_KWARGS | FLAG_ONCE
# The first size of a parser's and an output buffer's memory; they grow (doubling) as the
# connection's traffic needs. Small, because a server holds one of each per connection:
# at 64 KiB each, a loop of clients that connect, ping and close (thousands open at once)
# kept the server's RSS 235 MB above idle (issue #10, bench/hostile_bench.py).
DEF INITIAL_CAPACITY = 4096
# A body at least this large is read straight into the bytes object the Frame will carry
# (the parser hands the driver that object's memory to recv into) rather than through the
# parser's buffer: no 16 MiB copy on the I/O thread when it completes (5-8 ms that stalled
# every other connection, issue #10), and the buffer stays near its usual size.
DEF DIRECT_BODY = 131072

HEADER = HEADER_SIZE
REQUEST = KIND_REQUEST
RESPONSE = KIND_RESPONSE
ERROR = KIND_ERROR
CREDIT = KIND_CREDIT
CANCEL = KIND_CANCEL
PING = KIND_PING
PONG = KIND_PONG
HAS_CREDIT = FLAG_HAS_CREDIT
KWARGS = FLAG_KWARGS
ONCE = FLAG_ONCE
ONCE_ID = ONCE_ID_SIZE
RAW = CODEC_RAW
MSGPACK = CODEC_MSGPACK
PICKLE = CODEC_PICKLE
# Error codes under the names microrpc.codecs has always used for them.
REMOTE_ERROR = ERR_REMOTE
METHOD_NOT_FOUND = ERR_NOT_FOUND
DEADLINE_EXCEEDED = ERR_DEADLINE
MESSAGE_TOO_LARGE = ERR_TOO_LARGE
OVERLOADED = ERR_OVERLOADED
BAD_REQUEST = ERR_BAD_REQUEST
UNAVAILABLE = ERR_UNAVAILABLE
WRONG_TARGET = ERR_WRONG_TARGET
RETRY_ELSEWHERE = ERR_RETRY_ELSEWHERE
LOST = ERR_LOST
IN_PROGRESS = ERR_IN_PROGRESS
LEASE_EXPIRED = ERR_LEASE_EXPIRED
UNAUTHENTICATED = ERR_UNAUTHENTICATED
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024


cdef inline uint16_t load16(const uint8_t* p) noexcept nogil:
    return <uint16_t>p[0] | (<uint16_t>p[1] << 8)


cdef inline uint32_t load32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint64_t load64(const uint8_t* p) noexcept nogil:
    return <uint64_t>load32(p) | (<uint64_t>load32(p + 4) << 32)


cdef inline void store16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = v >> 8


cdef inline void store32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = v >> 24


cdef inline void store64(uint8_t* p, uint64_t v) noexcept nogil:
    store32(p, <uint32_t>v)
    store32(p + 4, <uint32_t>(v >> 32))


cdef int make_room(char** buf, Py_ssize_t* cap, Py_ssize_t* start, Py_ssize_t* end,
                   Py_ssize_t extra) except -1:
    """Ensure ``extra`` free bytes after ``end``: compact the consumed prefix first, then
    double the buffer. Shared by the parser (input) and OutBuffer (output)."""
    cdef Py_ssize_t used = end[0] - start[0]
    cdef Py_ssize_t newcap
    cdef char* grown
    if cap[0] - end[0] >= extra:
        return 0
    if start[0] > 0:
        memmove(buf[0], buf[0] + start[0], used)
        start[0] = 0
        end[0] = used
        if cap[0] - used >= extra:
            return 0
    newcap = cap[0] * 2
    while newcap - used < extra:
        newcap *= 2
    grown = <char*>realloc(buf[0], newcap)
    if grown == NULL:
        raise MemoryError()
    buf[0] = grown
    cap[0] = newcap
    return 0


cdef class Frame:
    """One decoded frame. Attributes mirror the header fields; ``name`` and ``body`` are bytes."""

    def __repr__(self):
        return (f"Frame(kind={self.kind}, flags={self.flags}, codec={self.codec}, "
                f"call_id={self.call_id}, session={self.session}, "
                f"deadline_us={self.deadline_us}, credit={self.credit}, "
                f"name={self.name!r}, body=<{len(self.body)} bytes>)")

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        cdef Frame o = other
        return (self.kind == o.kind and self.flags == o.flags and self.codec == o.codec
                and self.call_id == o.call_id and self.session == o.session
                and self.deadline_us == o.deadline_us and self.credit == o.credit
                and self.name == o.name and self.body == o.body)

    __hash__ = None


cdef Frame _frame_from_header(const uint8_t* h):
    """A Frame with the fields of the (validated) header at ``h``; name and body unset."""
    cdef Frame f = Frame.__new__(Frame)
    f.kind = h[3]
    f.flags = h[4]
    f.codec = h[5]
    f.call_id = load64(h + 8)
    f.session = load32(h + 16)
    f.deadline_us = load32(h + 20)
    f.credit = load32(h + 24)
    return f


cdef inline void _put_header(uint8_t* h, int kind, int flags, int codec, uint64_t call_id,
                             uint32_t session, uint32_t deadline_us, uint32_t credit,
                             Py_ssize_t name_len, Py_ssize_t body_len) noexcept:
    h[0] = MAGIC0
    h[1] = MAGIC1
    h[2] = VERSION
    h[3] = kind
    h[4] = flags
    h[5] = codec
    store16(h + 6, <uint16_t>name_len)
    store64(h + 8, call_id)
    store32(h + 16, session)
    store32(h + 20, deadline_us)
    store32(h + 24, credit)
    store32(h + 28, <uint32_t>body_len)


cdef inline void _read_once_id(Frame f, const uint8_t* q) noexcept:
    f.lease = load64(q)
    f.seq = load64(q + 8)
    f.ack = load64(q + 16)


cdef object _protocol_error(str what):
    # Out of line: raising builds strings, which the fast path should never pay for.
    raise ProtocolError(what)


cdef class FrameParser:
    """Incremental frame parser: feed it bytes in any split, take whole frames out.

    Frames are validated as soon as their header is complete, before the body is buffered, so
    an oversized or malformed frame is refused without reading (or allocating for) its body.
    After a ProtocolError the stream cannot be resynchronised (lengths are untrustworthy), so
    the parser stays broken and the caller must close the connection.

    A large body (DIRECT_BODY and up) is read in place: once its header and name are in,
    the Frame and its body object are made, and reserve() returns the rest of that body
    until it is full. So a driver's recv writes such a body once, where it will stay.
    """

    def __cinit__(self, Py_ssize_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE):
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.max_message_size = max_message_size
        self.cap = INITIAL_CAPACITY
        self.buf = <char*>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()
        self.start = 0
        self.end = 0
        self.broken = False

    def __dealloc__(self):
        free(self.buf)

    cpdef Py_ssize_t buffered(self):
        """Bytes received but not yet returned as frames."""
        cdef Py_ssize_t n = self.end - self.start
        if self.pending is not None:
            n += HEADER_SIZE + PyBytes_GET_SIZE(self.pending.name) + self.pending_have
            if self.pending.flags & FLAG_ONCE:
                n += ONCE_ID_SIZE
        return n

    cdef inline bint _filling(self) noexcept:
        """A large body is being read in place and is not complete yet."""
        return (self.pending is not None
                and self.pending_have < PyBytes_GET_SIZE(self.pending.body))

    cdef char* reserve(self, Py_ssize_t* n) except NULL:
        """Where the next received bytes go: room for ``n[0]`` of them, or fewer (``n[0]`` is
        lowered to the rest of a body being read in place, so that no byte of the next
        frame lands in it). The caller writes at most ``n[0]`` bytes there, then commits."""
        cdef Py_ssize_t left
        if self._filling():
            left = PyBytes_GET_SIZE(self.pending.body) - self.pending_have
            if n[0] > left:
                n[0] = left
            return PyBytes_AS_STRING(self.pending.body) + self.pending_have
        make_room(&self.buf, &self.cap, &self.start, &self.end, n[0])
        return self.buf + self.end

    cdef void commit(self, Py_ssize_t n) noexcept:
        if self._filling():
            self.pending_have += n
        else:
            self.end += n

    def feed(self, data):
        """Append received bytes (any bytes-like object)."""
        cdef const unsigned char[::1] view = data
        cdef Py_ssize_t total = view.shape[0]
        cdef Py_ssize_t done = 0, n
        cdef char* dst
        while done < total:
            n = total - done
            dst = self.reserve(&n)
            memcpy(dst, &view[done], n)
            self.commit(n)
            done += n

    cdef Frame next_frame(self):
        """The next whole frame, or None. Raises ProtocolError on malformed input."""
        cdef Py_ssize_t avail = self.end - self.start
        cdef const uint8_t* h
        cdef Py_ssize_t name_len, body_len
        cdef int kind, flags, codec
        cdef Frame f
        if self.broken:
            _protocol_error("stream already failed; the connection must be closed")
        if self.pending is not None:
            if self._filling():
                return None
            f = self.pending
            self.pending = None
            return f
        if avail == 0:
            return None
        h = <const uint8_t*>(self.buf + self.start)
        # Check the magic and version from the first bytes that arrive, so a peer speaking
        # another protocol is refused at once even if it never sends a whole header.
        if h[0] != MAGIC0 or (avail > 1 and h[1] != MAGIC1):
            self.broken = True
            _protocol_error(f"bad magic {bytes(h[0:min(avail, 2)])!r}: "
                            f"the peer is not speaking microrpc")
        if avail > 2 and h[2] != VERSION:
            self.broken = True
            _protocol_error(f"unsupported protocol version {h[2]} (this side speaks {VERSION})")
        if avail < HEADER_SIZE:
            return None
        if h[2] != VERSION:
            self.broken = True
            _protocol_error(f"unsupported protocol version {h[2]} (this side speaks {VERSION})")
        kind = h[3]
        flags = h[4]
        codec = h[5]
        if kind < 1 or kind > KIND_MAX:
            self.broken = True
            _protocol_error(f"unknown frame kind {kind}")
        if flags & ~KNOWN_FLAGS:
            self.broken = True
            _protocol_error(f"unknown flag bits 0x{flags:02x}")
        if codec > CODEC_PICKLE:
            self.broken = True
            _protocol_error(f"unknown codec {codec}")
        name_len = load16(h + 6)
        body_len = load32(h + 28)
        if kind == KIND_REQUEST:
            if name_len == 0 or name_len > MAX_NAME:
                self.broken = True
                _protocol_error(f"request method name length {name_len} not in 1..{MAX_NAME}")
        elif name_len != 0:
            self.broken = True
            _protocol_error(f"method name on a frame of kind {kind}")
        elif flags & FLAG_KWARGS:
            self.broken = True
            _protocol_error(f"KWARGS flag on a frame of kind {kind}")
        elif flags & FLAG_ONCE:
            self.broken = True
            _protocol_error(f"ONCE flag on a frame of kind {kind}")
        cdef Py_ssize_t pre = ONCE_ID_SIZE if flags & FLAG_ONCE else 0
        if body_len < pre:
            self.broken = True
            _protocol_error(f"ONCE request with a body of {body_len} bytes, shorter than its "
                            f"{ONCE_ID_SIZE}-byte exactly-once id")
        if name_len + body_len > self.max_message_size:
            self.broken = True
            _protocol_error(f"frame of {name_len + body_len} bytes is over the "
                            f"max_message_size limit of {self.max_message_size}")
        if avail < HEADER_SIZE + name_len + body_len:
            if body_len >= DIRECT_BODY and avail >= HEADER_SIZE + name_len + pre:
                self._read_in_place(h, name_len, pre, body_len)
            return None
        f = _frame_from_header(h)
        cdef const char* p = <const char*>(h + HEADER_SIZE)
        f.name = PyBytes_FromStringAndSize(p, name_len) if name_len else b""
        if pre:
            _read_once_id(f, <const uint8_t*>(p + name_len))
        f.body = PyBytes_FromStringAndSize(p + name_len + pre, body_len - pre)
        self.start += HEADER_SIZE + name_len + body_len
        if self.start == self.end:
            self.start = 0
            self.end = 0
        return f

    cdef int _read_in_place(self, const uint8_t* h, Py_ssize_t name_len, Py_ssize_t pre,
                            Py_ssize_t body_len) except -1:
        """Start reading the large body of the frame at ``h`` (header, name and the ``pre``
        bytes of its exactly-once id buffered) into its own bytes object. Every byte after
        them is part of the body, since the body is not complete."""
        cdef Frame f = _frame_from_header(h)
        cdef const char* p = <const char*>(h + HEADER_SIZE)
        cdef Py_ssize_t have = self.end - self.start - HEADER_SIZE - name_len - pre
        f.name = PyBytes_FromStringAndSize(p, name_len) if name_len else b""
        if pre:
            _read_once_id(f, <const uint8_t*>(p + name_len))
        f.body = PyBytes_FromStringAndSize(NULL, body_len - pre)
        memcpy(PyBytes_AS_STRING(f.body), p + name_len + pre, have)
        self.pending = f
        self.pending_have = have
        self.start = 0
        self.end = 0
        return 0

    def next(self):
        """Python-level :meth:`next_frame`: the next whole frame or None."""
        return self.next_frame()

    def frames(self):
        """Every whole frame buffered now, as a list."""
        cdef list out = []
        cdef Frame f = self.next_frame()
        while f is not None:
            out.append(f)
            f = self.next_frame()
        return out


cdef class OutBuffer:
    """Outgoing bytes: frames appended back to back, sent in as few syscalls as possible."""

    def __cinit__(self, Py_ssize_t capacity=INITIAL_CAPACITY):
        self.cap = capacity if capacity > 0 else INITIAL_CAPACITY
        self.buf = <char*>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()
        self.start = 0
        self.end = 0

    def __dealloc__(self):
        free(self.buf)

    def __len__(self):
        return self.end - self.start

    cdef int _grow(self, Py_ssize_t extra) except -1:
        return make_room(&self.buf, &self.cap, &self.start, &self.end, extra)

    cdef int put_frame(self, int kind, int flags, int codec, uint64_t call_id,
                       uint32_t session, uint32_t deadline_us, uint32_t credit,
                       const char* name, Py_ssize_t name_len,
                       const char* body, Py_ssize_t body_len) except -1:
        cdef Py_ssize_t total = HEADER_SIZE + name_len + body_len
        if self.cap - self.end < total:
            self._grow(total)
        cdef uint8_t* h = <uint8_t*>(self.buf + self.end)
        _put_header(h, kind, flags, codec, call_id, session, deadline_us, credit, name_len,
                    body_len)
        if name_len:
            memcpy(h + HEADER_SIZE, name, name_len)
        if body_len:
            memcpy(h + HEADER_SIZE + name_len, body, body_len)
        self.end += total
        return 0

    cdef int put_frame_once(self, int kind, int flags, int codec, uint64_t call_id,
                            uint32_t session, uint32_t deadline_us, uint32_t credit,
                            const char* name, Py_ssize_t name_len,
                            const char* body, Py_ssize_t body_len,
                            uint64_t lease, uint64_t seq, uint64_t ack) except -1:
        """put_frame, with the exactly-once id (lease, seq, ack) before the body when
        ``flags`` has ONCE."""
        if not flags & FLAG_ONCE:
            return self.put_frame(kind, flags, codec, call_id, session, deadline_us, credit,
                                  name, name_len, body, body_len)
        cdef Py_ssize_t total = HEADER_SIZE + name_len + ONCE_ID_SIZE + body_len
        if self.cap - self.end < total:
            self._grow(total)
        cdef uint8_t* h = <uint8_t*>(self.buf + self.end)
        cdef uint8_t* q = h + HEADER_SIZE + name_len
        _put_header(h, kind, flags, codec, call_id, session, deadline_us, credit, name_len,
                    ONCE_ID_SIZE + body_len)
        if name_len:
            memcpy(h + HEADER_SIZE, name, name_len)
        store64(q, lease)
        store64(q + 8, seq)
        store64(q + 16, ack)
        if body_len:
            memcpy(q + ONCE_ID_SIZE, body, body_len)
        self.end += total
        return 0

    cdef void consume(self, Py_ssize_t n) noexcept:
        self.start += n
        if self.start >= self.end:
            self.start = 0
            self.end = 0

    def append(self, int kind, uint64_t call_id, bytes name=b"", bytes body=b"", *,
               int flags=0, int codec=0, uint32_t session=0, uint32_t deadline_us=0,
               uint32_t credit=0, uint64_t lease=0, uint64_t seq=0, uint64_t ack=0):
        """Append one frame (Python-level; transports use the C-level put_frame). With the
        ONCE flag, ``lease``, ``seq`` and ``ack`` are its exactly-once id."""
        _check_frame_args(kind, flags, codec, len(name), len(body))
        self.put_frame_once(kind, flags, codec, call_id, session, deadline_us, credit,
                            PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                            PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), lease, seq, ack)

    def take(self):
        """Every buffered byte, as bytes; the buffer is left empty."""
        cdef bytes out = PyBytes_FromStringAndSize(self.buf + self.start, self.end - self.start)
        self.start = 0
        self.end = 0
        return out


cdef int _check_frame_args(int kind, int flags, int codec, Py_ssize_t name_len,
                           Py_ssize_t body_len) except -1:
    if kind < 1 or kind > KIND_MAX:
        raise ValueError(f"unknown frame kind {kind}")
    if flags & ~KNOWN_FLAGS:
        raise ValueError(f"unknown flag bits 0x{flags:02x}")
    if codec < 0 or codec > CODEC_PICKLE:
        raise ValueError(f"unknown codec {codec}")
    if kind == KIND_REQUEST and not 1 <= name_len <= MAX_NAME:
        raise ValueError(f"method name must be 1..{MAX_NAME} bytes")
    if kind != KIND_REQUEST and name_len:
        raise ValueError("only requests carry a method name")
    if kind != KIND_REQUEST and flags & FLAG_KWARGS:
        raise ValueError("only requests carry keyword arguments")
    if kind != KIND_REQUEST and flags & FLAG_ONCE:
        raise ValueError("only requests carry an exactly-once id")
    if body_len > 0xFFFFFFFF:
        raise ValueError("body over 4 GiB")
    return 0


def encode_frame(int kind, uint64_t call_id, bytes name=b"", bytes body=b"", *, int flags=0,
                 int codec=0, uint32_t session=0, uint32_t deadline_us=0, uint32_t credit=0,
                 uint64_t lease=0, uint64_t seq=0, uint64_t ack=0):
    """One frame as bytes."""
    cdef OutBuffer out = OutBuffer(HEADER_SIZE + len(name) + ONCE_ID_SIZE + len(body))
    out.append(kind, call_id, name, body, flags=flags, codec=codec, session=session,
               deadline_us=deadline_us, credit=credit, lease=lease, seq=seq, ack=ack)
    return out.take()
