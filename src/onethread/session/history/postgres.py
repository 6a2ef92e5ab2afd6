"""``postgresql://USER@HOST:PORT/DB``: a history store shared by several hosts.

One table, ``{schema}.onethread_history``, one row per entry, indexed by
``(key, ts, id)``; ``id`` (a ``BIGSERIAL``) breaks timestamp ties in insertion
order. ``metadata`` is ``JSON`` (kept as written: key order, ``\u0000``).
PostgreSQL text cannot hold NUL characters: this store replaces any in text
fields with U+FFFD (the other stores keep them). The schema and tables are created on first
use; the version lives in ``{schema}.onethread_schema_version`` (component
``history``) and a newer one than this code knows is a ``SchemaVersionError``.

Each call is one transaction on a pooled connection (psycopg 3, async; one
statement in autocommit mode, so a read is one round trip), so an
``append`` lands whole or not at all and a ``merge`` is one ``UPDATE``, with
one exception that keeps both promises: concurrent ``append`` calls are
group-committed. Appends that arrive while earlier ones are being written
are queued and then written together, in one transaction, whose commit
answers all of them (as the SQLite store does). If the server refuses that
transaction, each of its appends is retried in a transaction of its own, so
an error reaches only the append that caused it and the others still land
whole; if the connection is lost (the commit's outcome unknown), every
append of the group gets the error, as a lone append would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Json

from .._conn.postgres import open_pool, psycopg, psycopg_pool, sql, store_error, validate_schema
from .._conn.shared import PerLoop
from ..attachments import Attachment
from .base import HistoryEntry, SessionSummary

__all__ = ["SCHEMA_VERSION", "PostgresHistoryStore"]

SCHEMA_VERSION = 2  # 2: attachments column (added in place to a version 1 table)

_DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.onethread_history (
        id BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        platform TEXT NOT NULL DEFAULT '',
        chat_id TEXT NOT NULL DEFAULT '',
        user_id TEXT NOT NULL DEFAULT '',
        user_name TEXT NOT NULL DEFAULT '',
        message_id TEXT NOT NULL DEFAULT '',
        mirror BOOLEAN NOT NULL DEFAULT FALSE,
        source TEXT NOT NULL DEFAULT '',
        metadata JSON NOT NULL DEFAULT '{{}}',
        attachments JSONB NOT NULL DEFAULT '[]'
    )""",
    "CREATE INDEX IF NOT EXISTS onethread_history_key_ts ON {s}.onethread_history (key, ts, id)",
    # Version 1 tables: add the column in place (existing rows: no attachments).
    "ALTER TABLE {s}.onethread_history "
    "ADD COLUMN IF NOT EXISTS attachments JSONB NOT NULL DEFAULT '[]'",
)
_COLUMNS = (
    "role, content, ts, platform, chat_id, user_id, user_name, message_id, mirror, source, "
    "metadata, attachments"
)
_QUERIES = {
    "all": f"SELECT {_COLUMNS} FROM {{s}}.onethread_history WHERE key = %s ORDER BY ts, id",
    "last": f"SELECT {_COLUMNS} FROM {{s}}.onethread_history WHERE key = %s "
    "ORDER BY ts DESC, id DESC LIMIT %s",
    "insert": f"INSERT INTO {{s}}.onethread_history (key, {_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
    "clear": "DELETE FROM {s}.onethread_history WHERE key = %s",
    "merge": "UPDATE {s}.onethread_history SET key = %s WHERE key = %s",
    "count": "SELECT count(*) FROM {s}.onethread_history WHERE key = %s",
    "sessions": "SELECT key, count(*), max(ts), array_agg(DISTINCT platform) "
    # Summaries and archives (base.SIDE_KEY_SUFFIXES) are not sessions.
    "FROM {s}.onethread_history WHERE right(key, 8) <> '#summary' "
    "AND right(key, 9) <> '#archived' GROUP BY key ORDER BY max(ts) DESC LIMIT %s",
}


def _row_to_entry(row: Sequence[Any]) -> HistoryEntry:
    (role, content, ts, platform, chat_id, user_id, user_name, message_id, mirror, source, meta,
     files) = row  # fmt: skip
    # The columns are HistoryEntry's fields, in its order.
    return HistoryEntry(
        role, content, float(ts), platform, chat_id, user_id, user_name, message_id,
        bool(mirror), source, dict(meta or {}),
        tuple(Attachment.from_dict(a) for a in files) if files else (),
    )  # fmt: skip


_NO_FILES = "[]"  # JSONB literal: the column's default, without serialising


def _text(value: str) -> str:
    return value.replace("\0", "\ufffd") if "\0" in value else value


def _entry_to_row(key: str, e: HistoryEntry) -> tuple[Any, ...]:
    return (
        _text(key), _text(e.role), _text(e.content), float(e.timestamp), _text(e.platform),
        _text(e.chat_id), _text(e.user_id), _text(e.user_name), _text(e.message_id),
        bool(e.mirror), _text(e.source), Json(dict(e.metadata)),
        Json([a.to_dict() for a in e.attachments]) if e.attachments else _NO_FILES,
    )  # fmt: skip


_Pending = tuple[list[tuple[Any, ...]], "asyncio.Future[None]"]


class _Pool:
    """A connection pool with the group commit of appends (see the module docstring).

    At most ``max_inflight`` group transactions run at once; appends arriving
    meanwhile wait in ``_queue`` and go together in the next one. Touched only
    from the pool's own event loop.
    """

    def __init__(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], insert: Any, max_inflight: int
    ) -> None:
        self.pool = pool
        self._insert = insert
        self._max = max(1, max_inflight)
        self._queue: list[_Pending] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def append(self, rows: list[tuple[Any, ...]]) -> asyncio.Future[None]:
        """Queue ``rows`` (one append); the future is done once they are committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, fut))
        self._start()
        return fut

    def _start(self) -> None:
        while self._queue and self._inflight < self._max:
            batch, self._queue = self._queue, []
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, rows: list[tuple[Any, ...]]) -> None:
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(self._insert, rows)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await self._commit(batch)
        except BaseException as exc:
            error: BaseException = exc
            if isinstance(exc, asyncio.CancelledError):
                error = psycopg.OperationalError("the history store was closed mid-write")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight -= 1
            self._start()

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._write([row for rows, _ in batch for row in rows])
        except psycopg.Error as exc:
            # Retried one by one only when the server refused the transaction (an
            # error with a SQLSTATE: nothing was committed). A lost connection
            # leaves the commit's outcome unknown: retrying could store twice.
            if len(batch) == 1 or exc.sqlstate is None:
                raise
            # One bad append must not fail the others: each in its own transaction.
            for rows, fut in batch:
                try:
                    await self._write(rows)
                except psycopg.Error as one:
                    if not fut.done():
                        fut.set_exception(one)
                else:
                    if not fut.done():
                        fut.set_result(None)
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        """Wait for the group transactions in flight, then close the pool."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.pool.close()


class PostgresHistoryStore:
    """History in PostgreSQL, shared by every host that uses the same database and schema.

    Args:
        url: a libpq URL (``postgresql://user:password@host:5432/db``) or
            key/value connection string.
        schema: where the tables live (created if missing; default ``public``).
        min_size, max_size: bounds of the connection pool.
        timeout: seconds to wait for a pooled connection (and to connect at first).

    Errors: driver failures raise ``StoreError`` naming the server (password
    hidden); a newer schema raises ``SchemaVersionError``. Calls after
    :meth:`close` raise ``RuntimeError``.

    Concurrency: safe from many tasks and hosts at once; every call is one
    transaction. The pool belongs to the event loop that first uses the
    store (``_pools``, see ``PerLoop``, guards it); a call from another loop
    uses a short-lived pool of one connection.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.schema = validate_schema(schema)
        self._sizes = (min_size, max_size)
        self._timeout = timeout
        s = sql.Identifier(schema)
        self._q = {name: sql.SQL(q).format(s=s) for name, q in _QUERIES.items()}
        self._ddl = [sql.SQL(q).format(s=s) for q in _DDL]
        self._pools: PerLoop[_Pool] = PerLoop(
            self._open, self._close_pool, what="this history store"
        )

    async def _open(self, home: bool) -> _Pool:
        pool = await open_pool(
            self.url, self.schema, "history", SCHEMA_VERSION, self._ddl,
            min_size=self._sizes[0] if home else 0,
            max_size=self._sizes[1] if home else 1,
            timeout=self._timeout, autocommit=True,
        )  # fmt: skip
        # Leave connections for loads while group transactions write.
        return _Pool(pool, self._q["insert"], max(1, self._sizes[1] // 3))

    @staticmethod
    async def _close_pool(pool: _Pool) -> None:
        await pool.close()

    async def _fetch(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._pools.borrow() as wrapped:
            pool = wrapped.pool
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(self._q[query], args)
                    rows: list[tuple[Any, ...]] = await cur.fetchall()
                    return rows
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

    async def _write(self, query: str, args: tuple[Any, ...]) -> int:
        async with self._pools.borrow() as wrapped:
            pool = wrapped.pool
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(self._q[query], args)
                    return int(cur.rowcount)
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key`` (all when ``None``), oldest first."""
        if limit is not None and limit <= 0:
            return []
        if limit is None:
            return [_row_to_entry(r) for r in await self._fetch("all", (_text(key),))]
        rows = await self._fetch("last", (_text(key), limit))
        rows.reverse()
        return [_row_to_entry(r) for r in rows]

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` in one transaction (shared with concurrent
        appends: group commit, see the module docstring)."""
        if not entries:
            return
        rows = [_entry_to_row(key, e) for e in entries]
        async with self._pools.borrow() as pool:
            try:
                await pool.append(rows)
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; return how many were deleted."""
        return await self._write("clear", (_text(key),))

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move ``src_key``'s rows to ``dst_key`` in one ``UPDATE`` (idempotent)."""
        if src_key == dst_key:
            return 0
        return await self._write("merge", (_text(dst_key), _text(src_key)))

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        rows = await self._fetch("count", (_text(key),))
        return int(rows[0][0])

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """The most recently used sessions, newest first."""
        if limit <= 0:
            return []
        return [
            SessionSummary(
                key=key,
                count=int(n),
                last_timestamp=float(ts),
                platforms=tuple(sorted(p for p in platforms if p)),
            )
            for key, n, ts, platforms in await self._fetch("sessions", (limit,))
        ]

    async def close(self) -> None:
        """Close the pool. Further calls raise ``RuntimeError``."""
        await self._pools.aclose()
