"""Streamed replies: a draft message edited while the model writes.

:class:`ReplyStream` is what a turn streams into (``feed`` each piece of text,
``finish`` with the final text). :class:`EditDraft` is the one for platforms
that can edit a sent message (``Adapter.do_edit``), owned by the adapter base
(``Adapter.reply_stream``); the web chat and the terminal send deltas over
their own channels instead.

How a draft behaves:

- the first words are posted ``first_post_delay`` seconds (0.25) after they
  arrive (a reply the model finishes sooner is sent whole, with no edit);
- then the message is edited at most once per ``edit_interval`` seconds per
  chat (one clock per chat, shared by every draft in it), never more often;
- when the text outgrows the platform's message length, the message is
  finished and a new one continues (split at a paragraph, line or word, never
  inside a code block's markup, each part rendered on its own);
- a 429 on an edit pushes the next edit past its ``retry_after`` and slows the
  draft (the interval doubles, up to 8 times its start); other failures of an
  intermediate edit are logged, and the final text repairs them;
- ``finish`` writes the final text last (retried like a send: a 429 is waited
  out, markup the platform rejects goes as plain text) and raises when it
  cannot, so the turn stores the reply marked not delivered.

Touched on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

from ..errors import FormattingRejected, PlatformError, RetryAfter
from .delivery import send_with_retry
from .markup import to_plain

if TYPE_CHECKING:
    from .base import Adapter

__all__ = ["EditDraft", "ReplyStream"]

log = logging.getLogger("onethread.platforms")

_SLOWEST = 8.0  # a rate-limited draft slows to at most this many times its interval


class ReplyStream(Protocol):
    """Where a streaming turn writes its reply."""

    async def feed(self, piece: str) -> None:
        """Show ``piece`` (the next text the model wrote); never waits for the platform."""
        ...

    async def finish(self, text: str) -> dict[str, str] | None:
        """Show the final ``text``; return delivery marks (``{"delivery": "cut"}``) or None.

        Raises the platform's error when the final text cannot be shown.
        """
        ...

    async def close(self) -> None:
        """Stop, without a final text (the turn failed); idempotent."""
        ...


class EditDraft:
    """A reply posted early and edited as it grows (see the module docstring).

    ``ids`` are the messages posted, ``edits`` counts the edits made. Built by
    ``Adapter.reply_stream``; not for direct use.
    """

    def __init__(self, adapter: Adapter, chat_id: str, thread_id: str = "") -> None:
        self.adapter = adapter
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.interval = adapter.edit_interval
        self.text = ""
        self.ids: list[str] = []
        self.shown: list[str] = []  # the Markdown each posted message shows
        self.edits = 0
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_call = False
        self._closed = False

    async def feed(self, piece: str) -> None:
        """Add ``piece``; the draft catches up in the background, at its pace."""
        self.text += piece
        if self._closed:
            return
        self._dirty.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.adapter.first_post_delay > 0:
            await asyncio.sleep(self.adapter.first_post_delay)
        while not self._closed:
            await self._dirty.wait()
            self._dirty.clear()
            delay = self.adapter.next_edit_at(self.chat_id) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._closed:
                return
            self._in_call = True
            try:
                await self._step()
            finally:
                self._in_call = False

    def _chunks(self, text: str) -> list[str]:
        return self.adapter.chunks(text)[0][: self.adapter.max_messages]

    async def _step(self) -> None:
        """One platform call towards the current text (the first message that differs)."""
        chunks = [c for c in self._chunks(self.text) if c.strip()]
        for index, chunk in enumerate(chunks):
            if index < len(self.shown) and self.shown[index] == chunk:
                continue
            try:
                await self._show(index, chunk, retry=False)
            except RetryAfter as exc:
                self.interval = min(self.interval * 2, self.adapter.edit_interval * _SLOWEST)
                self.adapter.note_edit(self.chat_id, max(exc.retry_after, self.interval))
                log.info(
                    "%s draft in %s rate limited: next edit in %.1fs, every %.1fs now",
                    self.adapter.name, self.chat_id, exc.retry_after, self.interval,
                )  # fmt: skip
            except PlatformError as exc:  # the final text repairs it
                self.adapter.note_edit(self.chat_id, self.interval)
                log.warning("%s draft update in %s failed: %s", self.adapter.name,
                            self.chat_id, exc)  # fmt: skip
            if index + 1 < len(chunks) or chunks[index] != self.text:
                self._dirty.set()  # more to show: the next call waits its turn
            return

    async def _show(self, index: int, chunk: str, *, retry: bool) -> None:
        adapter, chat, thread = self.adapter, self.chat_id, self.thread_id
        if index < len(self.ids):
            message_id = self.ids[index]

            async def edit(formatted: bool) -> None:
                await adapter.do_edit(chat, message_id, chunk if formatted else to_plain(chunk),
                                      thread, formatted=formatted)  # fmt: skip

            what = f"{adapter.name} edit in {chat}"
            try:
                if retry:
                    await send_with_retry(lambda: edit(True), adapter.retry_policy, what=what)
                else:
                    await edit(True)
            except FormattingRejected:
                log.info("%s: markup rejected, editing as plain text", what)
                await send_with_retry(lambda: edit(False), adapter.retry_policy, what=what)
            self.edits += 1
            self.shown[index] = chunk
        else:
            self.ids.append(await adapter.send_chunk(chat, chunk, thread))
            self.shown.append(chunk)
        adapter.note_edit(chat, self.interval)

    async def finish(self, text: str) -> dict[str, str] | None:
        """Stop drafting, then make the messages show ``text`` (the last write).

        Waits for the chat's next allowed edit first. Raises the platform's
        error when a part cannot be shown (after retries).
        """
        self._closed = True
        task = self._task
        if task is not None:
            if self._in_call:
                await asyncio.wait((task,))
            else:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        chunks, cut = self.adapter.chunks(text)
        loop = asyncio.get_running_loop()
        for index, chunk in enumerate(chunks):
            if index < len(self.shown) and self.shown[index] == chunk:
                continue
            delay = self.adapter.next_edit_at(self.chat_id) - loop.time()
            if delay > 0 and index < len(self.ids):
                await asyncio.sleep(delay)
            await self._show(index, chunk, retry=True)
        if len(self.ids) > len(chunks):
            log.warning("%s draft in %s: %d message(s) beyond the final text left as they are",
                        self.adapter.name, self.chat_id, len(self.ids) - len(chunks))  # fmt: skip
        return {"delivery": "cut"} if cut else None

    async def close(self) -> None:
        """Stop drafting without a final text (the turn ended otherwise); idempotent."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def __repr__(self) -> str:
        return f"EditDraft({self.adapter.name}, {self.chat_id!r}, messages={len(self.ids)})"
