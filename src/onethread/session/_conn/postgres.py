"""Shared plumbing of the PostgreSQL back-ends: import guard, schema versions, errors.

Every back-end keeps its tables in one schema (default ``public``), created on
first use, and records its version in ``{schema}.onethread_schema_version``
(one row per component: ``history``, ``identity``, ``locks``, ``outbox``).
A version newer than the code knows is a :class:`SchemaVersionError`.
Creation runs under a transaction-level advisory lock, so several processes
starting at once do not race on ``CREATE TABLE``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from ...errors import MissingDependencyError, SchemaVersionError, StoreError, StoreUnavailable
from .shared import redact

try:
    import psycopg
    import psycopg_pool
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("the PostgreSQL back-end", "postgres") from exc

__all__ = [
    "advisory_key",
    "migrate",
    "migrate_async",
    "open_pool",
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
