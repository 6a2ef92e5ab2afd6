"""Plot turn throughput against concurrency: results/turns.json -> docs/throughput.png.

matplotlib is needed for this script only; it is not a onethread dependency:

    pip install matplotlib
    python benchmarks/plot.py

``results/baseline_turns.json`` (the same benchmark on the revision before the
performance work), when present, is drawn dashed for comparison.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from common import RESULTS, ROOT

OUT = ROOT / "docs" / "throughput.png"
TARGET = 10_000
COLOURS = {"memory": "tab:blue", "sqlite": "tab:orange"}


def series(data: dict[str, Any], store: str) -> tuple[list[int], list[int]]:
    rows = [r for r in data["closed_loop"] if r["store"] == store]
    return [r["users"] for r in rows], [r["turns_per_s"] for r in rows]


def main() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        sys.exit("plot.py needs matplotlib (pip install matplotlib); the JSON results are written")
    now = json.loads((RESULTS / "turns.json").read_text())
    baseline_path = RESULTS / "baseline_turns.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else None

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    for store, colour in COLOURS.items():
        users, rate = series(now, store)
        label = "SQLite (WAL, committed per turn)" if store == "sqlite" else "in memory"
        ax.plot(users, rate, "o-", color=colour, label=label)
        for x, y in zip(users, rate, strict=True):
            ax.annotate(
                f"{y:,}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
                color=colour,
            )
        if baseline is not None:
            users, rate = series(baseline, store)
            ax.plot(users, rate, "o--", color=colour, alpha=0.45, label=f"{label}, before")
    ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
    ax.annotate(
        "target: 10,000 turns/s with SQLite",
        (1, TARGET),
        textcoords="offset points",
        xytext=(2, 4),
        fontsize=7,
        color="grey",
    )
    ax.set_xscale("log")
    ax.set_xticks([1, 10, 100, 1000], ["1", "10", "100", "1,000"])
    ax.set_xlabel("concurrent users (closed loop, two platforms each)")
    ax.set_ylabel("turns per second")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)  # room for the labels
    machine = now["machine"]
    ax.set_title(
        f"Full turn throughput, one process ({machine['cpus']} vCPU {machine['cpu']}, "
        f"Python {machine['python']})",
        fontsize=9,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(OUT)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
