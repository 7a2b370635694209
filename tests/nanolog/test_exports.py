"""The public surface: declared once in nanolog.__all__, stubs beside compiled modules."""
import importlib
from pathlib import Path

import nanolog


def test_all_names_exist_and_nothing_else_public_is_exported():
    assert len(set(nanolog.__all__)) == len(nanolog.__all__)
    for name in nanolog.__all__:
        assert hasattr(nanolog, name), name
    public = {n for n in vars(nanolog) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(nanolog, n)).__name__ == "module"}
    assert public - modules == set(nanolog.__all__)


def test_every_compiled_module_has_a_stub_and_the_package_is_typed():
    pkg = Path(nanolog.__file__).parent
    assert (pkg / "py.typed").exists()
    for name in ("_core", "_decode"):
        mod = importlib.import_module(f"nanolog.{name}")
        assert not mod.__file__.endswith(".py"), f"{name} is not compiled"
        assert (pkg / f"{name}.pyi").exists(), name
