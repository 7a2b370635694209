"""Every microrpc server and client of the proclets package is made here, with the cluster
key: runtimes, the controller and refs talk only through these two functions, and the one
place that unpickles (a migration's install) is a method of a server made by :func:`serve`.

The cluster key (bytes) is the pre-shared key of microrpc's authenticated handshake
(``auth_key=``): a peer that cannot prove it holds the key exchanges no frame with a
runtime or the controller, so the install message (and its pickle) comes only from a
runtime of the cluster. The handshake authenticates; it does not encrypt.
"""
from __future__ import annotations

from typing import Any

import microrpc

__all__ = ["MAX_MESSAGE", "connect", "serve"]

# A migration sends a proclet's state in one message: allow states up to 256 MiB (the
# benchmark's largest is 16 MiB; microrpc's default limit is 16 MiB, too small for that plus
# its header).
MAX_MESSAGE = 256 << 20


def serve(address: str, key: bytes | None, **options: Any) -> microrpc.Server:
    """A microrpc server for the cluster (runtime or controller)."""
    options.setdefault("max_message_size", MAX_MESSAGE)
    return microrpc.Server(address, auth_key=key, **options)


def connect(address: str, key: bytes | None, **options: Any) -> microrpc.Client:
    """A microrpc client to a runtime or the controller of the cluster."""
    options.setdefault("max_message_size", MAX_MESSAGE)
    return microrpc.Client(address, auth_key=key, **options)
