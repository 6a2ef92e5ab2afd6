"""Shared helpers for the benchmarks: timing, percentiles, machine facts, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = Path(os.environ.get("BENCH_RESULTS", HERE / "results"))  # where JSON goes


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p99/max/mean in milliseconds."""
    return {
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3) if latencies else float("nan"),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else float("nan"),
    }


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """The revision of the onethread being measured (``+dirty`` if ``src`` has changes).

    Measuring another tree (``PYTHONPATH=/elsewhere/src``, e.g. an older
    revision) says so; set ``BENCH_LABEL`` to name it.
    """
    import onethread

    label = os.environ.get("BENCH_LABEL", "")
    package = Path(onethread.__file__).resolve()
    if ROOT / "src" not in package.parents:
        return label or f"not this checkout: {package.parent}"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return label or "unknown"
    return rev + ("+dirty" if dirty else "") + (f" ({label})" if label else "")


def machine() -> dict[str, Any]:
    """Facts about where the figures come from."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "revision": git_revision(),
        "load_avg_1m_at_start": round(load, 2),
    }


def write(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` with machine facts to ``results/NAME.json`` and return the path."""
    RESULTS.mkdir(exist_ok=True)
    data = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; else the peak from rusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
