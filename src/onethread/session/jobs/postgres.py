"""Jobs on PostgreSQL: several hosts share one schedule.

Tables ``{schema}.onethread_jobs`` (component ``jobs``: one row per job with
``status``, ``due``, ``token``, ``owner`` and the ``Job`` as JSON, see
:mod:`.base`) and ``{schema}.onethread_job_zones`` (a person's ``/tz``).

A claim is one ``UPDATE`` over the due rows picked with ``FOR UPDATE SKIP
LOCKED``, so two hosts never claim the same job and neither waits for the
other; it raises the token and moves ``due`` to the end of the lease. Release
and extend are ``UPDATE``s conditional on the token. ``add`` and ``cancel``
send a ``NOTIFY`` (at commit), which :meth:`PostgresJobStore.wait_changed`
listens for on a connection of its own.
"""

from __future__ import annotations

from typing import Any

from .._conn.postgres import (
    advisory_key,
    pools_per_loop,
    psycopg,
    sql,
    store_error,
    validate_schema,
)
from .base import Claim, Job

__all__ = ["SCHEMA_VERSION", "PostgresJobStore"]

SCHEMA_VERSION = 1
_DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.onethread_jobs (
        id TEXT PRIMARY KEY,
        unified_user_id TEXT NOT NULL,
        status TEXT NOT NULL,
        due DOUBLE PRECISION,
        token BIGINT NOT NULL DEFAULT 0,
        owner TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS onethread_jobs_due ON {s}.onethread_jobs (due) "
    "WHERE due IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS onethread_jobs_user ON {s}.onethread_jobs (unified_user_id)",
    """CREATE TABLE IF NOT EXISTS {s}.onethread_job_zones (
        unified_user_id TEXT PRIMARY KEY, zone TEXT NOT NULL)""",
)
_QUERIES = {
    "add": "INSERT INTO {s}.onethread_jobs (id, unified_user_id, status, due, body, created_at) "
    "VALUES (%s, %s, %s, %s, %s, extract(epoch FROM now()))",
    "get": "SELECT body, status FROM {s}.onethread_jobs WHERE id = %s",
    "list": "SELECT body, status FROM {s}.onethread_jobs WHERE (%s::text IS NULL OR "
    "unified_user_id = %s) AND (%s OR status = 'active')",
    "cancel": "UPDATE {s}.onethread_jobs SET status = 'cancelled', due = NULL, owner = '', "
    "token = token + 1 WHERE id = %s AND status = 'active' AND "
    "(%s::text IS NULL OR unified_user_id = %s) RETURNING id",
    "claim": "UPDATE {s}.onethread_jobs j SET due = %s, token = j.token + 1, owner = %s "
    "FROM (SELECT id FROM {s}.onethread_jobs WHERE due IS NOT NULL AND due <= %s "
    "ORDER BY due LIMIT %s FOR UPDATE SKIP LOCKED) c WHERE j.id = c.id "
    "RETURNING j.token, j.body, j.status",
    "extend": "UPDATE {s}.onethread_jobs SET due = %s WHERE id = %s AND token = %s "
    "AND status = 'active' RETURNING id",
    "release": "UPDATE {s}.onethread_jobs SET status = %s, due = %s, owner = '', body = %s "
    "WHERE id = %s AND token = %s AND status = 'active' RETURNING id",
    "next_due": "SELECT min(due) FROM {s}.onethread_jobs WHERE due IS NOT NULL",
    "get_zone": "SELECT zone FROM {s}.onethread_job_zones WHERE unified_user_id = %s",
    "set_zone": "INSERT INTO {s}.onethread_job_zones (unified_user_id, zone) VALUES (%s, %s) "
    "ON CONFLICT (unified_user_id) DO UPDATE SET zone = excluded.zone",
    "clear_zone": "DELETE FROM {s}.onethread_job_zones WHERE unified_user_id = %s",
}


class PostgresJobStore:
    """A :class:`~onethread.session.jobs.base.JobStore` on PostgreSQL (see the module doc).

    Args:
        url: a libpq URL or key/value connection string.
        schema: where the tables live (created if missing; default ``public``).

    Concurrency: safe from any task, loop, process or host. ``_pools`` (a
    ``PerLoop``) guards the connection pools; :meth:`wait_changed` keeps one
    listening connection of its own.
    """

    def __init__(self, url: str, *, schema: str = "public") -> None:
        self.url = url
        self.schema = validate_schema(schema)
        s = sql.Identifier(schema)
        self._q = {name: sql.SQL(q).format(s=s) for name, q in _QUERIES.items()}
        self._channel = f"onethread_jobs_{advisory_key('jobs', schema) & (2**64 - 1):016x}"
        ddl = [sql.SQL(q).format(s=s) for q in _DDL]
        self._pools = pools_per_loop(url, schema, "jobs", SCHEMA_VERSION, ddl, "this job store")
        self._listener: psycopg.AsyncConnection[Any] | None = None

    async def _execute(
        self, query: str, args: tuple[Any, ...], *, notify: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction (with a ``NOTIFY`` when asked)."""
        async with self._pools.borrow() as pool:
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(self._q[query], args)
                    rows: list[tuple[Any, ...]] = (
                        await cur.fetchall() if cur.description is not None else []
                    )
                    if notify and (rows or query == "add"):
                        await conn.execute("SELECT pg_notify(%s, '')", (self._channel,))
                    return rows
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

    async def add(self, job: Job) -> None:
        """Store a new active job and tell the other hosts."""
        args = (job.id, job.unified_user_id, job.status, job.due, job.to_json())
        await self._execute("add", args, notify=True)

    async def get(self, job_id: str) -> Job | None:
        """The job or ``None``."""
        rows = await self._execute("get", (job_id,))
        return Job.from_json(rows[0][0], status=rows[0][1]) if rows else None

    async def find(self, user: str | None = None, *, finished: bool = False) -> list[Job]:
        """Active (and with ``finished``, all) jobs, soonest first."""
        rows = await self._execute("list", (user, user, finished))
        jobs = [Job.from_json(b, status=s) for b, s in rows]
        return sorted(jobs, key=lambda j: (j.next_run, j.id))

    async def cancel(self, job_id: str, user: str | None = None) -> bool:
        """Cancel an active job (only ``user``'s when given)."""
        return bool(await self._execute("cancel", (job_id, user, user), notify=True))

    async def claim(self, now: float, owner: str, lease: float, limit: int) -> list[Claim]:
        """Take up to ``limit`` due jobs until ``now + lease``, atomically."""
        until = now + lease
        rows = await self._execute("claim", (until, owner, now, limit))
        return [Claim(Job.from_json(b, status=s), int(t), until) for t, b, s in rows]

    async def extend(self, job_id: str, token: int, until: float) -> bool:
        """Move the lease to ``until`` while ``token`` is current."""
        return bool(await self._execute("extend", (until, job_id, token)))

    async def release(self, job: Job, token: int) -> bool:
        """Write ``job`` back while ``token`` is current."""
        args = (job.status, job.due, job.to_json(), job.id, token)
        return bool(await self._execute("release", args))

    async def next_due(self) -> float | None:
        """The earliest due time of any active job."""
        rows = await self._execute("next_due", ())
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def wait_changed(self, timeout: float) -> None:
        """Wait for a job added or cancelled on any host, or ``timeout`` seconds."""
        try:
            if self._listener is None or self._listener.closed:
                async with self._pools.borrow():  # the tables exist before we listen
                    pass
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self._listener = conn
            async for _ in self._listener.notifies(timeout=max(0.0, timeout), stop_after=1):
                pass
        except psycopg.Error as exc:
            if self._listener is not None:
                await self._listener.close()
                self._listener = None
            raise store_error(self.url, exc) from exc

    async def get_zone(self, user: str) -> str | None:
        """The person's zone name, if set."""
        rows = await self._execute("get_zone", (user,))
        return str(rows[0][0]) if rows else None

    async def set_zone(self, user: str, zone: str | None) -> None:
        """Set or clear the person's zone name."""
        if zone is None:
            await self._execute("clear_zone", (user,))
        else:
            await self._execute("set_zone", (user, zone))

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._pools.aclose()
