"""microrpc._pack: one reused Packer, the same bytes as msgpack.packb, from any thread."""
import threading

import msgpack
import pytest

from microrpc._pack import packb


def test_the_same_bytes_as_msgpack():
    for value in ([], (1,), [1, "é", b"\x00", None, 2.5, {"k": [True]}], 2 ** 64 - 1):
        assert packb(value) == msgpack.packb(value)


def test_an_error_leaves_nothing_behind():
    with pytest.raises(TypeError):
        packb([1, object()])
    with pytest.raises(OverflowError):
        packb(2 ** 70)
    assert packb([7]) == b"\x91\x07"


def test_threads_packing_at_once_each_get_their_own_bytes():
    errors = []

    def work(k):
        value = [k, "v" * k, {"k": list(range(k))}]
        want = msgpack.packb(value)
        for _ in range(3000):
            if packb(value) != want:
                errors.append(k)
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
