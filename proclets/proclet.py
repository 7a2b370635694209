"""The Proclet base class, the ``blocking`` marker, and how a runtime finds a class and its
callable methods.

A proclet's state is its instance attributes (``vars(obj)``), or only those named in the
class's ``__proclet_state__`` when it declares one; attributes named ``_proclet_*`` belong
to the package (the ids of the calls the proclet makes itself) and always travel with it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, Callable

from proclets.errors import NotImportable

__all__ = ["Proclet", "blocking", "class_path", "load_class", "method_of", "get_state",
           "set_state"]

_INTERNAL = "_proclet_"
# A class defined in a script run as __main__ travels as its file's path: a runtime imports
# the file under this name (so its ``if __name__ == "__main__":`` block does not run).
_MAIN_PREFIX = "file:"
_MAIN_MODULE = "__proclets_main__"


class Proclet:
    """Subclass this to make a proclet. ``cluster.spawn(MyClass, *args)`` runs
    ``MyClass(*args)`` in a runtime and returns a :class:`proclets.ProcletRef`; the ref calls
    its public methods (names not starting with ``_``). A method runs on the runtime's I/O
    thread unless marked :func:`blocking`; one call at a time per proclet."""

    __proclet_state__: tuple[str, ...] | None = None


def blocking(function: Callable) -> Callable:
    """Run this proclet method on the runtime's worker threads, not its I/O thread: for a
    method that sleeps, waits, does I/O, runs long, or calls other proclets (a call from
    the I/O thread would stop the runtime serving until it returns, and a call back into
    that runtime would never be served)."""
    function.__proclet_blocking__ = True
    return function


def class_path(cls: type) -> str:
    """How runtimes find ``cls``: ``module:qualname`` (``file:PATH:qualname`` for a class of
    a script run as ``__main__``). NotImportable if they could not."""
    if not (isinstance(cls, type) and issubclass(cls, Proclet)):
        raise TypeError(f"{cls!r} is not a subclass of proclets.Proclet")
    if "<locals>" in cls.__qualname__:
        raise NotImportable(f"{cls.__qualname__} is defined inside a function: runtimes "
                            f"cannot import it; define it at the top level of a module")
    module = cls.__module__
    if module in ("__main__", _MAIN_MODULE):
        main = sys.modules.get(module)
        path = getattr(main, "__file__", None)
        if module == _MAIN_MODULE:
            path = getattr(main, "__proclets_file__", path)
        if not path:
            raise NotImportable(f"{cls.__qualname__} is defined in an interactive session: "
                                f"runtimes cannot import it; put it in a module")
        return f"{_MAIN_PREFIX}{path}:{cls.__qualname__}"
    return f"{module}:{cls.__qualname__}"


def load_class(path: str) -> type:
    """The class ``class_path`` named. NotImportable with the reason if it cannot be."""
    if path.startswith(_MAIN_PREFIX):
        filename, _, qualname = path[len(_MAIN_PREFIX):].rpartition(":")
        module = sys.modules.get(_MAIN_MODULE)
        if module is None or getattr(module, "__proclets_file__", None) != filename:
            try:
                spec = importlib.util.spec_from_file_location(_MAIN_MODULE, filename)
                module = importlib.util.module_from_spec(spec)
                module.__proclets_file__ = filename
                sys.modules[_MAIN_MODULE] = module
                spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(_MAIN_MODULE, None)
                raise NotImportable(f"cannot import the script {filename}: {exc}") from None
    else:
        name, _, qualname = path.partition(":")
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise NotImportable(f"runtimes cannot import module {name!r} ({exc}); it must "
                                f"be on their path (Cluster.local(pythonpath=...), "
                                f"PROCLETS_PATH or PYTHONPATH)") from None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, Proclet)):
        raise NotImportable(f"{path} is not a proclets.Proclet subclass")
    return obj


# class -> {method name: (function, blocking)}: looked up on every call, so cached.
_methods: dict[type, dict[str, tuple[Callable, bool]]] = {}


def method_table(cls: type) -> dict[str, tuple[Callable, bool]]:
    """The cache :func:`method_of` fills for ``cls`` (a runtime's entry keeps it, to look
    a call's method up without calling method_of)."""
    table = _methods.get(cls)
    if table is None:
        table = _methods[cls] = {}
    return table


def method_of(cls: type, name: str) -> tuple[Callable, bool] | None:
    """The function for a remote call of ``name`` and whether it is blocking, or None if
    ``name`` is not callable remotely (private, missing, or not a method)."""
    try:
        return _methods[cls][name]
    except (KeyError, TypeError):          # not cached yet, or a name that is no str
        pass
    if not isinstance(name, str) or name.startswith("_"):
        return None
    table = method_table(cls)
    found = table.get(name)
    if found is None:
        function = getattr(cls, name, None)
        if not callable(function) or isinstance(function, type):
            return None
        found = table[name] = (function, bool(getattr(function, "__proclet_blocking__",
                                                      False)))
    return found


def get_state(obj: Proclet) -> dict[str, Any]:
    """The attributes that migrate (see the module docstring)."""
    attrs = vars(obj)
    declared = type(obj).__proclet_state__
    if declared is None:
        return dict(attrs)
    state = {name: attrs[name] for name in declared if name in attrs}
    state.update((k, v) for k, v in attrs.items() if k.startswith(_INTERNAL))
    return state


def set_state(cls: type, state: dict[str, Any]) -> Proclet:
    """An instance of ``cls`` with ``state`` (its ``__init__`` is not run again)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj
