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


def __getattr__(name: str):
    # The same lookup as microrpc.__version__ (see microrpc/__init__.py for why it is lazy
    # and where the version is written); each package asks the distribution itself rather
    # than importing another package for one string.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("microrpc-toolkit")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
