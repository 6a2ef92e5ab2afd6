"""The cross-host outbox on a PostgreSQL table (guarantees: see :mod:`onethread.session.outbox`).

Table ``{schema}.onethread_outbox`` (component ``outbox``): one row per item,
with ``attempts``, ``claimed_by``, ``claimed_until`` (the database's clock,
Unix seconds) and ``dead_reason`` (set when given up). ``put`` inserts the row
and sends ``NOTIFY`` (at commit) so serving hosts wake at once. A serving
host claims the oldest free row of its platforms with ``FOR UPDATE SKIP
LOCKED`` (so two hosts never claim the same row), setting ``claimed_until``
to now + ``visibility``; a row whose claim ran out (its host died, or
``deliver`` raised) is free again. While ``deliver`` runs the claim is
extended every ``visibility/3`` seconds. Success deletes the row. Rows are
claimed one at a time, so one platform's items go out in order (a retried
item goes out when it is retried).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Collection
from typing import Any

from .._conn.postgres import (
    advisory_key,
    pools_per_loop,
    psycopg,
    sql,
    store_error,
    validate_schema,
)
from .base import Deliver, OutboxItem

__all__ = ["SCHEMA_VERSION", "PostgresOutbox"]

log = logging.getLogger("onethread.outbox")

SCHEMA_VERSION = 1
_NOW = "extract(epoch FROM clock_timestamp())"
_DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.onethread_outbox (
        id BIGSERIAL PRIMARY KEY,
        platform TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT,
        claimed_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        dead_reason TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS onethread_outbox_live ON {s}.onethread_outbox (platform, id) "
    "WHERE dead_reason IS NULL",
)
_QUERIES = {
    "put": f"INSERT INTO {{s}}.onethread_outbox (platform, body, created_at) "
    f"VALUES (%s, %s, {_NOW}) RETURNING id",
    "claim": f"UPDATE {{s}}.onethread_outbox o SET claimed_by = %s, "
    f"claimed_until = {_NOW} + %s, attempts = o.attempts + 1 "
    f"WHERE o.id = (SELECT id FROM {{s}}.onethread_outbox WHERE platform = ANY(%s) "
    f"AND dead_reason IS NULL AND claimed_until < {_NOW} "
    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING o.id, o.body, o.attempts",
    "extend": f"UPDATE {{s}}.onethread_outbox SET claimed_until = {_NOW} + %s "
    "WHERE id = %s AND claimed_by = %s",
    "done": "DELETE FROM {s}.onethread_outbox WHERE id = %s AND claimed_by = %s",
    "dead": "UPDATE {s}.onethread_outbox SET dead_reason = %s, claimed_by = NULL WHERE id = %s",
    "depth": "SELECT platform, count(*) FROM {s}.onethread_outbox "
    "WHERE dead_reason IS NULL AND platform = ANY(%s) GROUP BY platform",
    "list_dead": "SELECT id, body, attempts FROM {s}.onethread_outbox "
    "WHERE dead_reason IS NOT NULL ORDER BY id LIMIT %s",
}


class PostgresOutbox:
    """A durable outbox shared by every host on one database (see the module doc).

    Args:
        url: a libpq URL or key/value connection string.
        schema: where the table lives (created if missing; default ``public``).
        visibility: seconds a claimed item stays with the host that took it
            before another host may retry it.
        max_attempts: hand-outs before an item is set aside as dead.
        consumer: this host's name in ``claimed_by`` (default ``hostname-pid-random``).
        poll: longest wait between checks for items when no ``NOTIFY`` arrives.

    Errors: ``put`` raises ``StoreError`` when the database fails (nothing was
    stored). ``serve`` logs a failing ``deliver`` and retries the item later;
    it raises ``StoreError`` if the database fails, and runs until cancelled.

    Concurrency: ``put`` is safe from any task, loop or host; run one
    ``serve`` per host and platform set. ``_pools`` (a ``PerLoop``) guards the
    connection pools.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        visibility: float = 60.0,
        max_attempts: int = 5,
        consumer: str | None = None,
        poll: float = 1.0,
    ) -> None:
        if visibility <= 0 or max_attempts < 1 or poll <= 0:
            raise ValueError("visibility and poll must be > 0, max_attempts >= 1")
        self.url = url
        self.schema = validate_schema(schema)
        self.visibility = visibility
        self.max_attempts = max_attempts
        self.poll = poll
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        s = sql.Identifier(schema)
        self._q = {name: sql.SQL(q).format(s=s) for name, q in _QUERIES.items()}
        self._channel = f"onethread_outbox_{advisory_key('outbox', schema) & (2**64 - 1):016x}"
        ddl = [sql.SQL(q).format(s=s) for q in _DDL]
        self._pools = pools_per_loop(url, schema, "outbox", SCHEMA_VERSION, ddl, "this outbox")

    async def _execute(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; return its rows (if any)."""
        async with self._pools.borrow() as pool:
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(self._q[query], args)
                    rows: list[tuple[Any, ...]] = (
                        await cur.fetchall() if cur.description is not None else []
                    )
                    return rows
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

    async def put(self, item: OutboxItem) -> str:
        """Store ``item`` for the host serving ``item.platform``; return its row id."""
        async with self._pools.borrow() as pool:
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(self._q["put"], (item.platform, item.to_json()))
                    row = await cur.fetchone()
                    await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, item.platform))
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc
        assert row is not None
        return str(row[0])

    async def depth(self, platforms: Collection[str]) -> dict[str, int]:
        """Messages waiting (or being delivered) per platform: one query."""
        names = sorted(set(platforms))
        counts = {name: 0 for name in names}
        for platform, n in await self._execute("depth", (names,)):
            counts[str(platform)] = int(n)
        return counts

    async def dead(self, limit: int = 100) -> list[OutboxItem]:
        """Items given up after ``max_attempts`` (oldest first), for inspection."""
        rows = await self._execute("list_dead", (limit,))
        return [OutboxItem.from_json(b, id=str(i), attempts=int(n)) for i, b, n in rows]

    async def serve(self, platforms: Collection[str], deliver: Deliver) -> None:
        """Deliver ``platforms``' items with ``deliver`` until cancelled (see the class doc)."""
        wanted = sorted(set(platforms))
        if not wanted:
            raise ValueError("serve() needs at least one platform")
        async with self._pools.borrow():  # creates the table before listening
            pass
        try:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as wake:
                await wake.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                while True:
                    while await self._claim_and_deliver(wanted, deliver):
                        pass
                    async for _ in wake.notifies(timeout=self.poll, stop_after=1):
                        pass
        except psycopg.Error as exc:
            raise store_error(self.url, exc) from exc

    async def close(self) -> None:
        """Close the connection pools."""
        await self._pools.aclose()

    # -- internals -------------------------------------------------------------

    async def _claim_and_deliver(self, platforms: list[str], deliver: Deliver) -> bool:
        """Claim and handle one item; False when none is free."""
        rows = await self._execute("claim", (self.consumer, self.visibility, platforms))
        if not rows:
            return False
        row_id, body, attempts = rows[0]
        if attempts > self.max_attempts:
            log.error("outbox: giving up on item %s after %d attempts", row_id, attempts - 1)
            await self._execute("dead", ("attempts", row_id))
            return True
        try:
            item = OutboxItem.from_json(body, id=str(row_id), attempts=int(attempts))
        except (KeyError, ValueError) as exc:
            log.error("outbox item %s is unreadable (%s); setting it aside", row_id, exc)
            await self._execute("dead", (f"unreadable: {exc}", row_id))
            return True
        keeper = asyncio.create_task(self._keep_claimed(row_id))
        try:
            await deliver(item)
        except Exception:
            log.exception(
                "outbox: delivering item %s failed (attempt %d of %d); retrying in %g s",
                row_id, attempts, self.max_attempts, self.visibility,
            )  # fmt: skip
            return True
        finally:
            keeper.cancel()
        await self._execute("done", (row_id, self.consumer))
        return True

    async def _keep_claimed(self, row_id: int) -> None:
        """Extend the claim while the item is being delivered."""
        while True:
            await asyncio.sleep(self.visibility / 3)
            try:
                await self._execute("extend", (self.visibility, row_id, self.consumer))
            except Exception as exc:  # keep trying; the claim may still be valid
                log.warning("outbox: extending the claim on item %s failed: %s", row_id, exc)
