"""Small test doubles of onethread's own interfaces (not of any platform)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from onethread.errors import ModelError
from onethread.session import SessionContext, get_session_context
from onethread.session.history.base import HistoryEntry


@dataclass
class RecordingAgent:
    """A Responder that answers ``reply:<text>`` and records what it was given."""

    delay: float = 0.0
    fail: bool = False
    calls: list[tuple[list[HistoryEntry], HistoryEntry, SessionContext]] = field(
        default_factory=list
    )

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        self.calls.append((list(history), message, get_session_context()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ModelError("upstream 500", status_code=500)
        return f"reply:{message.content}"
