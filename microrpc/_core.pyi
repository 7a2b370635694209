"""Type stubs for the compiled protocol core (see _core.pyx for the wire format)."""
from typing import Any

HEADER: int
REQUEST: int
RESPONSE: int
ERROR: int
CREDIT: int
CANCEL: int
PING: int
PONG: int
HAS_CREDIT: int
KWARGS: int
ONCE: int
ONCE_ID: int
RAW: int
MSGPACK: int
PICKLE: int
REMOTE_ERROR: int
METHOD_NOT_FOUND: int
DEADLINE_EXCEEDED: int
MESSAGE_TOO_LARGE: int
OVERLOADED: int
BAD_REQUEST: int
UNAVAILABLE: int
WRONG_TARGET: int
RETRY_ELSEWHERE: int
LOST: int
IN_PROGRESS: int
LEASE_EXPIRED: int
UNAUTHENTICATED: int
DEFAULT_MAX_MESSAGE_SIZE: int

class Frame:
    @property
    def kind(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def codec(self) -> int: ...
    @property
    def call_id(self) -> int: ...
    @property
    def session(self) -> int: ...
    @property
    def deadline_us(self) -> int: ...
    @property
    def credit(self) -> int: ...
    @property
    def name(self) -> bytes: ...
    @property
    def body(self) -> bytes: ...
    @property
    def lease(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def ack(self) -> int: ...

class FrameParser:
    max_message_size: int
    broken: bool
    def __init__(self, max_message_size: int = ...) -> None: ...
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def next(self) -> Frame | None: ...
    def frames(self) -> list[Frame]: ...

class OutBuffer:
    def __init__(self, capacity: int = ...) -> None: ...
    def __len__(self) -> int: ...
    def append(self, kind: int, call_id: int, name: bytes = ..., body: bytes = ..., *,
               flags: int = ..., codec: int = ..., session: int = ..., deadline_us: int = ...,
               credit: int = ..., lease: int = ..., seq: int = ..., ack: int = ...) -> None: ...
    def take(self) -> bytes: ...

def encode_frame(kind: int, call_id: int, name: bytes = ..., body: bytes = ..., *,
                 flags: int = ..., codec: int = ..., session: int = ..., deadline_us: int = ...,
                 credit: int = ..., lease: int = ..., seq: int = ..., ack: int = ...) -> bytes: ...
