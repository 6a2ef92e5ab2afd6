"""Old import path, kept so code written against onethread 0.1 keeps working.

The module is now :mod:`onethread.session.outbox.postgres`.
"""

from __future__ import annotations

from .outbox.postgres import PostgresOutbox

__all__ = ["PostgresOutbox"]
