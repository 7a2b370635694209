"""The controller as seen from another process: the same methods as
:class:`proclets.controller.Controller`, over microrpc. The runtime logic and refs take
either, so unit tests give them the controller object itself."""
from __future__ import annotations

import threading

from microrpc.errors import ConnectionLost, RpcError

from proclets import _net, _protocol as P

__all__ = ["RemoteController"]


class RemoteController:
    def __init__(self, address: str, key: bytes | None, *, timeout: float = 2.0) -> None:
        self.address = address
        self._key = key
        self._timeout = timeout
        self._client = None
        self._lock = threading.Lock()

    def _call(self, name: str, *args):
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    try:
                        client = self._client = _net.connect(
                            self.address, self._key, timeout=self._timeout,
                            connect_timeout=self._timeout)
                    except OSError as exc:
                        raise ConnectionLost(f"controller {self.address}: {exc}") from None
        try:
            return client.call(name, *args)
        except RpcError:
            raise
        except OSError as exc:
            raise ConnectionLost(f"controller {self.address}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def register(self, rid, address, proclets, leases=()):
        return self._call(P.REGISTER, rid, address, proclets, list(leases))

    def beat(self, rid, leases):
        return self._call(P.BEAT, rid, leases)

    def locate(self, pid):
        return self._call(P.LOCATE, pid)

    def place(self, pid, rid, address, path):
        return self._call(P.PLACE, pid, rid, address, path)

    def move(self, pid, from_rid, epoch, to_rid, to_address):
        return self._call(P.MOVE, pid, from_rid, epoch, to_rid, to_address)

    def reclaim(self, pid, rid, epoch):
        return self._call(P.RECLAIM, pid, rid, epoch)

    def grant_lease(self):
        return self._call(P.LEASE)

    def renew(self, lease):
        return self._call(P.RENEW, lease)

    def lease_left(self, lease):
        return self._call(P.LEASE_LEFT, lease)

    def runtimes(self):
        return self._call(P.RUNTIMES)

    def forget(self, pid):
        return self._call(P.FORGET, pid)
