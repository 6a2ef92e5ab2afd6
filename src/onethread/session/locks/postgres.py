"""Turn locks and the duplicate filter shared by several hosts through PostgreSQL.

``PostgresTurnLocks``: one turn at a time per session key across every host
on the same database. Each process keeps ONE dedicated connection (per event
loop) whose session holds its advisory locks: ``pg_try_advisory_lock`` on a
64-bit hash of (schema, key), polled while another host holds it, and
``pg_advisory_unlock`` on release. Advisory locks belong to the session, so a
process that dies (even by SIGKILL) releases all of them the moment the server
sees its connection close; a host that vanishes from the network is detected
by TCP keepalives (set to about 25 s on both sides). Every acquisition takes a
fencing token from a sequence. If the lock connection fails while locks are
held, those leases are marked lost and their turns stopped with
``TurnLockLost`` (checked every ``check_interval`` seconds).

``PostgresDuplicateFilter``: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
expired RETURNING``: exactly one host sees a row come back per id within
``ttl``; expired rows are deleted now and then. The ids of concurrent calls
share one such statement (``Batch``), sorted so that two hosts never deadlock.

Tables (component ``locks``): ``onethread_seen``, sequence ``onethread_lock_fence``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple

from ...errors import StoreUnavailable
from .._conn.postgres import (
    Batch,
    advisory_key,
    migrate_async,
    open_pool,
    psycopg,
    psycopg_pool,
    sql,
    store_error,
    validate_schema,
)
from .._conn.shared import PerLoop
from ..outage import store_failed
from ._shared import Lease, end_hold, local_locks
from .base import LocalTurnLocks

__all__ = ["SCHEMA_VERSION", "PostgresDuplicateFilter", "PostgresTurnLocks"]

log = logging.getLogger("onethread.locks")

SCHEMA_VERSION = 1
_DDL = (
    "CREATE SEQUENCE IF NOT EXISTS {s}.onethread_lock_fence",
    """CREATE TABLE IF NOT EXISTS {s}.onethread_seen (
        key TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS onethread_seen_at ON {s}.onethread_seen (seen_at)",
)
_KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
# The server side of the same: the session (and its locks) ends ~25 s after the
# host vanishes, instead of the OS default of hours.
_SERVER_KEEPALIVE = (
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
)
_WAIT_MIN, _WAIT_MAX = 0.002, 0.025


def _ddl(schema: str) -> list[sql.Composed]:
    return [sql.SQL(q).format(s=sql.Identifier(schema)) for q in _DDL]


class _LockSession:
    """The connection whose PostgreSQL session holds this loop's advisory locks.

    ``held`` (lease per advisory key), ``conn`` and ``answered`` (when a query
    on it last completed, ``time.monotonic()``) are touched only from the
    owning loop; ``_reconnect`` (an ``asyncio.Lock``) makes one task reopen a
    dead connection while the others wait.
    """

    def __init__(self, url: str, schema: str, check_interval: float) -> None:
        self.url, self.schema, self.check_interval = url, schema, check_interval
        self.conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self.held: dict[int, Lease] = {}
        self.answered = time.monotonic()
        self._reconnect = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        s = sql.Identifier(schema)
        # Batched: every lock call queued while one is on the wire goes in the next.
        self._try = sql.SQL(
            "SELECT CASE WHEN pg_try_advisory_lock(k) THEN nextval('{}.onethread_lock_fence') END "
            "FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i) ORDER BY i"
        ).format(s)
        self._unlock = sql.SQL(
            "SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i) "
            "ORDER BY i"
        )
        self._queue: list[tuple[Any, bool, int, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def call(
        self, conn: psycopg.AsyncConnection[tuple[Any, ...]], take: bool, number: int
    ) -> asyncio.Future[Any]:
        """Try to take (``take``) or give back advisory lock ``number`` on ``conn``.

        The future gets the fencing token (None if another session holds the
        lock) or the unlock's boolean. Calls queued while a statement is on
        the wire share the next one: the lock connection is one per process,
        so without this every turn's lock calls would queue behind each other's
        round trips (group commit, for locks).
        """
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((conn, take, number, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        while self._queue:
            conn = self._queue[0][0]
            batch = [item for item in self._queue if item[0] is conn]
            self._queue = [item for item in self._queue if item[0] is not conn]
            for take, statement in ((False, self._unlock), (True, self._try)):
                part = [item for item in batch if item[1] is take]
                if part:
                    await self._run(conn, statement, part)

    async def _run(
        self, conn: psycopg.AsyncConnection[tuple[Any, ...]], statement: Any, part: list[Any]
    ) -> None:
        try:
            cur = await conn.execute(statement, ([n for _, _, n, _ in part],))
            rows = await cur.fetchall()
        except BaseException as exc:
            error: BaseException = exc
            if isinstance(exc, asyncio.CancelledError):
                error = psycopg.OperationalError("the turn locks were closed")
            for *_, fut in part:
                if not fut.done():
                    fut.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        self.answered = time.monotonic()
        for (*_, fut), row in zip(part, rows, strict=True):
            if not fut.done():
                fut.set_result(row[0])

    async def connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        """The live connection; a dead one loses its leases and is replaced."""
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        async with self._reconnect:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self.lose_all("the PostgreSQL session holding it ended")
                try:
                    fresh = await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=10, **_KEEPALIVE
                    )
                    await fresh.execute(_SERVER_KEEPALIVE)
                    await migrate_async(
                        fresh, self.url, self.schema, "locks", SCHEMA_VERSION, _ddl(self.schema)
                    )
                except psycopg.Error as exc:
                    raise store_error(self.url, exc) from exc
                self.conn = fresh
                if self._watchdog is None:
                    self._watchdog = asyncio.create_task(self._watch())
            return self.conn

    def lose_all(self, reason: str) -> None:
        """Mark every lease of this session lost (their turns are stopped)."""
        held, self.held = self.held, {}
        for lease in held.values():
            lease.mark_lost(reason)

    async def _watch(self) -> None:
        """While locks are held, check the session every ``check_interval`` seconds.

        The session is dead when a whole interval passes with no query on it
        answered. Under load hundreds of lock queries queue on this one
        connection: a probe queued behind them with a plain timeout was taken
        for a dead session, and every turn it held failed. So a session that
        answered a lock query within the interval is not probed, and a probe
        waits as long as other queries keep being answered.
        """
        while True:
            await asyncio.sleep(self.check_interval)
            conn = self.conn
            if not self.held or conn is None:
                continue
            if time.monotonic() - self.answered < self.check_interval:
                continue
            failure = await self._probe(conn)
            if failure is not None:
                log.error("turn lock session failed (%s); stopping the turns it held", failure)
                if self.conn is conn:
                    self.lose_all(f"its PostgreSQL session failed ({failure})")
                await conn.close()

    async def _probe(self, conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> BaseException | None:
        """``SELECT 1`` on ``conn``: None once answered; the error, or ``TimeoutError``
        when an interval passes with neither it nor any other query answered."""
        probe = asyncio.ensure_future(conn.execute("SELECT 1"))
        try:
            seen = self.answered
            while True:
                done, _ = await asyncio.wait({probe}, timeout=self.check_interval)
                if done:
                    failure = probe.exception()
                    if failure is None:
                        self.answered = time.monotonic()
                    return failure
                if self.answered == seen:  # nothing answered for an interval
                    return TimeoutError(f"no answer within {self.check_interval} s")
                seen = self.answered  # busy, not dead: wait on
        finally:
            if not probe.done():
                probe.cancel()

    async def close(self) -> None:
        """Stop the watchdog and close the connection (the server frees every lock)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._flusher is not None and not self._flusher.done():
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self.conn is not None:
            await self.conn.close()


class PostgresTurnLocks:
    """Per-session-key turn locks shared by every host on one database (see the module doc).

    Args:
        url: a libpq URL or key/value connection string.
        schema: namespace of the lock keys and home of the fence sequence
            (created if missing; default ``public``).
        check_interval: seconds between checks that the lock connection is alive
            while locks are held.

    ``hold(key)`` (the ``TurnLocks`` protocol) and ``lease(key)`` (yielding the
    :class:`Lease` with its fencing token) wait for the lock; waiters in one
    process queue in arrival order on a local lock first.

    Errors: ``StoreError`` if the database fails while acquiring,
    ``TurnLockLost`` if the lock connection died while held, ``RuntimeError``
    after :meth:`close`.

    Concurrency: ``_local`` maps each event loop to its ``LocalTurnLocks``
    (touched only from that loop's thread); ``_sessions`` (a ``PerLoop``)
    guards the lock connections.
    """

    def __init__(self, url: str, *, schema: str = "public", check_interval: float = 2.0) -> None:
        self.url = url
        self.schema = validate_schema(schema)

        async def create(home: bool) -> _LockSession:
            session = _LockSession(url, schema, check_interval)
            await session.connection()
            return session

        async def destroy(session: _LockSession) -> None:
            await session.close()

        self._sessions: PerLoop[_LockSession] = PerLoop(create, destroy, what="these turn locks")
        self._local: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalTurnLocks] = (
            weakref.WeakKeyDictionary()
        )

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait for, then hold, ``key``'s lock for the ``async with`` block."""
        return _Held(self, key)

    def lease(self, key: str) -> AbstractAsyncContextManager[Lease]:
        """As :meth:`hold`, yielding the :class:`Lease` (``.fence``, ``.lost``)."""
        return _Held(self, key)

    def __len__(self) -> int:
        """Session keys with a turn holding or waiting for a lock in this process."""
        return sum(len(locks) for locks in list(self._local.values()))

    async def close(self) -> None:
        """Close the lock connections; the server frees any lock they held."""
        await self._sessions.aclose()

    async def _acquire(
        self, session: _LockSession, key: str, number: int
    ) -> tuple[Lease, psycopg.AsyncConnection[tuple[Any, ...]]]:
        wait = _WAIT_MIN
        while True:
            conn = await session.connection()
            try:
                # One round trip, shared with concurrent calls: the lock, and
                # its fencing token only when it was taken.
                fence = await session.call(conn, True, number)
            except BaseException as exc:
                # A session lock taken by a statement that then failed (or whose
                # answer never came) stays taken: give it back before leaving.
                released = self._release(session, conn, key, number)
                if released is not None:
                    await _settled(released)
                if isinstance(exc, psycopg.Error):
                    raise store_error(self.url, exc) from exc
                raise
            if fence is not None:
                lease = Lease(key, str(number), int(fence))
                session.held[number] = lease
                return lease, conn
            await asyncio.sleep(wait)
            wait = min(wait * 1.5, _WAIT_MAX)

    def _release(
        self,
        session: _LockSession,
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        key: str,
        number: int,
    ) -> asyncio.Future[Any] | None:
        """Queue the unlock of ``number`` (None if the session is gone, and its locks
        with it). A failed unlock is logged and closes the session (so the lock
        cannot outlive it) from the future's callback: waiting for the future is
        optional, and a caller cancelled meanwhile does not stop it."""
        if conn.closed or conn.broken:
            return None
        fut = session.call(conn, False, number)
        fut.add_done_callback(lambda done: self._released(done, conn, key))
        return fut

    def _released(
        self, fut: asyncio.Future[Any], conn: psycopg.AsyncConnection[tuple[Any, ...]], key: str
    ) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            return
        if isinstance(exc, psycopg.Error):
            error = store_error(self.url, exc)
            if isinstance(error, StoreUnavailable):  # an outage: one line for all of it
                store_failed(error, f"releasing the turn lock of {key!r}")
            else:
                log.warning(
                    "releasing the turn lock of %r failed (%s); closing its session", key, exc
                )
        else:
            log.error("releasing the turn lock of %r failed; closing its session", key,
                      exc_info=exc)  # fmt: skip
        task = asyncio.get_running_loop().create_task(conn.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()  # lock sessions being closed (event loop thread)


async def _settled(fut: asyncio.Future[Any]) -> None:
    """Wait until ``fut`` is done, without raising its error (its done-callback
    handles that) and, if the waiting task is cancelled, without cancelling it
    (``asyncio.wait`` does the same at several times the cost)."""
    if fut.done():
        return
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(wake)
    await waiter


class _Held(AbstractAsyncContextManager[Any]):
    """``PostgresTurnLocks.hold(key)`` / ``lease(key)``: a plain class, as it runs on
    every turn (no generators, no task per turn).

    Entering waits for the process's local lock of ``key``, then for the
    advisory lock; the body runs as the lease's holder (``locks._shared.guard``'s
    rules: a lease lost while held cancels the body, which then ends in
    ``TurnLockLost``). Leaving gives back the advisory lock, then the local
    one. Used by one task; not reusable.
    """

    __slots__ = ("_borrow", "_conn", "_key", "_lease", "_local", "_locks", "_number", "_session")

    def __init__(self, locks: PostgresTurnLocks, key: str) -> None:
        self._locks = locks
        self._key = key
        self._lease: Lease | None = None
        self._borrow: AbstractAsyncContextManager[_LockSession] | None = None

    async def __aenter__(self) -> Lease:
        locks = self._locks
        self._local = local_locks(locks._local).hold(self._key)
        await self._local.__aenter__()
        try:
            session = locks._sessions.home_client()  # the hot path: no borrow()
            self._borrow = None if session is not None else locks._sessions.borrow()
            if self._borrow is not None:
                session = await self._borrow.__aenter__()
            assert session is not None
            self._session = session
            try:
                self._number = advisory_key("turn", locks.schema, self._key)
                lease, self._conn = await locks._acquire(session, self._key, self._number)
            except BaseException as exc:
                if self._borrow is not None:
                    await self._borrow.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        except BaseException:
            await self._local.__aexit__(None, None, None)
            raise
        self._lease = lease
        lease.task = asyncio.current_task()
        return lease

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        lease = self._lease
        assert lease is not None
        try:
            end_hold(lease, exc)
        finally:
            try:
                session = self._session
                if session.held.get(self._number) is lease:
                    del session.held[self._number]
                    fut = self._locks._release(session, self._conn, self._key, self._number)
                    if fut is not None:
                        await _settled(fut)
            finally:
                try:
                    if self._borrow is not None:
                        await self._borrow.__aexit__(None, None, None)
                finally:
                    await self._local.__aexit__(None, None, None)
        return False


class _Filter(NamedTuple):
    """A duplicate filter's pool and the batch of its ``first_time`` calls."""

    pool: psycopg_pool.AsyncConnectionPool[Any]
    batch: Batch[str, bool]


class PostgresDuplicateFilter:
    """The ``DuplicateFilter`` shared by every host on one database.

    ``first_time(id)`` is True for exactly one call per id (across hosts)
    within ``ttl`` seconds, by the database's clock. Rows older than ``ttl``
    are deleted at most every ``ttl/10`` seconds (and at least hourly).
    Errors: ``StoreError`` if the database fails; ``RuntimeError`` after
    :meth:`close`. Concurrency: safe from many tasks and hosts; ``_pools``
    (a ``PerLoop``) guards the pools; ``_next_cleanup`` is a plain float whose
    racy update can at worst run one extra cleanup.
    """

    def __init__(
        self, url: str, *, schema: str = "public", ttl: float = 24 * 3600.0, max_size: int = 4
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        self.url = url
        self.schema = validate_schema(schema)
        self.ttl = ttl
        s = sql.Identifier(schema)
        # Batched: the ids of concurrent first_time calls go in one statement (see
        # Batch), sorted so that two hosts inserting overlapping ids never deadlock.
        self._insert = sql.SQL(
            "INSERT INTO {s}.onethread_seen AS seen (key, seen_at) "
            "SELECT k, extract(epoch FROM clock_timestamp()) FROM unnest(%s::text[]) AS t(k) "
            "ON CONFLICT (key) DO UPDATE SET seen_at = excluded.seen_at "
            "WHERE seen.seen_at < excluded.seen_at - %s RETURNING seen.key"
        ).format(s=s)
        self._cleanup = sql.SQL(
            "DELETE FROM {s}.onethread_seen "
            "WHERE seen_at < extract(epoch FROM clock_timestamp()) - %s"
        ).format(s=s)
        self._next_cleanup = 0.0

        async def create(home: bool) -> _Filter:
            pool = await open_pool(
                url, schema, "locks", SCHEMA_VERSION, _ddl(schema),
                min_size=1 if home else 0, max_size=max_size if home else 1, timeout=30.0,
                autocommit=True,  # the INSERT stands alone (as does the cleanup)
            )  # fmt: skip
            return _Filter(pool, Batch(lambda keys: self._record(pool, keys), max_inflight=2))

        async def destroy(client: _Filter) -> None:
            await client.batch.aclose()
            await client.pool.close()

        self._pools: PerLoop[_Filter] = PerLoop(create, destroy, what="this duplicate filter")

    async def _record(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], keys: list[str]
    ) -> list[bool]:
        """Record ``keys`` in one statement; for each, whether it was seen first here."""
        distinct = sorted(set(keys))
        async with pool.connection() as conn:
            cur = await conn.execute(self._insert, (distinct, self.ttl))
            fresh = {row[0] for row in await cur.fetchall()}
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + min(self.ttl / 10, 3600.0)
                await conn.execute(self._cleanup, (self.ttl,))
        answers = []
        for key in keys:  # an id twice in one batch: only its first call is first
            answers.append(key in fresh)
            fresh.discard(key)
        return answers

    async def first_time(self, message_key: str) -> bool:
        """Record ``message_key``; True if no host had recorded it within ``ttl``."""
        try:
            client = self._pools.home_client()
            if client is not None:  # the hot path: no borrow()
                return await client.batch.submit(message_key)
            async with self._pools.borrow() as client:
                return await client.batch.submit(message_key)
        except psycopg.Error as exc:
            raise store_error(self.url, exc) from exc

    async def close(self) -> None:
        """Close the connection pools."""
        await self._pools.aclose()
