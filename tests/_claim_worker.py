"""A separate OS process that claims unified ids, for the cross-process claim test.

Usage::

    python _claim_worker.py KIND WHERE NAMESPACE WORKER ROUNDS GO_FILE

KIND is ``file``, ``sqlite``, ``redis`` or ``postgres``; WHERE is the file path
or the server URL; NAMESPACE the Redis prefix or PostgreSQL schema (``-`` for
files). The worker prints ``ready``, waits for GO_FILE (a start barrier), then
for each round r claims ``name-{r}`` for its own account ``w{WORKER}-r{r}`` and
prints the rounds it won as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_claims(kind: str, where: str, namespace: str, workers: int, rounds: int,
               scratch: Path) -> list[list[int]]:  # fmt: skip
    """Start ``workers`` processes claiming the same ids at once; the rounds each won."""
    go_file = scratch / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, kind, where, namespace, str(n), str(rounds), str(go_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(workers)
    ]
    won: list[list[int]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.communicate(timeout=30)
        go_file.touch()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            won.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return won


def _open(kind: str, where: str, namespace: str) -> Any:
    from onethread.session import (
        FileIdentityResolver,
        PostgresIdentityResolver,
        RedisIdentityResolver,
        SQLiteIdentityResolver,
    )

    if kind == "file":
        return FileIdentityResolver(where)
    if kind == "sqlite":
        return SQLiteIdentityResolver(where)
    if kind == "redis":
        return RedisIdentityResolver(where, prefix=namespace)
    if kind == "postgres":
        return PostgresIdentityResolver(where, schema=namespace)
    raise SystemExit(f"unknown kind {kind!r}")


def main(argv: list[str]) -> int:
    kind, where, namespace, worker, rounds, go_file = argv
    with _open(kind, where, namespace) as resolver:
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(go_file):
            if time.monotonic() > deadline:
                raise SystemExit("start barrier timed out")
            time.sleep(0.002)
        won = [
            r
            for r in range(int(rounds))
            if resolver.claim("telegram", f"w{worker}-r{r}", f"name-{r}")
        ]
    print(json.dumps(won))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
