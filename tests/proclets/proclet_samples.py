"""Proclet classes for the tests (imported by the runtimes through the module path)."""
import threading

import proclets

# Per runtime process: a gate a held call waits on, opened by another proclet (Gatekeeper)
# on the same runtime; the proclet's own state stays picklable.
_GATE = threading.Event()
_STARTED = threading.Event()
RUNS = {"count": 0}         # calls of Counter.incr run in this process


class Counter(proclets.Proclet):
    def __init__(self, n=0):
        self.n = n

    def incr(self, k=1):
        self.n += k
        RUNS["count"] += 1
        return self.n

    def get(self):
        return self.n

    def fail(self, message):
        self.n += 1000             # the state change of a failing call is kept (it ran)
        raise ValueError(message)

    def incr_unsendable(self):
        self.n += 1
        return {self.n}            # a set: msgpack cannot send it

    @proclets.blocking
    def held_incr(self):
        _STARTED.set()
        if not _GATE.wait(10):
            raise TimeoutError("the gate never opened")
        self.n += 1
        return self.n

    @proclets.blocking
    def sleep_incr(self, seconds):
        import time
        time.sleep(seconds)
        self.n += 1
        return self.n

    def _private(self):
        return "never"


class Gatekeeper(proclets.Proclet):
    def started(self):
        return _STARTED.is_set()

    def open(self):
        _GATE.set()


class Narrow(proclets.Proclet):
    __proclet_state__ = ("kept",)

    def __init__(self):
        self.kept = 1
        self.scratch = 2

    def attrs(self):
        return sorted(k for k in vars(self) if not k.startswith("_"))


class Blob(proclets.Proclet):
    def __init__(self, size):
        self.data = bytes(size)
        self.buf = bytearray(size)

    def size(self):
        return [len(self.data), type(self.data).__name__, len(self.buf),
                type(self.buf).__name__]


class Caller(proclets.Proclet):
    """Calls another proclet (proclet-to-proclet, exactly once)."""

    def __init__(self, target):
        self.target = target

    @proclets.blocking
    def bump(self, k):
        return self.target.incr(k)

    def bump_inline(self, k):
        return self.target.incr(k)

    @proclets.blocking
    def bump_future(self, k):
        return self.target.incr.future(k).result()


def use_ref_in_another_process(blob, out):
    """A child process's part of test_cluster: unpickle a ref and call it twice."""
    import pickle
    ref = pickle.loads(blob)
    out.put([ref.incr(1), ref.incr(1)])
