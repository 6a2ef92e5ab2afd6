"""``postgresql://USER@HOST:PORT/DB``: a history store shared by several hosts.

One table, ``{schema}.onethread_history``, one row per entry, indexed by
``(key, ts, id)``; ``id`` (a ``BIGSERIAL``) breaks timestamp ties in insertion
order. ``metadata`` is ``JSON`` (kept as written: key order, ``\u0000``).
PostgreSQL text cannot hold NUL characters: this store replaces any in text
fields with U+FFFD (the other stores keep them). The schema and tables are created on first
use; the version lives in ``{schema}.onethread_schema_version`` (component
``history``) and a newer one than this code knows is a ``SchemaVersionError``.

Each call is one statement in autocommit mode on a pooled connection
(psycopg 3, async), so a read is one round trip, an ``append`` lands whole or
not at all (one ``INSERT``) and a ``merge`` is one ``UPDATE``. Calls of
concurrent turns share statements (``Batch`` in ``_conn/postgres.py``):
``load`` calls with a limit made while earlier ones are on the wire are
answered by one ``SELECT`` (a ``LATERAL`` tail per key), ``merge`` calls by
one ``UPDATE``, and ``append`` calls are group-committed: written together in
one ``INSERT`` whose commit answers all of them (as the SQLite store does).
If the server refuses such a statement, each of its calls is run again on
its own, so an error reaches only the call that caused it and the others
still land whole; if the connection is lost (the outcome unknown), every
call of the group gets the error, as a lone call would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .._conn.postgres import (
    Batch,
    open_pool,
    psycopg,
    psycopg_pool,
    sql,
    store_error,
    validate_schema,
)
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
# Read back as text and decoded here: '{}' and '[]' (most entries) need no JSON parser.
_SELECT = _COLUMNS.replace("metadata, attachments", "metadata::text, attachments::text")
_H = ", ".join("h." + c for c in _SELECT.split(", "))
_QUERIES = {
    "all": f"SELECT {_SELECT} FROM {{s}}.onethread_history WHERE key = %s ORDER BY ts, id",
    # The tails of several keys in one statement (loads of concurrent turns, see Batch):
    # row i of the arrays asks for the last n entries of key k.
    "last": f"SELECT t.i, {_H} "
    "FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS t(k, n, i) "
    f"CROSS JOIN LATERAL (SELECT {_COLUMNS}, id FROM {{s}}.onethread_history "
    "WHERE key = t.k ORDER BY ts DESC, id DESC LIMIT t.n) AS h "
    "ORDER BY t.i, h.ts DESC, h.id DESC",
    # The rows of several appends in one statement (group commit, see Batch), sent
    # as one JSON array of rows (one json.dumps instead of a driver-dumped array per
    # column), inserted in array order (ids follow it).
    "insert": f"INSERT INTO {{s}}.onethread_history (key, {_COLUMNS}) "
    "SELECT r->>0, r->>1, r->>2, (r->>3)::float8, r->>4, r->>5, r->>6, r->>7, r->>8, "
    "(r->>9)::boolean, r->>10, (r->>11)::json, (r->>12)::jsonb "
    "FROM json_array_elements(%s::json) WITH ORDINALITY AS x(r, i) ORDER BY i",
    "clear": "DELETE FROM {s}.onethread_history WHERE key = %s",
    "merge": "UPDATE {s}.onethread_history SET key = %s WHERE key = %s",
    # Several merges with distinct keys in one statement (see _Pool._merge).
    "merge_many": "UPDATE {s}.onethread_history AS h SET key = t.d "
    "FROM unnest(%s::text[], %s::text[]) AS t(s, d) WHERE h.key = t.s RETURNING t.s",
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
        bool(mirror), source, {} if meta == "{}" else dict(json.loads(meta)),
        () if files == "[]" else tuple(Attachment.from_dict(a) for a in json.loads(files)),
    )  # fmt: skip


_NO_FILES = "[]"  # the attachments column's default


def _text(value: str) -> str:
    return value.replace("\0", "\ufffd") if "\0" in value else value


def _entry_to_row(key: str, e: HistoryEntry) -> tuple[Any, ...]:
    meta = e.metadata
    return (
        # The timestamp as text: exact (repr round-trips) and NaN/inf stay storable
        # (no JSON number can say them).
        _text(key), _text(e.role), _text(e.content), repr(float(e.timestamp)), _text(e.platform),
        _text(e.chat_id), _text(e.user_id), _text(e.user_name), _text(e.message_id),
        bool(e.mirror), _text(e.source), json.dumps(dict(meta)) if meta else "{}",
        json.dumps([a.to_dict() for a in e.attachments]) if e.attachments else _NO_FILES,
    )  # fmt: skip


_Load = tuple[str, int]  # (key, limit)


class _Pool:
    """A connection pool with the batching of appends and loads (see the module docstring).

    ``appends``: at most ``max_inflight`` group statements at once; appends
    arriving meanwhile go together in the next one. ``loads``: the tails read
    by concurrent turns share one ``SELECT``. Touched only from the pool's own
    event loop.
    """

    def __init__(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], q: dict[str, Any], max_inflight: int
    ) -> None:
        self.pool = pool
        self._q = q
        self.appends: Batch[list[tuple[Any, ...]], None] = Batch(
            self._insert, max_inflight=max_inflight
        )
        self.loads: Batch[_Load, list[tuple[Any, ...]]] = Batch(
            self._last, max_inflight=max(1, max_inflight - 1)
        )
        self.merges: Batch[tuple[str, str], int] = Batch(self._merge)

    async def _merge(self, merges: list[tuple[str, str]]) -> list[int]:
        """``(src, dst)`` merges in one ``UPDATE`` when no key appears twice among
        them (each row then moves at most once, as it would alone); else one by one,
        in order. Rows moved per merge."""
        keys = [key for pair in merges for key in pair]
        async with self.pool.connection() as conn:
            if len(set(keys)) < len(keys):
                return [
                    int((await conn.execute(self._q["merge"], (dst, src))).rowcount)
                    for src, dst in merges
                ]
            cur = await conn.execute(
                self._q["merge_many"], ([s for s, _ in merges], [d for _, d in merges])
            )
            moved = [row[0] for row in await cur.fetchall()]
        counts = dict.fromkeys((src for src, _ in merges), 0)
        for src in moved:
            counts[src] += 1
        return [counts[src] for src, _ in merges]

    async def _insert(self, appends: list[list[tuple[Any, ...]]]) -> list[None]:
        rows = [row for rows in appends for row in rows]
        async with self.pool.connection() as conn:
            # One statement in autocommit: every row of the group lands, or none.
            await conn.execute(self._q["insert"], (json.dumps(rows, ensure_ascii=False),))
        return [None] * len(appends)

    async def _last(self, loads: list[_Load]) -> list[list[tuple[Any, ...]]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                self._q["last"], ([key for key, _ in loads], [n for _, n in loads])
            )
            rows = await cur.fetchall()
        out: list[list[tuple[Any, ...]]] = [[] for _ in loads]
        for row in rows:
            out[row[0] - 1].append(row[1:])
        return out

    async def close(self) -> None:
        """Wait for the statements in flight, then close the pool."""
        await self.appends.aclose()
        await self.loads.aclose()
        await self.merges.aclose()
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
        return _Pool(pool, self._q, max(1, self._sizes[1] // 3))

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
        limit = min(limit, 2**31 - 1)
        try:
            pool = self._pools.home_client()
            if pool is not None:  # the hot path: no borrow()
                rows = await pool.loads.submit((_text(key), limit))
            else:
                async with self._pools.borrow() as pool:
                    rows = await pool.loads.submit((_text(key), limit))
        except psycopg.Error as exc:
            raise store_error(self.url, exc) from exc
        return [_row_to_entry(r) for r in reversed(rows)]

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` in one transaction (shared with concurrent
        appends: group commit, see the module docstring)."""
        if not entries:
            return
        rows = [_entry_to_row(key, e) for e in entries]
        try:
            pool = self._pools.home_client()
            if pool is not None:  # the hot path: no borrow()
                await pool.appends.submit(rows)
            else:
                async with self._pools.borrow() as pool:
                    await pool.appends.submit(rows)
        except psycopg.Error as exc:
            raise store_error(self.url, exc) from exc

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; return how many were deleted."""
        return await self._write("clear", (_text(key),))

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move ``src_key``'s rows to ``dst_key`` in one ``UPDATE`` (idempotent)."""
        if src_key == dst_key:
            return 0
        async with self._pools.borrow() as pool:
            try:
                return await pool.merges.submit((_text(src_key), _text(dst_key)))
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

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
