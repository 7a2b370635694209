"""Type stubs for the runtime's per-call path (see _hot.pyx)."""
from typing import Any, Callable

from microrpc.exactly_once import CompletionTable

class Unavailable(Exception): ...

class Entry:
    pid: Any
    state: Any
    obj: Any
    cls: Any
    path: Any
    epoch: Any
    queue: Any
    drained: Any
    moved_to: Any
    table: CompletionTable | None
    running: bool
    @property
    def methods(self) -> dict[str, tuple[Callable, bool]] | None: ...
    def __init__(self, pid: int) -> None: ...

def turn(e: Entry, fn: Callable, args: Any, kwargs: Any, lease: Any, seq: Any,
         ack: Any) -> list: ...

def inline_turn(e: Entry, fn: Callable, args: Any, kwargs: Any, lease: Any, seq: Any,
                ack: Any) -> list: ...

class CallHandler:
    def __init__(self, entries: dict, serving: Any, method_of: Callable,
                 refusal: Callable, queued: Callable) -> None: ...
    def __call__(self, ctx: Any, pid: Any, method: Any, args: Any, kwargs: Any, lease: Any,
                 seq: Any, ack: Any) -> Any: ...
