"""breakwater: credit-based overload control (Breakwater, OSDI'20) as pure policy objects.

Nothing here does I/O or reads a clock: the server and client feed events and timestamps in.
Server side, one policy per ``microrpc.Server``::

    microrpc.Server(addr, overload=breakwater.Breakwater())   # or NoControl(), AQMOnly(),
                                                               # ConcurrencyLimit(n), your own
                                                               # OverloadPolicy subclass

Client side, one ``ClientCredits`` per logical client session. See docs/breakwater.md.
"""
from ._client import (
    CLIENT_TABLE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_NS,
    ClientCredits,
    ClientEvent,
    ClientState,
    ClientStatistics,
    Submit,
)
from ._policy import (
    DEFAULT_AQM_THRESHOLD_NS,
    DEFAULT_TARGET_DELAY_NS,
    AQMOnly,
    ConcurrencyLimit,
    NoControl,
    OverloadPolicy,
    PolicyStatistics,
)
from ._server import SESSION_TABLE, Breakwater, SessionError, SessionEvent, SessionState

__all__ = [
    # server-side policies
    "OverloadPolicy",
    "Breakwater",
    "NoControl",
    "AQMOnly",
    "ConcurrencyLimit",
    "PolicyStatistics",
    "SessionError",
    "SessionState",
    "SessionEvent",
    "SESSION_TABLE",
    "DEFAULT_TARGET_DELAY_NS",
    "DEFAULT_AQM_THRESHOLD_NS",
    # client side
    "ClientCredits",
    "ClientStatistics",
    "ClientState",
    "ClientEvent",
    "Submit",
    "CLIENT_TABLE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_WAIT_NS",
]
