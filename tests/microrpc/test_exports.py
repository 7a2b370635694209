"""The public surface: declared once in microrpc.__all__ (and microrpc.bench's), stubs beside
compiled modules, and an ``import microrpc`` that does not load the load generator's tools."""
import importlib
import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import microrpc

# The names DESIGN.md promises; the package may export more, never fewer.
CONTRACT = {
    "Client", "AsyncClient", "Server", "DEFAULT_TIMEOUT", "bench",
    "RpcError", "RemoteError", "DeadlineExceeded", "Overloaded", "MethodNotFound",
    "ConnectionLost", "ProtocolError", "MessageTooLarge",
}


def _public_non_modules(module: types.ModuleType) -> set[str]:
    return {n for n, v in vars(module).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType)}


def test_all_names_exist_and_nothing_else_public_is_exported():
    assert len(set(microrpc.__all__)) == len(microrpc.__all__)
    assert CONTRACT <= set(microrpc.__all__)
    for name in microrpc.__all__:
        assert hasattr(microrpc, name), name
    # bench is a module (loaded on first use); every other export is a class or value.
    assert _public_non_modules(microrpc) == set(microrpc.__all__) - {"bench"}


def test_bench_is_the_load_generator_package_and_is_listed_by_dir():
    assert microrpc.bench is importlib.import_module("microrpc.loadgen")
    assert "bench" in dir(microrpc)
    from microrpc import bench
    assert bench.run is microrpc.bench.run


def test_an_unknown_attribute_is_still_an_attribute_error():
    # The module __getattr__ that loads bench must not answer for anything else.
    with pytest.raises(AttributeError, match="no_such_name"):
        microrpc.no_such_name
    assert not hasattr(microrpc, "loadgen_procs")


def test_bench_all_is_its_whole_public_surface():
    bench = microrpc.bench
    assert len(set(bench.__all__)) == len(bench.__all__)
    assert _public_non_modules(bench) == set(bench.__all__)
    for name in ("LoadSpec", "run", "LoadResult", "AccountingError", "fetch_server_stats"):
        assert name in bench.__all__, name


def test_every_compiled_module_has_a_stub_and_the_package_is_typed():
    pkg = Path(microrpc.__file__).parent
    assert (pkg / "py.typed").exists()
    compiled = sorted({p.name.split(".")[0] for p in pkg.iterdir()
                       if p.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))})
    # Every compiled module, found on disk, so that a new one without a stub fails here.
    assert {"_core", "_native", "_clientcore", "_dispatch"} <= set(compiled), compiled
    for name in compiled:
        mod = importlib.import_module(f"microrpc.{name}")
        assert not mod.__file__.endswith(".py"), f"{name} is not compiled"
        assert (pkg / f"{name}.pyi").exists(), name


PROBE = """
import json, sys
import microrpc
heavy = lambda: sorted(m for m in sys.modules if m.split(".")[0] in ("hdrh", "rich"))
before = {"heavy": heavy(), "loadgen": "microrpc.loadgen" in sys.modules}
microrpc.bench.LoadSpec
after = {"heavy": heavy(), "loadgen": "microrpc.loadgen" in sys.modules}
print(json.dumps({"before": before, "after": after}))
"""


def test_import_microrpc_loads_neither_hdrh_nor_rich(tmp_path):
    # A fresh interpreter (this one has long imported everything), started in an empty
    # directory so that it imports the installed package, not a source tree in the cwd.
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["before"] == {"heavy": [], "loadgen": False}
    # The probe can see a heavy import: touching microrpc.bench loads hdrh (not rich, which
    # only the command line's report needs).
    assert seen["after"]["loadgen"] is True
    assert "hdrh" in seen["after"]["heavy"]
    assert not any(m.startswith("rich") for m in seen["after"]["heavy"])
