"""Turn locks and the duplicate filter shared by several hosts through Redis.

``RedisTurnLocks``: one turn at a time per session key across every host on
the same Redis. The lock is ``SET {prefix}lock:{key} <token> NX PX <lease>``;
the holder renews it every ``lease/3`` seconds (compare-and-``PEXPIRE``) and
releases it with compare-and-delete, both Lua scripts, so a host never
extends or frees a lock it no longer holds. A host that dies mid-turn stops
renewing, and its lock expires at most ``lease`` seconds later. Each
acquisition also increments ``{prefix}lock:{key}:fence``: the lease's fencing
token. A holder that cannot renew before its lease runs out is stopped with
:class:`~onethread.errors.TurnLockLost` (see ``locks._shared``).

``RedisDuplicateFilter``: ``SET {prefix}seen:{id} 1 NX PX <ttl>``; the first
host to record an id wins.

On Redis Cluster (``redis+cluster://``) the lock keys carry the session's
hash tag, ``{prefix}lock:{user:alice}`` and ``{prefix}lock:{user:alice}:fence``
(see ``_conn.redis.session_tag``), so the acquire script touches one slot, the
slot of the person's history. Renewals go through the same pipelines as the
other calls (``Batched``): a cluster's per-node pools do not wait for a free
connection, so a thousand turns renewing at once must not each take one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from contextlib import AbstractAsyncContextManager
from typing import Any

from ...errors import StoreUnavailable, TurnLockLost
from .._conn.redis import (
    Batched,
    LuaScript,
    RedisError,
    async_client,
    check_pool_options,
    is_cluster,
    reraise_swallowed_cancel,
    session_tag,
    store_error,
    validate_prefix,
)
from .._conn.shared import PerLoop
from ..outage import store_failed
from ._shared import Lease, local_locks
from .base import LocalTurnLocks

__all__ = ["RedisDuplicateFilter", "RedisTurnLocks"]

log = logging.getLogger("onethread.locks")

# KEYS: lock, fence. ARGV: token, lease ms. Returns {fence, 0} or {0, ms left}.
_ACQUIRE = LuaScript("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {redis.call('INCR', KEYS[2]), 0}
end
return {0, redis.call('PTTL', KEYS[1])}
""")
# KEYS: lock. ARGV: token, lease ms. Returns 1 if still ours (and extended).
_RENEW = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""")
# KEYS: lock. ARGV: token. Returns 1 if it was ours.
_RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")

_WAIT_MIN, _WAIT_MAX = 0.002, 0.025


class _Clients(PerLoop[Batched]):
    """``redis.asyncio`` clients per event loop (see ``PerLoop``), whose
    concurrent calls share pipelines (see ``Batched``)."""

    def __init__(self, url: str, options: dict[str, Any], what: str) -> None:
        check_pool_options(options)

        async def create(home: bool) -> Batched:
            return Batched(async_client(url, options))

        async def destroy(client: Batched) -> None:
            await client.aclose()

        super().__init__(create, destroy, what=what)


class RedisTurnLocks:
    """Per-session-key turn locks shared by every host on one Redis (see the module doc).

    Args:
        url: ``redis://[:password@]HOST:PORT/DB``.
        lease: seconds a lock outlives its holder's last renewal (the time a
            dead host keeps a person waiting). Renewed every ``lease/3``.
        prefix: namespace of the lock keys (default ``onethread:``).
        **options: passed to the ``redis.asyncio`` connections, except
            ``max_connections`` (pool size, default 16) and ``pool_timeout``
            (seconds a call waits for a free connection, default 30).

    ``hold(key)`` (the ``TurnLocks`` protocol) and ``lease(key)`` (which
    yields the :class:`Lease` with its fencing token) wait for the lock.
    Waiters in one process queue in arrival order on a local lock first, so
    only one task per process polls Redis for a key; across hosts the next
    holder is whoever polls first after a release (2 to 25 ms).

    Errors: ``StoreError`` if Redis fails while acquiring; ``TurnLockLost``
    if the lock could not be renewed in time. Calls after :meth:`close` raise
    ``RuntimeError``.

    Concurrency: ``_local`` maps each event loop to its ``LocalTurnLocks``
    (a ``WeakKeyDictionary``, touched only from the loop's own thread for its
    own entry; CPython makes single dict operations atomic); ``_clients``
    guards the connection pools (see ``PerLoop``).
    """

    def __init__(
        self, url: str, lease: float = 30.0, *, prefix: str = "onethread:", **options: Any
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be > 0 seconds")
        self.url = url
        self.lease_seconds = lease
        self.prefix = validate_prefix(prefix, url)
        self._cluster = is_cluster(url)
        self._lease_ms = max(1, round(lease * 1000))
        self._clients = _Clients(url, {"decode_responses": True, **options}, "these turn locks")
        self._local: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalTurnLocks] = (
            weakref.WeakKeyDictionary()
        )

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait for, then hold, ``key``'s lock for the ``async with`` block."""
        return _Held(self, key)

    def lease(self, key: str) -> AbstractAsyncContextManager[Lease]:
        """As :meth:`hold`, yielding the :class:`Lease` (``.fence``, ``.lost``)."""
        return _Held(self, key)

    def __len__(self) -> int:
        """Session keys with a turn holding or waiting for a lock in this process."""
        return sum(len(locks) for locks in list(self._local.values()))

    async def close(self) -> None:
        """Close the connection pools. Locks still held expire with their lease."""
        await self._clients.aclose()

    # -- internals -------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self.prefix}lock:{session_tag(key, self._cluster)}"

    async def _acquire(self, client: Batched, key: str) -> tuple[Lease, float]:
        """Poll until the lock is ours; return the lease and when it runs out (monotonic)."""
        token = uuid.uuid4().hex
        keys = [self._key(key), self._key(key) + ":fence"]
        wait = _WAIT_MIN
        while True:
            reraise_swallowed_cancel()
            sent = time.monotonic()
            try:
                fence, left_ms = await _ACQUIRE.call(client, keys, [token, self._lease_ms])
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
            if fence:
                return Lease(key, token, int(fence)), sent + self.lease_seconds
            left = int(left_ms) / 1000 if int(left_ms) > 0 else wait
            await asyncio.sleep(min(wait, left))
            wait = min(wait * 1.5, _WAIT_MAX)

    def _first_renewal(self, valid_until: float) -> float:
        """Seconds from now until a new lease's first renewal."""
        margin = min(0.05, self.lease_seconds / 10)
        return min(self.lease_seconds / 3, max(0.0, valid_until - time.monotonic() - margin))

    async def _renew(
        self, client: Batched, lease: Lease, valid_until: float, *, slept: bool = False
    ) -> None:
        """Extend the lease every ``lease/3`` s; mark it lost if that fails until it runs out.

        ``valid_until`` is counted from when the request that set the expiry
        was sent, so the local idea of the lease never outlives Redis's.
        ``slept``: the first wait (:meth:`_first_renewal`) is already over.
        """
        margin = min(0.05, self.lease_seconds / 10)
        interval = self.lease_seconds / 3
        while True:
            if not slept:
                await asyncio.sleep(
                    min(interval, max(0.0, valid_until - time.monotonic() - margin))
                )
            slept = False
            reraise_swallowed_cancel()
            sent = time.monotonic()
            if sent >= valid_until - margin:
                lease.mark_lost(f"not renewed within its {self.lease_seconds:g} s lease")
                return
            try:
                still_ours = await asyncio.wait_for(
                    _RENEW.call(client, [self._key(lease.key)], [lease.token, self._lease_ms]),
                    timeout=valid_until - sent - margin,
                )
            except (*RedisError, OSError, TimeoutError) as exc:
                log.warning("renewing the turn lock of %r failed: %s", lease.key, exc)
                interval = min(interval, 0.25)  # retry soon, while the lease lasts
                continue
            if not still_ours:
                lease.mark_lost("it expired and was taken or deleted")
                return
            valid_until, interval = sent + self.lease_seconds, self.lease_seconds / 3

    async def _release(self, client: Batched, lease: Lease) -> None:
        # Queued at once (no task): a cancelled caller still sends the release.
        sent = _RELEASE.send(client, [self._key(lease.key)], [lease.token])
        try:
            await asyncio.shield(sent)
        except RedisError as exc:
            # Not fatal: the lock expires with its lease; other hosts wait until then.
            error = store_error(self.url, exc)
            if isinstance(error, StoreUnavailable):  # an outage: one line for all of it
                store_failed(error, f"releasing the turn lock of {lease.key!r}; it expires")
            else:
                log.warning("releasing the turn lock of %r failed (%s); it expires", lease.key, exc)


class _Held(AbstractAsyncContextManager[Any]):
    """``RedisTurnLocks.hold(key)`` / ``lease(key)``: a plain class, as it runs on
    every turn (no generator, and no task per turn: the renewal task starts
    from a timer only when a turn outlives a third of its lease).

    Entering waits for the process's local lock of ``key``, then for the Redis
    lock; the body runs as the lease's holder (``locks._shared.guard``'s
    rules: a lease lost while held cancels the body, which then ends in
    ``TurnLockLost``). Leaving stops the renewal and releases both locks.
    Used by one task; not reusable.
    """

    __slots__ = ("_borrow", "_client", "_key", "_lease", "_local", "_locks", "_renewer", "_timer")

    def __init__(self, locks: RedisTurnLocks, key: str) -> None:
        self._locks = locks
        self._key = key
        self._lease: Lease | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lease:
        locks = self._locks
        self._local = local_locks(locks._local).hold(self._key)
        await self._local.__aenter__()
        try:
            home = locks._clients.home_client()
            self._borrow = None if home is not None else locks._clients.borrow()
            client = home if self._borrow is None else await self._borrow.__aenter__()
            assert client is not None
            self._client = client
            try:
                lease, valid_until = await locks._acquire(client, self._key)
            except BaseException as exc:
                if self._borrow is not None:
                    await self._borrow.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        except BaseException:
            await self._local.__aexit__(None, None, None)
            raise
        self._lease = lease
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            locks._first_renewal(valid_until), self._start_renewer, valid_until
        )
        lease.task = asyncio.current_task()
        return lease

    def _start_renewer(self, valid_until: float) -> None:
        self._timer = None
        assert self._lease is not None
        renew = self._locks._renew(self._client, self._lease, valid_until, slept=True)
        self._renewer = asyncio.get_running_loop().create_task(renew)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        lease = self._lease
        assert lease is not None
        task, lease.task = lease.task, None
        try:
            if isinstance(exc, asyncio.CancelledError):
                if lease._cancelled and task is not None:
                    lease._cancelled = False
                    if task.uncancel() == 0:
                        raise TurnLockLost(lease.key, lease.reason) from None
            elif exc is None and lease.lost:
                if lease._cancelled and task is not None:
                    lease._cancelled = False
                    task.uncancel()  # the body swallowed our cancellation; do not leak it
                raise TurnLockLost(lease.key, lease.reason)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if self._renewer is not None:
                self._renewer.cancel()
            try:
                await self._locks._release(self._client, lease)
            finally:
                try:
                    if self._borrow is not None:
                        await self._borrow.__aexit__(None, None, None)
                finally:
                    await self._local.__aexit__(None, None, None)
        return False


class RedisDuplicateFilter:
    """The ``DuplicateFilter`` shared by every host on one Redis.

    ``first_time(id)`` is True for exactly one call per id (across hosts)
    within ``ttl`` seconds. Errors: ``StoreError`` if Redis fails (the caller
    decides whether to answer or drop); ``RuntimeError`` after :meth:`close`.
    Concurrency: safe from many tasks and hosts; ``_clients`` as in
    ``RedisTurnLocks``.
    """

    def __init__(
        self, url: str, *, ttl: float = 24 * 3600.0, prefix: str = "onethread:", **options: Any
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        self.url = url
        self.ttl = ttl
        self.prefix = validate_prefix(prefix, url)
        self._clients = _Clients(url, {"decode_responses": True, **options}, "this filter")

    async def first_time(self, message_key: str) -> bool:
        """Record ``message_key``; True if no host had recorded it within ``ttl``."""
        client = self._clients.home_client()
        if client is None:
            async with self._clients.borrow() as client:
                return await self._record(client, message_key)
        return await self._record(client, message_key)

    async def _record(self, client: Batched, message_key: str) -> bool:
        try:
            added = await client.call(
                "SET",
                f"{self.prefix}seen:{message_key}",
                1,
                "NX",
                "PX",
                max(1, round(self.ttl * 1000)),
            )
        except RedisError as exc:
            raise store_error(self.url, exc) from exc
        return bool(added)

    async def close(self) -> None:
        """Close the connection pools."""
        await self._clients.aclose()
