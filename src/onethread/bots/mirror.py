"""Mirror text the bot sent on its own into a person's history.

Cron jobs, reminders and cross-platform replies are sent outside a turn; the
agent must still remember them. ``mirror_to_session`` never raises (a mirror
failure must not break the delivery itself) and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import StoreUnavailable
from ..session._conn.shared import who
from ..session.outage import store_failed
from .manager import BotSessionManager

__all__ = ["amirror_to_session", "mirror_to_session"]

log = logging.getLogger("onethread.mirror")

_THREAD_WAIT = 30.0


def _check_manager(session_mgr: Any) -> BotSessionManager:
    if not isinstance(session_mgr, BotSessionManager):
        raise TypeError(
            f"session_mgr must be a BotSessionManager (bot.session), got {type(session_mgr)!r}"
        )
    return session_mgr


async def amirror_to_session(
    session_mgr: BotSessionManager,
    user_id: str,
    message_text: str,
    source_label: str = "delivery",
    metadata: Mapping[str, Any] | None = None,
    lock: threading.Lock | threading.RLock | None = None,
) -> bool:
    """Awaitable twin of :func:`mirror_to_session`. Returns True once stored; never raises.

    With ``lock`` (a ``threading`` lock shared with your own code) the lock is
    taken in a worker thread around the store write, so the loop never waits
    on it.
    """
    try:
        mgr = _check_manager(session_mgr)
        if lock is None:
            await mgr.mirror(user_id, message_text, source=source_label, metadata=metadata)
            return True
        if mgr.loop is None:
            mgr.bind_loop()
        return await asyncio.to_thread(
            _mirror_from_thread, mgr, user_id, message_text, source_label, metadata, lock
        )
    except Exception as exc:
        _log_failure(exc, user_id, source_label)
        return False


def _mirror_from_thread(
    mgr: BotSessionManager,
    user_id: str,
    text: str,
    source: str,
    metadata: Mapping[str, Any] | None,
    lock: threading.Lock | threading.RLock | None,
) -> bool:
    """Run the mirror from a thread that is not running an event loop."""
    with lock if lock is not None else contextlib.nullcontext():
        loop = mgr.loop
        coro = mgr.mirror(user_id, text, source=source, metadata=metadata)
        if loop is not None and loop.is_running() and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(coro, loop).result(_THREAD_WAIT)
        else:
            asyncio.run(coro)
    return True


def mirror_to_session(
    session_mgr: BotSessionManager,
    user_id: str,
    message_text: str,
    source_label: str = "delivery",
    metadata: Mapping[str, Any] | None = None,
    lock: threading.Lock | threading.RLock | None = None,
) -> bool:
    """Record ``message_text`` as sent by the bot to ``user_id``; never raises.

    ``user_id`` is a unified id (``"alice"``) or an unlinked account
    (``"telegram:12345"``). The entry is stored with its provenance
    (``mirror=True``, ``source=source_label``, ``metadata``) and reaches the
    model labelled with its source. It is serialised with live turns through
    the session's turn lock. Text you tried to send and could not is recorded
    as such with ``metadata={"delivery": "failed", "delivery_error": "..."}``
    (``onethread.session.history.base.delivery_failed(exc)`` builds it): the
    model then sees it labelled as not delivered.

    Safe from anywhere:

    - a plain or worker thread: waits (up to 30 s) until stored, running the
      write on the bot's event loop when it runs, else in a private loop;
    - inside the running event loop: schedules the write and returns at once
      (never blocks the loop); a later failure is logged.

    Returns True when stored (or, inside the loop, scheduled); False after
    logging an error.
    """
    try:
        mgr = _check_manager(session_mgr)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None:
            return _mirror_from_thread(mgr, user_id, message_text, source_label, metadata, lock)
        task = running.create_task(
            amirror_to_session(mgr, user_id, message_text, source_label, metadata, lock)
        )
        # The manager keeps a strong reference (the loop keeps only weak ones) and
        # waits for these in close(), so a mirror made just before stop still lands.
        mgr.pending_mirrors.add(task)
        task.add_done_callback(mgr.pending_mirrors.discard)
        return True
    except Exception as exc:
        _log_failure(exc, user_id, source_label)
        return False


def _log_failure(exc: Exception, user_id: str, source_label: str) -> None:
    if isinstance(exc, StoreUnavailable):  # an outage: one line for all of it
        store_failed(exc, f"a mirror to {who(user_id)} (source {source_label!r})")
    else:
        log.error("mirror to %s (source %r) failed", who(user_id), source_label, exc_info=exc)
