"""Type stubs for the compiled Breakwater server policy (see _server.pyx)."""
from enum import IntEnum
from typing import ClassVar

from ._policy import OverloadPolicy, PolicyStatistics

__all__ = [
    "Breakwater",
    "SessionError",
    "SessionState",
    "SessionEvent",
    "SESSION_TABLE",
]

class SessionError(RuntimeError): ...

class SessionState(IntEnum):
    UNKNOWN = 0
    ACTIVE = 1
    DRAINED = 2
    CLOSED = 3

class SessionEvent(IntEnum):
    OPEN = 0
    REQUEST = 1
    REJECT = 2
    COMPLETE = 3
    GRANT = 4
    CLOSE = 5

SESSION_TABLE: dict[tuple[SessionState, SessionEvent], tuple[str, tuple[SessionState, ...]]]

# At run time a compiled class registered as a virtual subclass of OverloadPolicy
# (isinstance and issubclass hold); declared as a subclass here so that it type-checks
# wherever a policy is expected.
class Breakwater(OverloadPolicy):
    uses_credits: ClassVar[bool]
    # Parameters: read-only after construction.
    @property
    def target_delay_ns(self) -> int: ...
    @property
    def aqm_threshold_ns(self) -> int: ...
    @property
    def tick_interval_ns(self) -> int: ...  # type: ignore[override]
    @property
    def alpha(self) -> float: ...
    @property
    def beta(self) -> float: ...
    @property
    def md_floor(self) -> float: ...
    @property
    def min_pool(self) -> int: ...
    @property
    def max_window(self) -> int: ...
    @property
    def aqm_min_utilization(self) -> float: ...
    @property
    def utilization_window_ns(self) -> int: ...
    @property
    def slack_aqm_factor(self) -> float: ...
    @property
    def busy_run_requests(self) -> int: ...
    @property
    def utilization(self) -> float: ...
    def __init__(
        self,
        *,
        target_delay_ns: int = ...,
        aqm_threshold_ns: int | None = ...,
        tick_interval_ns: int = ...,
        alpha: float = ...,
        beta: float = ...,
        md_floor: float = ...,
        min_pool: int = ...,
        max_window: int = ...,
        aqm_min_utilization: float = ...,
        utilization_window_ns: int = ...,
        slack_aqm_factor: float = ...,
        busy_run_requests: int = ...,
    ) -> None: ...
    def open_session(self, sid: int, now_ns: int) -> int: ...
    def close_session(self, sid: int, now_ns: int) -> None: ...
    def on_request(self, sid: int, demand: int, now_ns: int, queue_delay_ns: int) -> bool: ...
    def on_reject(self, sid: int, now_ns: int) -> int: ...
    def on_complete(self, sid: int, now_ns: int) -> int: ...
    def on_tick(self, now_ns: int, queue_delay_ns: int) -> list[tuple[int, int]]: ...
    def statistics(self) -> PolicyStatistics: ...
    def session_state(self, sid: int) -> SessionState: ...
    def session_window(self, sid: int) -> int: ...
