# cython: language_level=3
"""Which proclet's turn the current thread runs, set by the runtime around every turn, so
that a ref used inside a proclet method numbers its calls with the proclet's own ids (a
worker's turn), and refuses to wait on the runtime's I/O thread (an inline turn).

Kept per thread in one dict, thread id -> the turn's :class:`proclets._hot.Entry` (a
worker's turn) or :data:`INLINE`. A process that hosts no proclets never fills it, so a
ref call there pays one test of an empty dict (a ``threading.local`` costs ~50 ns per
attribute, and the ref's usual case read two and the runtime's inline turn set two).
"""
from cpython.pythread cimport PyThread_get_thread_ident

__all__ = ["INLINE", "enter_turn", "leave_turn", "turn_here"]


class _Inline:
    def __repr__(self):
        return "INLINE"


#: The value of a thread running an inline turn (the runtime's I/O thread).
INLINE = _Inline()

cdef dict _turns = {}


cdef object here():
    if not _turns:
        return None
    return _turns.get(PyThread_get_thread_ident())


cdef int enter(object value) except -1:
    _turns[PyThread_get_thread_ident()] = value
    return 0


cdef int leave() except -1:
    _turns.pop(PyThread_get_thread_ident(), None)
    return 0


def turn_here():
    """The turn this thread runs: its entry (a worker's turn), INLINE, or None."""
    return here()


def enter_turn(value) -> None:
    """This thread starts a turn: ``value`` is its entry, or INLINE."""
    enter(value)


def leave_turn() -> None:
    """This thread's turn ended."""
    leave()
