"""What is particular to Redis Cluster (the contract and multi-host tests run on it too):
one slot per conversation, the cross-slot merge's crash safety, layouts that
are never misread, URLs, and moving a single-server deployment into a cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from onethread.errors import StoreError
from onethread.session._conn.redis import cluster_nodes, session_tag
from onethread.session.history import redis as history_redis
from onethread.session.history.base import HistoryEntry
from onethread.session.history.redis import RedisHistoryStore
from onethread.session.identity.redis import RedisIdentityResolver
from onethread.session.jobs.base import Job, new_job_id
from onethread.session.locks.redis import RedisDuplicateFilter, RedisTurnLocks
from onethread.session.outbox import OutboxItem
from onethread.session.outbox.redis import RedisOutbox
from onethread.session.redis_move import copy_to_cluster
from onethread.session.urls import open_job_store
from services import raw_redis, redis_cluster_url, redis_node_urls, redis_prefix, redis_url

pytestmark = pytest.mark.service


@pytest.fixture
def cluster() -> Iterator[tuple[str, str]]:
    url = redis_cluster_url()
    with redis_prefix(url) as prefix:
        yield url, prefix


def e(content: str, ts: float, **kw: Any) -> HistoryEntry:
    return HistoryEntry(role="user", content=content, timestamp=ts, **kw)


def _keys(url: str, prefix: str) -> list[str]:
    found: list[str] = []
    for node in redis_node_urls(url):
        with raw_redis(node, decode_responses=True) as raw:
            found += raw.scan_iter(match=prefix + "*")
    return found


async def test_a_conversation_its_summaries_archive_and_lock_share_one_slot(
    cluster: tuple[str, str],
) -> None:
    url, prefix = cluster
    store, locks = RedisHistoryStore(url, prefix=prefix), RedisTurnLocks(url, prefix=prefix)
    try:
        async with locks.hold("user:alice"):
            await store.append("user:alice", [e("hi", 1.0, platform="telegram")])
            await store.append("user:alice#summary", [e("sum", 1.5)])
            await store.append("user:alice#archived", [e("old", 0.5, platform="slack")])
            keys = [k for k in _keys(url, prefix) if "alice" in k]
        slots = {key_slot(k.encode()) for k in keys}
        assert len(keys) >= 7  # entries, seq, platforms x3 sessions, lock, fence
        assert slots == {key_slot(b"user:alice")}
        # Different people land in different slots (the cluster spreads them).
        other = {key_slot(session_tag(f"user:{n}", True).encode()) for n in range(50)}
        assert len(other) > 40
    finally:
        await store.close()
        await locks.close()


async def test_a_cross_slot_merge_cut_short_is_finished_by_the_next_one(
    cluster: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, prefix = cluster
    assert key_slot(b"bot_telegram_7") != key_slot(b"user:bob")  # the case this is about
    store = RedisHistoryStore(url, prefix=prefix)
    monkeypatch.setattr(history_redis, "_CHUNK", 3)  # several steps
    try:
        await store.append("user:bob", [e("unified", 50.0, platform="discord")])
        legacy = [e(f"legacy {i}", float(i), platform="telegram") for i in range(7)]
        await store.append("bot_telegram_7", legacy)

        real_drop = history_redis._DROP_COPIED
        calls = 0

        class CrashAfterCopy:
            async def run(self, *args: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 2:  # the second chunk is copied, then the host "dies"
                    raise ConnectionError("killed between copy and drop")
                return await real_drop.run(*args)

        monkeypatch.setattr(history_redis, "_DROP_COPIED", CrashAfterCopy())
        with pytest.raises(ConnectionError):
            await store.merge("bot_telegram_7", "user:bob")
        # Every entry is in the destination, the source, or both: never neither.
        dst = [x.content for x in await store.load("user:bob")]
        src = [x.content for x in await store.load("bot_telegram_7")]
        assert set(dst) | set(src) == {x.content for x in legacy} | {"unified"}
        assert len(dst) == 7  # 3 copied and dropped, 3 copied (not yet dropped), unified

        # A turn on the legacy key meanwhile (another host, not yet linked) is kept too.
        await store.append("bot_telegram_7", [e("late", 60.0, platform="telegram")])
        monkeypatch.setattr(history_redis, "_DROP_COPIED", real_drop)
        assert await store.merge("bot_telegram_7", "user:bob") == 5  # 4 left + the late one
        assert await store.merge("bot_telegram_7", "user:bob") == 0
        got = [x.content for x in await store.load("user:bob")]
        assert got == [f"legacy {i}" for i in range(7)] + ["unified", "late"]  # once each
        assert await store.count("bot_telegram_7") == 0
        [summary] = await store.sessions()
        assert (summary.key, summary.count, summary.platforms) == (
            "user:bob",
            9,
            ("discord", "telegram"),
        )
        assert not [k for k in _keys(url, prefix) if "bot_telegram_7" in k]  # nothing left
    finally:
        await store.close()


async def test_entries_with_equal_timestamps_keep_insertion_order_per_session(
    cluster: tuple[str, str],
) -> None:
    url, prefix = cluster
    store = RedisHistoryStore(url, prefix=prefix)
    try:
        for i in range(12):  # 12 > 9: the counter's fixed width keeps "10" after "9"
            await store.append("user:carol", [e(f"m{i}", 5.0)])
        assert [x.content for x in await store.load("user:carol")] == [f"m{i}" for i in range(12)]
    finally:
        await store.close()


async def test_single_server_and_cluster_layouts_are_never_misread(
    cluster: tuple[str, str],
) -> None:
    url, prefix = cluster
    with raw_redis(url) as raw:
        raw.set(f"{prefix}history:layout", "2")  # e.g. keys copied by redis-cli --cluster import
    store = RedisHistoryStore(url, prefix=prefix)
    with pytest.raises(StoreError, match="redis-to-cluster"):
        await store.load("user:alice")
    await store.close()

    with redis_prefix() as single:
        with raw_redis(redis_url()) as raw:
            raw.set(f"{single}history:layout", "cluster:2")
        store = RedisHistoryStore(redis_url(), prefix=single)
        with pytest.raises(StoreError, match=r"redis\+cluster://"):
            await store.load("user:alice")
        await store.close()


def test_cluster_urls_and_keys_are_checked_with_the_fix_named() -> None:
    nodes, options = cluster_nodes("rediss+cluster://u:p%40ss@h1:7000,h2:7001/?socket_timeout=2")
    assert nodes == [("h1", 7000), ("h2", 7001)]
    assert options == {"username": "u", "password": "p@ss", "socket_timeout": 2.0, "ssl": True}
    with pytest.raises(ValueError, match="only database 0"):
        cluster_nodes("redis+cluster://h1:7000/3")
    with pytest.raises(ValueError, match="HOST:PORT"):
        cluster_nodes("redis+cluster://h1,h2:7001/")
    with pytest.raises(ValueError, match="hash tag"):
        session_tag("#summary", True)
    with pytest.raises(ValueError, match="does not close"):
        RedisHistoryStore("redis+cluster://h1:7000/", prefix="on{e:")
    assert session_tag("user:alice#archived", True) == "{user:alice}#archived"
    assert session_tag("user:alice#archived", False) == "user:alice#archived"


def test_the_cli_refuses_a_bad_cluster_url_without_a_traceback() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onethread",
            "redis-to-cluster",
            "redis://127.0.0.1:1/0",
            "redis://127.0.0.1:2/0",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "not a cluster URL" in result.stderr
    assert "Traceback" not in result.stderr


async def _single_server_deployment(url: str, prefix: str) -> Job:
    """Write one of everything through the stores, as a running deployment would."""
    store = RedisHistoryStore(url, prefix=prefix)
    locks = RedisTurnLocks(url, prefix=prefix)
    seen = RedisDuplicateFilter(url, prefix=prefix)
    outbox = RedisOutbox(url, prefix=prefix)
    jobs = open_job_store(url, prefix=prefix)
    job = Job(
        id=new_job_id(),
        unified_user_id="alice",
        text="stand-up",
        next_run=datetime.fromtimestamp(1_900_000_000.0, UTC),
    )
    try:
        async with locks.hold("user:alice"):
            await store.append("user:alice", [e("hi", 10.0, platform="telegram"), e("yo", 10.0)])
        async with locks.hold("user:alice"):
            pass  # fence 2
        await store.append("user:alice#archived", [e("old", 1.0, platform="slack")])
        await store.append("bot_discord_9", [e("unlinked", 3.0, platform="discord")])
        assert await seen.first_time("telegram:update:1")
        await outbox.put(
            OutboxItem("telegram", chat_id="1", text="queued", unified_user_id="alice")
        )
        await jobs.add(job)
    finally:
        for thing in (store, locks, seen, outbox, jobs):
            await thing.close()
    resolver = await asyncio.to_thread(RedisIdentityResolver, url, prefix=prefix)
    try:
        await asyncio.to_thread(resolver.link, "telegram", "1", "alice")
    finally:
        resolver.close()
    return job


async def test_a_single_server_deployment_moves_into_the_cluster_whole(
    cluster: tuple[str, str],
) -> None:
    cluster_url, _ = cluster
    with redis_prefix() as prefix:
        job = await _single_server_deployment(redis_url(), prefix)
        report = copy_to_cluster(redis_url(), cluster_url, prefix)
        try:
            assert report.sessions == 3
            assert report.skipped == []
            assert report.copied["history"] == 7  # 3 entries, 3 platforms, the index
            store = RedisHistoryStore(cluster_url, prefix=prefix)
            locks = RedisTurnLocks(cluster_url, prefix=prefix)
            seen = RedisDuplicateFilter(cluster_url, prefix=prefix)
            outbox = RedisOutbox(cluster_url, prefix=prefix, poll=0.05)
            jobs = open_job_store(cluster_url, prefix=prefix)
            try:
                assert [x.content for x in await store.load("user:alice")] == ["hi", "yo"]
                # Insertion order continues after the copied entries at an equal timestamp.
                await store.append("user:alice", [e("after the move", 10.0)])
                got = [x.content for x in await store.load("user:alice")]
                assert got == ["hi", "yo", "after the move"]
                assert [x.content for x in await store.load("user:alice#archived")] == ["old"]
                assert {s.key for s in await store.sessions()} == {"user:alice", "bot_discord_9"}
                async with locks.lease("user:alice") as lease:
                    assert lease.fence == 3  # fencing tokens keep increasing
                assert not await seen.first_time("telegram:update:1")  # still answered once
                assert [j.id for j in await jobs.find("alice")] == [job.id]
                delivered: list[str] = []

                async def deliver(item: OutboxItem) -> None:
                    delivered.append(item.text)

                serving = asyncio.create_task(outbox.serve(["telegram"], deliver))
                try:
                    async with asyncio.timeout(10):
                        while not delivered:
                            await asyncio.sleep(0.02)
                finally:
                    serving.cancel()
                    await asyncio.gather(serving, return_exceptions=True)
                assert delivered == ["queued"]
            finally:
                for thing in (store, locks, seen, outbox, jobs):
                    await thing.close()
            resolver = await asyncio.to_thread(RedisIdentityResolver, cluster_url, prefix=prefix)
            try:
                assert resolver.resolve("telegram", "1") == "alice"
            finally:
                resolver.close()
            # Hosts now use the prefix: a second copy would overwrite their writes.
            with pytest.raises(StoreError, match="fresh prefix"):
                copy_to_cluster(redis_url(), cluster_url, prefix)
        finally:  # the same prefix on the cluster
            for node in redis_node_urls(cluster_url):
                with raw_redis(node) as raw:
                    for key in list(raw.scan_iter(match=prefix + "*")):
                        raw.delete(key)


async def test_a_move_is_refused_while_a_host_holds_a_turn_lock(
    cluster: tuple[str, str],
) -> None:
    cluster_url, _ = cluster
    with redis_prefix() as prefix:
        locks = RedisTurnLocks(redis_url(), prefix=prefix)
        try:
            async with locks.hold("user:dave"):
                with pytest.raises(StoreError, match="stop every host"):
                    await asyncio.to_thread(copy_to_cluster, redis_url(), cluster_url, prefix)
        finally:
            await locks.close()
        assert not _keys(cluster_url, prefix)  # nothing was written


async def test_a_burst_of_calls_waits_for_the_cluster_pools_instead_of_failing(
    cluster: tuple[str, str],
) -> None:
    """redis-py's cluster pools fail when full; ours wait (300 merges at once, 16 per node)."""
    url, prefix = cluster
    store = RedisHistoryStore(url, prefix=prefix, max_connections=16)
    try:
        await asyncio.gather(
            *(store.append(f"bot_telegram_{i}", [e(f"m{i}", 1.0)]) for i in range(300))
        )
        moved = await asyncio.gather(
            *(store.merge(f"bot_telegram_{i}", f"user:u{i}") for i in range(300))
        )
        assert moved == [1] * 300
        assert [x.content for x in await store.load("user:u299")] == ["m299"]
    finally:
        await store.close()


async def test_the_probe_reaches_a_cluster_and_names_one_that_is_down(
    cluster: tuple[str, str],
) -> None:
    from onethread.errors import StoreUnavailable
    from onethread.session.probe import probe_store

    url, _ = cluster
    await probe_store(url)
    with pytest.raises(StoreUnavailable, match=r"redis\+cluster://127\.0\.0\.1:1/"):
        await probe_store("redis+cluster://127.0.0.1:1/", timeout=1)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_cross_slot_merge_reads_both_protocols(
    cluster: tuple[str, str], protocol: int
) -> None:
    url, prefix = cluster
    store = RedisHistoryStore(url, prefix=prefix, protocol=protocol)
    try:
        await store.append("bot_slack_3", [e("a", 1.0), e("b", 2.0)])
        assert await store.merge("bot_slack_3", "user:pat") == 2
        assert [x.content for x in await store.load("user:pat")] == ["a", "b"]
    finally:
        await store.close()


def test_run_check_accepts_and_reaches_a_cluster_url(
    cluster: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = cluster
    (tmp_path / "onethread.yaml").write_text(f"history: {url}\nidentity: {url}\n")
    result = subprocess.run(
        [sys.executable, "-m", "onethread", "run", "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"history: {url} (reachable)" in result.stdout
    assert f"identity: {url} (reachable)" in result.stdout
