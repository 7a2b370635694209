"""Type stubs for msgpack encoding with one reused Packer (see _pack.pyx)."""
from typing import Any

def packb(value: Any) -> bytes: ...
