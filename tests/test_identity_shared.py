"""The shared (Redis, PostgreSQL) identity resolvers beyond the common contract.

Staleness across live instances, recovery from lost notifications and dropped
listener connections, schema versions, and errors. Each test runs in its own
key prefix / schema, deleted afterwards (see ``services``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from onethread.errors import SchemaVersionError, StoreError
from onethread.session import PostgresIdentityResolver, RedisIdentityResolver
from onethread.session.identity._synced import SyncedResolver
from services import postgres_schema, postgres_url, raw_redis, redis_namespace, redis_node_urls

pytestmark = pytest.mark.service


@dataclass
class Shared:
    name: str
    open: Callable[..., SyncedResolver]  # a new resolver on the same store
    write_silently: Callable[[str, str, str], None]  # a change that sends no notification
    set_version: Callable[[int], None]  # pretend a newer onethread wrote the store
    kill_listeners: Callable[[], int]  # drop the listener connections server-side


def _redis(stack: ExitStack, kind: str = "redis") -> Shared:
    url, prefix_cm = redis_namespace(kind)
    prefix = stack.enter_context(prefix_cm)
    group = f"{prefix}{{identity}}:" if kind == "redis-cluster" else f"{prefix}identity:"
    name = f"ot-test-{uuid.uuid4().hex[:8]}"
    raw = raw_redis(url, decode_responses=True)
    stack.callback(raw.close)

    def write_silently(platform: str, account: str, unified: str) -> None:
        value = json.dumps({"u": unified, "t": time.time()})
        raw.hset(group + "links", f"{platform}:{account}", value)
        raw.incr(group + "version")

    def kill_listeners() -> int:
        killed = 0
        for node_url in redis_node_urls(url):  # on a cluster: each node in turn
            with redis.Redis.from_url(node_url, decode_responses=True) as node:
                clients: Any = node.client_list()
                ids = [
                    c["id"] for c in clients if c.get("name") == name and int(c.get("sub", 0)) > 0
                ]
                for client_id in ids:
                    node.client_kill_filter(_id=client_id)
                killed += len(ids)
        return killed

    def open_(**kw: Any) -> SyncedResolver:
        return RedisIdentityResolver(url, prefix=prefix, client_name=name, **kw)

    def set_version(v: int) -> None:
        raw.set(group + "layout", f"cluster:{v}" if kind == "redis-cluster" else v)

    return Shared("redis", open_, write_silently, set_version, kill_listeners)


def _postgres(stack: ExitStack) -> Shared:
    schema = stack.enter_context(postgres_schema())
    app = f"ot_test_{uuid.uuid4().hex[:8]}"
    url = f"{postgres_url()}?application_name={app}"
    raw = psycopg.connect(postgres_url(), autocommit=True)
    stack.callback(raw.close)
    s = sql.Identifier(schema)

    def write_silently(platform: str, account: str, unified: str) -> None:
        with raw.transaction():
            raw.execute(
                sql.SQL("INSERT INTO {}.onethread_links VALUES (%s, %s, %s, %s)").format(s),
                (platform, account, unified, time.time()),
            )
            raw.execute(
                sql.SQL("UPDATE {}.onethread_links_version SET version = version + 1").format(s)
            )

    def set_version(v: int) -> None:
        raw.execute(sql.SQL("UPDATE {}.onethread_schema_version SET version = %s").format(s), (v,))

    def kill_listeners() -> int:
        # The resolvers' other connections are their command connections.
        commands = [r._conn.info.backend_pid for r in opened if r._conn is not None]
        rows = raw.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND NOT pid = ANY(%s)",
            (app, commands),
        ).fetchall()
        return len(rows)

    opened: list[PostgresIdentityResolver] = []

    def open_(**kw: Any) -> SyncedResolver:
        opened.append(PostgresIdentityResolver(url, schema=schema, **kw))
        return opened[-1]

    return Shared("postgres", open_, write_silently, set_version, kill_listeners)


@pytest.fixture(params=["redis", "redis-cluster", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    with ExitStack() as stack:
        if request.param == "postgres":
            yield _postgres(stack)
        else:
            yield _redis(stack, request.param)


def _wait_for(resolver: SyncedResolver, account: str, expected: str, within: float) -> float:
    """Seconds until ``resolve("telegram", account)`` is ``expected``; fails after ``within``."""
    start = time.monotonic()
    while resolver.resolve("telegram", account) != expected:
        if time.monotonic() - start > within:
            pytest.fail(f"still {resolver.resolve('telegram', account)!r} after {within}s")
        time.sleep(0.002)
    return time.monotonic() - start


def test_link_on_a_is_honoured_on_b_within_one_second(shared: Shared) -> None:
    a, b = shared.open(), shared.open()
    try:
        for i in range(5):
            a.link("telegram", f"u{i}", f"alice{i}")
            assert _wait_for(b, f"u{i}", f"alice{i}", within=1.0) < 1.0
        b.unlink("telegram", "u0")
        _wait_for(a, "u0", "telegram:u0", within=1.0)
        b.link("telegram", "u1", "bob")  # moved to another person
        _wait_for(a, "u1", "bob", within=1.0)
        assert [x.platform_user_id for x in a.links_for("bob")] == ["u1"]
    finally:
        a.close()
        b.close()


def test_a_lost_notification_is_noticed_by_the_version_check(shared: Shared) -> None:
    b = shared.open(poll_interval=0.2)
    try:
        shared.write_silently("telegram", "quiet", "carol")
        assert _wait_for(b, "quiet", "carol", within=0.2 + 0.5 + 1.0) < 1.7
    finally:
        b.close()


def test_a_gap_in_versions_makes_the_next_change_reload_everything(shared: Shared) -> None:
    a, b = shared.open(), shared.open(poll_interval=60)
    try:
        shared.write_silently("telegram", "quiet", "carol")
        a.link("telegram", "loud", "dave")  # version jumps by 2 for b: it reloads
        _wait_for(b, "loud", "dave", within=1.0)
        assert b.resolve("telegram", "quiet") == "carol"
    finally:
        a.close()
        b.close()


def test_listener_reconnects_and_reloads_what_it_missed(shared: Shared) -> None:
    a, b = shared.open(), shared.open(poll_interval=60)
    try:
        assert shared.kill_listeners() >= 1
        shared.write_silently("telegram", "while-away", "erin")
        a.link("telegram", "after", "frank")
        _wait_for(b, "while-away", "erin", within=3.0)
        _wait_for(b, "after", "frank", within=3.0)
    finally:
        a.close()
        b.close()


def test_read_methods_catch_up_without_waiting(shared: Shared) -> None:
    a, b = shared.open(), shared.open(poll_interval=60)
    try:
        shared.write_silently("telegram", "quiet", "gina")  # no notification at all
        assert [x.platform_user_id for x in b.links_for("gina")] == ["quiet"]
        assert b.resolve("telegram", "quiet") == "gina"
    finally:
        a.close()
        b.close()


def test_newer_schema_is_refused(shared: Shared) -> None:
    shared.open().close()  # creates the store
    shared.set_version(99)
    with pytest.raises(SchemaVersionError, match="99"):
        shared.open()


def test_after_close_reads_answer_from_memory_and_writes_fail(shared: Shared) -> None:
    r = shared.open()
    r.link("telegram", "1", "alice")
    r.close()
    r.close()
    assert r.resolve("telegram", "1") == "alice"
    assert [x.unified_user_id for x in r.all_links()] == ["alice"]
    with pytest.raises(StoreError, match="closed"):
        r.link("telegram", "2", "bob")
    with pytest.raises(StoreError, match="closed"):
        r.unlink("telegram", "1")


@pytest.mark.parametrize(
    ("factory", "url"),
    [
        (RedisIdentityResolver, "redis://:s3cret@127.0.0.1:1/0"),
        (PostgresIdentityResolver, "postgresql://postgres:s3cret@127.0.0.1:1/test"),
    ],
)
def test_unreachable_server_is_a_store_error_without_the_password(
    factory: Callable[[str], SyncedResolver], url: str
) -> None:
    with pytest.raises(StoreError) as info:
        factory(url)
    assert "s3cret" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


@pytest.mark.parametrize("account", ["\x00", "a\x00b", "\ud800", "é" * 3000, "x:y\nz"])
def test_any_account_string_round_trips_across_instances(shared: Shared, account: str) -> None:
    a, b = shared.open(), shared.open()
    try:
        a.link("telegram", account, "alice")
        a.link("telegram", account + "!", "bob")  # must not collide with the one above
        _wait_for(b, account + "!", "bob", within=1.0)
        assert b.resolve("telegram", account) == "alice"  # applied in order
        with shared.open() as c:
            assert [x.platform_user_id for x in c.links_for("alice")] == [account]
        b.unlink("telegram", account)
        _wait_for(a, account, f"telegram:{account}", within=1.0)
    finally:
        a.close()
        b.close()
