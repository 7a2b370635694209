"""Settings for the whole test suite.

Every test runs with a fresh temporary directory as its working directory. Tests that start
Python subprocesses (`python -c ...`, `python -m ...`) would otherwise run them from the
repository root, where the child puts the current directory first on sys.path and imports
the *source tree* (no compiled modules in a non-editable install) instead of the installed
package. It also keeps files that tests write out of the checkout.
"""
import pytest


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def source_tree_in_cwd(tmp_path):
    """Decoy ``microrpc``, ``breakwater`` and ``nanolog`` packages in the working directory
    (``tmp_path``), standing in for a source checkout without compiled modules: a Python
    child that imports from its working directory instead of the installed package fails."""
    for name in ("microrpc", "breakwater", "nanolog"):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(
            f"raise ImportError('imported the decoy {name} in the working directory')\n")
    return tmp_path


class ManualClock:
    """A clock in seconds that moves only when a test sets or advances ``t``."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    """A ManualClock: pass it where an API takes a ``clock`` callable (seconds)."""
    return ManualClock()
