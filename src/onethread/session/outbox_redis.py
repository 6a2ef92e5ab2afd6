"""Old import path, kept so code written against onethread 0.1 keeps working.

The module is now :mod:`onethread.session.outbox.redis`.
"""

from __future__ import annotations

from .outbox.redis import RedisOutbox

__all__ = ["RedisOutbox"]
