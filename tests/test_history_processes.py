"""Several OS processes write one SQLite history at once: nothing is lost or torn.

The turn lock of a SQLite deployment is per process (several hosts or processes
serving one person at the same moment use Redis or PostgreSQL, which share the
lock), so turns of one person from two processes may interleave in time; what
must hold is that every row lands, each process's turns stay in order, and
every message keeps its reply.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from onethread.session.urls import open_history_store

pytestmark = pytest.mark.multiprocess


def test_four_processes_hammer_one_sqlite_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/history.db"
    worker = Path(__file__).with_name("_history_worker.py")
    procs = [
        subprocess.Popen([sys.executable, str(worker), url, str(w), "10", "15"]) for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]

    async def check() -> None:
        store = open_history_store(url)
        try:
            for u in range(10):
                entries = await store.load(f"bot_web_u{u}")
                assert len(entries) == 4 * 15 * 2
                users = [e.content for e in entries if e.role == "user"]
                replies = {e.content for e in entries if e.role == "assistant"}
                assert replies == {f"re:{c}" for c in users}
                for w in range(4):
                    mine = [c for c in users if c.startswith(f"w{w}-")]
                    assert mine == [f"w{w}-u{u}-t{t}" for t in range(15)]
        finally:
            await store.close()

    asyncio.run(check())
