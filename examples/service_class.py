"""A service as a class: mark the methods to serve with @microrpc.expose, register the
object under a prefix, call them (with keyword arguments), read the server's statistics.

    python examples/service_class.py
"""
import threading

import microrpc


class Accounts:
    """Only the marked methods are served; helpers and state stay private."""

    def __init__(self) -> None:
        self._lock = threading.Lock()          # `move` runs on the worker pool
        self._balances = {"ada": 100, "bob": 20}

    @microrpc.expose
    def balance(self, who: str) -> int:
        return self._balances[who]

    @microrpc.expose(blocking=True)            # may wait on the lock: keep it off the I/O thread
    def move(self, source: str, target: str, amount: int, *, memo: str = "") -> dict:
        with self._lock:
            if self._balances[source] < amount:
                raise ValueError(f"{source} has less than {amount}")
            self._balances[source] -= amount
            self._balances[target] += amount
            return {"memo": memo, source: self._balances[source],
                    target: self._balances[target]}

    def audit(self) -> int:                    # not marked: no client can call it
        return sum(self._balances.values())


def main() -> None:
    with microrpc.Server("tcp://127.0.0.1:0") as server:     # started here, stopped at the end
        names = server.register_object(Accounts(), prefix="accounts.")
        print("serving:", ", ".join(names))
        with microrpc.Client(server.address, timeout=2.0) as client:
            print("balance of ada:", client.call("accounts.balance", "ada"))
            print("move:", client.call("accounts.move", "ada", "bob", 30, memo="rent"))
            try:
                client.call("accounts.move", source="bob", target="ada", amount=1000)
            except microrpc.RemoteError as exc:
                print("refused:", exc)
            try:
                client.call("accounts.audit")
            except microrpc.MethodNotFound:
                print("accounts.audit is not served")
            # Every server answers `microrpc stats ADDRESS` through this built-in method.
            stats = client.call("_microrpc.stats")
            print(f"server statistics: {stats['calls']} calls, {stats['errors']} errors")


if __name__ == "__main__":
    main()
