"""Shared plumbing of the Redis back-ends: the import guard, clients, key layout, errors.

Every Redis back-end (history, identity, turn locks, duplicate filter, outbox)
keeps its keys under one prefix (default ``onethread:``) and records the
layout it wrote in ``{prefix}{component}:layout``. A layout newer than the
code knows is a :class:`~onethread.errors.SchemaVersionError`, never silently
misread.

**Redis Cluster.** A ``redis+cluster://HOST:PORT[,HOST:PORT...]/`` URL
(``rediss+cluster://`` for TLS; any node of the cluster will do, more are
tried in turn at start-up) opens redis-py's cluster client instead. Redis
Cluster runs a script or a transaction only when every key it touches hashes
to one slot, so cluster deployments name their keys with hash tags
(:func:`session_tag`, :func:`group_tag`): every key of one conversation
carries ``{SESSION KEY}`` (its summaries and archive, ``KEY#summary`` and
``KEY#archived``, the same tag: one slot per conversation, lock included),
and each global structure a tag of its own (``{identity}``, ``{jobs}``,
``{outbox}``). A single server keeps its untagged layout, so existing data
needs no rewrite; the layout marker tells the two apart, and data is moved
from one to the other with ``onethread redis-to-cluster`` (see
docs/scaling.md), never reinterpreted.

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
from urllib.parse import unquote

from ...errors import MissingDependencyError, SchemaVersionError, StoreError, StoreUnavailable
from .shared import redact

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("the Redis back-end", "redis") from exc

__all__ = [
    "CLUSTER_SCHEMES",
    "AsyncClient",
    "Batched",
    "SyncClient",
    "cluster_nodes",
    "group_tag",
    "is_cluster",
    "session_tag",
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

# What a Redis call can raise: redis-py's errors, and on a cluster its cluster-level
# errors too (``RedisClusterException``, e.g. no node reachable), which are not
# ``RedisError`` s. Use in ``except`` and ``isinstance``.
RedisError = (redis.RedisError, redis.exceptions.RedisClusterException)
_OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    *(
        cls
        for name in ("RedisClusterUnreachableError", "SlotNotCoveredError")
        if isinstance(cls := getattr(redis.exceptions, name, None), type)
    ),
)
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster(url: str) -> bool:
    """True for a ``redis+cluster://`` / ``rediss+cluster://`` URL."""
    return url.partition(":")[0].lower() in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The nodes and connection options of a ``redis+cluster://`` URL.

    ``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/[0][?OPTION=VALUE...]``;
    the options are those of a ``redis://`` URL (``socket_timeout=``, ...).
    ``ValueError`` naming the fix for anything else (a database other than 0:
    a cluster has only database 0).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL: {url!r}; write redis+cluster://HOST:PORT,...")
    netloc, _, tail = rest.partition("/")
    netloc, _, query = netloc.partition("?")
    path, _, q2 = tail.partition("?")
    query = query or q2
    userinfo, at, hosts = netloc.rpartition("@")
    if path not in ("", "0"):
        raise ValueError(
            f"Redis Cluster has only database 0, not {path!r}: end the URL with / or /0"
        )
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(
                f"bad Redis Cluster node {item!r}: write redis+cluster://HOST:PORT[,HOST:PORT...]/"
            )
        nodes.append((host, int(port)))
    single = "rediss" if scheme.lower().startswith("rediss") else "redis"
    auth = f"{userinfo}@" if at else ""
    first = f"{single}://{auth}{nodes[0][0]}:{nodes[0][1]}/0?{query}"
    kwargs: dict[str, Any] = dict(redis.connection.parse_url(first))  # type: ignore[no-untyped-call]
    for name in ("host", "port", "db", "connection_class"):
        kwargs.pop(name, None)
    if single == "rediss":
        kwargs["ssl"] = True
    for name in ("username", "password"):
        if isinstance(kwargs.get(name), str):
            kwargs[name] = unquote(kwargs[name])
    return nodes, kwargs


def session_tag(key: str, cluster: bool) -> str:
    """How session ``key`` appears in key names: as it is on one server; on a
    cluster with its conversation part (up to the first ``#``) as the hash tag,
    ``{user:alice}#summary``, so a conversation, its summaries, its archive and
    its turn lock share one slot. The form is reversible (the inserted ``}``
    sits right before the first ``#``, or at the end).

    ``ValueError`` on a cluster for a key whose tag would be empty (an empty
    key, or one starting with ``#`` or ``}``): Redis would hash such key names
    whole and scatter the conversation over several slots.
    """
    if not cluster:
        return key
    base, sep, rest = key.partition("#")
    if not base or base.startswith("}"):
        raise ValueError(
            f"session key {key!r} cannot be stored on Redis Cluster: its hash tag would be "
            "empty; session keys must not be empty or start with '#' or '}'"
        )
    return f"{{{base}}}{sep}{rest}"


def group_tag(name: str, cluster: bool) -> str:
    """A global structure's name in key names: ``name`` on one server, ``{name}``
    on a cluster (every key of that structure in one slot, e.g. all of ``{jobs}``)."""
    return f"{{{name}}}" if cluster else name


POOL_SIZE = 16  # connections per client (one client per store and event loop)
POOL_TIMEOUT = 30.0  # seconds a call waits for a free connection
CLUSTER_POOL_SIZE = 64  # connections per cluster node (redis-py's cluster pools do not wait)


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


class _WaitingCluster(redis.asyncio.cluster.RedisCluster):
    """redis-py's asyncio cluster client whose single calls wait for a free turn
    (see :func:`async_client`) instead of failing with ``MaxConnectionsError``.

    ``waiting`` is (semaphore, pool size, seconds to wait); the semaphore
    belongs to the client's event loop, as the client does.
    """

    waiting: tuple[asyncio.Semaphore, int, float]

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        slots, size, timeout = self.waiting
        try:
            async with asyncio.timeout(timeout):
                await slots.acquire()
        except TimeoutError:
            raise PoolExhausted(size, timeout) from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            slots.release()


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

    On a cluster (``client`` a ``RedisCluster``) the pipeline is redis-py's
    cluster pipeline: each command goes to the node serving its key's slot
    (every back-end's command or script touches one slot), one round trip per
    node, with redirections followed as for single calls.
    """

    def __init__(self, client: AsyncClient, max_inflight: int = 4) -> None:
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


def async_client(url: str, options: dict[str, Any]) -> AsyncClient:
    """A ``redis.asyncio`` client on a waiting pool (see the module docstring).

    ``options`` go to the connection, except ``max_connections`` (pool size)
    and ``pool_timeout`` (seconds to wait for a free connection, then
    :class:`PoolExhausted`). ``ValueError`` for impossible values.

    A ``redis+cluster://`` URL gives redis-py's ``RedisCluster`` (as
    :class:`_WaitingCluster`): its pools are per node, ``max_connections``
    (default :data:`CLUSTER_POOL_SIZE`) each. redis-py's cluster pools fail
    at once when full (``MaxConnectionsError``), so single calls wait for a
    turn instead (at most ``max_connections - 8`` at once, ``pool_timeout``
    seconds, then :class:`PoolExhausted`), leaving room for the pipelines of
    :class:`Batched` (at most a few in flight, one connection per node each).
    """
    opts, size, timeout = _pool_options(options)
    if is_cluster(url):
        nodes, kwargs = cluster_nodes(url)
        size = int(options.get("max_connections", CLUSTER_POOL_SIZE))
        if size < 16:
            raise ValueError("max_connections must be >= 16 on Redis Cluster (per node)")
        client = _WaitingCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes],
            max_connections=size,
            **{**kwargs, **opts},
        )
        client.waiting = (asyncio.Semaphore(size - 8), size, timeout)
        return client
    pool = _WaitingPool.from_url(url, max_connections=size, timeout=timeout, **opts)
    return redis.asyncio.Redis.from_pool(pool)


def sync_client(url: str, options: dict[str, Any]) -> SyncClient:
    """As :func:`async_client`, for the blocking client (redis-py's own timeout
    error, ``ConnectionError("No connection available.")``, when the pool stays full).
    A ``redis+cluster://`` URL gives redis-py's blocking ``RedisCluster``."""
    opts, size, timeout = _pool_options(options)
    if is_cluster(url):
        nodes, kwargs = cluster_nodes(url)
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
            **{**kwargs, **opts},
        )
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=size, timeout=timeout, **opts)
    return redis.Redis.from_pool(pool)


def store_error(url: str, exc: BaseException) -> StoreError:
    """Map a driver error to ``StoreError`` naming the (redacted) server.

    An unreachable server (refused, timed out, connection dropped, still
    loading its data) is :class:`StoreUnavailable`: an outage, not a bug.
    """
    where = f"Redis at {redact(url)}"
    if isinstance(exc, _OUTAGES):  # on a cluster also: down, no node reachable
        return StoreUnavailable(where, str(exc) or type(exc).__name__)
    return StoreError(f"{where}: {exc}")


def validate_prefix(prefix: str, url: str = "") -> str:
    """Return ``prefix`` if usable as a key prefix, else raise ``ValueError``.

    On a cluster (``url`` a ``redis+cluster://`` URL) a ``{`` in the prefix
    must be closed by a ``}``: the prefix then holds the hash tag of every
    key (the whole deployment in one slot, which works but spreads nothing).
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("prefix must be a non-empty string, e.g. 'onethread:'")
    if url and is_cluster(url) and "{" in prefix and "}" not in prefix.partition("{")[2]:
        raise ValueError(
            f"prefix {prefix!r} opens a hash tag with '{{' but does not close it; on Redis "
            "Cluster that scatters a conversation's keys over several slots: drop the '{'"
        )
    return prefix


_CLUSTER_MARK = "cluster:"  # a cluster layout's marker: "cluster:{version}"


def _marker(known: int, url: str) -> str:
    return f"{_CLUSTER_MARK}{known}" if is_cluster(url) else str(known)


def _compare(where: str, found: Any, known: int, url: str = "") -> int:
    text = found.decode() if isinstance(found, bytes) else str(found)
    cluster = bool(url) and is_cluster(url)
    if text.startswith(_CLUSTER_MARK) and not cluster:
        raise StoreError(
            f"{where} holds the Redis Cluster key layout ({text!r}); open it with a "
            "redis+cluster://HOST:PORT,... URL"
        )
    if cluster and not text.startswith(_CLUSTER_MARK):
        raise StoreError(
            f"{where} holds the single-server key layout ({text!r}), which a cluster "
            "cannot run (its scripts span slots); copy it into the cluster with "
            "'onethread redis-to-cluster SOURCE_URL CLUSTER_URL' instead of copying keys"
        )
    try:
        version = int(text.removeprefix(_CLUSTER_MARK))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{where}: unreadable layout version {found!r}") from exc
    if version > known:
        raise SchemaVersionError(where, version, known)
    return version


def check_layout(client: SyncClient, key: str, known: int, url: str) -> None:
    """Record layout ``known`` at ``key`` if none is; refuse a newer one, or one
    written for the other topology (single server / cluster), sync client."""
    client.set(key, _marker(known, url), nx=True)
    _compare(f"Redis at {redact(url)}, key {key!r}", client.get(key), known, url)


async def check_layout_async(client: AsyncClient, key: str, known: int, url: str) -> None:
    """As :func:`check_layout`, for the asyncio client."""
    await client.set(key, _marker(known, url), nx=True)
    _compare(f"Redis at {redact(url)}, key {key!r}", await client.get(key), known, url)


# ARGV: version, marker prefix ("" on one server, "cluster:" on a cluster).
_UPGRADE_LAYOUT_SRC = """
local found = redis.call('GET', KEYS[1])
if not found then
  redis.call('SET', KEYS[1], ARGV[2] .. ARGV[1])
  return ARGV[2] .. ARGV[1]
end
if string.sub(found, 1, #ARGV[2]) ~= ARGV[2] then return found end
local n = tonumber(string.sub(found, #ARGV[2] + 1))
if n and n < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2] .. ARGV[1])
end
return found
"""


async def upgrade_layout_async(client: AsyncClient, key: str, known: int, url: str) -> int:
    """Record layout ``known`` at ``key``, raising an older one to it; refuse a newer one.

    For layouts whose older versions need no rewrite (entries are
    self-describing and a newer field is simply absent): the upgrade is the
    version change, done atomically by one script whoever runs it first.
    Returns the version found before (``known`` for a new prefix).
    """
    mark = _CLUSTER_MARK if is_cluster(url) else ""
    found = await _UPGRADE_LAYOUT.run(client, [key], [known, mark])
    return _compare(f"Redis at {redact(url)}, key {key!r}", found, known, url)


class LuaScript:
    """A Lua script run by SHA (``EVALSHA``), loaded on first use by any client.

    Scripts run atomically in Redis: nothing else executes between their
    commands, which is how the back-ends make multi-key writes all-or-nothing.
    Immutable; safe to share between clients, loops and threads.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(self, client: AsyncClient, keys: Sequence[str], args: Sequence[Any]) -> Any:
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

    def send(
        self, batched: Batched, keys: Sequence[str], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """Queue the script on ``batched`` now; the future gets its reply.

        Unlike :meth:`call`, the command is queued before this returns, so it
        is sent even if the caller is cancelled while waiting (a lock release
        in a ``finally``, with no task to shield).
        """
        loop = asyncio.get_running_loop()
        outer: asyncio.Future[Any] = loop.create_future()

        def settle(done: asyncio.Future[Any], retried: bool) -> None:
            if outer.done():
                return
            if done.cancelled():
                outer.cancel()
                return
            exc = done.exception()
            if isinstance(exc, redis.exceptions.NoScriptError) and not retried:
                again = batched.call("EVAL", self.source, len(keys), *keys, *args)
                again.add_done_callback(lambda f: settle(f, True))
            elif exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(done.result())

        first = batched.call("EVALSHA", self.sha, len(keys), *keys, *args)
        first.add_done_callback(lambda f: settle(f, False))
        # A caller cancelled meanwhile never reads an error: mark it read, no log noise.
        outer.add_done_callback(lambda f: f.cancelled() or f.exception())
        return outer

    def run_sync(self, client: SyncClient, keys: Sequence[str], args: Sequence[Any]) -> Any:
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
