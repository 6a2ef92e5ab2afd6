"""People sharded over several PostgreSQL servers (here: two schemas of one server).

A person's history, summaries, archive and turn lock sit on one shard (the one
of ``shard_index`` of their session key); identity links on the first shard;
a cross-shard merge (linking an account whose pre-link history is on the other
shard) moves every entry once, even when an earlier merge stopped halfway.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack

import psycopg
import pytest
from psycopg import sql

from onethread.bots.manager import BotSessionManager
from onethread.session.history.base import HistoryEntry
from onethread.session.keys import archive_key, legacy_key, summary_key, unified_key
from onethread.session.sharding import Shards, postgres_shards, shard_index
from services import postgres_schema, postgres_url

pytestmark = pytest.mark.service


def test_shard_index_is_stable_and_keeps_derived_keys_together() -> None:
    # The same in every process (not Python's salted hash): pinned to BLAKE2b.
    digest = hashlib.blake2b(b"user:alice", digest_size=8).digest()
    assert shard_index("user:alice", 7) == int.from_bytes(digest, "big") % 7
    for n in (1, 2, 3, 8):
        home = shard_index("user:alice", n)
        assert shard_index(summary_key("user:alice"), n) == home
        assert shard_index(archive_key("user:alice"), n) == home
    spread = {shard_index(f"user:p{i}", 4) for i in range(200)}
    assert spread == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="shards must be"):
        shard_index("user:alice", 0)


def test_postgres_shards_refuses_a_non_postgres_url() -> None:
    with pytest.raises(ValueError, match="postgresql:// URL"):
        postgres_shards(["redis://127.0.0.1:6379/0"])
    with pytest.raises(ValueError, match="at least one"):
        postgres_shards([])


@pytest.fixture
async def shards() -> AsyncIterator[tuple[Shards, list[str]]]:
    with ExitStack() as stack:
        url = postgres_url()
        schemas = [stack.enter_context(postgres_schema()) for _ in range(2)]
        parts = postgres_shards([(url, s) for s in schemas])
        try:
            yield parts, schemas
        finally:
            await parts.history.close()
            await parts.coordination.close()
            await parts.jobs.close()
            parts.identity.close()


def _rows(schema: str, table: str, where: str = "TRUE") -> list[tuple[object, ...]]:
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        query = sql.SQL("SELECT * FROM {}.{} WHERE " + where).format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        return conn.execute(query).fetchall()


def _keys(schema: str) -> set[str]:
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        query = sql.SQL("SELECT DISTINCT key FROM {}.onethread_history").format(
            sql.Identifier(schema)
        )
        return {str(r[0]) for r in conn.execute(query).fetchall()}


def _person_on(shard: int, n: int = 2, prefix: str = "p") -> str:
    return next(f"{prefix}{i}" for i in range(1000) if shard_index(f"user:{prefix}{i}", n) == shard)


def _e(text: str, ts: float) -> HistoryEntry:
    return HistoryEntry("user", text, ts, platform="telegram")


async def test_each_persons_history_and_derived_keys_live_on_their_shard(
    shards: tuple[Shards, list[str]],
) -> None:
    parts, schemas = shards
    people = [_person_on(0), _person_on(1)]
    for i, person in enumerate(people):
        key = unified_key(person)
        await parts.history.append(key, [_e(f"hello {i}", 1.0)])
        await parts.history.append(summary_key(key), [_e(f"summary {i}", 2.0)])
        await parts.history.append(archive_key(key), [_e(f"old {i}", 0.5)])
    for i, person in enumerate(people):
        key = unified_key(person)
        assert _keys(schemas[i]) == {key, summary_key(key), archive_key(key)}
        assert [e.content for e in await parts.history.load(key)] == [f"hello {i}"]
        assert await parts.history.count(summary_key(key)) == 1
    # Every shard's sessions are listed; summaries and archives are parts of a
    # session, not sessions of their own.
    listed = await parts.history.sessions(10)
    assert {s.key for s in listed} == {unified_key(p) for p in people}


async def test_a_keys_lock_and_fence_come_from_its_own_shard(
    shards: tuple[Shards, list[str]],
) -> None:
    parts, schemas = shards
    locks = parts.coordination.locks
    key = unified_key(_person_on(1))
    fences = []
    for _ in range(3):
        async with locks.lease(key) as lease:  # type: ignore[attr-defined]
            fences.append(lease.fence)
    assert fences == sorted(fences) and len(set(fences)) == 3
    with psycopg.connect(postgres_url(), autocommit=True) as conn:

        def last(schema: str) -> tuple[object, ...] | None:
            q = sql.SQL("SELECT last_value, is_called FROM {}.onethread_lock_fence").format(
                sql.Identifier(schema)
            )
            return conn.execute(q).fetchone()

        assert last(schemas[1]) == (fences[-1], True)
        # The other shard never took a lock (its lock tables were never even made).
        other = conn.execute(
            "SELECT to_regclass(format('%%I.onethread_lock_fence', %s::text))", (schemas[0],)
        ).fetchone()
        assert other == (None,)


async def test_each_message_id_is_recorded_once_on_one_shard(
    shards: tuple[Shards, list[str]],
) -> None:
    parts, schemas = shards
    dedupe = parts.coordination.duplicates
    ids = [f"telegram:m{i}" for i in range(20)]
    assert await asyncio.gather(*(dedupe.first_time(i) for i in ids)) == [True] * 20
    assert await asyncio.gather(*(dedupe.first_time(i) for i in ids)) == [False] * 20
    seen = [{str(r[0]) for r in _rows(s, "onethread_seen")} for s in schemas]
    assert seen[0] | seen[1] == set(ids) and not seen[0] & seen[1]
    assert seen[0] and seen[1]  # 20 ids spread over both shards


async def test_a_cross_shard_merge_moves_every_entry_once_even_after_a_half_done_merge(
    shards: tuple[Shards, list[str]],
) -> None:
    parts, schemas = shards
    history = parts.history
    person = _person_on(0)
    dst = unified_key(person)
    src = next(
        legacy_key("telegram", str(i)) for i in range(1000)
        if shard_index(legacy_key("telegram", str(i)), 2) == 1
    )  # fmt: skip
    before = [_e("one", 1.0), _e("two", 2.0)]
    await history.append(src, before)
    await history.append(dst, [_e("three", 3.0)])
    # A merge that copied, then died before deleting: the copy is already there.
    await history.append(dst, before)
    assert await history.merge(src, dst) == 2
    assert [e.content for e in await history.load(dst)] == ["one", "two", "three"]
    assert await history.count(src) == 0 and src not in _keys(schemas[1])
    # Nothing left to move: a second merge is a no-op.
    assert await history.merge(src, dst) == 0
    # A fresh cross-shard merge copies.
    await history.append(src, [_e("four", 4.0)])
    assert await history.merge(src, dst) == 1
    assert [e.content for e in await history.load(dst)] == ["one", "two", "three", "four"]
    assert _keys(schemas[0]) == {dst}


class _Echo:
    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        self.seen.append([h.content for h in history])
        return f"echo: {message.content}"


async def test_a_person_linked_on_two_platforms_has_one_session_on_one_shard(
    shards: tuple[Shards, list[str]],
) -> None:
    parts, schemas = shards
    person = _person_on(1)
    # The telegram account's pre-link history sits on shard 0 (a cross-shard merge).
    tg = next(str(i) for i in range(1000) if shard_index(legacy_key("telegram", str(i)), 2) == 0)
    await parts.history.append(legacy_key("telegram", tg), [_e("before linking", time.time() - 60)])
    await asyncio.to_thread(parts.identity.link, "telegram", tg, person)
    await asyncio.to_thread(parts.identity.link, "discord", "d1", person)
    manager = BotSessionManager(
        store=parts.history, identity_resolver=parts.identity, locks=parts.coordination.locks
    )
    agent = _Echo()
    assert await manager.chat(agent, tg, "from telegram", platform="telegram", chat_id=tg) == (
        "echo: from telegram"
    )
    assert await manager.chat(agent, "d1", "from discord", platform="discord", chat_id="d1") == (
        "echo: from discord"
    )
    assert agent.seen[-1] == ["before linking", "from telegram", "echo: from telegram"]
    key = unified_key(person)
    assert _keys(schemas[1]) == {key}
    assert _keys(schemas[0]) == set()  # the legacy history moved with the person
    assert len(_rows(schemas[0], "onethread_links")) == 2  # identity lives on the first shard
    assert not _table(schemas[1], "onethread_links")
    assert (parts.jobs.schema, parts.coordination.outbox.schema) == (schemas[0], schemas[0])


def _table(schema: str, table: str) -> bool:
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        ).fetchone()
    return found is not None
