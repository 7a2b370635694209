"""Echo server and client: calls, futures, deadlines and errors.

    python examples/echo.py
"""
import concurrent.futures

import microrpc


def main() -> None:
    server = microrpc.Server("tcp://127.0.0.1:0")      # port 0: the OS picks a free port

    @server.method                                      # registered as "echo"
    def echo(x):
        return x

    server.register("add", lambda a, b: a + b)

    def fail(message):
        raise ValueError(message)

    server.register("fail", fail)

    with server:                                        # starts now, stops at the end
        with microrpc.Client(server.address, timeout=1.0) as client:
            print("echo:", client.call("echo", b"hi"))
            print("add:", client.call("add", 2, 3))

            # Many calls in flight on one connection; each future is a
            # concurrent.futures.Future, so wait() and as_completed() work.
            futures = [client.call_async("add", i, i) for i in range(10)]
            concurrent.futures.wait(futures, timeout=5)
            print("sums:", [f.result() for f in futures])

            # A done-callback runs as soon as the reply is read, without result().
            done = concurrent.futures.Future()
            client.call_async("echo", "callback").add_done_callback(
                lambda f: done.set_result(f.result()))
            print("callback got:", done.result(timeout=5))

            # Every call ends in a result or exactly one RpcError.
            try:
                client.call("fail", "no such account")
            except microrpc.RemoteError as exc:
                print("remote error:", exc.remote_type, "-", exc)
            try:
                client.call("nope")
            except microrpc.MethodNotFound as exc:
                print("not found:", exc)


if __name__ == "__main__":
    main()
