# cython: language_level=3, binding=False
"""The fast decoder: the same records and text as ``nanolog.reference``, in C.

Incremental: ``feed()`` bytes in any split, then ``take_records()`` / ``take_text()``
return what the complete rounds decode to (a round is only complete once a later round,
a new session or the end of the input is seen, because its records are sorted as a whole
before they go out). ``finish()`` declares the end of input; ``damage`` then holds the
``DamagedLogError`` for a truncated or corrupt tail, if any.

Every length, varint, tag, id and thread number is checked when a chunk is parsed (the
bytes are untrusted), and so is every rule ``nanolog.format.check_entry`` gives for a
DICT entry and its records' argument tags, the same rules the reference decoder applies.
An entry that passed the parse is then rendered without checks: its formatting cannot
fail and reads nothing outside its record.
Text rendering does the common conversions (%s of str/int/None/bool, %d/%i/%u, %x/%X/%o
of non-negative ints, %e/%f/%g of finite floats) with C ``snprintf`` straight into the
output buffer, and hands anything else for the record to Python's ``%``.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t, int64_t, uint32_t, uint8_t
from libc.string cimport memcpy, memmove
from libc.stdlib cimport malloc, free, realloc
from libc.stdio cimport snprintf
from libc.math cimport isfinite

import struct
import time
import zlib

from nanolog.errors import DamagedLogError
from nanolog.format import (A_FINITE, BadEntry, F_PREFORMAT, F_VERBATIM, MAX_CHUNK, MAX_TIME,
                            check_entry, level_name, misfit)
from nanolog.reference import check_header

cdef extern from "Python.h":
    # The conversion Python's own '%f' % x uses (correctly rounded, same digits), and
    # several times faster here than glibc's printf for doubles.
    char* PyOS_double_to_string(double, char, int, int, int*) except NULL
    void PyMem_Free(void*)

cdef enum:
    K_SESSION = 1
    K_DICT = 2
    K_THREAD = 3
    K_RECORDS = 4
    K_DROPS = 5
    HEADER_SIZE = 12
    CHUNK_FRAMING = 9

cdef uint64_t _MAX_TIME = MAX_TIME
cdef unsigned int _A_FINITE = A_FINITE

from nanolog._tags cimport (
    T_BIGINT, T_BYTES, T_FALSE, T_FLOAT, T_INT, T_NONE, T_STR, T_SURR, T_TEXT, T_TRUE,
)

# Conversion kinds a format's spec compiles to, for the C renderer.
cdef enum:
    C_S = 1        # %s without flags, width or precision
    C_INT = 2      # d i u: snprintf "%lld" with the spec's flags/width
    C_HEX = 3      # x X o: non-negative ints only
    C_FLT = 4      # e E f F g G
    C_PY = 5       # anything else: Python's % for the whole message
    C_D = 6        # d i u without flags or width: digits written by hand
    C_FLT_PLAIN = 7  # e E f F g G with at most a precision: PyOS_double_to_string

cdef struct Entry:
    int64_t time
    int fmt          # index into Decoder._fmts
    int thread       # index into Decoder._threads
    Py_ssize_t block # number of the block (Decoder._blocks[block - Decoder._block_base])
    Py_ssize_t off   # offset of the first argument in that block


cdef struct Run:
    # The entries of one RECORDS chunk: already in time order (deltas are unsigned).
    Py_ssize_t start, end
    Py_ssize_t seq   # decoder-local number of the round the chunk belongs to


class _Malformed(Exception):
    pass


cdef class Fmt:
    """A dictionary entry, with its format compiled for the C renderer."""
    cdef readonly int id, level, flags, nargs
    cdef readonly str format, file
    cdef readonly uint64_t line
    cdef unsigned int* accept # per argument: the tags it may carry (nanolog.format.ACCEPT)
    cdef bytes utf8
    cdef list lits            # nargs + 1 literal pieces (bytes, '%%' already collapsed)
    cdef list cspecs          # per argument: bytes C format for snprintf, or None
    cdef int* kinds
    cdef int* precs           # C_FLT_PLAIN: the precision
    cdef char* convs          # C_FLT_PLAIN: the conversion character
    cdef object shape
    cdef bytes level_pad      # b"INFO     " etc.

    def __dealloc__(self):
        free(self.kinds)
        free(self.precs)
        free(self.convs)
        free(self.accept)


cdef class ThreadInfo:
    cdef readonly uint64_t native
    cdef readonly str name
    cdef readonly uint32_t pid
    cdef bytes utf8


_SPEC_OK_INT = set("-+ 0")
_SPEC_OK_FLT = set("-+ 0#")
_SPEC_OK_HEX = set("-0")  # C ignores '+' and ' ' for unsigned conversions; Python does not


cdef Fmt _compile(uint64_t fid, int level, int flags, uint64_t nargs, str fmt, str file,
                  uint64_t line):
    cdef Fmt f = Fmt()
    cdef int i
    try:
        shape, accept = check_entry(fid, flags, nargs, fmt)
    except BadEntry as e:
        raise _Malformed(str(e)) from None
    f.id, f.level, f.flags, f.nargs = fid, level, flags, nargs
    f.format, f.file, f.line = fmt, file, line
    f.utf8 = fmt.encode("utf-8", "backslashreplace")
    f.level_pad = f"{level_name(level):<8}".encode()
    f.kinds = <int*>malloc((nargs + 1) * sizeof(int))
    f.precs = <int*>malloc((nargs + 1) * sizeof(int))
    f.convs = <char*>malloc((nargs + 1) * sizeof(char))
    f.accept = <unsigned int*>malloc((nargs + 1) * sizeof(unsigned int))
    if f.kinds is NULL or f.precs is NULL or f.convs is NULL or f.accept is NULL:
        raise MemoryError()
    f.lits = []
    f.cspecs = []
    for i in range(nargs + 1):
        f.kinds[i] = C_PY
    for i in range(nargs):
        f.accept[i] = accept[i]
    if shape is None:  # verbatim or preformatted
        return f
    f.shape = shape
    for i, piece in enumerate(shape.pieces):
        f.lits.append(piece.replace("%%", "%").encode("utf-8", "backslashreplace"))
    for i, (start, end, conv) in enumerate(shape.specs):
        spec = fmt[start + 1:end - 1]       # flags, width, precision, length modifier
        spec = spec.rstrip("hlL")
        body = spec.split(".")[0]
        flags_ = body.rstrip("0123456789")
        width_prec = spec[len(flags_):]
        cspec = None
        kind = C_PY
        if conv == "s" and spec == "":
            kind = C_S
        elif conv in "diu" and spec == "":
            kind, cspec = C_D, "%lld"
        elif conv in "eEfFgG" and (spec == "" or (spec[0] == "." and spec[1:].isdigit()
                                                 and int(spec[1:]) < 100)):
            kind = C_FLT_PLAIN
            f.precs[i] = int(spec[1:]) if spec else 6
            f.convs[i] = ord(conv)
        elif conv in "diu" and "." not in spec and set(flags_) <= _SPEC_OK_INT:
            kind, cspec = C_INT, f"%{flags_}{width_prec}lld"
        elif conv in "xXo" and "." not in spec and set(flags_) <= _SPEC_OK_HEX:
            kind, cspec = C_HEX, f"%{flags_}{width_prec}ll{conv}"
        elif conv in "eEfFgG" and set(flags_) <= _SPEC_OK_FLT:
            prec = "" if "." in spec else ".6"
            kind, cspec = C_FLT, f"%{flags_}{width_prec}{prec}{conv}"
        f.kinds[i] = kind
        f.cspecs.append(cspec.encode() if cspec is not None else None)
    return f


cdef inline int _varint(const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end, uint64_t* out) except -1:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    cdef Py_ssize_t i = pos[0]
    while True:
        if i >= end:
            raise _Malformed("varint runs past the end of the chunk")
        b = p[i]
        i += 1
        if shift == 63 and b > 1:  # the 10th byte may hold bit 63 and nothing more
            raise _Malformed("varint exceeds 64 bits")
        v |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            break
        shift += 7
    pos[0] = i
    out[0] = v
    return 0


cdef inline uint64_t _uvarint_trusted(const uint8_t* p, Py_ssize_t* pos) noexcept:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    cdef Py_ssize_t i = pos[0]
    while True:
        b = p[i]
        i += 1
        v |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            break
        shift += 7
    pos[0] = i
    return v


cdef str _utf8(const uint8_t* p, Py_ssize_t n, str errors="strict"):
    try:
        return (<const char*>p)[:n].decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise _Malformed(f"invalid UTF-8: {e.reason}") from None


@cython.no_gc
@cython.freelist(256)
cdef class Record:
    """One decoded record. ``args`` and ``message`` are decoded on first access."""
    cdef readonly int64_t time
    cdef Fmt _f
    cdef ThreadInfo _t
    cdef bytes _block
    cdef Py_ssize_t _off
    cdef tuple _args
    cdef object _text_at

    @property
    def level(self):
        return self._f.level

    @property
    def level_name(self):
        return level_name(self._f.level)

    @property
    def format(self):
        return self._f.format

    @property
    def file(self):
        return self._f.file

    @property
    def line(self):
        return self._f.line

    @property
    def thread(self):
        return self._t.native

    @property
    def thread_name(self):
        return self._t.name

    @property
    def pid(self):
        return self._t.pid

    @property
    def format_id(self):
        return self._f.id

    @property
    def args(self):
        if self._args is None:
            self._args, self._text_at = _decode_args(self._block, self._off, self._f.nargs)
        return self._args

    @property
    def message(self):
        return _python_message(self._f, self.args, self._text_at)

    def __repr__(self):
        return (f"Record(time={self.time}, level={self.level_name}, "
                f"thread={self.thread_name!r}, message={self.message!r})")


cdef object _python_message(Fmt f, tuple args, object text_at):
    if f.flags & F_VERBATIM:
        return f.format
    if f.flags & F_PREFORMAT:
        return args[0]
    fmt = f.format
    if text_at:
        fmt = f.shape.with_text_at(fmt, text_at)
    return fmt % args


cdef tuple _decode_args(bytes block, Py_ssize_t off, int nargs):
    """Arguments of an entry that passed ``_skip_args`` (so every length is in bounds)."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(block)
    cdef Py_ssize_t pos = off
    cdef uint64_t u, ln
    cdef double d
    cdef int i
    cdef uint8_t tag
    args = []
    text_at = []
    for i in range(nargs):
        tag = p[pos]
        pos += 1
        if tag == T_INT:
            u = _uvarint_trusted(p, &pos)
            args.append(<int64_t>((u >> 1) ^ (0 - (u & 1))))
        elif tag == T_FLOAT:
            memcpy(&d, p + pos, 8)
            pos += 8
            args.append(d)
        elif tag == T_STR or tag == T_TEXT or tag == T_SURR:
            ln = _uvarint_trusted(p, &pos)
            args.append((<const char*>p + pos)[:ln].decode(
                "utf-8", "surrogatepass" if tag == T_SURR else "strict"))
            pos += ln
            if tag == T_TEXT:
                text_at.append(i)
        elif tag == T_BYTES:
            ln = _uvarint_trusted(p, &pos)
            args.append(PyBytes_FromStringAndSize(<const char*>p + pos, ln))
            pos += ln
        elif tag == T_BIGINT:
            ln = _uvarint_trusted(p, &pos)
            args.append(int((<const char*>p + pos)[:ln].decode("ascii")))
            pos += ln
        elif tag == T_NONE:
            args.append(None)
        elif tag == T_TRUE:
            args.append(True)
        else:
            args.append(False)
    return tuple(args), frozenset(text_at)


cdef inline bint _ascii(const uint8_t* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    cdef uint8_t acc = 0
    for i in range(n):
        acc |= p[i]
    return acc < 0x80


cdef int _skip_args(const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end, Fmt f) except -1:
    """Validate one record's arguments against its format and move past them.

    After this, formatting the record cannot fail: each argument is whole, its text is
    valid UTF-8, and its tag is one its conversion takes (``nanolog.format.ACCEPT``).
    """
    cdef uint64_t ln
    cdef uint8_t tag
    cdef int i
    cdef Py_ssize_t start
    cdef double d
    for i in range(f.nargs):
        if pos[0] >= end:
            raise _Malformed("record runs past the end of the chunk")
        tag = p[pos[0]]
        pos[0] += 1
        if tag == T_INT:
            _varint(p, pos, end, &ln)
        elif tag == T_FLOAT:
            if end - pos[0] < 8:
                raise _Malformed("field of 8 bytes runs past the end of the chunk")
            if f.accept[i] & _A_FINITE:
                memcpy(&d, p + pos[0], 8)
                if not isfinite(d):
                    raise _Malformed(misfit(f.id, i, tag))
            pos[0] += 8
        elif T_STR <= tag <= T_SURR:
            _varint(p, pos, end, &ln)
            if ln > <uint64_t>(end - pos[0]):
                raise _Malformed(f"field of {ln} bytes runs past the end of the chunk")
            start = pos[0]
            pos[0] += ln
            if (tag == T_STR or tag == T_TEXT or tag == T_SURR) and not _ascii(p + start, ln):
                # Checked here so rendering can copy the bytes without decoding them.
                try:
                    if tag == T_SURR:
                        PyUnicode_DecodeUTF8(<const char*>p + start, ln, b"surrogatepass")
                    else:
                        PyUnicode_DecodeUTF8(<const char*>p + start, ln, NULL)
                except UnicodeDecodeError as e:
                    raise _Malformed(f"invalid UTF-8: {e.reason}") from None
            elif tag == T_BIGINT:
                try:
                    int((<const char*>p + start)[:ln].decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    raise _Malformed("invalid big-int digits") from None
        elif tag > T_SURR:
            raise _Malformed(f"unknown argument tag {tag}")
        if not (f.accept[i] >> tag) & 1:
            raise _Malformed(misfit(f.id, i, tag))
    return 0


# ---- output buffer ---------------------------------------------------------------------

cdef struct Out:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _reserve(Out* o, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap
    cdef char* d
    if o.len + n <= o.cap:
        return 0
    cap = max(o.cap * 2, o.len + n, 1 << 16)
    d = <char*>realloc(o.data, cap)
    if d is NULL:
        raise MemoryError()
    o.data = d
    o.cap = cap
    return 0


cdef inline int _put(Out* o, const char* s, Py_ssize_t n) except -1:
    _reserve(o, n)
    memcpy(o.data + o.len, s, n)
    o.len += n
    return 0


cdef inline int _put_bytes(Out* o, bytes b) except -1:
    return _put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef inline int _itoa(char* out, int64_t v) noexcept:
    """Decimal digits of v into out (at least 21 bytes); returns the length."""
    cdef char buf[24]
    cdef int i = 24, n
    cdef uint64_t u = <uint64_t>v
    if v < 0:
        u = <uint64_t>0 - u
    while True:
        i -= 1
        buf[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        buf[i] = 45  # '-'
    n = 24 - i
    memcpy(out, buf + i, n)
    return n


cdef int _put_double(Out* o, double d, char conv, int prec) except -1:
    # Python's %-formatting of floats, for specs without flags or width.
    cdef char* s = PyOS_double_to_string(d, conv, prec, 0, NULL)
    cdef Py_ssize_t n = 0
    while s[n]:
        n += 1
    try:
        _put(o, s, n)
    finally:
        PyMem_Free(s)
    return 0


cdef inline bint _before(Py_ssize_t a, Py_ssize_t b, Py_ssize_t* heads, Entry* e) noexcept:
    # Run a's next entry goes out before run b's: earlier time, or same time, earlier run.
    cdef int64_t ta = e[heads[a]].time, tb = e[heads[b]].time
    return ta < tb or (ta == tb and a < b)


cdef void _sift(Py_ssize_t* heap, Py_ssize_t size, Py_ssize_t i, Py_ssize_t* heads,
                Entry* e) noexcept:
    """Move heap[i] down to its place in a binary min-heap of run numbers."""
    cdef Py_ssize_t child, item = heap[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _before(heap[child + 1], heap[child], heads, e):
            child += 1
        if not _before(heap[child], item, heads, e):
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


cdef class Decoder:
    """Incremental decoder of one nanolog file's bytes."""
    cdef bytes _buf
    cdef Py_ssize_t _pos            # parse position in _buf
    cdef Py_ssize_t _base           # file offset of _buf[0]
    cdef bint _header_done
    cdef bint _ordered
    cdef readonly object path
    cdef readonly object damage     # DamagedLogError once decoding had to stop
    cdef list _fmts                 # Fmt objects referenced by entries
    cdef dict _ids                  # format id -> index in _fmts (current session)
    cdef list _threads              # ThreadInfo objects referenced by entries
    cdef dict _thread_ids           # thread number -> index in _threads (current session)
    cdef list _blocks               # bytes objects the pending entries point into
    cdef Py_ssize_t _block_base     # block number of _blocks[0]
    cdef int64_t _mono0, _real0
    cdef uint32_t _pid
    cdef bint _in_session
    cdef object _round
    cdef Py_ssize_t _round_seq      # decoder-local number of the round being collected
    # Entries [0, _done) were handed out, [_done, _ready) belong to complete rounds and
    # [_ready, _n) to the round being collected. The handed-out prefix is dropped once it
    # is as long as the rest, so each entry is moved O(1) times however long a round is.
    cdef Entry* _entries
    cdef Py_ssize_t _n, _cap, _done, _ready
    # One run per RECORDS chunk, split the same way: [_runs_done, _runs_ready) are complete.
    cdef Run* _runs
    cdef Py_ssize_t _nruns, _runcap, _runs_done, _runs_ready
    cdef int* _idmap                # format id -> index in _fmts, -1 if undefined
    cdef Py_ssize_t _idcap
    # Statistics, for ``nanolog stats``.
    cdef readonly object drops
    cdef readonly uint64_t chunks
    # Filters applied before anything is built for a record.
    cdef int _min_level
    cdef int64_t _t_from, _t_to
    # Text rendering state.
    cdef int64_t _sec               # the second _sec_text shows
    cdef bytes _sec_text            # None until the first record is rendered
    cdef Out _out                   # text output buffer, reused between calls

    def __init__(self, *, ordered=True, path=None, min_level=0, time_from=None, time_to=None):
        self._buf = b""
        self._ordered = ordered
        self.path = path
        self._fmts = []
        self._ids = {}
        self._threads = []
        self._thread_ids = {}
        self._blocks = []
        self._round = None
        self.drops = 0
        self._min_level = min_level
        self._t_from = time_from if time_from is not None else -(1 << 63)
        self._t_to = time_to if time_to is not None else (1 << 63) - 1
        self._sec_text = None

    def __dealloc__(self):
        free(self._entries)
        free(self._runs)
        free(self._idmap)
        free(self._out.data)

    cdef int _map_id(self, uint64_t fid, int index) except -1:
        # fid < MAX_IDS: check_entry has refused larger ones.
        cdef Py_ssize_t cap, i
        cdef int* m
        if <Py_ssize_t>fid >= self._idcap:
            cap = max(<Py_ssize_t>fid + 1, self._idcap * 2, 256)
            m = <int*>realloc(self._idmap, cap * sizeof(int))
            if m is NULL:
                raise MemoryError()
            for i in range(self._idcap, cap):
                m[i] = -1
            self._idmap = m
            self._idcap = cap
        self._idmap[fid] = index
        return 0

    cdef _reset_ids(self):
        # Only the ids this session defined: a table sized by one large id must not make
        # every later SESSION chunk cost its whole size.
        for fid in self._ids:
            self._idmap[<Py_ssize_t>fid] = -1
        self._ids = {}

    # ---- parsing ---------------------------------------------------------------------

    def feed(self, data):
        """Parse every complete chunk in ``data`` (appended to what was left before)."""
        cdef Py_ssize_t have, total, take
        cdef uint32_t length
        if self.damage is not None:
            return
        data = bytes(data)
        # A chunk cut by the previous block is completed with just the bytes it needs,
        # so a large block is never copied to be joined to a small leftover.
        while self._pos < len(self._buf) and data and self._header_done:
            rest = self._buf[self._pos:]
            have = len(rest)
            if have < 5:
                take = min(5 - have, len(data))
            else:
                memcpy(&length, PyBytes_AS_STRING(rest) + 1, 4)
                total = <Py_ssize_t>min(length, MAX_CHUNK + 1) + CHUNK_FRAMING
                take = min(total - have, len(data))
            self._replace(rest + data[:take])
            data = data[take:]
            self._parse()
            if self.damage is not None:
                return
        if not data:
            return
        if self._pos < len(self._buf):   # header not complete yet
            data = self._buf[self._pos:] + data
        self._replace(data)
        if not self._header_done:
            if len(self._buf) < HEADER_SIZE:
                return
            check_header(self._buf[:HEADER_SIZE], self.path)
            self._pos = HEADER_SIZE
            self._header_done = True
        self._parse()

    cdef _replace(self, bytes buf):
        """Continue parsing in ``buf``, which starts at the current position's file offset."""
        self._base += self._pos
        self._buf = buf
        self._pos = 0

    def finish(self):
        """End of input: the last round is complete; a partial chunk is a truncation."""
        if self.damage is None:
            if not self._header_done:
                check_header(self._buf, self.path)
            left = len(self._buf) - self._pos
            if left:
                message = self._truncation_message(left)
                self._damage_at(self._torn_tail(left), message)
        self._close_round()

    cdef Py_ssize_t _torn_tail(self, Py_ssize_t left) except -1:
        """Take the whole records of a RECORDS chunk cut short at the end of the input and
        return where the damage starts: the first record not taken, or the chunk itself.
        (A record's encoding ends itself, so one that parses in the bytes present is the
        one the writer wrote, although no checksum vouches for it; nanolog.reference does
        the same.)"""
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(self._buf)
        cdef Py_ssize_t start = self._pos, pos = self._pos + 5, end, first, stop, block
        cdef uint32_t length
        cdef uint64_t number, rnd, ts
        if left < CHUNK_FRAMING or p[start] != K_RECORDS or not self._in_session:
            return start
        memcpy(&length, p + start + 1, 4)   # at most MAX_CHUNK: _parse checked it
        end = min(pos + <Py_ssize_t>length, PyBytes_GET_SIZE(self._buf))
        try:
            _varint(p, &pos, end, &number)
            _varint(p, &pos, end, &rnd)
            _varint(p, &pos, end, &ts)
        except _Malformed:
            return start
        ti_obj = self._thread_ids.get(number)
        if ti_obj is None:
            return start
        if self._round is not None and self._round != rnd:
            self._close_round()
        self._round = rnd
        first = self._n
        self._blocks.append(self._buf)
        block = self._block_base + len(self._blocks) - 1
        stop = pos
        try:
            self._entries_of(p, pos, end, block, ts, <int>ti_obj, &stop)
        except _Malformed:
            pass  # cut in the record at ``stop`` (or bad from there on)
        if self._n > first:
            self._add_run(first, self._n)
        return stop

    cdef _truncation_message(self, Py_ssize_t left):
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(self._buf) + self._pos
        cdef uint32_t length
        offset = self._base + self._pos
        if left < CHUNK_FRAMING:
            return f"truncated: incomplete chunk at offset {offset} ({left} bytes left)"
        memcpy(&length, p + 1, 4)
        return (f"truncated: chunk at offset {offset} needs {length + CHUNK_FRAMING} bytes, "
                f"the file has {left} left")

    cdef _damage_at(self, Py_ssize_t pos, str message):
        self.damage = DamagedLogError(message, self.path, self._base + pos)

    cdef int _parse(self) except -1:
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(self._buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self._buf)
        cdef Py_ssize_t start, body, end
        cdef uint32_t length, crc
        cdef uint8_t kind
        cdef Py_ssize_t block = -1
        while self.damage is None and n - self._pos >= CHUNK_FRAMING:
            start = self._pos
            kind = p[start]
            memcpy(&length, p + start + 1, 4)
            if length > MAX_CHUNK:
                self._damage_at(start, f"corrupt: chunk at offset {self._base + start} "
                                       f"claims {length} bytes (limit {MAX_CHUNK})")
                break
            body = start + 5
            end = body + length
            if end + 4 > n:
                break  # incomplete: wait for more bytes (or finish() reports it)
            memcpy(&crc, p + end, 4)
            if zlib.crc32(memoryview(self._buf)[start:end]) != crc:
                self._damage_at(start, f"corrupt: chunk at offset {self._base + start} "
                                       f"fails its checksum")
                break
            if kind == K_RECORDS and block < 0:
                self._blocks.append(self._buf)
                block = self._block_base + len(self._blocks) - 1
            try:
                self._chunk(kind, p, body, end, block)
            except _Malformed as e:
                names = {1: "SESSION", 2: "DICT", 3: "THREAD", 4: "RECORDS", 5: "DROPS"}
                self._damage_at(start, f"corrupt: malformed {names.get(kind, kind)} chunk at "
                                       f"offset {self._base + start}: {e}")
                break
            self._pos = end + 4
            self.chunks += 1
        return 0

    cdef int _chunk(self, uint8_t kind, const uint8_t* p, Py_ssize_t pos, Py_ssize_t end,
                    Py_ssize_t block) except -1:
        cdef uint64_t a, b, c, ln
        cdef Py_ssize_t first
        if kind == K_SESSION:
            self._close_round()
            if end - pos != 20:
                raise _Malformed(f"SESSION payload of {end - pos} bytes")
            mono0, real0, pid = struct.unpack_from("<QQI", self._buf, pos)
            if max(mono0, real0) > MAX_TIME:
                raise _Malformed("clock reading past 2**63 - 1 ns")
            self._mono0, self._real0, self._pid = mono0, real0, pid
            self._reset_ids()
            self._thread_ids = {}
            self._in_session = True
            self._round = None
            return 0
        if kind < K_SESSION or kind > K_DROPS:
            raise _Malformed(f"unknown chunk kind {kind}")
        if not self._in_session:
            names = {2: "DICT", 3: "THREAD", 4: "RECORDS", 5: "DROPS"}
            raise _Malformed(f"{names[kind]} chunk before any SESSION")
        if kind == K_DICT:
            _varint(p, &pos, end, &a)
            if end - pos < 2:
                raise _Malformed("field of 2 bytes runs past the end of the chunk")
            level, flags = p[pos], p[pos + 1]
            pos += 2
            _varint(p, &pos, end, &b)
            fmt = self._str(p, &pos, end, "surrogatepass")
            file = self._str(p, &pos, end, "surrogatepass")
            _varint(p, &pos, end, &c)
            if a in self._ids:
                old = self._fmts[self._ids[a]]
                if (old.level, old.flags, old.nargs, old.format) != (level, flags, b, fmt):
                    raise _Malformed(f"format id {a} defined twice")
                return 0
            f = _compile(a, level, flags, b, fmt, file, c)
            self._map_id(a, len(self._fmts))
            self._ids[a] = len(self._fmts)
            self._fmts.append(f)
        elif kind == K_THREAD:
            _varint(p, &pos, end, &a)
            _varint(p, &pos, end, &b)
            t = ThreadInfo()
            t.native = b
            t.name = self._str(p, &pos, end, "surrogatepass")
            t.utf8 = t.name.encode("utf-8", "backslashreplace")
            t.pid = self._pid
            self._thread_ids[a] = len(self._threads)
            self._threads.append(t)
        elif kind == K_DROPS:
            _varint(p, &pos, end, &a)
            _varint(p, &pos, end, &b)
            _varint(p, &pos, end, &c)
            self.drops += b
        else:
            self._records(p, pos, end, block)
        return 0

    cdef str _str(self, const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end, str errors):
        cdef uint64_t ln
        _varint(p, pos, end, &ln)
        if ln > <uint64_t>(end - pos[0]):
            raise _Malformed(f"field of {ln} bytes runs past the end of the chunk")
        s = _utf8(p + pos[0], ln, errors)
        pos[0] += ln
        return s

    cdef int _records(self, const uint8_t* p, Py_ssize_t pos, Py_ssize_t end,
                      Py_ssize_t block) except -1:
        cdef uint64_t number, rnd, ts
        cdef Py_ssize_t first = self._n, mark
        cdef int ti
        _varint(p, &pos, end, &number)
        _varint(p, &pos, end, &rnd)
        _varint(p, &pos, end, &ts)
        ti_obj = self._thread_ids.get(number)
        if ti_obj is None:
            raise _Malformed(f"unknown thread {number}")
        ti = ti_obj
        if self._round is not None and self._round != rnd:
            self._close_round()
            first = self._n
        self._round = rnd
        try:
            self._entries_of(p, pos, end, block, ts, ti, &mark)
        except _Malformed:
            self._n = first  # the chunk is rejected whole
            raise
        if self._n > first:
            self._add_run(first, self._n)
        return 0

    cdef int _entries_of(self, const uint8_t* p, Py_ssize_t pos, Py_ssize_t end,
                         Py_ssize_t block, uint64_t ts, int ti, Py_ssize_t* mark) except -1:
        """Check every record of a RECORDS payload and add an entry for each it keeps.
        ``mark`` is left where the record being checked starts (``end`` when all passed),
        so a caller that catches ``_Malformed`` knows which records were whole."""
        cdef uint64_t fid, delta
        cdef int fi
        cdef int64_t since, wall
        cdef Fmt f
        cdef Entry* e
        fmts = self._fmts
        while pos < end:
            mark[0] = pos
            _varint(p, &pos, end, &fid)
            _varint(p, &pos, end, &delta)
            if ts > _MAX_TIME or delta > _MAX_TIME - ts:
                raise _Malformed("timestamp past 2**63 - 1 ns")
            ts += delta
            # Both are at most MAX_TIME: the difference fits, the sum is checked.
            since = <int64_t>ts - self._mono0
            if since > 0 and since > <int64_t>_MAX_TIME - self._real0:
                raise _Malformed("wall-clock time past 2**63 - 1 ns")
            wall = self._real0 + since
            if fid >= <uint64_t>self._idcap or self._idmap[fid] < 0:
                raise _Malformed(f"unknown format id {fid}")
            fi = self._idmap[fid]
            f = <Fmt>fmts[fi]
            if self._n == self._cap:
                self._grow()
            e = &self._entries[self._n]
            e.off = pos
            _skip_args(p, &pos, end, f)
            if f.level < self._min_level or wall < self._t_from or wall > self._t_to:
                continue
            e.time = wall
            e.fmt = fi
            e.thread = ti
            e.block = block
            self._n += 1
        mark[0] = pos
        return 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = max(1024, self._cap * 2)
        cdef Entry* e = <Entry*>realloc(self._entries, cap * sizeof(Entry))
        if e is NULL:
            raise MemoryError()
        self._entries = e
        self._cap = cap
        return 0

    cdef int _add_run(self, Py_ssize_t start, Py_ssize_t end) except -1:
        cdef Py_ssize_t cap
        cdef Run* r
        if self._nruns == self._runcap:
            cap = max(64, self._runcap * 2)
            r = <Run*>realloc(self._runs, cap * sizeof(Run))
            if r is NULL:
                raise MemoryError()
            self._runs = r
            self._runcap = cap
        r = &self._runs[self._nruns]
        r.start = start
        r.end = end
        r.seq = self._round_seq
        self._nruns += 1
        return 0

    def complete_round(self):
        """Treat the round being collected as complete (``tail -f`` on an idle log)."""
        self._close_round()

    cdef _close_round(self):
        """Everything parsed so far is final: the next round or session starts later."""
        self._ready = self._n
        self._runs_ready = self._nruns
        self._round_seq += 1

    # ---- output ------------------------------------------------------------------------

    cdef Py_ssize_t* _order(self, Py_ssize_t* count) except NULL:
        """Entry indices of the complete rounds, each round merged into time order."""
        cdef Py_ssize_t total = self._ready - self._done, k = 0, i, j, m
        cdef Py_ssize_t* order = <Py_ssize_t*>malloc((total + 1) * sizeof(Py_ssize_t))
        cdef Run* runs = self._runs
        if order is NULL:
            raise MemoryError()
        count[0] = total
        if not self._ordered:
            for i in range(total):
                order[i] = self._done + i
            return order
        # The runs of one round are contiguous; each is in time order already, so a round
        # is a k-way merge of its runs. Ties go to the earlier run, and a run is never
        # reordered internally, so every thread's records keep their logged order (the
        # reference decoder's stable sort gives the same order).
        i = self._runs_done
        while i < self._runs_ready:
            j = i + 1
            while j < self._runs_ready and runs[j].seq == runs[i].seq:
                j += 1
            if j - i == 1:
                for m in range(runs[i].start, runs[i].end):
                    order[k] = m
                    k += 1
            else:
                try:
                    k = self._merge(order, k, i, j)
                except MemoryError:
                    free(order)
                    raise
            i = j
        return order

    cdef Py_ssize_t _merge(self, Py_ssize_t* order, Py_ssize_t k, Py_ssize_t first,
                           Py_ssize_t last) except -1:
        """Merge runs [first, last) into ``order`` from ``k`` on, with a binary heap of runs
        keyed by (time of the run's next entry, run number): O(entries * log(runs)).
        (Comparing every run for every entry made one round of K chunks cost O(K**2).)"""
        cdef Py_ssize_t n = last - first, size = last - first, i, top
        cdef Py_ssize_t* heads = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        cdef Py_ssize_t* heap = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        cdef Run* runs = self._runs + first
        cdef Entry* e = self._entries
        if heads is NULL or heap is NULL:
            free(heads)
            free(heap)
            raise MemoryError()
        for i in range(n):
            heads[i] = runs[i].start  # every run holds at least one entry
            heap[i] = i
        i = n // 2
        while i > 0:
            i -= 1
            _sift(heap, size, i, heads, e)
        while size:
            top = heap[0]
            order[k] = heads[top]
            k += 1
            heads[top] += 1
            if heads[top] == runs[top].end:
                size -= 1
                heap[0] = heap[size]
            if size:
                _sift(heap, size, 0, heads, e)
        free(heads)
        free(heap)
        return k

    cdef _consume(self):
        """Forget the entries that were handed out (keep the incomplete round)."""
        cdef Py_ssize_t live, i, drop
        self._done = self._ready
        self._runs_done = self._runs_ready
        live = self._n - self._done
        if self._done and self._done >= live:
            memmove(self._entries, self._entries + self._done, live * sizeof(Entry))
            for i in range(self._runs_done, self._nruns):
                self._runs[i].start -= self._done
                self._runs[i].end -= self._done
            self._n = live
            self._ready = self._done = 0
        live = self._nruns - self._runs_done
        if self._runs_done and self._runs_done >= live:
            memmove(self._runs, self._runs + self._runs_done, live * sizeof(Run))
            self._nruns = live
            self._runs_ready = self._runs_done = 0
        # Blocks are numbered in parse order and so are entries: the first live entry's
        # block is the oldest one still needed.
        if self._n > self._done:
            drop = self._entries[self._done].block - self._block_base
        else:
            drop = len(self._blocks)
        if drop:
            del self._blocks[:drop]
            self._block_base += drop

    cdef inline Record _make_record(self, Entry* e):
        cdef Record r = Record.__new__(Record)
        r.time = e.time
        r._f = <Fmt>self._fmts[e.fmt]
        r._t = <ThreadInfo>self._threads[e.thread]
        r._block = <bytes>self._blocks[e.block - self._block_base]
        r._off = e.off
        return r

    def take_records(self):
        """Records of every complete round, as a list."""
        cdef Py_ssize_t count, i
        cdef Py_ssize_t* order = self._order(&count)
        out = []
        try:
            for i in range(count):
                out.append(self._make_record(&self._entries[order[i]]))
        finally:
            free(order)
        self._consume()
        return out

    def take_text(self):
        """The text lines of every complete round, as UTF-8 bytes."""
        cdef Py_ssize_t count, i
        cdef Py_ssize_t* order = self._order(&count)
        cdef Out* o = &self._out
        o.len = 0
        try:
            _reserve(o, count * 100 + 16)
            for i in range(count):
                self._render(o, &self._entries[order[i]])
            result = PyBytes_FromStringAndSize(o.data, o.len)
        finally:
            free(order)
            o.len = 0
            if o.cap > (64 << 20):  # do not keep a huge buffer after a huge round
                free(o.data)
                o.data = NULL
                o.cap = 0
        self._consume()
        return result

    cdef int _render(self, Out* o, Entry* e) except -1:
        cdef int64_t sec = e.time // 1000000000
        cdef int64_t frac = e.time - sec * 1000000000
        cdef char tmp[64]
        cdef int n
        cdef Fmt f = <Fmt>self._fmts[e.fmt]
        cdef ThreadInfo t = <ThreadInfo>self._threads[e.thread]
        # (Any second can occur: a record at -1 ns, 1969-12-31 23:59:59, is no "unset".)
        if sec != self._sec or self._sec_text is None:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)).encode()
        _put_bytes(o, self._sec_text)
        tmp[0] = 46  # '.'
        for n in range(9, 0, -1):
            tmp[n] = <char>(48 + frac % 10)
            frac //= 10
        tmp[10] = 32  # ' '
        _put(o, tmp, 11)
        _put_bytes(o, f.level_pad)
        _put(o, " [", 2)
        _put_bytes(o, t.utf8)
        _put(o, "] ", 2)
        self._message(o, f, <bytes>self._blocks[e.block - self._block_base], e.off)
        _put(o, "\n", 1)
        return 0

    cdef int _message(self, Out* o, Fmt f, bytes block, Py_ssize_t off) except -1:
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(block)
        cdef Py_ssize_t pos = off, mark = o.len
        cdef int i, kind, n
        cdef uint8_t tag
        cdef uint64_t u, ln
        cdef int64_t iv
        cdef double d
        cdef char tmp[512]
        if f.flags & F_VERBATIM:
            return _put_bytes(o, f.utf8)
        if f.flags & F_PREFORMAT:
            pos += 1  # the T_TEXT tag
            ln = _uvarint_trusted(p, &pos)
            return _put(o, <const char*>p + pos, ln)
        for i in range(f.nargs):
            _put_bytes(o, <bytes>f.lits[i])
            kind = f.kinds[i]
            tag = p[pos]
            pos += 1
            if tag == T_INT:
                u = _uvarint_trusted(p, &pos)
                iv = <int64_t>((u >> 1) ^ (0 - (u & 1)))
                if kind == C_S or kind == C_D:
                    n = _itoa(tmp, iv)
                elif kind == C_FLT_PLAIN:
                    _put_double(o, <double>iv, f.convs[i], f.precs[i])
                    continue
                elif kind == C_INT or (kind == C_HEX and iv >= 0):
                    n = snprintf(tmp, sizeof(tmp), PyBytes_AS_STRING(<bytes>f.cspecs[i]),
                                 <long long>iv)
                elif kind == C_FLT:
                    n = snprintf(tmp, sizeof(tmp), PyBytes_AS_STRING(<bytes>f.cspecs[i]),
                                 <double>iv)
                else:
                    break
                if n < 0 or n >= <int>sizeof(tmp):
                    break
                _put(o, tmp, n)
            elif tag == T_FLOAT:
                memcpy(&d, p + pos, 8)
                pos += 8
                if kind == C_FLT_PLAIN:
                    _put_double(o, d, f.convs[i], f.precs[i])
                    continue
                if kind != C_FLT or not isfinite(d):
                    break
                n = snprintf(tmp, sizeof(tmp), PyBytes_AS_STRING(<bytes>f.cspecs[i]), d)
                if n < 0 or n >= <int>sizeof(tmp):
                    break
                _put(o, tmp, n)
            elif tag == T_STR or tag == T_TEXT:
                ln = _uvarint_trusted(p, &pos)
                if kind != C_S and tag == T_STR:
                    break
                _put(o, <const char*>p + pos, ln)  # a T_TEXT always goes in verbatim
                pos += ln
            elif tag == T_NONE and kind == C_S:
                _put(o, "None", 4)
            elif tag == T_TRUE and kind == C_S:
                _put(o, "True", 4)
            elif tag == T_FALSE and kind == C_S:
                _put(o, "False", 5)
            else:
                break
        else:
            return _put_bytes(o, <bytes>f.lits[f.nargs])
        # Something the C path does not do: let Python format the whole message.
        o.len = mark
        args, text_at = _decode_args(block, off, f.nargs)
        msg = _python_message(f, args, text_at)
        return _put_bytes(o, (<str>msg).encode("utf-8", "backslashreplace"))


cdef class RecordIterator:
    """Iterates a file's records block by block, building each Record as it is asked for."""
    cdef Decoder _dec
    cdef object _file
    cdef Py_ssize_t* _order
    cdef Py_ssize_t _count
    cdef Py_ssize_t _i
    cdef bint _strict
    cdef bint _done
    cdef bint _raised
    cdef Py_ssize_t _read_size

    def __init__(self, Decoder dec, file, bint strict, Py_ssize_t read_size):
        self._dec = dec
        self._file = file
        self._strict = strict
        self._read_size = read_size

    def __dealloc__(self):
        free(self._order)

    def __iter__(self):
        return self

    def __next__(self):
        cdef Record r
        while self._i >= self._count:
            self._refill()
        r = self._dec._make_record(&self._dec._entries[self._order[self._i]])
        self._i += 1
        return r

    cdef _refill(self):
        dec = self._dec
        if self._order is not NULL:
            free(self._order)
            self._order = NULL
            dec._consume()
        self._i = self._count = 0
        if self._done:
            if dec.damage is not None and self._strict and not self._raised:
                self._raised = True
                raise dec.damage
            raise StopIteration
        data = self._file.read(self._read_size) if dec.damage is None else b""
        if data:
            dec.feed(data)
        else:
            self._done = True
            self._file.close()
            dec.finish()
        self._order = dec._order(&self._count)

    @property
    def damage(self):
        return self._dec.damage
