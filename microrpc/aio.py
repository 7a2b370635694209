"""The asyncio client: one reader callback on the socket's fd routes replies to futures.

No thread per call and no task per call: ``call`` queues its frame, tries to send it at once
(falling back to a writer callback when the socket is full) and awaits a future that the
reader callback completes. Timeouts are timer callbacks on the loop that fail the future;
the socket read is never cancelled, so no reply is ever lost half-read.
An ``AsyncClient`` belongs to the event loop it was first used on.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import breakwater
from microrpc import _core, _native, codecs, transport
from microrpc.client import (
    _UNSET, DEFAULT_TIMEOUT, ClientStatistics, check_client_options, method_name, outcome_of,
)
from microrpc.errors import ConnectionLost, DeadlineExceeded, Overloaded, RpcError

__all__ = ["AsyncClient"]


class _Call:
    """One call: its future, and what is needed to send it if it waits for credit."""
    __slots__ = ("fut", "name", "body", "deadline_us", "cid")

    def __init__(self, fut, name, body, deadline_us):
        self.fut = fut
        self.name = name
        self.body = body
        self.deadline_us = deadline_us
        self.cid = 0


class AsyncClient:
    """asyncio twin of :class:`microrpc.Client` (same arguments, ``await`` the calls)."""

    def __init__(
        self,
        address: str,
        *,
        codec: str = "msgpack",
        timeout: float | None = DEFAULT_TIMEOUT,
        max_message_size: int = _core.DEFAULT_MAX_MESSAGE_SIZE,
        connect_timeout: float | None = 5.0,
        session: int = 0,
    ):
        check_client_options(address, timeout, session)
        self.address = address
        self._codec = codecs.codec_id(codec)
        self._timeout = timeout
        self._max_message_size = max_message_size
        self._connect_timeout = connect_timeout
        self._session = session
        self._table = _core.CallTable()
        self._chan: _native.Channel | None = None
        self._credits: breakwater.ClientCredits | None = None
        self._hello: asyncio.Future | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future | None = None
        self._writing = False
        self._closed = False
        self._names: dict[str, bytes] = {}
        self._connects = 0
        self._calls = self._ok = self._errors = self._timeouts = 0

    # -- connection --------------------------------------------------------------------

    async def connect(self) -> "AsyncClient":
        await self._channel()
        return self

    async def _channel(self) -> _native.Channel:
        chan = self._chan
        if chan is not None and not chan.closed:
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

    async def _open(self) -> _native.Channel:
        addr = transport.parse_address(self.address)
        loop = self._loop
        if addr.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = addr.path
        else:
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = (addr.host, addr.port)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, target), self._connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            raise ConnectionLost(f"cannot connect to {self.address}: {exc}") from None
        chan = _native.Channel(sock.detach(), self._max_message_size, "block")
        self._chan = chan
        self._connects += 1
        # The handshake: a ping whose pong says whether the server hands out credits.
        self._hello = loop.create_future()
        self._credits = None
        loop.add_reader(chan.fileno(), self._on_readable, chan)
        try:
            chan.send_frame(_core.PING, 0, b"", b"", 0, self._session)
            await asyncio.wait_for(asyncio.shield(self._hello), self._connect_timeout)
        except asyncio.TimeoutError:
            self._fail(chan, ConnectionLost(f"no answer from {self.address}"))
            raise ConnectionLost(f"no answer from {self.address} within "
                                 f"{self._connect_timeout} s") from None
        except RpcError as exc:
            self._fail(chan, exc)
            raise
        return chan

    def _fail(self, chan: _native.Channel, error: RpcError) -> None:
        if self._chan is not chan:
            return
        self._chan = None
        fd = chan.fileno()
        if fd >= 0 and self._loop is not None:
            self._loop.remove_reader(fd)
            if self._writing:
                self._loop.remove_writer(fd)
        self._writing = False
        chan.close()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(error)
        waiting = self._table.drain()
        if self._credits is not None:
            # Calls still waiting for credit fail too: reset() hands back the queue head and
            # an expire() far in the future the rest.
            waiting.extend(call.fut for call in self._credits.reset(0))
            waiting.extend(call.fut for call in self._credits.expire(2**62))
            self._credits = None
        for fut in waiting:
            if not fut.done():
                fut.set_exception(error)

    # -- I/O callbacks -----------------------------------------------------------------

    def _on_readable(self, chan: _native.Channel) -> None:
        try:
            frames = chan.recv_frames(0, False)
        except RpcError as exc:
            self._fail(chan, exc)
            return
        table = self._table
        credits = self._credits
        ready: list = []
        now = _native.monotonic_ns() if credits is not None else 0
        for f in frames:
            kind = f.kind
            if kind == _core.RESPONSE or kind == _core.ERROR:
                fut = table.pop(f.call_id)
                if fut is not None and not fut.done():
                    fut.set_result(f)
                if credits is not None:
                    try:
                        ready.extend(credits.on_response(
                            f.credit if f.flags & _core.HAS_CREDIT else None, now))
                    except ValueError:
                        pass
            elif kind == _core.CREDIT and credits is not None:
                ready.extend(credits.on_credit(f.credit, now))
            elif kind == _core.PONG and self._hello is not None and not self._hello.done():
                if f.flags & _core.HAS_CREDIT:
                    credits = self._credits = breakwater.ClientCredits()
                    now = _native.monotonic_ns()
                    credits.on_credit(f.credit, now)
                self._hello.set_result(None)
        if ready:
            self._transmit(chan, ready)

    def _transmit(self, chan: _native.Channel, ready: list) -> None:
        """Send the calls that waited for credit and now have it."""
        credits = self._credits
        try:
            for call in ready:
                if call.fut.done():
                    continue
                call.cid = self._table.add(call.fut)
                chan.put_frame(_core.REQUEST, call.cid, call.name, call.body, self._codec,
                               self._session, call.deadline_us, credits.demand())
        except RpcError as exc:
            self._fail(chan, exc)
            return
        self._send(chan)

    def _expire_queued(self) -> None:
        """Fail calls that waited for credit too long; re-arm for the next one."""
        self._expiry = None
        credits = self._credits
        if credits is None:
            return
        for call in credits.expire(_native.monotonic_ns()):
            if not call.fut.done():
                call.fut.set_exception(Overloaded("no credit arrived in time", side="client"))
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        credits = self._credits
        if self._expiry is not None or credits is None:
            return
        deadline = credits.next_deadline_ns()
        if deadline is not None:
            delay = max(deadline - _native.monotonic_ns(), 0) / 1e9
            self._expiry = self._loop.call_later(delay, self._expire_queued)

    def _on_writable(self, chan: _native.Channel) -> None:
        try:
            done = chan.flush(0, False)
        except RpcError as exc:
            self._fail(chan, exc)
            return
        if done and self._writing:
            self._writing = False
            self._loop.remove_writer(chan.fileno())

    def _send(self, chan: _native.Channel) -> None:
        if self._writing:
            return             # the writer callback will send it with the rest
        try:
            done = chan.flush(0, False)
        except RpcError as exc:
            self._fail(chan, exc)    # fails every waiting future, the caller's included
            return
        if not done:
            self._writing = True
            self._loop.add_writer(chan.fileno(), self._on_writable, chan)

    # -- calls -------------------------------------------------------------------------

    async def call(self, method: str, *args: Any, timeout: float | None = _UNSET) -> Any:
        """``await`` the result of ``method(*args)`` on the server, or an RpcError."""
        name = method_name(self._names, method)
        body = codecs.encode_args(self._codec, args)
        if timeout is _UNSET:
            timeout = self._timeout
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive or None")
        chan = await self._channel()
        loop = self._loop
        fut = loop.create_future()
        self._calls += 1
        deadline_us = min(max(int(timeout * 1e6), 1), 0xFFFFFFFF) if timeout is not None else 0
        call = _Call(fut, name, body, deadline_us)
        credits = self._credits
        demand = 0
        if credits is not None:
            decision = credits.submit(call, _native.monotonic_ns())
            if decision == breakwater.Submit.REJECTED:
                self._errors += 1
                raise Overloaded("no credit, and the client's local queue is full",
                                 side="client")
            demand = credits.demand()
        else:
            decision = breakwater.Submit.SEND
        if decision == breakwater.Submit.SEND:
            call.cid = self._table.add(fut)
            try:
                chan.put_frame(_core.REQUEST, call.cid, name, body, self._codec, self._session,
                               deadline_us, demand)
            except RpcError:
                self._table.pop(call.cid)
                self._errors += 1
                raise
            self._send(chan)
        else:
            self._arm_expiry()             # queued: it waits for credit, for a bounded time
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._expire, call)
        try:
            frame = await fut
            result = outcome_of(frame)
        except asyncio.CancelledError:
            self._abandon(chan, call)
            raise
        except DeadlineExceeded:
            self._timeouts += 1
            self._errors += 1
            raise
        except RpcError:
            self._errors += 1
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._ok += 1
        return result

    def _expire(self, call: _Call) -> None:
        if not call.fut.done():
            call.fut.set_exception(DeadlineExceeded("no reply within the deadline"))
            chan = self._chan
            if chan is not None:
                self._abandon(chan, call)

    def _abandon(self, chan: _native.Channel, call: _Call) -> None:
        """Forget a call: unqueue it, or tell the server (best effort)."""
        cid = call.cid
        if not cid:
            if self._credits is not None:
                self._credits.cancel(call)
            return
        if self._table.pop(cid) is None:
            return          # already answered: nothing to cancel
        if not chan.closed:
            try:
                chan.put_frame(_core.CANCEL, cid, b"", b"", 0, self._session)
                self._send(chan)
            except RpcError:
                pass

    # -- lifecycle ---------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        chan = self._chan
        if chan is not None:
            self._fail(chan, ConnectionLost("the client was closed"))

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def statistics(self) -> ClientStatistics:
        chan = self._chan
        return ClientStatistics(
            calls=self._calls, ok=self._ok, errors=self._errors, timeouts=self._timeouts,
            in_flight=len(self._table), reconnects=max(self._connects - 1, 0),
            bytes_sent=chan.bytes_sent if chan else 0,
            bytes_received=chan.bytes_received if chan else 0,
            credits=self._credits.statistics() if self._credits is not None else None,
        )
