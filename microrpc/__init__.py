"""microrpc: microsecond RPC for Python.

A Cython protocol core and native TCP/Unix-socket transport, a server that runs handlers on
one epoll I/O thread, and clients for threads (``Client``) and asyncio (``AsyncClient``).
See DESIGN.md for the architecture and docs/wire.md for the wire format.
"""
from microrpc.errors import (
    AuthenticationError,
    ConnectionLost,
    DeadlineExceeded,
    MessageTooLarge,
    MethodNotFound,
    Overloaded,
    ProtocolError,
    RemoteError,
    RpcError,
)
from microrpc.aio import AsyncClient
from microrpc.auth import new_auth_key
from microrpc.client import DEFAULT_TIMEOUT, Client, ClientStatistics
from microrpc.codecs import DecodeLimits
from microrpc.server import CallContext, DeferredReply, Server, ServerStatistics
from microrpc.service import expose

__all__ = [
    "Client",
    "AsyncClient",
    "ClientStatistics",
    "Server",
    "ServerStatistics",
    "CallContext",
    "DeferredReply",
    "expose",
    "DEFAULT_TIMEOUT",
    "DecodeLimits",
    "new_auth_key",
    "bench",
    "RpcError",
    "RemoteError",
    "DeadlineExceeded",
    "Overloaded",
    "MethodNotFound",
    "ConnectionLost",
    "ProtocolError",
    "MessageTooLarge",
    "AuthenticationError",
]


def __getattr__(name: str):
    # ``microrpc.bench`` is the load generator package, ``microrpc.loadgen``: a tool that
    # needs hdrhistogram, which a program that only makes or serves calls should not pay
    # to import. It is imported here on first use, then kept as a plain attribute.
    if name == "bench":
        from microrpc import loadgen
        globals()["bench"] = loadgen
        return loadgen
    if name == "__version__":
        return _distribution_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"bench", "__version__"})


def _distribution_version() -> str:
    # The version is written once, in pyproject.toml, and read back from the installed
    # distribution's metadata (the three packages ship as one distribution, so they share
    # it; nanolog and breakwater ask the same way). Looked up on first use because
    # importlib.metadata costs ~40 ms of imports that a program making calls need not pay.
    # A source tree on sys.path without an install has no metadata: "0+unknown" says so.
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("microrpc-toolkit")
    except PackageNotFoundError:
        return "0+unknown"
