"""One-time pairing codes: proof that one human controls two accounts.

Used by ``/link`` (link two accounts) and by the ``approval`` access policy
(an owner approves an unknown sender). Codes are 8 characters from an
unambiguous alphabet, made with :mod:`secrets`, valid for 10 minutes, single
use, bound to the account that asked, and stored only as a salted hash.
Failed redemptions are counted per account to stop brute force.

Everything lives in one SQLite database (default ``$ONETHREAD_HOME/pairing.db``)
so the CLI (``onethread access approve``) and the running bot, in different
processes, see the same codes. Each method is one short transaction; callers on
the event loop run them with ``asyncio.to_thread``. ``_lock`` (a
``threading.Lock``) guards the one connection; SQLite's file lock guards
against other processes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptStoreError, StoreError
from ._conn.sqlite import is_busy, retry_busy
from .home import onethread_home

__all__ = [
    "ALPHABET",
    "CODE_LENGTH",
    "CODE_TTL",
    "MAX_FAILURES_PER_HOUR",
    "MAX_LIVE_CODES",
    "PairingCode",
    "PairingStore",
    "Redemption",
    "Request",
    "generate_code",
    "normalize_code",
]

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L
CODE_LENGTH = 8
CODE_TTL = 600.0
MAX_LIVE_CODES = 3
MAX_FAILURES_PER_HOUR = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS codes (
    hash TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    platform TEXT NOT NULL,
    user_id TEXT NOT NULL,
    chat_id TEXT NOT NULL DEFAULT '',
    user_name TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used REAL
);
CREATE INDEX IF NOT EXISTS codes_owner ON codes (purpose, platform, user_id);
CREATE TABLE IF NOT EXISTS failures (platform TEXT, user_id TEXT, at REAL);
CREATE INDEX IF NOT EXISTS failures_account ON failures (platform, user_id, at);
CREATE TABLE IF NOT EXISTS approved (
    platform TEXT NOT NULL, user_id TEXT NOT NULL, approved_at REAL NOT NULL,
    PRIMARY KEY (platform, user_id)
);
"""


def generate_code() -> str:
    """A fresh code: 8 characters from :data:`ALPHABET`, from ``secrets``."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalize_code(text: str) -> str | None:
    """The canonical form of a code a person typed (case, spaces, dashes forgiven), or None."""
    code = "".join(ch for ch in text.upper() if ch not in " -\t")
    if len(code) != CODE_LENGTH or any(ch not in ALPHABET for ch in code):
        return None
    return code


@dataclass(frozen=True, slots=True)
class PairingCode:
    """A live code's owner (what the code proves) and when it expires."""

    purpose: str
    platform: str
    user_id: str
    chat_id: str
    user_name: str
    expires: float


@dataclass(frozen=True, slots=True)
class Redemption:
    """The outcome of :meth:`PairingStore.redeem`: the code's owner, or why it failed."""

    code: PairingCode | None
    error: str = ""  # "invalid", "expired", "used", "locked"


@dataclass(frozen=True, slots=True)
class Request:
    """A live code seen from the owner's side (the code itself is only stored hashed)."""

    purpose: str
    platform: str
    user_id: str
    chat_id: str
    user_name: str
    created: float
    expires: float


class PairingStore:
    """Codes, failure counts and approved senders in one SQLite file.

    ``path=":memory:"`` keeps them in this process only (tests).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = str(path) if path is not None else str(onethread_home() / "pairing.db")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            retry_busy(lambda: self._conn.executescript(_SCHEMA), 10.0)
            row = self._conn.execute("SELECT v FROM meta WHERE k = 'salt'").fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta (k, v) VALUES ('salt', ?)", (secrets.token_hex(16),)
                )
                row = self._conn.execute("SELECT v FROM meta WHERE k = 'salt'").fetchone()
        except sqlite3.DatabaseError as exc:
            if is_busy(exc):  # locked, not broken: say so, and touch nothing
                raise StoreError(f"{self.path}: locked by another process ({exc})") from exc
            raise CorruptStoreError(self.path, f"not a readable pairing database ({exc})") from exc
        self._salt = bytes.fromhex(row[0])
        if self.path != ":memory:":
            os.chmod(self.path, 0o600)

    def _hash(self, code: str) -> str:
        return hashlib.sha256(self._salt + code.encode()).hexdigest()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    # -- codes -----------------------------------------------------------------

    def live_codes(self, purpose: str, platform: str, user_id: str) -> int:
        """How many unexpired, unused codes this account holds for ``purpose``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM codes WHERE purpose = ? AND platform = ? AND user_id = ? "
                "AND used IS NULL AND expires > ?",
                (purpose, platform, user_id, time.time()),
            ).fetchone()
        return int(row[0])

    def issue(
        self,
        purpose: str,
        platform: str,
        user_id: str,
        *,
        chat_id: str = "",
        user_name: str = "",
        ttl: float = CODE_TTL,
        max_live: int = MAX_LIVE_CODES,
        max_pending: int | None = None,
    ) -> str | None:
        """Make a code for this account, or None when a limit says no.

        Limits, checked in the same transaction as the insert: the account
        holds fewer than ``max_live`` live codes for ``purpose``, and (when
        given) fewer than ``max_pending`` live codes exist for ``purpose`` in
        all. :meth:`live_codes` and :meth:`pending` tell which limit it was.
        """
        now = time.time()
        code = generate_code()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM codes WHERE expires < ?", (now - 86400,))
                if max_pending is not None:
                    total = self._conn.execute(
                        "SELECT count(*) FROM codes WHERE purpose = ? AND used IS NULL "
                        "AND expires > ?",
                        (purpose, now),
                    ).fetchone()[0]
                    if total >= max_pending:
                        self._conn.execute("ROLLBACK")
                        return None
                live = self._conn.execute(
                    "SELECT count(*) FROM codes WHERE purpose = ? AND platform = ? "
                    "AND user_id = ? AND used IS NULL AND expires > ?",
                    (purpose, platform, user_id, now),
                ).fetchone()[0]
                if live >= max_live:
                    self._conn.execute("ROLLBACK")
                    return None
                self._conn.execute(
                    "INSERT INTO codes (hash, purpose, platform, user_id, chat_id, user_name, "
                    "created, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self._hash(code), purpose, platform, user_id, chat_id, user_name, now,
                     now + ttl),
                )  # fmt: skip
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return code

    def pending(self, purpose: str) -> int:
        """How many live codes exist for ``purpose`` (the approval queue's length)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM codes WHERE purpose = ? AND used IS NULL AND expires > ?",
                (purpose, time.time()),
            ).fetchone()
        return int(row[0])

    def requests(self, purpose: str, limit: int = 200) -> list[Request]:
        """The live (unused, unexpired) codes for ``purpose``, oldest first: who is waiting."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT purpose, platform, user_id, chat_id, user_name, created, expires "
                "FROM codes WHERE purpose = ? AND used IS NULL AND expires > ? "
                "ORDER BY created LIMIT ?",
                (purpose, time.time(), limit),
            ).fetchall()
        return [Request(*row) for row in rows]

    def settle(self, purpose: str, platform: str, user_id: str) -> list[Request]:
        """Use up every live code of this account for ``purpose`` (an owner answered it
        without the code: approved or denied). Returns the requests settled."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = self._conn.execute(
                    "SELECT purpose, platform, user_id, chat_id, user_name, created, expires "
                    "FROM codes WHERE purpose = ? AND platform = ? AND user_id = ? "
                    "AND used IS NULL AND expires > ?",
                    (purpose, platform, user_id, now),
                ).fetchall()
                self._conn.execute(
                    "UPDATE codes SET used = ? WHERE purpose = ? AND platform = ? "
                    "AND user_id = ? AND used IS NULL",
                    (now, purpose, platform, user_id),
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return [Request(*row) for row in rows]

    def redeem(
        self,
        purpose: str,
        code_text: str,
        *,
        by_platform: str = "",
        by_user_id: str = "",
        max_failures: int = MAX_FAILURES_PER_HOUR,
    ) -> Redemption:
        """Use a code once. Exactly one of several concurrent redemptions wins.

        Failures are counted against ``(by_platform, by_user_id)``; after
        ``max_failures`` in an hour the account is locked out (``error="locked"``)
        until the hour has passed, whatever it sends.
        """
        now = time.time()
        code = normalize_code(code_text)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = self._redeem_locked(purpose, code, by_platform, by_user_id, max_failures,
                                             now)  # fmt: skip
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return result

    def _redeem_locked(
        self, purpose: str, code: str | None, platform: str, user_id: str, max_failures: int,
        now: float,
    ) -> Redemption:  # fmt: skip
        if by_account := bool(platform or user_id):
            failures = self._conn.execute(
                "SELECT count(*) FROM failures WHERE platform = ? AND user_id = ? AND at > ?",
                (platform, user_id, now - 3600),
            ).fetchone()[0]
            if failures >= max_failures:
                return Redemption(None, "locked")
        row = None
        if code is not None:
            row = self._conn.execute(
                "SELECT purpose, platform, user_id, chat_id, user_name, expires, used "
                "FROM codes WHERE hash = ? AND purpose = ?",
                (self._hash(code), purpose),
            ).fetchone()
        error = ""
        if row is None:
            error = "invalid"
        elif row[6] is not None:
            error = "used"
        elif row[5] <= now:
            error = "expired"
        if error:
            if by_account:
                self._conn.execute(
                    "INSERT INTO failures (platform, user_id, at) VALUES (?, ?, ?)",
                    (platform, user_id, now),
                )
            return Redemption(None, error)
        assert code is not None and row is not None
        self._conn.execute("UPDATE codes SET used = ? WHERE hash = ?", (now, self._hash(code)))
        return Redemption(PairingCode(row[0], row[1], row[2], row[3], row[4], row[5]))

    def release(self, code_text: str) -> None:
        """Make a redeemed code usable again (the redemption could not be completed)."""
        code = normalize_code(code_text)
        if code is None:
            return
        with self._lock:
            self._conn.execute("UPDATE codes SET used = NULL WHERE hash = ?", (self._hash(code),))

    # -- approved senders (the approval policy) ---------------------------------

    def approve(self, platform: str, user_id: str) -> None:
        """Mark a sender as approved on ``platform``."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO approved (platform, user_id, approved_at) VALUES (?, ?, ?)",
                (platform, user_id, time.time()),
            )

    def revoke(self, platform: str, user_id: str) -> bool:
        """Withdraw an approval; True if there was one."""
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM approved WHERE platform = ? AND user_id = ?", (platform, user_id)
            )
        return cur.rowcount > 0

    def is_approved(self, platform: str, user_id: str) -> bool:
        """True when the sender was approved on ``platform``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM approved WHERE platform = ? AND user_id = ?", (platform, user_id)
            ).fetchone()
        return row is not None

    def approved(self, platform: str | None = None) -> list[tuple[str, str]]:
        """Every approved ``(platform, user_id)``, optionally for one platform."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT platform, user_id FROM approved WHERE ? IS NULL OR platform = ? "
                "ORDER BY platform, user_id",
                (platform, platform),
            ).fetchall()
        return [(p, u) for p, u in rows]
