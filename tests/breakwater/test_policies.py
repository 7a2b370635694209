"""The policies without credits (NoControl, AQMOnly, ConcurrencyLimit), the base class, and
the package's public surface."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import breakwater
from breakwater import AQMOnly, ConcurrencyLimit, NoControl, OverloadPolicy, PolicyStatistics

US = 1_000


def test_public_surface_is_declared_once():
    assert sorted(breakwater.__all__) == sorted(set(breakwater.__all__))
    for name in breakwater.__all__:
        assert hasattr(breakwater, name), name
    public = {n for n in dir(breakwater) if not n.startswith("_")}
    assert public - set(breakwater.__all__) <= {"annotations"}


def test_breakwater_imports_nothing_of_the_other_packages():
    code = "import sys, breakwater; print(sorted(m for m in sys.modules if m.split('.')[0] in ('microrpc', 'nanolog', 'proclets')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    src = Path(breakwater.__file__).parent
    for py in [*src.glob("*.py"), *src.glob("*.pyx")]:
        text = py.read_text()
        for other in ("microrpc", "nanolog", "proclets"):
            assert f"import {other}" not in text and f"from {other}" not in text, py


def test_package_ships_typing_marker():
    pkg = Path(breakwater.__file__).parent
    assert (pkg / "py.typed").exists()
    # The server policy is compiled, with its stub beside it.
    assert not breakwater._server.__file__.endswith(".py"), "breakwater._server is not compiled"
    assert (pkg / "_server.pyi").exists()


def test_base_class_cannot_be_instantiated_and_can_be_subclassed(clock):
    with pytest.raises(TypeError):
        OverloadPolicy()  # type: ignore[abstract]

    class EveryOther(OverloadPolicy):
        """A user policy: admit every other request."""

        def __init__(self):
            self.n = 0

        def open_session(self, sid, now_ns):
            return 0

        def close_session(self, sid, now_ns):
            pass

        def on_request(self, sid, demand, now_ns, queue_delay_ns):
            self.n += 1
            return self.n % 2 == 1

        def on_reject(self, sid, now_ns):
            return 0

        def on_complete(self, sid, now_ns):
            return 0

        def on_tick(self, now_ns, queue_delay_ns):
            return []

        def statistics(self):
            return None

    p = EveryOther()
    assert p.uses_credits is False and p.tick_interval_ns == 0
    assert [p.on_request(1, 0, clock(), 0) for _ in range(4)] == [True, False, True, False]


@pytest.mark.parametrize("factory", [NoControl, AQMOnly, lambda: ConcurrencyLimit(3)])
def test_uncredited_policies_share_the_interface(factory, clock):
    p = factory()
    assert isinstance(p, OverloadPolicy)
    assert p.uses_credits is False and p.tick_interval_ns == 0
    assert p.open_session(7, clock()) == 0
    assert p.on_request(7, 0, clock(), 0) is True
    assert p.on_complete(7, clock()) == 0
    assert p.on_tick(clock(), 0) == []
    p.close_session(7, clock())
    st = p.statistics()
    assert isinstance(st, PolicyStatistics)
    assert (st.admitted, st.completed, st.in_flight, st.sessions, st.ticks) == (1, 1, 0, 0, 1)
    assert st.pool == 0 and st.credit_messages == 0 and st.credit_messages_per_completion == 0.0
    assert st.policy == type(p).__name__
    assert repr(p).startswith(type(p).__name__)


@pytest.mark.parametrize("factory", [NoControl, AQMOnly, lambda: ConcurrencyLimit(3)])
def test_completion_without_admission_raises(factory, clock):
    p = factory()
    with pytest.raises(RuntimeError, match="no admitted request"):
        p.on_complete(1, clock())
    assert p.statistics().completed == 0


def test_no_control_admits_everything_whatever_the_delay(clock):
    p = NoControl()
    assert all(p.on_request(i % 10, 100, clock(), 10**12) for i in range(10_000))
    st = p.statistics()
    assert st.admitted == 10_000 and st.rejected == 0 and st.in_flight == 10_000
    assert st.last_queue_delay_ns == 10**12


def test_aqm_only_rejects_at_and_above_threshold(clock):
    p = AQMOnly(threshold_ns=300 * US)
    assert p.on_request(1, 0, clock(), 300 * US - 1) is True
    assert p.on_request(1, 0, clock(), 300 * US) is False
    assert p.on_reject(1, clock()) == 0
    assert p.on_request(1, 0, clock(), 5 * 300 * US) is False
    st = p.statistics()
    assert (st.admitted, st.rejected, st.rejected_aqm, st.rejected_limit, st.in_flight) == (1, 2, 2, 0, 1)


def test_aqm_only_default_matches_breakwater():
    assert AQMOnly().threshold_ns == breakwater.Breakwater().aqm_threshold_ns == breakwater.DEFAULT_AQM_THRESHOLD_NS


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_aqm_only_bad_threshold(bad):
    with pytest.raises(ValueError):
        AQMOnly(threshold_ns=bad)


def test_concurrency_limit_caps_admitted_unfinished(clock):
    p = ConcurrencyLimit(2)
    assert [p.on_request(s, 0, clock(), 0) for s in (1, 2, 3)] == [True, True, False]
    assert p.on_reject(3, clock()) == 0
    p.on_complete(1, clock())
    assert p.on_request(3, 0, clock(), 10**9) is True  # delay does not matter, only the count
    assert p.on_request(4, 0, clock(), 0) is False
    st = p.statistics()
    assert (st.admitted, st.rejected_limit, st.in_flight, st.completed) == (3, 2, 2, 1)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4"])
def test_concurrency_limit_bad_n(bad):
    with pytest.raises(ValueError):
        ConcurrencyLimit(bad)


def test_session_count_tracks_open_and_close(clock):
    p = NoControl()
    for sid in (1, 2, 2, 3):
        p.open_session(sid, clock())
    p.close_session(2, clock())
    p.close_session(99, clock())  # never opened: ignored
    assert p.statistics().sessions == 2


def test_statistics_is_a_frozen_snapshot(clock):
    p = NoControl()
    st = p.statistics()
    p.on_request(1, 0, clock(), 0)
    assert st.admitted == 0 and p.statistics().admitted == 1
    with pytest.raises(AttributeError):
        st.admitted = 5  # type: ignore[misc]
