"""``memory://``: an in-process history store (tests, ephemeral bots)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from ._gc import untrack
from .base import HistoryEntry, SessionSummary, is_side_key

__all__ = ["MemoryHistoryStore"]


class _Rows:
    """One key's entries in time order and, alongside, the order they were stored in.

    Two parallel lists rather than a list of ``(timestamp, seq, entry)``
    tuples: one tracked object per entry instead of two, which halves what a
    full garbage collection walks in a store that holds everything in memory.
    """

    __slots__ = ("entries", "seqs")

    def __init__(self) -> None:
        self.entries: list[HistoryEntry] = []
        self.seqs: list[int] = []  # a global counter: ties in time keep storing order

    def add(self, entry: HistoryEntry, seq: int) -> bool:
        """Append ``entry``; True when it sorts before the last one (a sort is due)."""
        entries = self.entries
        late = bool(entries) and entry.timestamp < entries[-1].timestamp
        untrack(entry)  # kept for long: out of the cyclic collector's walk (see _gc)
        entries.append(entry)
        self.seqs.append(seq)
        return late

    def extend(self, other: _Rows) -> None:
        self.entries.extend(other.entries)
        self.seqs.extend(other.seqs)

    def sort(self) -> None:
        entries = self.entries
        order = sorted(range(len(entries)), key=lambda i: (entries[i].timestamp, self.seqs[i]))
        self.entries = [entries[i] for i in order]
        self.seqs = [self.seqs[i] for i in order]


class MemoryHistoryStore:
    """History kept in a dict; gone when the process ends.

    ``_lock`` (a ``threading.Lock``) guards ``_rows`` and ``_seq``, so the store
    may be used from the event loop and from ``asyncio.run`` in other threads
    (``mirror_to_session`` from a plain thread) at once. No call awaits while
    holding it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, _Rows] = {}
        self._seq = itertools.count()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("this history store is closed")

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key``, oldest first."""
        with self._lock:
            self._check()
            rows = self._rows.get(key)
            if rows is None or limit == 0:
                return []
            return rows.entries[-limit:] if limit is not None and limit > 0 else rows.entries[:]

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` atomically (one lock hold), keeping time order."""
        with self._lock:
            self._check()
            rows = self._rows.get(key)
            if rows is None:
                rows = self._rows[key] = _Rows()
            needs_sort = False
            for entry in entries:
                needs_sort |= rows.add(entry, next(self._seq))
            if needs_sort:
                rows.sort()

    async def clear(self, key: str) -> int:
        """Delete ``key``'s entries; return how many there were."""
        with self._lock:
            self._check()
            rows = self._rows.pop(key, None)
            return len(rows.entries) if rows is not None else 0

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move ``src_key``'s entries into ``dst_key``, ordered by time."""
        if src_key == dst_key:
            return 0
        with self._lock:
            self._check()
            moved = self._rows.pop(src_key, None)
            if moved is None or not moved.entries:
                return 0
            rows = self._rows.get(dst_key)
            if rows is None:
                rows = self._rows[dst_key] = _Rows()
            rows.extend(moved)
            rows.sort()
            return len(moved.entries)

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        with self._lock:
            self._check()
            rows = self._rows.get(key)
            return len(rows.entries) if rows is not None else 0

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """Most recently used sessions first (summaries and archives are not sessions)."""
        with self._lock:
            self._check()
            out = [
                SessionSummary(
                    key=key,
                    count=len(rows.entries),
                    last_timestamp=rows.entries[-1].timestamp,
                    platforms=tuple(sorted({e.platform for e in rows.entries if e.platform})),
                )
                for key, rows in self._rows.items()
                if rows.entries and not is_side_key(key)
            ]
        out.sort(key=lambda s: s.last_timestamp, reverse=True)
        return out[:limit]

    async def close(self) -> None:
        """Mark the store closed; the data is dropped."""
        with self._lock:
            self._closed = True
            self._rows.clear()
