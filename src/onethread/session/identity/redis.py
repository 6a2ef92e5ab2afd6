"""An identity resolver shared through Redis, answering ``resolve`` from memory.

Key layout (``P`` is the prefix, default ``onethread:``)::

    P identity:layout    "1"; a newer layout is a SchemaVersionError
    P identity:links     hash: "{platform}:{platform_user_id}" -> {"u": unified, "t": linked_at}
    P identity:version   incremented by every change
    P identity:changes   pub/sub channel: {"v": version, "f": field, "d": value or absent}

Writes are Lua scripts, so the hash, the version and the notification change
together; so is the snapshot (links and version read in one step).

On Redis Cluster (``redis+cluster://``) the three keys carry the hash tag
``{identity}`` (``P {identity}:links``, ``P {identity}:version``,
``P {identity}:layout``) so each script touches one slot, and the listener
subscribes on one node at a time: a cluster delivers classic pub/sub
messages published on any node to subscribers on every node.

How the cache follows the server, and how stale it can be, is described in
:mod:`onethread.session.identity._synced`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ...errors import StoreError
from .._conn.redis import (
    LuaScript,
    RedisError,
    check_layout,
    check_pool_options,
    cluster_nodes,
    group_tag,
    is_cluster,
    redis,
    store_error,
    sync_client,
    validate_prefix,
)
from .._conn.shared import redact
from ._synced import WAKEUP, Change, Snapshot, SyncedResolver
from .base import IdentityLink

__all__ = ["LAYOUT_VERSION", "RedisIdentityResolver"]

LAYOUT_VERSION = 1

# KEYS: links, version. ARGV: field, unified id, value, channel. Returns the version.
_LINK = LuaScript("""
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cjson.decode(cur).u == ARGV[2] then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], cjson.encode({v = v, f = ARGV[1], d = ARGV[3]}))
return v
""")

# KEYS: links, version. ARGV: expected version, field, unified id, value, channel.
# _LINK, if the version is still the expected one; else -1 (a change came between).
_CLAIM = LuaScript("""
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then
  return -1
end
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur and cjson.decode(cur).u == ARGV[3] then
  return tonumber(ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[5], cjson.encode({v = v, f = ARGV[2], d = ARGV[4]}))
return v
""")
_CLAIM_ATTEMPTS = 20

# KEYS: links, version. ARGV: field, channel. Returns {removed, version}.
_UNLINK = LuaScript("""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], cjson.encode({v = v, f = ARGV[1]}))
return {1, v}
""")


# KEYS: version, links. Returns {version, flat field/value list}: one atomic read.
_SNAPSHOT = LuaScript("""
return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', KEYS[2])}
""")


def _link_from(field: str, value: str) -> IdentityLink:
    platform, _, account = field.partition(":")
    data = json.loads(value)
    return IdentityLink(platform, account, str(data["u"]), float(data.get("t", 0.0)))


class RedisIdentityResolver(SyncedResolver):
    """Links kept in Redis and shared by every host; ``resolve`` answers from memory.

    Args:
        url: ``redis://[:password@]HOST:PORT/DB`` (``rediss://`` for TLS).
        prefix: namespace of every key (default ``onethread:``).
        poll_interval: seconds between the listener's version checks (the
            bound on staleness if a notification is lost).
        sync_timeout: how long ``link`` and friends wait for the listener to
            apply a change before reloading in the calling thread.
        **options: passed to the ``redis`` connections, except
            ``max_connections`` (pool size, default 16, at least 2: the
            change listener holds one) and ``pool_timeout`` (seconds a call
            waits for a free connection, default 30).

    Staleness: see :mod:`onethread.session.identity._synced` (a change on
    another host shows within the pub/sub latency, tested < 1 s).

    Errors: ``StoreError`` (server unreachable or failing; password hidden),
    ``SchemaVersionError`` for a newer key layout, ``ValueError`` for invalid
    link arguments. The constructor connects and loads every link.

    Concurrency: ``link``/``unlink`` go through ``self._client``, whose
    connection pool is thread-safe; the listener thread owns its pub/sub
    connection (health-checked every 5 s). The cache is guarded as described in ``SyncedResolver``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "onethread:",
        poll_interval: float = 5.0,
        sync_timeout: float = 0.2,
        **options: Any,
    ) -> None:
        super().__init__(
            where=f"Redis at {redact(url)}", poll_interval=poll_interval, sync_timeout=sync_timeout
        )
        self.url = url
        self.prefix = validate_prefix(prefix, url)
        self._cluster = is_cluster(url)
        group = f"{prefix}{group_tag('identity', self._cluster)}:"
        self._links_key = group + "links"
        self._version_key = group + "version"
        self._channel = group + "changes"
        self._listen_node = 0  # which cluster node the listener subscribes on (round robin)
        self._options: dict[str, Any] = check_pool_options(
            {
                "decode_responses": True,
                "encoding_errors": "surrogatepass",  # any Python str round-trips
                "health_check_interval": 5,
                **options,
            }
        )
        if int(self._options.get("max_connections", 2)) < 2:
            raise ValueError("max_connections must be at least 2 (the change listener holds one)")
        self._client = sync_client(url, self._options)
        try:
            check_layout(self._client, group + "layout", LAYOUT_VERSION, url)
            self._start(f"onethread-identity-redis-{prefix}")
        except RedisError as exc:
            self._client.close()
            raise store_error(url, exc) from exc
        except BaseException:
            self._client.close()
            raise

    # -- server calls ----------------------------------------------------------

    def _do_snapshot(self) -> Snapshot:
        try:
            version, flat = _SNAPSHOT.run_sync(
                self._client, [self._version_key, self._links_key], []
            )
        except RedisError as exc:
            raise store_error(self.url, exc) from exc
        pairs = zip(flat[::2], flat[1::2], strict=True)
        return Snapshot(int(version or 0), [_link_from(f, v) for f, v in pairs])

    def _do_version(self) -> int:
        try:
            return int(self._client.get(self._version_key) or 0)
        except RedisError as exc:
            raise store_error(self.url, exc) from exc

    def _do_link(self, link: IdentityLink) -> int:
        field = f"{link.platform}:{link.platform_user_id}"
        value = json.dumps({"u": link.unified_user_id, "t": link.linked_at}, ensure_ascii=False)
        keys = [self._links_key, self._version_key]
        try:
            return int(
                _LINK.run_sync(
                    self._client, keys, [field, link.unified_user_id, value, self._channel]
                )
            )
        except RedisError as exc:
            raise store_error(self.url, exc) from exc

    def _do_claim(self, link: IdentityLink) -> tuple[bool, int]:
        # Compare and set on the version: the cache, caught up to version V,
        # says the id is free; the script links only if the server is still at
        # V (no change of any link came between), else we catch up and retry.
        field = f"{link.platform}:{link.platform_user_id}"
        value = json.dumps({"u": link.unified_user_id, "t": link.linked_at}, ensure_ascii=False)
        keys = [self._links_key, self._version_key]
        for _ in range(_CLAIM_ATTEMPTS):
            self._sync()
            with self._lock:
                expected = self._version
                taken = self._table.taken(
                    link.unified_user_id, link.platform, link.platform_user_id
                )
            if taken:
                return False, expected
            try:
                version = int(
                    _CLAIM.run_sync(
                        self._client,
                        keys,
                        [expected, field, link.unified_user_id, value, self._channel],
                    )
                )
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
            if version >= 0:
                return True, version
        raise StoreError(
            f"{self._where}: could not claim {link.unified_user_id!r}: the links kept "
            f"changing ({_CLAIM_ATTEMPTS} tries); try again"
        )

    def _do_unlink(self, platform: str, platform_user_id: str) -> tuple[bool, int]:
        keys = [self._links_key, self._version_key]
        try:
            removed, version = _UNLINK.run_sync(
                self._client, keys, [f"{platform}:{platform_user_id}", self._channel]
            )
        except RedisError as exc:
            raise store_error(self.url, exc) from exc
        return bool(removed), int(version)

    # -- the listener thread ---------------------------------------------------

    def _pubsub(self) -> tuple[Any, Any]:
        """(a client to close afterwards or None, its pub/sub): on a cluster, a plain
        connection to one node (the next one after each failure)."""
        if not self._cluster:
            return None, self._client.pubsub()
        nodes, kwargs = cluster_nodes(self.url)
        host, port = nodes[self._listen_node % len(nodes)]
        self._listen_node += 1
        pool_only = ("max_connections", "pool_timeout")
        opts = {k: v for k, v in self._options.items() if k not in pool_only}
        node = redis.Redis(host=host, port=port, **{**kwargs, **opts})
        return node, node.pubsub()

    def _listen_once(self) -> None:
        node, pubsub = self._pubsub()
        try:
            pubsub.subscribe(self._channel)
            deadline = time.monotonic() + 10.0
            # Wait for the server's confirmation: only then is no later change missed.
            while True:
                message = pubsub.get_message(timeout=WAKEUP)
                if message is not None and message["type"] == "subscribe":
                    break
                if self._stop.is_set():
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("no confirmation of SUBSCRIBE within 10 s")
            self._resync()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=WAKEUP)
                if message is not None and message["type"] == "message":
                    self._receive(self._parse(message["data"]))
                self._tick()
        finally:
            pubsub.close()
            if node is not None:
                node.close()

    def _parse(self, data: str) -> Change:
        message = json.loads(data)
        version, field = int(message["v"]), str(message["f"])
        platform, _, account = field.partition(":")
        value = message.get("d")
        link = _link_from(field, value) if isinstance(value, str) else None
        return Change(version, platform, account, link)

    def _close_connections(self) -> None:
        self._client.close()
