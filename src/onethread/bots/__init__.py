"""Bots: one platform (``Bot``), many (``BotOS``), the shared session manager and mirror.

Importing this package imports no platform SDK; adapters load by name when a
``Bot`` is built.
"""

from __future__ import annotations

from .bot import Bot
from .botos import BotOS
from .manager import BotSessionManager
from .mirror import amirror_to_session, mirror_to_session

__all__ = ["Bot", "BotOS", "BotSessionManager", "amirror_to_session", "mirror_to_session"]
