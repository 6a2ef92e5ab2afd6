"""The web chat's history on page load: :func:`attach_history` points a web ``Bot``'s
adapter (:attr:`~onethread.platforms.web.WebAdapter.history_provider`) at its
session's stored conversation.

Re-exported by :mod:`onethread.platforms.web`.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..session.history.base import HistoryEntry
from .base import Adapter
from .web_protocol import chat_id_for, history_message

__all__ = ["attach_history"]

PLATFORM = "web"


class _SessionLike(Protocol):
    async def history(
        self, user_id: str, *, platform: str, chat_id: str = "", limit: int | None = None
    ) -> list[HistoryEntry]: ...


class _BotLike(Protocol):
    @property
    def adapter(self) -> Adapter: ...

    @property
    def session(self) -> _SessionLike: ...


def attach_history(bot: _BotLike, *, limit: int = 200) -> None:
    """Show ``bot``'s stored conversation (last ``limit`` entries) when a page loads.

    Sets ``bot.adapter.history_provider`` to read ``bot.session.history`` for
    the visitor's web DM (for a linked person, their history from every
    platform). Leaves a provider that was already set alone. Raises
    ``TypeError`` when the bot's adapter is not a ``WebAdapter``.
    """
    from .web import WebAdapter  # the adapter's module imports this one

    adapter = bot.adapter
    if not isinstance(adapter, WebAdapter):
        raise TypeError(f"attach_history needs a web bot, got a {type(adapter).__name__}")
    if adapter.history_provider is not None:
        return
    session = bot.session

    async def provider(user_id: str) -> list[dict[str, Any]]:
        entries = await session.history(
            user_id, platform=PLATFORM, chat_id=chat_id_for(user_id), limit=limit
        )
        return [history_message(entry) for entry in entries]

    adapter.history_provider = provider
