"""The proclet classes of bench/proclets_bench.py. The runtimes import them by module path
(``procbench.workloads``): Cluster.local passes the bench process's sys.path on, and the
bench puts bench/ on it."""
from __future__ import annotations

import proclets

# The dict state: ints -> 8-character strings. One entry pickles to 13-16 bytes with
# protocol 5 on CPython 3.11 (14 up to 65,536 entries, where the keys outgrow 2-byte ints):
# dict_entries() sizes the dict so its pickle is roughly the bytes state's size (the bench
# reports the bytes each migration actually sent).
_DICT_ENTRY_BYTES = 15


def dict_entries(size: int) -> int:
    return max(1, size // _DICT_ENTRY_BYTES)


def make_state(size: int, kind: str):
    """``size`` bytes of state: one bytes attribute, or a dict of small objects whose
    pickle is about as large."""
    if kind == "bytes":
        return bytes(size)
    if kind == "dict":
        return {i: f"v{i:07d}" for i in range(dict_entries(size))}
    raise ValueError(f"unknown state kind {kind!r}")


class Blob(proclets.Proclet):
    """State to migrate; ``ping`` is the first call served at the destination."""

    def __init__(self, size: int, kind: str) -> None:
        self.state = make_state(size, kind)

    def ping(self, x: int) -> int:
        return x


class Adder(proclets.Proclet):
    """The latency case: the same work as the plain microrpc peer's ``add``."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


class SharedCounter(proclets.Proclet):
    """The continuous-migration counter: a total, and per client the calls it made. A
    client checks that its own count goes 1, 2, 3, ... (each of its calls ran once, in
    order) and that the totals it sees increase."""

    def __init__(self) -> None:
        self.total = 0
        self.per_client: dict[int, int] = {}

    def add(self, client: int, k: int) -> list:
        self.total += k
        mine = self.per_client.get(client, 0) + 1
        self.per_client[client] = mine
        return [self.total, mine]

    def read(self) -> list:
        return [self.total, {str(c): n for c, n in self.per_client.items()}]
