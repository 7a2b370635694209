"""The asyncio client: a thin driver over the client protocol core on an event loop.

No thread, no task and no timer per call. ``call`` hands its request to the core and awaits
a plain future. The requests made in one turn of the event loop leave in one ``send``
(a callback scheduled once per turn writes them all). One reader callback on the socket's
fd feeds every frame it reads to the core and wakes the futures of every call the batch
ended. Deadlines are kept by the core; one timer on the loop, armed for the earliest,
expires them. The socket read is never cancelled, so no reply is ever lost half-read.
Works on any asyncio loop, uvloop included. An ``AsyncClient`` belongs to the event loop it
was first used on.
"""
from __future__ import annotations

import asyncio
from typing import Any

import breakwater
from microrpc import _clientcore, _core, _native, auth, channel, codecs, transport
from microrpc._clientcore import Call, ClientCore
from microrpc.client import (
    DEFAULT_TIMEOUT, ClientStatistics, _join, check_client_options, core_statistics,
)
from microrpc.errors import ConnectionLost, RpcError

__all__ = ["AsyncClient"]

_UNSET: Any = _clientcore.USE_DEFAULT
_DONE = _clientcore.DONE
_BROKEN = _clientcore.BROKEN
_now = _native.monotonic_ns


class AsyncClient:
    """asyncio twin of :class:`microrpc.Client` (same arguments, ``await`` the calls;
    ``auth_key`` as there).

    ``exactly_once=True`` works as for :class:`microrpc.Client`: when the connection is
    lost, a task reconnects (backing off from 5 ms to 0.5 s) and the pending calls go again
    with their ids, until each is answered or its deadline passes."""

    def __init__(
        self,
        address: str,
        *,
        codec: str = "msgpack",
        timeout: float | None = DEFAULT_TIMEOUT,
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
        self._auth_key = auth.check_key(auth_key)
        self.address = address
        self._max_message_size = max_message_size
        self._connect_timeout = connect_timeout
        self._core = ClientCore(codecs.codec_id(codec), session, max_message_size, timeout,
                                credit_queue, int(credit_wait * 1e9), decode_limits,
                                bool(exactly_once))
        self._recovering: asyncio.Task | None = None   # exactly-once: reconnecting
        self._chan: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future | None = None
        self._hello: asyncio.Future | None = None
        self._writing = False          # the writer callback is armed (socket was full)
        self._flush_armed = False      # a flush is scheduled for the end of this loop turn
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._closed = False
        self._fd = -1                  # the fd the loop watches for us
        self._old_sent = self._old_received = 0

    # -- connection --------------------------------------------------------------------

    async def connect(self) -> "AsyncClient":
        await self._channel()
        return self

    async def _channel(self) -> Any:
        chan = self._chan
        if chan is not None and self._core.ready:
            return chan
        if self._closed:
            raise ConnectionLost("the client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an AsyncClient is bound to the event loop it was first used on")
        if self._connecting is None:
            self._connecting = loop.create_task(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> Any:
        loop = self._loop
        sock, target = transport.client_socket(self.address)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, target), self._connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            raise ConnectionLost(f"cannot connect to {self.address}: {exc}") from None
        if self._auth_key is not None:
            try:
                await auth.authenticate_async(loop, sock, self._auth_key,
                                              self._connect_timeout, self.address)
            except BaseException:
                sock.close()
                raise
        chan = channel.wrap_socket(sock, max_message_size=self._max_message_size)
        core = self._core
        core.close_idle()
        core.begin(_now())
        self._chan = chan
        self._hello = loop.create_future()
        # Remembered: a channel that fails closes its fd before _fail runs, and the loop
        # must forget the number before the next socket is given the same one.
        self._fd = chan.fileno()
        loop.add_reader(self._fd, self._on_readable, chan)
        self._flush(chan)
        try:
            await asyncio.wait_for(asyncio.shield(self._hello), self._connect_timeout)
        except asyncio.TimeoutError:
            self._fail(chan, ConnectionLost(f"no answer from {self.address}"))
            raise ConnectionLost(f"no answer from {self.address} within "
                                 f"{self._connect_timeout} s") from None
        except RpcError as exc:
            self._fail(chan, exc)
            raise
        return chan

    def _fail(self, chan: Any, error: RpcError) -> None:
        if self._chan is not chan:
            return
        self._chan = None
        self._old_sent += chan.bytes_sent
        self._old_received += chan.bytes_received
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._loop is not None:
            self._loop.remove_reader(fd)
            if self._writing:
                self._loop.remove_writer(fd)
        self._writing = False
        chan.close()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(error)
        # An exactly-once core keeps its pending calls for the next connection, which a
        # task makes at once (closing the client ends them instead).
        self._wake(self._core.fail(error, not self._closed))
        if self._core.waiting and self._recovering is None and not self._closed:
            self._recovering = self._loop.create_task(self._recover())

    async def _recover(self) -> None:
        """Reconnect while exactly-once calls wait for a connection. A failed try ends
        the waiting calls that have no deadline; the others wait for the next try or their
        deadline (the timer ends them)."""
        backoff = 0.0
        core = self._core
        try:
            while core.waiting and not self._closed:
                try:
                    await self._channel()
                    return          # the core sent them again when the connection was ready
                except RpcError as exc:
                    self._wake(core.fail_waiting(exc))
                backoff = min(max(2 * backoff, 0.005), 0.5)
                await asyncio.sleep(backoff)
        finally:
            self._recovering = None

    # -- I/O callbacks -----------------------------------------------------------------

    def _on_readable(self, chan: Any) -> None:
        try:
            frames = chan.recv_frames(0, False)
        except RpcError as exc:
            self._fail(chan, exc)
            return
        if not frames:
            return
        core = self._core
        now = _now()
        ended = core.receive(frames, now)
        if self._timer_at and now >= self._timer_at:
            ended = _join(ended, self._expire_due(now))
        elif core.exactly_once:
            self._arm_timer()              # an "in progress" answer: ask again soon
        if core.state == _BROKEN:
            self._wake(ended)
            self._fail(chan, core.error)
            return
        hello = self._hello
        if hello is not None and core.ready and not hello.done():
            hello.set_result(None)
        if len(core.out):
            self._flush(chan)              # requests that credits let go
        if ended:
            self._wake(ended)

    @staticmethod
    def _wake(ended: Any) -> None:
        """Complete the futures of calls that ended: with the call's own outcome, so that
        a future from call_async needs nothing more, and ``call`` just awaits it."""
        for call in ended:
            fut = call.owner
            if fut is not None and not fut.done():
                error = call.error
                if error is None:
                    fut.set_result(call.value)
                else:
                    fut.set_exception(error)

    def _flush(self, chan: Any) -> None:
        self._flush_armed = False
        if self._writing or self._chan is not chan:
            return             # the writer callback sends it with the rest
        try:
            done = chan.send_from(self._core.out)
        except RpcError as exc:
            self._fail(chan, exc)    # fails every waiting call
            return
        if not done:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable, chan)

    def _on_writable(self, chan: Any) -> None:
        try:
            done = chan.send_from(self._core.out)
        except RpcError as exc:
            self._fail(chan, exc)
            return
        if done and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _flush_soon(self, chan: Any) -> None:
        if not self._flush_armed:
            self._flush_armed = True
            self._loop.call_soon(self._flush, chan)

    def _arm_timer(self) -> None:
        due = self._core.next_deadline()
        if not due or (self._timer is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(self._loop.time() + max(due - _now(), 0) / 1e9,
                                         self._on_timer)

    def _on_timer(self) -> None:
        self._wake(self._expire_due(_now()))

    def _expire_due(self, now: int) -> Any:
        """End what is due (the timer fired, or a reply or call came first: uvloop's timers
        tick in milliseconds, a credit wait is 100 us) and re-arm for what is next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = 0
        core = self._core
        ended = core.expire(now)
        chan = self._chan
        if chan is not None and len(core.out):
            self._flush_soon(chan)         # CANCEL frames for the calls that expired
        self._arm_timer()
        return ended

    # -- calls -------------------------------------------------------------------------

    def _start(self, method: str, args: tuple, timeout: Any,
               kwargs: dict[str, Any]) -> tuple[Call, asyncio.Future]:
        """Prepare and submit one call on the open connection; its future is completed with
        its outcome (already, if the credit queue refused it)."""
        core = self._core
        call = Call()
        call.watched = True
        now = _now()
        try:
            core.prepare(call, method, args, timeout, now, kwargs)
        except RpcError as exc:        # too large: it counts as a call that failed
            core.abort(call, exc)
            raise
        fut = self._loop.create_future()
        call.owner = fut
        if self._timer_at and now >= self._timer_at:
            self._wake(self._expire_due(now))
        core.submit(call, now)
        if call.state >= _DONE:
            self._wake((call,))
        else:
            if len(core.out):
                self._flush_soon(self._chan)
            if call.deadline and (self._timer is None or call.deadline < self._timer_at):
                self._arm_timer()
            elif call.state == _clientcore.QUEUED:
                self._arm_timer()
        return call, fut

    def call_async(self, method: str, /, *args: Any, timeout: float | None = _UNSET,
                   **kwargs: Any) -> asyncio.Future:
        """Start ``method(*args, **kwargs)`` now and return an ``asyncio.Future`` of its outcome: the
        result, or the RpcError set on it. Costs no task. The client must be connected
        (``await client.connect()``, or ``async with``). Cancelling the future cancels the
        call at the server (best effort)."""
        chan = self._chan
        if chan is None or not self._core.ready:
            if self._closed:
                raise ConnectionLost("the client is closed")
            # (Re)connecting needs the loop: wrap the awaitable form in a task.
            return asyncio.ensure_future(self.call(method, *args, timeout=timeout, **kwargs))
        call, fut = self._start(method, args, timeout, kwargs)
        if call.state < _DONE:
            fut.add_done_callback(lambda f, call=call: self._forget(f, call))
        return fut

    def _forget(self, fut: asyncio.Future, call: Call) -> None:
        if fut.cancelled() and self._core.cancel(call):
            chan = self._chan
            if chan is not None and len(self._core.out):
                self._flush_soon(chan)

    async def call(self, method: str, /, *args: Any, timeout: float | None = _UNSET,
                   **kwargs: Any) -> Any:
        """``await`` the result of ``method(*args, **kwargs)`` on the server, or an RpcError.
        ``timeout`` is this call's own deadline, never passed to the method; keyword
        arguments need the msgpack or pickle codec (raw: TypeError, nothing sent)."""
        core = self._core
        if self._chan is None or not core.ready:
            try:
                await self._channel()
            except RpcError as exc:
                core.abort(Call(), exc)        # a call that could not start: counted once
                raise
        call, fut = self._start(method, args, timeout, kwargs)
        try:
            return await fut
        except asyncio.CancelledError:
            if core.cancel(call) and self._chan is not None and len(core.out):
                self._flush_soon(self._chan)
            raise
        finally:
            del call, fut              # a raised error's traceback keeps this frame: no cycle

    # -- lifecycle ---------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        chan = self._chan
        if chan is not None:
            self._fail(chan, ConnectionLost("the client was closed"))
        else:
            self._wake(self._core.fail(ConnectionLost("the client was closed")))
        if self._recovering is not None:
            self._recovering.cancel()

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def statistics(self) -> ClientStatistics:
        chan = self._chan
        return core_statistics(
            self._core, self._old_sent + (chan.bytes_sent if chan else 0),
            self._old_received + (chan.bytes_received if chan else 0))
