"""Start-up: import times, and ``onethread run`` until the web chat accepts a connection.

Each figure is the median of ``--repeats`` fresh processes (the first run is
thrown away, so the OS file cache is warm; ``.pyc`` files exist):

- ``python -c "pass"``: the interpreter alone, for reference;
- ``python -c "import onethread"`` and ``import onethread.bots``: the whole
  process, and the import itself (the difference);
- ``onethread run --port P`` with no config and no platform tokens (web chat
  only, offline model, history and identity under a fresh ``ONETHREAD_HOME``):
  time until a TCP connection to the port is accepted, and until ``GET /healthz``
  answers 200.

    python benchmarks/bench_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import write

PLATFORM_ENV = (
    "TELEGRAM_BOT_TOKEN",
    "DISCORD_BOT_TOKEN",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ONETHREAD_MODEL",
    "ONETHREAD_CONFIG",
)


def clean_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PLATFORM_ENV}
    env["ONETHREAD_HOME"] = home
    return env


def timed(cmd: list[str], repeats: int) -> float:
    """Median wall time of ``cmd`` in milliseconds (after one unmeasured run)."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def onethread_command() -> list[str]:
    script = Path(sys.executable).with_name("onethread")
    return [str(script)] if script.exists() else [sys.executable, "-m", "onethread"]


def run_once(tmp: Path) -> tuple[float, float]:
    """Milliseconds from spawning ``onethread run`` to: a TCP accept, a 200 from /healthz."""
    port = free_port()
    home = tempfile.mkdtemp(dir=tmp)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*onethread_command(), "run", "--port", str(port)],
        cwd=home,
        env=clean_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        accepted = healthy = 0.0
        deadline = start + 30
        while not accepted:
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise RuntimeError("onethread run did not start listening")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                accepted = time.perf_counter()
            except OSError:
                time.sleep(0.001)
        while not healthy:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    if r.status == 200:
                        healthy = time.perf_counter()
            except OSError:
                time.sleep(0.001)
        return (accepted - start) * 1000, (healthy - start) * 1000
    finally:
        proc.terminate()
        proc.wait(10)


def import_profile(module: str) -> list[tuple[str, float]]:
    """The modules ``import module`` spends most time in (cumulative ms, from -X importtime)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            if depth <= 2:  # the package itself and what it imports directly
                rows.append((name.strip(), int(parts[1]) / 1000))
    rows.sort(key=lambda r: -r[1])
    return [(name, round(ms, 1)) for name, ms in rows[:8]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable
    bare = timed([py, "-c", "pass"], args.repeats)
    result: dict[str, object] = {"python_bare_ms": bare}
    for module in ("onethread", "onethread.bots"):
        total = timed([py, "-c", f"import {module}"], args.repeats)
        result[f"import {module}"] = {
            "process_ms": total,
            "import_ms": round(total - bare, 1),
            "slowest_imports_ms": import_profile(module),
        }
        print(f"import {module:15} process={total}ms import={total - bare:.1f}ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_once(Path(tmp)) for _ in range(args.repeats + 1)][1:]
    accept = round(statistics.median(r[0] for r in runs), 1)
    health = round(statistics.median(r[1] for r in runs), 1)
    result["onethread run"] = {"tcp_accept_ms": accept, "healthz_200_ms": health}
    print(f"onethread run: accepts a connection after {accept}ms, /healthz 200 after {health}ms")
    print(f"python alone: {bare}ms")
    print("wrote", write("startup", {"repeats": args.repeats, **result}))


if __name__ == "__main__":
    main()
