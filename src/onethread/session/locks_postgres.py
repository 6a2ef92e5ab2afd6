"""Old import path, kept so code written against onethread 0.1 keeps working.

The module is now :mod:`onethread.session.locks.postgres`.
"""

from __future__ import annotations

from .locks.postgres import PostgresDuplicateFilter, PostgresTurnLocks

__all__ = ["PostgresDuplicateFilter", "PostgresTurnLocks"]
