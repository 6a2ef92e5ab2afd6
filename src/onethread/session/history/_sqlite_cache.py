"""The SQLite history store's read cache: the newest entries of recently used keys.

Part of ``sqlite.py`` (see its module docstring, *Read cache*); split out to
keep each module to one job. Touched only on the thread of the event loop
that owns the store's loop connection.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict

from ._gc import untrack_all
from .base import HistoryEntry

__all__ = ["TailCache"]

_SELECT_LAST_IDS = "SELECT id FROM entries WHERE key = ? ORDER BY ts DESC, id DESC LIMIT ?"


class _Tail:
    """The newest entries of one key (oldest first) and their row ids."""

    __slots__ = ("complete", "entries", "epoch", "ids", "want")

    def __init__(
        self, entries: list[HistoryEntry], ids: list[int], complete: bool, want: int, epoch: int
    ) -> None:
        self.entries = entries
        self.ids = ids
        self.complete = complete  # these are all the key's entries
        self.want = want  # the largest limit asked for: how many entries to keep
        self.epoch = epoch  # the cache epoch in which they were last known exact


class TailCache:
    """Up to ``budget`` entries (plus one per key), least recently used keys dropped.

    Exact, not a guess. :meth:`see_version` gets ``PRAGMA data_version`` before
    every use; when it changed, another connection committed, and each cached
    key is checked once (the ids of its newest rows, an index-only read)
    before it is served again. The owner reports its own commits
    (:meth:`appended`, :meth:`drop`), which do not change ``data_version``.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._tails: OrderedDict[str, _Tail] = OrderedDict()
        self._size = 0
        self._version = -1
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._tails)

    def see_version(self, version: int) -> None:
        """Record the connection's ``PRAGMA data_version`` (read just before a load)."""
        if version != self._version:
            self._version = version
            self._epoch += 1

    def get(
        self, conn: sqlite3.Connection, key: str, limit: int | None
    ) -> list[HistoryEntry] | None:
        """The last ``limit`` entries of ``key`` (all if None), or None when not cached.

        May read the key's row ids through ``conn`` (and raise its errors).
        """
        tail = self._tails.get(key)
        if tail is None:
            return None
        entries = tail.entries
        if not (tail.complete or (limit is not None and limit <= len(entries))):
            return None
        if tail.epoch != self._epoch:
            if not _still_exact(conn, key, tail):
                self.drop(key)
                return None
            tail.epoch = self._epoch
        self._tails.move_to_end(key)
        return entries[-limit:] if limit is not None else entries[:]

    def remember(
        self, key: str, entries: list[HistoryEntry], ids: list[int], complete: bool, want: int
    ) -> None:
        """Keep what a load just read (``entries`` and ``ids``: the newest rows, oldest first)."""
        if self.budget <= 0:
            return
        untrack_all(entries)  # kept for long: out of the cyclic collector's walk (see _gc)
        old = self._tails.pop(key, None)
        if old is not None:
            self._size -= len(old.entries) + 1
            want = max(want, old.want)
        self._tails[key] = _Tail(entries, ids, complete, want, self._epoch)
        self._size += len(entries) + 1
        self._shrink()

    def appended(self, key: str, added: list[HistoryEntry], first_id: int) -> None:
        """Our own commit stored ``added`` under ``key`` as rows ``first_id``, ``first_id+1``..."""
        tail = self._tails.get(key)
        if tail is None:
            return
        entries = tail.entries
        last = entries[-1].timestamp if entries else float("-inf")
        for entry in added:
            if entry.timestamp < last:  # it sorts before cached rows: read again next time
                self.drop(key)
                return
            last = entry.timestamp
        untrack_all(added)
        entries.extend(added)
        tail.ids.extend(range(first_id, first_id + len(added)))
        self._size += len(added)
        excess = len(entries) - tail.want
        if excess > 0:
            del entries[:excess]
            del tail.ids[:excess]
            tail.complete = False
            self._size -= excess
        self._tails.move_to_end(key)
        self._shrink()

    def drop(self, key: str) -> None:
        """Forget ``key`` (its rows changed in a way the cache cannot follow)."""
        tail = self._tails.pop(key, None)
        if tail is not None:
            self._size -= len(tail.entries) + 1

    def clear(self) -> None:
        """Forget everything."""
        self._tails.clear()
        self._size = 0

    def _shrink(self) -> None:
        while self._size > self.budget and self._tails:
            _, dropped = self._tails.popitem(last=False)
            self._size -= len(dropped.entries) + 1


def _still_exact(conn: sqlite3.Connection, key: str, tail: _Tail) -> bool:
    """Whether the newest rows of ``key`` are still exactly the cached ones.

    Rows are never edited in place (only appended, deleted, or moved to
    another key), so the same ids mean the same entries.
    """
    n = len(tail.ids)
    ids = [row[0] for row in conn.execute(_SELECT_LAST_IDS, (key, n + 1))]
    ids.reverse()
    if tail.complete:
        return ids == tail.ids
    return len(ids) >= n and ids[len(ids) - n :] == tail.ids
