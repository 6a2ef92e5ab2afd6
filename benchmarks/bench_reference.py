"""onethread's turn against the reference implementation's, in the same run.

Issue 12: "``bench_turns.py`` stays at 30x or more the reference
implementation's turns per second on the same harness". This measures both,
alternating, and prints each pair and the ratio:

- onethread: ``bench_turns.closed`` (the full turn: adapter inbound -> gate ->
  resolve -> turn lock -> history load -> Agent with the zero-latency
  ``EchoModel`` -> append -> delivery to the in-process adapter), in this
  process;
- the reference (praisonai-bot): ``reference_harness.py``, a long-lived child
  running in the reference's OWN interpreter, through its session path
  ``BotSessionManager.chat`` with a zero-latency stand-in agent (or, with
  ``--reference-agent praisonaiagents``, its real ``Agent`` whose provider
  answers in process: what a praisonai-bot turn costs with its own agent).

Same harness on both sides: ``--users`` people, each linked across telegram
and discord and alternating between them, closed loop (the next message as
soon as the reply is back) for ``--seconds`` after a 0.3 s warm-up, history
trimmed to 20 entries. Stores are paired as each side keeps history by
default: onethread ``memory://`` against ``BotSessionManager()``'s in-memory
dict, and onethread SQLite against the reference adapters' default store
(``DefaultSessionStore``: a JSON file per session).

    python benchmarks/bench_reference.py [--rounds 5] [--seconds 2] [--users 100]
                                         [--stores memory,sqlite]
                                         [--reference-agent stub|praisonaiagents]

The reference is never installed at run time nor into onethread's
environment. It is looked for at ``$ONETHREAD_REFERENCE_PYTHON`` (default
``.reference-venv/bin/python`` at the repository root); without it the
script prints the command that makes it and measures onethread alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_turns import closed
from common import HERE, ROOT, write

REFERENCE_VERSION = "0.1.16"  # the praisonai-bot release measured in docs/performance.md
MAKE_VENV = (
    "python3 -m venv .reference-venv && "
    f".reference-venv/bin/pip install praisonai-bot=={REFERENCE_VERSION}"
)
REFERENCE_STORE = {"memory": "memory", "sqlite": "json"}  # ours -> the reference's default


def reference_path() -> Path:
    """Where the reference's interpreter is looked for."""
    configured = os.environ.get("ONETHREAD_REFERENCE_PYTHON", "")
    return Path(configured) if configured else ROOT / ".reference-venv" / "bin" / "python"


def reference_installed() -> bool:
    """True if the reference's interpreter exists (run_all.py asks)."""
    return reference_path().exists()


def reference_python() -> Path | None:
    """The reference's interpreter, or None (after saying how to make it)."""
    path = reference_path()
    if path.exists():
        return path
    print(
        f"reference implementation not found at {path} "
        "(set ONETHREAD_REFERENCE_PYTHON to its interpreter); to make it, "
        f"from {ROOT}:\n    {MAKE_VENV}\nmeasuring onethread alone, no ratio.",
        flush=True,
    )
    return None


class Reference:
    """The reference harness in its own interpreter, one JSON line per command."""

    def __init__(self, python: Path) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(HERE / "reference_harness.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        hello = self._read()
        self.version = str(hello.get("version", "?"))

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        while line and not line.startswith("{"):  # anything the reference prints itself
            line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise SystemExit(
                f"the reference harness exited ({code}); run it by hand to see why: "
                f"{self.proc.args[0]} {HERE / 'reference_harness.py'}"
            )
        result: dict[str, Any] = json.loads(line)
        return result

    def closed(self, store: str, users: int, seconds: float, agent: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        command = {
            "store": store,
            "users": users,
            "seconds": seconds,
            "max_history": 20,
            "agent": agent,
        }
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.close()
        self.proc.wait(10)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max, rounded for the table."""
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="pairs per store (alternating)")
    parser.add_argument("--seconds", type=float, default=2.0, help="closed loop, per side")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument(
        "--reference-agent",
        choices=("stub", "praisonaiagents"),
        default="stub",
        help="the reference's agent: a zero-latency stand-in with chat() and chat_history "
        "(its session path alone), or its real praisonaiagents Agent with the provider "
        "answered in process",
    )
    args = parser.parse_args()
    for store in args.stores.split(","):
        if store not in REFERENCE_STORE:
            parser.error(f"--stores: {store!r} is not one of {', '.join(REFERENCE_STORE)}")
    python = reference_python()
    reference = Reference(python) if python is not None else None
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            n = 0
            for store in args.stores.split(","):
                pairs = []
                for i in range(args.rounds):
                    n += 1
                    url = "memory://" if store == "memory" else f"sqlite:///{Path(tmp)}/r{n}.db"
                    ours: dict[str, Any] = {}
                    ref: dict[str, Any] = {}
                    # ours first in even rounds, the reference first in odd ones
                    for side in ("ours", "ref") if i % 2 == 0 else ("ref", "ours"):
                        if side == "ours":
                            ours = asyncio.run(closed(url, args.users, args.seconds))
                        elif reference is not None:
                            ref = reference.closed(
                                REFERENCE_STORE[store],
                                args.users,
                                args.seconds,
                                args.reference_agent,
                            )
                    pair: dict[str, Any] = {"onethread": ours["turns_per_s"]}
                    line = f"{store:6} round {i + 1}: onethread {ours['turns_per_s']:>6} turns/s"
                    if ref:
                        pair["reference"] = round(ref["turns_per_s"])
                        pair["reference_wrong_replies"] = ref["wrong_replies"]
                        pair["ratio"] = round(ours["turns_per_s"] / ref["turns_per_s"], 1)
                        # per CPU-second of each process (the reference's executor
                        # threads included): steadier than the wall clock on a
                        # shared machine, and blind to time spent waiting.
                        ref_cpu = ref["turns"] / ref["cpu_s"] if ref["cpu_s"] > 0 else 0.0
                        pair["onethread_per_cpu_s"] = ours["turns_per_cpu_s"]
                        pair["reference_per_cpu_s"] = round(ref_cpu)
                        pair["cpu_ratio"] = (
                            round(ours["turns_per_cpu_s"] / ref_cpu, 1) if ref_cpu else 0.0
                        )
                        line += (
                            f", reference ({ref['store']}) {pair['reference']:>5} turns/s, "
                            f"ratio {pair['ratio']}x (per CPU-s {pair['onethread_per_cpu_s']}/"
                            f"{pair['reference_per_cpu_s']}, {pair['cpu_ratio']}x)"
                        )
                    pairs.append(pair)
                    print(line, flush=True)
                row: dict[str, Any] = {
                    "store": store,
                    "reference_store": REFERENCE_STORE[store],
                    "reference_agent": args.reference_agent,
                    "users": args.users,
                    "pairs": pairs,
                    "onethread_turns_per_s": spread([p["onethread"] for p in pairs]),
                }
                if reference is not None:
                    row["reference_turns_per_s"] = spread([p["reference"] for p in pairs])
                    row["ratio"] = spread([p["ratio"] for p in pairs])
                    row["cpu_ratio"] = spread([p["cpu_ratio"] for p in pairs])
                    r, c = row["ratio"], row["cpu_ratio"]
                    print(
                        f"{store:6} onethread/reference turns/s: median {r['median']}x "
                        f"(range {r['min']}-{r['max']}x over {args.rounds} paired rounds); "
                        f"per CPU-second: median {c['median']}x ({c['min']}-{c['max']}x); "
                        "issue 12's floor: 30x",
                        flush=True,
                    )
                rows.append(row)
    finally:
        if reference is not None:
            reference.close()
    result = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "users": args.users,
        "reference": (
            {"package": "praisonai-bot", "version": reference.version, "python": str(python)}
            if reference is not None
            else None
        ),
        "rows": rows,
    }
    name = "reference" if args.reference_agent == "stub" else f"reference_{args.reference_agent}"
    print("wrote", write(name, result))


if __name__ == "__main__":
    sys.exit(main())
