"""Settings for the whole test suite.

Tests that start Python subprocesses (`python -c ...`, `python -m ...`) run them from the
repository root. Without PYTHONSAFEPATH, such a child puts the current directory first on
sys.path and imports the *source tree* (which has no compiled modules in a non-editable
install) instead of the installed package. Python 3.11+ honours it.
"""
import os

os.environ["PYTHONSAFEPATH"] = "1"
