"""An identity resolver shared through PostgreSQL, answering ``resolve`` from memory.

Tables (in ``schema``, created on first use; component ``identity`` in
``onethread_schema_version``)::

    onethread_links          (platform, platform_user_id) -> unified_user_id, linked_at
                             (platform_user_id is UTF-8 BYTEA: TEXT cannot hold NUL)
    onethread_links_version  one row: incremented by every change

Every change runs in one transaction that locks the version row (so changes
are numbered in commit order), writes the link, bumps the version and sends
``NOTIFY`` (delivered at commit) on a channel named after the schema, with
the change as JSON. How the cache follows the server, and how stale it can
be, is described in :mod:`onethread.session.identity._synced`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .._conn.postgres import advisory_key, migrate, psycopg, sql, store_error, validate_schema
from .._conn.shared import redact
from ._synced import WAKEUP, Change, Snapshot, SyncedResolver
from .base import IdentityLink

__all__ = ["SCHEMA_VERSION", "PostgresIdentityResolver"]

SCHEMA_VERSION = 1
_MAX_PAYLOAD = 7900  # NOTIFY payloads must stay under 8000 bytes

_DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.onethread_links (
        platform TEXT NOT NULL,
        platform_user_id BYTEA NOT NULL,
        unified_user_id TEXT NOT NULL,
        linked_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (platform, platform_user_id)
    )""",
    "CREATE INDEX IF NOT EXISTS onethread_links_unified ON {s}.onethread_links (unified_user_id)",
    """CREATE TABLE IF NOT EXISTS {s}.onethread_links_version (
        id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
        version BIGINT NOT NULL
    )""",
    "INSERT INTO {s}.onethread_links_version (version) VALUES (0) ON CONFLICT DO NOTHING",
)
_QUERIES = {
    "snapshot": "SELECT v.version, l.platform, l.platform_user_id, l.unified_user_id, "
    "l.linked_at FROM {s}.onethread_links_version v LEFT JOIN {s}.onethread_links l ON TRUE",
    "version": "SELECT version FROM {s}.onethread_links_version",
    "lock": "SELECT version FROM {s}.onethread_links_version FOR UPDATE",
    "get": "SELECT unified_user_id FROM {s}.onethread_links "
    "WHERE platform = %s AND platform_user_id = %s",
    "upsert": "INSERT INTO {s}.onethread_links "
    "(platform, platform_user_id, unified_user_id, linked_at) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (platform, platform_user_id) DO UPDATE SET "
    "unified_user_id = excluded.unified_user_id, linked_at = excluded.linked_at",
    "taken": "SELECT 1 FROM {s}.onethread_links WHERE unified_user_id = %s "
    "AND NOT (platform = %s AND platform_user_id = %s) LIMIT 1",
    "delete": "DELETE FROM {s}.onethread_links WHERE platform = %s AND platform_user_id = %s",
    "bump": "UPDATE {s}.onethread_links_version SET version = version + 1 RETURNING version",
}
# Connection options of both connections: detect a vanished server or peer.
_CONNECT: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _channel(schema: str) -> str:
    return f"onethread_links_{advisory_key('links', schema) & 0xFFFFFFFFFFFFFFFF:016x}"


class PostgresIdentityResolver(SyncedResolver):
    """Links kept in PostgreSQL and shared by every host; ``resolve`` answers from memory.

    Args:
        url: a libpq URL (``postgresql://user:password@host:5432/db``) or
            key/value connection string.
        schema: where the tables live (created if missing; default ``public``).
        poll_interval: seconds between the listener's version checks (the
            bound on staleness if a notification is lost).
        sync_timeout: how long ``link`` and friends wait for the listener to
            apply a change before reloading in the calling thread.

    Staleness: see :mod:`onethread.session.identity._synced` (a change on
    another host shows within the ``NOTIFY`` latency, tested < 1 s).

    Errors: ``StoreError`` (server unreachable or failing; password hidden),
    ``SchemaVersionError`` for a newer schema, ``ValueError`` for invalid
    link arguments. The constructor connects, creates the tables if needed
    and loads every link.

    Concurrency: ``_io_lock`` (a ``threading.Lock``) guards ``_conn``, the
    command connection used by ``link``, ``unlink`` and the catch-up reads;
    the listener thread owns its ``LISTEN`` connection. The cache is guarded
    as described in ``SyncedResolver``.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        poll_interval: float = 5.0,
        sync_timeout: float = 0.2,
    ) -> None:
        super().__init__(
            where=f"PostgreSQL at {redact(url)}, schema {schema!r}",
            poll_interval=poll_interval,
            sync_timeout=sync_timeout,
        )
        self.url = url
        self.schema = validate_schema(schema)
        s = sql.Identifier(schema)
        self._q = {name: sql.SQL(q).format(s=s) for name, q in _QUERIES.items()}
        self._channel = _channel(schema)
        self._io_lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        try:
            with self._io_lock:
                conn = self._connection()
                migrate(
                    conn, url, schema, "identity", SCHEMA_VERSION,
                    [sql.SQL(q).format(s=s) for q in _DDL],
                )  # fmt: skip
            self._start(f"onethread-identity-pg-{schema}")
        except psycopg.Error as exc:
            self._close_connections()
            raise store_error(url, exc) from exc
        except BaseException:
            self._close_connections()
            raise

    # -- server calls ----------------------------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The command connection, reopened if broken (caller holds ``_io_lock``)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, **_CONNECT)
        return self._conn

    def _do_snapshot(self) -> Snapshot:
        with self._io_lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    rows = conn.execute(self._q["snapshot"]).fetchall()
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc
        return _snapshot(rows)

    def _do_version(self) -> int:
        with self._io_lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    row = conn.execute(self._q["version"]).fetchone()
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc
        return int(row[0]) if row else 0

    def _do_link(self, link: IdentityLink) -> int:
        return self._put(link, only_if_free=False)[1]

    def _do_claim(self, link: IdentityLink) -> tuple[bool, int]:
        # The version row is locked FOR UPDATE first: changes are serialised, so
        # the check below cannot race another host's claim of the same id.
        return self._put(link, only_if_free=True)

    def _put(self, link: IdentityLink, *, only_if_free: bool) -> tuple[bool, int]:
        q = self._q
        with self._io_lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    version = _one(conn.execute(q["lock"]).fetchone())
                    account = _encode(link.platform_user_id)
                    if (
                        only_if_free
                        and conn.execute(
                            q["taken"], (link.unified_user_id, link.platform, account)
                        ).fetchone()
                    ):
                        return False, version
                    row = conn.execute(q["get"], (link.platform, account)).fetchone()
                    if row is not None and row[0] == link.unified_user_id:
                        return True, version
                    conn.execute(
                        q["upsert"],
                        (link.platform, account, link.unified_user_id, link.linked_at),
                    )
                    version = _one(conn.execute(q["bump"]).fetchone())
                    self._notify(conn, version, link.platform, link.platform_user_id, link)
                    return True, version
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

    def _do_unlink(self, platform: str, platform_user_id: str) -> tuple[bool, int]:
        q = self._q
        with self._io_lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    version = _one(conn.execute(q["lock"]).fetchone())
                    deleted = conn.execute(q["delete"], (platform, _encode(platform_user_id)))
                    if deleted.rowcount == 0:
                        return False, version
                    version = _one(conn.execute(q["bump"]).fetchone())
                    self._notify(conn, version, platform, platform_user_id, None)
                    return True, version
            except psycopg.Error as exc:
                raise store_error(self.url, exc) from exc

    def _notify(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        version: int,
        platform: str,
        platform_user_id: str,
        link: IdentityLink | None,
    ) -> None:
        message: dict[str, Any] = {"v": version, "p": platform, "a": platform_user_id}
        if link is not None:
            message.update(u=link.unified_user_id, t=link.linked_at)
        payload = json.dumps(message)  # ASCII: a NOTIFY payload cannot hold NUL either
        if len(payload.encode()) > _MAX_PAYLOAD:
            payload = json.dumps({"v": version})  # the listeners reload instead
        conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))

    # -- the listener thread ---------------------------------------------------

    def _listen_once(self) -> None:
        with psycopg.connect(self.url, autocommit=True, **_CONNECT) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            # LISTEN is in effect now (autocommit): reload, then follow the changes.
            self._resync()
            while not self._stop.is_set():
                for notify in conn.notifies(timeout=WAKEUP):
                    self._receive(_parse(notify.payload))
                    if self._stop.is_set():
                        return
                self._tick()

    def _close_connections(self) -> None:
        with self._io_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _encode(platform_user_id: str) -> bytes:
    return platform_user_id.encode("utf-8", "surrogatepass")


def _decode(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


def _one(row: tuple[Any, ...] | None) -> int:
    if row is None:
        raise psycopg.DataError("onethread_links_version has no row")
    return int(row[0])


def _snapshot(rows: list[tuple[Any, ...]]) -> Snapshot:
    version = int(rows[0][0]) if rows else 0
    links = [
        IdentityLink(platform, _decode(account), unified, float(at))
        for _, platform, account, unified, at in rows
        if platform is not None
    ]
    return Snapshot(version, links)


def _parse(payload: str) -> Change:
    message = json.loads(payload)
    version = int(message["v"])
    if "p" not in message:
        return Change(version, "", "", None, complete=False)
    platform, account = str(message["p"]), str(message["a"])
    if "u" not in message:
        return Change(version, platform, account, None)
    link = IdentityLink(platform, account, str(message["u"]), float(message["t"]))
    return Change(version, platform, account, link)
