"""Shared fixtures for the nanolog tests."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The fuzzing helpers (crafting files, mutations, the check both decoders must pass) live
# in fuzz/ at the repository root, next to the long-run script that uses them too.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))


@pytest.fixture
def logpath(tmp_path):
    return tmp_path / "app.nlog"


def _run_child(code: str, *args: str, timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def run_child():
    """Run Python code in a fresh interpreter; returns the CompletedProcess."""
    return _run_child


@pytest.fixture
def as_tuple():
    """The fields a decoder must agree on, for comparing decoders record by record."""
    from nanolog_check import record_key
    return record_key


@pytest.fixture(scope="session")
def fuzz_seeds():
    """Small logs from the real writer (and one crafted) that the fuzz tests mutate."""
    import nanolog_mutate
    return nanolog_mutate.seed_logs()
