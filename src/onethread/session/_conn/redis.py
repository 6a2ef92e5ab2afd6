"""Shared plumbing of the Redis back-ends: the import guard, key layout version, errors.

Every Redis back-end (history, identity, turn locks, duplicate filter) keeps
its keys under one prefix (default ``onethread:``) and records the layout it
wrote in ``{prefix}{component}:layout``. A layout newer than the code knows is
a :class:`~onethread.errors.SchemaVersionError`, never silently misread.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from ...errors import MissingDependencyError, SchemaVersionError, StoreError
from .shared import redact

try:
    import redis
    import redis.asyncio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("the Redis back-end", "redis") from exc

__all__ = [
    "LuaScript",
    "RedisError",
    "redis",
    "check_layout",
    "reraise_swallowed_cancel",
    "check_layout_async",
    "upgrade_layout_async",
    "redact",
    "store_error",
    "validate_prefix",
]

RedisError = redis.RedisError


def store_error(url: str, exc: BaseException) -> StoreError:
    """Map a driver error to ``StoreError`` naming the (redacted) server."""
    return StoreError(f"Redis at {redact(url)}: {exc}")


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
