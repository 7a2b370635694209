"""Fixtures for the microrpc tests: servers on every native transport, stopped afterwards.

hypothesis is imported here, at collection, because pytest otherwise imports it lazily at the
end of the run, and CPython 3.11 can fail compiling ("AST constructor recursion depth
mismatch") while daemon threads from the tests are still alive.
"""
import os
import tempfile
import threading

import hypothesis  # noqa: F401  (see the docstring)
import pytest

import microrpc

TRANSPORTS = ["tcp", "unix"]


def address_for(transport: str) -> str:
    if transport == "tcp":
        return "tcp://127.0.0.1:0"
    path = os.path.join(tempfile.mkdtemp(prefix="mrpc"), "s.sock")
    return f"unix://{path}"


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def make_server(transport):
    """make_server(**options) -> a started Server with the standard test methods."""
    servers = []

    def make(address=None, start=True, **options):
        server = microrpc.Server(address or address_for(transport), **options)
        release = threading.Event()
        server.release = release       # tests set it to let blocked handlers finish
        server.register("echo", lambda x: x)
        server.register("add", lambda a, b: a + b)

        def fail(message):
            raise ValueError(message)

        server.register("fail", fail)
        server.register("wait", lambda seconds: release.wait(seconds), blocking=True)
        server.register("big", lambda n: b"x" * n)
        if start:
            server.start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.release.set()
        s.stop(grace=0.5)


@pytest.fixture
def server(make_server):
    return make_server()


def poll_until(predicate, timeout=5.0, what="condition"):
    """Wait for ``predicate()`` to hold, checking often, failing after ``timeout`` seconds."""
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def until():
    return poll_until


class RejectingPolicy:
    """A minimal overload policy that hands out no credits and admits only every
    ``admit_every``-th request (0: none); ``seen`` counts the requests it judged."""
    uses_credits = False
    tick_interval_ns = 0

    def __init__(self, admit_every=0):
        self.admit_every = admit_every
        self.seen = 0

    def open_session(self, sid, now):
        return 0

    def close_session(self, sid, now):
        pass

    def on_request(self, sid, demand, now, delay):
        self.seen += 1
        return bool(self.admit_every) and (self.seen - 1) % self.admit_every == 0

    def on_reject(self, sid, now):
        return 0

    def on_complete(self, sid, now):
        return 0

    def on_tick(self, now, delay):
        return []

    def statistics(self):
        return {"seen": self.seen}


@pytest.fixture
def rejecting_policy():
    """RejectingPolicy(admit_every=0): a policy for servers that must say Overloaded."""
    return RejectingPolicy


def blocked_in_poll(thread):
    """True once ``thread`` sleeps in poll/epoll/select in the kernel (Linux /proc). Where
    that cannot be read, True as soon as the thread runs: the test then checks less."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
            wchan = f.read()
    except OSError:
        return thread.is_alive()
    if wchan in ("", "0"):
        return thread.is_alive()
    return "poll" in wchan or "select" in wchan


@pytest.fixture
def in_kernel_wait():
    """in_kernel_wait(thread) -> True once the thread sleeps in poll/select (no sleeps in
    tests: poll this with ``until``)."""
    return blocked_in_poll
