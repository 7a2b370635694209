"""Type stubs for a ref call's usual case (see _hotref.pyx)."""
from typing import Any, Callable

class FastCall:
    def __init__(self, session: Any, ids: Any, locations: dict, clients: dict, faults: Any,
                 current: Any, ref_type: type, lost: object, result: Callable,
                 call_name: str, default_timeout: float,
                 monotonic: Callable[[], float]) -> None: ...
    def __call__(self, pid: int, method: str, args: tuple, kwargs: dict,
                 timeout: float | None) -> Any: ...
