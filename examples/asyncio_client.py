"""An asyncio client: many concurrent calls from one event loop.

    python examples/asyncio_client.py
"""
import asyncio

import microrpc


async def main(server_address: str) -> None:
    async with microrpc.AsyncClient(server_address, timeout=1.0) as client:
        print("square:", await client.call("square", 12))
        # 100 calls in flight at once, one connection.
        results = await asyncio.gather(*(client.call("square", i) for i in range(100)))
        print("sum of squares 0..99:", sum(results))
        # call_async returns an asyncio.Future without creating a task per call.
        fut = client.call_async("square", 7)
        print("future:", await fut)
        try:
            await client.call("slow", timeout=0.05)
        except microrpc.DeadlineExceeded:
            print("slow call: deadline exceeded, as asked")


if __name__ == "__main__":
    import threading

    server = microrpc.Server("tcp://127.0.0.1:0")
    server.register("square", lambda x: x * x)
    release = threading.Event()
    # blocking=True runs the handler on the worker pool, not on the I/O thread.
    server.register("slow", lambda: release.wait(2.0), blocking=True)
    with server:
        asyncio.run(main(server.address))
        release.set()
