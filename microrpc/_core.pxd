# The protocol core's C-level contract: the transports cimport these to feed bytes in and take
# bytes out without going through Python calls. See _core.pyx for the wire format.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    HEADER_SIZE = 32
    KIND_REQUEST = 1
    KIND_RESPONSE = 2
    KIND_ERROR = 3
    KIND_CREDIT = 4
    KIND_CANCEL = 5
    KIND_PING = 6
    KIND_PONG = 7
    FLAG_HAS_CREDIT = 1
    CODEC_RAW = 0
    CODEC_MSGPACK = 1
    CODEC_PICKLE = 2
    # Error codes of ERROR frames (docs/wire.md).
    ERR_REMOTE = 1
    ERR_NOT_FOUND = 2
    ERR_DEADLINE = 3
    ERR_TOO_LARGE = 4
    ERR_OVERLOADED = 5
    ERR_BAD_REQUEST = 6
    ERR_UNAVAILABLE = 7


cdef class Frame:
    cdef readonly int kind
    cdef readonly int flags
    cdef readonly int codec
    cdef readonly uint64_t call_id
    cdef readonly uint32_t session
    cdef readonly uint32_t deadline_us
    cdef readonly uint32_t credit
    cdef readonly bytes name
    cdef readonly bytes body


cdef class FrameParser:
    cdef char* buf
    cdef Py_ssize_t cap
    cdef Py_ssize_t start      # first unconsumed byte
    cdef Py_ssize_t end        # one past the last byte received
    cdef readonly Py_ssize_t max_message_size
    cdef readonly bint broken  # a protocol error was raised: the stream cannot be resynced

    cdef char* reserve(self, Py_ssize_t n) except NULL
    cdef void commit(self, Py_ssize_t n) noexcept
    cdef Frame next_frame(self)
    cpdef Py_ssize_t buffered(self)


cdef class OutBuffer:
    cdef char* buf
    cdef Py_ssize_t cap
    cdef Py_ssize_t start      # first byte not yet sent
    cdef Py_ssize_t end

    cdef int _grow(self, Py_ssize_t extra) except -1
    cdef int put_frame(self, int kind, int flags, int codec, uint64_t call_id,
                       uint32_t session, uint32_t deadline_us, uint32_t credit,
                       const char* name, Py_ssize_t name_len,
                       const char* body, Py_ssize_t body_len) except -1
    cdef void consume(self, Py_ssize_t n) noexcept
