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
* Futures from ``call_async`` are completed by whichever thread is reading. A thread that
  waits in ``future.result()`` reads for itself (no hand-off); futures that nobody waits on
  (callbacks only) are read for by a background thread, started on the first ``call_async``,
  which takes the reader role only after a short grace period with no other reader.

Overload control: on connecting, the client pings the server. A server with a credit policy
(Breakwater) answers with the session's first window, and from then on every call spends a
credit (``breakwater.ClientCredits``): without one it waits in a short local queue, and fails
with ``Overloaded(side="client")`` if no credit comes in time. A server without credits costs
nothing on the call path.
"""
from __future__ import annotations

import concurrent.futures
import heapq
import threading
from dataclasses import dataclass
from typing import Any

import breakwater
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
# The background reader leaves the socket to callers for this long before reading for
# futures nobody waits on: a caller that waits in result() soon after call_async (the common
# case) then reads its own replies, which saves a thread wake-up (~25 us) per batch.
_BACKGROUND_GRACE_S = 0.0005


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
    credits: Any = None   # breakwater.ClientStatistics when the server hands out credits


def check_client_options(address: str, timeout: float | None, session: int) -> None:
    """Argument checks shared by Client and AsyncClient: fail at construction, clearly."""
    transport.parse_address(address)
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive or None")
    if not 0 <= session <= 0xFFFFFFFF:
        raise ValueError("session must fit in 32 bits")


def method_name(cache: dict[str, bytes], method: str) -> bytes:
    """The wire name of ``method``, encoded once per client and cached."""
    name = cache.get(method)
    if name is None:
        if not isinstance(method, str):
            raise TypeError("method name must be a str")
        name = method.encode("utf-8")
        if not 1 <= len(name) <= 255:
            raise ValueError("a method name must be 1..255 UTF-8 bytes")
        cache[method] = name
    return name


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
    __slots__ = ("frame", "error", "done", "waiting", "queued", "cid")

    def __init__(self) -> None:
        self.cid = 0                          # call id once sent
        self.frame: _core.Frame | None = None
        self.error: BaseException | None = None
        self.done = False
        self.waiting = False
        self.queued: _Queued | None = None   # set while it waits for credit


class _Queued:
    """A call held back for lack of credit: everything needed to send it later."""
    __slots__ = ("waiter", "name", "body", "deadline_ns", "deadline_us")

    def __init__(self, waiter, name, body, deadline_ns, deadline_us):
        self.waiter = waiter
        self.name = name
        self.body = body
        self.deadline_ns = deadline_ns
        self.deadline_us = deadline_us


class _CallFuture(concurrent.futures.Future):
    """A Future whose ``result()``/``exception()`` read the socket in the waiting thread."""

    def __init__(self, client: "Client"):
        super().__init__()
        self._client = client

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            self._client._drive(self, timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            self._client._drive(self, timeout)
        return super().exception(timeout)


class Client:
    """A connection to a microrpc server. See the module docstring for thread safety.

    ``codec``: "msgpack" (default, data only), "raw" (one bytes argument, bytes result) or
    "pickle" (only when named here and enabled on the server; unsafe on untrusted networks).
    ``timeout``: default seconds per call (None: no limit). ``poll``: "adaptive" (default:
    busy-poll the socket for up to ``spin_us`` while that catches replies, sleep at once after
    a miss, retry after a backoff), "spin" (always busy-poll ``spin_us`` first: for client
    and server on different cores) or "block" (always sleep in the kernel).
    """

    def __init__(
        self,
        address: str,
        *,
        codec: str = "msgpack",
        timeout: float | None = DEFAULT_TIMEOUT,
        poll: str = "adaptive",
        spin_us: float = 50.0,
        max_message_size: int = _core.DEFAULT_MAX_MESSAGE_SIZE,
        connect_timeout: float | None = 5.0,
        session: int = 0,
    ):
        check_client_options(address, timeout, session)
        if poll not in _native.POLL_MODES:
            raise ValueError(f"poll must be one of {sorted(_native.POLL_MODES)}, not {poll!r}")
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
        self._credits: breakwater.ClientCredits | None = None
        self._queued: set[_Queued] = set()
        self._reading = False
        self._closed = False
        # Pending futures -> call id (or the _Queued record while waiting for credit).
        self._futures: dict[concurrent.futures.Future, Any] = {}
        self._future_deadlines: list = []      # heap of (deadline_ns, seq, future)
        self._seq = 0
        self._reader_thread: threading.Thread | None = None
        self._drivers = 0           # threads waiting in a future's result()
        self._slot_waiters = 0      # threads waiting in call() while another reads
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
        chan = _native.Channel(sock.detach(), self._max_message_size, self._poll, self._spin_us)
        self._credits = self._handshake(chan)
        self._chan = chan
        self._connects += 1
        return chan

    def _handshake(self, chan: _native.Channel) -> breakwater.ClientCredits | None:
        """Ping the new connection: the pong says whether the server hands out credits."""
        timeout = self._connect_timeout if self._connect_timeout is not None else 30.0
        deadline = _native.monotonic_ns() + int(timeout * 1e9)
        try:
            chan.send_frame(_core.PING, 0, b"", b"", 0, self._session, 0, 0, deadline)
            while True:
                frames = chan.recv_frames(deadline)
                if not frames:
                    raise ConnectionLost(f"no answer from {self.address} within {timeout} s")
                for f in frames:
                    if f.kind != _core.PONG:
                        raise ProtocolError(f"expected a pong, got a frame of kind {f.kind}")
                    if not f.flags & _core.HAS_CREDIT:
                        return None
                    credits = breakwater.ClientCredits()
                    credits.on_credit(f.credit, _native.monotonic_ns())
                    return credits
        except BaseException:
            chan.close()
            raise

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
            waiters.extend(q.waiter for q in self._queued)
            self._queued.clear()
            self._credits = None        # the next connection registers afresh
            futures = list(self._futures)
            self._futures.clear()
            self._future_deadlines.clear()
            for w in waiters:
                if isinstance(w, _Slot):
                    w.error = error
                    w.done = True
                elif w not in futures:
                    futures.append(w)
            self._cond.notify_all()
        for f in futures:
            self._settle(f, error=error)

    # -- calls -------------------------------------------------------------------------

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
        """Send a request now, or (no credit) queue it: then the call id returned is 0."""
        demand = 0
        with self._cond:
            chan = self._channel_locked()
            self._calls += 1
            credits = self._credits
            if credits is not None:
                queued = _Queued(waiter, name, body, deadline_ns, deadline_us)
                decision = credits.submit(queued, _native.monotonic_ns())
                if decision == breakwater.Submit.REJECTED:
                    raise Overloaded("no credit, and the client's local queue is full",
                                     side="client")
                if decision == breakwater.Submit.QUEUED:
                    self._queued.add(queued)
                    if type(waiter) is _Slot:
                        waiter.queued = queued
                    self._cond.notify_all()      # the reader must now watch its expiry
                    return chan, 0
                demand = credits.demand()
            cid = self._table.add(waiter)
            self._note_sent(waiter, cid)
        try:
            with self._send_lock:
                chan.send_frame(_core.REQUEST, cid, name, body, self._codec, self._session,
                                deadline_us, demand, deadline_ns)
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

    def _transmit(self, chan: _native.Channel, ready: list) -> None:
        """Send calls that were waiting for credit and now have it, in one flush."""
        with self._cond:
            if self._chan is not chan:
                return                           # the connection failed meanwhile
            credits = self._credits
            sends = []
            for q in ready:
                self._queued.discard(q)
                if type(q.waiter) is _Slot:
                    q.waiter.queued = None
                cid = self._table.add(q.waiter)
                self._note_sent(q.waiter, cid)
                sends.append((cid, q, credits.demand() if credits else 0))
        try:
            with self._send_lock:
                for cid, q, demand in sends:
                    chan.put_frame(_core.REQUEST, cid, q.name, q.body, self._codec,
                                   self._session, q.deadline_us, demand)
                chan.flush(0)
        except RpcError as exc:
            self._fail_connection(chan, exc)

    def _expire_queued(self) -> None:
        """Fail the calls that waited for credit longer than the credit wait allows."""
        with self._cond:
            credits = self._credits
            if credits is None or not self._queued:
                return
            expired = credits.expire(_native.monotonic_ns())
            for q in expired:
                self._queued.discard(q)
            wake = False
            futures = []
            for q in expired:
                w = q.waiter
                error = Overloaded("no credit arrived in time", side="client")
                if type(w) is _Slot:
                    w.error, w.done, w.queued = error, True, None
                    wake = True
                else:
                    futures.append((w, error))
            if wake:
                self._cond.notify_all()
        for fut, error in futures:
            self._settle(fut, error=error)
        if futures and self._drivers:
            with self._cond:
                self._cond.notify_all()

    def _credit_deadline(self) -> int:
        credits = self._credits
        if credits is None or not self._queued:
            return 0
        return credits.next_deadline_ns() or 0

    def call(self, method: str, *args: Any, timeout: float | None = _UNSET) -> Any:
        """Call ``method(*args)`` on the server and return its result, or raise an RpcError."""
        name = method_name(self._names, method)
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
                    self._slot_waiters += 1
                    try:
                        if deadline_ns:
                            left = (deadline_ns - _native.monotonic_ns()) / 1e9
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        else:
                            self._cond.wait()
                    finally:
                        self._slot_waiters -= 1
                if slot.done:
                    return
                if deadline_ns and _native.monotonic_ns() >= deadline_ns:
                    queued = slot.queued
                    if queued is not None:
                        if self._credits is not None and self._credits.cancel(queued):
                            self._queued.discard(queued)
                            slot.queued = None
                            raise DeadlineExceeded("no credit before the deadline")
                    else:
                        self._give_up(chan, slot.cid)
                    if slot.done:
                        return
                    raise DeadlineExceeded(f"no reply within the deadline (call {cid})")
                self._reading = True
            self._read_until(chan, lambda: slot.done, deadline_ns)

    def _note_sent(self, waiter: Any, cid: int) -> None:
        """Record the call id of a waiter (called with the condition held)."""
        if type(waiter) is _Slot:
            waiter.cid = cid
        elif waiter in self._futures:
            self._futures[waiter] = cid

    def _give_up(self, chan: _native.Channel, cid: int) -> None:
        """Called with the condition held: forget call ``cid`` and tell the server."""
        if not cid or self._table.pop(cid) is None:
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

    def _drive(self, fut: concurrent.futures.Future, timeout: float | None) -> None:
        """Wait for ``fut`` in this thread, reading the socket ourselves when nobody else is.
        Returns when it is done or ``timeout`` passed (the caller's Future reports which)."""
        deadline_ns = _native.monotonic_ns() + int(timeout * 1e9) if timeout is not None else 0
        while not fut.done():
            with self._cond:
                while not fut.done() and self._reading:
                    self._drivers += 1
                    try:
                        if deadline_ns:
                            left = (deadline_ns - _native.monotonic_ns()) / 1e9
                            if left <= 0:
                                return
                            self._cond.wait(left)
                        else:
                            self._cond.wait()
                    finally:
                        self._drivers -= 1
                if fut.done() or (deadline_ns and _native.monotonic_ns() >= deadline_ns):
                    return
                chan = self._chan
                if chan is None or chan.closed:
                    return                   # its connection failed: the future says how
                self._reading = True
            self._read_until(chan, fut.done, deadline_ns)

    def _read_until(self, chan: _native.Channel, finished: Any, deadline_ns: int) -> None:
        """Be the reader until ``finished()`` (for the background reader, None: until no
        future is pending), the deadline passes, or the connection fails."""
        slot = finished
        try:
            while slot is None or not finished():
                wait_until = deadline_ns
                if self._futures:      # whoever reads also times out pending futures
                    future_deadline = self._next_future_deadline()
                    if not wait_until or future_deadline < wait_until:
                        wait_until = future_deadline
                credit_deadline = self._credit_deadline()
                if credit_deadline and (not wait_until or credit_deadline < wait_until):
                    wait_until = credit_deadline
                frames = chan.recv_frames(wait_until)
                if frames:
                    self._dispatch(chan, frames)
                if self._queued:
                    self._expire_queued()
                if not frames and wait_until and _native.monotonic_ns() >= wait_until:
                    if self._future_deadlines:
                        self._expire_futures()
                    if slot is not None and deadline_ns and _native.monotonic_ns() >= deadline_ns:
                        return
                if slot is None and not self._futures:
                    return
        except RpcError as exc:
            self._fail_connection(chan, exc)
        finally:
            with self._cond:
                self._reading = False
                # Hand the reader role on only if someone can take it: a needless wake-up
                # of the background thread costs a context switch per call.
                if self._drivers or self._slot_waiters or self._futures:
                    self._cond.notify_all()

    def _dispatch(self, chan: _native.Channel, frames: list) -> None:
        table = self._table
        wake = False
        credits = self._credits
        if credits is not None:
            ready = self._account_credits(credits, frames)
            if ready:
                self._transmit(chan, ready)
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
                    self._futures.pop(waiter, None)
                    try:
                        self._settle(waiter, result=outcome_of(f))
                    except RpcError as exc:
                        self._settle(waiter, error=exc)
                    if self._drivers:
                        wake = True
        if wake:
            with self._cond:
                self._cond.notify_all()

    def _account_credits(self, credits: breakwater.ClientCredits, frames: list) -> list:
        """Every response returns a credit and carries the window; so do credit frames.
        Returns the queued calls that may now be sent."""
        ready: list = []
        now = _native.monotonic_ns()
        with self._cond:
            if credits is not self._credits:
                return ready
            for f in frames:
                kind = f.kind
                if kind == _core.RESPONSE or kind == _core.ERROR:
                    window = f.credit if f.flags & _core.HAS_CREDIT else None
                    try:
                        ready.extend(credits.on_response(window, now))
                    except ValueError:
                        pass     # a response the machine did not count (sent before credits)
                elif kind == _core.CREDIT:
                    ready.extend(credits.on_credit(f.credit, now))
        return ready

    # -- futures -----------------------------------------------------------------------

    def call_async(self, method: str, *args: Any,
                   timeout: float | None = _UNSET) -> concurrent.futures.Future:
        """Start ``method(*args)`` and return a Future for its outcome (an RpcError, even one
        known at once such as a client-side Overloaded, is set on the Future, not raised).
        Cancelling the Future tells the server (best effort) and frees the call."""
        name = method_name(self._names, method)
        body = codecs.encode_args(self._codec, args)
        deadline_ns, deadline_us = self._deadline(timeout)
        fut = _CallFuture(self)
        with self._cond:
            self._ensure_reader_locked()
        try:
            chan, cid = self._send(fut, name, body, deadline_ns, deadline_us)
        except RpcError as exc:
            # Every outcome of an asynchronous call, even an immediate one, is in its future.
            self._settle(fut, error=exc)
            return fut
        with self._cond:
            if not fut.done():
                # Value: the call id, or the _Queued record while it waits for credit.
                self._futures[fut] = cid or self._queued_record(fut)
                if deadline_ns:
                    self._seq += 1
                    heapq.heappush(self._future_deadlines, (deadline_ns, self._seq, fut))
                if not self._reading and not self._drivers:
                    self._cond.notify_all()   # the background reader may be needed
        fut.add_done_callback(lambda f, chan=chan, cid=cid: self._on_future_done(f, chan, cid))
        return fut

    def _queued_record(self, fut: concurrent.futures.Future) -> Any:
        for q in self._queued:
            if q.waiter is fut:
                return q
        return 0

    def _forget_future_locked(self, fut: concurrent.futures.Future, chan: _native.Channel) -> None:
        """Drop a future that will not be answered: unqueue it or cancel its call."""
        ref = self._futures.pop(fut, None)
        if isinstance(ref, _Queued):
            if self._credits is not None and self._credits.cancel(ref):
                self._queued.discard(ref)
        elif ref:
            self._give_up(chan, ref)

    def _on_future_done(self, fut: concurrent.futures.Future, chan: _native.Channel,
                        cid: int) -> None:
        if fut.cancelled():
            with self._cond:
                self._forget_future_locked(fut, chan)

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
        while heap and heap[0][2] not in self._futures:
            heapq.heappop(heap)
        limit = _native.monotonic_ns() + _READER_IDLE_NS
        return min(heap[0][0], limit) if heap else limit

    def _expire_futures(self) -> None:
        now = _native.monotonic_ns()
        expired = []
        with self._cond:
            heap = self._future_deadlines
            chan = self._chan
            while heap and heap[0][0] <= now:
                fut = heapq.heappop(heap)[2]
                if fut in self._futures:
                    if chan is not None:
                        self._forget_future_locked(fut, chan)
                    else:
                        self._futures.pop(fut, None)
                    expired.append(fut)
        for fut in expired:
            self._settle(fut, error=DeadlineExceeded("no reply within the deadline"))
        if expired and self._drivers:
            with self._cond:
                self._cond.notify_all()

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
                self._cond.wait(_BACKGROUND_GRACE_S)      # leave it to a waiting caller
                if self._closed:
                    return
                if self._reading or not self._futures:
                    continue
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
            credits=self._credits.statistics() if self._credits is not None else None,
        )

    def __repr__(self) -> str:
        return f"<microrpc.Client {self.address}{' closed' if self._closed else ''}>"
