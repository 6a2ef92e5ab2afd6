"""Jobs in a SQLite file: one host (any number of its processes).

Table ``jobs`` (one row per job: ``status``, ``due``, ``token``, ``owner`` and
the ``Job`` as JSON, see :mod:`.base`) and ``zones`` (a person's ``/tz``).
A claim is one ``UPDATE ... WHERE id IN (SELECT ... due <= now ...)
RETURNING``, which SQLite runs atomically under its write lock, so two
processes never claim the same job; release and extend are ``UPDATE``s
conditional on the token.

Each call is one short statement on one connection, run in a worker thread
(``asyncio.to_thread``); ``_lock`` (a ``threading.Lock``) guards that
connection. The file is created (0600, folder 0700) on the first write;
until then reads find nothing. Another process's changes (``onethread jobs
add`` from the CLI) are noticed by :meth:`wait_changed` through ``PRAGMA
data_version`` every ``check_interval`` seconds (default 2): one tiny query,
no spinning.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ...errors import CorruptStoreError, StoreError
from .._conn.sqlite import is_busy, retry_busy
from .base import Claim, Job, wait_event

__all__ = ["SCHEMA_VERSION", "SQLiteJobStore"]

T = TypeVar("T")
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, unified_user_id TEXT NOT NULL, "
    "status TEXT NOT NULL, due REAL, token INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL "
    "DEFAULT '', body TEXT NOT NULL, created_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS jobs_due ON jobs (due) WHERE due IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_user ON jobs (unified_user_id, status)",
    "CREATE TABLE IF NOT EXISTS zones (unified_user_id TEXT PRIMARY KEY, zone TEXT NOT NULL)",
    "INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', '1')",
)
_CLAIM = (
    "UPDATE jobs SET due = ?, token = token + 1, owner = ? WHERE id IN "
    "(SELECT id FROM jobs WHERE due IS NOT NULL AND due <= ? ORDER BY due LIMIT ?) "
    "RETURNING token, body, status, due"
)


class SQLiteJobStore:
    """A :class:`~onethread.session.jobs.base.JobStore` in one SQLite file (see the module doc).

    Errors: ``CorruptStoreError`` when the file is not a SQLite database (it is
    never overwritten), ``StoreError`` for other failures, including a file
    written by a newer onethread.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 10.0, check_interval: float = 2.0
    ) -> None:
        self.path = Path(path).expanduser().absolute()
        self.timeout = timeout
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._changed: asyncio.Event | None = None
        self._seen_version: int | None = None

    # -- plumbing --------------------------------------------------------------

    def _open(self, create: bool) -> sqlite3.Connection | None:
        """The connection (lock held); ``None`` when the file does not exist and not ``create``."""
        if self._closed:
            raise RuntimeError("this job store is closed")
        if self._conn is not None:
            return self._conn
        if not self.path.exists():
            if not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"), self.timeout)

            def schema() -> None:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    row = conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                if int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: job schema {row[0]} is newer than this onethread "
                        f"knows ({SCHEMA_VERSION}); upgrade onethread"
                    )

            retry_busy(schema, self.timeout)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if is_busy(exc):
                raise StoreError(f"{self.path}: locked by another process ({exc})") from exc
            raise CorruptStoreError(
                str(self.path), f"not a readable jobs database ({exc})"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T], empty: T, create: bool) -> T:
        def call() -> T:
            with self._lock:
                conn = self._open(create)
                if conn is None:
                    return empty
                try:
                    return fn(conn)
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.path}: {exc}") from exc

        return await asyncio.to_thread(call)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # -- the contract ------------------------------------------------------------

    async def add(self, job: Job) -> None:
        """Store a new active job."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (id, unified_user_id, status, due, body, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.unified_user_id, job.status, job.due, job.to_json(), time.time()),
            )

        await self._run(insert, None, True)
        self._wake()

    async def get(self, job_id: str) -> Job | None:
        """The job or ``None``."""

        def select(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT body, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else Job.from_json(row[0], status=row[1])

        return await self._run(select, None, False)

    async def find(self, user: str | None = None, *, finished: bool = False) -> list[Job]:
        """Active (and with ``finished``, all) jobs, soonest first."""
        where, args = [], []
        if user is not None:
            where.append("unified_user_id = ?")
            args.append(user)
        if not finished:
            where.append("status = 'active'")
        query = "SELECT body, status FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")

        def select(conn: sqlite3.Connection) -> list[Job]:
            return [Job.from_json(b, status=s) for b, s in conn.execute(query, args)]

        none: list[Job] = []
        jobs = await self._run(select, none, False)
        return sorted(jobs, key=lambda j: (j.next_run, j.id))

    async def cancel(self, job_id: str, user: str | None = None) -> bool:
        """Cancel an active job (only ``user``'s when given)."""

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET status = 'cancelled', due = NULL, owner = '', token = token + 1 "
                "WHERE id = ? AND status = 'active' AND (? IS NULL OR unified_user_id = ?)",
                (job_id, user, user),
            )
            return cur.rowcount == 1

        done = await self._run(update, False, False)
        if done:
            self._wake()
        return done

    async def claim(self, now: float, owner: str, lease: float, limit: int) -> list[Claim]:
        """Take up to ``limit`` due jobs until ``now + lease``, atomically."""

        def update(conn: sqlite3.Connection) -> list[Claim]:
            rows = conn.execute(_CLAIM, (now + lease, owner, now, limit)).fetchall()
            return [Claim(Job.from_json(b, status=s), int(t), float(d)) for t, b, s, d in rows]

        return await self._run(update, [], False)

    async def extend(self, job_id: str, token: int, until: float) -> bool:
        """Move the lease to ``until`` while ``token`` is current."""

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET due = ? WHERE id = ? AND token = ? AND status = 'active'",
                (until, job_id, token),
            )
            return cur.rowcount == 1

        return await self._run(update, False, False)

    async def release(self, job: Job, token: int) -> bool:
        """Write ``job`` back while ``token`` is current."""

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET status = ?, due = ?, owner = '', body = ? "
                "WHERE id = ? AND token = ? AND status = 'active'",
                (job.status, job.due, job.to_json(), job.id, token),
            )
            return cur.rowcount == 1

        return await self._run(update, False, False)

    async def next_due(self) -> float | None:
        """The earliest due time of any active job."""

        def select(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT min(due) FROM jobs WHERE due IS NOT NULL").fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._run(select, None, False)

    def _data_version(self) -> int | None:
        with self._lock:
            conn = self._open(False)
            if conn is None:
                return None
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def wait_changed(self, timeout: float) -> None:
        """Wait for a change made here or by another process, or ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        if self._seen_version is None:
            self._seen_version = await asyncio.to_thread(self._data_version)
        while (left := deadline - loop.time()) > 0:
            await wait_event(self._changed, min(left, self.check_interval))
            if self._changed.is_set():
                break
            version = await asyncio.to_thread(self._data_version)
            if version != self._seen_version:
                self._seen_version = version
                break
        self._changed.clear()

    async def get_zone(self, user: str) -> str | None:
        """The person's zone name, if set."""

        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT zone FROM zones WHERE unified_user_id = ?", (user,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run(select, None, False)

    async def set_zone(self, user: str, zone: str | None) -> None:
        """Set or clear the person's zone name."""

        def write(conn: sqlite3.Connection) -> None:
            if zone is None:
                conn.execute("DELETE FROM zones WHERE unified_user_id = ?", (user,))
            else:
                conn.execute(
                    "INSERT INTO zones (unified_user_id, zone) VALUES (?, ?) ON CONFLICT "
                    "(unified_user_id) DO UPDATE SET zone = excluded.zone",
                    (user, zone),
                )

        await self._run(write, None, zone is not None)

    async def close(self) -> None:
        """Close the connection. Idempotent."""

        def shut() -> None:
            with self._lock:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(shut)

    def __repr__(self) -> str:
        return f"SQLiteJobStore({str(self.path)!r})"
