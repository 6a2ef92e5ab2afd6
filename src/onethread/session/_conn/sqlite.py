"""Helpers shared by the stores kept in SQLite files (history, identity, pairing).

:func:`is_busy` tells a lock held by another connection from a real error.
:func:`retry_busy` runs a set-up step again while SQLite answers busy.
SQLite waits out its busy timeout for most locks, but some answers come at
once, without the busy handler (``SQLITE_BUSY_SNAPSHOT``, for one: a write
starting from a snapshot another process has just moved past). The
four-process history test met such an answer while opening a file that
three other processes were committing to, under load (once in CI in each of
two sessions; we did not see it again in 15 quiet runs), and the store
reported the file as corrupt.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["is_busy", "retry_busy"]

T = TypeVar("T")
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_busy(exc: BaseException) -> bool:
    """True when SQLite refused because another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF in _BUSY


def retry_busy(step: Callable[[], T], timeout: float) -> T:
    """Run ``step``; while SQLite answers busy, wait a little and run it again,
    for ``timeout`` seconds at most (then the busy error is raised)."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
