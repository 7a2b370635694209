"""A proclet's state on the wire, and the statistics of one migration.

The declared state and the proclet's completion table are pickled (protocol 5) together;
large bytes-like attributes go out of band (``buffer_callback``) and travel as separate raw
items of the install message, so they are copied only by the transport's encoding and
not into the pickle as well: a bytes attribute arrives as the very bytes object the
transport decoded (no copy on load), a bytearray is copied once (it must be mutable), a
memoryview arrives as bytes. Other objects (nested buffers, a dict of small objects) are
pickled in band; NumPy arrays go out of band on their own (protocol 5).

Unpickling runs code: :func:`load` is called only by a runtime's install method, served by
the cluster's authenticated server (proclets._net).
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any

from microrpc.exactly_once import CompletionTable

__all__ = ["MigrationStats", "dump", "load", "OUT_OF_BAND_MIN"]

# Bytes-like attributes at least this large go out of band: below it, a separate item
# costs more than the copy it saves.
OUT_OF_BAND_MIN = 4096
_KINDS = {bytearray: "bytearray", memoryview: "memoryview"}


@dataclasses.dataclass(frozen=True)
class MigrationStats:
    """One migration, phase by phase (seconds), as ``Cluster.migrate`` returns it."""
    pid: int
    source: str                # runtime addresses
    destination: str
    bytes: int                 # pickle header + out-of-band buffers
    buffers: int               # how many out-of-band buffers
    drain: float               # stop admitting, wait for running calls to end
    serialize: float
    transfer: float            # source -> destination and back, less install + directory
    install: float             # unpickle and install at the destination
    directory: float           # the compare-and-swap of the directory at the controller
    total: float               # at the source, from the request to the hand-off

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dump(state: dict[str, Any], table: CompletionTable) -> tuple[bytes, list, dict]:
    """(header, buffers, kinds) for the install message. ``table`` is sent without its lease
    check (a runtime's own function): :func:`load` plugs the destination's in."""
    kinds = {}
    shipped = {}
    for name, value in state.items():
        kind = type(value)
        if kind in (bytes, bytearray, memoryview) and len(value) >= OUT_OF_BAND_MIN:
            if kind is not bytes:
                kinds[name] = _KINDS[kind]
            value = pickle.PickleBuffer(value)
        shipped[name] = value
    buffers: list = []
    check = table._lease_valid
    table._lease_valid = None
    try:
        header = pickle.dumps((shipped, table), protocol=5,
                              buffer_callback=lambda b: buffers.append(b.raw()))
    finally:
        table._lease_valid = check
    return header, buffers, kinds


def load(header: bytes, buffers: list, kinds: dict, lease_valid) -> tuple[dict, CompletionTable]:
    """The state and completion table :func:`dump` wrote."""
    state, table = pickle.loads(header, buffers=buffers)
    if not isinstance(state, dict) or not isinstance(table, CompletionTable):
        raise ValueError("a migration header is (state dict, CompletionTable)")
    for name, kind in kinds.items():
        value = state.get(name)
        if kind == "bytearray":
            state[name] = bytearray(value)
        elif kind == "memoryview":
            state[name] = bytes(value)
    for name, value in state.items():
        if isinstance(value, memoryview) and name not in kinds:
            state[name] = bytes(value)       # a read-only buffer arrived as a view of bytes
    table._lease_valid = lease_valid
    return state, table
