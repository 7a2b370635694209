#!/usr/bin/env python
"""Hostile peers of a microrpc server, one kind per process, for bench/hostile_bench.py.

    python bench/hostile/attackers.py KIND ADDRESS [--seconds S]

Each attacker speaks the wire format of docs/wire.md with ``struct`` and plain sockets (a
hostile peer does not use microrpc's code), prints ``ready`` on stdout once its attack is
under way, and stops by itself after ``--seconds`` (or when killed). It runs at the lowest
CPU priority, so that on a shared core it takes time from the well-behaved client only when
that client has nothing to do.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import socket
import struct
import sys
import time
from typing import Callable

# docs/wire.md: magic, version, kind, flags, codec, name_len, call_id, session,
# deadline_us, credit, body_len; little-endian, 32 bytes.
HEADER = struct.Struct("<2sBBBBHQIIII")
REQUEST, CANCEL, PING = 1, 5, 6
RAW, MSGPACK = 0, 1
SPIN = b"spin"


def frame(kind: int, call_id: int = 0, name: bytes = b"", body: bytes = b"", *,
          codec: int = RAW, session: int = 0, deadline_us: int = 0, credit: int = 0) -> bytes:
    return HEADER.pack(b"\xb5R", 1, kind, 0, codec, len(name), call_id, session, deadline_us,
                       credit, len(body)) + name + body


def connect(address: str) -> socket.socket:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send_quietly(s: socket.socket, data: bytes) -> bool:
    """Send without blocking for long; False if the server closed or refused the data."""
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def ready() -> None:
    print("ready", flush=True)


def hold(until: float) -> None:
    while time.monotonic() < until:
        time.sleep(0.05)


# ------------------------------------------------------------------------------ attacks


def idle_connections(address: str, until: float, n: int = 1000) -> None:
    """``n`` connections that never send a byte."""
    socks = []
    for _ in range(n):
        try:
            socks.append(connect(address))
        except OSError:
            break                   # the server (or this process) is out of descriptors
    print(f"opened {len(socks)} connections", file=sys.stderr)
    ready()
    hold(until)


def half_frame(address: str, until: float, n: int = 10) -> None:
    """``n`` connections that each send a header announcing a 1 MiB body, 100 bytes of it,
    and then nothing."""
    socks = []
    for i in range(n):
        s = connect(address)
        data = frame(REQUEST, i + 1, SPIN, b"\0" * (1 << 20))
        s.sendall(data[:HEADER.size + len(SPIN) + 100])
        socks.append(s)
    ready()
    hold(until)


def garbage(address: str, until: float, n: int = 10) -> None:
    """``n`` connections writing random bytes; each reconnects when the server closes it."""
    rng = random.Random(1)
    socks: list[socket.socket | None] = [None] * n
    ready()
    while time.monotonic() < until:
        for i in range(n):
            if socks[i] is None:
                try:
                    socks[i] = connect(address)
                except OSError:
                    continue
            if not send_quietly(socks[i], rng.randbytes(4096)):
                socks[i].close()
                socks[i] = None


def flood(address: str, until: float) -> None:
    """Requests (50 us of work each) written as fast as the socket takes them, replies never
    read."""
    s = connect(address)
    s.settimeout(0.1)
    work = struct.pack("<Q", 50_000)
    batch = b"".join(frame(REQUEST, i + 1, SPIN, work) for i in range(256))
    ready()
    while time.monotonic() < until:
        try:
            s.send(batch)
        except socket.timeout:
            continue                # the server stopped reading us: keep pushing
        except OSError:
            s.close()
            s = connect(address)
            s.settimeout(0.1)


def connect_close(address: str, until: float) -> None:
    """Connect, ping, close, as fast as possible."""
    ready()
    while time.monotonic() < until:
        try:
            s = connect(address)
            send_quietly(s, frame(PING, 1, session=1))
            s.close()
        except OSError:
            time.sleep(0.001)


def msgpack_bomb(address: str, until: float) -> None:
    """A just-under-16 MiB msgpack request body: one array of ~16.7 million empty arrays."""
    count = 16 * 1024 * 1024 - 64
    body = b"\xdd" + struct.pack(">I", count) + b"\x90" * count
    data = frame(REQUEST, 1, SPIN, body, codec=MSGPACK)
    ready()
    while time.monotonic() < until:
        try:
            s = connect(address)
            s.settimeout(max(0.1, until - time.monotonic()))
            s.sendall(data)
            s.recv(65536)           # the server's answer, or its closing the connection
            s.close()
        except OSError:
            pass


def cancel_flood(address: str, until: float) -> None:
    """CANCEL frames for call ids that were never sent, ~1 MB per burst."""
    s = connect(address)
    s.settimeout(0.1)
    rng = random.Random(2)
    ready()
    while time.monotonic() < until:
        burst = b"".join(frame(CANCEL, rng.getrandbits(63)) for _ in range(32768))
        try:
            s.sendall(burst)
        except socket.timeout:
            continue
        except OSError:
            s.close()
            s = connect(address)
            s.settimeout(0.1)


def session_flood(address: str, until: float, n: int = 100_000) -> None:
    """``n`` sessions registered (a PING each) on one connection, then renewed in a loop."""
    s = connect(address)
    s.settimeout(0.5)
    ready()
    while time.monotonic() < until:
        for start in range(0, n, 4096):
            burst = b"".join(frame(PING, k + 1, session=k + 1)
                             for k in range(start, min(n, start + 4096)))
            if not send_quietly(s, burst):
                s.close()
                s = connect(address)
                s.settimeout(0.5)
            try:
                s.recv(1 << 20)     # read the PONGs, as a client would
            except OSError:
                pass
            if time.monotonic() >= until:
                return


ATTACKS: dict[str, Callable[[str, float], None]] = {
    "idle": idle_connections,
    "half-frame": half_frame,
    "garbage": garbage,
    "flood": flood,
    "connect-close": connect_close,
    "msgpack-bomb": msgpack_bomb,
    "cancel-flood": cancel_flood,
    "session-flood": session_flood,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(ATTACKS))
    ap.add_argument("address")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    os.nice(19)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        ATTACKS[args.kind](args.address, time.monotonic() + args.seconds)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
