"""The synchronous client: ``call`` and ``call_async`` over one connection.

A thin driver over the protocol core (``microrpc._clientcore.ClientCore``, which owns calls,
the handshake, credits, deadlines, cancel and outcomes) and a channel
(``microrpc.channel``). Socket I/O happens in the calling thread: a thread that waits for a
reply reads the socket itself, so a lone caller pays no thread hand-off (a cross-core
wake-up costs ~25 us on these machines). Thread safety, and how it works:

* Any number of threads may call ``call``/``call_async`` on one ``Client`` at once; replies
  are matched to calls by call id, so many calls are in flight on the one connection.
* One lock guards the core. A request is written as soon as it is made, unless another
  thread is writing at that moment (it then sends this one too: a group commit) or the
  call was made by a done-callback, which the reading thread runs in a batch and whose
  requests it writes with one ``send`` when the batch ends.
* At most one thread reads the socket at a time: the *reader*. A thread waiting for a
  reply becomes the reader if there is none, else it sleeps until the reader has handled a
  batch; every call the reader's batch ended is complete when it wakes.
* Futures from ``call_async`` are ``concurrent.futures.Future`` objects (``wait`` and
  ``as_completed`` work on them) that cost no lock or condition of their own. A future
  that has a done-callback, or that a ``wait``/``as_completed`` watches, is read for by a
  background thread (started when first needed) whenever no caller is reading, so its
  callback runs as soon as its reply is read, whoever reads it.

Overload control: on connecting, the client pings the server. A server with a credit policy
(Breakwater) answers with the session's first window, and from then on every call spends a
credit: without one it waits in a short local queue, and fails with
``Overloaded(side="client")`` if no credit comes in time. A server without credits costs
nothing on the call path.
"""
from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any, Callable

import breakwater
from microrpc import _clientcore, _core, _native, auth, channel, codecs, transport
from microrpc._clientcore import Call, ClientCore
from microrpc.errors import ConnectionLost, MethodNotFound, ProtocolError, RpcError

__all__ = ["Client", "ClientStatistics", "DEFAULT_TIMEOUT", "CallFuture"]

#: Seconds a call waits when no timeout is given. Finite, so a lost reply cannot hang a
#: caller forever; pass ``timeout=None`` to wait without limit.
DEFAULT_TIMEOUT = 30.0
_UNSET: Any = _clientcore.USE_DEFAULT
# A reader with nothing due wakes this often (ns) to notice close() and new deadlines.
_IDLE_WAKE_NS = 100_000_000
_DONE = _clientcore.DONE
_QUEUED = _clientcore.QUEUED
_BROKEN = _clientcore.BROKEN
_CANCELLED = _clientcore.CANCELLED
_now = _native.monotonic_ns


@dataclass(frozen=True)
class ClientStatistics:
    calls: int            # calls started
    ok: int               # calls that returned a result
    errors: int           # calls that ended in an RpcError (any kind)
    timeouts: int         # of which DeadlineExceeded
    in_flight: int        # calls waiting for a reply (or for credit) now
    reconnects: int       # connections made after the first
    bytes_sent: int
    bytes_received: int
    credits: Any = None   # breakwater.ClientStatistics when the server hands out credits
    late_replies: int = 0  # replies that came after their call had timed out or was cancelled
    cancelled: int = 0    # calls cancelled by their caller (ok + errors + cancelled = calls)
    resends: int = 0      # exactly-once copies sent again (after a lost connection, or
                          # "in progress")


def check_client_options(address: str, timeout: float | None, session: int,
                         credit_queue: int, credit_wait: float) -> None:
    """Argument checks shared by Client and AsyncClient: fail at construction, clearly."""
    transport.parse_address(address)
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be positive or None")
    if not 0 <= session <= 0xFFFFFFFF:
        raise ValueError("session must fit in 32 bits")
    if not isinstance(credit_queue, int) or not 0 <= credit_queue <= 1 << 20:
        raise ValueError("credit_queue must be an int in 0..2**20")
    if not 0 <= credit_wait <= 60:
        raise ValueError("credit_wait must be in 0..60 seconds")


def core_statistics(core: ClientCore, bytes_sent: int, bytes_received: int) -> ClientStatistics:
    """The statistics every driver reports, read from its core."""
    return ClientStatistics(
        calls=core.started, ok=core.ok, errors=core.failed, timeouts=core.timeouts,
        in_flight=core.in_flight, reconnects=max(core.handshakes - 1, 0),
        bytes_sent=bytes_sent, bytes_received=bytes_received,
        credits=core.credit_statistics(), late_replies=core.stray_replies,
        cancelled=core.cancelled, resends=core.resends)


class CallFuture(Call, concurrent.futures.Future):
    """The future of one ``call_async``: a core Call that is also a
    ``concurrent.futures.Future``. Its state lives in the core's C fields, so completing it
    costs no lock, condition or callback list unless someone asked to be told."""

    # Future.__init__ is not called: it builds a Condition per future, which is most of
    # what a future costs. _condition and _waiters (used by wait() and as_completed())
    # are provided below, on the client's lock.

    def __init__(self, client: "Client") -> None:
        self.owner = client

    # -- what concurrent.futures.wait/as_completed read ---------------------------------

    @property
    def _condition(self) -> threading.Condition:
        return self.owner._cond

    @property
    def _waiters(self) -> list:
        # Read under the client's lock (wait() holds _condition): whoever installs a waiter
        # must be told when this future ends, so it is watched from now on.
        if self.waiters is None:
            self.waiters = []
            if self.state < _DONE:
                self.owner._watch(self)
        return self.waiters

    @property
    def _state(self) -> str:
        state = self.state
        if state == _DONE:
            return concurrent.futures._base.FINISHED
        if state == _CANCELLED:
            return concurrent.futures._base.CANCELLED_AND_NOTIFIED
        return concurrent.futures._base.PENDING

    # -- the Future API -----------------------------------------------------------------

    def done(self) -> bool:
        if self.state < _DONE:
            self.owner._poll()          # take what the socket already holds, never block
        return self.state >= _DONE

    def running(self) -> bool:
        return False                    # a call is pending or done; cancel() works until done

    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def cancel(self) -> bool:
        """Stop waiting for this call and tell the server (best effort). True if it is
        cancelled (now or before), False if it had already finished."""
        if self.state == _CANCELLED:
            return True
        return self.owner._cancel(self)

    def result(self, timeout: float | None = None) -> Any:
        if self.state < _DONE:
            self.owner._drive(self, timeout)
        state = self.state
        if state == _DONE:
            if self.error is not None:
                try:
                    raise self.error
                finally:
                    # As concurrent.futures does: the traceback keeps this frame, whose
                    # ``self`` holds the error; without this every failure is a cycle.
                    self = None
            return self.value
        if state == _CANCELLED:
            raise concurrent.futures.CancelledError()
        raise concurrent.futures.TimeoutError()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self.state < _DONE:
            self.owner._drive(self, timeout)
        state = self.state
        if state == _DONE:
            return self.error
        if state == _CANCELLED:
            raise concurrent.futures.CancelledError()
        raise concurrent.futures.TimeoutError()

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future], Any]) -> None:
        if not self.owner._add_callback(self, fn):
            _run_callback(fn, self)

    def set_running_or_notify_cancel(self) -> bool:
        raise RuntimeError("a microrpc call future is completed by its client only")

    def set_result(self, result: Any) -> None:
        raise RuntimeError("a microrpc call future is completed by its client only")

    def set_exception(self, exception: BaseException | None) -> None:
        raise RuntimeError("a microrpc call future is completed by its client only")

    def __repr__(self) -> str:
        state = ("pending", "pending", "pending", "finished", "cancelled")[self.state]
        return f"<CallFuture at {id(self):#x} state={state}>"


def _run_callback(fn: Callable, fut: concurrent.futures.Future) -> None:
    try:
        fn(fut)
    except Exception:
        # As concurrent.futures does: a failing callback is logged, never propagated into
        # the thread that happened to complete the future.
        concurrent.futures._base.LOGGER.exception("exception calling callback for %r", fut)


class Client:
    """A connection to a microrpc server. See the module docstring for thread safety.

    ``codec``: "msgpack" (default, data only), "raw" (one bytes argument, bytes result) or
    "pickle" (only when named here and enabled on the server; unsafe on untrusted networks).
    A reply is only ever decoded with this codec. ``timeout``: default seconds per call
    (None: no limit). ``poll``: "adaptive" (default: busy-poll the socket for up to
    ``spin_us`` while that catches replies, sleep at once after a miss, retry after a
    backoff), "spin" (always busy-poll ``spin_us`` first: for client and server on
    different cores) or "block" (always sleep in the kernel). ``credit_queue`` and
    ``credit_wait`` (seconds): against a server that hands out credits, how many calls may
    wait for one and for how long before they fail with ``Overloaded(side="client")``.
    ``decode_limits`` (a :class:`microrpc.DecodeLimits`, by default the server's defaults):
    a msgpack reply over them fails its call with ``ProtocolError`` before any object is
    built, so a hostile server cannot make the client decode a bomb. ``auth_key`` (bytes):
    the server's pre-shared key; each connection proves it holds it, and checks that the
    server does, before any call (a failure raises :class:`microrpc.AuthenticationError`).

    ``exactly_once=True``: every call carries this client's lease and a number (RIFL), so a
    method the server registered ``idempotent=False`` runs once however often the call is
    sent, and the client sends a call again, with the same number, when its connection is
    lost before the reply came: it reconnects (backing off from 5 ms to 0.5 s between tries)
    until the call is answered or its deadline passes (a call with ``timeout=None`` gets one
    reconnection). The server keeps each outcome until the client's next requests
    acknowledge it, so a retry gets the first run's outcome. At most 512 calls are numbered
    from the oldest one still pending (the server's records per lease); later calls wait,
    unnumbered, until older ones end. Methods the server did not mark are not deduplicated:
    retrying them may run them again, as without this option. See microrpc.exactly_once for
    the protocol.
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
        credit_queue: int = breakwater.DEFAULT_MAX_QUEUE,
        credit_wait: float = breakwater.DEFAULT_MAX_WAIT_NS / 1e9,
        decode_limits: codecs.DecodeLimits | None = None,
        exactly_once: bool = False,
        auth_key: bytes | None = None,
    ):
        check_client_options(address, timeout, session, credit_queue, credit_wait)
        channel.check_poll(poll)
        self._auth_key = auth.check_key(auth_key)
        self.address = address
        self._timeout = timeout
        self._poll_mode = poll
        self._spin_us = spin_us
        self._max_message_size = max_message_size
        self._connect_timeout = connect_timeout
        self._send_timeout_ns = int((timeout or DEFAULT_TIMEOUT) * 1e9)
        self._core = ClientCore(codecs.codec_id(codec), session, max_message_size, timeout,
                                credit_queue, int(credit_wait * 1e9), decode_limits,
                                bool(exactly_once))
        self._reconnect_at = 0      # exactly-once: when to try connecting again (ns)
        self._reconnect_backoff = 0
        # Reentrant: concurrent.futures.wait() takes each future's _condition in turn, and
        # every future of this client shares this one.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._chan: Any = None
        self._reading = False       # a thread holds the reader role
        self._read_until = 0        # ... and sleeps on the socket until then (0: a reply)
        self._writing = False       # a thread is sending the core's output
        self._dispatcher = 0        # thread id running done-callbacks (0: none)
        self._waiters = 0           # threads sleeping on _cond until the reader's next batch
        self._watched = 0           # pending futures whose end someone must be told of
        self._service: threading.Thread | None = None
        self._service_waits = False
        self._closed = False
        self._old_sent = self._old_received = 0
        with self._lock:
            self._connect_locked()

    # -- connection --------------------------------------------------------------------

    def _connect_locked(self) -> Any:
        if self._closed:
            raise ConnectionLost("the client is closed")
        core = self._core
        core.close_idle()
        timeout = self._connect_timeout if self._connect_timeout is not None else 30.0
        deadline = _now() + int(timeout * 1e9)
        chan = channel.open_channel(self.address, connect_timeout=self._connect_timeout,
                                    max_message_size=self._max_message_size,
                                    poll=self._poll_mode, spin_us=self._spin_us,
                                    auth_key=self._auth_key)

        def send_all() -> None:
            while len(core.out):
                if not chan.send_from(core.out):
                    chan.wait_writable(deadline)
                if _now() >= deadline:
                    raise ConnectionLost(f"cannot send to {self.address}")
        try:
            core.begin(_now())
            send_all()
            while not core.ready:
                frames = chan.recv_frames(deadline)
                if not frames:
                    raise ConnectionLost(f"no answer from {self.address} within {timeout} s")
                if frames[0].kind not in (_core.PONG, _core.ERROR):   # ERROR: refused
                    raise ProtocolError(f"expected a pong, got a frame of kind {frames[0].kind}")
                core.receive(frames, _now())
                if core.error is not None:
                    raise core.error
            send_all()       # an exactly-once core's lease request, or its parked calls
        except BaseException as exc:
            chan.close()
            core.fail(exc if isinstance(exc, RpcError) else ConnectionLost(str(exc)), True)
            core.close_idle()
            raise
        self._chan = chan
        return chan

    def _reconnect_locked(self, wait_until: int) -> Any:
        """Exactly-once calls wait for a connection (lock held): make one, or, between
        tries, sleep on the condition until the next try (or ``wait_until``, a deadline).
        Returns the calls a failed try ended (those with no deadline)."""
        now = _now()
        if now < self._reconnect_at:
            until = self._reconnect_at if not wait_until else min(self._reconnect_at,
                                                                  wait_until)
            self._waiters += 1
            try:
                self._cond.wait(max(until - now, 0) / 1e9)
            finally:
                self._waiters -= 1
            return ()
        try:
            self._connect_locked()
        except RpcError as exc:
            self._reconnect_backoff = min(max(2 * self._reconnect_backoff, 5_000_000),
                                          500_000_000)
            self._reconnect_at = _now() + self._reconnect_backoff
            ended = self._core.fail_waiting(exc)
            self._tell_locked(ended)
            return ended
        self._reconnect_backoff = 0
        self._cond.notify_all()
        return ()

    def _channel_locked(self) -> Any:
        chan = self._chan
        if chan is None or not self._core.ready:
            if chan is not None:
                self._fail_locked(chan, self._core.error or ConnectionLost("connection lost"))
            chan = self._connect_locked()      # reconnect on the next call after a failure
        return chan

    def _retire_locked(self, chan: Any) -> None:
        """Stop using ``chan`` (lock held). A thread reading it is woken and closes it."""
        self._old_sent += chan.bytes_sent
        self._old_received += chan.bytes_received
        if self._reading:
            chan.shutdown()
        else:
            chan.close()
        if self._chan is chan:
            self._chan = None

    def _fail_locked(self, chan: Any, error: RpcError) -> Any:
        """The connection broke: every pending call ends with ``error`` (lock held;
        returns the watched calls to tell)."""
        ended = self._core.fail(error, True)     # (exactly-once calls wait to go again)
        if self._chan is chan:
            self._retire_locked(chan)
        self._cond.notify_all()
        return ended

    # -- sending -----------------------------------------------------------------------

    def _flush_locked(self, chan: Any, deadline_ns: int = 0, batch: bool = False) -> Any:
        """Send the core's output (lock held); returns the watched calls that ended if the
        send broke the connection. Other threads append meanwhile and this thread sends
        their requests too; only one thread writes at a time. ``batch``: a request made by
        a done-callback, which the thread running the callbacks writes, with the others
        they make, when they are all done."""
        core = self._core
        if self._writing or (batch and self._dispatcher == threading.get_ident()):
            return ()
        if not deadline_ns:
            # A server that stops reading must not hold this thread forever.
            deadline_ns = _now() + self._send_timeout_ns
        self._writing = True
        try:
            while not chan.send_from(core.out):
                # Socket full: wait for room without the lock, so the reader can take the
                # replies that the server is waiting for us to read.
                if deadline_ns and _now() >= deadline_ns:
                    return self._fail_locked(chan, ConnectionLost(
                        "timed out sending (the server is not reading)"))
                self._lock.release()
                try:
                    chan.wait_writable(deadline_ns)
                finally:
                    self._lock.acquire()
                if chan is not self._chan:
                    return ()
        except RpcError as exc:
            return self._fail_locked(chan, exc)
        finally:
            self._writing = False
        return ()

    def _start(self, call: Call, method: str, args: tuple, timeout: Any,
               kwargs: dict[str, Any]) -> None:
        core = self._core
        core.prepare(call, method, args, timeout, _now(), kwargs)
        ended = ()
        with self._lock:
            chan = self._channel_locked()
            if core.submit(call, _now()) == _QUEUED and self._reading:
                # It waits for credit, and must fail when its wait ends: a reader sleeping
                # past that time is woken to re-arm for it.
                until = self._read_until
                if not until or core.next_deadline() < until:
                    chan.interrupt()
            if len(core.out):
                ended = self._flush_locked(chan, call.deadline, True)
                if ended:
                    self._tell_locked(ended)
        if ended:
            self._run_callbacks(ended)

    # -- calls -------------------------------------------------------------------------

    def call(self, method: str, /, *args: Any, timeout: float | None = _UNSET,
             **kwargs: Any) -> Any:
        """Call ``method(*args, **kwargs)`` on the server and return its result, or raise an
        RpcError. ``timeout`` is this call's own deadline, never passed to the method.
        Keyword arguments need the msgpack or pickle codec (raw: TypeError, nothing sent)."""
        call = Call()
        try:
            self._start(call, method, args, timeout, kwargs)
        except RpcError as exc:
            self._core.abort(call, exc)
            raise
        if call.state < _DONE:
            self._drive(call, None)
        if call.error is not None:
            try:
                raise call.error
            finally:
                del call               # the traceback keeps this frame: no cycle through it
        return call.value

    def call_async(self, method: str, /, *args: Any, timeout: float | None = _UNSET,
                   **kwargs: Any) -> concurrent.futures.Future:
        """Start ``method(*args, **kwargs)`` and return a Future for its outcome (an
        RpcError, even one known at once such as a client-side Overloaded, is set on the
        Future, not raised). Cancelling the Future tells the server (best effort) and frees
        the call. Arguments are checked as by :meth:`call` (bad ones raise here)."""
        fut = CallFuture(self)
        try:
            self._start(fut, method, args, timeout, kwargs)
        except RpcError as exc:
            # Every outcome of an asynchronous call, even an immediate one, is in its future.
            self._core.abort(fut, exc)
        return fut

    # -- reading -----------------------------------------------------------------------

    def _drive(self, call: Call, timeout: float | None) -> None:
        """Wait until ``call`` ends (or ``timeout`` seconds pass), reading the socket in
        this thread when no other thread is reading."""
        core = self._core
        lock = self._lock
        until = _now() + int(timeout * 1e9) if timeout is not None else 0
        while call.state < _DONE:
            ended = ()
            chan = None
            lock.acquire()
            try:
                if call.state >= _DONE:
                    return
                now = _now()
                if until and now >= until:
                    return
                due = core.next_deadline()
                wait_until = until if not due or (until and until < due) else due
                if due and now >= due:
                    ended = self._expire_locked(now)
                elif self._reading:
                    # Another thread reads: sleep until its next batch (or our own limit).
                    self._waiters += 1
                    try:
                        self._cond.wait((wait_until - now) / 1e9 if wait_until else None)
                    finally:
                        self._waiters -= 1
                elif self._chan is None or not core.ready:
                    if self._closed or not core.waiting:
                        return                  # its connection failed: the call says how
                    ended = self._reconnect_locked(wait_until)
                else:
                    chan, ended = self._become_reader_locked(wait_until)
            finally:
                lock.release()
            if ended:
                self._run_callbacks(ended)
            if chan is not None:
                self._read(chan, wait_until)

    def _expire_locked(self, now: int) -> Any:
        """End the calls that are due (lock held) and tell the server at once: a CANCEL
        that waited in the buffer would let the server start the work anyway."""
        ended = self._core.expire(now)
        chan = self._chan
        if chan is not None and len(self._core.out) and self._core.ready:
            ended = _join(ended, self._flush_locked(chan))
        self._tell_locked(ended)
        return ended

    def _become_reader_locked(self, wait_until: int) -> tuple[Any, Any]:
        """Take the reader role (lock held, nobody reading, connected) until ``wait_until``
        (0: a reply) and send what is buffered first: nobody may sleep on the socket with
        requests unsent. Returns the channel and the calls a failed send ended."""
        chan = self._chan
        self._reading = True
        self._read_until = wait_until
        ended = ()
        if len(self._core.out):
            ended = self._flush_locked(chan)
            self._tell_locked(ended)
        return chan, ended

    def _read(self, chan: Any, wait_until: int, block: bool = True) -> None:
        """One read as the reader (the role is held on entry and given up here)."""
        error = None
        try:
            frames = chan.recv_frames(wait_until, block)
        except RpcError as exc:
            frames, error = None, exc
        core = self._core
        with self._lock:
            self._reading = False
            if chan is not self._chan:
                chan.close()        # retired while we read; its calls have already ended
                ended = ()
            elif error is not None or chan.closed:
                ended = self._fail_locked(chan, error or ConnectionLost("connection closed"))
            else:
                now = _now()
                ended = core.receive(frames, now) if frames else ()
                if core.state == _BROKEN:
                    ended = _join(ended, self._fail_locked(chan, core.error))
                else:
                    due = core.next_deadline()
                    if due and now >= due:
                        ended = _join(ended, core.expire(now))
                    if len(core.out):
                        ended = _join(ended, self._flush_locked(chan))
            if self._waiters or self._service_waits:
                self._cond.notify_all()
            if ended:
                self._tell_locked(ended)
        if ended:
            self._run_callbacks(ended)

    def _poll(self) -> None:
        """Take replies the socket already holds, without blocking (for ``done()``)."""
        with self._lock:
            chan = self._chan
            if self._reading or chan is None or not self._core.ready:
                return
            self._reading = True
        self._read(chan, 0, False)

    # -- telling owners ----------------------------------------------------------------

    def _watch(self, fut: CallFuture) -> None:
        """From now on someone must be told when ``fut`` ends (lock held)."""
        if not fut.watched:
            fut.watched = True
            self._watched += 1
            if self._service is None:
                self._service = threading.Thread(target=self._serve, daemon=True,
                                                 name="microrpc-client-reader")
                self._service.start()
            elif self._service_waits:
                self._cond.notify_all()

    def _add_callback(self, fut: CallFuture, fn: Callable) -> bool:
        """Attach ``fn``; False if ``fut`` has already ended (the caller runs it now)."""
        with self._lock:
            if fut.state >= _DONE:
                return False
            if fut.callbacks is None:
                fut.callbacks = [fn]
            else:
                fut.callbacks.append(fn)
            self._watch(fut)
            return True

    def _tell_locked(self, ended: Any) -> None:
        """Wake the wait()/as_completed() waiters of futures that ended (lock held)."""
        for call in ended:
            if call.watched:
                call.watched = False
                self._watched -= 1
            waiters = call.waiters
            if waiters:
                for w in list(waiters):
                    if call.state == _CANCELLED:
                        w.add_cancelled(call)
                    elif call.error is not None:
                        w.add_exception(call)
                    else:
                        w.add_result(call)

    def _run_callbacks(self, ended: Any) -> None:
        """Run the done-callbacks of calls that ended (never with the lock held: they may
        call the client). Requests they make go out in one write when all have run."""
        runs = [(call, call.callbacks) for call in ended if call.callbacks]
        if not runs:
            return
        me = threading.get_ident()
        with self._lock:
            nested = self._dispatcher == me
            self._dispatcher = me
        try:
            for call, fns in runs:
                call.callbacks = None
                for fn in fns:
                    _run_callback(fn, call)
        finally:
            if not nested:
                with self._lock:
                    self._dispatcher = 0
                    chan = self._chan
                    more = ()
                    if chan is not None and len(self._core.out) and self._core.ready:
                        more = self._flush_locked(chan)
                        self._tell_locked(more)
                if more:
                    self._run_callbacks(more)

    def _serve(self) -> None:
        """The background reader: reads while watched futures are pending and no caller
        is reading; exits when the client closes."""
        core = self._core
        while True:
            ended = ()
            chan = None
            with self._lock:
                if self._closed:
                    return
                now = _now()
                due = core.next_deadline()
                if due and now >= due:
                    ended = self._expire_locked(now)
                elif (self._watched and not self._reading and core.waiting
                      and (self._chan is None or not core.ready)):
                    ended = self._reconnect_locked(due)
                elif self._reading or not self._watched or self._chan is None or not core.ready:
                    self._service_waits = True
                    try:
                        self._cond.wait(_IDLE_WAKE_NS / 1e9)
                    finally:
                        self._service_waits = False
                else:
                    wait_until = min(due, now + _IDLE_WAKE_NS) if due else now + _IDLE_WAKE_NS
                    chan, ended = self._become_reader_locked(wait_until)
            if ended:
                self._run_callbacks(ended)
            if chan is not None:
                self._read(chan, wait_until)

    def _cancel(self, fut: CallFuture) -> bool:
        with self._lock:
            if not self._core.cancel(fut):
                return False
            chan = self._chan
            ended = [fut]
            if chan is not None and len(self._core.out) and self._core.ready:
                ended += self._flush_locked(chan)
            if self._reading and chan is not None:
                chan.interrupt()        # a thread may sleep on the socket in fut.result()
            self._cond.notify_all()
            self._tell_locked(ended)
        self._run_callbacks(ended)
        return True

    # -- lifecycle ---------------------------------------------------------------------

    def ping(self, timeout: float | None = _UNSET) -> None:
        """Round-trip a call to a method that does not exist: proves the server answers."""
        try:
            self.call("__microrpc_ping__", timeout=timeout)
        except MethodNotFound:
            return

    def close(self) -> None:
        """Close the connection; calls still in flight end with ConnectionLost."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            chan = self._chan
            ended = self._core.fail(ConnectionLost("the client was closed"))
            if chan is not None:
                self._retire_locked(chan)
            self._tell_locked(ended)
            self._cond.notify_all()
        self._run_callbacks(ended)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def statistics(self) -> ClientStatistics:
        chan = self._chan
        return core_statistics(
            self._core, self._old_sent + (chan.bytes_sent if chan else 0),
            self._old_received + (chan.bytes_received if chan else 0))

    def __repr__(self) -> str:
        return f"<microrpc.Client {self.address}{' closed' if self._closed else ''}>"


def _join(a: Any, b: Any) -> Any:
    """Two lists of ended calls as one (either may be the shared empty tuple)."""
    if not b:
        return a
    if not a:
        return b
    return list(a) + list(b)
