"""Every program in examples/ runs as a user would run it: from another directory, as a
script, to completion (exit 0) within a minute, printing what it promises."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# example -> text its output must contain (what the example exists to show)
EXPECT = {
    "echo.py": ["echo: b'hi'", "add: 5", "callback got: callback", "remote error: ValueError",
                "not found:"],
    "asyncio_client.py": ["square: 144", "sum of squares 0..99: 328350",
                          "deadline exceeded"],
    "deferred_reply.py": ["sum 0..100: 5050", "deferred error: ValueError"],
    "service_class.py": ["serving: accounts.balance, accounts.move", "balance of ada: 100",
                         "move: {'memo': 'rent', 'ada': 70, 'bob': 50}",
                         "refused: ValueError: bob has less than 1000",
                         "accounts.audit is not served", "server statistics: 5 calls"],
    "overload_control.py": ["no control: offered", "Breakwater: offered"],
    "nanolog_basic.py": ["INFO request 0 from 10.0.0.7 took 12.5 us",
                         "WARNING cache miss rate 0.25", "`nanolog decode` printed 6 lines"],
    "proclets_counter.py": ["incr(5): 15", "migrated to runtime 1 in", "future: 17 get: 17",
                            "with faults and another move: 27",
                            "runtime 2 killed: ProcletLost after",
                            "the proclet on runtime 0 still answers: 1"],
    "logging_bridge.py": ["[app.db] query SELECT 1 took 3 ms", "failed to compute a ratio"],
}


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in EXPECT[name]:
        assert text in proc.stdout, (text, proc.stdout[-3000:])
