"""Jobs on Redis: several hosts share one schedule.

Key layout (``P`` is the prefix, default ``onethread:``)::

    P jobs:layout        the layout version (1)
    P jobs:due           sorted set: job id -> due (Unix seconds)
    P jobs:job:{id}      hash: body (the Job as JSON), user, status, token, owner
    P jobs:ids           set of every job id
    P jobs:user:{user}   set of the person's job ids
    P jobs:zones         hash: person -> time zone name
    P jobs:changed       pub/sub channel: a job was added or cancelled (listened to in
                         one-second reads, so a cancel redis-py swallowed is noticed)

Add, claim, extend, release and cancel are Lua scripts, so each runs
atomically on the server: a claim takes the ids due by ``now`` from
``jobs:due``, raises each one's token and moves its score to the end of the
lease (a job whose host died comes due again when the lease ends). Release
and extend check the token first. The claim script touches job hashes it
computes from the prefix, so every key of the schedule must share a slot: on
Redis Cluster (``redis+cluster://``) they are ``P {jobs}:due``,
``P {jobs}:job:{id}``, ... (hash tag ``{jobs}``: one slot holds the whole
schedule, which is small next to the histories), and the change listener
subscribes on one node, the next one after a failure (classic pub/sub
reaches every node of a cluster).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._conn.redis import (
    AsyncClient,
    LuaScript,
    RedisError,
    async_client,
    check_layout_async,
    cluster_nodes,
    group_tag,
    is_cluster,
    redis,
    reraise_swallowed_cancel,
    store_error,
    validate_prefix,
)
from .._conn.shared import PerLoop
from .base import Claim, Job

__all__ = ["LAYOUT", "RedisJobStore"]

LAYOUT = 1

# KEYS: job, ids, user's ids, due. ARGV: body, user, status, id, due ('' for
# none), channel.
_ADD = LuaScript(
    """
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'user', ARGV[2], 'status', ARGV[3],
           'token', 0, 'owner', '')
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4]) end
redis.call('PUBLISH', ARGV[6], ARGV[4])
return 1
"""
)
_CLAIM = LuaScript(
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[5] .. id
  local token = redis.call('HINCRBY', k, 'token', 1)
  redis.call('HSET', k, 'owner', ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  local v = redis.call('HMGET', k, 'body', 'status')
  table.insert(out, token)
  table.insert(out, v[1])
  table.insert(out, v[2])
end
return out
"""
)
_EXTEND = LuaScript(
    """
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[1] or
   redis.call('HGET', KEYS[2], 'status') ~= 'active' then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
)
_RELEASE = LuaScript(
    """
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[1] or
   redis.call('HGET', KEYS[2], 'status') ~= 'active' then return 0 end
redis.call('HSET', KEYS[2], 'body', ARGV[2], 'status', ARGV[3], 'owner', '')
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[1], ARGV[5])
else
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[5])
end
return 1
"""
)
_CANCEL = LuaScript(
    """
if redis.call('HGET', KEYS[2], 'status') ~= 'active' then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], 'user') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], 'status', 'cancelled', 'owner', '')
redis.call('HINCRBY', KEYS[2], 'token', 1)
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""
)


class RedisJobStore:
    """A :class:`~onethread.session.jobs.base.JobStore` on Redis (see the module doc).

    Args:
        url: ``redis://[:password@]HOST:PORT/DB``.
        prefix: namespace of the keys (default ``onethread:``).
        max_connections: the pool's size; callers beyond it wait (30 s at most).

    Concurrency: safe from any task, loop, process or host. ``_clients`` (a
    ``PerLoop``) guards the connection pools; :meth:`wait_changed` keeps one
    pub/sub connection of its own.
    """

    def __init__(
        self, url: str, *, prefix: str = "onethread:", max_connections: int = 64, **options: Any
    ) -> None:
        self.url = url
        self.prefix = validate_prefix(prefix, url)
        self._cluster = is_cluster(url)
        self._k = f"{self.prefix}{group_tag('jobs', self._cluster)}:"
        self._due = self._k + "due"
        self._channel = self._k + "changed"
        opts: dict[str, Any] = {"decode_responses": True, **options}

        async def create(home: bool) -> AsyncClient:
            # A burst of deliveries waits for a free connection instead of failing.
            client = async_client(
                url, {"max_connections": max_connections, "pool_timeout": 30, **opts}
            )
            try:
                await check_layout_async(client, self._k + "layout", LAYOUT, url)
            except BaseException:
                await client.aclose()
                raise
            return client

        async def destroy(client: AsyncClient) -> None:
            await client.aclose()

        self._clients: PerLoop[AsyncClient] = PerLoop(create, destroy, what="this job store")
        self._pubsub: Any = None
        self._listen_node = 0  # which node of a cluster the change listener uses

    def _key(self, job_id: str) -> str:
        return f"{self._k}job:{job_id}"

    async def _call(self, fn: Any) -> Any:
        try:
            async with self._clients.borrow() as client:
                return await fn(client)
        except RedisError as exc:
            raise store_error(self.url, exc) from exc

    async def add(self, job: Job) -> None:
        """Store a new active job and tell the other hosts."""

        async def run(client: AsyncClient) -> None:
            keys = [
                self._key(job.id),
                self._k + "ids",
                f"{self._k}user:{job.unified_user_id}",
                self._due,
            ]
            due = "" if job.due is None else repr(float(job.due))
            args = [job.to_json(), job.unified_user_id, job.status, job.id, due, self._channel]
            await _ADD.run(client, keys, args)

        await self._call(run)

    async def get(self, job_id: str) -> Job | None:
        """The job or ``None``."""

        async def run(client: AsyncClient) -> Job | None:
            body, status = await client.hmget(self._key(job_id), ["body", "status"])
            return None if body is None else Job.from_json(str(body), status=str(status))

        result: Job | None = await self._call(run)
        return result

    async def find(self, user: str | None = None, *, finished: bool = False) -> list[Job]:
        """Active (and with ``finished``, all) jobs, soonest first."""

        async def run(client: AsyncClient) -> list[Job]:
            index = f"{self._k}user:{user}" if user is not None else self._k + "ids"
            ids = sorted(str(i) for i in await client.smembers(index))
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self._key(job_id), ["body", "status"])
            jobs = []
            for body, status in await pipe.execute() if ids else []:
                if body is not None and (finished or status == "active"):
                    jobs.append(Job.from_json(body, status=status))
            return jobs

        jobs: list[Job] = await self._call(run)
        return sorted(jobs, key=lambda j: (j.next_run, j.id))

    async def cancel(self, job_id: str, user: str | None = None) -> bool:
        """Cancel an active job (only ``user``'s when given)."""

        async def run(client: AsyncClient) -> bool:
            done = await _CANCEL.run(client, [self._due, self._key(job_id)], [job_id, user or ""])
            if done:
                await client.publish(self._channel, job_id)
            return bool(done)

        result: bool = await self._call(run)
        return result

    async def claim(self, now: float, owner: str, lease: float, limit: int) -> list[Claim]:
        """Take up to ``limit`` due jobs until ``now + lease``, atomically."""
        until = now + lease

        async def run(client: AsyncClient) -> list[Claim]:
            flat = await _CLAIM.run(
                client,
                [self._due],
                [repr(now), repr(until), owner, limit, self._k + "job:"],
            )
            claims = []
            for i in range(0, len(flat), 3):
                token, body, status = flat[i : i + 3]
                claims.append(Claim(Job.from_json(body, status=status), int(token), until))
            return claims

        result: list[Claim] = await self._call(run)
        return result

    async def extend(self, job_id: str, token: int, until: float) -> bool:
        """Move the lease to ``until`` while ``token`` is current."""

        async def run(client: AsyncClient) -> bool:
            keys = [self._due, self._key(job_id)]
            return bool(await _EXTEND.run(client, keys, [str(token), repr(until), job_id]))

        result: bool = await self._call(run)
        return result

    async def release(self, job: Job, token: int) -> bool:
        """Write ``job`` back while ``token`` is current."""
        due = "" if job.due is None else repr(job.due)

        async def run(client: AsyncClient) -> bool:
            keys = [self._due, self._key(job.id)]
            args = [str(token), job.to_json(), job.status, due, job.id]
            return bool(await _RELEASE.run(client, keys, args))

        result: bool = await self._call(run)
        return result

    async def next_due(self) -> float | None:
        """The earliest due time of any active job."""

        async def run(client: AsyncClient) -> float | None:
            first = await client.zrange(self._due, 0, 0, withscores=True)
            return float(first[0][1]) if first else None

        result: float | None = await self._call(run)
        return result

    async def wait_changed(self, timeout: float) -> None:
        """Wait for a job added or cancelled on any host, or ``timeout`` seconds."""
        try:
            if self._pubsub is None:
                client = self._listener()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                self._pubsub = (client, pubsub)
            pubsub = self._pubsub[1]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(0.0, timeout)
            while (left := deadline - loop.time()) > 0:
                reraise_swallowed_cancel()
                # In steps of a second: redis-py can swallow a cancel that lands while
                # it reads (redis/redis-py#2028); each step notices one that did.
                message = await pubsub.get_message(timeout=min(left, 1.0))
                reraise_swallowed_cancel()  # redis-py may have eaten a cancel meanwhile
                if message is not None:
                    return
        except RedisError as exc:
            self._listen_node += 1  # on a cluster: the next node next time
            await self._drop_pubsub()
            raise store_error(self.url, exc) from exc

    def _listener(self) -> redis.asyncio.Redis:
        """A client for the change channel: on a cluster, a plain connection to one
        node (classic pub/sub messages reach every node of a cluster)."""
        if not self._cluster:
            return redis.asyncio.Redis.from_url(self.url, decode_responses=True)
        nodes, kwargs = cluster_nodes(self.url)
        host, port = nodes[self._listen_node % len(nodes)]
        return redis.asyncio.Redis(host=host, port=port, decode_responses=True, **kwargs)

    async def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            client, pubsub = self._pubsub
            self._pubsub = None
            try:
                await pubsub.aclose()
            finally:
                await client.aclose()

    async def get_zone(self, user: str) -> str | None:
        """The person's zone name, if set."""

        async def run(client: AsyncClient) -> str | None:
            value = await client.hget(self._k + "zones", user)
            return None if value is None else str(value)

        result: str | None = await self._call(run)
        return result

    async def set_zone(self, user: str, zone: str | None) -> None:
        """Set or clear the person's zone name."""

        async def run(client: AsyncClient) -> None:
            if zone is None:
                await client.hdel(self._k + "zones", user)
            else:
                await client.hset(self._k + "zones", user, zone)

        await self._call(run)

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        await self._drop_pubsub()
        await self._clients.aclose()
