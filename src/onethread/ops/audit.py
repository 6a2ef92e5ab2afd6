"""What the admin page did (the audit trail) and what went wrong lately (recent errors).

:class:`AuditLog` keeps one row per admin action (who, what, when) in SQLite
(default ``$ONETHREAD_HOME/audit.db``, 0600) and writes the same line to the
``onethread.audit`` logger, so the trail survives in the store even when logs
are rotated away, and reaches log shippers. The file is opened on the first
action, so a deployment whose admin page is never used has none.

:class:`RecentErrors` is a logging handler that keeps the last WARNING-and-worse
records of the ``onethread`` loggers in memory, for the admin page. Log lines
of this package never carry message text or credentials (see
``onethread.session._conn.shared.who``), so showing them to the operator adds
no exposure.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from ..session.home import onethread_home

__all__ = ["AuditEntry", "AuditLog", "ErrorRecord", "RecentErrors"]

log = logging.getLogger("onethread.audit")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action: when (Unix seconds), who, what, on what, and the outcome."""

    at: float
    who: str
    action: str
    target: str
    detail: str = ""


class AuditLog:
    """Append-only audit rows in one SQLite file; ``path=":memory:"`` for tests.

    ``_lock`` (a ``threading.Lock``) guards the one connection; callers on the
    event loop run :meth:`record` and :meth:`recent` with ``asyncio.to_thread``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = str(path) if path is not None else str(onethread_home() / "audit.db")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                conn = sqlite3.connect(
                    self.path, timeout=10.0, isolation_level=None, check_same_thread=False
                )
                conn.executescript(_SCHEMA)
                if self.path != ":memory:":
                    os.chmod(self.path, 0o600)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"{self.path}: cannot open the audit log ({exc})") from exc
            self._conn = conn
        return self._conn

    def record(self, who: str, action: str, target: str, detail: str = "") -> AuditEntry:
        """Store one action and log it at INFO. Raises ``StoreError`` if it cannot be stored."""
        entry = AuditEntry(time.time(), who, action, target, detail)
        log.info("admin %s: %s %s%s", who, action, target, f" ({detail})" if detail else "")
        with self._lock:
            try:
                self._open().execute(
                    "INSERT INTO audit (at, who, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    (entry.at, who, action, target, detail),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write the audit log ({exc})") from exc
        return entry

    def recent(self, limit: int = 50) -> list[AuditEntry]:
        """The last ``limit`` actions, newest first."""
        with self._lock:
            rows = (
                self._open()
                .execute(
                    "SELECT at, who, action, target, detail FROM audit ORDER BY id DESC LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        return [AuditEntry(*row) for row in rows]

    def close(self) -> None:
        """Close the file (reopened by the next call)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A WARNING-or-worse log line kept for the admin page."""

    at: float
    level: str
    logger: str
    message: str


class RecentErrors(logging.Handler):
    """Keeps the last ``size`` WARNING+ records in memory (a bounded deque).

    ``deque.append`` is atomic in CPython, so records logged from worker
    threads need no lock of ours.
    """

    def __init__(self, size: int = 100) -> None:
        super().__init__(level=logging.WARNING)
        self.records: deque[ErrorRecord] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record`` (its message, without the traceback)."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in someone's log call: keep what we can
            message = str(record.msg)
        self.records.append(ErrorRecord(record.created, record.levelname, record.name, message))

    def latest(self, limit: int = 50) -> list[ErrorRecord]:
        """The last ``limit`` records, newest first."""
        return list(reversed(self.records))[:limit]
