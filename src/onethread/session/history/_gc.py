"""Keep stored history entries out of the cyclic garbage collector's walk.

A store that keeps entries in memory (``memory://``, the SQLite store's read
cache) holds tens of thousands of ``HistoryEntry`` objects. CPython tracks
each one (a class with ``__slots__`` is a container to the collector), and a
full collection walks them all: ~25 ms for 100,000 entries on our test VM,
every second or two while the store grows, which was most of the
``memory://`` turn latency tail (``benchmarks/bench_turns.py``).

An entry holds strings, a float, a bool and a metadata mapping; it can never
be part of a reference cycle unless its own metadata is made to point back at
it. So the stores take each entry they keep out of the collector's set with
CPython's ``PyObject_GC_UnTrack`` (what CPython itself does for tuples and
dicts that hold only atomic values). Reference counting still frees it the
moment the store lets go. On an interpreter without ``ctypes.pythonapi``
(PyPy) :func:`untrack` does nothing.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["untrack", "untrack_all"]


def _load() -> Callable[[Any], None] | None:
    api = getattr(ctypes, "pythonapi", None)
    fn = getattr(api, "PyObject_GC_UnTrack", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.py_object]
    fn.restype = None
    untrack_fn: Callable[[Any], None] = fn
    return untrack_fn


_untrack = _load()


def untrack(entry: object) -> None:
    """Stop the cyclic collector from walking ``entry`` (a stored ``HistoryEntry``)."""
    if _untrack is not None and gc.is_tracked(entry):
        _untrack(entry)


def untrack_all(entries: Iterable[object]) -> None:
    """:func:`untrack` each of ``entries``."""
    if _untrack is not None:
        for entry in entries:
            if gc.is_tracked(entry):
                _untrack(entry)
