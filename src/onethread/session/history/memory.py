"""``memory://``: an in-process history store (tests, ephemeral bots)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from .base import HistoryEntry, SessionSummary

__all__ = ["MemoryHistoryStore"]


class MemoryHistoryStore:
    """History kept in a dict; gone when the process ends.

    ``_lock`` (a ``threading.Lock``) guards ``_rows`` and ``_seq``, so the store
    may be used from the event loop and from ``asyncio.run`` in other threads
    (``mirror_to_session`` from a plain thread) at once. No call awaits while
    holding it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, list[tuple[float, int, HistoryEntry]]] = {}
        self._seq = itertools.count()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("this history store is closed")

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key``, oldest first."""
        with self._lock:
            self._check()
            rows = self._rows.get(key, ())
            picked = rows[-limit:] if limit is not None and limit > 0 else rows
            if limit == 0:
                picked = []
            return [row[2] for row in picked]

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` atomically (one lock hold), keeping time order."""
        with self._lock:
            self._check()
            rows = self._rows.setdefault(key, [])
            needs_sort = False
            for entry in entries:
                if rows and entry.timestamp < rows[-1][0]:
                    needs_sort = True
                rows.append((entry.timestamp, next(self._seq), entry))
            if needs_sort:
                rows.sort(key=lambda r: (r[0], r[1]))

    async def clear(self, key: str) -> int:
        """Delete ``key``'s entries; return how many there were."""
        with self._lock:
            self._check()
            return len(self._rows.pop(key, ()))

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move ``src_key``'s entries into ``dst_key``, ordered by time."""
        if src_key == dst_key:
            return 0
        with self._lock:
            self._check()
            moved = self._rows.pop(src_key, [])
            if moved:
                rows = self._rows.setdefault(dst_key, [])
                rows.extend(moved)
                rows.sort(key=lambda r: (r[0], r[1]))
            return len(moved)

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        with self._lock:
            self._check()
            return len(self._rows.get(key, ()))

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """Most recently used sessions first."""
        with self._lock:
            self._check()
            out = [
                SessionSummary(
                    key=key,
                    count=len(rows),
                    last_timestamp=rows[-1][0],
                    platforms=tuple(sorted({r[2].platform for r in rows if r[2].platform})),
                )
                for key, rows in self._rows.items()
                if rows
            ]
        out.sort(key=lambda s: s.last_timestamp, reverse=True)
        return out[:limit]

    async def close(self) -> None:
        """Mark the store closed; the data is dropped."""
        with self._lock:
            self._closed = True
            self._rows.clear()
