"""Echo servers for bench/rpc_bench.py: one process, one server, 32-byte echo.

    python bench/rpc/server.py KIND [--address ADDR] [--poll block|spin] [--max-seconds S]

KIND is one of zmq-rep, zmq-router, grpc, socket, microrpc. The server prints
``READY <address>`` once it accepts connections and then serves until the harness
stops it by pid (SIGTERM) or its alarm fires.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

# common.py sits next to this script. Under PYTHONSAFEPATH (the test suite sets it so that
# no child imports the source tree by accident) the script's directory is not on sys.path,
# so put it there explicitly: it holds only these peer scripts.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import announce, arm_alarm  # noqa: E402


def _serve_zmq(kind: str, multipart: bool) -> None:
    import zmq

    sock = zmq.Context.instance().socket(getattr(zmq, kind))
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    announce(f"tcp://127.0.0.1:{port}")
    if multipart:
        recv, send = sock.recv_multipart, sock.send_multipart
    else:
        recv, send = sock.recv, sock.send
    while True:
        send(recv())


def serve_zmq_rep(address: str) -> None:
    _serve_zmq("REP", multipart=False)


def serve_zmq_router(address: str) -> None:
    """The usual pyzmq ROUTER echo loop (one thread, recv_multipart/send_multipart):
    the reference for both DEALER/ROUTER ping-pong and pipelined throughput."""
    _serve_zmq("ROUTER", multipart=True)


GRPC_METHOD = "/bench.Echo/Echo"


def serve_grpc(address: str) -> None:
    """grpcio sync server with a raw-bytes unary method: no serializers given, so the
    handler sees and returns the request bytes untouched (no protobuf codegen)."""
    from concurrent import futures

    import grpc

    def echo(request: bytes, context) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(f"127.0.0.1:{port}")
    server.wait_for_termination()


def serve_socket(address: str) -> None:
    """Plain Python socket echo of fixed 32-byte messages, one connection."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    announce(f"tcp://127.0.0.1:{lsock.getsockname()[1]}")
    conn, _ = lsock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(32)
    view = memoryview(buf)
    recv_into, sendall = conn.recv_into, conn.sendall
    while True:
        got = 0
        while got < 32:
            r = recv_into(view[got:])
            if r == 0:
                return
            got += r
        sendall(buf)


def serve_microrpc(address: str, poll: str) -> None:
    import microrpc

    server = microrpc.Server(address, poll=poll)
    server.register("echo", lambda x: x)  # plain handler: runs on the server's I/O thread
    # The same, for exactly-once calls: the server keeps a completion record of each.
    server.register("echo_once", lambda x: x, idempotent=False)
    server.start()
    announce(server.address)
    # start() runs the I/O loop on a background thread; park the main thread until the
    # harness's SIGTERM (default action) ends the process.
    import threading

    threading.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["zmq-rep", "zmq-router", "grpc", "socket", "microrpc"])
    ap.add_argument("--address", default="auto", help="microrpc: tcp://127.0.0.1:0 or unix:///path")
    ap.add_argument("--poll", default="block", choices=["block", "spin", "adaptive"])
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args()
    arm_alarm(args.max_seconds)
    if args.kind == "zmq-rep":
        serve_zmq_rep(args.address)
    elif args.kind == "zmq-router":
        serve_zmq_router(args.address)
    elif args.kind == "grpc":
        serve_grpc(args.address)
    elif args.kind == "socket":
        serve_socket(args.address)
    else:
        serve_microrpc(args.address if args.address != "auto" else "tcp://127.0.0.1:0", args.poll)


if __name__ == "__main__":
    main()
