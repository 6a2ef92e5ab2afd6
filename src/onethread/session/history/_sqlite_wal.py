"""The SQLite history store's WAL syncer: small, frequent syncs of the WAL file.

Part of ``sqlite.py`` (see its module docstring, *WAL syncs*); split out to
keep each module to one job.

Why: a checkpoint must sync the WAL before it copies frames into the
database. Syncing a file that another thread keeps appending to stalls that
thread's writes now and then, for about as long as the sync takes to write
what piled up: up to 5-8 ms on our test VM with a sync every 200 ms at
~70 MB/s of appends, never over 0.4 ms with one every 10 ms (measured with a
plain writer thread and a syncing thread; see docs/performance.md). The loop
thread appends every turn to the WAL, so a few of those stalls a second were
the largest part of the turn latency tail. Syncing at most every ``every``
seconds while turns are committed keeps each sync small, and the
checkpoint's own sync then finds little left to write.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from pathlib import Path

__all__ = ["WalSyncer"]

log = logging.getLogger("onethread.history.sqlite")

_sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
_MAX_BACKOFF = 60.0  # seconds between attempts while syncing fails
# Windows flushes only a handle opened for writing; POSIX syncs any descriptor.
_OPEN_FLAGS = (os.O_RDWR if os.name == "nt" else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0)


class WalSyncer:
    """Syncs the WAL of the database ``db_path`` on ``executor`` (the store's one
    worker thread), at most every ``every`` seconds, one sync at a time.

    :meth:`committed` runs on the loop thread after each commit and owns
    ``_next``, ``_job`` and ``_backoff``; :meth:`sync` and :meth:`close` run on
    the worker thread and own ``_fd``. Nothing is shared between the two but
    the future. ``db_path`` may be a symlink: SQLite keeps the WAL next to
    the real file, so that is the one synced.

    A sync that fails is logged and tried again after 1 s, then 2, 4... up to
    60 s (a disk failing every 10 ms would otherwise fill the log); the
    first one that works again is logged too. SQLite's own checkpoints sync
    meanwhile, and report their own errors.
    """

    def __init__(
        self, db_path: Path, executor: concurrent.futures.Executor, every: float = 0.01
    ) -> None:
        self.db_path = db_path
        self.every = every
        self._executor = executor
        self._next = 0.0
        self._job: concurrent.futures.Future[None] | None = None
        self._fd: int | None = None
        self.syncs = 0  # completed syncs (for tests and diagnostics)
        self._backoff = 0.0  # seconds to wait after a failed sync (0: the last one worked)

    def committed(self) -> None:
        """A commit wrote to the WAL: have it synced, unless a sync ran very recently."""
        job = self._job
        if job is not None:
            if not job.done():
                return
            self._job = None
            error = job.exception()
            if error is not None:
                self._backoff = min(_MAX_BACKOFF, self._backoff * 2 or 1.0)
                self._next = time.monotonic() + self._backoff
                log.error(
                    "syncing %s failed: %s; trying again in %.0f s (until then turns may "
                    "stall while checkpoints sync the WAL: check the disk)",
                    self.wal_path(),
                    error,
                    self._backoff,
                )
                return
            if self._backoff:
                log.warning("syncing %s works again", self.wal_path())
                self._backoff = 0.0
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        self._job = self._executor.submit(self.sync)

    def sync(self) -> None:
        """Flush the WAL file to disk (worker thread). No WAL yet: nothing to do."""
        fd = self._fd
        if fd is not None and os.fstat(fd).st_nlink == 0:  # deleted and made anew
            self.close()
            fd = None
        if fd is None:
            try:
                fd = self._fd = os.open(self.wal_path(), _OPEN_FLAGS)
            except FileNotFoundError:
                return
        _sync(fd)
        self.syncs += 1

    @property
    def failing(self) -> bool:
        """Whether the last sync failed (and the next waits for its back-off)."""
        return self._backoff > 0

    def wal_path(self) -> str:
        """Where SQLite keeps the WAL: next to the database file, symlinks resolved."""
        return os.path.realpath(self.db_path) + "-wal"

    def close(self) -> None:
        """Close the file (worker thread)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
