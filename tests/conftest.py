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
