"""The synchronous client: ``call`` and ``call_async`` over one connection.

Socket I/O happens in the calling thread: a thread that waits for a reply reads the socket
itself, so a lone caller pays no thread hand-off (a cross-core wake-up costs ~25 us on these
machines). Thread safety, and how it works:

* Any number of threads may call ``call``/``call_async`` on one ``Client`` at once; replies
  are matched to calls by call id, so many calls are in flight on the one connection.
* Sends are serialised by a lock (each frame is written whole).
* At most one thread reads the socket at a time: the *reader*. A thread waiting for its
  reply becomes the reader if there is none; otherwise it sleeps on a condition variable
  until the reader hands it its reply, or leaves and lets it take over.
* Futures from ``call_async`` are completed by whichever thread is reading; when no caller
  is waiting, a background thread (started on the first ``call_async``) reads for them.
"""
from __future__ import annotations

import concurrent.futures
import heapq
import threading
from dataclasses import dataclass
from typing import Any

from microrpc import _core, _native, codecs, transport
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

__all__ = ["Client", "ClientStatistics", "DEFAULT_TIMEOUT", "outcome_of"]

#: Seconds a call waits when no timeout is given. Finite, so a lost reply cannot hang a
#: caller forever; pass ``timeout=None`` to wait without limit.
DEFAULT_TIMEOUT = 30.0
_UNSET: Any = object()
_MAX_DEADLINE_US = 0xFFFFFFFF
# How long the background reader sleeps in recv when no future has a deadline: it wakes up
# this often to notice close().
_READER_IDLE_NS = 100_000_000


@dataclass(frozen=True)
class ClientStatistics:
    calls: int            # calls started
    ok: int               # calls that returned a result
    errors: int           # calls that ended in an RpcError (any kind)
    timeouts: int         # of which DeadlineExceeded
    in_flight: int        # calls waiting for a reply now
    reconnects: int       # connections made after the first
    bytes_sent: int
    bytes_received: int


def outcome_of(frame: _core.Frame) -> Any:
    """The result a RESPONSE frame carries, or raise the error an ERROR frame carries."""
    if frame.kind == _core.RESPONSE:
        return codecs.decode_result(frame.codec, frame.body)
    code, type_name, message, tb = codecs.decode_error(frame.body)
    if code == codecs.REMOTE_ERROR:
        raise RemoteError(type_name, message, tb)
    if code == codecs.METHOD_NOT_FOUND:
        raise MethodNotFound(message)
    if code == codecs.DEADLINE_EXCEEDED:
        raise DeadlineExceeded(f"server: {message}")
    if code == codecs.MESSAGE_TOO_LARGE:
        raise MessageTooLarge(message)
    if code == codecs.OVERLOADED:
        raise Overloaded(message, side="server")
    if code == codecs.BAD_REQUEST:
        raise ProtocolError(f"server could not decode the request: {message}")
    if code == codecs.UNAVAILABLE:
        raise ConnectionLost(f"server: {message}")
    raise ProtocolError(f"unknown error code {code} from server ({type_name}: {message})")


class _Slot:
    """What a synchronous caller waits on."""
    __slots__ = ("frame", "error", "done", "waiting")

    def __init__(self) -> None:
        self.frame: _core.Frame | None = None
        self.error: BaseException | None = None
        self.done = False
        self.waiting = False


class Client:
    """A connection to a microrpc server. See the module docstring for thread safety.

    ``codec``: "msgpack" (default, data only), "raw" (one bytes argument, bytes result) or
    "pickle" (only when named here and enabled on the server; unsafe on untrusted networks).
    ``timeout``: default seconds per call (None: no limit). ``poll``: "block", "spin" (busy-poll
    the socket for ``spin_us`` before sleeping) or "adaptive".
    """

    def __init__(
        self,
        address: str,
        *,
        codec: str = "msgpack",
        timeout: float | None = DEFAULT_TIMEOUT,
        poll: str = "block",
        spin_us: float = 50.0,
        max_message_size: int = _core.DEFAULT_MAX_MESSAGE_SIZE,
        connect_timeout: float | None = 5.0,
        session: int = 0,
    ):
        transport.parse_address(address)            # fail now on a malformed address
        if poll not in _native.POLL_MODES:
            raise ValueError(f"poll must be one of {sorted(_native.POLL_MODES)}, not {poll!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive or None")
        if not 0 <= session <= 0xFFFFFFFF:
            raise ValueError("session must fit in 32 bits")
        self.address = address
        self._codec = codecs.codec_id(codec)
        self._timeout = timeout
        self._poll = poll
        self._spin_us = spin_us
        self._max_message_size = max_message_size
        self._connect_timeout = connect_timeout
        self._session = session
        self._names: dict[str, bytes] = {}
        self._cond = threading.Condition(threading.Lock())
        self._send_lock = threading.Lock()
        self._table = _core.CallTable()
        self._chan: _native.Channel | None = None
        self._reading = False
        self._closed = False
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._future_deadlines: list[tuple[int, int]] = []    # heap of (deadline_ns, call id)
        self._reader_thread: threading.Thread | None = None
        self._connects = 0
        self._calls = self._ok = self._errors = self._timeouts = 0
        self._old_bytes_sent = self._old_bytes_received = 0
        with self._cond:
            self._connect_locked()

    # -- connection --------------------------------------------------------------------

    def _connect_locked(self) -> _native.Channel:
        if self._closed:
            raise ConnectionLost("the client is closed")
        sock = transport.connect(self.address, self._connect_timeout)
        self._chan = _native.Channel(sock.detach(), self._max_message_size, self._poll,
                                     self._spin_us)
        self._connects += 1
        return self._chan

    def _channel_locked(self) -> _native.Channel:
        chan = self._chan
        if chan is None or chan.closed:
            if chan is not None:
                self._retire_locked(chan)
            chan = self._connect_locked()      # reconnect on the next call after a failure
        return chan

    def _retire_locked(self, chan: _native.Channel) -> None:
        self._old_bytes_sent += chan.bytes_sent
        self._old_bytes_received += chan.bytes_received
        if self._chan is chan:
            self._chan = None

    def _fail_connection(self, chan: _native.Channel, error: RpcError) -> None:
        """The connection broke: every call in flight on it ends with ``error``."""
        with self._cond:
            if self._chan is not chan:
                return
            chan.close()
            self._retire_locked(chan)
            waiters = self._table.drain()
            futures = list(self._futures.values())
            self._futures.clear()
            self._future_deadlines.clear()
            for w in waiters:
                if isinstance(w, _Slot):
                    w.error = error
                    w.done = True
            self._cond.notify_all()
        for f in futures:
            self._settle(f, error=error)

    # -- calls -------------------------------------------------------------------------

    def _name(self, method: str) -> bytes:
        name = self._names.get(method)
        if name is None:
            if not isinstance(method, str):
                raise TypeError("method name must be a str")
            name = method.encode("utf-8")
            if not 1 <= len(name) <= 255:
                raise ValueError("a method name must be 1..255 UTF-8 bytes")
            self._names[method] = name
        return name

    def _deadline(self, timeout: Any) -> tuple[int, int]:
        if timeout is _UNSET:
            timeout = self._timeout
        if timeout is None:
            return 0, 0
        if timeout <= 0:
            raise ValueError("timeout must be positive or None")
        us = int(timeout * 1e6)
        return _native.monotonic_ns() + int(timeout * 1e9), min(max(us, 1), _MAX_DEADLINE_US)

    def _send(self, waiter: Any, name: bytes, body: bytes, deadline_ns: int,
              deadline_us: int) -> tuple[_native.Channel, int]:
        with self._cond:
            chan = self._channel_locked()
            cid = self._table.add(waiter)
            self._calls += 1
        try:
            with self._send_lock:
                chan.send_frame(_core.REQUEST, cid, name, body, self._codec, self._session,
                                deadline_us, 0, deadline_ns)
        except MessageTooLarge:
            self._table.pop(cid)
            raise
        except DeadlineExceeded as exc:
            self._table.pop(cid)
            self._fail_connection(chan, ConnectionLost(f"send timed out: {exc}"))
            raise
        except RpcError as exc:
            self._fail_connection(chan, exc)
            self._table.pop(cid)
            raise
        return chan, cid

    def call(self, method: str, *args: Any, timeout: float | None = _UNSET) -> Any:
        """Call ``method(*args)`` on the server and return its result, or raise an RpcError."""
        name = self._name(method)
        body = codecs.encode_args(self._codec, args)
        deadline_ns, deadline_us = self._deadline(timeout)
        slot = _Slot()
        chan, cid = self._send(slot, name, body, deadline_ns, deadline_us)
        try:
            self._wait(slot, chan, cid, deadline_ns)
            if slot.error is not None:
                raise slot.error
            result = outcome_of(slot.frame)
        except DeadlineExceeded:
            self._timeouts += 1
            self._errors += 1
            raise
        except RpcError:
            self._errors += 1
            raise
        self._ok += 1
        return result

    def _wait(self, slot: _Slot, chan: _native.Channel, cid: int, deadline_ns: int) -> None:
        while True:
            with self._cond:
                while not slot.done and self._reading:
                    slot.waiting = True
                    if deadline_ns:
                        left = (deadline_ns - _native.monotonic_ns()) / 1e9
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                if slot.done:
                    return
                if deadline_ns and _native.monotonic_ns() >= deadline_ns:
                    self._give_up(chan, cid)
                    if slot.done:
                        return
                    raise DeadlineExceeded(f"no reply within the deadline (call {cid})")
                self._reading = True
            self._read_until(chan, slot, deadline_ns)

    def _give_up(self, chan: _native.Channel, cid: int) -> None:
        """Called with the condition held: forget call ``cid`` and tell the server."""
        if self._table.pop(cid) is None:
            return
        try:
            if not chan.closed and self._send_lock.acquire(timeout=0.1):
                try:
                    chan.put_frame(_core.CANCEL, cid, b"", b"", 0, self._session)
                    chan.flush(0, False)
                finally:
                    self._send_lock.release()
        except RpcError:
            pass     # best effort; the connection's own failure is seen by its next reader

    def _read_until(self, chan: _native.Channel, slot: _Slot | None, deadline_ns: int) -> None:
        """Be the reader until ``slot`` is done (or, for the background reader, until no
        future is pending), the deadline passes, or the connection fails."""
        try:
            while slot is None or not slot.done:
                wait_until = deadline_ns
                if slot is None:
                    wait_until = self._next_future_deadline()
                frames = chan.recv_frames(wait_until)
                if frames:
                    self._dispatch(frames)
                elif wait_until and _native.monotonic_ns() >= wait_until:
                    if slot is not None:
                        return
                    self._expire_futures()
                if slot is None and not self._futures:
                    return
        except RpcError as exc:
            self._fail_connection(chan, exc)
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()

    def _dispatch(self, frames: list) -> None:
        table = self._table
        wake = False
        for f in frames:
            kind = f.kind
            if kind == _core.RESPONSE or kind == _core.ERROR:
                waiter = table.pop(f.call_id)
                if waiter is None:
                    continue           # a late reply to a call that timed out or was cancelled
                if type(waiter) is _Slot:
                    waiter.frame = f
                    waiter.done = True
                    if waiter.waiting:
                        wake = True
                else:
                    self._futures.pop(f.call_id, None)
                    try:
                        self._settle(waiter, result=outcome_of(f))
                    except RpcError as exc:
                        self._settle(waiter, error=exc)
            # CREDIT and PONG frames carry nothing a plain client acts on yet.
        if wake:
            with self._cond:
                self._cond.notify_all()

    # -- futures -----------------------------------------------------------------------

    def call_async(self, method: str, *args: Any,
                   timeout: float | None = _UNSET) -> concurrent.futures.Future:
        """Start ``method(*args)`` and return a Future for its outcome. Cancelling the
        Future tells the server (best effort) and frees the call."""
        name = self._name(method)
        body = codecs.encode_args(self._codec, args)
        deadline_ns, deadline_us = self._deadline(timeout)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._ensure_reader_locked()
        chan, cid = self._send(fut, name, body, deadline_ns, deadline_us)
        with self._cond:
            if cid in self._table:
                self._futures[cid] = fut
                if deadline_ns:
                    heapq.heappush(self._future_deadlines, (deadline_ns, cid))
                self._cond.notify_all()
        fut.add_done_callback(lambda f, chan=chan, cid=cid: self._on_future_done(f, chan, cid))
        return fut

    def _on_future_done(self, fut: concurrent.futures.Future, chan: _native.Channel,
                        cid: int) -> None:
        if fut.cancelled():
            with self._cond:
                self._futures.pop(cid, None)
                self._give_up(chan, cid)

    def _settle(self, fut: concurrent.futures.Future, result: Any = None,
                error: BaseException | None = None) -> None:
        if fut.done():
            return
        try:
            if error is not None:
                fut.set_exception(error)
                self._errors += 1
                if isinstance(error, DeadlineExceeded):
                    self._timeouts += 1
            else:
                fut.set_result(result)
                self._ok += 1
        except concurrent.futures.InvalidStateError:
            pass          # cancelled by its owner in the meantime

    def _next_future_deadline(self) -> int:
        heap = self._future_deadlines
        while heap and heap[0][1] not in self._futures:
            heapq.heappop(heap)
        limit = _native.monotonic_ns() + _READER_IDLE_NS
        return min(heap[0][0], limit) if heap else limit

    def _expire_futures(self) -> None:
        now = _native.monotonic_ns()
        expired = []
        with self._cond:
            heap = self._future_deadlines
            while heap and heap[0][0] <= now:
                _, cid = heapq.heappop(heap)
                fut = self._futures.pop(cid, None)
                if fut is not None and self._table.pop(cid) is not None:
                    expired.append((cid, fut))
            chan = self._chan
            if chan is not None:
                for cid, _ in expired:
                    try:
                        with self._send_lock:
                            chan.put_frame(_core.CANCEL, cid, b"", b"", 0, self._session)
                            chan.flush(0, False)
                    except RpcError:
                        break
        for cid, fut in expired:
            self._settle(fut, error=DeadlineExceeded(f"no reply within the deadline (call {cid})"))

    def _ensure_reader_locked(self) -> None:
        if self._reader_thread is None:
            self._reader_thread = threading.Thread(
                target=self._background_reader, name="microrpc-client-reader", daemon=True)
            self._reader_thread.start()

    def _background_reader(self) -> None:
        """Reads for pending futures whenever no caller is reading; exits at close()."""
        while True:
            with self._cond:
                while not self._closed and (self._reading or not self._futures):
                    self._cond.wait()
                if self._closed:
                    return
                chan = self._chan
                if chan is None or chan.closed:
                    continue        # _fail_connection already failed its futures
                self._reading = True
            self._read_until(chan, None, 0)

    # -- lifecycle ---------------------------------------------------------------------

    def ping(self, timeout: float | None = _UNSET) -> None:
        """Round-trip a call to a method that does not exist: proves the server answers."""
        try:
            self.call("__microrpc_ping__", timeout=timeout)
        except MethodNotFound:
            return

    def close(self) -> None:
        """Close the connection; calls still in flight end with ConnectionLost."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            chan = self._chan
            self._cond.notify_all()
        if chan is not None:
            self._fail_connection(chan, ConnectionLost("the client was closed"))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def statistics(self) -> ClientStatistics:
        chan = self._chan
        return ClientStatistics(
            calls=self._calls, ok=self._ok, errors=self._errors, timeouts=self._timeouts,
            in_flight=len(self._table), reconnects=max(self._connects - 1, 0),
            bytes_sent=self._old_bytes_sent + (chan.bytes_sent if chan else 0),
            bytes_received=self._old_bytes_received + (chan.bytes_received if chan else 0),
        )

    def __repr__(self) -> str:
        return f"<microrpc.Client {self.address}{' closed' if self._closed else ''}>"
