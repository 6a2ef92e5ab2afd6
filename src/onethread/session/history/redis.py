"""``redis://HOST:PORT/DB``: a history store shared by several hosts.

Key layout on one server (``P`` is the prefix, default ``onethread:``)::

    P history:layout             "2"; a newer layout is a SchemaVersionError
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

**Redis Cluster** (``redis+cluster://HOST:PORT,...``): the keys of a session
carry its hash tag (``T`` = ``{user:alice}``, ``{user:alice}#archived``, see
``_conn.redis.session_tag``) and the sequence counter is the session's own::

    P history:layout             "cluster:2"
    P history:seq:T              the session's insertion counter
    P history:entries:T          as above
    P history:platforms:T        as above
    P history:sessions           as above (a global index, in a slot of its own)

The ordering contract holds per session (timestamp, then insertion), which is
all it promises. ``append`` is one script on the session's slot; the
``sessions`` index is updated by a command sent alongside it (a host killed
between the two can leave the session out of ``sessions()`` until its next
append; no entry depends on the index). ``merge`` within one slot (a session
into its own archive) is one atomic script. ``merge`` of one person's legacy
session into their unified one crosses slots, so it runs in idempotent
steps, 500 entries at a time: copy a chunk into the destination with
``ZADD`` (adding a member already there changes nothing), then remove exactly
those members from the source. A crash between steps leaves every entry in
the destination, the source, or both, never neither; the next ``merge`` of
the same pair (the session manager retries it on the person's next turn in
any process) finishes the move without duplicating anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any, cast

from .._conn.redis import (
    Batched,
    LuaScript,
    RedisError,
    async_client,
    check_pool_options,
    is_cluster,
    session_tag,
    store_error,
    upgrade_layout_async,
    validate_prefix,
)
from .._conn.shared import PerLoop
from .base import HistoryEntry, SessionSummary, is_side_key

__all__ = ["LAYOUT_VERSION", "RedisHistoryStore"]

log = logging.getLogger("onethread.history")

LAYOUT_VERSION = 2  # 2: entries may carry "attachments" (layout 1 data reads as is)

# KEYS: entries, seq, platforms[, sessions] (the index only on one server; a
# cluster updates it with a command of its own). ARGV: session key, n, max ts,
# then n (ts, json) pairs, then the platforms to record.
_APPEND = LuaScript("""
local n = tonumber(ARGV[2])
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n
for i = 1, n do
  redis.call('ZADD', KEYS[1], ARGV[2 + 2 * i],
             string.format('%016d', first + i) .. '|' .. ARGV[3 + 2 * i])
end
if KEYS[4] then redis.call('ZADD', KEYS[4], 'GT', ARGV[3], ARGV[1]) end
for i = 4 + 2 * n, #ARGV do
  redis.call('SADD', KEYS[3], ARGV[i])
end
return n
""")

# KEYS: src entries, dst entries, src platforms, dst platforms[, sessions].
# ARGV: src key, dst key. Returns {moved, the destination's last timestamp}.
_MERGE = LuaScript("""
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return {0, ''} end
redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MAX')
redis.call('DEL', KEYS[1])
redis.call('SUNIONSTORE', KEYS[4], KEYS[4], KEYS[3])
redis.call('DEL', KEYS[3])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if KEYS[5] then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZADD', KEYS[5], top[2], ARGV[2])
end
return {n, top[2]}
""")

# KEYS: entries, platforms, then the index (one server) or the session's
# sequence counter (cluster). ARGV: session key, "index" or "seq".
_CLEAR = LuaScript("""
local n = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[2] == 'index' then redis.call('ZREM', KEYS[3], ARGV[1])
else redis.call('DEL', KEYS[3]) end
return n
""")

# Cluster, cross-slot merge, last step of each chunk (on the source's slot).
# KEYS: src entries, src platforms, src seq. ARGV: the members copied.
# Removes exactly those members (anything appended since stays for the next
# round); once the source is empty, its platforms and counter go too.
# Returns how many members are left.
_DROP_COPIED = LuaScript("""
for i = 1, #ARGV, 500 do
  redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
return left
""")

# KEYS: entries keys (one slot on a cluster). ARGV: the ZRANGE start of each.
# Returns one member list per key: several loads in one command and one reply.
_LOAD_MANY = LuaScript("""
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZRANGE', KEYS[i], ARGV[i], -1)
end
return out
""")

_CHUNK = 500  # entries per step of a cross-slot merge


def _encode(entry: HistoryEntry) -> str:
    return json.dumps(entry.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _decode(member: str) -> HistoryEntry:
    _, _, body = member.partition("|")
    return HistoryEntry.from_dict(json.loads(body))


def _pairs(reply: Any) -> list[tuple[str, float]]:
    """A raw ``ZRANGE ... WITHSCORES`` reply as (member, score) pairs: RESP3 sends
    pairs, RESP2 a flat list."""
    if reply and isinstance(reply[0], list | tuple):
        return [(str(m), float(v)) for m, v in reply]
    return [(str(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]


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
        self.prefix = validate_prefix(prefix, url)
        self._cluster = is_cluster(url)
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
        return f"{self._k}entries:{session_tag(key, self._cluster)}"

    def _platforms(self, key: str) -> str:
        return f"{self._k}platforms:{session_tag(key, self._cluster)}"

    def _seq(self, key: str) -> str:
        """The insertion counter: global on one server, the session's own on a cluster."""
        if self._cluster:
            return f"{self._k}seq:{session_tag(key, True)}"
        return self._k + "seq"

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key`` (all when ``None``), oldest first."""
        if limit is not None and limit <= 0:
            return []
        start = 0 if limit is None else -limit
        client = self._clients.home_client()
        if client is None:
            async with self._clients.borrow() as client:
                return await self._load(client, key, start)
        return await self._load(client, key, start)

    async def _load(self, client: Batched, key: str, start: int) -> list[HistoryEntry]:
        try:
            members = cast(list[str], await client.call("ZRANGE", self._entries(key), start, -1))
        except RedisError as exc:
            raise store_error(self.url, exc) from exc
        return self._decoded.decode(members)

    async def load_many(
        self, requests: Sequence[tuple[str, int | None]]
    ) -> list[list[HistoryEntry]]:
        """``[await self.load(key, limit) for key, limit in requests]`` in one command.

        One Lua script reads every key (one reply to parse instead of one per
        load): the turn's summary and first history page cost one command. On
        a cluster that needs every key in one slot, i.e. one conversation (its
        summaries, archive: the part before the first ``#`` is the hash tag);
        keys of different conversations are loaded one by one there.
        """
        wanted = [(k, n) for k, n in requests if n is None or n > 0]
        if self._cluster and len({k.partition("#")[0] for k, _ in wanted}) > 1:
            return [await self.load(k, n) for k, n in requests]
        if not wanted:
            return [[] for _ in requests]
        keys = [self._entries(k) for k, _ in wanted]
        starts = [0 if n is None else -n for _, n in wanted]
        replies = await self._run(_LOAD_MANY, keys, starts)
        loaded = iter(cast(list[list[str]], replies))
        decode = self._decoded.decode
        return [decode(next(loaded)) if n is None or n > 0 else [] for _, n in requests]

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` atomically (one Lua script)."""
        if not entries:
            return
        args: list[Any] = [key, len(entries), repr(max(e.timestamp for e in entries))]
        for entry in entries:
            args += [repr(float(entry.timestamp)), _encode(entry)]
        args += sorted({e.platform for e in entries if e.platform})
        keys = [self._entries(key), self._seq(key), self._platforms(key)]
        if not self._cluster:
            await self._run(_APPEND, [*keys, self._k + "sessions"], args)
            return
        async with self._clients.borrow() as client:
            # The index lives in another slot: its update travels in the same
            # pipeline tick, and only the entries' script decides success.
            index = client.call("ZADD", self._k + "sessions", "GT", args[2], key)
            try:
                await _APPEND.call(client, keys, args)
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
            finally:
                await self._index_done(index, key)

    async def _index_done(self, index: asyncio.Future[Any], key: str) -> None:
        try:
            await index
        except RedisError as exc:
            log.warning(
                "the session index of %r was not updated (%s); it is listed again "
                "after its next append",
                key,
                exc,
            )

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; return how many were deleted."""
        if not self._cluster:
            keys = [self._entries(key), self._platforms(key), self._k + "sessions"]
            return int(await self._run(_CLEAR, keys, [key, "index"]))
        keys = [self._entries(key), self._platforms(key), self._seq(key)]
        removed = int(await self._run(_CLEAR, keys, [key, "seq"]))
        await self._index_call("ZREM", self._k + "sessions", key)
        return removed

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move every entry of ``src_key`` into ``dst_key``; return how many moved.

        Idempotent. One atomic step on one server, and on a cluster when both
        keys share a slot (a session and its archive); otherwise a
        crash-safe sequence of steps (see the module docstring).
        """
        if src_key == dst_key:
            return 0
        keys = [
            self._entries(src_key),
            self._entries(dst_key),
            self._platforms(src_key),
            self._platforms(dst_key),
        ]
        if not self._cluster:
            moved, _ = await self._run(_MERGE, [*keys, self._k + "sessions"], [src_key, dst_key])
            return int(moved)
        if src_key.partition("#")[0] == dst_key.partition("#")[0]:  # one hash tag: one slot
            moved, top = await self._run(_MERGE, keys, [src_key, dst_key])
            if int(moved):
                await self._index_call("ZREM", self._k + "sessions", src_key)
                await self._index_call("ZADD", self._k + "sessions", "GT", top, dst_key)
            return int(moved)
        return await self._merge_across(src_key, dst_key)

    async def _merge_across(self, src_key: str, dst_key: str) -> int:
        """Cluster, two slots: copy then drop, chunk by chunk (see the module docstring)."""
        src, dst = self._entries(src_key), self._entries(dst_key)
        moved = 0
        async with self._clients.borrow() as batched:
            client = batched.client
            try:
                # Usually the legacy session is empty (merged long ago): one pipelined call.
                first = _pairs(await batched.call("ZRANGE", src, 0, _CHUNK - 1, "WITHSCORES"))
                if not first:
                    return 0
                platforms = await client.smembers(self._platforms(src_key))
                if platforms:
                    await client.sadd(self._platforms(dst_key), *platforms)
                while True:
                    chunk = first or cast(
                        list[tuple[str, float]],
                        await client.zrange(src, 0, _CHUNK - 1, withscores=True),
                    )
                    first = []
                    if not chunk:
                        break
                    await client.zadd(dst, dict(chunk))  # adding a member twice: no-op
                    top = max(score for _, score in chunk)
                    await client.zadd(self._k + "sessions", {dst_key: top}, gt=True)
                    left = await _DROP_COPIED.run(
                        client,
                        [src, self._platforms(src_key), self._seq(src_key)],
                        [member for member, _ in chunk],
                    )
                    moved += len(chunk)
                    if not int(left):
                        break
                if moved:
                    await client.zrem(self._k + "sessions", src_key)
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
        return moved

    async def _index_call(self, *args: Any) -> None:
        """A command on the cluster's session index (its own slot); an index that
        could not be updated is logged, never a failed write of entries."""
        async with self._clients.borrow() as client:
            await self._index_done(client.call(*args), str(args[-1]))

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
        client = self._clients.home_client()
        if client is None:
            async with self._clients.borrow() as client:
                return await self._call(client, script, keys, args)
        return await self._call(client, script, keys, args)

    async def _call(
        self, client: Batched, script: LuaScript, keys: list[str], args: list[Any]
    ) -> Any:
        try:
            return await script.call(client, keys, args)
        except RedisError as exc:
            raise store_error(self.url, exc) from exc
