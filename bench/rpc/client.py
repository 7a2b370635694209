"""Clients for bench/rpc_bench.py: closed-loop latency or pipelined throughput.

    python bench/rpc/client.py KIND ADDRESS [--calls N --warmup N] [--inflight K
        --seconds S --warmup-seconds S] [--codec raw|msgpack] [--poll block|spin]

Latency kinds (one call in flight, ``--calls`` timed calls after ``--warmup``):
zmq-req, zmq-dealer, grpc, socket, microrpc. Throughput kinds (``--inflight`` calls in
flight, completions counted over ``--seconds``): zmq-dealer-pipe, microrpc-pipe.
Prints one JSON line; latency results carry an encoded HdrHistogram (ns).
"""
from __future__ import annotations

import argparse
import collections
import os
import socket
import sys
import time
from typing import Callable

# common.py sits next to this script. Under PYTHONSAFEPATH (the test suite sets it so that
# no child imports the source tree by accident) the script's directory is not on sys.path,
# so put it there explicitly: it holds only these peer scripts.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PAYLOAD, arm_alarm, emit, latency_loop, throughput_window  # noqa: E402


def _zmq_client(kind: str):
    """A one-socket pyzmq peer: send a request, wait for its reply (REQ or DEALER)."""
    def connect(address: str, args) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
        import zmq

        sock = zmq.Context.instance().socket(getattr(zmq, kind))
        sock.connect(address)
        send, recv = sock.send, sock.recv

        def call(p: bytes) -> bytes:
            send(p)
            return recv()

        return call, sock.close
    return connect


zmq_req = _zmq_client("REQ")
zmq_dealer = _zmq_client("DEALER")


def grpc_client(address: str, args):
    import grpc

    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    # No serializers: the request and response are the raw bytes (matches the server's
    # generic handler, so there is no protobuf anywhere on the path).
    stub = channel.unary_unary("/bench.Echo/Echo")
    return stub, channel.close


def socket_client(address: str, args):
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sendall, recv = sock.sendall, sock.recv

    def call(p: bytes) -> bytes:
        sendall(p)
        data = recv(32)
        while len(data) < 32:
            more = recv(32 - len(data))
            if not more:
                raise SystemExit("server closed the connection")
            data += more
        return data

    return call, sock.close


def microrpc_client(address: str, args):
    import functools

    import microrpc

    c = microrpc.Client(address, codec=args.codec, poll=args.poll, timeout=5.0,
                        exactly_once=args.once)
    return functools.partial(c.call, "echo_once" if args.once else "echo"), c.close


LATENCY = {
    "zmq-req": zmq_req,
    "zmq-dealer": zmq_dealer,
    "grpc": grpc_client,
    "socket": socket_client,
    "microrpc": microrpc_client,
}


def zmq_dealer_pipe(address: str, args) -> dict:
    """pyzmq DEALER keeping ``inflight`` requests outstanding against a ROUTER echo."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(address)
    send, recv = sock.send, sock.recv
    for _ in range(args.inflight):
        send(PAYLOAD)
    poll = zmq.NOBLOCK

    def step() -> int:
        # Block for one reply, then drain what is already there; each reply is
        # replaced at once so the window stays full.
        n = 0
        reply = recv()
        while True:
            if reply != PAYLOAD:
                raise SystemExit("echo mismatch")
            send(PAYLOAD)
            n += 1
            try:
                reply = recv(poll)
            except zmq.Again:
                return n

    out = throughput_window(step, args.warmup_seconds, args.seconds)
    sock.close(linger=0)
    return out


def microrpc_pipe(address: str, args) -> dict:
    """microrpc Python client: ``call_async`` with a window of ``inflight`` futures,
    waiting on the oldest and replacing it as soon as it completes."""
    import microrpc

    c = microrpc.Client(address, codec=args.codec, poll=args.poll, timeout=5.0,
                        exactly_once=args.once)
    call_async = c.call_async
    method = "echo_once" if args.once else "echo"
    window = collections.deque(call_async(method, PAYLOAD) for _ in range(args.inflight))
    popleft, append = window.popleft, window.append

    def step() -> int:
        if popleft().result(timeout=5.0) != PAYLOAD:
            raise SystemExit("echo mismatch")
        append(call_async(method, PAYLOAD))
        return 1

    out = throughput_window(step, args.warmup_seconds, args.seconds)
    for f in window:
        f.result(timeout=5.0)
    c.close()
    return out


def _aio_pipe(address: str, args, uvloop: bool) -> dict:
    """microrpc ``AsyncClient``: ``inflight`` tasks, each awaiting one call after another."""
    import asyncio

    import microrpc

    async def main() -> dict:
        clock = time.perf_counter_ns
        counts = [0]
        async with microrpc.AsyncClient(address, codec=args.codec, timeout=5.0) as ac:
            call = ac.call
            stop = [False]

            async def worker() -> None:
                while not stop[0]:
                    if await call("echo", PAYLOAD) != PAYLOAD:
                        raise SystemExit("echo mismatch")
                    counts[0] += 1

            tasks = [asyncio.ensure_future(worker()) for _ in range(args.inflight)]
            await asyncio.sleep(args.warmup_seconds)
            n0, t0 = counts[0], clock()
            await asyncio.sleep(args.seconds)
            n1, t1 = counts[0], clock()
            stop[0] = True
            await asyncio.gather(*tasks)
        return {"completed": n1 - n0, "elapsed_ns": t1 - t0}

    if uvloop:
        import uvloop as uv
        return uv.run(main())
    return asyncio.run(main())


def microrpc_aio_pipe(address: str, args) -> dict:
    return _aio_pipe(address, args, uvloop=False)


def microrpc_uvloop_pipe(address: str, args) -> dict:
    return _aio_pipe(address, args, uvloop=True)


THROUGHPUT = {"zmq-dealer-pipe": zmq_dealer_pipe, "microrpc-pipe": microrpc_pipe,
              "microrpc-aio-pipe": microrpc_aio_pipe, "microrpc-uvloop-pipe": microrpc_uvloop_pipe}


def callback_latency(address: str, args) -> dict:
    """One ``call_async`` in flight, consumed only through ``add_done_callback``: the time
    from the call to its callback (the caller waits on an Event, never in ``result()``, so
    the client's own reader thread reads the reply)."""
    import threading
    from array import array

    from hdrh.histogram import HdrHistogram

    import microrpc
    from common import HIST_ARGS

    c = microrpc.Client(address, codec=args.codec, poll=args.poll, timeout=5.0)
    clock = time.perf_counter_ns
    lat = array("q", bytes(8 * args.calls))
    done = threading.Event()
    box = [0, None]

    def on_done(f) -> None:
        box[0] = clock()
        box[1] = f.result()
        done.set()

    deadline = clock() + int(args.max_seconds * 1e9)
    n = 0
    truncated = False
    for i in range(args.warmup + args.calls):
        done.clear()
        t0 = clock()
        c.call_async("echo", PAYLOAD).add_done_callback(on_done)
        if not done.wait(5.0):
            raise SystemExit("a done-callback never ran")
        if box[1] != PAYLOAD:
            raise SystemExit("echo mismatch")
        if i >= args.warmup:
            lat[n] = box[0] - t0
            n += 1
            if box[0] > deadline:
                truncated = n < args.calls
                break
    c.close()
    hist = HdrHistogram(*HIST_ARGS)
    for v in lat[:n]:
        hist.record_value(max(1, v))
    return {"calls": n, "truncated": truncated, "hist": hist.encode().decode("ascii")}


OWN_LOOP = {"microrpc-callback": callback_latency}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=sorted(LATENCY) + sorted(THROUGHPUT) + sorted(OWN_LOOP))
    ap.add_argument("address")
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="stop timing after this long and report the calls done (marked truncated)")
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--warmup-seconds", type=float, default=0.5)
    ap.add_argument("--codec", default="raw", choices=["raw", "msgpack"])
    ap.add_argument("--poll", default="block", choices=["block", "spin", "adaptive"])
    ap.add_argument("--once", action="store_true",
                    help="microrpc: exactly-once calls (Client(exactly_once=True)) of a method "
                         "registered idempotent=False")
    args = ap.parse_args()
    # Hard bound well past the soft one: the harness also kills us on its own timeout.
    arm_alarm(max(args.max_seconds, args.seconds + args.warmup_seconds) + 30)
    affinity = sorted(os.sched_getaffinity(0))
    if args.kind in THROUGHPUT:
        out = THROUGHPUT[args.kind](args.address, args)
    elif args.kind in OWN_LOOP:
        out = OWN_LOOP[args.kind](args.address, args)
    else:
        call, close = LATENCY[args.kind](args.address, args)
        out = latency_loop(call, args.calls, args.warmup, args.max_seconds)
        close()
    out["affinity"] = affinity
    emit(out)


if __name__ == "__main__":
    main()
