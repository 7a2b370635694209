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
