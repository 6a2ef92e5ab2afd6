"""A serving host that dies (SIGKILL) in the middle of delivering, for the outbox tests.

Usage::

    python _outbox_worker.py KIND URL NAMESPACE VISIBILITY

Serves platform ``telegram``; on the first item it prints ``got ID`` and
kills itself before acknowledging it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

from onethread.session.outbox import OutboxItem


def make_outbox(kind: str, url: str, namespace: str, **options: Any) -> Any:
    """The shared outbox of ``kind`` in ``namespace``."""
    if kind == "redis":
        from onethread.session.outbox.redis import RedisOutbox

        return RedisOutbox(url, prefix=namespace, **options)
    from onethread.session.outbox.postgres import PostgresOutbox

    return PostgresOutbox(url, schema=namespace, **options)


def start(*args: object) -> subprocess.Popen[str]:
    """Start a worker with ``args``; stdout is a text pipe."""
    return subprocess.Popen(
        [sys.executable, __file__, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _serve_and_die(kind: str, url: str, namespace: str, visibility: float) -> None:
    outbox = make_outbox(kind, url, namespace, visibility=visibility, poll=0.05)

    async def deliver(item: OutboxItem) -> None:
        print(f"got {item.text}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    await outbox.serve(["telegram"], deliver)


if __name__ == "__main__":
    kind, url, namespace, visibility = sys.argv[1:5]
    asyncio.run(_serve_and_die(kind, url, namespace, float(visibility)))
