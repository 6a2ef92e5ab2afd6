"""Cross-host delivery queue: the protocol (:mod:`.base`), Redis and PostgreSQL.

The back-ends (:mod:`.redis`, :mod:`.postgres`) are imported only when their
URL is opened (:func:`onethread.session.urls.open_coordination`).
"""

from __future__ import annotations

from .base import Deliver, Outbox, OutboxItem

__all__ = ["Deliver", "Outbox", "OutboxItem"]
