"""Old import path, kept so code written against onethread 0.1 keeps working.

The module is now :mod:`onethread.session.locks.redis`.
"""

from __future__ import annotations

from .locks.redis import RedisDuplicateFilter, RedisTurnLocks

__all__ = ["RedisDuplicateFilter", "RedisTurnLocks"]
