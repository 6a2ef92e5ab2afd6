"""Stores written by the previous release open and upgrade in place, once.

``tests/data/history-v1*`` were written by onethread at 271cfc4 (history
schema / layout 1, before attachments): a SQLite file, a ``pg_dump`` of a
PostgreSQL schema and a dump of the Redis keys. Each test loads one into a
fresh place, opens it with today's store, and checks that every entry reads
back as it was written, that the version was raised once, and that the store
then takes entries with attachments.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from onethread.session.attachments import Attachment
from onethread.session.history.base import HistoryEntry
from onethread.session.history.postgres import SCHEMA_VERSION as PG_VERSION
from onethread.session.history.postgres import PostgresHistoryStore
from onethread.session.history.redis import LAYOUT_VERSION, RedisHistoryStore
from onethread.session.history.sqlite import SCHEMA_VERSION, SQLiteHistoryStore
from services import postgres_schema, postgres_url, redis_prefix, redis_url

DATA = Path(__file__).parent / "data"

EXPECTED_ALICE = [
    HistoryEntry(
        "user", "hello from telegram", 1700000000.0, "telegram", "42", "42", "Alice", "m1"
    ),
    HistoryEntry("assistant", "Hi Alice! ünïcødé ✓", 1700000001.0, "telegram", "42"),
    HistoryEntry(
        "assistant",
        "Stand-up in 5 minutes",
        1700000100.0,
        "discord",
        mirror=True,
        source="cron",
        metadata={"job": "standup", "n": 3},
    ),
]
PHOTO = Attachment("image", "image/jpeg", "p.jpg", 10, "sha256:" + "0" * 64)


async def _check_and_extend(store: object) -> None:
    assert await store.load("user:alice") == EXPECTED_ALICE  # type: ignore[attr-defined]
    assert await store.load("bot_web_xyz") == EXPECTED_ALICE[:1]  # type: ignore[attr-defined]
    new = HistoryEntry("user", "", 1700000200.0, "web", attachments=(PHOTO,))
    await store.append("user:alice", [new])  # type: ignore[attr-defined]
    assert (await store.load("user:alice"))[-1] == new  # type: ignore[attr-defined]


def _sqlite_version(path: Path) -> tuple[int, list[str]]:
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(entries)")]
    assert len(versions) == 1, versions
    return versions[0], columns


async def test_sqlite_v1_file_opens_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    shutil.copy(DATA / "history-v1.db", path)
    assert _sqlite_version(path)[0] == 1
    store = SQLiteHistoryStore(path)
    await _check_and_extend(store)
    await store.close()
    version, columns = _sqlite_version(path)
    assert version == SCHEMA_VERSION == 2
    assert columns.count("attachments") == 1
    with sqlite3.connect(path) as conn:  # rows kept, not rewritten: same ids
        assert [r[0] for r in conn.execute("SELECT id FROM entries ORDER BY id")] == [1, 2, 3, 4, 5]
    again = SQLiteHistoryStore(path)  # a second open finds it done
    assert len(await again.load("user:alice")) == 4
    await again.close()
    assert _sqlite_version(path)[0] == 2


def _open_and_count(path: str) -> int:
    import asyncio

    async def run() -> int:
        store = SQLiteHistoryStore(path)
        try:
            return len(await store.load("user:alice"))
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.multiprocess
def test_sqlite_v1_file_migrated_by_four_processes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    shutil.copy(DATA / "history-v1.db", path)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        counts = pool.map(_open_and_count, [str(path)] * 4)
    assert counts == [3, 3, 3, 3]
    version, columns = _sqlite_version(path)
    assert version == 2 and columns.count("attachments") == 1


@pytest.mark.service
async def test_redis_layout_1_opens_and_upgrades() -> None:
    import redis

    dump = json.loads((DATA / "history-v1-redis.json").read_text(encoding="utf-8"))
    url = redis_url()
    with redis_prefix() as prefix:
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            for key, item in dump.items():
                if item["type"] == "string":
                    client.set(prefix + key, item["value"])
                elif item["type"] == "zset":
                    client.zadd(prefix + key, {m: s for m, s in item["value"]})
                elif item["type"] == "hash":
                    client.hset(prefix + key, mapping=item["value"])
                elif item["type"] == "set":
                    client.sadd(prefix + key, *item["value"])
                else:
                    raise AssertionError(f"dump has a {item['type']} the test cannot load")
            assert client.get(prefix + "history:layout") == "1"
            store = RedisHistoryStore(url, prefix=prefix)
            await _check_and_extend(store)
            await store.close()
            assert client.get(prefix + "history:layout") == str(LAYOUT_VERSION) == "2"
        finally:
            client.close()


@pytest.mark.service
async def test_redis_newer_layout_is_refused() -> None:
    import redis

    from onethread.errors import SchemaVersionError

    url = redis_url()
    with redis_prefix() as prefix:
        client = redis.Redis.from_url(url)
        client.set(prefix + "history:layout", LAYOUT_VERSION + 1)
        client.close()
        store = RedisHistoryStore(url, prefix=prefix)
        with pytest.raises(SchemaVersionError):
            await store.load("k")
        await store.close()


@pytest.mark.service
async def test_postgres_schema_1_opens_and_migrates() -> None:
    import psycopg

    if shutil.which("psql") is None:
        pytest.skip("restoring the dump needs psql: apt-get install postgresql-client")
    url = postgres_url()
    with postgres_schema() as schema:
        dump = (DATA / "history-v1-postgres.sql").read_text(encoding="utf-8")
        subprocess.run(
            ["psql", url, "-q", "-v", "ON_ERROR_STOP=1"],
            input=dump.replace("legacyv1", schema),
            text=True,
            check=True,
            capture_output=True,
        )
        store = PostgresHistoryStore(url, schema=schema)
        await _check_and_extend(store)
        await store.close()
        with psycopg.connect(url) as conn:
            row = conn.execute(
                f'SELECT version FROM "{schema}".onethread_schema_version '
                "WHERE component = 'history'"
            ).fetchone()
        assert row is not None and row[0] == PG_VERSION == 2
