"""The in-process cache behind the shared (Redis, PostgreSQL) identity resolvers.

``resolve()`` is on every turn's hot path and synchronous, so the shared
resolvers never do network I/O in it: they answer from a :class:`LinkTable`
that a background thread keeps in step with the server.

How the cache stays fresh. Every change (``link`` or ``unlink`` that changes
something) increments a global version number in the same atomic step as the
write and publishes ``(version, account, new link or removal)`` on the
engine's notification channel (Redis pub/sub; PostgreSQL ``NOTIFY``). The
listener thread applies changes in version order. A change whose version is
not the next one (a notification was lost, or arrived out of order) makes it
reload the whole table from an atomic snapshot (all links plus the version).
It also reloads after every (re)connect, once subscribed, so nothing written
while it was away is missed; and every ``poll_interval`` seconds it compares
the server's version with its own, so even a silently lost last notification
is noticed.

Staleness bound (documented in docs/scaling.md, tested across two instances):

* a change made on one host is visible to ``resolve`` on every other host
  when its notification arrives: milliseconds on a LAN, tested under 1 s;
* if a notification is lost, within ``poll_interval`` (default 5 s) + 0.5 s;
* while the server is unreachable, ``resolve`` keeps answering from the last
  known links; the listener retries (0.05 s doubling to 2 s) and reloads
  everything when it is back;
* on the instance that made it, a change is visible as soon as ``link`` or
  ``unlink`` returns; ``links_for`` and ``all_links`` first catch up with the
  server's current version, so they reflect every change committed before
  they were called (on any host).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Iterable
from typing import NamedTuple

from ...errors import StoreError
from ._common import LinkTable, ResolverContextManager, validate_link_args
from .base import IdentityLink

__all__ = ["WAKEUP", "Change", "Snapshot", "SyncedResolver"]

log = logging.getLogger("onethread.identity")

_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
WAKEUP = 0.1  # seconds the listener may wait for news before checking for close and ticking


class Change(NamedTuple):
    """One change as published: ``link`` is the new link, ``None`` for a removal.

    ``complete`` is False when the notification carried only the version (too
    large to publish whole); the listener then reloads.
    """

    version: int
    platform: str
    platform_user_id: str
    link: IdentityLink | None
    complete: bool = True


class Snapshot(NamedTuple):
    """Every link and the version they are current at, read atomically."""

    version: int
    links: Iterable[IdentityLink]


class SyncedResolver(ResolverContextManager):
    """Base of the shared resolvers: cache, version, listener thread (see the module doc).

    Subclasses implement the ``_do_*`` server calls and ``_listen_once``.

    Concurrency: ``_lock`` (a ``threading.Lock``, also the ``_changed``
    condition's lock) guards ``_table`` swaps and mutations, ``_version`` and
    ``_closed``; no network I/O happens while it is held. ``resolve`` takes no
    lock: it reads ``_resolved`` (swapped in one atomic store) with two atomic
    ``dict.get``. Subclasses guard their own connections.
    """

    def __init__(self, *, where: str, poll_interval: float, sync_timeout: float) -> None:
        self._where = where
        self._poll_interval = poll_interval
        self._sync_timeout = sync_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._table = LinkTable()
        self._resolved = self._table.resolved
        self._version = -1
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._behind: tuple[int, float] | None = None
        self._next_poll = 0.0

    # -- what a back-end provides ---------------------------------------------

    @abstractmethod
    def _do_snapshot(self) -> Snapshot:
        """Read every link and the version atomically. Raises ``StoreError``."""

    @abstractmethod
    def _do_version(self) -> int:
        """The server's current version. Raises ``StoreError``."""

    @abstractmethod
    def _do_link(self, link: IdentityLink) -> int:
        """Store ``link`` unless the account already has that unified id.

        Returns the version after the call (the current one for a no-op).
        Raises ``StoreError``.
        """

    @abstractmethod
    def _do_claim(self, link: IdentityLink) -> tuple[bool, int]:
        """Store ``link`` unless another account has its unified id, atomically.

        Returns (the account is linked to it now?, the version after the
        call). Raises ``StoreError``.
        """

    @abstractmethod
    def _do_unlink(self, platform: str, platform_user_id: str) -> tuple[bool, int]:
        """Remove the account's link; (removed?, version after). Raises ``StoreError``."""

    @abstractmethod
    def _listen_once(self) -> None:
        """Subscribe, call :meth:`_resync`, then feed :meth:`_receive` until ``_stop`` is set.

        Call :meth:`_tick` every ``WAKEUP`` seconds or so. Raise on a connection
        failure (the caller reconnects).
        """

    @abstractmethod
    def _close_connections(self) -> None:
        """Close the back-end's connections (after the listener stopped)."""

    # -- the public API ----------------------------------------------------------

    def ping(self) -> None:
        """Ask the server for the link version once (readiness checks); raises on failure.

        Blocking: call it from a worker thread.
        """
        self._check_open()
        self._do_version()

    def resolve(self, platform: str, platform_user_id: str) -> str:
        """Return the unified id, or ``f"{platform}:{platform_user_id}"`` when unlinked.

        Answers from memory, never from the network (see the module docstring
        for how fresh it is). Lock-free; arguments are not validated.
        """
        accounts = self._resolved.get(platform)
        if accounts is not None:
            unified = accounts.get(platform_user_id)
            if unified is not None:
                return unified
        return f"{platform}:{platform_user_id}"

    def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
        """Bind the account to ``unified_user_id``; moves it if linked to someone else.

        Re-linking to the same id is a no-op (``linked_at`` is kept). Visible to
        this instance's ``resolve`` when it returns, to other hosts' within the
        staleness bound. Raises ``ValueError`` for invalid arguments,
        ``StoreError`` if the server fails or the resolver is closed.
        Thread- and process-safe; blocks on network I/O (call it from a thread
        or a script, not from the event loop).
        """
        validate_link_args(platform, platform_user_id, unified_user_id)
        self._check_open()
        version = self._do_link(
            IdentityLink(platform, platform_user_id, unified_user_id, time.time())
        )
        self._catch_up(version)

    def claim(self, platform: str, platform_user_id: str, unified_user_id: str) -> bool:
        """Link the account to ``unified_user_id`` unless another account has that id.

        ``True`` if the account is now linked to it (also when it already
        was), ``False`` if the id is taken (nothing changes). Atomic on the
        server: hosts claiming one id at once cannot both win. Errors and
        blocking as :meth:`link`.
        """
        validate_link_args(platform, platform_user_id, unified_user_id)
        self._check_open()
        claimed, version = self._do_claim(
            IdentityLink(platform, platform_user_id, unified_user_id, time.time())
        )
        self._catch_up(version)
        return claimed

    def unlink(self, platform: str, platform_user_id: str) -> bool:
        """Remove the account's link; ``True`` if there was one. Errors as :meth:`link`."""
        self._check_open()
        removed, version = self._do_unlink(platform, platform_user_id)
        self._catch_up(version)
        return removed

    def links_for(self, unified_user_id: str) -> list[IdentityLink]:
        """Every account linked to ``unified_user_id``, sorted by (platform, account).

        Catches up with the server first (one round trip); after ``close``,
        answers from the last known links.
        """
        self._sync()
        with self._lock:
            return self._table.links_for(unified_user_id)

    def all_links(self) -> list[IdentityLink]:
        """Every link, sorted by (platform, platform_user_id); catches up first, as links_for."""
        self._sync()
        with self._lock:
            return self._table.all_links()

    def close(self) -> None:
        """Stop the listener and close connections. Idempotent.

        Afterwards ``resolve`` and the read methods answer from the last known
        links; ``link`` and ``unlink`` raise ``StoreError``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._close_connections()

    # -- cache maintenance -----------------------------------------------------

    def _start(self, name: str) -> None:
        """Load the table now (errors propagate), then start the listener thread."""
        self._install(self._do_snapshot())
        self._thread = threading.Thread(target=self._listen_forever, name=name, daemon=True)
        self._thread.start()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self._where}: the identity resolver is closed")

    def _install(self, snapshot: Snapshot) -> None:
        """Swap in a freshly built table, unless the cache is already newer."""
        table = LinkTable(snapshot.links)
        with self._lock:
            if snapshot.version < self._version:
                return
            self._table = table
            self._resolved = table.resolved
            self._version = snapshot.version
            self._changed.notify_all()

    def _resync(self) -> None:
        """Reload everything from an atomic snapshot."""
        self._install(self._do_snapshot())

    def _receive(self, change: Change) -> None:
        """Apply one published change, or reload when it is not the next version."""
        with self._lock:
            if change.version <= self._version:
                return
            applied = change.complete and change.version == self._version + 1
            if applied:
                if change.link is None:
                    self._table.remove(change.platform, change.platform_user_id)
                else:
                    self._table.put(change.link)
                self._version = change.version
                self._changed.notify_all()
        if not applied:
            log.info(
                "%s: identity change %d out of sequence; reloading", self._where, change.version
            )
            self._resync()

    def _tick(self) -> None:
        """Listener housekeeping, called every ``WAKEUP`` s or so: the version check.

        Every ``poll_interval`` seconds it reads the server's version; if the
        server is ahead and still ahead 0.5 s later (a notification was lost),
        it reloads. ``_behind`` and ``_next_poll`` are the listener thread's own.
        """
        now = time.monotonic()
        if self._behind is not None:
            target, deadline = self._behind
            if self._version >= target:
                self._behind = None
            elif now >= deadline:
                self._behind = None
                log.info("%s: missed an identity change; reloading", self._where)
                self._resync()
        if now >= self._next_poll:
            self._next_poll = now + self._poll_interval
            remote = self._do_version()
            if remote > self._version and self._behind is None:
                self._behind = (remote, now + 0.5)

    def _catch_up(self, version: int) -> None:
        """Wait until the cache holds ``version``; reload here if the listener is late."""
        with self._lock:
            caught_up = self._changed.wait_for(
                lambda: self._version >= version or self._closed, timeout=self._sync_timeout
            )
            if self._closed:
                return
        if not caught_up:
            self._resync()

    def _sync(self) -> None:
        if self._closed:
            return
        self._catch_up(self._do_version())

    def _listen_forever(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._listen_once()
            except Exception as exc:  # any failure: log, back off, reconnect, reload
                if self._stop.is_set():
                    break
                log.warning("%s: identity listener failed (%s); reconnecting", self._where, exc)
            if time.monotonic() - started > 10 * _BACKOFF_MAX:
                backoff = _BACKOFF_MIN
            self._stop.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
