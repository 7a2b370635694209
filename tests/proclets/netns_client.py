"""The client side of test_netns.py, run inside a network namespace with `ip netns exec`.

    python netns_client.py CONTROLLER KEY_HEX RUNTIME_A RUNTIME_B

Step 1 (printed as one JSON line): spawn a Counter on A and a second one on A, call both,
migrate the first to B (across namespaces), call it there. Then it waits for a line on
stdin: the test SIGKILLs runtime B meanwhile. Step 2 (a second JSON line): a call to the
proclet on the dead runtime must end with ProcletLost (timed), and the one on A must still
serve.
"""
import json
import sys
import time

import proclets
from proclet_samples import Counter


def main() -> None:
    controller, key, a, b = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]
    cluster = proclets.Cluster(controller, key=key)
    moving = cluster.spawn(Counter, 10, on=a)
    staying = cluster.spawn(Counter, 100, on=a)
    step1 = {"runtimes": cluster.runtimes(), "first": moving.incr(5),
             "staying": staying.incr(1), "where_before": cluster.where(moving)}
    stats = cluster.migrate(moving, to=b)
    step1.update(source=stats.source, destination=stats.destination, bytes=stats.bytes,
                 after=moving.incr(1), where_after=cluster.where(moving),
                 info_b=cluster.info(b)["proclets"])
    print(json.dumps(step1), flush=True)

    sys.stdin.readline()                        # runtime B has been killed
    t0 = time.monotonic()
    try:
        outcome = f"returned {moving.incr(1, timeout=10)}"
    except proclets.ProcletLost:
        outcome = "ProcletLost"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    step2 = {"lost_outcome": outcome, "lost_after_s": time.monotonic() - t0,
             "staying": staying.incr(1), "runtimes": cluster.runtimes()}
    print(json.dumps(step2), flush=True)


if __name__ == "__main__":
    main()
