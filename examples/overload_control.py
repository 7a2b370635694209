"""Breakwater overload control under a short open-loop load at twice the server's capacity.

    python examples/overload_control.py

A server process runs a CPU-bound handler (500 us of work) on its I/O thread, so it serves
about 2,000 calls/s. The load generator offers 4,000 calls/s for one second (Poisson
arrivals, latency from the intended send time), first to a server without overload control
and then to one with Breakwater. Without it, the queue grows and calls miss the 5 ms
objective; with it, the excess is rejected within a round trip or two and the calls it
admits stay fast.
"""
import multiprocessing
import time

import breakwater
import microrpc


def busy(_body: bytes) -> bytes:
    end = time.perf_counter() + 0.0005                  # 500 us of CPU work
    while time.perf_counter() < end:
        pass
    return b""


def serve(with_breakwater: bool, addresses, stop) -> None:
    """The server, in its own process: a load generator in the same process would share
    its interpreter lock and measure itself."""
    policy = breakwater.Breakwater() if with_breakwater else None
    server = microrpc.Server("tcp://127.0.0.1:0", codec="raw", overload=policy)
    server.register("busy", busy)
    with server:
        addresses.put(server.address)
        stop.wait(60)                                   # bounded, whatever happens


def offer(with_breakwater: bool) -> None:
    addresses, stop = multiprocessing.Queue(), multiprocessing.Event()
    proc = multiprocessing.Process(target=serve, args=(with_breakwater, addresses, stop))
    proc.start()
    try:
        address = addresses.get(timeout=30)
        spec = microrpc.bench.LoadSpec(address, method="busy", service=None, rate=4000,
                                       duration=1.0, warmup=0.2, clients=100, connections=2,
                                       slo=0.005, timeout=0.5, drain=1.0)
        r = microrpc.bench.run(spec)
    finally:
        stop.set()
        proc.join(30)
    rejected = r.fraction("rejected_server") + r.fraction("rejected_client")
    p99 = f"{r.latency_us(99) / 1000:.1f} ms" if r.counts["ok"] else "-"
    print(f"{'Breakwater' if with_breakwater else 'no control':>10}: offered {r.offered}, "
          f"goodput {r.goodput:.0f}/s within 5 ms, rejected {100 * rejected:.0f}%, "
          f"timed out {100 * r.fraction('timeout'):.0f}%, p99 of successes {p99}")


if __name__ == "__main__":
    offer(False)
    offer(True)
