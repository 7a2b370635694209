"""Services as classes: :func:`expose` marks the methods of a class that a server may serve,
and :func:`exposed_methods` finds them on an object (``Server.register_object`` uses it).

Nothing is served unless it is marked: an object passed to a server usually has helpers,
state and inherited methods that no client should reach. Names starting with ``_`` are
never served, even when marked (that is an error, not a silent skip), so a private helper
cannot be exposed by a stray decorator.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

__all__ = ["expose", "exposed_methods"]

# The attribute expose() sets on a function; its value is an _Exposed.
_MARK = "__microrpc_expose__"


@dataclass(frozen=True)
class _Exposed:
    name: str | None        # the method's name on the wire (None: the attribute's)
    blocking: bool
    context: bool
    idempotent: bool


class ExposedMethod(NamedTuple):
    """A method :func:`exposed_methods` found: how to register it."""
    name: str               # the served name, prefix included
    function: Callable      # the bound method
    blocking: bool
    context: bool
    idempotent: bool


def expose(function: Callable | None = None, *, name: str | None = None,
           blocking: bool = False, context: bool = False, idempotent: bool = True):
    """Mark a method for ``Server.register_object``: ``@expose``, or ``@expose(name=...,
    blocking=True, context=True, idempotent=False)`` with the meanings of
    ``Server.register``. ``name`` replaces the attribute's name on the wire (the object's
    prefix still goes first)."""
    if name is not None and (not isinstance(name, str) or not name or name.startswith("_")):
        raise ValueError(f"expose(name={name!r}): a served name is a non-empty str that "
                         f"does not start with '_'")

    def mark(fn: Callable) -> Callable:
        target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        if not callable(target):
            raise TypeError(f"@expose marks a function or method, not {fn!r}")
        setattr(target, _MARK, _Exposed(name, bool(blocking), bool(context),
                                        bool(idempotent)))
        return fn

    return mark(function) if function is not None else mark


def exposed_methods(obj: Any, prefix: str = "") -> list[ExposedMethod]:
    """An :class:`ExposedMethod` for each method of ``obj`` marked with :func:`expose`, in
    name order. Raises ValueError for a marked method whose name starts with ``_`` and when
    nothing is marked."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if isinstance(obj, type):
        raise TypeError(f"register an instance ({obj.__name__}()), not the class "
                        f"{obj.__name__}")
    found = []
    for attr in sorted(dir(type(obj))):
        # Static lookup: reading every attribute through getattr would run properties.
        raw = inspect.getattr_static(obj, attr, None)
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        mark = getattr(raw, _MARK, None) if callable(raw) else None
        if not isinstance(mark, _Exposed):
            continue
        if attr.startswith("_"):
            raise ValueError(f"{type(obj).__name__}.{attr} is marked with @expose, but "
                             f"names starting with '_' are never served")
        found.append(ExposedMethod(prefix + (mark.name or attr), getattr(obj, attr),
                                   mark.blocking, mark.context, mark.idempotent))
    if not found:
        raise ValueError(f"{type(obj).__name__} object has no method marked with "
                         f"@microrpc.expose: nothing to serve")
    return found
