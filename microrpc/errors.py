"""The errors microrpc raises. Every call ends in a result or exactly one of these.

All of them derive from :class:`RpcError`, so ``except microrpc.RpcError`` catches every
failure of the RPC layer while still letting a caller tell them apart.
"""
from __future__ import annotations

__all__ = [
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


class RpcError(Exception):
    """Base class of every error raised by microrpc."""


class RemoteError(RpcError):
    """The remote handler raised an exception.

    ``remote_type`` is the name of the exception class on the server, ``message`` its
    ``str()``, and ``remote_traceback`` the formatted traceback text when the server was
    configured to send tracebacks (off by default: tracebacks can leak server internals).
    The remote exception is never reconstructed as an object: that would need pickle.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str | None = None):
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback
        return text


class DeadlineExceeded(RpcError, TimeoutError):
    """The call's deadline passed before a result arrived (also a builtin TimeoutError)."""


class Overloaded(RpcError):
    """Overload control refused the call.

    ``side`` is ``"client"`` when the client gave up waiting for credit (or its local queue
    was full) and ``"server"`` when the server rejected the request. Either way the request
    did not run, so it is safe to retry later.
    """

    def __init__(self, message: str, side: str = "server"):
        super().__init__(message)
        self.side = side


class MethodNotFound(RpcError):
    """The server has no registered method of that name."""


class ConnectionLost(RpcError):
    """The connection failed or closed before the call completed, or could not be made.

    A call that fails this way may or may not have run on the server.
    """


class ProtocolError(RpcError):
    """Bytes that are not valid microrpc frames, or a request the peer could not decode."""


class MessageTooLarge(RpcError):
    """A request or response was over the ``max_message_size`` limit (it was not sent)."""


class AuthenticationError(RpcError):
    """The connection's pre-shared-key handshake failed (``auth_key=``; microrpc/auth.py).

    The keys differ, one side has a key and the other has none, or the peer is not a
    microrpc server. Nothing was sent on the connection, so no call ran. Retrying with the
    same keys fails the same way.
    """
