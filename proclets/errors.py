"""The errors proclets raise (besides microrpc's own RpcError family, which a call through a
ref can also end with: DeadlineExceeded when its deadline passes)."""
from __future__ import annotations

from microrpc.errors import RemoteError

__all__ = ["CallError", "MigrationError", "NotImportable", "OutcomeUnknown", "ProcletError",
           "ProcletLost"]


class ProcletError(Exception):
    """Base class of the errors of the proclets package."""


class ProcletLost(ProcletError):
    """The proclet's runtime died with its state (or no such proclet exists). It is never
    re-created behind its callers' backs: every call to it ends with this error."""


class OutcomeUnknown(ProcletError):
    """The call's client lease expired before it could be confirmed (RIFL's answer when the
    completion record may be gone): it may or may not have run."""


class MigrationError(ProcletError):
    """A migration could not be done; the proclet serves from where it was before."""


class NotImportable(ProcletError):
    """A proclet class that runtimes cannot import (defined in a test body or a function,
    or in a module not on the runtimes' path)."""


class CallError(RemoteError):
    """The proclet method raised an exception (``remote_type`` names its class). This is
    the call's outcome: a retry of the same call gets the same error, it does not run again."""
