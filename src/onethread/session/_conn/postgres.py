"""Shared plumbing of the PostgreSQL back-ends: import guard, schema versions, errors.

Every back-end keeps its tables in one schema (default ``public``), created on
first use, and records its version in ``{schema}.onethread_schema_version``
(one row per component: ``history``, ``identity``, ``locks``, ``outbox``).
A version newer than the code knows is a :class:`SchemaVersionError`.
Creation runs under a transaction-level advisory lock, so several processes
starting at once do not race on ``CREATE TABLE``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ...errors import MissingDependencyError, SchemaVersionError, StoreError, StoreUnavailable
from .shared import PerLoop, redact

try:
    import psycopg
    import psycopg_pool
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("the PostgreSQL back-end", "postgres") from exc

__all__ = [
    "Batch",
    "advisory_key",
    "migrate",
    "migrate_async",
    "open_pool",
    "pools_per_loop",
    "psycopg",
    "psycopg_pool",
    "sql",
    "store_error",
    "validate_schema",
]

_VERSION_TABLE = "onethread_schema_version"


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` from ``parts``.

    The same parts give the same key in every process (unlike ``hash()``).
    """
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def validate_schema(schema: str) -> str:
    """Return ``schema`` if usable as a schema name, else raise ``ValueError``."""
    if not isinstance(schema, str) or not schema or len(schema.encode()) > 63 or "\0" in schema:
        raise ValueError(f"invalid schema name {schema!r}: 1 to 63 bytes, e.g. 'onethread'")
    return schema


# SQLSTATE classes of an unreachable server: 08 connection exception, 57P01-57P03
# admin/crash shutdown and "cannot connect now". A failed connect or a dropped
# connection has no SQLSTATE at all (libpq never heard back); neither has the
# pool's PoolTimeout.
_UNAVAILABLE_STATES = ("08", "57P")


def store_error(url: str, exc: BaseException) -> StoreError:
    """Map a driver error to ``StoreError`` naming the (redacted) server.

    An unreachable server is :class:`StoreUnavailable` (an outage, not a bug):
    an ``OperationalError`` without SQLSTATE or of class 08/57P.
    """
    where = f"PostgreSQL at {redact(url)}"
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        if state is None or state.startswith(_UNAVAILABLE_STATES):
            return StoreUnavailable(where, str(exc))
    return StoreError(f"{where}: {exc}")


def _statements(schema: str) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
    s = sql.Identifier(schema)
    return (
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        ).format(s, sql.Identifier(_VERSION_TABLE)),
        sql.SQL("SELECT version FROM {}.{} WHERE component = %s").format(
            s, sql.Identifier(_VERSION_TABLE)
        ),
        sql.SQL(
            "INSERT INTO {}.{} (component, version) VALUES (%s, %s) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version"
        ).format(s, sql.Identifier(_VERSION_TABLE)),
    )


def _check(found: int | None, schema: str, component: str, known: int, url: str) -> bool:
    """True when the DDL must run; ``SchemaVersionError`` for a newer schema."""
    if found is not None and found > known:
        where = f"PostgreSQL at {redact(url)}, schema {schema!r} ({component})"
        raise SchemaVersionError(where, found, known)
    return found != known


_SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = %s"


def migrate(
    conn: psycopg.Connection[tuple[object, ...]],
    url: str,
    schema: str,
    component: str,
    known: int,
    ddl: Sequence[sql.Composed],
) -> None:
    """Create or check ``component``'s tables (sync connection); commits.

    ``ddl`` must be idempotent (``IF NOT EXISTS``); it runs when the component
    is new or older than ``known``.
    """
    create, select, record = _statements(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("migrate", schema),))
        if conn.execute(_SCHEMA_EXISTS, (schema,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(create)
        row = conn.execute(select, (component,)).fetchone()
        if _check(None if row is None else int(str(row[0])), schema, component, known, url):
            for statement in ddl:
                conn.execute(statement)
            conn.execute(record, (component, known))


async def migrate_async(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    url: str,
    schema: str,
    component: str,
    known: int,
    ddl: Sequence[sql.Composed],
) -> None:
    """As :func:`migrate`, on an async connection."""
    create, select, record = _statements(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("migrate", schema),))
        if await (await conn.execute(_SCHEMA_EXISTS, (schema,))).fetchone() is None:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        await conn.execute(create)
        row = await (await conn.execute(select, (component,))).fetchone()
        if _check(None if row is None else int(str(row[0])), schema, component, known, url):
            for statement in ddl:
                await conn.execute(statement)
            await conn.execute(record, (component, known))


CHECK_AFTER = 1.0  # seconds a pooled connection may sit unused before it is probed


async def _check_if_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check on lending ``conn``: probe it (one round trip) only if it
    went unused for :data:`CHECK_AFTER` seconds.

    Probing on every loan (psycopg_pool's ``check_connection``) doubled the
    round trips of every call. A connection lent again within a second was
    working a moment ago; should the server have gone in that second, the call
    fails as ``StoreUnavailable`` and the pool drops the broken connection.
    """
    now = time.monotonic()
    last = getattr(conn, "_onethread_used", None)
    if last is None or now - last > CHECK_AFTER:
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)
    conn._onethread_used = now  # type: ignore[attr-defined]


async def open_pool(
    url: str,
    schema: str,
    component: str,
    known: int,
    ddl: Sequence[sql.Composed],
    *,
    min_size: int,
    max_size: int,
    timeout: float,
    autocommit: bool = False,
) -> psycopg_pool.AsyncConnectionPool[Any]:
    """Create or check ``component``'s tables, then open a connection pool.

    ``autocommit=True`` lends connections on which each statement commits on
    its own: one round trip for a single-statement call instead of three
    (``BEGIN``, the statement, ``COMMIT``). Callers that need several
    statements to land together then open ``conn.transaction()`` themselves.

    The first connection is made directly, so a refused connection or a
    failed login raises its own message (as ``StoreError``) instead of the
    pool's timeout. Raises ``SchemaVersionError`` for a newer schema.
    """
    try:
        async with await psycopg.AsyncConnection.connect(
            url, connect_timeout=max(1, round(timeout))
        ) as conn:
            await migrate_async(conn, url, schema, component, known, ddl)
    except psycopg.Error as exc:
        raise store_error(url, exc) from exc
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max(min_size, max_size, 1),
        timeout=timeout,
        open=False,
        kwargs={"autocommit": autocommit},
        check=_check_if_idle,
        name=f"onethread-{component}-{schema}",
    )
    try:
        await pool.open(wait=True, timeout=timeout)
    except BaseException as exc:
        await pool.close()
        if isinstance(exc, psycopg.Error):
            raise store_error(url, exc) from exc
        raise
    return pool


T = TypeVar("T")
R = TypeVar("R")


def pools_per_loop(
    url: str, schema: str, component: str, known: int, ddl: Sequence[sql.Composed], what: str
) -> PerLoop[psycopg_pool.AsyncConnectionPool[Any]]:
    """A small pool per event loop (1-4 connections on the home loop, 0-1 elsewhere)
    for ``component``'s tables, created or checked by :func:`open_pool` on first use."""

    async def create(home: bool) -> psycopg_pool.AsyncConnectionPool[Any]:
        return await open_pool(
            url, schema, component, known, ddl,
            min_size=1 if home else 0, max_size=4 if home else 1, timeout=30.0,
        )  # fmt: skip

    async def destroy(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        await pool.close()

    return PerLoop(create, destroy, what=what)


def _alone_is_safe(exc: BaseException) -> bool:
    """Whether the items of a failed batch statement may be run again one by one.

    Yes when the server answered with an error (a SQLSTATE: the statement, and
    with autocommit its transaction, did nothing) or the driver refused the
    arguments before sending (``DataError``, e.g. a NUL in a text). Not when the
    connection was lost: the statement's outcome is unknown, and running an
    ``INSERT`` again could tell a first-seen id "seen" or store rows twice.
    """
    if not isinstance(exc, psycopg.Error):
        return False
    return exc.sqlstate is not None or isinstance(exc, psycopg.DataError)


def _closed() -> psycopg.OperationalError:
    return psycopg.OperationalError("closed while the statement was on the wire")


def _fail(batch: Sequence[tuple[Any, asyncio.Future[Any]]], error: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(error)


class Batch(Generic[T, R]):
    """Calls of one kind made while earlier ones are on the wire share one statement.

    ``run(items)`` answers every item with one statement (one round trip) and
    returns one result per item, in order. :meth:`submit` queues an item; a
    flush task started at the first call of an event-loop iteration takes every
    item queued by the time it runs (at most ``max_items``), so the calls of all
    turns that reached this point in one iteration travel together, and calls
    made while ``max_inflight`` statements are on the wire go in the next one
    (group commit, for any statement). A batch of several items that fails
    with an error the server gave is run again item by item (see
    :func:`_alone_is_safe`), so the error reaches only the call that caused
    it; otherwise every item gets the error, as a lone call would.

    ``_queue``, ``_inflight``, ``_unstarted`` and ``_tasks`` are touched only from the event
    loop that owns the batch (no lock needed: nothing else runs meanwhile).
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_inflight: int = 1,
        max_items: int = 500,
    ) -> None:
        self._run = run
        self._max = max(1, max_inflight)
        self._max_items = max(1, max_items)
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight = 0  # flush tasks started and not finished
        self._unstarted = 0  # of those, tasks that have not taken their items yet
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future gets its result (or the batch's error)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, fut))
        self._start(loop)
        return fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # A task created but not yet run takes what is queued when it runs: start
        # another only for items beyond what those will take.
        while self._inflight < self._max and len(self._queue) > self._unstarted * self._max_items:
            self._inflight += 1
            self._unstarted += 1
            task = loop.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        # First step: the calls made in the iteration that created this task are queued.
        self._unstarted -= 1
        try:
            batch = self._queue[: self._max_items]
            del self._queue[: self._max_items]
            if batch:
                await self._answer(batch)
        finally:
            self._inflight -= 1
            if self._queue:
                self._start(asyncio.get_running_loop())

    async def _answer(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except BaseException as exc:
            if len(batch) > 1 and _alone_is_safe(exc):
                for n, one in enumerate(batch):
                    try:
                        await self._answer([one])
                    except BaseException:  # cancelled: the rest are not run
                        _fail(batch[n + 1 :], _closed())
                        raise
                return
            _fail(batch, _closed() if isinstance(exc, asyncio.CancelledError) else exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def aclose(self) -> None:
        """Wait for the statements in flight and the queued calls to be answered."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
