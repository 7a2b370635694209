"""The ``proclets`` command: help, version, one-line errors for wrong arguments."""
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "proclets", *args], capture_output=True,
                          text=True, timeout=60)


def test_help_and_version():
    out = run("--help")
    assert out.returncode == 0 and "controller" in out.stdout and "runtime" in out.stdout
    assert run("--version").stdout.startswith("proclets, version ")
    assert "--controller" in run("runtime", "--help").stdout
    assert "--listen" in run("controller", "--help").stdout


@pytest.mark.parametrize("args, message", [
    (["controller"], "Missing option '--listen'"),
    (["controller", "--listen", "nonsense"], "--listen"),
    (["runtime", "--controller", "tcp://127.0.0.1:1", "--workers", "0"], "--workers"),
    (["controller", "--listen", "tcp://127.0.0.1:0", "--key-file", "/nonexistent/k"],
     "cannot read"),
])
def test_wrong_arguments_get_a_clear_error(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_a_runtime_without_a_controller_says_so(tmp_path):
    out = run("runtime", "--controller", "tcp://127.0.0.1:1", "--orphan-timeout", "0.5")
    assert out.returncode == 1
    assert "cannot register" in out.stderr and "Traceback" not in out.stderr
