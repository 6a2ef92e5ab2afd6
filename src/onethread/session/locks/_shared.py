"""What the shared (Redis, PostgreSQL) turn locks have in common: leases.

A shared turn lock is held through a :class:`Lease`. If the lock is lost
while held (the Redis lease could not be renewed in time, the PostgreSQL
session holding the advisory lock died), another host may take it, so the
holder must stop: the lease is marked lost and the task holding it is
cancelled, and the ``async with`` block ends in :class:`TurnLockLost`
instead of finishing a turn that could now overlap another host's.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ...errors import TurnLockLost
from .base import LocalTurnLocks

__all__ = ["Lease", "TurnLockLost", "end_hold", "guard", "local_locks"]


@dataclass(eq=False, slots=True)
class Lease:
    """One holding of a shared turn lock.

    ``fence`` grows with every acquisition of the same key (Redis: ``INCR``),
    so a store can refuse writes stamped with an older fence. ``lost`` is set
    (with ``reason``) when the lock was lost while held. Touched only on the
    event loop thread of the task that holds it.
    """

    key: str
    token: str
    fence: int
    task: asyncio.Task[object] | None = None
    lost: bool = False
    reason: str = ""
    _cancelled: bool = field(default=False, repr=False)

    def mark_lost(self, reason: str) -> None:
        """Mark the lease lost and cancel the task that holds it (once)."""
        if self.lost:
            return
        self.lost, self.reason = True, reason
        if self.task is not None and not self.task.done():
            self._cancelled = True
            self.task.cancel(f"turn lock of {self.key!r} lost: {reason}")


def end_hold(lease: Lease, exc: BaseException | None) -> None:
    """End ``lease``'s holding by its task (the ``__aexit__`` twin of :func:`guard`).

    ``exc`` is what ended the ``async with`` body. A cancellation that came from
    :meth:`Lease.mark_lost` becomes ``TurnLockLost`` (raised); a body that ended
    normally on a lost lease raises ``TurnLockLost`` too, after taking back the
    cancellation it swallowed. Anything else is left to propagate unchanged.
    """
    task, lease.task = lease.task, None
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


@asynccontextmanager
async def guard(lease: Lease) -> AsyncIterator[Lease]:
    """Run the ``async with`` body as ``lease``'s holder; a lost lease ends it in ``TurnLockLost``.

    Records the current task in ``lease.task``. A cancellation that came from
    :meth:`Lease.mark_lost` becomes ``TurnLockLost``; any other cancellation
    propagates unchanged.
    """
    task = asyncio.current_task()
    lease.task = task
    try:
        yield lease
    except asyncio.CancelledError:
        if lease._cancelled and task is not None:
            lease._cancelled = False
            if task.uncancel() == 0:
                raise TurnLockLost(lease.key, lease.reason) from None
        raise
    finally:
        lease.task = None
    if lease.lost:
        if lease._cancelled and task is not None:
            lease._cancelled = False
            task.uncancel()  # the body swallowed our cancellation; do not leak it
        raise TurnLockLost(lease.key, lease.reason)


def local_locks(
    table: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalTurnLocks],
) -> LocalTurnLocks:
    """The running loop's in-process locks from ``table`` (made on first use).

    Shared locks queue a process's waiters here first, in arrival order, so
    only one task per process and key asks the server. Each loop touches only
    its own entry, from its own thread.
    """
    loop = asyncio.get_running_loop()
    local = table.get(loop)
    if local is None:
        local = table.setdefault(loop, LocalTurnLocks())
    return local
