"""The overload plot: goodput and p99 against offered load, one line per policy."""
from __future__ import annotations

from pathlib import Path


def plot(points: dict, loads: list[float], path: Path, title: str) -> Path | None:
    """Save a PNG (medians over repetitions); None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy, table in points.items():
        xs = [l for l in loads if l in table and table[l].get("goodput_mu")]
        if not xs:
            continue
        ax1.plot(xs, [table[l]["goodput_mu"]["median"] for l in xs], marker="o", label=policy)
        ys = [(l, table[l]["p99_slo"]["median"]) for l in xs if table[l].get("p99_slo")]
        if ys:
            ax2.plot([l for l, _ in ys], [v for _, v in ys], marker="o", label=policy)
    ax1.set_xlabel("offered load (x mu)")
    ax1.set_ylabel("goodput (x mu)")
    ax1.axhline(1.0, color="grey", lw=0.5)
    ax1.set_ylim(bottom=0)
    ax2.set_xlabel("offered load (x mu)")
    ax2.set_ylabel("p99 latency of ok requests (x SLO)")
    ax2.set_yscale("log")
    ax2.axhline(1.0, color="red", lw=0.8, ls="--", label="SLO")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
