"""An identity resolver backed by SQLite (WAL), shared safely by several processes."""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from ...errors import CorruptStoreError, StoreError
from ..home import onethread_home
from ._common import LinkTable, ResolverContextManager, validate_link_args
from .base import IdentityLink

__all__ = ["SQLiteIdentityResolver"]

_monotonic = time.monotonic
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS links (
        platform TEXT NOT NULL,
        platform_user_id TEXT NOT NULL,
        unified_user_id TEXT NOT NULL,
        linked_at REAL NOT NULL,
        PRIMARY KEY (platform, platform_user_id)
    )""",
    "CREATE INDEX IF NOT EXISTS links_unified ON links (unified_user_id)",
)
_SELECT_ALL = "SELECT platform, platform_user_id, unified_user_id, linked_at FROM links"
_SELECT_ONE = "SELECT unified_user_id FROM links WHERE platform = ? AND platform_user_id = ?"
_UPSERT = (
    "INSERT INTO links (platform, platform_user_id, unified_user_id, linked_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (platform, platform_user_id) DO UPDATE SET "
    "unified_user_id = excluded.unified_user_id, linked_at = excluded.linked_at"
)
_TAKEN = (
    "SELECT 1 FROM links WHERE unified_user_id = ? "
    "AND NOT (platform = ? AND platform_user_id = ?) LIMIT 1"
)
_DELETE = "DELETE FROM links WHERE platform = ? AND platform_user_id = ?"


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """Map a driver error: corruption to ``CorruptStoreError``, the rest to ``StoreError``."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _CORRUPT_CODES:
        return CorruptStoreError(str(path), f"not a usable SQLite database ({exc})")
    return StoreError(f"{path}: {exc}")


class SQLiteIdentityResolver(ResolverContextManager):
    """Links kept in a SQLite database (default ``$ONETHREAD_HOME/identity.db``).

    ``ONETHREAD_HOME`` (default ``~/.onethread``) is read at construction. The
    database runs in WAL mode with a busy timeout (``timeout`` seconds), so
    several processes can read and write it at once; a new database file is
    created 0600 and a missing folder 0700.

    Staleness: ``resolve`` answers from an in-memory copy of the table. At
    most once per ``check_interval`` seconds (default 0.05) it reads
    ``PRAGMA data_version`` and reloads the table when another connection
    committed, so another process's change shows within that interval.
    ``links_for`` and ``all_links`` check on every call.

    Errors: a file that is not a SQLite database raises ``CorruptStoreError``;
    other driver failures raise ``StoreError``. ``resolve`` can raise them only
    on its periodic check.

    Concurrency: one connection (``check_same_thread=False``) guarded by
    ``self._lock`` (a ``threading.Lock``), which also guards the in-memory
    table's mutations and swaps. ``resolve``'s fast path takes no lock (two
    atomic ``dict.get``); its periodic check only tries the lock and skips when
    a write is under way, because that write leaves the table current.

    After :meth:`close`, ``resolve`` and the read methods answer from the last
    copy of the table; ``link`` and ``unlink`` raise ``StoreError``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        check_interval: float = 0.05,
        timeout: float = 10.0,
    ) -> None:
        """Open or create the database; ``CorruptStoreError`` if the file is not one."""
        self.path = (
            Path(path).expanduser() if path is not None else onethread_home() / "identity.db"
        )
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._create_file()
            self._conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the identity database ({exc})") from exc
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            if not self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'links'"
            ).fetchone():
                self._conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute("COMMIT")
            self._reload()
        except sqlite3.Error as exc:
            self._conn.close()
            raise _store_error(self.path, exc) from exc

    def resolve(self, platform: str, platform_user_id: str) -> str:
        """Return the unified id, or ``f"{platform}:{platform_user_id}"`` when unlinked.

        Served from memory; see the class docstring for staleness and errors.
        """
        if _monotonic() >= self._next_check:
            self._poll()
        accounts = self._resolved.get(platform)
        if accounts is not None:
            unified = accounts.get(platform_user_id)
            if unified is not None:
                return unified
        return f"{platform}:{platform_user_id}"

    def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
        """Bind the account to ``unified_user_id``; moves it if linked to someone else.

        Re-linking to the same id is a no-op (``linked_at`` is kept). Raises
        ``ValueError`` for invalid arguments, ``StoreError`` if the database
        fails. Thread- and process-safe.
        """
        self._put(platform, platform_user_id, unified_user_id, only_if_free=False)

    def claim(self, platform: str, platform_user_id: str, unified_user_id: str) -> bool:
        """Link the account to ``unified_user_id`` unless another account has that id.

        ``True`` if the account is now linked to it (also when it already
        was), ``False`` if the id is taken (nothing changes). The check and the
        write are one ``IMMEDIATE`` transaction: two processes claiming one id
        at once cannot both win. Errors as :meth:`link`.
        """
        return self._put(platform, platform_user_id, unified_user_id, only_if_free=True)

    def _put(
        self, platform: str, platform_user_id: str, unified_user_id: str, *, only_if_free: bool
    ) -> bool:
        validate_link_args(platform, platform_user_id, unified_user_id)
        with self._lock:
            conn = self._open_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if (
                        only_if_free
                        and conn.execute(
                            _TAKEN, (unified_user_id, platform, platform_user_id)
                        ).fetchone()
                    ):
                        conn.execute("ROLLBACK")
                        return False
                    row = conn.execute(_SELECT_ONE, (platform, platform_user_id)).fetchone()
                    link = IdentityLink(platform, platform_user_id, unified_user_id, time.time())
                    if row is None or row[0] != unified_user_id:
                        conn.execute(
                            _UPSERT, (platform, platform_user_id, unified_user_id, link.linked_at)
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                if not self._reload_if_changed() and (row is None or row[0] != unified_user_id):
                    self._table.put(link)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
            return True

    def unlink(self, platform: str, platform_user_id: str) -> bool:
        """Remove the account's link; ``True`` if there was one.

        Errors and concurrency as :meth:`link`.
        """
        with self._lock:
            conn = self._open_conn()
            try:
                removed = conn.execute(_DELETE, (platform, platform_user_id)).rowcount > 0
                if not self._reload_if_changed():
                    self._table.remove(platform, platform_user_id)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
            return removed

    def links_for(self, unified_user_id: str) -> list[IdentityLink]:
        """Every account linked to ``unified_user_id``, sorted by (platform, account).

        Checks the database for other processes' changes first.
        """
        with self._lock:
            self._check()
            return self._table.links_for(unified_user_id)

    def all_links(self) -> list[IdentityLink]:
        """Every link, sorted by (platform, platform_user_id); checks first, as links_for."""
        with self._lock:
            self._check()
            return self._table.all_links()

    def close(self) -> None:
        """Close the connection. Idempotent; see the class docstring for use afterwards."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._next_check = math.inf
                self._conn.close()

    # -- internals -------------------------------------------------------------

    def _create_file(self) -> None:
        """Create a missing folder 0700 and a missing database file 0600 (WAL files follow)."""
        folder = self.path.parent
        if not folder.is_dir():
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)  # makedirs' mode is filtered by the umask
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))

    def _open_conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"{self.path}: the identity resolver is closed")
        return self._conn

    def _data_version(self) -> int:
        row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def _reload(self) -> None:
        """Load the whole table into a fresh in-memory copy (caller holds the lock)."""
        version = self._data_version()  # read first: a commit in between only costs a reload
        rows = self._conn.execute(_SELECT_ALL).fetchall()
        table = LinkTable(IdentityLink(p, u, unified, float(at)) for p, u, unified, at in rows)
        self._table = table
        self._resolved = table.resolved
        self._version = version
        self._next_check = _monotonic() + self._check_interval

    def _reload_if_changed(self) -> bool:
        """Reload if another connection committed since the last load; say whether it did."""
        if self._data_version() == self._version:
            self._next_check = _monotonic() + self._check_interval
            return False
        self._reload()
        return True

    def _check(self) -> None:
        if self._closed:
            return
        try:
            self._reload_if_changed()
        except sqlite3.Error as exc:
            self._next_check = _monotonic() + self._check_interval
            raise _store_error(self.path, exc) from exc

    def _poll(self) -> None:
        """``resolve``'s periodic check: never waits for a write in progress."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._check()
        finally:
            self._lock.release()
