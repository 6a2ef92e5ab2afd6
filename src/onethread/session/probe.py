"""Can a store be reached right now? One short connection per store URL.

``onethread run --check`` reports every store it cannot reach, and ``run`` and
``chat`` refuse to start without their stores, instead of starting and then
failing every message. A probe connects with a timeout (default 5 s) and runs
the cheapest command the server has (Redis ``PING``, PostgreSQL ``SELECT 1``);
it creates no table and no key. Local stores (SQLite, the JSON file) are
checked for what a first write needs: the file readable and writable, or its
folder creatable.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreUnavailable
from ._conn.shared import redact

__all__ = ["DEFAULT_TIMEOUT", "probe_store"]

DEFAULT_TIMEOUT = 5.0


async def probe_store(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Return once the store at ``url`` answers; raise when it does not.

    Raises :class:`StoreUnavailable` (server unreachable, or no answer within
    ``timeout`` seconds) or :class:`StoreError` (reached but refused, e.g. a
    wrong password, or a local file that cannot be written). Messages name
    the store with the password redacted and fit on one line.
    ``MissingDependencyError`` when the driver is not installed.
    """
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        await _bounded(_probe_redis(url, timeout), f"Redis at {redact(url)}", timeout)
    elif scheme in ("postgresql", "postgres"):
        await _bounded(_probe_postgres(url, timeout), f"PostgreSQL at {redact(url)}", timeout)
    elif scheme == "sqlite":
        _probe_path(Path(rest[3:]).expanduser(), "SQLite database")
    elif scheme == "file":
        _probe_path(Path(rest.removeprefix("//")).expanduser(), "identity file")


async def _bounded(probe: Coroutine[Any, Any, None], where: str, timeout: float) -> None:
    # The drivers have their own connect timeouts; this also bounds a DNS lookup
    # or a server that accepts the connection and then says nothing.
    try:
        await asyncio.wait_for(probe, timeout + 1.0)
    except TimeoutError:
        raise StoreUnavailable(where, f"no answer within {timeout:g} s") from None


async def _probe_redis(url: str, timeout: float) -> None:
    from ._conn.redis import RedisError, async_client, is_cluster, redis, store_error

    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    client: Any
    if is_cluster(url):  # connecting reads the cluster's slot map: a cluster-wide probe
        try:
            client = async_client(url, options)
        except ValueError as exc:
            raise StoreError(f"bad Redis Cluster URL {redact(url)}: {exc}") from None
    else:
        client = redis.asyncio.from_url(url, retry_on_timeout=False, **options)
    try:
        await client.ping()
    except RedisError as exc:
        raise store_error(url, exc) from exc
    finally:
        await client.aclose()


async def _probe_postgres(url: str, timeout: float) -> None:
    from ._conn.postgres import psycopg, store_error

    try:
        # libpq counts connect_timeout in whole seconds, at least 2.
        conn = await psycopg.AsyncConnection.connect(
            url, connect_timeout=max(2, math.ceil(timeout))
        )
        async with conn:
            await conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise store_error(url, exc) from exc


def _probe_path(path: Path, what: str) -> None:
    if path.exists():
        if path.is_dir():
            raise StoreError(f"{what} {path} is a folder; name a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(
                f"{what} {path} is not readable and writable by this user; fix its permissions"
            )
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"{what} {path} cannot be created: {folder} is not a writable folder; "
            "fix its permissions or choose another path"
        )
