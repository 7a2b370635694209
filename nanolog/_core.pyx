# cython: language_level=3, binding=False
"""The hot path: format ids, the C clock, binary arguments into per-thread staging buffers.

A call to ``info(fmt, *args)`` does, with the GIL held and no Python code in between:
one dict probe (format string -> ``_Format``), one comparison to find the calling thread's
staging buffer, ``clock_gettime(CLOCK_MONOTONIC)``, and a copy of the arguments into the
buffer in the record layout of ``nanolog.format``. Nothing here locks: a staging buffer has
one producer (its thread), and the drain that empties it also runs with the GIL held and
without calling Python code while it copies, so a producer never sees a half-drained
buffer and a drain never sees a half-written record.

Anything unusual (a new format, an argument of another type, a full buffer) leaves the
inline path for ``_emit_slow``, which may run Python code but finishes before a single
byte of the record is written.
"""
from cpython.object cimport PyObject, PyTypeObject, Py_TYPE
from cpython.exc cimport PyErr_Occurred
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear
from libc.stdint cimport uint64_t, uint16_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free, realloc
from libc.math cimport isfinite
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME

import sys
import threading
import weakref

from nanolog.format import (A_FINITE, FormatShape, MAX_ARGS, MAX_RECORD, F_PREFORMAT,
                            F_VERBATIM, K_DICT, K_THREAD)

cdef uint16_t _A_FINITE = A_FINITE

cdef extern from "Python.h":
    # Fast UTF-8 view of a str; NULL (with an exception set) for lone surrogates.
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*)
    long long PyLong_AsLongLongAndOverflow(object, int*)
    # NULL without an exception when the key is missing (PyDict_GetItem would save and
    # restore the exception state on every call, which costs a few ns).
    PyObject* _dict_get "PyDict_GetItemWithError"(object, object)
    double PyFloat_AS_DOUBLE(object)
    # Only the unique, never reused per-interpreter id of the thread state is read.
    ctypedef struct _ThreadState "PyThreadState":
        uint64_t id
    _ThreadState* PyThreadState_Get()
    PyObject** _items "PySequence_Fast_ITEMS"(object)
    ctypedef struct PyMethodDef:
        const char* ml_name
        void* ml_meth
        int ml_flags
        const char* ml_doc
    int METH_FASTCALL
    object PyDescr_NewMethod(PyTypeObject*, PyMethodDef*)
    void PyType_Modified(PyTypeObject*)
    object PyTuple_New(Py_ssize_t)
    void PyTuple_SET_ITEM(object, Py_ssize_t, object)
    void Py_INCREF(object)
    int PyDict_SetItem(object, object, object) except -1
    # Public macros (cpython/unicodeobject.h): a compact ASCII str's bytes are its UTF-8.
    bint PyUnicode_IS_COMPACT_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)


# Argument tags (see nanolog/format.py).
from nanolog._tags cimport (
    T_BIGINT, T_BYTES, T_FALSE, T_FLOAT, T_INT, T_NONE, T_STR, T_SURR, T_TEXT, T_TRUE,
)


class _Text(str):
    """An argument already converted by its own %-conversion at call time (tag 8)."""


class _BigInt(str):
    """Decimal text of an int outside 64 bits (tag 7)."""


class _Surr(str):
    """A str with lone surrogates, stored as UTF-8 with surrogatepass (tag 9)."""



cdef PyTypeObject* _TEXT_T = <PyTypeObject*>_Text
cdef PyTypeObject* _BIGINT_T = <PyTypeObject*>_BigInt
cdef PyTypeObject* _SURR_T = <PyTypeObject*>_Surr
cdef PyTypeObject* _INT_T = <PyTypeObject*>int
cdef PyTypeObject* _FLOAT_T = <PyTypeObject*>float
cdef PyTypeObject* _STR_T = <PyTypeObject*>str
cdef PyTypeObject* _BYTES_T = <PyTypeObject*>bytes
cdef PyTypeObject* _BOOL_T = <PyTypeObject*>bool
_NoneType = type(None)
cdef PyTypeObject* _NONE_T = <PyTypeObject*>_NoneType


cdef inline uint64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


def clock_pair():
    """(monotonic ns, realtime ns) read back to back: the file's clock calibration."""
    cdef timespec a, b
    clock_gettime(CLOCK_MONOTONIC, &a)
    clock_gettime(CLOCK_REALTIME, &b)
    return (<uint64_t>a.tv_sec * 1000000000ULL + <uint64_t>a.tv_nsec,
            <uint64_t>b.tv_sec * 1000000000ULL + <uint64_t>b.tv_nsec)


def monotonic_ns():
    """The clock records are stamped with."""
    return _now()


cdef inline char* _put_varint(char* p, uint64_t v) noexcept:
    while v >= 0x80:
        p[0] = <char>((v & 0x7f) | 0x80)
        p += 1
        v >>= 7
    p[0] = <char>v
    return p + 1


cdef bytes _varint(uint64_t v):
    cdef char buf[10]
    cdef char* end = _put_varint(buf, v)
    return PyBytes_FromStringAndSize(buf, end - buf)


cdef bytes _text(str s):
    b = s.encode("utf-8", "surrogatepass")
    return _varint(len(b)) + b


cdef class _Format:
    """One dictionary entry: the id a format string was given at one level."""
    cdef readonly int id
    cdef readonly int level
    cdef readonly int nargs        # -1: preformatted (every call takes the slow path)
    cdef readonly int flags
    cdef readonly str fmt
    cdef object shape              # FormatShape
    cdef uint16_t* accept          # per argument: bit t set if tag t needs no call-time check
    cdef _Format noargs            # the variant for a call with no arguments (verbatim)

    def __dealloc__(self):
        free(self.accept)


cdef class _Staging:
    """One thread's staging buffer. Only that thread writes; drains run under the GIL."""
    cdef char* data
    cdef Py_ssize_t length
    cdef Py_ssize_t capacity
    cdef Py_ssize_t wake_at
    cdef uint64_t base_ts          # time of the record before data[0] (delta base)
    cdef uint64_t last_ts
    cdef uint64_t records
    cdef uint64_t drops
    cdef uint64_t tstate_id
    cdef readonly int number
    cdef bint woken
    cdef object thread_ref

    def __dealloc__(self):
        free(self.data)


cdef class LoggerCore:
    """The compiled part of ``nanolog.Logger``: levels, formats, staging, draining."""
    cdef int _level
    cdef bint _drop
    cdef bint _closed
    cdef bint _quiet_closed        # closed by the exit flush: later calls are dropped silently
    cdef Py_ssize_t _buffer_size
    cdef int _max_formats
    cdef dict _tables              # level -> {format string: _Format}
    cdef dict _t10, _t20, _t30, _t40, _t50
    cdef list _stagings
    cdef dict _by_tstate           # PyThreadState id -> _Staging
    cdef uint64_t _cached_tid
    cdef _Staging _cached
    cdef int _next_id
    cdef int _next_thread
    cdef uint64_t _round
    cdef uint64_t _retired_records
    cdef uint64_t _drops_total
    cdef list _meta                # [(kind, payload)], every DICT/THREAD entry in order
    cdef Py_ssize_t _meta_sent
    cdef object _wake              # callable: tell the writer a buffer is half full
    cdef char* _scratch
    cdef Py_ssize_t _scratch_cap

    def __cinit__(self, *args, **kwargs):
        self._tables = {}
        self._t10 = self._table(10)
        self._t20 = self._table(20)
        self._t30 = self._table(30)
        self._t40 = self._table(40)
        self._t50 = self._table(50)
        self._stagings = []
        self._by_tstate = {}
        self._meta = []
        self._next_id = 1
        self._next_thread = 1
        self._buffer_size = 1 << 20
        self._max_formats = 100000
        self._wake = None

    def __dealloc__(self):
        free(self._scratch)

    cdef dict _table(self, int level):
        t = self._tables.get(level)
        if t is None:
            t = self._tables[level] = {}
        return t

    def _configure(self, int level, Py_ssize_t buffer_size, bint drop, int max_formats, wake):
        if buffer_size < 4096:
            raise ValueError("buffer_size must be at least 4096 bytes")
        self._level = level
        self._buffer_size = buffer_size
        self._drop = drop
        self._max_formats = max_formats
        self._wake = wake

    # ---- levels ------------------------------------------------------------------------

    @property
    def level(self):
        return self._level

    def _set_level(self, int level):
        self._level = level

    def isEnabledFor(self, int level):
        return level >= self._level and not self._closed

    # ---- the hot path --------------------------------------------------------------------

    # debug/info/warning/error/critical are installed below as METH_FASTCALL C functions
    # (see _install_fast_methods): the call hands over its arguments as an array, so no
    # tuple is built and nothing is parsed. These Python-level definitions document the
    # signature and are replaced at import.
    def debug(self, fmt, *args):
        self.log(10, fmt, *args)

    def info(self, fmt, *args):
        self.log(20, fmt, *args)

    def warning(self, fmt, *args):
        self.log(30, fmt, *args)

    def error(self, fmt, *args):
        self.log(40, fmt, *args)

    def critical(self, fmt, *args):
        self.log(50, fmt, *args)

    def log(self, int level, fmt, *args):
        if self._level > level:
            return
        if not 0 <= level <= 255:
            raise ValueError(f"level {level} out of range 0..255")
        self._emit_tuple(level, self._table(level), fmt, args)

    cdef inline int _emit_array(self, int level, dict table, PyObject** argv,
                                Py_ssize_t nargs) except -1:
        """argv[0] is the format, argv[1:nargs] the arguments (borrowed references)."""
        cdef PyObject* p
        cdef Py_ssize_t n = nargs - 1
        if nargs < 1:
            raise TypeError("a log call needs a format (message) argument")
        p = _dict_get(table, <object>argv[0])
        if p is NULL or self._closed or n != (<_Format>p).nargs:
            if p is NULL and PyErr_Occurred():
                PyErr_Clear()  # unhashable: the slow path converts it with str()
            return self._emit_slow(level, table, <object>argv[0], _tuple_of(argv + 1, n),
                                   None, 0)
        if self._encode(self._current(), <_Format>p, argv + 1, n) != 0:
            return self._emit_slow(level, table, <object>argv[0], _tuple_of(argv + 1, n),
                                   None, 0)
        return 0

    cdef int _emit_tuple(self, int level, dict table, object fmt, tuple args) except -1:
        cdef PyObject* p = _dict_get(table, fmt)
        cdef Py_ssize_t n = PyTuple_GET_SIZE(args)
        if p is NULL or self._closed or n != (<_Format>p).nargs:
            if p is NULL and PyErr_Occurred():
                PyErr_Clear()
            return self._emit_slow(level, table, fmt, args, None, 0)
        if self._encode(self._current(), <_Format>p, _items(args), n) != 0:
            return self._emit_slow(level, table, fmt, args, None, 0)
        return 0

    cdef inline _Staging _current(self):
        cdef uint64_t tid = PyThreadState_Get().id
        if tid == self._cached_tid and self._cached is not None:
            return self._cached
        return self._find_staging(tid)

    cdef int _encode(self, _Staging st, _Format f, PyObject** argv, Py_ssize_t n) except -1:
        """Stage one record. 0: done; 1: an argument needs the slow path; 2: no room.

        One pass writes past the committed end of the buffer and commits by moving
        ``st.length`` at the very end; returning 1 or 2 half way leaves the buffer as it
        was. No Python code runs between the clock read and the commit, so a drain
        (which needs the GIL) sees the record whole or not at all.
        """
        cdef Py_ssize_t i, ln
        cdef PyObject* a
        cdef PyTypeObject* t
        cdef int tag, overflow
        cdef long long iv
        cdef double dv
        cdef const char* s
        cdef char* p = st.data + st.length
        cdef char* end = st.data + st.capacity
        cdef uint16_t* accept = f.accept
        cdef uint64_t now = _now()
        if now < st.last_ts:
            now = st.last_ts
        if end - p < 15:  # id (<= 5 bytes) + delta (<= 10 bytes)
            return 2
        p = _put_varint(p, <uint64_t>f.id)
        p = _put_varint(p, now - st.last_ts)
        for i in range(n):
            a = argv[i]
            t = Py_TYPE(<object>a)
            if t is _INT_T:
                iv = PyLong_AsLongLongAndOverflow(<object>a, &overflow)
                if overflow or not (accept[i] >> T_INT) & 1:
                    return 1
                if end - p < 11:
                    return 2
                p[0] = T_INT
                p = _put_varint(p + 1, (<uint64_t>iv << 1) ^ <uint64_t>(iv >> 63))
            elif t is _STR_T or t is _TEXT_T:
                tag = T_STR if t is _STR_T else T_TEXT
                if not (accept[i] >> tag) & 1:
                    return 1
                if PyUnicode_IS_COMPACT_ASCII(<object>a):
                    s = <const char*>PyUnicode_DATA(<object>a)
                    ln = PyUnicode_GET_LENGTH(<object>a)
                else:
                    s = PyUnicode_AsUTF8AndSize(<object>a, &ln)
                    if s is NULL:
                        PyErr_Clear()  # lone surrogates: the slow path stores them
                        return 1
                if end - p < 6 + ln:
                    return 2
                p[0] = tag
                p = _put_varint(p + 1, <uint64_t>ln)
                memcpy(p, s, ln)
                p += ln
            elif t is _FLOAT_T:
                if not (accept[i] >> T_FLOAT) & 1:
                    return 1
                if end - p < 9:
                    return 2
                dv = PyFloat_AS_DOUBLE(<object>a)
                if not isfinite(dv) and accept[i] & _A_FINITE:
                    return 1  # '%d' % inf raises: the slow path raises it here
                p[0] = T_FLOAT
                memcpy(p + 1, &dv, 8)  # little-endian hosts only (checked at import)
                p += 9
            elif t is _BOOL_T or t is _NONE_T:
                if t is _NONE_T:
                    tag = T_NONE
                else:
                    tag = T_TRUE if (<object>a) is True else T_FALSE
                if not (accept[i] >> tag) & 1:
                    return 1
                if end - p < 1:
                    return 2
                p[0] = tag
                p += 1
            elif t is _BYTES_T:
                if not (accept[i] >> T_BYTES) & 1:
                    return 1
                ln = PyBytes_GET_SIZE(<object>a)
                if end - p < 6 + ln:
                    return 2
                p[0] = T_BYTES
                p = _put_varint(p + 1, <uint64_t>ln)
                memcpy(p, PyBytes_AS_STRING(<object>a), ln)
                p += ln
            else:
                # Other types, and the _BigInt/_Surr markers, go through _encode_general.
                return 1
        st.last_ts = now
        st.length = p - st.data
        st.records += 1
        if st.length >= st.wake_at and not st.woken:
            st.woken = True
            if self._wake is not None:
                self._wake()
        return 0

    # ---- the slow path (out of line) -----------------------------------------------------

    cdef int _emit_slow(self, int level, dict table, object fmt, tuple args,
                        object file, int line) except -1:
        cdef _Format f
        cdef _Staging st
        cdef int r
        cdef Py_ssize_t n = len(args)
        if self._closed:
            if self._quiet_closed:
                return 0  # a daemon thread logging during interpreter shutdown
            raise ValueError("I/O operation on a closed nanolog.Logger")
        if type(fmt) is not str:
            fmt = str(fmt)
        f = table.get(fmt)
        if f is None:
            if self._next_id > self._max_formats:
                # Too many distinct formats (e.g. f-strings used as formats): log the
                # formatted message under one shared entry instead of growing forever.
                f = self._overflow_format(level, table)
                args = (_Text(fmt % args if n else fmt),)
                return self._stage(f, args)
            f = self._register(level, table, fmt, file, line)
        if n == 0:
            if f.nargs != 0 and f.noargs is None:
                f.noargs = self._new_format(level, fmt, f.shape, F_VERBATIM, 0, file, line)
            return self._stage(f if f.nargs == 0 else f.noargs, ())
        if f.nargs != n:
            # A mapping-keyed or '*' format, or an argument count that does not match:
            # format now, like logging would, so a bad call raises here at its call site.
            if n == 1 and isinstance(args[0], dict) and args[0]:
                text = fmt % args[0]
            else:
                text = fmt % args
            if not f.flags & F_PREFORMAT:
                # Arguments that do not match a simple format: '%' already raised for
                # most; this keeps any remaining case decodable.
                f = self._register_preformat(level, table, fmt, file, line)
            return self._stage(f, (_Text(text),))
        return self._stage(f, _normalize(f, args))

    cdef int _stage(self, _Format f, tuple args) except -1:
        cdef _Staging st
        cdef int r
        while True:
            st = self._current()
            r = self._encode(st, f, _items(args), PyTuple_GET_SIZE(args))
            if r == 0:
                return 0
            if r == 1:
                return self._encode_general(st, f, args)
            if self._drop:
                st.drops += 1
                return 0
            if st.length > 0:
                # Drains every buffer (ours included) before it returns, or raises.
                self._make_room()
            else:
                # Empty and still too small: this record is larger than the whole
                # buffer, which grows to hold it (up to MAX_RECORD).
                self._grow_to(st, _size_bound(args))

    cdef int _encode_general(self, _Staging st, _Format f, tuple args) except -1:
        """Encode arguments the inline path does not (big ints, surrogates) via Python."""
        parts = []
        for a in args:
            t = type(a)
            if t is _BigInt:
                b = (<str>a).encode("ascii")
                parts.append(bytes([T_BIGINT]) + _varint(len(b)) + b)
            elif t is _Surr:
                b = (<str>a).encode("utf-8", "surrogatepass")
                parts.append(bytes([T_SURR]) + _varint(len(b)) + b)
            else:
                parts.append(_encode_one(a))
        body = b"".join(parts)
        cdef Py_ssize_t need = 15 + len(body)
        cdef uint64_t now
        cdef char* p
        while st.length + need > st.capacity:
            if self._drop:
                st.drops += 1
                return 0
            if st.length == 0:
                self._grow_to(st, need)
            else:
                self._make_room()
                st = self._current()
        now = _now()
        if now < st.last_ts:
            now = st.last_ts
        p = st.data + st.length
        p = _put_varint(p, <uint64_t>f.id)
        p = _put_varint(p, now - st.last_ts)
        memcpy(p, PyBytes_AS_STRING(body), len(body))
        p += len(body)
        st.last_ts = now
        st.length = p - st.data
        st.records += 1
        return 0

    cdef int _grow_to(self, _Staging st, Py_ssize_t need) except -1:
        if need > MAX_RECORD:
            raise ValueError(f"log record of about {need} bytes exceeds the "
                             f"{MAX_RECORD}-byte limit")
        cdef char* d = <char*>realloc(st.data, need)
        if d is NULL:
            raise MemoryError()
        st.data = d
        st.capacity = need
        return 0

    def _make_room(self):
        """Called with a staging buffer full and the policy 'block'. Logger overrides it."""
        raise RuntimeError("staging buffer full and no writer to drain it")

    cdef _Format _register(self, int level, dict table, str fmt, object file, int line):
        shape = FormatShape(fmt)
        if not shape.simple:
            return self._register_preformat(level, table, fmt, file, line)
        f = self._new_format(level, fmt, shape, F_VERBATIM if shape.nargs == 0 else 0,
                             shape.nargs, file, line)
        table[fmt] = f
        return f

    cdef _Format _register_preformat(self, int level, dict table, str fmt, object file,
                                     int line):
        f = self._new_format(level, fmt, None, F_PREFORMAT, -1, file, line)
        table[fmt] = f
        return f

    cdef _Format _overflow_format(self, int level, dict table):
        key = ("<overflow>",)
        f = table.get(key)
        if f is None:
            f = self._new_format(level, "%s", None, F_PREFORMAT, -1, None, 0)
            table[key] = f
        return f

    cdef _Format _new_format(self, int level, str fmt, object shape, int flags, int nargs,
                             object file, int line):
        cdef _Format f = _Format()
        cdef int i
        if nargs > MAX_ARGS:
            raise ValueError(f"a format may take at most {MAX_ARGS} arguments")
        if file is None:
            file, line = _caller()
        f.level = level
        f.fmt = fmt
        f.shape = shape
        f.flags = flags
        f.nargs = nargs
        n = max(nargs, 1)
        f.accept = <uint16_t*>malloc(n * sizeof(uint16_t))
        if f.accept is NULL:
            raise MemoryError()
        for i in range(n):
            f.accept[i] = (1 << T_TEXT)
        if shape is not None:
            for i in range(nargs):
                f.accept[i] = shape.accept[i]
        payload_tail = (bytes([level, flags]) + _varint(max(nargs, 0) if not flags & F_PREFORMAT else 1)
                        + _text(fmt) + _text(file or "") + _varint(max(line, 0)))
        # Id assignment and the dictionary append happen without Python code in between
        # (no GIL switch), so two threads registering at once get distinct ids.
        f.id = self._next_id
        self._next_id += 1
        self._meta.append((K_DICT, _varint(f.id) + payload_tail))
        return f

    cdef _Staging _find_staging(self, uint64_t tid):
        st = self._by_tstate.get(tid)
        if st is None:
            st = self._new_staging(tid)
        self._cached_tid = tid
        self._cached = st
        return st

    cdef _Staging _new_staging(self, uint64_t tid):
        cdef _Staging st = _Staging()
        thread = threading.current_thread()
        name = thread.name
        native = threading.get_native_id()
        st.data = <char*>malloc(self._buffer_size)
        if st.data is NULL:
            raise MemoryError()
        st.capacity = self._buffer_size
        st.wake_at = self._buffer_size // 2
        st.tstate_id = tid
        st.last_ts = _now()
        st.base_ts = st.last_ts
        st.thread_ref = weakref.ref(thread)
        st.number = self._next_thread
        self._next_thread += 1
        self._meta.append((K_THREAD, _varint(st.number) + _varint(native) + _text(name)))
        self._stagings.append(st)
        self._by_tstate[tid] = st
        return st

    # ---- draining (called by the writer, always under its I/O lock) -------------------------

    def _drain(self):
        """Take every staged record out, atomically with respect to producers.

        Returns ``(round, meta_start, meta, block, chunks, drops)``: the DICT/THREAD
        entries registered since the last drain (``meta``, which start at index
        ``meta_start`` of the full list), one bytes ``block`` holding every thread's
        records, ``chunks`` as (thread, base_ts, start, end) slices of it, and ``drops``
        as (thread, count, ts).
        """
        cdef _Staging st
        cdef Py_ssize_t total = 0, pos = 0, k = 0, ns = len(self._stagings)
        cdef uint64_t* bases
        cdef Py_ssize_t* lens
        cdef uint64_t* dropped
        # Phase 1, pure C: copy and reset every buffer. Python allocations could run a
        # garbage collection and finalizers, which could let a producer in; none happen
        # until every buffer is copied, so the round is one instant.
        for st in self._stagings:
            total += st.length
        if total > self._scratch_cap:
            d = <char*>realloc(self._scratch, total)
            if d is NULL:
                raise MemoryError()
            self._scratch = d
            self._scratch_cap = total
        bases = <uint64_t*>malloc((ns + 1) * sizeof(uint64_t))
        lens = <Py_ssize_t*>malloc((ns + 1) * sizeof(Py_ssize_t))
        dropped = <uint64_t*>malloc((ns + 1) * sizeof(uint64_t))
        if bases is NULL or lens is NULL or dropped is NULL:
            free(bases); free(lens); free(dropped)
            raise MemoryError()
        for st in self._stagings:
            memcpy(self._scratch + pos, st.data, st.length)
            pos += st.length
            bases[k] = st.base_ts
            lens[k] = st.length
            dropped[k] = st.drops
            self._drops_total += st.drops
            st.drops = 0
            st.length = 0
            st.base_ts = st.last_ts
            st.woken = False
            k += 1
        meta_start = self._meta_sent
        self._meta_sent = len(self._meta)
        self._round += 1
        # Phase 2: build Python objects.
        try:
            block = PyBytes_FromStringAndSize(self._scratch, total)
            chunks = []
            drops = []
            pos = 0
            now = _now()
            for k in range(ns):
                st = self._stagings[k]
                if lens[k]:
                    chunks.append((st.number, bases[k], pos, pos + lens[k]))
                pos += lens[k]
                if dropped[k]:
                    drops.append((st.number, dropped[k], now))
        finally:
            free(bases); free(lens); free(dropped)
        meta = self._meta[meta_start:self._meta_sent]
        self._retire_dead_threads()
        return self._round, meta_start, meta, block, chunks, drops

    cdef _retire_dead_threads(self):
        cdef _Staging st
        keep = []
        for st in self._stagings:
            t = st.thread_ref()
            if st.length == 0 and st.drops == 0 and (t is None or not t.is_alive()):
                self._retired_records += st.records
                self._by_tstate.pop(st.tstate_id, None)
                if self._cached is st:
                    self._cached = None
                    self._cached_tid = 0
            else:
                keep.append(st)
        self._stagings = keep

    def _meta_upto(self, Py_ssize_t end):
        return self._meta[:end]

    def _counters(self):
        """(records staged, records dropped, formats, threads) so far."""
        cdef _Staging st
        cdef uint64_t records = self._retired_records, drops = self._drops_total
        for st in self._stagings:
            records += st.records
            drops += st.drops
        return records, drops, self._next_id - 1, self._next_thread - 1

    def _after_fork_child(self):
        """In a forked child: forget the parent's staged bytes and threads.

        Everything staged belongs to the parent, which writes it to its own file; the
        child starts a new session whose dictionary repeats every format known so far.
        """
        self._stagings = []
        self._by_tstate = {}
        self._cached = None
        self._cached_tid = 0
        self._meta = [m for m in self._meta if m[0] == K_DICT]
        self._meta_sent = 0
        self._next_thread = 1
        self._retired_records = 0
        self._drops_total = 0

    def _mark_closed(self, bint quiet=False):
        """Refuse new records from now on (``quiet``: drop them without an error)."""
        self._closed = True
        self._quiet_closed = quiet

    def _log_from(self, int level, fmt, tuple args, file, int line):
        """The logging.Handler bridge: a call whose call site is known (file, line)."""
        if self._level > level or not 0 <= level <= 255:
            return
        table = self._table(level)
        if self._closed:
            if self._quiet_closed:
                return
            raise ValueError("I/O operation on a closed nanolog.Logger")
        if type(fmt) is str and fmt not in table and self._next_id <= self._max_formats:
            f = self._register(level, table, fmt, file, line)
        self._emit_tuple(level, table, fmt, args)


cdef tuple _tuple_of(PyObject** argv, Py_ssize_t n):
    cdef Py_ssize_t i
    out = PyTuple_New(n)
    for i in range(n):
        Py_INCREF(<object>argv[i])
        PyTuple_SET_ITEM(out, i, <object>argv[i])
    return out


# ---- METH_FASTCALL methods ------------------------------------------------------------------
# Measured on the project's 2-core VM: a Cython ``def info(self, fmt, *args)`` builds a
# tuple per call, and a signature with named optional arguments still parses and
# reference-counts each of them; a plain METH_FASTCALL function does neither.

cdef object _fast_debug(object self, PyObject** argv, Py_ssize_t nargs):
    cdef LoggerCore lg = <LoggerCore>self
    if lg._level <= 10:
        lg._emit_array(10, lg._t10, argv, nargs)
    return None


cdef object _fast_info(object self, PyObject** argv, Py_ssize_t nargs):
    cdef LoggerCore lg = <LoggerCore>self
    if lg._level <= 20:
        lg._emit_array(20, lg._t20, argv, nargs)
    return None


cdef object _fast_warning(object self, PyObject** argv, Py_ssize_t nargs):
    cdef LoggerCore lg = <LoggerCore>self
    if lg._level <= 30:
        lg._emit_array(30, lg._t30, argv, nargs)
    return None


cdef object _fast_error(object self, PyObject** argv, Py_ssize_t nargs):
    cdef LoggerCore lg = <LoggerCore>self
    if lg._level <= 40:
        lg._emit_array(40, lg._t40, argv, nargs)
    return None


cdef object _fast_critical(object self, PyObject** argv, Py_ssize_t nargs):
    cdef LoggerCore lg = <LoggerCore>self
    if lg._level <= 50:
        lg._emit_array(50, lg._t50, argv, nargs)
    return None


cdef PyMethodDef _fast_defs[5]


cdef _install_fast_methods():
    cdef PyTypeObject* tp = <PyTypeObject*>LoggerCore
    cdef int i
    _fast_defs[0].ml_meth = <void*>_fast_debug
    _fast_defs[1].ml_meth = <void*>_fast_info
    _fast_defs[2].ml_meth = <void*>_fast_warning
    _fast_defs[3].ml_meth = <void*>_fast_error
    _fast_defs[4].ml_meth = <void*>_fast_critical
    for i, name in enumerate(_FAST_NAMES):
        _fast_defs[i].ml_name = name   # module-level bytes constants: never freed
        _fast_defs[i].ml_flags = METH_FASTCALL
        _fast_defs[i].ml_doc = NULL
        descr = PyDescr_NewMethod(tp, &_fast_defs[i])
        # The type dict of an extension type is not writable from Python; from C it is,
        # and PyType_Modified drops the method caches that may hold the old entries.
        PyDict_SetItem(<object>tp.tp_dict, name.decode(), descr)
    PyType_Modified(tp)


_FAST_NAMES = (b"debug", b"info", b"warning", b"error", b"critical")
_install_fast_methods()


cdef tuple _normalize(_Format f, tuple args):
    """Replace every argument the inline encoder cannot take by a marker str.

    Any other type is converted here, at call time, by its own conversion spec
    (``'%5.1f' % (Decimal('1.25'),)``), so the decoder only ever substitutes text; a call
    that '%' would reject raises its TypeError here.
    """
    out = list(args)
    shape = f.shape
    fmt = f.fmt
    for i, a in enumerate(args):
        t = type(a)
        if t is int:
            if -(1 << 63) <= a < (1 << 63):
                tag = T_INT
            else:
                tag = T_BIGINT
        elif t is str:
            try:
                a.encode("utf-8")
                tag = T_STR
            except UnicodeEncodeError:
                tag = T_SURR
        elif t is float:
            tag = T_FLOAT
        elif t is bool:
            tag = T_TRUE if a else T_FALSE
        elif a is None:
            tag = T_NONE
        elif t is bytes:
            tag = T_BYTES
        else:
            tag = -1
        if tag == T_FLOAT and f.accept[i] & _A_FINITE and not isfinite(a):
            tag = -1  # converted below, which raises as '%' does
        if tag >= 0 and (f.accept[i] >> tag) & 1:
            if tag == T_BIGINT:
                out[i] = _BigInt(str(a))
            elif tag == T_SURR:
                out[i] = _Surr(a)
            continue
        start, end, _ = shape.specs[i]
        out[i] = _Text(fmt[start:end] % (a,))
    return tuple(out)


cdef Py_ssize_t _size_bound(tuple args):
    cdef Py_ssize_t need = 15
    for a in args:
        if isinstance(a, str):
            need += 6 + len((<str>a).encode("utf-8", "surrogatepass"))
        elif isinstance(a, bytes):
            need += 6 + len(<bytes>a)
        else:
            need += 11
    return need


def _encode_one(a):
    """One argument of a fast type in record layout (slow path helper)."""
    t = type(a)
    if t is int:
        z = (a << 1) ^ (a >> 63)
        return bytes([T_INT]) + _varint(z)
    if t is float:
        import struct
        return bytes([T_FLOAT]) + struct.pack("<d", a)
    if t is str or t is _Text:
        # T_TEXT is strict UTF-8. Text made at call time can hold lone surrogates (a
        # preformatted message, a repr): they are stored escaped, as the decoders' text
        # output (UTF-8 with backslashreplace) would print them anyway.
        b = (<str>a).encode("utf-8", "strict" if t is str else "backslashreplace")
        return bytes([T_STR if t is str else T_TEXT]) + _varint(len(b)) + b
    if t is bytes:
        return bytes([T_BYTES]) + _varint(len(a)) + a
    if t is bool:
        return bytes([T_TRUE if a else T_FALSE])
    if a is None:
        return bytes([T_NONE])
    raise TypeError(f"cannot encode {t.__name__}")


def _caller():
    """(file, line) of the innermost Python frame: the code that called the logger.

    Only read when a format is registered, once per format; the hot path never looks.
    """
    f = sys._getframe(0)
    here = __file__
    while f is not None and (f.f_code.co_filename == here or
                             f.f_code.co_filename.endswith(("nanolog/logger.py",
                                                            "nanolog/handler.py"))):
        f = f.f_back
    if f is None:
        return "", 0
    return f.f_code.co_filename, f.f_lineno or 0


if sys.byteorder != "little":
    raise ImportError("nanolog writes floats in host order and supports little-endian hosts only")
