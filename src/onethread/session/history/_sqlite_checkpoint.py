"""The SQLite history store's checkpoints: copying the WAL into the database
on the worker thread without ever stalling the event loop.

Part of ``sqlite.py`` (the store, whose module docstring describes the two
connections); split out to keep each module to one job. :class:`Checkpoints`
is mixed into ``SQLiteHistoryStore`` and works on its attributes: the pins,
``_quiet`` and ``_flushing`` (the handshake with the loop, see ``_flush``
there) and the worker connection.

**Checkpoints.** The loop connection and, once the loop side is in use, the
worker's never checkpoint on their own (``wal_autocheckpoint=0``). Every
``CHECKPOINT_ROWS`` rows the worker copies the WAL into the database (``PRAGMA
wal_checkpoint(PASSIVE)``, with its fsyncs) while the loop goes on committing.
A WAL found wholly copied is started afresh by the next commit, which syncs
the new WAL header; so that this commit is never the loop's, no pass on the
move copies everything: the loop begins a read transaction on a connection of
its own (``_pin``) just before the commit that triggers the checkpoint, and a
checkpoint stops at the oldest reader's snapshot.

A checkpoint that finds the WAL holding at least ``RESTART_FRAMES`` frames
(64 MB; it would otherwise grow for ever under steady load) starts it afresh:

1. further passes, each up to a newer pin (``_pin2`` and ``_pin`` in turn,
   asked of the loop), copy what came meanwhile, until a pass copies at most
   ``SMALL_PASS`` frames (or ``MAX_PASSES`` have run);
2. then the worker sets ``_quiet`` (the loop holds its commits back), ends
   every pin, copies the rest and starts the WAL afresh with a commit of its
   own that changes nothing (``RESTART``), syncing the new header itself.

The same step 2 happens once when the loop side starts, as the WAL may be
empty. Rows the worker itself committed (rare: only what the loop could
not, because another connection held the write lock) are checkpointed every
``CHECKPOINT_ROWS`` with no pin: the loop's commits are held back through
that whole pass and the restart (:meth:`Checkpoints._worker_checkpoint`).
On the loop's own path, turns wait for step 2 (a full checkpoint truncates and syncs the database
file, then the header sync: 2-7 ms on our test VM), about once a second at
10,000 turns/s; the loop itself never waits. The threshold is checked at
checkpoints, so the WAL overshoots it: its file peaked at ~80 MB at 10,000
turns/s. SQLite reuses the file from the start rather than shrinking it.
(A checkpoint run by another process, e.g. the CLI writing while the bot is
idle, could still leave that one header sync to the loop's next commit.)

**Little free space.** Each turn committed alone adds 3 to 8 WAL frames
(12-32 KiB) whatever its size, so at those thresholds the WAL alone would
need ~80 MB of disk before its first restart, and a store on a nearly full
disk failed after a few dozen turns. So the worker measures the free space at
each checkpoint (:func:`room_limits`) and keeps the WAL to about a quarter of
it (plus what its file already holds): it restarts the WAL at half that
budget, checkpoints every budget/16 rows, and (``journal_size_limit``, set
at the claim) has SQLite cut the file back to the budget when it starts the
WAL afresh, so a burst does not hold the disk for good. Below about 1 GB free,
checkpoints come more often than ``CHECKPOINT_ROWS``; below 512 MB the
restart comes before ``RESTART_FRAMES``. With more room nothing changes.
Figures: ``benchmarks/bench_disk_room.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from .._conn.sqlite import is_busy
from ._sqlite_sql import begin_read

log = logging.getLogger("onethread.history.sqlite")

CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
# A commit that changes nothing (same row, same rowid) but writes a page: the
# first commit after a checkpoint copied the whole WAL starts it afresh.
RESTART = "REPLACE INTO schema_version (rowid, version) SELECT rowid, version FROM schema_version"

CHECKPOINT_ROWS = 4096  # rows committed on the loop between checkpoints (1-2 WAL pages each)
SMALL_PASS = 256  # WAL frames (1 MB): a pass copying no more leaves little for the last one
RESTART_FRAMES = 16_384  # start the WAL afresh once it is this long (64 MB of 4 KiB pages)
MAX_PASSES = 6  # checkpoint passes, each up to a newer pin, before that last one
WAL_SHARE = 4  # the WAL may take 1/WAL_SHARE of the free space (see *Little free space*)
MIN_RESTART_FRAMES = 16  # 64 KiB: below this, restarts would come every turn or two
MIN_CHECKPOINT_ROWS = 2


def room_limits(path: Path, page_size: int) -> tuple[int, int]:
    """(restart frames, checkpoint rows) that keep the WAL of the database at
    ``path`` to about a quarter of the space it can use (free space plus its
    file's current size; see *Little free space*). The callers cap them by
    ``RESTART_FRAMES``/``CHECKPOINT_ROWS``: where room is ample, those decide."""
    wal = path.with_name(path.name + "-wal")
    try:
        held = os.path.getsize(wal)
    except OSError:
        held = 0
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return RESTART_FRAMES, CHECKPOINT_ROWS
    budget = (free + held) // WAL_SHARE // max(page_size, 512)  # frames the WAL may hold
    # Restart at half the budget; a checkpoint every budget/16 rows, as one row
    # committed alone adds 3 to 8 frames: between two looks the WAL grows by at
    # most about the other half.
    frames = max(MIN_RESTART_FRAMES, budget // 2)
    rows = max(MIN_CHECKPOINT_ROWS, budget // 16)
    return frames, rows


def _log_failure(job: concurrent.futures.Future[None]) -> None:
    """Report a checkpoint that failed on the worker (nobody awaits it)."""
    error = None if job.cancelled() else job.exception()
    if error is not None:
        log.error("checkpoint failed: %s", error, exc_info=error)


class Checkpoints:
    """Checkpoint and WAL-restart logic of ``SQLiteHistoryStore`` (a mixin).

    Runs on the worker thread except :meth:`_pin_for_checkpoint` and
    :meth:`_start_checkpoint` (loop thread). The attributes below are the
    store's; see its ``__init__`` for what guards each.
    """

    _conn: sqlite3.Connection | None
    _pin: sqlite3.Connection | None
    _pin2: sqlite3.Connection | None
    _pin_asked: sqlite3.Connection | None
    _pin_taken: sqlite3.Connection | None
    _quiet: bool
    _flushing: bool
    _loop: asyncio.AbstractEventLoop | None
    _executor: concurrent.futures.ThreadPoolExecutor
    _checkpoint: concurrent.futures.Future[None] | None
    _since_checkpoint: int
    _worker_rows: int
    _connect: Callable[[], sqlite3.Connection]
    _resume: Callable[[], None]
    path: Path
    # Limits from the free space (worker thread writes, loop reads: plain ints,
    # atomic under the GIL; a stale value delays one checkpoint at most).
    _room_frames: int = 2**62
    _room_rows: int = 2**62
    _page_size: int = 4096

    def _measure_room(self, conn: sqlite3.Connection) -> None:
        """Recompute the free-space limits (worker thread; a statvfs and a stat)."""
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._room_frames, self._room_rows = room_limits(self.path, self._page_size)

    def _limit_wal_file(self, conn: sqlite3.Connection) -> None:
        """Short of space, have ``conn`` cut the WAL file back to the budget when
        it starts the WAL afresh: the file otherwise keeps its largest size, and
        one burst would hold that space for good. Measured once, at the claim."""
        if self._room_frames < RESTART_FRAMES:
            conn.execute(f"PRAGMA journal_size_limit = {2 * self._room_frames * self._page_size}")

    def _start_checkpoint(self, pin: sqlite3.Connection) -> None:
        """Hand a checkpoint pinned at ``pin`` to the worker (loop thread)."""
        self._since_checkpoint = 0
        self._checkpoint = self._executor.submit(self._run_checkpoint, pin)
        self._checkpoint.add_done_callback(_log_failure)
        self._checkpoint.add_done_callback(self._resume_soon)

    def _room_full(self) -> bool:
        """Hold the loop's commits (loop thread)? Only short of space (the limits
        are below ``CHECKPOINT_ROWS``: under ~1 GB free; with more room the loop
        never waits for a checkpoint, as before): the WAL has taken twice its
        checkpoint interval since the last checkpoint began, which has not
        finished (a busy loop can keep the worker waiting for the GIL while it
        commits a hundred turns). The checkpoint's end resumes them; a pin the
        worker asks for is let through (it needs the loop's next commit).
        """
        job = self._checkpoint
        return (
            self._room_rows < CHECKPOINT_ROWS
            and self._since_checkpoint >= 2 * self._room_rows
            and job is not None
            and not job.done()
            and self._pin_asked is None
        )

    def _resume_soon(self, _job: concurrent.futures.Future[None]) -> None:
        """A checkpoint ended (any thread): have the loop commit what waited."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(self._resume)

    def _worker_committed(self, conn: sqlite3.Connection, rows: int) -> None:
        """The worker committed ``rows`` rows: every ``CHECKPOINT_ROWS``, checkpoint them.

        A failed checkpoint is logged, not raised: the rows are stored.
        """
        self._worker_rows += rows
        if self._worker_rows >= min(CHECKPOINT_ROWS, self._room_rows) and self._loop is not None:
            self._worker_rows = 0  # writes that came this way checkpoint here
            try:
                self._measure_room(conn)
                self._worker_checkpoint(conn)
            except sqlite3.Error as exc:
                log.error("checkpoint failed: %s", exc, exc_info=exc)

    def _loop_owned(self) -> None:
        """Make sure the loop's first commit syncs nothing; then checkpoints are ours."""
        conn = self._connect()
        self._measure_room(conn)
        self._limit_wal_file(conn)
        self._hold_commits()  # held from __init__ at the first claim; not at a later one
        self._finish_checkpoint(conn)
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def _pin_for_checkpoint(self, rows: int) -> sqlite3.Connection | None:
        """Begin the pin's read transaction if these rows are due a checkpoint (else None)."""
        self._since_checkpoint += rows
        pin = self._pin
        if (
            pin is None
            or self._since_checkpoint < min(CHECKPOINT_ROWS, self._room_rows)
            or (self._checkpoint is not None and not self._checkpoint.done())
        ):
            return None
        return pin if begin_read(pin) else None  # busy: next time

    def _run_checkpoint(self, pin: sqlite3.Connection) -> None:
        """Copy the WAL into the database, off the loop (see *Checkpoints*).

        ``pin`` holds a read transaction begun just before one of the loop's
        commits, so the pass cannot copy every frame (which would let the
        loop's next commit start the WAL afresh and sync its header). Once the
        WAL holds ``RESTART_FRAMES`` frames (fewer on a disk short of space),
        it is started afresh
        (:meth:`_restart_wal`); until then a pass up to the pin is all.
        """
        restart = True  # after an error: the careful way (hold, copy the rest, restart)
        try:
            if self._conn is not None:
                self._measure_room(self._conn)
                _, frames, copied = self._conn.execute(CHECKPOINT).fetchone()
                restart = frames >= min(RESTART_FRAMES, self._room_frames)
                if restart:
                    pin = self._catch_up(pin, copied)
        finally:
            if restart:
                self._restart_wal(pin)
            else:
                pin.execute("COMMIT")

    def _catch_up(self, pin: sqlite3.Connection, copied: int) -> sqlite3.Connection:
        """More passes, each up to a newer pin, until one copies at most ``SMALL_PASS``
        frames (``copied``: how far the WAL is copied so far).

        Each copies what the loop committed during the one before (the newer
        pin is taken just after it). What the last one (:meth:`_restart_wal`,
        with the loop's commits held back) will copy is what arrives during
        this pass, which SQLite cannot tell us ahead; passes take about as long
        as each other, so this pass's count stands in for it, at most
        ``MAX_PASSES`` times. Returns the pin now held (on an error,
        :meth:`_restart_wal` ends any).
        """
        assert self._conn is not None
        for _ in range(MAX_PASSES):
            newer = self._newer_pin(pin)
            if newer is None:
                break
            pin.execute("COMMIT")
            pin = newer
            _, _, now = self._conn.execute(CHECKPOINT).fetchone()
            if now - copied <= SMALL_PASS:
                break  # the next pass has about as little to copy
            copied = now
        return pin

    def _restart_wal(self, pin: sqlite3.Connection) -> None:
        """Hold the loop's commits, end ``pin``, copy the rest, start the WAL afresh.

        The loop's turns wait for this (a full checkpoint truncates and syncs
        the database file once more, and the new WAL header is synced: a few
        milliseconds here), which is why it happens only once the WAL holds
        ``RESTART_FRAMES`` frames, not at every pass. Every pin still open
        is ended here (the loop touches no pin while its commits are held).
        """
        self._hold_commits()
        try:
            for held in (self._pin, self._pin2):
                if held is not None and held.in_transaction:
                    held.execute("COMMIT")
        finally:
            self._finish_checkpoint(pin)

    def _newer_pin(self, pin: sqlite3.Connection) -> sqlite3.Connection | None:
        """Have the loop pin its snapshot before its next commit (50 ms at most)."""
        other = self._pin2 if pin is self._pin else self._pin
        if other is None:
            return None
        self._pin_taken = None
        self._pin_asked = other
        deadline = time.monotonic() + 0.05
        while self._pin_taken is None and time.monotonic() < deadline:
            time.sleep(0.0002)
        self._pin_asked = None  # first our flag, then the loop's (see _flush)
        while self._flushing:
            time.sleep(0.0001)
        return self._pin_taken

    def _hold_commits(self) -> None:
        """Make the loop hold its commits back; return once none is under way."""
        self._quiet = True  # first our flag, then the loop's (see _flush)
        while self._flushing:
            time.sleep(0.0001)

    def _finish_checkpoint(self, writer: sqlite3.Connection) -> None:
        """With the loop's commits held back: copy the rest of the WAL, start it afresh
        with a commit of ``writer`` (its header sync is ours), then let the loop go on.

        A WAL that some reader keeps, or another writer's commit, is not started
        afresh by us; either way the loop's next commit only appends to it.
        """
        try:
            if self._conn is not None:
                busy, frames, copied = self._conn.execute(CHECKPOINT).fetchone()
                if not busy and copied == frames:
                    try:
                        writer.execute(RESTART)
                    except sqlite3.OperationalError as exc:
                        if not is_busy(exc):  # busy: another writer commits first
                            raise
        finally:
            self._release_commits()

    def _release_commits(self) -> None:
        """Let the loop commit again, and have it commit what waited meanwhile."""
        self._quiet = False
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(self._resume)

    def _worker_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL and start it afresh, for rows the worker committed.

        Rare: the worker commits only what the loop could not (another
        connection held the write lock). With no pin in place a pass could
        copy everything, so this one holds the loop's commits back throughout.
        """
        self._hold_commits()
        try:
            conn.execute("PRAGMA busy_timeout = 0")  # the loop waits: never for long
            try:
                self._finish_checkpoint(conn)
            finally:
                conn.execute("PRAGMA busy_timeout = 30000")
        finally:
            self._release_commits()  # (already, unless the pragma failed)
