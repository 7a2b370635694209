"""microrpc: microsecond RPC for Python.

A Cython protocol core and native TCP/Unix-socket transport, a server that runs handlers on
one epoll I/O thread, and clients for threads (``Client``) and asyncio (``AsyncClient``).
See DESIGN.md for the architecture and docs/wire.md for the wire format.
"""
from microrpc.errors import (
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
from microrpc.client import DEFAULT_TIMEOUT, Client, ClientStatistics
from microrpc.server import CallContext, DeferredReply, Server, ServerStatistics
from microrpc import loadgen as bench  # the open-loop load generator: microrpc.bench.run(...)

__all__ = [
    "Client",
    "AsyncClient",
    "ClientStatistics",
    "Server",
    "ServerStatistics",
    "CallContext",
    "DeferredReply",
    "DEFAULT_TIMEOUT",
    "bench",
    "RpcError",
    "RemoteError",
    "DeadlineExceeded",
    "Overloaded",
    "MethodNotFound",
    "ConnectionLost",
    "ProtocolError",
    "MessageTooLarge",
]
