"""A web reply streaming to a user's tabs (``WebAdapter.reply_stream``): deltas, then
the final message, or an ``abandon`` when it ends without one.

Used by :class:`onethread.platforms.web.WebAdapter`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ..errors import ReplyStopped

if TYPE_CHECKING:
    from .web import WebAdapter

__all__ = ["WebStream"]


class WebStream:
    """One reply streaming to a user's tabs (``WebAdapter.reply_stream``)."""

    def __init__(self, adapter: WebAdapter, user: str, reply_id: str) -> None:
        self.adapter = adapter
        self.user = user
        self.id = reply_id
        self.stopped = False
        adapter._streams[reply_id] = self

    async def feed(self, piece: str) -> None:
        """Send ``piece`` to the tabs; raise ``ReplyStopped`` once a tab asked to stop."""
        if self.stopped:
            raise ReplyStopped(f"web reply {self.id} stopped by the reader")
        await self.adapter._broadcast(self.user, {"type": "delta", "id": self.id, "text": piece})

    async def finish(self, text: str) -> dict[str, str] | None:
        """The final text, as the message with this reply's id (kept until acked)."""
        self.adapter._streams.pop(self.id, None)
        chunks, cut = self.adapter.chunks(text)
        for index, chunk in enumerate(chunks):
            await self.adapter._post(self.user, self.id if index == 0 else uuid.uuid4().hex,
                                     chunk, True)  # fmt: skip
        return {"delivery": "cut"} if cut else None

    async def close(self) -> None:
        """Ended without a final text: the tabs drop what they showed of it."""
        if self.adapter._streams.pop(self.id, None) is not None:
            await self.adapter._broadcast(self.user, {"type": "abandon", "id": self.id})
