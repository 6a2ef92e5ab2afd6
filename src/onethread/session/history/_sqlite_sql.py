"""The SQLite history store's SQL: schema, statements, rows, transactions.

Part of ``sqlite.py`` (the store); split out to keep each module to one job.
Plain functions of a connection: no state, no threads of their own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from .._conn.sqlite import is_busy
from ..attachments import Attachment
from .base import HistoryEntry

Row = tuple[Any, ...]

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    ts REAL NOT NULL,
    platform TEXT NOT NULL DEFAULT '',
    chat_id TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    user_name TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    mirror INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    attachments TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS entries_key_ts ON entries (key, ts, id);
"""

COLUMNS = (
    "role, content, ts, platform, chat_id, user_id, user_name, message_id, mirror, source, "
    "metadata, attachments"
)
INSERT = (
    "INSERT INTO entries (key, role, content, ts, platform, chat_id, user_id, user_name, "
    "message_id, mirror, source, metadata, attachments) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Schema 1 (the first release) had no attachments column; see SQLiteHistoryStore._migrate.
MIGRATE_1_TO_2 = "ALTER TABLE entries ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]'"
SELECT_ALL = f"SELECT {COLUMNS} FROM entries WHERE key = ? ORDER BY ts, id"
SELECT_LAST = f"SELECT {COLUMNS} FROM entries WHERE key = ? ORDER BY ts DESC, id DESC LIMIT ?"
SELECT_LAST_IDS = (
    f"SELECT id, {COLUMNS} FROM entries WHERE key = ? ORDER BY ts DESC, id DESC LIMIT ?"
)
COUNT_UPTO = "SELECT count(*) FROM (SELECT 1 FROM entries WHERE key = ? LIMIT ?)"


def row_to_entry(row: Row, skip: int = 0) -> HistoryEntry:
    (role, content, ts, platform, chat_id, user_id, user_name, message_id, mirror, source, meta,
     files) = row[skip:] if skip else row  # fmt: skip
    metadata = json.loads(meta) if meta != "{}" else {}
    attachments = tuple(Attachment.from_dict(a) for a in json.loads(files)) if files != "[]" else ()
    # The columns are HistoryEntry's fields, in its order.
    return HistoryEntry(
        role, content, ts, platform, chat_id, user_id, user_name, message_id, bool(mirror),
        source, metadata, attachments,
    )  # fmt: skip


def entry_to_row(key: str, e: HistoryEntry) -> Row:
    meta = json.dumps(dict(e.metadata), separators=(",", ":")) if e.metadata else "{}"
    files = (
        json.dumps([a.to_dict() for a in e.attachments], separators=(",", ":"))
        if e.attachments
        else "[]"
    )
    return (
        key, e.role, e.content, float(e.timestamp), e.platform, e.chat_id, e.user_id, e.user_name,
        e.message_id, int(e.mirror), e.source, meta, files,
    )  # fmt: skip


def select_entries(conn: sqlite3.Connection, key: str, limit: int | None) -> list[HistoryEntry]:
    if limit is None:
        return [row_to_entry(r) for r in conn.execute(SELECT_ALL, (key,))]
    rows = conn.execute(SELECT_LAST, (key, limit)).fetchall()
    rows.reverse()
    return [row_to_entry(r) for r in rows]


def transaction(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert ``rows`` in one transaction: all of them, or (after a rollback) none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def write_one(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
    """Run one changing statement in its own transaction; the number of rows changed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        changed = conn.execute(sql, args).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return changed


Outcome = tuple[list[BaseException | None], BaseException | None]
"""``(errors, busy)``: ``errors[i]`` is None when turn ``i`` committed, else why not;
when the database was busy, the turns from ``len(errors)`` on were not tried and
``busy`` is the error."""


def begin_read(conn: sqlite3.Connection) -> bool:
    """Begin a read transaction on ``conn`` that holds the current snapshot."""
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT 1 FROM schema_version LIMIT 1").fetchall()
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("COMMIT")
        return False
    return True


# What one turn's rows can raise: SQLite's refusals, and values it cannot bind
# (a lone surrogate in a string: UnicodeEncodeError; an int beyond 64 bits).
TURN_ERRORS = (sqlite3.Error, ValueError, OverflowError)


def commit_each(conn: sqlite3.Connection, turns: Sequence[list[Row]]) -> Outcome:
    """Commit each turn's rows in a transaction of its own.

    Whatever one turn's transaction raises (even an error nobody foresaw) is
    that turn's error: the turns before it are committed, and their callers
    must hear so.
    """
    errors: list[BaseException | None] = []
    for turn in turns:
        try:
            transaction(conn, turn)
        except Exception as exc:
            if is_busy(exc):
                return errors, exc
            errors.append(exc)
        else:
            errors.append(None)
    return errors, None


def commit_turns(conn: sqlite3.Connection, turns: Sequence[list[Row]]) -> Outcome:
    """Commit all turns in one transaction, or, if that fails, each in its own."""
    try:
        transaction(conn, [row for turn in turns for row in turn])
        return [None] * len(turns), None
    except TURN_ERRORS as exc:
        if is_busy(exc):
            return [], exc
        if len(turns) == 1:
            return [exc], None
    return commit_each(conn, turns)
