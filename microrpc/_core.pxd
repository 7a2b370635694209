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
    FLAG_KWARGS = 2            # REQUEST only: the body is [args, kwargs] (docs/wire.md)
    FLAG_ONCE = 4              # REQUEST only: the body starts with its exactly-once id
    ONCE_ID_SIZE = 24          # that id: lease, seq, ack (u64 each)
    CODEC_RAW = 0
    CODEC_MSGPACK = 1
    CODEC_PICKLE = 2
    # Error codes, the first field of an ERROR frame's body (docs/wire.md has the table).
    ERR_REMOTE = 1             # the handler raised
    ERR_NOT_FOUND = 2          # no method of that name
    ERR_DEADLINE = 3           # skipped: the deadline passed, or the client cancelled it
    ERR_TOO_LARGE = 4          # the response is over max_message_size
    ERR_OVERLOADED = 5         # rejected by overload control
    ERR_BAD_REQUEST = 6        # codec not accepted, arguments not decodable
    ERR_UNAVAILABLE = 7        # the server is stopping
    # Reserved for proclets (objects that move between servers): sent by nothing yet, named
    # now so that clients written against this table know them before they appear.
    ERR_WRONG_TARGET = 8       # the object called is not on this server
    ERR_RETRY_ELSEWHERE = 9    # it moved, or refused the call for now: retry at its new home
    ERR_LOST = 10              # the object is gone for good (its runtime died)
    # Exactly-once calls (microrpc.exactly_once; docs/wire.md).
    ERR_IN_PROGRESS = 11       # a retry of a call that is still running: ask again later
    ERR_LEASE_EXPIRED = 12     # the call's lease expired: it was not run
    # Authentication (microrpc/auth.py): the answer to a first frame that skipped the
    # handshake a server with a key requires (or sent to a server that has none).
    ERR_UNAUTHENTICATED = 13


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
    cdef readonly uint64_t lease   # the exactly-once id of a ONCE request (0 otherwise)
    cdef readonly uint64_t seq
    cdef readonly uint64_t ack


cdef class FrameParser:
    cdef char* buf
    cdef Py_ssize_t cap
    cdef Py_ssize_t start      # first unconsumed byte
    cdef Py_ssize_t end        # one past the last byte received
    cdef readonly Py_ssize_t max_message_size
    cdef readonly bint broken  # a protocol error was raised: the stream cannot be resynced
    cdef Frame pending         # a frame whose large body is being read in place, or None
    cdef Py_ssize_t pending_have   # bytes of that body received

    cdef bint _filling(self) noexcept
    cdef int _read_in_place(self, const uint8_t* h, Py_ssize_t name_len, Py_ssize_t pre,
                            Py_ssize_t body_len) except -1
    cdef char* reserve(self, Py_ssize_t* n) except NULL
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
    cdef int put_frame_once(self, int kind, int flags, int codec, uint64_t call_id,
                            uint32_t session, uint32_t deadline_us, uint32_t credit,
                            const char* name, Py_ssize_t name_len,
                            const char* body, Py_ssize_t body_len,
                            uint64_t lease, uint64_t seq, uint64_t ack) except -1
    cdef void consume(self, Py_ssize_t n) noexcept
