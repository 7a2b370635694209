"""The servers bench/proclets_bench.py compares a ref call against, one per process:

    python bench/procbench/peers.py microrpc|pyro5 [--max-seconds S]

Each keeps a counter and serves ``add(k)`` (add k, return the total: the work of
``procbench.workloads.Adder.add``), prints ``READY <address>`` once it accepts calls, and
serves until the bench stops it by pid (SIGTERM) or its alarm fires, so that nothing
outlives the bench.
"""
from __future__ import annotations

import argparse
import signal
import sys


class Adder:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def announce(address: str) -> None:
    sys.stdout.write(f"READY {address}\n")
    sys.stdout.flush()


def serve_microrpc() -> None:
    import threading

    import microrpc
    adder = Adder()
    # Registered like a runtime's proclet call: served in line on the I/O thread.
    server = microrpc.Server("tcp://127.0.0.1:0")
    server.register("add", adder.add)
    server.start()
    announce(server.address)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop()


def serve_pyro5() -> None:
    import Pyro5.api
    daemon = Pyro5.api.Daemon(host="127.0.0.1")
    uri = daemon.register(Pyro5.api.expose(Adder)(), "adder")
    announce(str(uri))
    signal.signal(signal.SIGTERM, lambda *_: daemon.shutdown())
    daemon.requestLoop()


SERVERS = {"microrpc": serve_microrpc, "pyro5": serve_pyro5}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=sorted(SERVERS))
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args()
    signal.alarm(max(1, int(args.max_seconds)))      # the default action ends the process
    SERVERS[args.kind]()


if __name__ == "__main__":
    main()
