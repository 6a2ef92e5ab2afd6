"""SQLite stores on a real full disk: a 1 MB tmpfs mounted for the test (root only).

A full disk used to surface as a raw ``sqlite3.OperationalError`` (and, at
open, as a *corrupt* database); it is now a ``StoreError`` naming the file
and the fix. The history store's WAL used to need ~80 MB free before its
first restart (each turn adds 3-8 WAL frames whatever its size), so a 1 MB
disk took 77 turns; it is now kept to about a quarter of the free space.
Freeing space makes the store work again, with nothing acknowledged lost.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from onethread.errors import CorruptStoreError, StoreError
from onethread.session.history.base import HistoryEntry
from onethread.session.history.sqlite import SQLiteHistoryStore
from onethread.session.pairing import PairingStore


def _no_tmpfs(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true runs as root: a 1 MB tmpfs must be mountable)")
    pytest.skip(reason)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs, unmounted afterwards."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _no_tmpfs("mounting a 1 MB tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", folder],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        _no_tmpfs(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        assert shutil.disk_usage(folder).total <= 1024 * 1024
        yield folder
    finally:
        done = subprocess.run(["umount", folder], capture_output=True, text=True)
        if done.returncode != 0:  # a file left open: detach it now, fail the test
            subprocess.run(["umount", "-l", folder], check=True)
            pytest.fail(f"the tmpfs was still in use: {done.stderr.strip()}")


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a ballast file until at most ``leave`` bytes are free."""
    ballast = folder / "ballast"
    with open(ballast, "ab") as f:
        try:
            while shutil.disk_usage(folder).free > leave:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return ballast


def assert_full_error(err: BaseException, path: Path) -> None:
    assert type(err) is StoreError  # not CorruptStoreError: nothing is wrong with the file
    text = str(err)
    assert str(path) in text and "disk is full" in text and "free space" in text
    cause = err.__cause__
    assert isinstance(cause, sqlite3.OperationalError)
    assert cause.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL


def turn(i: int) -> list[HistoryEntry]:
    return [HistoryEntry(role="user", content=f"message {i} " + "x" * 200, timestamp=float(i))]


async def test_history_store_fills_the_disk_then_says_so_and_recovers(tiny_disk: Path) -> None:
    ballast = tiny_disk / "ballast"  # space to free afterwards
    ballast.write_bytes(b"\0" * 128 * 1024)
    path = tiny_disk / "history.db"
    store = SQLiteHistoryStore(path)
    stored = wal_peak = 0
    try:
        with pytest.raises(StoreError) as info:
            while stored < 10_000:
                await store.append(f"k{stored % 50}", turn(stored))
                stored += 1
                wal_peak = max(wal_peak, (tiny_disk / "history.db-wal").stat().st_size)
        assert_full_error(info.value, path)
        # The WAL is kept to a share of the free space, so the disk fills with
        # turns (~2,500 here) rather than WAL frames: 77 turns when the WAL could
        # grow to 64 MB before its first restart.
        assert stored >= 1500, stored
        assert wal_peak <= 512 * 1024, wal_peak
        assert sum([await store.count(f"k{k}") for k in range(50)]) == stored  # none lost
        ballast.unlink()  # the fix the error names: free space. The same store goes on.
        await store.append("k1", turn(10_000))
        assert (await store.load("k1"))[-1].content.startswith("message 10000")
        assert sum([await store.count(f"k{k}") for k in range(50)]) == stored + 1
    finally:
        await store.close()


async def test_history_store_opened_on_a_full_disk_is_not_called_corrupt(
    tiny_disk: Path,
) -> None:
    fill(tiny_disk)
    path = tiny_disk / "history.db"
    store = SQLiteHistoryStore(path)
    try:
        with pytest.raises(StoreError) as info:
            await store.append("k", turn(1))
        assert not isinstance(info.value, CorruptStoreError)
        assert_full_error(info.value, path)
    finally:
        await store.close()
    os.unlink(tiny_disk / "ballast")
    store = SQLiteHistoryStore(path)
    try:
        await store.append("k", turn(1))
        assert await store.count("k") == 1
    finally:
        await store.close()


def test_pairing_store_on_a_full_disk(tiny_disk: Path) -> None:
    path = tiny_disk / "pairing.db"
    store = PairingStore(path)
    try:
        assert store.issue("link", "telegram", "1") is not None
        ballast = fill(tiny_disk)
        with pytest.raises(StoreError) as info:
            for i in range(200):  # the first page that must grow fails
                store.issue("link", "telegram", f"u{i}", max_live=1000)
                store.approve("telegram", f"u{i}")
        assert_full_error(info.value, path)
        os.unlink(ballast)
        store.approve("telegram", "after")  # space freed: it works again
        assert store.is_approved("telegram", "after")
    finally:
        store.close()


def test_pairing_store_created_on_a_full_disk_is_not_called_corrupt(tiny_disk: Path) -> None:
    fill(tiny_disk)
    with pytest.raises(StoreError) as info:
        PairingStore(tiny_disk / "pairing.db")
    assert_full_error(info.value, tiny_disk / "pairing.db")
