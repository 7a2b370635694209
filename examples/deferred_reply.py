"""A handler that answers later, from another thread, with its call context.

    python examples/deferred_reply.py
"""
import queue
import threading

import microrpc

jobs: "queue.Queue" = queue.Queue()


def submit(ctx, n):
    """Hand the job to a worker thread and return at once; the worker replies."""
    jobs.put((ctx.defer(), n, ctx.peer, ctx.deadline))


def worker() -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        reply, n, peer, deadline = job
        if n < 0:
            reply.error(ValueError("n must be >= 0"))
        else:
            reply.result(sum(range(n + 1)))


def main() -> None:
    server = microrpc.Server("tcp://127.0.0.1:0")
    server.register("submit", submit, context=True)
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    with server, microrpc.Client(server.address, timeout=2.0) as client:
        print("sum 0..100:", client.call("submit", 100))
        try:
            client.call("submit", -1)
        except microrpc.RemoteError as exc:
            print("deferred error:", exc)
    jobs.put(None)
    thread.join(timeout=5)


if __name__ == "__main__":
    main()
