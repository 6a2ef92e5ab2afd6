"""``redis://HOST:PORT/DB``: a history store shared by several hosts.

Key layout (``P`` is the prefix, default ``onethread:``)::

    P history:layout             "1"; a newer layout is a SchemaVersionError
    P history:seq                global insertion counter
    P history:entries:{key}      sorted set: score = timestamp,
                                 member = "{seq:016d}|{entry JSON}"
    P history:platforms:{key}    set of the platforms seen in the session
    P history:sessions           sorted set: member = session key, score = last timestamp

Entries with equal timestamps sort by member, whose fixed-width sequence
prefix is the insertion order, so ``load`` is ordered by (timestamp,
insertion) as the contract asks. Every write is one Lua script, which Redis
runs atomically: an ``append`` lands whole or not at all, and ``merge`` moves a
session in one step (so it is idempotent). Durability is Redis's own: with
``appendonly yes`` and ``appendfsync everysec`` at most a second of writes can
be lost on a crash of the Redis server.

The multi-key scripts assume one Redis server (or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from .._conn.redis import (
    Batched,
    LuaScript,
    RedisError,
    async_client,
    check_pool_options,
    store_error,
    upgrade_layout_async,
    validate_prefix,
)
from .._conn.shared import PerLoop
from .base import HistoryEntry, SessionSummary, is_side_key

__all__ = ["LAYOUT_VERSION", "RedisHistoryStore"]

LAYOUT_VERSION = 2  # 2: entries may carry "attachments" (layout 1 data reads as is)

# KEYS: entries, seq, sessions, platforms. ARGV: session key, n, max ts,
# then n (ts, json) pairs, then the platforms to record.
_APPEND = LuaScript("""
local n = tonumber(ARGV[2])
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n
for i = 1, n do
  redis.call('ZADD', KEYS[1], ARGV[2 + 2 * i],
             string.format('%016d', first + i) .. '|' .. ARGV[3 + 2 * i])
end
redis.call('ZADD', KEYS[3], 'GT', ARGV[3], ARGV[1])
for i = 4 + 2 * n, #ARGV do
  redis.call('SADD', KEYS[4], ARGV[i])
end
return n
""")

# KEYS: src entries, dst entries, src platforms, dst platforms, sessions.
# ARGV: src key, dst key.
_MERGE = LuaScript("""
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return 0 end
redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MAX')
redis.call('DEL', KEYS[1])
redis.call('SUNIONSTORE', KEYS[4], KEYS[4], KEYS[3])
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[5], ARGV[1])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('ZADD', KEYS[5], top[2], ARGV[2])
return n
""")

# KEYS: entries, platforms, sessions. ARGV: session key.
_CLEAR = LuaScript("""
local n = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
""")


def _encode(entry: HistoryEntry) -> str:
    return json.dumps(entry.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _decode(member: str) -> HistoryEntry:
    _, _, body = member.partition("|")
    return HistoryEntry.from_dict(json.loads(body))


_DECODED_MAX = 50_000  # entries whose decoded form a store keeps (a few MB)


class _Decoded:
    """Decoded entries by member string, bounded, oldest insertions dropped first.

    A member (``"{seq:016d}|{json}"``) is never rewritten: a new entry gets a
    new sequence number, so the decoded form of a member is valid forever and
    on every host. Loads still read the members from Redis (the source of
    truth); only the JSON decoding of entries already seen is skipped.
    ``HistoryEntry`` is frozen, so one instance can be shared by many loads.
    Concurrency: one event loop at a time; dict operations are atomic in CPython.
    """

    def __init__(self, limit: int = _DECODED_MAX) -> None:
        self._limit = limit
        self._entries: dict[str, HistoryEntry] = {}

    def decode(self, members: list[str]) -> list[HistoryEntry]:
        known = self._entries
        out = []
        for member in members:
            entry = known.get(member)
            if entry is None:
                entry = _decode(member)
                if len(known) >= self._limit:
                    del known[next(iter(known))]
                known[member] = entry
            out.append(entry)
        return out


class RedisHistoryStore:
    """History in Redis, shared by every host that uses the same server and prefix.

    Args:
        url: ``redis://[:password@]HOST:PORT/DB`` (``rediss://`` for TLS).
        prefix: namespace of every key this store writes (default ``onethread:``).
        **options: passed to the ``redis.asyncio`` connections (e.g.
            ``socket_timeout``), except ``max_connections`` (pool size,
            default 16) and ``pool_timeout`` (seconds a call waits for a
            free connection, default 30; see ``onethread.session._conn.redis``).

    Errors: driver failures raise ``StoreError`` naming the server (password
    hidden); a key layout newer than this code raises ``SchemaVersionError``.
    Calls after :meth:`close` raise ``RuntimeError``.

    Concurrency: safe from many tasks and hosts at once; each write is one
    atomic Lua script. The connection pool belongs to the event loop that
    first uses the store (``_clients``, see ``PerLoop``, guards it); a call
    from another loop uses a short-lived connection.
    """

    def __init__(self, url: str, *, prefix: str = "onethread:", **options: Any) -> None:
        self.url = url
        self.prefix = validate_prefix(prefix)
        self._options: dict[str, Any] = check_pool_options(
            {
                "decode_responses": True,
                "encoding_errors": "surrogatepass",  # any Python str round-trips
                **options,
            }
        )
        self._k = f"{prefix}history:"
        self._decoded = _Decoded()
        self._clients: PerLoop[Batched] = PerLoop(
            self._open, self._close_client, what="this history store"
        )

    async def _open(self, home: bool) -> Batched:
        client = async_client(self.url, self._options)
        try:
            await upgrade_layout_async(client, self._k + "layout", LAYOUT_VERSION, self.url)
        except BaseException as exc:
            await client.aclose()
            if isinstance(exc, RedisError):
                raise store_error(self.url, exc) from exc
            raise
        return Batched(client)

    @staticmethod
    async def _close_client(client: Batched) -> None:
        await client.aclose()

    def _entries(self, key: str) -> str:
        return f"{self._k}entries:{key}"

    def _platforms(self, key: str) -> str:
        return f"{self._k}platforms:{key}"

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key`` (all when ``None``), oldest first."""
        if limit is not None and limit <= 0:
            return []
        start = 0 if limit is None else -limit
        async with self._clients.borrow() as client:
            try:
                members = cast(
                    list[str], await client.call("ZRANGE", self._entries(key), start, -1)
                )
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
        return self._decoded.decode(members)

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` atomically (one Lua script)."""
        if not entries:
            return
        args: list[Any] = [key, len(entries), repr(max(e.timestamp for e in entries))]
        for entry in entries:
            args += [repr(float(entry.timestamp)), _encode(entry)]
        args += sorted({e.platform for e in entries if e.platform})
        keys = [self._entries(key), self._k + "seq", self._k + "sessions", self._platforms(key)]
        await self._run(_APPEND, keys, args)

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; return how many were deleted."""
        keys = [self._entries(key), self._platforms(key), self._k + "sessions"]
        return int(await self._run(_CLEAR, keys, [key]))

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move every entry of ``src_key`` into ``dst_key`` in one atomic step. Idempotent."""
        if src_key == dst_key:
            return 0
        keys = [
            self._entries(src_key),
            self._entries(dst_key),
            self._platforms(src_key),
            self._platforms(dst_key),
            self._k + "sessions",
        ]
        return int(await self._run(_MERGE, keys, [src_key, dst_key]))

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        async with self._clients.borrow() as client:
            try:
                return int(await client.client.zcard(self._entries(key)))
            except RedisError as exc:
                raise store_error(self.url, exc) from exc

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """The most recently used sessions, newest first."""
        if limit <= 0:
            return []
        async with self._clients.borrow() as batched:
            client = batched.client
            try:
                # Summaries and archives (base.SIDE_KEY_SUFFIXES) are in the index too,
                # but are not sessions: read on until ``limit`` sessions are found.
                top: list[tuple[str, float]] = []
                start = 0
                while len(top) < limit:
                    page = cast(
                        list[tuple[str, float]],
                        await client.zrevrange(
                            self._k + "sessions", start, start + 2 * limit - 1, withscores=True
                        ),
                    )
                    top += [(k, t) for k, t in page if not is_side_key(k)]
                    if len(page) < 2 * limit:
                        break
                    start += 2 * limit
                top = top[:limit]
                pipe = client.pipeline(transaction=False)
                for key, _ in top:
                    pipe.zcard(self._entries(key))
                    pipe.smembers(self._platforms(key))
                replies: list[Any] = await pipe.execute() if top else []
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
        return [
            SessionSummary(
                key=key,
                count=int(replies[2 * i]),
                last_timestamp=float(score),
                platforms=tuple(sorted(replies[2 * i + 1])),
            )
            for i, (key, score) in enumerate(top)
        ]

    async def close(self) -> None:
        """Close the connection pool. Further calls raise ``RuntimeError``."""
        await self._clients.aclose()

    async def _run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        async with self._clients.borrow() as client:
            try:
                return await script.call(client, keys, args)
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
