"""SQLite history on a small disk: how many turns fit before "database or disk is full".

Each turn appends one user message (200 characters) to one of 50 sessions, on
a fresh store in a tmpfs of SIZE MB, until the store refuses (``StoreError``).
Run twice per size: with the WAL limits from free space (the store as it is,
``_sqlite_checkpoint.room_limits``) and without them (the fixed thresholds
alone: a restart at 64 MB of WAL, a checkpoint every 4,096 rows, as before).
Also a run on the ordinary disk shows the limits change nothing there.
Prints turns stored, the database file's size, the WAL file's peak and the
least free space seen during the run (sampled every 10 turns).
Needs root (``mount -t tmpfs``).

    python benchmarks/bench_disk_room.py [--sizes 1,4,16] [--turns 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onethread.session.history._sqlite_checkpoint as ckpt
from onethread.errors import StoreError
from onethread.session.history.base import HistoryEntry
from onethread.session.history.sqlite import SQLiteHistoryStore


@contextmanager
def tmpfs(megabytes: int) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="onethread-room-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", folder],
                   check=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=True)
        folder.rmdir()


async def fill(folder: Path, limit: int) -> dict[str, int]:
    """Append turns until the store refuses or ``limit`` turns are stored."""
    store = SQLiteHistoryStore(folder / "h.db")
    wal = folder / "h.db-wal"
    turns = peak = 0
    least = free_bytes(folder)
    try:
        while turns < limit:
            entry = HistoryEntry(role="user", content="x" * 200, timestamp=float(turns))
            try:
                await store.append(f"k{turns % 50}", [entry])
            except StoreError:
                break
            turns += 1
            if wal.exists():
                peak = max(peak, wal.stat().st_size)
            if turns % 10 == 0:
                least = min(least, free_bytes(folder))
        data = (folder / "h.db").stat().st_size
    finally:
        await store.close()
    return {"turns": turns, "wal_peak": peak, "least_free": least, "db": data}


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def run(folder: Path, limit: int, room: bool) -> dict[str, int]:
    original = ckpt.room_limits
    if not room:
        ckpt.room_limits = lambda path, page_size: (ckpt.RESTART_FRAMES, ckpt.CHECKPOINT_ROWS)
    try:
        return asyncio.run(fill(folder, limit))
    finally:
        ckpt.room_limits = original
        for name in ("h.db", "h.db-wal", "h.db-shm"):
            (folder / name).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16", help="tmpfs sizes in MB")
    parser.add_argument("--turns", type=int, default=3000, help="stop after this many")
    args = parser.parse_args()
    print(f"{'disk':>12} {'limits':>7} {'turns':>6} {'db':>8} {'WAL peak':>9} {'least free':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tmpfs(size) as folder:
            for room in (False, True):
                r = run(folder, args.turns, room)
                print(f"{f'tmpfs {size} MB':>12} {'on' if room else 'off':>7} {r['turns']:>6} "
                      f"{r['db'] / 1e6:>6.2f}MB {r['wal_peak'] / 1e6:>7.2f}MB "
                      f"{r['least_free'] / 1e6:>8.2f}MB")  # fmt: skip
    with tempfile.TemporaryDirectory() as plain:
        for room in (False, True):
            r = run(Path(plain), args.turns, room)
            print(f"{'plain disk':>12} {'on' if room else 'off':>7} {r['turns']:>6} "
                  f"{r['db'] / 1e6:>6.2f}MB {r['wal_peak'] / 1e6:>7.2f}MB")  # fmt: skip


if __name__ == "__main__":
    main()
