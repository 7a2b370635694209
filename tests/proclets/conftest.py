"""Proclet tests: the sample classes in proclet_samples.py must be importable here and in
the runtimes (Cluster.local passes this process's sys.path on to them)."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _children() -> set[int]:
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


@pytest.fixture
def no_leaked_processes():
    """Fails the test if it leaves child processes behind."""
    before = _children()
    yield
    left = _children() - before
    assert not left, f"child processes left running: {sorted(left)}"


@pytest.fixture(scope="module")
def cluster():
    """Three runtimes shared by a module's tests (starting them costs ~0.7 s). Tests that
    kill processes start their own."""
    import proclets
    with proclets.Cluster.local(runtimes=3) as c:
        yield c
