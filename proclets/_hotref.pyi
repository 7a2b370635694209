"""Type stubs for a ref call's usual case (see _hotref.pyx)."""
from typing import Any, Callable

class MethodCall:
    _ref: Any
    _name: str
    def __init__(self, ref: Any, name: str) -> None: ...
    def __call__(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any: ...

class FastCall:
    def __init__(self, session: Any, ids: Any, locations: dict, clients: dict, faults: Any,
                 ref_type: type, lost: object, result: Callable,
                 call_name: str, default_timeout: float,
                 monotonic: Callable[[], float]) -> None: ...
