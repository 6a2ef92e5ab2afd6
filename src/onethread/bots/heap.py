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

It also raises the youngest generation's threshold to :data:`YOUNG_THRESHOLD`
(10,000 container objects more alive than at the last collection, from
CPython's 700; never lowered). A webhook's request, its turn and the Graph API
call it makes hold a few hundred container objects for a few milliseconds: at 700,
a busy server collected every few requests and promoted whatever was in flight
then to the older generations, which later walks cost more; at 10,000, most of
it is freed by reference counting before any collection sees it
(``benchmarks/bench_ingress.py``: one collection per 8 webhooks became one per
26, and the collector's CPU per webhook went from 0.062 to 0.018 ms).
"""

from __future__ import annotations

import gc
import logging
import threading

__all__ = ["YOUNG_THRESHOLD", "freeze_startup_heap"]

log = logging.getLogger("onethread.heap")

_lock = threading.Lock()  # guards _done: two loops in two threads may start at once
_done = False

YOUNG_THRESHOLD = 10_000
"""Generation 0's collection threshold once a bot serves (CPython's default: 700)."""


def freeze_startup_heap() -> bool:
    """Collect, then freeze what is alive, once per process; True if this call did it."""
    global _done
    with _lock:
        if _done:
            return False
        _done = True
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:  # 0: collection is off; a higher one is the app's
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    log.debug("froze %d start-up objects out of the cyclic collector", gc.get_freeze_count())
    return True
