"""bench/hostile_bench.py and its attackers: the attackers speak the documented wire format,
and one attack runs end to end against a real server."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "hostile"))

import attackers                                  # noqa: E402
import hostile_bench                              # noqa: E402

from microrpc import _core                        # noqa: E402


def test_attacker_frames_are_the_wire_format():
    # The attackers build frames with struct from docs/wire.md; they must be what the
    # server parses, or the suite would measure garbage where it means a flood.
    assert attackers.frame(attackers.REQUEST, 7, b"spin", b"abc", codec=attackers.MSGPACK,
                           session=3, deadline_us=9) == _core.encode_frame(
        _core.REQUEST, 7, b"spin", b"abc", codec=_core.MSGPACK, session=3, deadline_us=9)
    assert attackers.frame(attackers.CANCEL, 5) == _core.encode_frame(_core.CANCEL, 5)
    assert attackers.frame(attackers.PING, 1, session=2) == _core.encode_frame(
        _core.PING, 1, session=2)


def test_every_attack_has_a_driver():
    assert set(hostile_bench.ATTACKS) == set(attackers.ATTACKS)


def test_half_frame_attack_end_to_end():
    r = hostile_bench.run_attack("half-frame", 0.3, None, None)
    assert r["server_survived"]
    assert r["alone"]["calls"] > 0 and r["beside"]["calls"] > 0
    assert r["beside"]["failed"] == 0           # stalled frames must not block others
    assert r["next_call_ms"] is not None
    assert r["rss_above_idle_mib"] is not None
