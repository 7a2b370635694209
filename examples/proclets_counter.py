"""Proclets: a counter that migrates between runtime processes while it is being called.

Starts a controller and three runtimes on this machine (Cluster.local), spawns a Counter
on the first, calls it, moves it twice, and shows that every call ran exactly once, also
with lost replies and duplicated requests injected. Then kills a runtime: its proclet is
lost (ProcletLost), the others serve on.

    python examples/proclets_counter.py

The class lives in this script: Cluster.local's runtimes import the script as a module
(the block under ``if __name__ == "__main__"`` does not run there).
"""
import time

import proclets


class Counter(proclets.Proclet):
    def __init__(self, n):
        self.n = n              # the state that migrates: its instance attributes

    def incr(self, k):
        self.n += k
        return self.n

    def get(self):
        return self.n


def main():
    with proclets.Cluster.local(runtimes=3) as cluster:
        ref = cluster.spawn(Counter, 10, on=0)
        print("incr(5):", ref.incr(5))
        stats = cluster.migrate(ref, to=1)
        print(f"migrated to runtime 1 in {stats.total * 1e3:.2f} ms "
              f"({stats.bytes} bytes); incr(1): {ref.incr(1)}")
        print("future:", ref.incr.future(1).result(), "get:", ref.get())

        faults = proclets.faults()          # lose replies, duplicate requests: runs once
        faults.drop_replies = faults.duplicate_requests = 3
        for _ in range(10):
            ref.incr(1)
        cluster.migrate(ref, to=2)
        print("after 10 more calls with faults and another move:", ref.get())

        spare = cluster.spawn(Counter, 0, on=0)
        cluster.kill_runtime(2)
        start = time.monotonic()
        try:
            ref.get()
        except proclets.ProcletLost:
            print(f"runtime 2 killed: ProcletLost after "
                  f"{time.monotonic() - start:.2f} s")
        print("the proclet on runtime 0 still answers:", spare.incr(1))


if __name__ == "__main__":
    main()
