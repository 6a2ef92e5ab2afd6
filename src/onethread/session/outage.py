"""Store outages in the log: one WARNING when a store goes away, one when it is back.

While a store server is down every message fails the same way; a traceback
per message (and several per message, one from each part that touches the
store) buries the one fact an operator needs. Code that catches a
:class:`~onethread.errors.StoreUnavailable` calls :func:`store_failed`; the
first failure of a store logs one WARNING line, the rest of that outage only
DEBUG lines. Code that has just used every store successfully (a whole turn)
calls :func:`stores_ok`, which logs one WARNING line per store that was down
(at WARNING so the default log level shows the end of what it showed the
start of) and forgets it, so the next outage is logged again.

Right after a server comes back, connections its clients opened before the
outage fail once each (the driver then reconnects). A failure within
``SETTLE`` seconds of a recovery is therefore taken as the tail of the same
outage: logged at DEBUG, and reported with a WARNING only if failures go on
past ``SETTLE`` seconds (then it is a new outage after all, reported late by
at most that much).

The registry is per process and thread-safe (``mirror_to_session`` may run
in another thread).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..errors import StoreUnavailable

__all__ = ["down_stores", "store_failed", "stores_ok"]

log = logging.getLogger("onethread.store")


#: Seconds after a recovery during which failures are the outage's tail (see above).
SETTLE = 10.0


@dataclass(slots=True)
class _Outage:
    since: float
    failures: int
    reported: bool  # its WARNING was logged (False: a tail failure, so far quiet)


_lock = threading.Lock()
_down: dict[str, _Outage] = {}  # StoreUnavailable.store -> its outage; guarded by _lock
_recovered: dict[str, float] = {}  # store -> when its last outage ended; guarded by _lock


def store_failed(exc: StoreUnavailable, doing: str = "") -> bool:
    """Record a failure of ``exc.store``; log one WARNING if it is the first of an outage.

    ``doing`` says what failed (``"a turn on telegram"``), for the log line.
    Returns True when this call logged the WARNING.
    """
    now = time.monotonic()
    with _lock:
        outage = _down.get(exc.store)
        if outage is None:
            settling = now - _recovered.get(exc.store, -SETTLE) < SETTLE
            outage = _down[exc.store] = _Outage(now, 0, reported=False)
            report = not settling
        else:
            report = not outage.reported and now - outage.since >= SETTLE
        outage.failures += 1
        outage.reported = outage.reported or report
    what = f" ({doing} failed)" if doing else ""
    if report:
        log.warning(
            "%s is unreachable: %s%s; what needs it fails until it is back "
            "(logged once per outage; -vv shows each failure)",
            exc.store,
            exc.reason,
            what,
        )
    else:
        log.debug("%s unreachable: %s%s", exc.store, exc.reason, what)
    return report


def stores_ok() -> None:
    """Every store just worked: log the end of each outage on record, once."""
    if not _down:  # the usual turn: nothing on record (read without _lock; checked again)
        return
    now = time.monotonic()
    with _lock:
        if not _down:
            return
        ended = list(_down.items())
        _down.clear()
        for store, _ in ended:
            _recovered[store] = now
    for store, outage in ended:
        if not outage.reported:  # a tail failure after a recovery: nothing was said
            log.debug("%s answers again", store)
            continue
        log.warning(
            "%s is reachable again after %.0f s (%d failure(s) while it was down)",
            store,
            now - outage.since,
            outage.failures,
        )


def down_stores() -> list[str]:
    """The stores currently on record as unreachable (for status pages and tests)."""
    with _lock:
        return list(_down)
