"""The public surface: declared once in breakwater.__all__, a stub beside the compiled module,
and a package that depends on none of the project's others (DESIGN.md: microrpc imports
breakwater, never the reverse)."""
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import breakwater


def test_all_names_exist_and_nothing_else_public_is_exported():
    assert len(set(breakwater.__all__)) == len(breakwater.__all__)
    for name in breakwater.__all__:
        assert hasattr(breakwater, name), name
    public = {n for n, v in vars(breakwater).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public == set(breakwater.__all__)


def test_the_policies_a_server_takes_are_exported():
    for name in ("OverloadPolicy", "Breakwater", "NoControl", "AQMOnly", "ConcurrencyLimit",
                 "ClientCredits"):
        assert name in breakwater.__all__, name
    for policy in (breakwater.Breakwater, breakwater.NoControl, breakwater.AQMOnly,
                   breakwater.ConcurrencyLimit):
        assert issubclass(policy, breakwater.OverloadPolicy), policy


def test_the_compiled_module_has_a_stub_and_the_package_is_typed():
    pkg = Path(breakwater.__file__).parent
    assert (pkg / "py.typed").exists()
    mod = importlib.import_module("breakwater._server")
    assert not mod.__file__.endswith(".py"), "_server is not compiled"
    assert (pkg / "_server.pyi").exists()


def test_import_breakwater_loads_no_other_project_package(tmp_path):
    # A fresh interpreter in an empty directory: it imports the installed package, and
    # sys.modules shows what importing breakwater alone pulled in.
    code = ("import json, sys, breakwater; print(json.dumps(sorted({m.split('.')[0] "
            "for m in sys.modules} & {'microrpc', 'nanolog', 'proclets'})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
