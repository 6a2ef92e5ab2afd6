"""Run every benchmark, then draw the plot: the one command behind docs/performance.md.

    .venv/bin/python benchmarks/run_all.py [--quick]

Each benchmark runs in a fresh interpreter, one after the other, and writes
``benchmarks/results/NAME.json``; a summary table is printed at the end. About
a minute and a half (``--quick``: shorter runs, noisier figures, under one). The
plot needs matplotlib (``pip install matplotlib``; not a onethread dependency);
without it the plot is skipped. ``bench_reference.py`` (onethread against
the reference implementation, same run) runs only when the reference's own
venv exists (``.reference-venv``, or ``$ONETHREAD_REFERENCE_PYTHON``; the
command that makes it is in docs/performance.md), with each of its two agents;
about a minute more. These are measurements, not
tests: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench_reference import MAKE_VENV, reference_installed
from common import HERE, RESULTS, machine

QUICK = {
    "bench_turns.py": ["--seconds", "1", "--open-seconds", "2", "--open-runs", "1"],
    "bench_history_growth.py": ["--turns", "150", "--repeats", "3"],
    "bench_resolver.py": ["--seconds", "0.3"],
    "bench_startup.py": ["--repeats", "3"],
    "bench_memory.py": ["--people", "5000"],
    "bench_byo_agent.py": ["--turns", "20"],
    "bench_stores.py": ["--turns", "2000", "--people", "200", "--processes", "1,2"],
    "bench_blobs.py": ["--files", "4", "--repeats", "2"],
}
FULL = {"bench_stores.py": ["--processes", "1,2,3", "--ceiling"]}  # default: 10,000 turns


def run(script: str, args: list[str]) -> None:
    print(f"\n== {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / script), *args], check=True, cwd=HERE)
    print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)


def load(name: str) -> dict[str, object]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def table() -> str:
    """The headline figures as a Markdown table (what docs/performance.md shows)."""
    lines = ["| what | figure | target |", "| --- | --- | --- |"]
    turns: dict = load("turns")
    for row in turns.get("closed_loop", []):
        lines.append(
            f"| turns/s, {row['store']}, {row['users']} users (closed loop) | "
            f"{row['turns_per_s']:,} (p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms) | "
            + ("≥ 10,000 |" if row["store"] == "sqlite" else "|")
        )
    for row in turns.get("open_loop", []):
        spread = ", ".join(str(p) for p in row.get("p99_ms_runs", [row["p99_ms"]]))
        lines.append(
            f"| latency, {row['store']}, {row['users']} users at {row['offered_per_s']:,.0f} "
            f"turns/s (open loop, median of {len(row.get('runs', [row]))} runs) | "
            f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms (runs: {spread}), "
            f"max {row['max_ms']} ms | p99 < 5 ms |"
        )
    diagnose: dict = load("turns_diagnose")
    for row in diagnose.get("rows", [])[1:]:
        lines.append(
            f"| same, sqlite, diagnostic: {row['variant']} | p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms, max {row['max_ms']} ms | |"
        )
    growth: dict = load("history_growth")
    for row in growth.get("rows", []):
        lines.append(
            f"| one turn, {row['store']}, session of {row['entries_before']:,} entries | "
            f"p50 {row['p50_ms'] * 1000:.0f} µs (x{row['p50_vs_smallest']}) | ≤ x1.5 |"
        )
    resolver: dict = load("resolver")
    for row in resolver.get("rows", []):
        if "misses_per_s" in row:
            lines.append(
                f"| resolve() calls/s, {row['resolver']}, {row['links']:,} links | "
                f"{row['hits_per_s']:,} (unlinked: {row['misses_per_s']:,}) | ≥ 1,000,000 |"
            )
    startup: dict = load("startup")
    for module in ("onethread", "onethread.bots"):
        item = startup.get(f"import {module}")
        if isinstance(item, dict):
            lines.append(
                f"| `import {module}` | {item['import_ms']} ms "
                f"(process {item['process_ms']} ms) | < 150 ms |"
            )
    run_row = startup.get("onethread run")
    if isinstance(run_row, dict):
        lines.append(
            f"| `onethread run` to web chat accepting a connection | "
            f"{run_row['tcp_accept_ms']} ms | |"
        )
    memory: dict = load("memory")
    for row in memory.get("rows", []):
        lines.append(
            f"| RSS per 10,000 idle people, {row['store']} | {row['total_mb_per_10k']} MB "
            f"(links {row['links_bytes_per_person']} B + session "
            f"{row['sessions_bytes_per_person']} B each) | |"
        )
    byo: dict = load("byo_agent")
    for name, row in byo.get("results", {}).items():
        lines.append(
            f"| {name} wrapper, CPU per turn over calling it directly "
            f"({byo['history']} history entries) | {row['overhead_cpu_mean_ms']:+} ms "
            f"(direct {row['direct']['cpu_mean_ms']} ms, wrapper "
            f"{row['wrapper']['cpu_mean_ms']} ms) | |"
        )
    reference_rows = [
        row
        for name in ("reference", "reference_praisonaiagents")
        for row in load(name).get("rows", [])  # type: ignore[attr-defined]
        if "ratio" in row
    ]
    for row in reference_rows:
        r, c = row["ratio"], row["cpu_ratio"]
        lines.append(
            f"| onethread ÷ reference turns/s, {row['store']} vs its {row['reference_store']}, "
            f"its agent: {row.get('reference_agent', 'stub')}, "
            f"{row['users']} users (same run, {len(row['pairs'])} paired rounds) | "
            f"median {r['median']}× ({r['min']}–{r['max']}×; per CPU-second "
            f"{c['median']}×): {row['onethread_turns_per_s']['median']:,} against "
            f"{row['reference_turns_per_s']['median']:,} turns/s | ≥ 30× |"
        )
    blobs: dict = load("blobs")
    for store, row in (("file:", blobs.get("file")), ("s3:// (moto, loopback)", blobs.get("s3"))):
        if not isinstance(row, dict):
            continue
        base_in, base_out = ("cp+sync", "cat") if store == "file:" else ("boto3", "boto3")
        ratio_in = row.get("put_vs_cp_sync", row.get("put_vs_boto3"))
        ratio_out = row.get("get_vs_cat", row.get("get_vs_boto3"))
        lines.append(
            f"| blob store {store}, MB/s in / out | {row['put_mb_s']} / {row['get_mb_s']} "
            f"(x{ratio_in} of {base_in}, x{ratio_out} of {base_out}) | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier)")
    args = parser.parse_args()
    facts = machine()
    print("machine:", ", ".join(f"{k}={v}" for k, v in facts.items()))
    start = time.perf_counter()
    for script in QUICK:
        run(script, QUICK[script] if args.quick else FULL.get(script, []))
    run("bench_turns.py", ["--diagnose", "--open-seconds", "2" if args.quick else "5"])
    if reference_installed():
        rounds = ["--rounds", "1", "--seconds", "1"] if args.quick else ["--rounds", "3"]
        for agent in ("stub", "praisonaiagents"):
            run("bench_reference.py", [*rounds, "--reference-agent", agent])
    else:
        print(f"\n== bench_reference.py skipped: the reference is not installed ({MAKE_VENV})")
    try:
        run("plot.py", [])
    except subprocess.CalledProcessError:
        print("   plot skipped (pip install matplotlib to draw it)")
    summary = table()
    (RESULTS / "summary.md").write_text(summary + "\n")
    print(f"\n{summary}\n\nall done in {time.perf_counter() - start:.0f} s; JSON in {RESULTS}")


if __name__ == "__main__":
    main()
