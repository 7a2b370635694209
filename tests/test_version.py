"""One version for the distribution: each package's ``__version__`` and both commands'
``--version`` are the installed metadata's, which pyproject.toml sets."""
import importlib
import importlib.metadata
import subprocess
import sys

import pytest

DISTRIBUTION = "microrpc-toolkit"


@pytest.mark.parametrize("package", ["microrpc", "nanolog", "breakwater", "proclets"])
def test_dunder_version_is_the_distribution_version(package):
    mod = importlib.import_module(package)
    expected = importlib.metadata.version(DISTRIBUTION)
    assert mod.__version__ == expected
    # The lookup is lazy (PEP 562), so a missing name still fails as it should.
    with pytest.raises(AttributeError):
        getattr(mod, "no_such_attribute")


@pytest.mark.parametrize("command", ["microrpc", "nanolog", "proclets"])
def test_command_version_prints_the_distribution_version(command):
    # Run as `python -m PKG.cli` (the installed console script's entry point is the same
    # main(); the module form does not depend on the venv's bin/ being on PATH).
    proc = subprocess.run([sys.executable, "-c",
                           f"from {command}.cli import main; main(prog_name={command!r})",
                           "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{command}, version {importlib.metadata.version(DISTRIBUTION)}\n"


def test_license_file_is_in_the_distribution_metadata():
    dist = importlib.metadata.distribution(DISTRIBUTION)
    assert dist.metadata["License-Expression"] == "MIT"
    assert "LICENSE" in dist.metadata.get_all("License-File")
