"""Type stubs for the bounded msgpack decoder (see _decode.pyx)."""
from typing import Any

DEFAULT_MAX_DEPTH: int
DEFAULT_MAX_ITEMS: int
DEFAULT_MAX_BYTES: int

class DecodeLimits:
    max_depth: int
    max_items: int
    max_array_len: int
    max_map_len: int
    max_str_len: int
    max_bin_len: int
    max_ext_len: int
    def __init__(self, *, max_depth: int = ..., max_items: int = ...,
                 max_array_len: int | None = ..., max_map_len: int | None = ...,
                 max_str_len: int = ..., max_bin_len: int = ...,
                 max_ext_len: int = ...) -> None: ...
    def unpack(self, body: bytes) -> Any: ...
    def as_dict(self) -> dict[str, int]: ...

DEFAULT_DECODE_LIMITS: DecodeLimits
