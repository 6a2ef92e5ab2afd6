"""Real Redis and PostgreSQL for the tests, with a clean namespace per test.

``redis_url()`` / ``postgres_url()`` probe 127.0.0.1 once per session. When a
service is down the test is skipped with the command that starts it, or, when
``CI=true``, fails: CI must not pass by skipping the shared back-ends.

``redis_prefix()`` / ``postgres_schema()`` are context managers that hand out
a fresh key prefix / schema and delete everything under it afterwards.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_HOST, PG_PORT = "127.0.0.1", 5432

REDIS_START = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(message)


@functools.cache
def _redis_problem(port: int = REDIS_PORT) -> str | None:
    try:
        import redis
    except ImportError:
        return 'the redis package is not installed; pip install "onethread[redis]"'
    try:
        with socket.create_connection((REDIS_HOST, port), timeout=1):
            pass  # fast refusal: the client would retry for seconds
        client = redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=1)
        client.ping()
        client.close()
    except (redis.RedisError, OSError):
        return f"Redis is not running on {REDIS_HOST}:{port}; start it with: {REDIS_START}"
    return None


@functools.cache
def _postgres_problem(port: int = PG_PORT) -> str | None:
    try:
        import psycopg
    except ImportError:
        return 'psycopg is not installed; pip install "onethread[postgres]"'
    try:
        with socket.create_connection((PG_HOST, port), timeout=1):
            pass
        psycopg.connect(_pg_url(port), connect_timeout=2).close()
    except (OSError, psycopg.Error):
        return f"PostgreSQL is not running on {PG_HOST}:{port}; start it with: {PG_START}"
    return None


def _pg_url(port: int = PG_PORT) -> str:
    return f"postgresql://postgres@{PG_HOST}:{port}/test"


def redis_url() -> str:
    """The test Redis URL; skips (or fails under CI=true) when Redis is down."""
    problem = _redis_problem()
    if problem:
        _unavailable(problem)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def postgres_url() -> str:
    """The test PostgreSQL URL; skips (or fails under CI=true) when PostgreSQL is down."""
    problem = _postgres_problem()
    if problem:
        _unavailable(problem)
    return _pg_url()


def unique_name(kind: str) -> str:
    """A fresh, identifier-safe name such as ``ot_test_3f2a...``."""
    return f"ot_{kind}_{uuid.uuid4().hex[:12]}"


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards."""
    import redis

    url = redis_url()
    prefix = unique_name("test") + ":"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema name (the store creates it); dropped with everything in it afterwards."""
    import psycopg
    from psycopg import sql

    url = postgres_url()
    schema = unique_name("test")
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
