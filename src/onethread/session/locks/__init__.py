"""Turn locks and the duplicate filter: in-process (:mod:`.base`), Redis and PostgreSQL.

The shared back-ends (:mod:`.redis`, :mod:`.postgres`) are imported only when
their URL is opened (:func:`onethread.session.urls.open_coordination`).
"""

from __future__ import annotations

from .base import DuplicateFilter, LocalDuplicateFilter, LocalTurnLocks, TurnLocks

__all__ = ["DuplicateFilter", "LocalDuplicateFilter", "LocalTurnLocks", "TurnLocks"]
