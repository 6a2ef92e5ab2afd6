"""Shared plumbing of the Redis back-ends: the import guard, clients, key layout, errors.

Every Redis back-end (history, identity, turn locks, duplicate filter, outbox)
keeps its keys under one prefix (default ``onethread:``) and records the
layout it wrote in ``{prefix}{component}:layout``. A layout newer than the
code knows is a :class:`~onethread.errors.SchemaVersionError`, never silently
misread.

Every back-end makes its clients with :func:`async_client` / :func:`sync_client`:
a bounded pool (``max_connections``, default :data:`POOL_SIZE`) in which a
call that finds every connection busy WAITS for one (up to ``pool_timeout``
seconds, default :data:`POOL_TIMEOUT`) instead of failing at once, as
redis-py's default pool does ("Too many connections"). Load beyond the pool
queues in the process (back-pressure) rather than failing turns or opening
ever more connections to the server.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from ...errors import MissingDependencyError, SchemaVersionError, StoreError, StoreUnavailable
from .shared import redact

try:
    import redis
    import redis.asyncio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("the Redis back-end", "redis") from exc

__all__ = [
    "Batched",
    "LuaScript",
    "POOL_SIZE",
    "POOL_TIMEOUT",
    "PoolExhausted",
    "RedisError",
    "async_client",
    "check_layout",
    "check_layout_async",
    "upgrade_layout_async",
    "check_pool_options",
    "redact",
    "redis",
    "reraise_swallowed_cancel",
    "store_error",
    "sync_client",
    "validate_prefix",
]

RedisError = redis.RedisError

POOL_SIZE = 16  # connections per client (one client per store and event loop)
POOL_TIMEOUT = 30.0  # seconds a call waits for a free connection


class PoolExhausted(redis.exceptions.ConnectionError):
    """No connection of the pool came free within ``pool_timeout`` seconds."""

    def __init__(self, size: int, timeout: float | None) -> None:
        super().__init__(
            f"all {size} pooled connections stayed busy for {timeout} s; lower the load, "
            "or raise max_connections (and the server's maxclients) or pool_timeout"
        )
        self.size = size
        self.timeout = timeout


class _WaitingPool(redis.asyncio.BlockingConnectionPool):
    """redis-py's waiting pool, whose timeout names the pool and the fix."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.exceptions.ConnectionError as exc:
            # redis-py raises ConnectionError "from" the wait's TimeoutError; a
            # failed connect raises its own TimeoutError or an OSError cause.
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(self.max_connections, self.timeout) from exc
            raise


class Batched:
    """A ``redis.asyncio`` client whose concurrent calls share round trips.

    :meth:`call` queues a command; everything queued while the event loop
    runs other tasks goes out in ONE pipeline (``transaction=False``) on one
    pooled connection, at most ``max_inflight`` pipelines at a time. It is
    group commit for Redis: a single turn waits no longer than before (its
    command leaves at the next turn of the loop), while a thousand concurrent
    turns share a few hundred round trips instead of paying one each: the
    client's per-command cost (connection checkout, a socket write and read,
    retries bookkeeping) is paid once per pipeline.

    Each command keeps its own meaning: a pipeline without MULTI is just
    commands sent back to back on one connection, executed one at a time in
    order, each script still atomic. A command's error goes to its caller
    only; a failure of the whole pipeline (connection lost) to every caller
    in it, as the same failure would have reached each on its own call.

    Concurrency: use from the client's own event loop only (``PerLoop`` makes
    one per loop). ``_queue``, ``_inflight`` and ``_scheduled`` are touched
    only from that loop.
    """

    def __init__(self, client: redis.asyncio.Redis, max_inflight: int = 4) -> None:
        self.client = client
        self._max = max(1, max_inflight)
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue ``args`` (a Redis command); the future gets its reply or error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, fut))
        if not self._scheduled and self._inflight < self._max:
            self._scheduled = True
            loop.call_soon(self._start)
        return fut

    def _start(self) -> None:
        self._scheduled = False
        if not self._queue or self._inflight >= self._max:
            return
        batch, self._queue = self._queue, []
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for args, _ in batch:
                pipe.execute_command(*args)
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                exc = redis.exceptions.ConnectionError("the Redis client was closed")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, fut), reply in zip(batch, replies, strict=True):
                if fut.done():
                    continue
                if isinstance(reply, Exception):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        finally:
            self._inflight -= 1
            if self._queue and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._start)

    async def aclose(self) -> None:
        """Wait for the pipelines in flight, then close the client."""
        while self._tasks or self._queue:
            if self._queue and not self._scheduled and self._inflight < self._max:
                self._start()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)
        await self.client.aclose()


def check_pool_options(options: dict[str, Any]) -> dict[str, Any]:
    """Return ``options`` if its pool settings are possible, else raise ``ValueError``."""
    _pool_options(options)
    return options


def _pool_options(options: dict[str, Any]) -> tuple[dict[str, Any], int, float]:
    opts = dict(options)
    size = int(opts.pop("max_connections", POOL_SIZE))
    timeout = float(opts.pop("pool_timeout", POOL_TIMEOUT))
    if size < 1 or timeout <= 0:
        raise ValueError("max_connections must be >= 1 and pool_timeout > 0 seconds")
    return opts, size, timeout


def async_client(url: str, options: dict[str, Any]) -> redis.asyncio.Redis:
    """A ``redis.asyncio`` client on a waiting pool (see the module docstring).

    ``options`` go to the connection, except ``max_connections`` (pool size)
    and ``pool_timeout`` (seconds to wait for a free connection, then
    :class:`PoolExhausted`). ``ValueError`` for impossible values.
    """
    opts, size, timeout = _pool_options(options)
    pool = _WaitingPool.from_url(url, max_connections=size, timeout=timeout, **opts)
    return redis.asyncio.Redis.from_pool(pool)


def sync_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """As :func:`async_client`, for the blocking client (redis-py's own timeout
    error, ``ConnectionError("No connection available.")``, when the pool stays full)."""
    opts, size, timeout = _pool_options(options)
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=size, timeout=timeout, **opts)
    return redis.Redis.from_pool(pool)


def store_error(url: str, exc: BaseException) -> StoreError:
    """Map a driver error to ``StoreError`` naming the (redacted) server.

    An unreachable server (refused, timed out, connection dropped, still
    loading its data) is :class:`StoreUnavailable`: an outage, not a bug.
    """
    where = f"Redis at {redact(url)}"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return StoreUnavailable(where, str(exc))
    return StoreError(f"{where}: {exc}")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if usable as a key prefix, else raise ``ValueError``."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("prefix must be a non-empty string, e.g. 'onethread:'")
    return prefix


def _compare(where: str, found: Any, known: int) -> None:
    try:
        version = int(found)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{where}: unreadable layout version {found!r}") from exc
    if version > known:
        raise SchemaVersionError(where, version, known)


def check_layout(client: redis.Redis, key: str, known: int, url: str) -> None:
    """Record layout ``known`` at ``key`` if none is; refuse a newer one (sync client)."""
    client.set(key, known, nx=True)
    _compare(f"Redis at {redact(url)}, key {key!r}", client.get(key), known)


async def check_layout_async(client: redis.asyncio.Redis, key: str, known: int, url: str) -> None:
    """As :func:`check_layout`, for the asyncio client."""
    await client.set(key, known, nx=True)
    _compare(f"Redis at {redact(url)}, key {key!r}", await client.get(key), known)


_UPGRADE_LAYOUT_SRC = """
local found = redis.call('GET', KEYS[1])
if not found then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
local n = tonumber(found)
if n and n < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return found
"""


async def upgrade_layout_async(client: redis.asyncio.Redis, key: str, known: int, url: str) -> int:
    """Record layout ``known`` at ``key``, raising an older one to it; refuse a newer one.

    For layouts whose older versions need no rewrite (entries are
    self-describing and a newer field is simply absent): the upgrade is the
    version change, done atomically by one script whoever runs it first.
    Returns the version found before (``known`` for a new prefix).
    """
    found = await _UPGRADE_LAYOUT.run(client, [key], [known])
    if isinstance(found, bytes):
        found = found.decode()
    _compare(f"Redis at {redact(url)}, key {key!r}", found, known)
    return int(found)


class LuaScript:
    """A Lua script run by SHA (``EVALSHA``), loaded on first use by any client.

    Scripts run atomically in Redis: nothing else executes between their
    commands, which is how the back-ends make multi-key writes all-or-nothing.
    Immutable; safe to share between clients, loops and threads.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(
        self, client: redis.asyncio.Redis, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run on the asyncio client; ``redis.RedisError`` propagates."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    async def call(self, batched: Batched, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run through ``batched`` (sharing a pipeline with concurrent calls)."""
        try:
            return await batched.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await batched.call("EVAL", self.source, len(keys), *keys, *args)

    def run_sync(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run on the sync client; ``redis.RedisError`` propagates."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)


def reraise_swallowed_cancel() -> None:
    """Raise ``CancelledError`` if the current task was cancelled but is still running.

    ``redis.asyncio`` can swallow a task's cancellation that lands at the wrong
    moment of a (blocking) command (redis/redis-py#2028); the task then runs on
    with ``cancelling() > 0`` and would never stop. Loops around Redis calls
    call this on every round.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


_UPGRADE_LAYOUT = LuaScript(_UPGRADE_LAYOUT_SRC)
