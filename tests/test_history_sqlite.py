"""The SQLite history store's own machinery: loop-side claim, cache, group commit,
checkpoints and WAL syncs (the contract every store meets is in
test_history_contract.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import onethread.session.history._sqlite_checkpoint as checkpoint_module
import onethread.session.history._sqlite_sql as sql_module
import onethread.session.history._sqlite_wal as wal_module
import onethread.session.history.sqlite as sqlite_module
from onethread.errors import CorruptStoreError, StoreError
from onethread.session._conn.sqlite import retry_busy
from onethread.session.history._sqlite_wal import WalSyncer
from onethread.session.history.base import HistoryEntry
from onethread.session.history.sqlite import SQLiteHistoryStore


def e(content: str, ts: float, role: str = "user") -> HistoryEntry:
    return HistoryEntry(role=role, content=content, timestamp=ts)


@pytest.fixture
async def claimed(tmp_path: Path) -> AsyncIterator[SQLiteHistoryStore]:
    """A store whose loop side this test's loop has claimed (one append made)."""
    store = SQLiteHistoryStore(tmp_path / "h.db")
    await store.append("warm", [e("x", 0)])
    yield store
    await store.close()


async def test_a_crowd_of_first_calls_claims_the_loop_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = SQLiteHistoryStore._loop_owned

    def counted(self: SQLiteHistoryStore) -> None:
        calls.append(1)
        real(self)

    monkeypatch.setattr(SQLiteHistoryStore, "_loop_owned", counted)
    store = SQLiteHistoryStore(tmp_path / "h.db")
    try:
        loaded = await asyncio.gather(*(store.load(f"k{i}", 20) for i in range(100)))
        assert loaded == [[]] * 100
        assert len(calls) == 1  # one checkpoint-and-restart at start, not one per caller
        await asyncio.gather(*(store.append(f"k{i}", [e(f"m{i}", i)]) for i in range(100)))
        assert [x.content for x in await store.load("k7", 20)] == ["m7"]
    finally:
        await store.close()


async def test_the_cache_sees_writes_from_another_connection(tmp_path: Path) -> None:
    ours, other = SQLiteHistoryStore(tmp_path / "h.db"), SQLiteHistoryStore(tmp_path / "h.db")
    try:
        await ours.append("k", [e("a", 1), e("b", 2)])
        assert [x.content for x in await ours.load("k", 10)] == ["a", "b"]  # now cached

        def write_elsewhere() -> None:  # another thread's loop: another connection
            asyncio.run(other.append("k", [e("c", 3)]))

        await asyncio.to_thread(write_elsewhere)
        assert [x.content for x in await ours.load("k", 10)] == ["a", "b", "c"]
        await asyncio.to_thread(lambda: asyncio.run(other.clear("k")))
        assert await ours.load("k", 10) == []
    finally:
        await ours.close()
        await asyncio.to_thread(lambda: asyncio.run(other.close()))


async def test_one_failing_turn_in_a_shared_commit_fails_alone(claimed: SQLiteHistoryStore) -> None:
    store = claimed
    with sqlite3.connect(store.path) as raw:
        raw.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON entries WHEN NEW.content = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )
    results = await asyncio.gather(
        store.append("a", [e("a1", 1), e("a2", 2)]),
        store.append("b", [e("b1", 1), e("poison", 2)]),
        store.append("c", [e("c1", 1)]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and str(store.path) in str(results[1])
    assert isinstance(results[1].__cause__, sqlite3.IntegrityError)
    assert [x.content for x in await store.load("a", 10)] == ["a1", "a2"]
    assert await store.load("b", 10) == []  # all of the turn or none of it
    assert [x.content for x in await store.load("c", 10)] == ["c1"]


async def test_a_cancelled_append_is_not_stored(claimed: SQLiteHistoryStore) -> None:
    store = claimed
    task = asyncio.create_task(store.append("k", [e("never", 1)]))
    await asyncio.sleep(0)  # queued for the next group commit, not yet written
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.append("k", [e("kept", 2)])
    assert [x.content for x in await store.load("k", 10)] == ["kept"]


async def test_appends_queued_at_close_are_committed(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    await store.append("warm", [e("x", 0)])
    tasks = [asyncio.create_task(store.append(f"k{i}", [e(f"m{i}", 1)])) for i in range(5)]
    await asyncio.sleep(0)  # queued, the group commit not yet run
    assert store._batch, "the appends should be waiting for the group commit"
    await store.close()
    await asyncio.gather(*tasks)
    again = SQLiteHistoryStore(tmp_path / "h.db")
    try:
        for i in range(5):
            assert [x.content for x in await again.load(f"k{i}")] == [f"m{i}"]
    finally:
        await again.close()


async def test_the_wal_stays_bounded_under_steady_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_ROWS", 64)
    monkeypatch.setattr(checkpoint_module, "RESTART_FRAMES", 256)
    store = SQLiteHistoryStore(tmp_path / "h.db")
    wal = tmp_path / "h.db-wal"
    frame = 4096 + 24
    largest = 0
    try:
        for turn in range(1500):
            key = f"k{turn % 50}"
            await store.append(key, [e(f"q{turn}", turn), e(f"a{turn}", turn, "assistant")])
            if turn % 25 == 0:
                largest = max(largest, wal.stat().st_size)
                await asyncio.sleep(0.001)  # the worker checkpoints meanwhile
        # ~3,000 rows in ~3,000+ frames; restarted every 256 frames it stays small
        assert largest < 4 * 256 * frame, f"the WAL grew to {largest} bytes"
        assert await store.count("k0") == 60
    finally:
        await store.close()


async def test_a_failing_checkpoint_is_logged_and_turns_go_on(
    claimed: SQLiteHistoryStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_ROWS", 16)
    store = claimed
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT", "PRAGMA wal_checkpoint(NO_SUCH_MODE")
    with caplog.at_level(logging.ERROR, logger="onethread.history.sqlite"):
        for turn in range(40):
            await store.append("k", [e(f"m{turn}", turn)])
        for _ in range(100):
            if "checkpoint failed" in caplog.text:
                break
            await asyncio.sleep(0.01)
    assert "checkpoint failed" in caplog.text
    assert await store.count("k") == 40
    assert not store._quiet  # the loop's commits are not held back for ever


async def test_the_wal_is_synced_while_turns_commit(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    try:
        for turn in range(20):
            await store.append("k", [e(f"m{turn}", turn)])
            await asyncio.sleep(0.015)  # longer than the syncer's 10 ms
        for _ in range(100):
            if store._wal.syncs >= 5:
                break
            await asyncio.sleep(0.01)
        assert store._wal.syncs >= 5
    finally:
        await store.close()
    assert store._wal._fd is None  # closed with the store


def test_wal_syncer_one_sync_at_a_time_and_not_too_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.db-wal").write_bytes(b"frames")
    gate = threading.Event()
    synced: list[int] = []

    def slow_sync(fd: int) -> None:
        gate.wait(5)
        synced.append(fd)

    monkeypatch.setattr(wal_module, "_sync", slow_sync)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        syncer = WalSyncer(tmp_path / "x.db", pool, every=0.0)
        syncer.committed()
        syncer.committed()  # the first is still running: no second one queued
        syncer.committed()
        gate.set()
        pool.submit(lambda: None).result()  # the worker has run what was queued
        assert syncer.syncs == 1
        syncer.every = 60.0
        syncer.committed()  # the first is done: a new one
        syncer.committed()  # within `every` of it: none
        pool.submit(lambda: None).result()
        assert syncer.syncs == 2 and len(synced) == 2
        pool.submit(syncer.close).result()


def test_wal_syncer_follows_a_wal_made_anew_and_skips_a_missing_one(tmp_path: Path) -> None:
    wal = tmp_path / "x.db-wal"
    syncer = WalSyncer(tmp_path / "x.db", concurrent.futures.ThreadPoolExecutor(1), every=0.0)
    syncer.sync()  # no WAL yet: nothing to do, no error
    assert syncer.syncs == 0
    wal.write_bytes(b"one")
    syncer.sync()
    assert syncer._fd is not None and syncer.syncs == 1
    wal.unlink()
    wal.write_bytes(b"two")  # SQLite deleted it and made a new one
    syncer.sync()
    assert syncer._fd is not None and syncer.syncs == 2
    assert os.fstat(syncer._fd).st_ino == wal.stat().st_ino
    syncer.close()


async def test_the_wal_of_a_symlinked_database_is_synced(tmp_path: Path) -> None:
    real = tmp_path / "data" / "h.db"
    real.parent.mkdir()
    link = tmp_path / "h.db"
    store = SQLiteHistoryStore(real)
    await store.append("k", [e("a", 1)])
    await store.close()
    link.symlink_to(real)
    store = SQLiteHistoryStore(link)
    try:
        for turn in range(10):
            await store.append("k", [e(f"m{turn}", turn)])
            await asyncio.sleep(0.015)
        await asyncio.sleep(0.05)
        assert store._wal.wal_path() == f"{real}-wal"
        assert store._wal.syncs >= 3  # SQLite keeps the WAL beside the real file
    finally:
        await store.close()


def test_wal_syncer_backs_off_while_syncs_fail_and_says_when_they_work_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "x.db-wal").write_bytes(b"frames")
    calls: list[int] = []
    broken = [True]
    clock = [100.0]

    def sync(fd: int) -> None:
        calls.append(fd)
        if broken[0]:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_sync", sync)
    monkeypatch.setattr(wal_module.time, "monotonic", lambda: clock[0])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        syncer = WalSyncer(tmp_path / "x.db", pool, every=0.0)

        def commits(n: int) -> None:
            for _ in range(n):
                syncer.committed()
                pool.submit(lambda: None).result()  # the worker ran what was queued

        with caplog.at_level(logging.WARNING, logger="onethread.history.sqlite"):
            commits(20)  # the first sync fails; the rest wait out the back-off
            assert len(calls) == 1 and syncer.failing
            assert caplog.text.count("Input/output error") == 1
            assert "trying again in 1 s" in caplog.text
            clock[0] += 1.5
            commits(20)  # one more try, which fails: twice as long now
            assert len(calls) == 2 and "trying again in 2 s" in caplog.text
            broken[0] = False
            clock[0] += 2.5
            commits(2)
            assert len(calls) == 4 and not syncer.failing  # every=0: each commit syncs
            assert "works again" in caplog.text
        pool.submit(syncer.close).result()


def _wal_generation(path: Path) -> bytes:
    """The WAL header's checkpoint sequence and salts: they change when it starts afresh."""
    try:
        with open(path, "rb") as f:
            return f.read(24)[12:24]
    except FileNotFoundError:
        return b""


async def test_a_commit_on_the_loop_never_starts_the_wal_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting the WAL afresh syncs its header: that must happen on the worker,
    never inside a commit made on the event loop's thread."""
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_ROWS", 32)
    monkeypatch.setattr(checkpoint_module, "RESTART_FRAMES", 96)
    store = SQLiteHistoryStore(tmp_path / "h.db")
    wal = tmp_path / "h.db-wal"
    on_loop: list[tuple[bytes, bytes]] = []
    real_transaction, real_write = sqlite_module.transaction, sqlite_module.write_one

    def watched(real):  # type: ignore[no-untyped-def]
        def call(conn, *args):  # type: ignore[no-untyped-def]
            if conn is not store._fast:
                return real(conn, *args)
            before = _wal_generation(wal)
            try:
                return real(conn, *args)
            finally:
                on_loop.append((before, _wal_generation(wal)))

        return call

    monkeypatch.setattr(sqlite_module, "transaction", watched(real_transaction))
    monkeypatch.setattr(sql_module, "transaction", watched(real_transaction))  # per-turn retries
    monkeypatch.setattr(sqlite_module, "write_one", watched(real_write))
    try:
        for turn in range(600):
            await asyncio.gather(
                *(store.append(f"k{i}", [e(f"m{turn}", turn)]) for i in range(turn % 7 + 1))
            )
            if turn % 50 == 49:  # clears and merges commit on the loop too
                await store.merge(f"k{turn % 3}", "merged")
                await store.clear("merged")
            if turn % 100 == 0:  # a turn that fails: the others are retried one by one
                bad = store.append("bad", [e("lone surrogate \ud800", turn)])
                good = store.append("good", [e(f"g{turn}", turn)])
                results = await asyncio.gather(bad, good, return_exceptions=True)
                assert isinstance(results[0], UnicodeEncodeError) and results[1] is None
            if turn % 10 == 0:
                await asyncio.sleep(0.002)  # the worker checkpoints meanwhile
    finally:
        await store.close()
    generations = {after for _, after in on_loop}
    assert len(generations) >= 4, "the WAL should have been started afresh several times"
    restarted_on_loop = [pair for pair in on_loop if pair[0] and pair[0] != pair[1]]
    assert restarted_on_loop == [], f"{len(restarted_on_loop)} loop commits restarted the WAL"


async def test_a_failed_catch_up_pass_ends_every_pin_and_logs_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_ROWS", 16)
    monkeypatch.setattr(checkpoint_module, "RESTART_FRAMES", 1)  # every checkpoint restarts
    failed: list[int] = []

    def failing_catch_up(self: SQLiteHistoryStore, pin: sqlite3.Connection, copied: int):  # type: ignore[no-untyped-def]
        newer = self._newer_pin(pin)  # as the real one: switch to a newer pin...
        if newer is not None:
            pin.execute("COMMIT")
        failed.append(1)
        raise sqlite3.OperationalError("disk I/O error (simulated)")  # ...then a pass fails

    monkeypatch.setattr(SQLiteHistoryStore, "_catch_up", failing_catch_up)
    store = SQLiteHistoryStore(tmp_path / "h.db")
    try:
        with caplog.at_level(logging.ERROR, logger="onethread.history.sqlite"):
            for turn in range(60):
                await store.append("k", [e(f"m{turn}", turn)])
                await asyncio.sleep(0.001)
            for _ in range(200):
                done = store._checkpoint is None or store._checkpoint.done()
                if failed and done:
                    break
                await asyncio.sleep(0.01)
        assert failed
        assert "disk I/O error (simulated)" in caplog.text
        assert store._pin is not None and store._pin2 is not None
        assert not store._pin.in_transaction and not store._pin2.in_transaction
        assert not store._quiet
        await store.append("k", [e("after", 100)])
        assert await store.count("k") == 61
    finally:
        await store.close()


async def test_values_sqlite_cannot_store_fail_their_turn_alone(
    claimed: SQLiteHistoryStore,
) -> None:
    store = claimed
    results = await asyncio.gather(
        store.append("a", [e("fine", 1)]),
        store.append("b", [e("lone surrogate \ud800", 1)]),
        store.append("c", [e("fine too", 2)]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], UnicodeEncodeError)
    assert await store.load("b") == []
    assert [x.content for x in await store.load("c")] == ["fine too"]
    await store.append("d", [e("big int time", 2**70)])  # type: ignore[arg-type]
    [big] = await store.load("d")
    assert big.timestamp == float(2**70)
    assert store._pin is not None and not store._pin.in_transaction


async def test_a_failed_checkpoint_after_a_worker_commit_does_not_fail_the_turns(
    claimed: SQLiteHistoryStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = claimed
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT", "PRAGMA wal_checkpoint(NO_SUCH_MODE")
    store._worker_rows = 10**6  # due a checkpoint on the worker's next commit
    row = sqlite_module.entry_to_row("k", e("stored", 1))
    with caplog.at_level(logging.ERROR, logger="onethread.history.sqlite"):
        errors = await store._run(store._append_turns, [[row]])
    assert errors == [None]  # committed: the caller must not retry it
    assert "checkpoint failed" in caplog.text
    assert not store._quiet
    assert [x.content for x in await store.load("k")] == ["stored"]


def test_retry_busy_waits_out_a_busy_answer_and_nothing_else() -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    answers: list[object] = [busy, busy, "done"]

    def step() -> object:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert retry_busy(step, 5.0) == "done"
    broken = sqlite3.OperationalError("no such table: x")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(lambda: (_ for _ in ()).throw(broken), 5.0)  # not busy: at once
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_busy(lambda: (_ for _ in ()).throw(busy), 0.05)  # busy past the timeout


async def test_a_locked_file_at_open_is_reported_locked_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_OPEN_TIMEOUT", 0.2)
    path = tmp_path / "h.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write on a new file
    store = SQLiteHistoryStore(path)
    try:
        with pytest.raises(StoreError, match="locked") as caught:
            await store.load("k")
        assert not isinstance(caught.value, CorruptStoreError)
    finally:
        holder.execute("COMMIT")
        holder.close()
    await store.append("k", [e("later", 1)])  # the lock gone, the same store works
    assert [x.content for x in await store.load("k")] == ["later"]
    await store.close()
