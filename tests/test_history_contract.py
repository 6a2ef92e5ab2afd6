"""One contract, every history store (back-ends added here pass the same tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from onethread.session.attachments import Attachment
from onethread.session.history.base import HistoryEntry, HistoryStore
from onethread.session.urls import open_history_store
from services import postgres_schema, postgres_url, redis_namespace

STORES = ["memory", "sqlite", "redis", "redis-cluster", "postgres"]


def _open_args(name: str, tmp_path: Path, stack: ExitStack) -> tuple[str, dict[str, Any]]:
    """The URL and options of a fresh, empty store (shared ones in their own namespace)."""
    if name in ("redis", "redis-cluster"):
        url, prefix = redis_namespace(name)
        return url, {"prefix": stack.enter_context(prefix)}
    if name == "postgres":
        return postgres_url(), {"schema": stack.enter_context(postgres_schema())}
    return {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/h.db"}[name], {}


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    with ExitStack() as stack:
        url, options = _open_args(request.param, tmp_path, stack)
        s = open_history_store(url, **options)
        assert isinstance(s, HistoryStore)
        yield s
        await s.close()


def e(content: str, ts: float, role: str = "user", **kw: object) -> HistoryEntry:
    return HistoryEntry(role=role, content=content, timestamp=ts, **kw)  # type: ignore[arg-type]


async def test_append_load_roundtrip_keeps_every_field(store: HistoryStore) -> None:
    full = e(
        "hi",
        1.0,
        platform="telegram",
        chat_id="c",
        user_id="u",
        user_name="Al",
        message_id="m1",
        mirror=True,
        source="cron",
        metadata={"job": "standup", "n": 2},
        attachments=(
            Attachment("image", "image/png", "cat.png", 1234, "sha256:" + "ab" * 32, caption="x"),
            Attachment("voice", "audio/ogg", size=99, transcript="see you at nine"),
        ),
    )
    await store.append("k", [full, e("yo", 2.0, role="assistant")])
    got = await store.load("k")
    assert got[0] == full
    assert got[0].attachments[1].transcript == "see you at nine"
    assert got[1].attachments == ()
    assert [x.content for x in got] == ["hi", "yo"]


async def test_limit_returns_newest_oldest_first(store: HistoryStore) -> None:
    await store.append("k", [e(str(i), float(i)) for i in range(10)])
    assert [x.content for x in await store.load("k", 3)] == ["7", "8", "9"]
    assert await store.load("k", 0) == []
    assert await store.count("k") == 10


async def test_keys_are_isolated(store: HistoryStore) -> None:
    await store.append("a", [e("for a", 1)])
    await store.append("b", [e("for b", 1)])
    assert [x.content for x in await store.load("a")] == ["for a"]
    assert await store.load("missing") == []


async def test_merge_orders_by_time_once(store: HistoryStore) -> None:
    await store.append("legacy", [e("old1", 1), e("old3", 3)])
    await store.append("user:alice", [e("new2", 2), e("new4", 4)])
    assert await store.merge("legacy", "user:alice") == 2
    assert await store.merge("legacy", "user:alice") == 0
    got = [x.content for x in await store.load("user:alice")]
    assert got == ["old1", "new2", "old3", "new4"]
    assert await store.load("legacy") == []


async def test_clear(store: HistoryStore) -> None:
    await store.append("k", [e("x", 1), e("y", 2)])
    assert await store.clear("k") == 2
    assert await store.load("k") == []


async def test_sessions_summary(store: HistoryStore) -> None:
    await store.append("a", [e("x", 1, platform="telegram")])
    await store.append("b", [e("y", 5, platform="discord"), e("z", 6, platform="slack")])
    summary = await store.sessions()
    assert [s.key for s in summary] == ["b", "a"]
    assert summary[0].count == 2 and summary[0].platforms == ("discord", "slack")


async def test_sessions_leave_out_summaries_and_archives(store: HistoryStore) -> None:
    from onethread.session.keys import archive_key, summary_key

    await store.append("user:alice", [e("hi", 1, platform="telegram")])
    # Newer than alice's session, and more of them than the limit asks for.
    for i in range(3):
        await store.append(summary_key(f"user:p{i}"), [e("sum", 10 + i, role="summary")])
        await store.append(archive_key(f"user:p{i}"), [e("old", 20 + i)])
    await store.append(summary_key("user:alice"), [e("sum", 30, role="summary")])
    await store.append("user:bob", [e("yo", 2, platform="discord")])
    assert [s.key for s in await store.sessions(2)] == ["user:bob", "user:alice"]
    assert [s.key for s in await store.sessions()] == ["user:bob", "user:alice"]


async def test_many_tasks_appending_lose_nothing(store: HistoryStore) -> None:
    async def writer(i: int) -> None:
        for j in range(20):
            await store.append(f"k{i % 5}", [e(f"{i}-{j}", float(j)), e(f"{i}-{j}r", float(j))])

    await asyncio.gather(*(writer(i) for i in range(50)))
    total = sum([await store.count(f"k{i}") for i in range(5)])
    assert total == 50 * 20 * 2


async def test_sqlite_survives_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    s = open_history_store(url)
    await s.append("k", [e("persisted", 1.0, mirror=True, source="cron", metadata={"a": 1})])
    await s.close()
    s2 = open_history_store(url)
    got = await s2.load("k")
    await s2.close()
    assert got[0].mirror and got[0].source == "cron" and got[0].metadata == {"a": 1}


async def test_sqlite_corrupt_file_is_an_error_naming_it(tmp_path: Path) -> None:
    from onethread.errors import CorruptStoreError

    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    s = open_history_store(f"sqlite:///{bad}")
    with pytest.raises(CorruptStoreError, match=str(bad)):
        await s.load("k")
    await s.close()
    assert bad.read_bytes() == b"this is not sqlite" * 100


async def test_sqlite_newer_schema_refused(tmp_path: Path) -> None:
    import sqlite3

    from onethread.errors import SchemaVersionError

    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    s = open_history_store(f"sqlite:///{path}")
    with pytest.raises(SchemaVersionError, match="99"):
        await s.load("k")
    await s.close()


def test_bad_urls_name_the_accepted_forms() -> None:
    from onethread.errors import ConfigError

    for url in ("nope", "mysql://x", "sqlite:/x.db", "file:/x.json"):
        with pytest.raises(ConfigError, match="sqlite"):
            open_history_store(url)


async def test_summaries_and_archives_on_every_store(store: HistoryStore) -> None:
    """Long conversations need no schema: summaries and archives are entries under keys."""
    from onethread.agent import Agent
    from onethread.bots import BotSessionManager
    from onethread.session.keys import archive_key, summary_key

    manager = BotSessionManager(store, context_tokens=16_000)
    agent = Agent("offline")
    key = "bot_console_u1"
    for text in ("my lucky number is 7", "two", "three"):
        await manager.chat(agent, "u1", text, platform="console", message_id=text)
    assert await manager.compact(agent, "u1", platform="console") == 4
    summary = (await store.load(summary_key(key)))[-1]
    assert summary.role == "summary" and summary.metadata["kind"] == "extract"
    assert summary.metadata["covers"][0] == (await store.load(key))[0].timestamp
    assert await manager.reset("u1", platform="console") == 6
    await manager.chat(agent, "u1", "again", platform="console", message_id="again")
    assert await manager.reset("u1", platform="console") == 2  # a second /new adds to the archive
    archived = await store.load(archive_key(key))
    assert len(archived) == 9 and [x.role for x in archived].count("summary") == 1
    assert await store.load(key) == [] and await store.load(summary_key(key)) == []
    assert await manager.forget("console:u1") == 9
