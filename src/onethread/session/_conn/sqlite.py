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
:func:`store_error` maps a driver error to ``StoreError`` naming the file,
and for a full disk the fix; :class:`Guard` is a lock whose block does the
same.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TypeVar

from ...errors import StoreError

__all__ = ["Guard", "is_busy", "is_full", "mapped_errors", "retry_busy", "store_error"]

T = TypeVar("T")
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_busy(exc: BaseException) -> bool:
    """True when SQLite refused because another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF in _BUSY


def is_full(exc: BaseException) -> bool:
    """True when SQLite could not write because the disk (or the quota) is full."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    )


def store_error(path: str | os.PathLike[str], exc: sqlite3.Error) -> StoreError:
    """``exc`` as a ``StoreError`` naming the file; a full disk also names the fix."""
    if is_full(exc):
        folder = os.path.dirname(os.path.abspath(path))
        return StoreError(
            f"{path}: the disk is full ({exc}); free space on the disk that holds {folder}. "
            "A SQLite store needs room for its data plus its write-ahead log "
            f"({os.path.basename(path)}-wal), which it keeps to about a quarter of the "
            "free space (up to ~80 MB where space is ample)"
        )
    if is_busy(exc):
        return StoreError(f"{path}: locked by another process ({exc})")
    return StoreError(f"{path}: {exc}")


@contextlib.contextmanager
def mapped_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Raise any ``sqlite3.Error`` of the block as :func:`store_error` (``from`` it)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise store_error(path, exc) from exc


class Guard:
    """A ``threading.Lock`` for ``with``, whose block's ``sqlite3.Error`` leaves as
    :func:`store_error` (the stores that serialise one connection with a lock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = path
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise store_error(self._path, exc) from exc


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
