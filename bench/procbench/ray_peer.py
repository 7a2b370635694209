"""Ray, the peer that cannot move an object: an actor call, and the copy-and-kill "move"
a Ray user writes instead of a migration (get the state from the actor, create a new actor
with it, kill the old one). Imported only when ``ray`` is installed."""
from __future__ import annotations

import time

import ray

from procbench.workloads import make_state


@ray.remote
class Holder:
    def __init__(self, size: int = 0, kind: str = "bytes", state=None) -> None:
        self.state = make_state(size, kind) if state is None else state
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def get_state(self):
        return self.state

    def ping(self, x: int) -> int:
        return x


def start() -> None:
    # Two CPUs' worth of workers (the machine the bench is written for); no dashboard, so
    # that start-up stays a few seconds.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")


def stop() -> None:
    ray.shutdown()


def actor():
    a = Holder.remote()
    ray.get(a.ping.remote(0))
    return a


def call(a, k: int) -> int:
    return ray.get(a.add.remote(k))


def move(size: int, kind: str, reps: int) -> list[float]:
    """Seconds per copy-and-kill move, from the first ``get_state`` until the new actor
    answered its first call (the same end point as a proclet migration)."""
    old = Holder.remote(size, kind)
    ray.get(old.ping.remote(0))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state = ray.get(old.get_state.remote())
        new = Holder.remote(state=state)
        ray.get(new.ping.remote(0))
        out.append(time.perf_counter() - t0)
        ray.kill(old)
        old = new
    ray.kill(old)
    return out
