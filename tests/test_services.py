"""The test-service helpers: a missing service skips with the fix, or fails under CI=true."""

from __future__ import annotations

import pytest

import services


def test_a_missing_service_names_the_command_that_starts_it() -> None:
    redis_problem = services._redis_problem(1)
    postgres_problem = services._postgres_problem(1)
    assert redis_problem is not None and "redis-server --daemonize yes" in redis_problem
    assert postgres_problem is not None and "pg_ctlcluster" in postgres_problem


def test_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="start it with"):
        services._unavailable("Redis is not running; start it with: redis-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        services._unavailable("Redis is not running; start it with: redis-server")


def test_namespaces_are_cleaned_up() -> None:
    import psycopg
    import redis

    with services.redis_prefix() as prefix:
        client = redis.Redis.from_url(services.redis_url())
        client.set(prefix + "x", 1)
    assert client.exists(prefix + "x") == 0
    client.close()
    with services.postgres_schema() as schema:
        with psycopg.connect(services.postgres_url(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    with psycopg.connect(services.postgres_url()) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    assert row is None
