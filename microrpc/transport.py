"""Addresses and socket setup for the native transport (connection setup is not hot: Python).

``tcp://host:port`` (IPv6 as ``tcp://[::1]:port``; port 0 binds a free port) and
``unix:///absolute/path``. The pyzmq transport's ``zmq+tcp://`` and ``zmq+ipc://`` are
reserved names; it is not built yet, and asking for it says so.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import stat
from dataclasses import dataclass

from microrpc import auth
from microrpc.errors import ConnectionLost

__all__ = ["Address", "parse_address", "listen", "connect", "client_socket",
           "reachable_from_other_hosts"]


@dataclass(frozen=True)
class Address:
    scheme: str                  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(address: str) -> Address:
    """Parse an address string; a ValueError says what is wrong with a bad one."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a str like 'tcp://127.0.0.1:0', not {type(address).__name__}")
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"address {address!r} has no scheme: use tcp://host:port or unix:///path")
    if scheme.startswith("zmq+"):
        raise ValueError(f"{scheme}:// needs the pyzmq transport, which is not built yet; "
                         "use tcp:// or unix://")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"unix address {address!r} must be absolute: unix:///path/to.sock")
        if len(rest.encode()) > 107:
            raise ValueError(f"unix socket path is longer than the kernel's 107-byte limit: {rest!r}")
        return Address("unix", path=rest)
    if scheme != "tcp":
        raise ValueError(f"unknown scheme {scheme!r} in {address!r}: use tcp:// or unix://")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"bad IPv6 address {address!r}: use tcp://[::1]:port")
        port_text = port_text[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(f"address {address!r} has no port: use tcp://host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} in {address!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {address!r} is out of range")
    if not host:
        raise ValueError(f"address {address!r} has no host")
    return Address("tcp", host=host, port=port)


def _tcp_family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen(address: str, backlog: int = 1024) -> tuple[socket.socket, Address]:
    """A non-blocking listening socket and the address it is bound to (port 0 resolved)."""
    addr = parse_address(address)
    if addr.scheme == "unix":
        try:
            if stat.S_ISSOCK(os.stat(addr.path).st_mode):
                os.unlink(addr.path)      # a stale socket file from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(addr.path)
        except OSError:
            sock.close()
            raise
        bound = addr
    else:
        sock = socket.socket(_tcp_family(addr.host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr.host, addr.port))
        except OSError:
            sock.close()
            raise
        bound = Address("tcp", host=addr.host, port=sock.getsockname()[1])
    sock.listen(backlog)
    sock.setblocking(False)
    return sock, bound


def reachable_from_other_hosts(sock: socket.socket) -> bool:
    """True for a TCP socket bound to an address other than loopback (a wildcard such as
    0.0.0.0 or :: included); False for loopback and unix sockets."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    ip = ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_loopback


def connect(address: str, timeout: float | None,
            auth_key: bytes | None = None) -> socket.socket:
    """A connected, non-blocking socket (TCP_NODELAY on TCP). Failure raises ConnectionLost.
    With ``auth_key`` the client's handshake (microrpc.auth) runs first, within ``timeout``
    too; a failed one raises AuthenticationError."""
    addr = parse_address(address)
    try:
        if addr.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(addr.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
            # Small frames must leave now, not wait for Nagle to coalesce them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {address}: {exc.strerror or exc}") from None
    if auth_key is not None:
        try:
            auth.authenticate(sock, auth_key, timeout, address)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


def client_socket(address: str) -> tuple[socket.socket, object]:
    """A new non-blocking socket for ``address`` and the target to connect it to, for an
    event loop's ``sock_connect`` (TCP_NODELAY on TCP, as in :func:`connect`)."""
    addr = parse_address(address)
    if addr.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = addr.path
    else:
        sock = socket.socket(_tcp_family(addr.host), socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = (addr.host, addr.port)
    sock.setblocking(False)
    return sock, target
