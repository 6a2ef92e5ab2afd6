"""The gate: which inbound messages reach a turn at all."""

from __future__ import annotations

import enum

from ..platforms.base import Inbound
from ..session.locks import DuplicateFilter

__all__ = ["Gate", "Verdict"]


class Verdict(enum.Enum):
    """Why a message was let through or dropped (logged at debug level)."""

    ACCEPT = "accept"
    OWN_MESSAGE = "own message"
    FROM_BOT = "sent by a bot"
    EMPTY = "no text and no attachment"
    DUPLICATE = "duplicate message id"
    NOT_ADDRESSED = "group message not addressed to the bot"


class Gate:
    """Drops the bot's own and other bots' messages, redeliveries, and group
    messages that do not address the bot. DMs always pass.

    ``duplicates`` is shared by every bot of a process (and across hosts when
    the store is shared), keyed by ``platform:chat_id:message_id``.
    """

    def __init__(self, duplicates: DuplicateFilter) -> None:
        self.duplicates = duplicates

    async def check(self, msg: Inbound) -> Verdict:
        """Return ``Verdict.ACCEPT`` or the reason to drop ``msg``."""
        if msg.from_self:
            return Verdict.OWN_MESSAGE
        if msg.from_bot:
            return Verdict.FROM_BOT
        if not msg.attachments and not msg.text.strip():
            return Verdict.EMPTY
        if msg.chat_type != "dm" and not msg.mentions_bot:
            return Verdict.NOT_ADDRESSED
        if msg.message_id and not await self.duplicates.first_time(
            f"{msg.platform}:{msg.chat_id}:{msg.message_id}"
        ):
            return Verdict.DUPLICATE
        return Verdict.ACCEPT
