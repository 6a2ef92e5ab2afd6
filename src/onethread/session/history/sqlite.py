"""``sqlite:///PATH``: the default history store, one file on one machine.

WAL journal, ``synchronous=NORMAL`` (a committed turn survives a crash of the
process; WAL with NORMAL may lose the last commits on power loss, as documented
by SQLite), one transaction per ``append``, rows indexed by ``(key, ts, id)``.

All SQLite work runs on ONE worker thread that owns the connection, so the
event loop never blocks on disk and the connection needs no lock. Several
processes may share the file (the CLI reads while the bot writes): SQLite's own
file locking serialises writers, with a busy timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ...errors import CorruptStoreError, SchemaVersionError
from .base import HistoryEntry, SessionSummary

__all__ = ["SCHEMA_VERSION", "SQLiteHistoryStore"]

SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    ts REAL NOT NULL,
    platform TEXT NOT NULL DEFAULT '',
    chat_id TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    user_name TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    mirror INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS entries_key_ts ON entries (key, ts, id);
"""

_COLUMNS = (
    "role, content, ts, platform, chat_id, user_id, user_name, message_id, mirror, source, metadata"
)


def _row_to_entry(row: tuple[Any, ...]) -> HistoryEntry:
    role, content, ts, platform, chat_id, user_id, user_name, message_id, mirror, source, meta = row
    return HistoryEntry(
        role=role,
        content=content,
        timestamp=ts,
        platform=platform,
        chat_id=chat_id,
        user_id=user_id,
        user_name=user_name,
        message_id=message_id,
        mirror=bool(mirror),
        source=source,
        metadata=json.loads(meta) if meta != "{}" else {},
    )


def _entry_to_row(key: str, e: HistoryEntry) -> tuple[Any, ...]:
    meta = json.dumps(dict(e.metadata), separators=(",", ":")) if e.metadata else "{}"
    return (
        key, e.role, e.content, e.timestamp, e.platform, e.chat_id, e.user_id, e.user_name,
        e.message_id, int(e.mirror), e.source, meta,
    )  # fmt: skip


class SQLiteHistoryStore:
    """History in a SQLite file. Opened lazily on first use.

    Concurrency: the connection lives on the store's single worker thread
    (``_executor``); every call is a job on that thread, so calls from many
    tasks are serialised there and each ``append`` is one transaction.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onethread-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # -- worker-thread side ----------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            found = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise CorruptStoreError(
                str(self.path), f"not a readable SQLite database ({exc})"
            ) from exc
        if found is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif found > SCHEMA_VERSION:
            conn.close()
            raise SchemaVersionError(str(self.path), found, SCHEMA_VERSION)
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass  # not ours to fix (e.g. a read-only mount); the data is still usable
        self._conn = conn
        return conn

    def _load(self, key: str, limit: int | None) -> list[HistoryEntry]:
        conn = self._connect()
        if limit is None:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE key = ? ORDER BY ts, id", (key,)
            ).fetchall()
            return [_row_to_entry(r) for r in rows]
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE key = ? ORDER BY ts DESC, id DESC LIMIT ?",
            (key, limit),
        ).fetchall()
        rows.reverse()
        return [_row_to_entry(r) for r in rows]

    def _append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        conn = self._connect()
        rows = [_entry_to_row(key, e) for e in entries]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO entries (key, role, content, ts, platform, chat_id, user_id, "
                "user_name, message_id, mirror, source, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(sql, args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return cur.rowcount

    def _count(self, key: str) -> int:
        row = self._connect().execute("SELECT count(*) FROM entries WHERE key = ?", (key,))
        return int(row.fetchone()[0])

    def _sessions(self, limit: int) -> list[SessionSummary]:
        rows = (
            self._connect()
            .execute(
                "SELECT key, count(*), max(ts), group_concat(DISTINCT platform) FROM entries "
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
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- async API -------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("this history store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key`` (all when ``None``), oldest first."""
        if limit is not None and limit <= 0:
            return []
        return await self._run(self._load, key, limit)

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` in one transaction."""
        if entries:
            await self._run(self._append, key, list(entries))

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; return how many."""
        return await self._run(self._write, "DELETE FROM entries WHERE key = ?", (key,))

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move ``src_key``'s rows to ``dst_key`` (they sort by time with the rest)."""
        if src_key == dst_key:
            return 0
        return await self._run(
            self._write, "UPDATE entries SET key = ? WHERE key = ?", (dst_key, src_key)
        )

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        return await self._run(self._count, key)

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """The most recently used sessions, newest first."""
        return await self._run(self._sessions, limit)

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        if self._closed:
            return
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._closed = True
        self._executor.shutdown(wait=False)
