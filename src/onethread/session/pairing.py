"""One-time pairing codes: proof that one human controls two accounts.

Used by ``/link`` (link two accounts) and by the ``approval`` access policy
(an owner approves an unknown sender). A code is 12 characters from an
unambiguous alphabet (31 symbols, no 0/O, 1/I/L; about 59 bits), at least one
of them a digit, made with :mod:`secrets` and shown in groups of four
(``K7QW-2MXP-H4RT``); dashes, spaces and case are ignored when it is typed
back. A code is valid for 10 minutes (approval codes: one hour), single use,
bound to the account that asked, and stored only as a salted hash. Failed
redemptions are counted per account to stop brute force.

Bounds. Every write first deletes (at most ``PRUNE_BATCH`` rows of each, so a
call's work is bounded) codes that expired more than ``EXPIRED_KEPT`` seconds
ago (kept that long so a late redemption hears "expired", not "invalid") and
failures older than the lockout window. ``max_codes`` caps the codes kept
(live, used, or expired less than ``EXPIRED_KEPT`` ago) across every account
and purpose; ``max_failures_total`` caps the failures counted in the lockout
window across every account: past it, redemptions by accounts are refused as
``"busy"`` without looking at the code (fail closed: guessing cannot go on),
until the window moves on. So a file written by this release never holds more
than ``max_codes`` codes and ``max_failures_total`` failures, whatever the
number of accounts; rows beyond that (a file from 0.1) go ``PRUNE_BATCH`` at a
time once they are due.

Migration. A file made by onethread 0.1 (8-character codes, no ``meta``
schema row) is upgraded in place on open: two columns (``name``, ``length``;
existing codes get ``length`` 8), two indexes, ``schema`` = 2 in ``meta``.
Codes issued by 0.1 still redeem until they expire (:func:`normalize_code`
accepts 8 characters too; once they are gone, an 8-character guess matches
nothing). A file
from a newer onethread raises ``SchemaVersionError``.

Everything lives in one SQLite database (default ``$ONETHREAD_HOME/pairing.db``)
so the CLI (``onethread access approve``) and the running bot, in different
processes, see the same codes. Each method is one short transaction; callers on
the event loop run them with ``asyncio.to_thread``. ``_lock`` (a
``threading.Lock`` in a ``Guard``) guards the one connection; SQLite's file
lock guards against other processes. A driver failure inside it (a full disk:
``database or disk is full``) leaves as ``StoreError`` naming the file and, for
a full disk, the fix; the ``sqlite3`` error is its ``__cause__``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import CorruptStoreError, SchemaVersionError, StoreError
from ._conn.sqlite import Guard, is_busy, is_full, retry_busy, store_error
from .home import onethread_home

__all__ = [
    "ALPHABET",
    "CODE_LENGTH",
    "CODE_TTL",
    "EXPIRED_KEPT",
    "LEGACY_CODE_LENGTH",
    "LOCKOUT_WINDOW",
    "MAX_CODES",
    "MAX_FAILURES_TOTAL",
    "MAX_FAILURES_PER_HOUR",
    "MAX_LIVE_CODES",
    "PRUNE_BATCH",
    "SCHEMA_VERSION",
    "Issued",
    "PairingCode",
    "PairingStore",
    "Redemption",
    "Request",
    "format_code",
    "generate_code",
    "normalize_code",
]

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L
DIGITS = "23456789"
CODE_LENGTH = 12
LEGACY_CODE_LENGTH = 8  # onethread 0.1's codes: still redeemed until they expire
CODE_TTL = 600.0
EXPIRED_KEPT = 600.0
LOCKOUT_WINDOW = 3600.0
MAX_LIVE_CODES = 3  # per account and purpose
MAX_FAILURES_PER_HOUR = 5  # per account
MAX_CODES = 10_000  # kept codes, all accounts and purposes
MAX_FAILURES_TOTAL = 50_000  # failures in the lockout window, all accounts
PRUNE_BATCH = 100
SCHEMA_VERSION = 2

T = TypeVar("T")

# ``length`` defaults to 8: rows from before the upgrade, and rows a 0.1 process
# still running inserts (it names its columns), are the legacy codes.
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
    used REAL,
    name TEXT NOT NULL DEFAULT '',
    length INTEGER NOT NULL DEFAULT 8
);
CREATE INDEX IF NOT EXISTS codes_owner ON codes (purpose, platform, user_id);
CREATE TABLE IF NOT EXISTS failures (platform TEXT, user_id TEXT, at REAL);
CREATE INDEX IF NOT EXISTS failures_account ON failures (platform, user_id, at);
CREATE TABLE IF NOT EXISTS approved (
    platform TEXT NOT NULL, user_id TEXT NOT NULL, approved_at REAL NOT NULL,
    PRIMARY KEY (platform, user_id)
);
"""
_ADDED_COLUMNS = (  # schema 2, on a file made by 0.1
    ("name", "ALTER TABLE codes ADD COLUMN name TEXT NOT NULL DEFAULT ''"),
    ("length", "ALTER TABLE codes ADD COLUMN length INTEGER NOT NULL DEFAULT 8"),
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS codes_expires ON codes (expires)",
    "CREATE INDEX IF NOT EXISTS failures_at ON failures (at)",
)


def generate_code() -> str:
    """A fresh code: 12 characters from :data:`ALPHABET`, at least one a digit, from ``secrets``.

    The digit lets ``/link NAME`` tell a name (no digits) from a code. Codes
    are drawn uniformly among those with a digit: 31**12 * 0.97, about 59 bits.
    """
    while True:
        code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
        if any(ch in DIGITS for ch in code):
            return code


def format_code(code: str) -> str:
    """A code as shown to people: groups of four joined by dashes (``K7QW-2MXP-H4RT``)."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def normalize_code(text: str) -> str | None:
    """The canonical form of a code a person typed (case, spaces, dashes forgiven), or None.

    Accepts :data:`CODE_LENGTH` characters, and :data:`LEGACY_CODE_LENGTH` for
    the codes onethread 0.1 issued.
    """
    code = "".join(ch for ch in text.upper() if ch not in " -\t")
    if len(code) not in (CODE_LENGTH, LEGACY_CODE_LENGTH) or any(ch not in ALPHABET for ch in code):
        return None
    return code


@dataclass(frozen=True, slots=True)
class PairingCode:
    """A live code's owner (what the code proves), when it expires, and the name asked for.

    ``name`` is what the issuer asked the new person to be called (``/link
    alice``), ``""`` when they did not say.
    """

    purpose: str
    platform: str
    user_id: str
    chat_id: str
    user_name: str
    expires: float
    name: str = ""


@dataclass(frozen=True, slots=True)
class Redemption:
    """The outcome of :meth:`PairingStore.redeem`: the code's owner, or why it failed.

    ``error`` is ``"invalid"``, ``"expired"``, ``"used"``, ``"locked"`` (this
    account failed too often) or ``"busy"`` (accounts failed too often in all).
    """

    code: PairingCode | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class Issued:
    """The outcome of :meth:`PairingStore.try_issue`: the code, or which limit said no.

    ``refused`` is ``"account"`` (this account holds ``max_live`` live codes),
    ``"pending"`` (``max_pending`` live codes for the purpose) or ``"full"``
    (the store holds ``max_codes`` codes).
    """

    code: str | None
    refused: str = ""


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

    ``path=":memory:"`` keeps them in this process only (tests). ``max_codes``
    and ``max_failures_total`` are the global bounds (see the module docstring);
    ``clock`` returns the time in seconds since the epoch (tests pass their
    own). Raises ``CorruptStoreError`` for a file that is not a pairing
    database, ``SchemaVersionError`` for one from a newer onethread,
    ``StoreError`` when another process holds it locked for too long.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_codes: int = MAX_CODES,
        max_failures_total: int = MAX_FAILURES_TOTAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_codes < 1 or max_failures_total < 1:
            raise ValueError("max_codes and max_failures_total must be at least 1")
        self.path = str(path) if path is not None else str(onethread_home() / "pairing.db")
        self.max_codes = max_codes
        self.max_failures_total = max_failures_total
        self._clock = clock
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = Guard(self.path)  # its block's sqlite3 errors leave as StoreError
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the pairing database ({exc})") from exc
        try:
            retry_busy(lambda: self._conn.executescript(_SCHEMA), 10.0)
            salt = self._current_salt() or retry_busy(self._migrate, 10.0)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if is_busy(exc) or is_full(exc):  # locked or no room, not broken: touch nothing
                raise store_error(self.path, exc) from exc
            raise CorruptStoreError(self.path, f"not a readable pairing database ({exc})") from exc
        except BaseException:
            self._conn.close()
            raise
        self._salt = bytes.fromhex(salt)
        if self.path != ":memory:":
            os.chmod(self.path, 0o600)

    def _current_salt(self) -> str | None:
        """The salt, when the file is already at this schema (no write needed to open it)."""
        meta = dict(self._conn.execute("SELECT k, v FROM meta WHERE k IN ('schema', 'salt')"))
        if meta.get("schema") == str(SCHEMA_VERSION) and "salt" in meta:
            return str(meta["salt"])
        return None

    def _migrate(self) -> str:
        """Bring a 0.1 file to schema 2 and make the salt, in one transaction; return the salt."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
            found = int(row[0]) if row is not None else 1
            if found > SCHEMA_VERSION:
                raise SchemaVersionError(self.path, found, SCHEMA_VERSION)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(codes)")}
            for column, statement in _ADDED_COLUMNS:
                if column not in columns:
                    conn.execute(statement)
            for statement in _INDEXES:
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta (k, v) VALUES ('salt', ?)", (secrets.token_hex(16),)
            )
            salt = str(conn.execute("SELECT v FROM meta WHERE k = 'salt'").fetchone()[0])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have ended it itself (a full disk)
                conn.execute("ROLLBACK")
            raise
        return salt

    def _hash(self, code: str) -> str:
        return hashlib.sha256(self._salt + code.encode()).hexdigest()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def _write(self, step: Callable[[float], T]) -> T:
        """Run ``step(now)`` in one IMMEDIATE transaction, after the bounded prune."""
        with self._lock:
            now = self._clock()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._prune(now)
                result = step(now)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have ended it itself (a full disk)
                    self._conn.execute("ROLLBACK")
                raise
        return result

    def _prune(self, now: float) -> None:
        self._conn.execute(
            "DELETE FROM codes WHERE rowid IN (SELECT rowid FROM codes WHERE expires < ? LIMIT ?)",
            (now - EXPIRED_KEPT, PRUNE_BATCH),
        )
        self._conn.execute(
            "DELETE FROM failures WHERE rowid IN "
            "(SELECT rowid FROM failures WHERE at <= ? LIMIT ?)",
            (now - LOCKOUT_WINDOW, PRUNE_BATCH),
        )

    def counts(self) -> tuple[int, int]:
        """Rows in the ``codes`` and ``failures`` tables (for monitoring and tests)."""
        with self._lock:
            codes = self._conn.execute("SELECT count(*) FROM codes").fetchone()[0]
            failures = self._conn.execute("SELECT count(*) FROM failures").fetchone()[0]
        return int(codes), int(failures)

    # -- codes -----------------------------------------------------------------

    def live_codes(self, purpose: str, platform: str, user_id: str) -> int:
        """How many unexpired, unused codes this account holds for ``purpose``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM codes WHERE purpose = ? AND platform = ? AND user_id = ? "
                "AND used IS NULL AND expires > ?",
                (purpose, platform, user_id, self._clock()),
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
        name: str = "",
        ttl: float = CODE_TTL,
        max_live: int = MAX_LIVE_CODES,
        max_pending: int | None = None,
    ) -> str | None:
        """Make a code for this account, or None when a limit says no.

        As :meth:`try_issue`, which also says which limit it was.
        """
        return self.try_issue(
            purpose, platform, user_id, chat_id=chat_id, user_name=user_name, name=name,
            ttl=ttl, max_live=max_live, max_pending=max_pending,
        ).code  # fmt: skip

    def try_issue(
        self,
        purpose: str,
        platform: str,
        user_id: str,
        *,
        chat_id: str = "",
        user_name: str = "",
        name: str = "",
        ttl: float = CODE_TTL,
        max_live: int = MAX_LIVE_CODES,
        max_pending: int | None = None,
    ) -> Issued:
        """Make a code (canonical form, no dashes) for this account, or say which limit said no.

        Limits, checked in this order in the same transaction as the insert:
        the account holds fewer than ``max_live`` live codes for ``purpose``;
        (when given) fewer than ``max_pending`` live codes exist for
        ``purpose`` in all; the store holds fewer than ``max_codes`` codes. ``name`` is
        kept with the code for whoever redeems it (:attr:`PairingCode.name`).
        """
        code = generate_code()

        def step(now: float) -> Issued:
            live = self._conn.execute(
                "SELECT count(*) FROM codes WHERE purpose = ? AND platform = ? "
                "AND user_id = ? AND used IS NULL AND expires > ?",
                (purpose, platform, user_id, now),
            ).fetchone()[0]
            if live >= max_live:
                return Issued(None, "account")
            if max_pending is not None:
                total = self._conn.execute(
                    "SELECT count(*) FROM codes WHERE purpose = ? AND used IS NULL AND expires > ?",
                    (purpose, now),
                ).fetchone()[0]
                if total >= max_pending:
                    return Issued(None, "pending")
            kept = self._conn.execute(
                "SELECT count(*) FROM codes WHERE expires >= ?", (now - EXPIRED_KEPT,)
            ).fetchone()[0]
            if kept >= self.max_codes:
                return Issued(None, "full")
            self._conn.execute(
                "INSERT INTO codes (hash, purpose, platform, user_id, chat_id, user_name, "
                "created, expires, name, length) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._hash(code), purpose, platform, user_id, chat_id, user_name, now,
                 now + ttl, name, len(code)),
            )  # fmt: skip
            return Issued(code)

        return self._write(step)

    def pending(self, purpose: str) -> int:
        """How many live codes exist for ``purpose`` (the approval queue's length)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM codes WHERE purpose = ? AND used IS NULL AND expires > ?",
                (purpose, self._clock()),
            ).fetchone()
        return int(row[0])

    def requests(self, purpose: str, limit: int = 200) -> list[Request]:
        """The live (unused, unexpired) codes for ``purpose``, oldest first: who is waiting."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT purpose, platform, user_id, chat_id, user_name, created, expires "
                "FROM codes WHERE purpose = ? AND used IS NULL AND expires > ? "
                "ORDER BY created LIMIT ?",
                (purpose, self._clock(), limit),
            ).fetchall()
        return [Request(*row) for row in rows]

    def settle(self, purpose: str, platform: str, user_id: str) -> list[Request]:
        """Use up every live code of this account for ``purpose`` (an owner answered it
        without the code: approved or denied). Returns the requests settled."""
        now = self._clock()
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

    def legacy_codes_live(self, purpose: str) -> bool:
        """True while a code issued by onethread 0.1 (8 characters) is live for ``purpose``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM codes WHERE purpose = ? AND length = ? AND used IS NULL "
                "AND expires > ? LIMIT 1",
                (purpose, LEGACY_CODE_LENGTH, self._clock()),
            ).fetchone()
        return row is not None

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
        ``max_failures`` in the lockout window (an hour) the account is locked
        out (``error="locked"``) until the window has passed, whatever it
        sends. Past the store's ``max_failures_total`` in the window, every account
        is refused (``error="busy"``). A redemption with no account (the
        owner's CLI) is neither counted nor refused.
        """
        code = normalize_code(code_text)
        return self._write(
            lambda now: self._redeem_locked(
                purpose, code, by_platform, by_user_id, max_failures, now
            )  # fmt: skip
        )

    def _redeem_locked(
        self, purpose: str, code: str | None, platform: str, user_id: str, max_failures: int,
        now: float,
    ) -> Redemption:  # fmt: skip
        if by_account := bool(platform or user_id):
            window = now - LOCKOUT_WINDOW
            failures = self._conn.execute(
                "SELECT count(*) FROM failures WHERE platform = ? AND user_id = ? AND at > ?",
                (platform, user_id, window),
            ).fetchone()[0]
            if failures >= max_failures:
                return Redemption(None, "locked")
            total = self._conn.execute(
                "SELECT count(*) FROM failures WHERE at > ?", (window,)
            ).fetchone()[0]
            if total >= self.max_failures_total:
                return Redemption(None, "busy")
        row = None
        if code is not None:
            row = self._conn.execute(
                "SELECT purpose, platform, user_id, chat_id, user_name, expires, used, name "
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
        return Redemption(PairingCode(row[0], row[1], row[2], row[3], row[4], row[5], row[7]))

    def release(self, code_text: str) -> None:
        """Make a redeemed code usable again (the redemption could not be completed)."""
        code = normalize_code(code_text)
        if code is None:
            return
        digest = self._hash(code)
        self._write(
            lambda now: self._conn.execute("UPDATE codes SET used = NULL WHERE hash = ?", (digest,))
        )

    # -- approved senders (the approval policy) ---------------------------------

    def approve(self, platform: str, user_id: str) -> None:
        """Mark a sender as approved on ``platform``."""
        self._write(
            lambda now: self._conn.execute(
                "INSERT OR REPLACE INTO approved (platform, user_id, approved_at) VALUES (?, ?, ?)",
                (platform, user_id, now),
            )
        )

    def revoke(self, platform: str, user_id: str) -> bool:
        """Withdraw an approval; True if there was one."""
        cur = self._write(
            lambda now: self._conn.execute(
                "DELETE FROM approved WHERE platform = ? AND user_id = ?", (platform, user_id)
            )
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
