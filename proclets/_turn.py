"""Which proclet's turn the current thread runs (set by the runtime around every call), so
that a ref used inside a proclet method numbers its calls with the proclet's own ids, and
refuses to wait on the runtime's I/O thread."""
import threading


class _Current(threading.local):
    entry = None       # the runtime's entry of the proclet running on this thread, or None
    inline = False     # True on the runtime's I/O thread


current = _Current()
