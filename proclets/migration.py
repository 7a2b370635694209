"""A proclet's state on the wire, and the statistics of one migration.

The declared state and the proclet's completion table are pickled (protocol 5) together;
large bytes-like attributes go out of band (``buffer_callback``) and travel as separate raw
items of the install message, never inside the pickle. Other objects (nested buffers, a
dict of small objects) are pickled in band; NumPy arrays go out of band on their own.

The install message is one raw-codec microrpc request (msgpack would copy every buffer
twice more: a 16 MiB call took 60 ms with msgpack and 19 ms raw on the project's machine),
laid out as::

    +--------+---------+-----------+-----------+----------------+----------+-----+----------+
    | "PRCL" | format  | meta len  | meta      | pickle header  | buffer 0 | ... | buffer n |
    | 4 B    | u8 (=1) | u32 LE    | msgpack   | header_len B   | len0 B   |     | lenn B   |
    +--------+---------+-----------+-----------+----------------+----------+-----+----------+

    meta = [[pid, epoch, class path, source runtime id, kinds], header_len, [len0, ..., lenn]]

The sender copies each buffer once (into the message); the receiver reads the message into
one bytes object, slices the header and the buffers out of it without copying, and copies a
buffer once more into the attribute it becomes (bytes, or a bytearray, which must be
mutable anyway; a memoryview attribute arrives as bytes).

Unpickling runs code: :func:`load` is called only by a runtime's install method, served by
the cluster's authenticated server (proclets._net).
"""
from __future__ import annotations

import dataclasses
import pickle
import struct
from typing import Any

import msgpack

from microrpc.exactly_once import CompletionTable

__all__ = ["MigrationStats", "dump", "load", "pack_install", "unpack_install",
           "OUT_OF_BAND_MIN"]

MAGIC = b"PRCL"
FORMAT = 1
_PREFIX = struct.Struct("<4sBI")
# The meta part is a few hundred bytes; bound it so a corrupt length cannot make the
# receiver build a huge object.
_MAX_META = 1 << 20

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


def pack_install(meta: list, header: bytes, buffers: list) -> bytes:
    """The install message (see the module docstring): one copy of every buffer."""
    lengths = [memoryview(b).nbytes for b in buffers]
    packed = msgpack.packb([meta, len(header), lengths])
    return b"".join([_PREFIX.pack(MAGIC, FORMAT, len(packed)), packed, header, *buffers])


def unpack_install(body: bytes) -> tuple[list, memoryview, list]:
    """(meta, header, buffers) of an install message, sliced without copying. ValueError
    if it is not one."""
    view = memoryview(body)
    if len(view) < _PREFIX.size:
        raise ValueError("an install message is longer than its prefix")
    magic, fmt, meta_len = _PREFIX.unpack_from(view)
    if magic != MAGIC or fmt != FORMAT:
        raise ValueError(f"not an install message of format {FORMAT} "
                         f"(magic {magic!r}, format {fmt})")
    at = _PREFIX.size
    if meta_len > _MAX_META or at + meta_len > len(view):
        raise ValueError("install message: bad meta length")
    try:
        meta, header_len, lengths = msgpack.unpackb(view[at:at + meta_len])
    except Exception as exc:
        raise ValueError(f"install message: bad meta ({exc})") from None
    at += meta_len
    if (not isinstance(header_len, int) or not isinstance(lengths, list)
            or not all(isinstance(n, int) and n >= 0 for n in lengths)
            or header_len < 0 or at + header_len + sum(lengths) != len(view)):
        raise ValueError("install message: lengths do not add up to its size")
    header = view[at:at + header_len]
    at += header_len
    buffers = []
    for n in lengths:
        buffers.append(view[at:at + n])
        at += n
    return meta, header, buffers
