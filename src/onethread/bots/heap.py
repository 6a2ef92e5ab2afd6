"""Keep CPython's full garbage collections short while a bot serves.

A full (generation 2) collection walks every container object the process
holds. After ``import onethread.bots`` and the platform SDKs that is ~90,000
objects (modules, classes, functions), ~15 ms per full collection on a 2-core
VM, paid every second or two under load: the largest part of the turn
latency tail in ``benchmarks/bench_turns.py``. Those objects live as long as
the process, so the collector gains nothing by walking them again and again.

:func:`freeze_startup_heap` collects once and then moves every object alive
at that moment into CPython's permanent generation (``gc.freeze()``): the
cyclic collector stops walking them; reference counting still frees each
one as usual. The price: a reference *cycle* among those start-up objects
that becomes garbage later is not reclaimed. Pass ``gc_freeze=False`` to
``BotOS``/``Bot`` if your process relies on that.
"""

from __future__ import annotations

import gc
import logging
import threading

__all__ = ["freeze_startup_heap"]

log = logging.getLogger("onethread.heap")

_lock = threading.Lock()  # guards _done: two loops in two threads may start at once
_done = False


def freeze_startup_heap() -> bool:
    """Collect, then freeze what is alive, once per process; True if this call did it."""
    global _done
    with _lock:
        if _done:
            return False
        _done = True
    gc.collect()
    gc.freeze()
    log.debug("froze %d start-up objects out of the cyclic collector", gc.get_freeze_count())
    return True
