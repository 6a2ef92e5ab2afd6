"""Turn locks and the duplicate filter: one turn at a time per session key.

In-process versions live here; the Redis and PostgreSQL back-ends provide
shared ones with the same shape, so several hosts can serve one set of users.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = ["DuplicateFilter", "LocalDuplicateFilter", "LocalTurnLocks", "TurnLocks"]


@runtime_checkable
class TurnLocks(Protocol):
    """Serialises work on one session key: ``async with locks.hold(key): ...``."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait for, then hold, the lock of ``key`` for the ``async with`` block."""
        ...


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holders + waiters


class _Hold(AbstractAsyncContextManager[None]):
    """``LocalTurnLocks.hold(key)``: a plain class, as it runs on every turn."""

    __slots__ = ("_key", "_locks", "_slot")

    def __init__(self, locks: dict[str, _Slot], key: str) -> None:
        self._locks = locks
        self._key = key
        self._slot: _Slot | None = None

    async def __aenter__(self) -> None:
        slot = self._locks.get(self._key)
        if slot is None:
            slot = self._locks[self._key] = _Slot()
        slot.users += 1
        self._slot = slot
        try:
            await slot.lock.acquire()
        except BaseException:
            self._leave(slot)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.lock.release()
            self._leave(slot)

    def _leave(self, slot: _Slot) -> None:
        slot.users -= 1
        if slot.users == 0 and self._locks.get(self._key) is slot:
            del self._locks[self._key]


class LocalTurnLocks:
    """Per-key FIFO ``asyncio.Lock`` s, created on demand and dropped when unused.

    ``_locks`` maps key -> slot (lock, holders+waiters); it is touched only from the
    event loop thread between awaits, so it needs no lock of its own (the
    loop's single thread guards it). Memory stays proportional to the keys
    in use right now, not to every key ever seen.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _Slot] = {}

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold ``key``'s lock for the block; waiters are served in arrival order."""
        return _Hold(self._locks, key)

    def __len__(self) -> int:
        return len(self._locks)


@runtime_checkable
class DuplicateFilter(Protocol):
    """Answers each platform message once: ``first_time(id)`` is True only once per id."""

    async def first_time(self, message_key: str) -> bool:
        """Record ``message_key``; True if it had not been seen (within the filter's window)."""
        ...


class LocalDuplicateFilter:
    """A bounded, time-limited set of seen message keys.

    Keeps at least the ``max_size // 2`` most recently accepted keys (a
    refused repeat does not count as new), at most ``max_size``: two plain
    dicts, ``_current`` and ``_previous``; when ``_current`` is full it
    becomes ``_previous`` and the old ``_previous`` is dropped. Plain dicts
    of ``str`` to ``float`` are invisible to CPython's cyclic garbage
    collector, so a full filter (100,000 keys) adds nothing to a full
    collection's pause (an ``OrderedDict`` of that size added ~1.5 ms
    to each).

    Both dicts are touched only from the event loop thread (no awaits inside),
    which guards them.
    """

    def __init__(self, max_size: int = 100_000, ttl: float = 24 * 3600.0) -> None:
        if max_size < 2:
            raise ValueError(f"max_size must be at least 2, got {max_size}")
        self.max_size = max_size
        self.ttl = ttl
        self._current: dict[str, float] = {}
        self._previous: dict[str, float] = {}

    async def first_time(self, message_key: str) -> bool:
        """True the first time ``message_key`` is offered within ``ttl`` seconds."""
        now = time.monotonic()
        seen_at = self._current.get(message_key)
        if seen_at is None:
            seen_at = self._previous.get(message_key)
        if seen_at is not None and now - seen_at < self.ttl:
            return False
        current = self._current
        if len(current) >= self.max_size // 2 and message_key not in current:
            self._previous = current
            current = self._current = {}
        current[message_key] = now
        return True
