"""A separate OS process that takes shared turn locks, for the multiprocess lock tests.

Usage::

    python _lock_worker.py contend KIND URL NAMESPACE KEY TASKS ROUNDS GO_FILE
    python _lock_worker.py hold KIND URL NAMESPACE KEY LEASE

KIND is ``redis`` or ``postgres``; NAMESPACE the key prefix / schema.
``contend`` prints ``ready``, waits until GO_FILE exists (a start barrier),
runs TASKS tasks that each hold KEY ROUNDS times, and prints one JSON line:
the ``[enter_ns, exit_ns]`` intervals (``time.monotonic_ns``, one clock for
every process on the machine) spent inside the lock.
``hold`` takes the lock, prints ``held FENCE`` and sleeps until killed.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from onethread.session.locks.postgres import PostgresTurnLocks
from onethread.session.locks.redis import RedisTurnLocks


def make_locks(kind: str, url: str, namespace: str, lease: float = 30.0) -> Any:
    """The shared turn locks of ``kind`` in ``namespace``."""
    if kind == "redis":
        return RedisTurnLocks(url, lease, prefix=namespace)
    return PostgresTurnLocks(url, schema=namespace)


def command(*args: object) -> list[str]:
    """The command line that runs this worker with ``args``."""
    return [sys.executable, __file__, *map(str, args)]


def start(*args: object) -> subprocess.Popen[str]:
    """Start a worker; its stdout is a text pipe."""
    return subprocess.Popen(
        command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def _contend(
    kind: str, url: str, namespace: str, key: str, tasks: int, rounds: int, go: Path
) -> None:
    locks = make_locks(kind, url, namespace)
    async with locks.hold("warm-up"):
        pass  # connect before the barrier, so the start is simultaneous
    print("ready", flush=True)
    while not go.exists():
        await asyncio.sleep(0.005)
    intervals: list[list[int]] = []

    async def worker() -> None:
        for _ in range(rounds):
            async with locks.hold(key):
                enter = time.monotonic_ns()
                await asyncio.sleep(random.uniform(0, 0.002))
                intervals.append([enter, time.monotonic_ns()])

    await asyncio.gather(*(worker() for _ in range(tasks)))
    await locks.close()
    print(json.dumps(intervals), flush=True)


async def _hold(kind: str, url: str, namespace: str, key: str, lease: float) -> None:
    locks = make_locks(kind, url, namespace, lease)
    async with locks.lease(key) as held:
        print(f"held {held.fence}", flush=True)
        await asyncio.sleep(3600)


def main(argv: list[str]) -> None:
    mode, kind, url, namespace, key, *rest = argv
    if mode == "contend":
        tasks, rounds, go = int(rest[0]), int(rest[1]), Path(rest[2])
        asyncio.run(_contend(kind, url, namespace, key, tasks, rounds, go))
    elif mode == "hold":
        asyncio.run(_hold(kind, url, namespace, key, float(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
