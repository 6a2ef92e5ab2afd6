"""benchmarks/bench_reference.py: the reference comparison of issue 12 runs, or says how to.

Measurements are not asserted (a shared machine makes wall-clock figures move);
what is checked is that the comparison is made in one run, that it says how
to install the reference when it is missing, and that bad input is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_reference.py"
REFERENCE = ROOT / ".reference-venv" / "bin" / "python"


def run(tmp_path: Path, reference: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path), "ONETHREAD_REFERENCE_PYTHON": reference}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=SCRIPT.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_the_reference_it_prints_the_install_command_and_no_ratio(
    tmp_path: Path,
) -> None:
    done = run(
        tmp_path, str(tmp_path / "missing" / "python"), "--rounds", "1", "--seconds", "0.1",
        "--stores", "memory", "--users", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "python3 -m venv .reference-venv" in done.stdout
    assert ".reference-venv/bin/pip install praisonai-bot==0.1.16" in done.stdout
    result = json.loads((tmp_path / "reference.json").read_text())
    assert result["reference"] is None
    (row,) = result["rows"]
    assert "ratio" not in row
    assert row["pairs"][0]["onethread"] > 0


def test_an_unknown_store_is_refused_with_the_choices(tmp_path: Path) -> None:
    done = run(tmp_path, str(tmp_path / "missing"), "--stores", "redis")
    assert done.returncode != 0
    assert "'redis' is not one of memory, sqlite" in done.stderr


@pytest.mark.skipif(not REFERENCE.exists(), reason="the reference venv is not installed")
@pytest.mark.parametrize("agent", ["stub", "praisonaiagents"])
def test_with_the_reference_both_are_measured_in_one_run(tmp_path: Path, agent: str) -> None:
    done = run(
        tmp_path, str(REFERENCE), "--rounds", "1", "--seconds", "0.2", "--users", "3",
        "--reference-agent", agent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    name = "reference" if agent == "stub" else "reference_praisonaiagents"
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["reference"]["version"] == "0.1.16"
    for row in result["rows"]:
        (pair,) = row["pairs"]
        assert pair["reference"] > 0 and pair["reference_wrong_replies"] == 0
        assert pair["ratio"] > 0 and pair["cpu_ratio"] > 0
    assert [row["reference_store"] for row in result["rows"]] == ["memory", "json"]
