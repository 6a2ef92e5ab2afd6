"""FakeAdapter: an in-process platform for tests and benchmarks (no network)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .platforms.base import Adapter, Inbound, OnInbound
from .session.attachments import Attachment

__all__ = ["FakeAdapter", "SentMessage"]


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One message the bot sent through a FakeAdapter."""

    chat_id: str
    text: str
    thread_id: str
    message_id: str


class FakeAdapter(Adapter):
    """A platform that lives in the test: ``inject`` messages, read ``sent``.

    ``name`` is the platform name it pretends to be (default ``"fake"``).
    ``sent`` and ``typing_calls`` are appended on the event loop thread only.
    """

    max_message_length = 4096

    def __init__(self, name: str = "fake", *, max_message_length: int | None = None) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]  # instance override of the class default
        if max_message_length is not None:
            self.max_message_length = max_message_length  # type: ignore[misc]
        self.sent: list[SentMessage] = []
        self.typing_calls: list[tuple[str, str]] = []
        self.started = False
        self._on_inbound: OnInbound | None = None
        self._ids = itertools.count(1)
        self._new_message = asyncio.Condition()
        self._files: dict[tuple[str, int], bytes] = {}  # (message id, index) -> bytes
        self.downloads = 0

    async def start(self, on_inbound: OnInbound) -> None:
        """Begin delivering injected messages to ``on_inbound``."""
        self._on_inbound = on_inbound
        self.started = True

    async def stop(self) -> None:
        """Stop delivering messages."""
        self.started = False
        self._on_inbound = None

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Record the message and return its id."""
        message_id = f"out-{next(self._ids)}"
        self.sent.append(SentMessage(chat_id, text, thread_id, message_id))
        async with self._new_message:
            self._new_message.notify_all()
        return message_id

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """Record a typing indicator."""
        self.typing_calls.append((chat_id, thread_id))

    async def inject(
        self,
        text: str,
        *,
        user: str = "user-1",
        user_name: str = "",
        chat_id: str | None = None,
        chat_type: str = "dm",
        thread_id: str = "",
        message_id: str | None = None,
        mentions_bot: bool | None = None,
        from_bot: bool = False,
        files: Sequence[tuple[Attachment, bytes]] = (),
    ) -> Inbound:
        """Deliver a message from ``user`` as the platform would; returns the Inbound.

        ``files``: attachments as the platform describes them, each with the
        bytes the bot will fetch (``Adapter.download``).
        """
        if self._on_inbound is None:
            raise RuntimeError("the FakeAdapter is not started (await bot.start() first)")
        mid = message_id if message_id is not None else f"in-{next(self._ids)}"
        for index, (_, data) in enumerate(files):
            self._files[(mid, index)] = bytes(data)
        msg = Inbound(
            platform=self.name,
            chat_id=chat_id if chat_id is not None else f"dm-{user}",
            chat_type=chat_type,
            user_id=user,
            text=text,
            message_id=mid,
            thread_id=thread_id,
            user_name=user_name or user,
            mentions_bot=chat_type == "dm" if mentions_bot is None else mentions_bot,
            from_bot=from_bot,
            attachments=tuple(a for a, _ in files) if files else (),
        )
        await self._on_inbound(msg)
        return msg

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """The bytes given to :meth:`inject` for that attachment."""
        self.downloads += 1
        return self._files[(msg.message_id, index)]

    async def wait_sent(self, count: int, timeout: float = 10.0) -> list[SentMessage]:
        """Wait until at least ``count`` messages were sent; return them all."""
        async with self._new_message:
            await asyncio.wait_for(
                self._new_message.wait_for(lambda: len(self.sent) >= count), timeout
            )
        return list(self.sent)
