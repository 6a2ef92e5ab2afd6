"""``sqlite:///PATH``: the default history store, one file on one machine.

WAL journal, ``synchronous=NORMAL`` (a committed turn survives a crash of the
process; WAL with NORMAL may lose the last commits on power loss, as documented
by SQLite), rows indexed by ``(key, ts, id)``. Several processes may share the
file (the CLI reads while the bot writes): SQLite's own file locking
serialises writers.

Two connections, so that a turn costs tens of microseconds, not a thread hop:

- The **loop connection** serves ``load`` (small limits), ``append`` and small
  ``clear``/``merge`` calls on the event loop's own thread, for the first
  running loop that uses the store. Nothing on it waits for long:

  * no fsync. With WAL and ``synchronous=NORMAL`` a commit writes the new
    pages into the WAL file (the OS page cache) and syncs nothing. SQLite
    syncs in two places only: checkpoints, which this connection never runs
    (``wal_autocheckpoint=0``), and the first commit after the WAL is started
    afresh, which syncs the new WAL header; the store makes sure that commit
    is the worker's (see *Checkpoints*).
  * no lock waits: its busy timeout is 0. When another connection (the CLI,
    another process, our own worker) holds the write lock, the work goes to
    the worker thread, whose connection waits up to 30 s.
  * bounded work: at most ``_LOOP_READ_MAX`` rows read and ``_LOOP_WRITE_MAX``
    cleared or merged, by index; more, full loads, ``count`` and ``sessions``
    run on the worker thread.

  What remains on the loop is CPU work and writes into the page cache; a
  machine short of memory (dirty-page throttling, a page read from disk) can
  still stall it for that moment.

- The **worker connection** lives on the store's single worker thread and
  does the rest, including all the work of callers on other threads or loops.

**Group commit.** ``append`` queues the turn's rows; once per loop iteration
all queued turns are written in one transaction, and each caller returns only
after that COMMIT (so a turn is durable once ``append`` returns). A turn's rows
are all in one transaction, so each turn is all-or-nothing; if the shared
transaction fails, it is rolled back and every turn is retried in its own, so
one bad turn cannot sink the others.

**Checkpoints** run on the worker thread, pinned by read snapshots so that
the loop's commits never start the WAL afresh (which syncs its header); see
``_sqlite_checkpoint``.

**WAL syncs.** Syncing a file that another thread keeps appending to stalls
those appends now and then, for about as long as the sync takes; a
checkpoint's sync of 200 ms of WAL stalled the loop's commits for 5-10 ms. So
while turns commit, the worker syncs the WAL at most every 10 ms
(``_sqlite_wal.WalSyncer``): each sync is small, and the checkpoint's own
sync finds little left to write. A failing sync is logged and retried after
1 s, then 2, 4... up to a minute, until one works again.

**Read cache.** The loop side keeps the newest entries of recently used keys
(``_sqlite_cache.TailCache``, at most ``cache_entries``). It is exact: the
first load of each loop iteration reads ``PRAGMA data_version``, which changes
whenever *another* connection (another process, our worker) committed; each
cached key is then checked once, by the ids of its newest rows, before it is
served again. Once per iteration is enough: a task can only learn of another
connection's commit (a reply, a lock released, a worker's result) through a
callback of a later iteration, and the reset of that read is queued before the
read itself, so it runs first. The loop's own commits update the cache
directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ...errors import CorruptStoreError, SchemaVersionError, StoreError
from .._conn.sqlite import is_busy, is_full, mapped_errors, retry_busy, store_error
from ._sqlite_cache import TailCache
from ._sqlite_checkpoint import Checkpoints
from ._sqlite_sql import (
    COUNT_UPTO,
    MIGRATE_1_TO_2,
    SCHEMA,
    SELECT_LAST_IDS,
    TURN_ERRORS,
    Row,
    begin_read,
    commit_each,
    commit_turns,
    entry_to_row,
    row_to_entry,
    select_entries,
    transaction,
    write_one,
)
from ._sqlite_wal import WalSyncer
from .base import HistoryEntry, SessionSummary

__all__ = ["SCHEMA_VERSION", "SQLiteHistoryStore"]

SCHEMA_VERSION = 2  # 2: entries.attachments (see _migrate)
_OPEN_TIMEOUT = 30.0  # seconds to wait for other connections' locks (worker side)
# Several processes may create the file at once: one row, whoever is first.
_FIRST_VERSION = (
    "INSERT INTO schema_version (version) SELECT ? WHERE NOT EXISTS (SELECT 1 FROM schema_version)"
)
T = TypeVar("T")

_LOOP_READ_MAX = 256  # larger loads run on the worker thread
_LOOP_WRITE_MAX = 256  # clears and merges of more rows run on the worker thread
# Commits made on any store's loop connection in this process (one int, bumped on a
# loop thread under the GIL): another store of the same file on the same loop may
# write between two loads of one loop iteration, without a callback in between.
_loop_commits = [0]


_Pending = tuple[str, list[HistoryEntry], list[Row], asyncio.Future[None]]


def _migrate(conn: sqlite3.Connection) -> int:
    """Upgrade a database written by an earlier release in place, once; its version after.

    Under ``BEGIN IMMEDIATE`` (one writer at a time, across processes), the
    version is read again, so of several processes opening an old file at
    once exactly one migrates it and the others find it done. Schema 1 -> 2
    adds ``entries.attachments`` (existing rows: none). Rows are never rewritten.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("SELECT max(version) FROM schema_version").fetchone()[0])
        if found < 2:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
            if "attachments" not in columns:
                conn.execute(MIGRATE_1_TO_2)
            conn.execute("UPDATE schema_version SET version = 2")
            found = 2
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


class SQLiteHistoryStore(Checkpoints):
    """History in a SQLite file. Opened lazily on first use.

    Args:
        path: the database file (its folder is created 0700, the file 0600).
        cache_entries: how many recent entries the loop side may keep in
            memory for fast loads (0: none); about 400 bytes each.

    Errors: ``CorruptStoreError`` for a file that is not a usable database,
    ``SchemaVersionError`` for a newer one; any other driver failure is a
    ``StoreError`` naming the file (a full disk also names the fix: free
    space); the ``sqlite3`` error is its ``__cause__``.

    Concurrency: safe from many tasks, threads and processes. The event loop
    that first uses the store serves ``load``/``append`` on its own thread
    (see the module docstring: no fsync and no lock waits there); every other
    call, and every call from another thread or loop, is a job on the store's
    single worker thread. Each turn's ``append`` is one atomic unit, committed
    before ``append`` returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, cache_entries: int = 25_000) -> None:
        # Absolute: connections opened later (the loop side, at its first call) and
        # the WAL syncer must find the same file after a chdir.
        self.path = Path(path).expanduser().absolute()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onethread-sqlite")
        self._conn: sqlite3.Connection | None = None  # the worker thread's
        self._closed = False
        # Loop side: touched only by the thread running ``_loop`` (the owner).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fast: sqlite3.Connection | None = None
        self._pin: sqlite3.Connection | None = None  # read snapshots for checkpoints
        self._pin2: sqlite3.Connection | None = None
        self._pin_asked: sqlite3.Connection | None = None  # worker -> loop: pin this one
        self._pin_taken: sqlite3.Connection | None = None  # loop -> worker: done
        self._fast_failed = False
        self._claim_lock = threading.Lock()
        # Claims under way, by loop: each loop's tasks touch only its own item.
        self._claims: dict[asyncio.AbstractEventLoop, asyncio.Task[sqlite3.Connection | None]] = {}
        self._cache = TailCache(cache_entries)
        # _loop_commits[0] when this loop iteration read PRAGMA data_version, else -1
        # (see *Read cache*).
        self._version_seen = -1
        self._batch: list[_Pending] = []
        self._handoffs: set[asyncio.Task[None]] = set()
        self._handing_off = 0  # hand-offs under way (see _hand_off)
        self._since_checkpoint = 0  # rows the loop committed since the last checkpoint
        self._worker_rows = 0  # rows the worker committed since its last checkpoint
        self._checkpoint: concurrent.futures.Future[None] | None = None
        self._wal = WalSyncer(self.path, self._executor)
        # Between the loop thread and the worker (plain attributes, atomic under
        # the GIL; see _flush and _hold_commits): the loop sets _flushing while it
        # commits; while _quiet is set it holds its commits back. Set until the
        # loop side is ready: the WAL may be empty, and its first commit syncs.
        self._flushing = False
        self._quiet = True

    # -- worker-thread side ----------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            conn = sqlite3.connect(self.path, timeout=_OPEN_TIMEOUT, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        try:
            retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"), _OPEN_TIMEOUT)
            conn.execute("PRAGMA synchronous=NORMAL")
            retry_busy(lambda: conn.executescript(SCHEMA), _OPEN_TIMEOUT)
            found = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if found is None:
                retry_busy(lambda: conn.execute(_FIRST_VERSION, (SCHEMA_VERSION,)), _OPEN_TIMEOUT)
            elif found < SCHEMA_VERSION:
                found = retry_busy(lambda: _migrate(conn), _OPEN_TIMEOUT)
        except sqlite3.DatabaseError as exc:
            conn.close()  # let go of the file (a full disk's tmpfs cannot be unmounted else)
            raise self._open_error(exc) from exc
        if found is not None and found > SCHEMA_VERSION:
            conn.close()
            raise SchemaVersionError(str(self.path), found, SCHEMA_VERSION)
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass  # not ours to fix (e.g. a read-only mount); the data is still usable
        self._conn = conn
        return conn

    def _open_error(self, exc: sqlite3.DatabaseError) -> StoreError:
        """Locked or no room: a ``StoreError`` that says so (the file is fine); else corrupt."""
        if is_busy(exc) or is_full(exc):
            return store_error(self.path, exc)
        return CorruptStoreError(str(self.path), f"not a readable SQLite database ({exc})")

    def _load(self, key: str, limit: int | None) -> list[HistoryEntry]:
        return select_entries(self._connect(), key, limit)

    def _append_turns(self, turns: list[list[Row]]) -> list[BaseException | None]:
        conn = self._connect()
        errors, busy = commit_turns(conn, turns)
        if any(error is None for error in errors):
            self._worker_committed(conn, sum(len(turn) for turn in turns))
        if busy is not None:  # still locked after the 30 s busy timeout
            errors += [busy] * (len(turns) - len(errors))
        return errors

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        return write_one(self._connect(), sql, args)

    def _count(self, key: str) -> int:
        row = self._connect().execute("SELECT count(*) FROM entries WHERE key = ?", (key,))
        return int(row.fetchone()[0])

    def _sessions(self, limit: int) -> list[SessionSummary]:
        rows = (
            self._connect()
            .execute(
                "SELECT key, count(*), max(ts), group_concat(DISTINCT platform) FROM entries "
                # Summaries and archives (base.SIDE_KEY_SUFFIXES) are not sessions.
                "WHERE substr(key, -8) != '#summary' AND substr(key, -9) != '#archived' "
                "GROUP BY key ORDER BY max(ts) DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [
            SessionSummary(
                key=k,
                count=n,
                last_timestamp=ts,
                platforms=tuple(sorted(p for p in (plats or "").split(",") if p)),
            )
            for k, n, ts, plats in rows
        ]

    def _close(self) -> None:
        self._wal.close()
        if self._conn is not None:
            self._conn.close()  # the last connection: SQLite checkpoints here
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("this history store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- loop side -------------------------------------------------------------

    async def _claim(self, loop: asyncio.AbstractEventLoop) -> sqlite3.Connection | None:
        """Make ``loop`` the loop side's owner if no live loop owns it; its connection or None."""
        if self._closed:
            raise RuntimeError("this history store is closed")
        if self._fast_failed or (self._loop is not None and not self._loop.is_closed()):
            return None  # another live loop owns it: this caller uses the worker
        # The first calls of a loop often come in a crowd (100 users at start-up):
        # one claim per loop, the others wait for it.
        claim = self._claims.get(loop)
        if claim is None:
            claim = self._claims[loop] = loop.create_task(self._take_over(loop))
            claim.add_done_callback(lambda _: self._claims.pop(loop, None))
        return await asyncio.shield(claim)

    async def _take_over(self, loop: asyncio.AbstractEventLoop) -> sqlite3.Connection | None:
        await self._run(self._connect)  # creates the schema, raises for a bad file
        try:
            await self._run(self._loop_owned)
        except sqlite3.Error:  # e.g. a read-only file: the worker serves every call
            self._fast_failed = True
            return None
        with self._claim_lock:  # two loops in two threads may claim at once
            if loop is self._loop:
                return self._fast  # another task of this loop claimed it meanwhile
            if self._fast_failed or (self._loop is not None and not self._loop.is_closed()):
                return None
            if self._fast is None:
                try:
                    self._fast = self._open_fast()
                    self._pin = self._open_fast()
                    self._pin2 = self._open_fast()
                except sqlite3.Error:
                    self._fast_failed = True  # e.g. no shared memory for WAL: worker only
                    return None
            # A new owner (the previous loop has ended): its queued turns died with it.
            self._loop, self._batch = loop, []
            return self._fast

    def _open_fast(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":  # commits would fsync: keep them off the loop
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the worker
            self._limit_wal_file(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _loop_load(
        self, loop: asyncio.AbstractEventLoop, conn: sqlite3.Connection, key: str, limit: int | None
    ) -> list[HistoryEntry] | None:
        """Serve a load on the loop (cache, else a bounded read); None: ask the worker."""
        cache = self._cache
        try:
            if self._version_seen != _loop_commits[0]:
                # Once per loop iteration (see *Read cache*). The reset is queued before
                # the read: whatever another thread queues after it (a commit that
                # finished after the read) runs after the reset, and so reads again.
                loop.call_soon(self._forget_version)
                cache.see_version(conn.execute("PRAGMA data_version").fetchone()[0])
                self._version_seen = _loop_commits[0]
            entries = cache.get(conn, key, limit)
            if entries is not None:
                return entries
            if limit is None or limit > _LOOP_READ_MAX:
                return None
            rows = conn.execute(SELECT_LAST_IDS, (key, limit)).fetchall()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                return None
            raise
        rows.reverse()
        entries = [row_to_entry(r, 1) for r in rows]
        cache.remember(key, entries[:], [r[0] for r in rows], len(rows) < limit, limit)
        return entries

    def _forget_version(self) -> None:
        self._version_seen = -1

    def _flush(self) -> None:
        """Commit the queued turns (one loop iteration's worth) in one transaction."""
        self._flushing = True  # first our flag, then the worker's (_hold_commits, _newer_pin)
        try:
            # Held back while a hand-off is under way, the worker ends a checkpoint,
            # or (short of disk space) a checkpoint lags; each flushes when done.
            if not self._batch or self._handing_off or self._quiet or self._room_full():
                return
            batch = [item for item in self._batch if not item[3].done()]  # not cancelled
            self._batch = []
            if batch:
                self._commit_batch(batch)
        finally:
            self._flushing = False

    def _resume(self) -> None:
        if self._batch:
            self._flush()

    def _commit_batch(self, batch: list[_Pending]) -> None:
        conn = self._fast
        if conn is None or self._closed:
            for *_, fut in batch:
                fut.set_exception(RuntimeError("this history store is closed"))
            return
        turns = [item[2] for item in batch]
        rows = [row for turn in turns for row in turn]
        pin = self._pin_for_checkpoint(len(rows))
        asked = self._pin_asked
        if asked is not None and not begin_read(asked):
            asked = None
        first_id: int | None = None
        errors: list[BaseException | None]
        busy: BaseException | None
        try:
            try:
                transaction(conn, rows)
            except TURN_ERRORS as exc:
                if is_busy(exc):
                    errors, busy = [], exc
                elif len(turns) == 1:
                    errors, busy = [exc], None
                else:
                    errors, busy = commit_each(conn, turns)
            else:
                errors, busy = [None] * len(turns), None
                with contextlib.suppress(sqlite3.Error):  # ids unknown: the cache forgets
                    # One transaction, no other writer, AUTOINCREMENT: consecutive ids.
                    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                    first_id = last - len(rows) + 1
        except Exception as exc:  # the shared attempt failed unforeseen: nothing written
            for key, *_, fut in batch:
                self._cache.drop(key)
                if not fut.done():
                    fut.set_exception(exc)
            for held in (pin, asked):  # end the snapshots; a later commit checkpoints
                if held is not None and held.in_transaction:
                    held.execute("COMMIT")
            return
        _loop_commits[0] += 1
        for (key, entries, turn, fut), error in zip(batch, errors, strict=False):
            if error is None and first_id is not None:
                self._cache.appended(key, entries, first_id)
                first_id += len(turn)
            else:
                self._cache.drop(key)
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
        wrote = any(error is None for error in errors)
        if wrote:
            self._wal.committed()
        if busy is not None:  # the rest waits for the lock on the worker thread
            self._hand_off(batch[len(errors) :])
        if asked is not None:
            if wrote:  # frames beyond the pin: taken
                self._pin_asked, self._pin_taken = None, asked
            else:
                asked.execute("COMMIT")
        if pin is not None:
            if wrote:  # frames beyond the pin: go
                self._start_checkpoint(pin)
            else:
                pin.execute("COMMIT")

    def _hand_off(self, batch: list[_Pending]) -> None:
        """Have the worker thread commit ``batch`` (as one transaction, as here).

        Until it has, later turns wait in ``_batch`` (one hand-off at a time, in
        order): they go out together when it is done, most likely on the loop.
        """
        if not batch:
            return
        for key, *_ in batch:
            self._cache.drop(key)
        self._handing_off += 1
        task = asyncio.get_running_loop().create_task(self._worker_commit(batch))
        self._handoffs.add(task)
        task.add_done_callback(self._handoffs.discard)

    async def _worker_commit(self, batch: list[_Pending]) -> None:
        try:
            errors = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._append_turns, [rows for _, _, rows, _ in batch]
            )
        except Exception as exc:
            errors = [exc] * len(batch)
        finally:
            self._handing_off -= 1
        for (*_, fut), error in zip(batch, errors, strict=True):
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
        if self._batch and not self._closed:
            self._flush()

    # -- async API -------------------------------------------------------------

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key`` (all when ``None``), oldest first."""
        if limit is not None and limit <= 0:
            return []
        try:  # as ``with mapped_errors(self.path)``, without a generator on every turn
            loop = asyncio.get_running_loop()
            conn = self._fast if loop is self._loop else await self._claim(loop)
            if conn is not None:
                entries = self._loop_load(loop, conn, key, limit)
                if entries is not None:
                    return entries
            return await self._run(self._load, key, limit)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` in one transaction; committed when this returns."""
        if not entries:
            return
        items = list(entries)
        rows = [entry_to_row(key, e) for e in items]  # a bad entry fails here, alone
        try:  # as ``with mapped_errors(self.path)``, without a generator on every turn
            loop = asyncio.get_running_loop()
            conn = self._fast if loop is self._loop else await self._claim(loop)
            if conn is None:
                [error] = await self._run(self._append_turns, [rows])
                if error is not None:
                    raise error
                return
            fut: asyncio.Future[None] = loop.create_future()
            if not self._batch:
                loop.call_soon(self._flush)
            self._batch.append((key, items, rows, fut))
            await fut
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; return how many."""
        return await self._change(key, (key,), "DELETE FROM entries WHERE key = ?", (key,))

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move ``src_key``'s rows to ``dst_key`` (they sort by time with the rest)."""
        if src_key == dst_key:
            return 0
        sql = "UPDATE entries SET key = ? WHERE key = ?"
        return await self._change(src_key, (src_key, dst_key), sql, (dst_key, src_key))

    async def _change(
        self, source: str, keys: tuple[str, ...], sql: str, args: tuple[Any, ...]
    ) -> int:
        """Run ``sql`` (a clear or merge of ``source``'s rows) where it is cheapest.

        Nothing to change: no write at all. A small change runs on the loop
        connection and forgets just ``keys`` in the cache; a large one (or one
        while the worker ends a checkpoint) runs on the worker thread.
        """
        with mapped_errors(self.path):
            return await self._change_here(source, keys, sql, args)

    async def _change_here(
        self, source: str, keys: tuple[str, ...], sql: str, args: tuple[Any, ...]
    ) -> int:
        loop = asyncio.get_running_loop()
        conn = self._fast if loop is self._loop else await self._claim(loop)
        if conn is not None:
            self._flushing = True  # a commit on the loop: the worker waits for it (see _flush)
            try:
                rows = conn.execute(COUNT_UPTO, (source, _LOOP_WRITE_MAX + 1)).fetchone()[0]
                if rows == 0:
                    return 0
                if rows <= _LOOP_WRITE_MAX and not self._quiet:
                    changed = write_one(conn, sql, args)
                    _loop_commits[0] += 1
                    for key in keys:
                        self._cache.drop(key)
                    return changed
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            finally:
                self._flushing = False
        return await self._run(self._write, sql, args)

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        with mapped_errors(self.path):
            return await self._run(self._count, key)

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """The most recently used sessions, newest first."""
        with mapped_errors(self.path):
            return await self._run(self._sessions, limit)

    async def close(self) -> None:
        """Commit queued turns, close both connections and stop the worker thread.

        Call it once no other call is running.
        """
        if self._closed:
            return
        while asyncio.get_running_loop() is self._loop and (self._handoffs or self._batch):
            if self._handoffs:
                await asyncio.gather(*self._handoffs, return_exceptions=True)
            else:
                self._flush()
        self._closed = True
        self._cache.clear()
        if self._checkpoint is not None:  # it holds the pin until it is done
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._checkpoint)
        for conn in (self._pin, self._pin2, self._fast):
            if conn is not None:
                conn.close()  # not the last connection, so no checkpoint on the loop
        self._fast = self._pin = self._pin2 = None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)
