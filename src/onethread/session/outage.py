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


@dataclass(slots=True)
class _Outage:
    since: float
    failures: int


_lock = threading.Lock()
_down: dict[str, _Outage] = {}  # StoreUnavailable.store -> its outage; guarded by _lock


def store_failed(exc: StoreUnavailable, doing: str = "") -> bool:
    """Record a failure of ``exc.store``; log one WARNING if it is the first of an outage.

    ``doing`` says what failed (``"a turn on telegram"``), for the log line.
    Returns True when this call logged the WARNING.
    """
    with _lock:
        outage = _down.get(exc.store)
        first = outage is None
        if outage is None:
            _down[exc.store] = _Outage(time.monotonic(), 1)
        else:
            outage.failures += 1
    what = f" ({doing} failed)" if doing else ""
    if first:
        log.warning(
            "%s is unreachable: %s%s; what needs it fails until it is back "
            "(logged once per outage; -vv shows each failure)",
            exc.store,
            exc.reason,
            what,
        )
    else:
        log.debug("%s still unreachable: %s%s", exc.store, exc.reason, what)
    return first


def stores_ok() -> None:
    """Every store just worked: log the end of each outage on record, once."""
    with _lock:
        if not _down:
            return
        ended = list(_down.items())
        _down.clear()
    now = time.monotonic()
    for store, outage in ended:
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
