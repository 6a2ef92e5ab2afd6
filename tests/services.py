"""Real Redis and PostgreSQL for the tests, with a clean namespace per test.

``redis_url()`` / ``postgres_url()`` probe 127.0.0.1 once per session. When a
service is down the test is skipped with the command that starts it, or, when
``CI=true``, fails: CI must not pass by skipping the shared back-ends.

``redis_prefix()`` / ``postgres_schema()`` are context managers that hand out
a fresh key prefix / schema and delete everything under it afterwards.

``redis_cluster_url()`` starts a real 3-master Redis Cluster on free ports of
127.0.0.1 (``redis-server --cluster-enabled yes`` x3, ``redis-cli --cluster
create``) the first time a test asks for it, once per test session;
``stop_redis_cluster()`` (called by a session fixture in ``conftest.py``, and
at exit) kills it. A cluster that cannot start is a skip naming what is
missing, or a failure under ``CI=true``. ``redis_prefix(url)`` works on either.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

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
def redis_prefix(url: str | None = None) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards.

    ``url``: the Redis (default :func:`redis_url`) or ``redis+cluster://`` URL.
    """
    import redis

    url = url or redis_url()
    prefix = unique_name("test") + ":"
    try:
        yield prefix
    finally:
        for node in redis_node_urls(url):
            client = redis.Redis.from_url(node)
            try:
                keys = list(client.scan_iter(match=prefix + "*", count=1000))
                # One key per command: a cluster refuses multi-key DEL across slots.
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.delete(key)
                pipe.execute()
            finally:
                client.close()


def redis_node_urls(url: str) -> list[str]:
    if not url.startswith("redis+cluster://"):
        return [url]
    return [f"redis://{host}:{port}/0" for host, port in _CLUSTER_NODES]


# -- Redis Cluster ----------------------------------------------------------------------

CLUSTER_NEEDS = "redis-server and redis-cli (Redis 7, e.g. apt-get install redis-server)"
_CLUSTER_PROCS: list[subprocess.Popen[bytes]] = []
_CLUSTER_NODES: list[tuple[str, int]] = []
_CLUSTER_DIR: list[str] = []


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((REDIS_HOST, 0))
        # Cluster nodes also listen on port + 10000 (the cluster bus): keep below 55536.
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    if any(p + 10000 > 65535 for p in ports):
        return _free_ports(n)
    return ports


@functools.cache
def _start_cluster() -> str:
    """Start the cluster once; return its URL, or a string naming the problem (prefixed "!")."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return '!the redis package is not installed; pip install "onethread[redis]"'
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        return f"!a Redis Cluster needs {CLUSTER_NEEDS}; not found on PATH"
    folder = tempfile.mkdtemp(prefix="ot-cluster-")
    _CLUSTER_DIR.append(folder)
    atexit.register(stop_redis_cluster)
    ports = _free_ports(3)
    for port in ports:
        _CLUSTER_PROCS.append(
            subprocess.Popen(
                [
                    server,
                    "--cluster-enabled",
                    "yes",
                    "--port",
                    str(port),
                    "--bind",
                    REDIS_HOST,
                    "--cluster-config-file",
                    f"{folder}/nodes-{port}.conf",
                    "--dir",
                    folder,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],  # fmt: skip
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    _CLUSTER_NODES.extend((REDIS_HOST, p) for p in ports)
    deadline = time.monotonic() + 20
    for port in ports:
        while True:
            try:
                socket.create_connection((REDIS_HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    return f"!redis-server --cluster-enabled yes did not listen on port {port}"
                time.sleep(0.05)
    create = subprocess.run(
        [
            cli,
            "--cluster",
            "create",
            *(f"{REDIS_HOST}:{p}" for p in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    if create.returncode != 0:
        return f"!redis-cli --cluster create failed: {create.stdout[-500:]} {create.stderr[-500:]}"

    def state(port: int) -> str:
        return subprocess.run(
            [cli, "-h", REDIS_HOST, "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
        ).stdout

    while not all("cluster_state:ok" in state(p) for p in ports):
        if time.monotonic() > deadline + 30:
            return f"!the Redis Cluster did not reach cluster_state:ok: {state(ports[0])[:200]}"
        time.sleep(0.1)
    nodes = ",".join(f"{REDIS_HOST}:{p}" for p in ports)
    return f"redis+cluster://{nodes}/"


def redis_cluster_url() -> str:
    """The URL of this session's 3-master Redis Cluster (started on first use);
    skips (or fails under CI=true) when it cannot start."""
    found = _start_cluster()
    if found.startswith("!"):
        _unavailable(found[1:])
    return found


def stop_redis_cluster() -> None:
    """Kill this session's Redis Cluster (if started) and remove its folder."""
    while _CLUSTER_PROCS:
        proc = _CLUSTER_PROCS.pop()
        proc.kill()
        proc.wait()
    while _CLUSTER_DIR:
        shutil.rmtree(_CLUSTER_DIR.pop(), ignore_errors=True)


def redis_namespace(kind: str) -> tuple[str, AbstractContextManager[str]]:
    """(URL, prefix context) for ``kind`` ``"redis"`` or ``"redis-cluster"``."""
    url = redis_cluster_url() if kind == "redis-cluster" else redis_url()
    return url, redis_prefix(url)


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


def raw_redis(url: str, **options: Any) -> Any:
    """A plain blocking redis-py client on ``url`` (a ``RedisCluster`` for a cluster URL)."""
    import redis
    import redis.cluster

    if not url.startswith("redis+cluster://"):
        return redis.Redis.from_url(url, **options)
    host, port = _CLUSTER_NODES[0]
    return redis.cluster.RedisCluster(host=host, port=port, **options)


def cluster_tag(key: str, url: str) -> str:
    """How a session key appears in key names on ``url`` (tagged on a cluster)."""
    from onethread.session._conn.redis import is_cluster, session_tag

    return session_tag(key, is_cluster(url))
