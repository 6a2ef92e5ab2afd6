"""People spread over several servers (shards): history, turn locks and duplicate filter.

When one PostgreSQL server is not enough, give each shard a ``postgresql://``
URL (and schema) and let :func:`postgres_shards` wire the deployment:

```python
from onethread.session.sharding import postgres_shards

shards = postgres_shards(
    ["postgresql://bots@10.0.0.6/bots", "postgresql://bots@10.0.0.7/bots"], schema="onethread"
)
BotOS(Agent("assistant"), platforms=["telegram", "discord"], store=shards.history,
      identity_resolver=shards.identity, coordination=shards.coordination,
      jobs=shards.jobs).run()
```

Routing: a session key goes to shard ``shard_index(key, n)``, a stable hash
(BLAKE2b) of the key without its ``#summary`` / ``#archived`` suffix. So a
person's session (``user:alice``), its summaries and its archive live on one
shard, and the turn lock of that key lives on the same shard as its history
(the lock and the data it guards fail together). A platform message id goes
to the shard of its own hash (the duplicate filter needs only one place per id).

Identity (the links between accounts and people) spans platforms and is read
whole into every host's memory, so it is not sharded: it lives on the first
shard, with the outbox and the job store (a few rows per person, not per
turn). Linking an account to a person can move its pre-link history
(``bot_telegram_123``) to another shard: :meth:`ShardedHistoryStore.merge`
copies, then deletes, and a copy found already made is not made twice, so a
host that dies between the two steps leaves no duplicate behind for the next
merge (the manager holds both keys' turn locks meanwhile).

The shard list is part of the deployment: every host must use the same list
in the same order, and it never changes order or length (that would move
people). Plan for growth with more shards than servers (e.g. 8 schemas on 2
servers); a new server then takes whole schemas (``pg_dump -n``), and only
those shards' URLs change. ``tests/test_sharding.py`` runs two shards as two
schemas of one server.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence, Sized
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple

from ._conn.shared import redact
from .history.base import HistoryEntry, HistoryStore, SessionSummary
from .locks._shared import Lease
from .locks.base import DuplicateFilter, TurnLocks
from .urls import Coordination

__all__ = [
    "Shards",
    "ShardedDuplicateFilter",
    "ShardedHistoryStore",
    "ShardedTurnLocks",
    "postgres_shards",
    "shard_index",
]


def shard_index(key: str, shards: int) -> int:
    """The shard (0 .. ``shards`` - 1) of session key ``key``, the same in every process.

    Derived keys (``{key}#summary``, ``{key}#archived``) go with ``key``.
    """
    if shards <= 0:
        raise ValueError("shards must be >= 1")
    base = key.partition("#")[0]
    digest = hashlib.blake2b(base.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def _identity(e: HistoryEntry) -> tuple[object, ...]:
    """What tells two entries apart (HistoryEntry holds a dict: not hashable)."""
    return (e.role, e.content, e.timestamp, e.platform, e.chat_id, e.user_id, e.message_id,
            e.mirror, e.source)  # fmt: skip


def _check(parts: Sequence[Any], what: str) -> list[Any]:
    parts = list(parts)
    if not parts:
        raise ValueError(f"{what} needs at least one shard")
    return parts


class ShardedHistoryStore:
    """A ``HistoryStore`` over several stores, each key on the shard of :func:`shard_index`.

    Args:
        stores: one history store per shard, in the deployment's fixed order.

    Every call goes to one shard except :meth:`merge` across shards (copy,
    then delete; see the module docstring) and :meth:`sessions` (asks every
    shard). Errors are the shards' own. Concurrency: as safe as the stores it
    routes to; it keeps no state of its own.
    """

    def __init__(self, stores: Sequence[HistoryStore]) -> None:
        self.stores: list[HistoryStore] = _check(stores, "ShardedHistoryStore")

    def store_for(self, key: str) -> HistoryStore:
        """The store that holds ``key``."""
        return self.stores[shard_index(key, len(self.stores))]

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key`` (all when ``None``), oldest first."""
        return await self.store_for(key).load(key, limit)

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` (one transaction on its shard)."""
        await self.store_for(key).append(key, entries)

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; how many were deleted."""
        return await self.store_for(key).clear(key)

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        return await self.store_for(key).count(key)

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move ``src_key``'s entries to ``dst_key``; how many moved.

        On one shard, the shard's own merge (one statement). Across shards: the
        entries are copied to ``dst_key`` unless every one of them is already
        there (an earlier merge that stopped between its two steps), then
        deleted from ``src_key``. Hold both keys' turn locks while merging.
        """
        if src_key == dst_key:
            return 0
        src, dst = self.store_for(src_key), self.store_for(dst_key)
        if src is dst:
            return await src.merge(src_key, dst_key)
        moving = await src.load(src_key)
        if not moving:
            return 0
        present = Counter(map(_identity, await dst.load(dst_key)))
        if Counter(map(_identity, moving)) - present:  # not all there yet: copy
            await dst.append(dst_key, moving)
        await src.clear(src_key)
        return len(moving)

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """The most recently used sessions of every shard, newest first."""
        found = [s for store in self.stores for s in await store.sessions(limit)]
        found.sort(key=lambda s: s.last_timestamp, reverse=True)
        return found[: max(0, limit)]

    async def close(self) -> None:
        """Close every shard's store."""
        for store in self.stores:
            await store.close()


class ShardedTurnLocks:
    """``TurnLocks`` over several, each key's lock on the shard of its history.

    ``hold(key)`` (and ``lease(key)`` when the shards' locks have it) route by
    :func:`shard_index`, so a key's fencing tokens all come from one shard and
    keep growing. Concurrency: no state of its own.
    """

    def __init__(self, locks: Sequence[TurnLocks]) -> None:
        self.locks: list[TurnLocks] = _check(locks, "ShardedTurnLocks")

    def locks_for(self, key: str) -> TurnLocks:
        """The locks that guard ``key``."""
        return self.locks[shard_index(key, len(self.locks))]

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait for, then hold, ``key``'s lock on its shard."""
        return self.locks_for(key).hold(key)

    def lease(self, key: str) -> AbstractAsyncContextManager[Lease]:
        """As :meth:`hold`, yielding the shard's :class:`Lease` (fencing token)."""
        lease: AbstractAsyncContextManager[Lease] = self.locks_for(key).lease(key)  # type: ignore[attr-defined]
        return lease

    def __len__(self) -> int:
        """Keys with a turn holding or waiting for a lock in this process."""
        return sum(len(part) for part in self.locks if isinstance(part, Sized))

    async def close(self) -> None:
        """Close every shard's locks."""
        for part in self.locks:
            close = getattr(part, "close", None)
            if close is not None:
                await close()


class ShardedDuplicateFilter:
    """A ``DuplicateFilter`` over several: each message id is recorded on one shard
    (by :func:`shard_index` of the id), so exactly one host sees it first."""

    def __init__(self, filters: Sequence[DuplicateFilter]) -> None:
        self.filters: list[DuplicateFilter] = _check(filters, "ShardedDuplicateFilter")

    async def first_time(self, message_key: str) -> bool:
        """True if no host had recorded ``message_key`` (within the shard's ttl)."""
        return await self.filters[shard_index(message_key, len(self.filters))].first_time(
            message_key
        )

    async def close(self) -> None:
        """Close every shard's filter."""
        for part in self.filters:
            close = getattr(part, "close", None)
            if close is not None:
                await close()


class Shards(NamedTuple):
    """A sharded deployment's parts: pass them to ``BotOS`` / ``BotSessionManager``.

    ``history`` and ``coordination.locks`` / ``.duplicates`` are sharded;
    ``identity``, ``coordination.outbox`` and ``jobs`` live on the first shard.
    """

    history: ShardedHistoryStore
    identity: Any  # PostgresIdentityResolver
    coordination: Coordination
    jobs: Any  # PostgresJobStore


def postgres_shards(shards: Sequence[str | tuple[str, str]], *, schema: str = "public") -> Shards:
    """Open a deployment sharded over PostgreSQL servers.

    The identity resolver connects to the first shard at once (and raises
    ``StoreError`` if it cannot); the sharded parts connect on first use.

    ``shards``: one ``postgresql://`` URL per shard, or ``(url, schema)`` for a
    shard in a schema of its own (several shards can share a server).
    ``schema`` is the schema of the shards given as plain URLs.
    """
    from .history.postgres import PostgresHistoryStore
    from .identity.postgres import PostgresIdentityResolver
    from .jobs.postgres import PostgresJobStore
    from .locks.postgres import PostgresDuplicateFilter, PostgresTurnLocks
    from .outbox.postgres import PostgresOutbox

    places = [(s, schema) if isinstance(s, str) else (s[0], s[1]) for s in shards]
    if not places:
        raise ValueError("postgres_shards needs at least one postgresql:// URL")
    for url, _ in places:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"a shard must be a postgresql:// URL, not {redact(url)!r}")
    first_url, first_schema = places[0]
    return Shards(
        history=ShardedHistoryStore([PostgresHistoryStore(u, schema=s) for u, s in places]),
        identity=PostgresIdentityResolver(first_url, schema=first_schema),
        coordination=Coordination(
            ShardedTurnLocks([PostgresTurnLocks(u, schema=s) for u, s in places]),
            ShardedDuplicateFilter([PostgresDuplicateFilter(u, schema=s) for u, s in places]),
            PostgresOutbox(first_url, schema=first_schema),
            True,
        ),
        jobs=PostgresJobStore(first_url, schema=first_schema),
    )
