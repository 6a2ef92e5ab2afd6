"""The adapter interface: what one messaging platform must provide.

An adapter translates platform events into :class:`Inbound` records and sends
text back. It holds no business logic: gating, commands, identity, history and
the agent live in ``onethread.bots``.

Shape (python-telegram-bot's, at httpx's size):

- ``await start(on_inbound)``: connect, then call ``on_inbound(inbound)`` for each
  message; returns once connected. Raises ``PlatformAuthError`` for bad
  credentials. A lost connection later is reported with ``report_failure``.
- ``await stop()``: disconnect and release everything; idempotent.
- ``do_send(...)``: the ONE abstract method: send one chunk, return its message
  id, raise the mapped ``onethread.errors`` (``RetryAfter``,
  ``PlatformUnavailable``, ``FormattingRejected``, ``BadRequest``,
  ``PlatformAuthError``).
- ``do_typing(chat_id, thread_id)``: optional typing hook.
- ``do_edit(chat_id, message_id, text, thread_id)``: optional; a platform that
  can edit a sent message gets streamed replies as a draft edited at most once
  per ``edit_interval`` (``reply_stream``, the logic in ``draft.EditDraft``).
- ``measure(markdown)``: optional; how long a chunk is once rendered, as the
  platform counts it (default: its length), so that chunks are cut to fit.
- ``send()`` (final): chunking (at most ``max_messages``), retries, plain-text
  fallback and logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, final

from ..errors import AttachmentRefused, FormattingRejected
from ..metrics import NULL_METRICS, NullMetrics
from ..session.attachments import Attachment
from ..session.text import clean_text
from .delivery import RetryPolicy, cap_messages, send_with_retry
from .draft import EditDraft, ReplyStream
from .markup import to_plain

if TYPE_CHECKING:
    from .ingress import Ingress

__all__ = [
    "Adapter",
    "Attachment",
    "Inbound",
    "OnInbound",
    "credential_in",
    "whitespace_problem",
]

log = logging.getLogger("onethread.platforms")


@dataclass(frozen=True, slots=True)
class Inbound:
    """A platform message, normalised.

    ``chat_type`` is ``"dm"``, ``"group"`` or ``"channel"``. ``mentions_bot`` is
    true when the message addresses the bot (a mention, a reply to the bot, or a
    command). ``from_bot`` marks messages sent by any bot account, ``from_self``
    by this bot. ``attachments`` are what came with the message (photos,
    voice notes, files), described by the adapter; ``blob`` is empty until the
    bot has fetched the bytes (``Adapter.download``). A message may be
    attachments only, with empty ``text``. ``raw`` keeps the SDK object for
    adapters; it is not compared.

    Every string field is passed through ``onethread.session.text.clean_text``
    when constructed (lone surrogates become U+FFFD), so whatever an adapter
    hands in can be stored and sent by every back-end.
    """

    platform: str
    chat_id: str
    chat_type: str
    user_id: str
    text: str
    message_id: str = ""
    chat_name: str = ""
    thread_id: str = ""
    user_name: str = ""
    mentions_bot: bool = False
    from_bot: bool = False
    from_self: bool = False
    attachments: tuple[Attachment, ...] = ()
    raw: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The usual event: every field (_TEXT_FIELDS) a str, all ASCII: one scan.
        fields = (self.platform, self.chat_id, self.chat_type, self.user_id, self.text,
                  self.message_id, self.chat_name, self.thread_id, self.user_name)  # fmt: skip
        try:
            plain = "".join(fields).isascii()
        except TypeError:  # a field that is not a str: each one is looked at below
            plain = False
        if plain:
            return
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                cleaned = clean_text(value)
                if cleaned is not value:
                    object.__setattr__(self, name, cleaned)  # frozen: set once, here


_TEXT_FIELDS = ("platform", "chat_id", "chat_type", "user_id", "text", "message_id",
                "chat_name", "thread_id", "user_name")  # fmt: skip


OnInbound = Callable[[Inbound], Awaitable[None]]


def credential_in(
    options: Mapping[str, Any], env: Mapping[str, str], option: str, variable: str
) -> tuple[str, str]:
    """For :meth:`Adapter.check_options`: the credential ``option`` (else ``env[variable]``)
    and how a message names where it came from. ``("", ...)`` when neither is set
    (the config check reports that itself); never put the value in a message.
    """
    value = options.get(option)
    if value:
        return str(value), f"the {option} option"
    return env.get(variable, ""), variable


def whitespace_problem(value: str, where: str) -> str | None:
    """A pasted credential with spaces or a line break in it (a frequent copy mistake)."""
    if value != value.strip() or any(c.isspace() for c in value):
        return f"{where} has spaces or a line break in it; copy the token alone"
    return None


class Adapter(ABC):
    """Base of every platform adapter. Subclass, set ``name``/``max_message_length``,
    implement ``start``, ``stop`` and ``do_send``; register the module in
    ``onethread.platforms.registry``.
    """

    name: ClassVar[str] = ""
    max_message_length: ClassVar[int] = 4000
    max_file_bytes: ClassVar[int] = 20 * 1024 * 1024  # largest file the platform takes from bots
    # One reply never floods a chat: beyond this many messages it is cut (with a note).
    max_messages: ClassVar[int] = 10
    typing_interval: ClassVar[float] = 4.0
    # Seconds between edits of a streamed draft, per chat (within the platform's limits).
    edit_interval: ClassVar[float] = 1.0
    # A streamed reply's first words wait this long (a reply done by then goes whole).
    first_post_delay: ClassVar[float] = 0.25
    help_lines: ClassVar[tuple[str, ...]] = ()
    """Lines this platform adds to ``/help``: commands the adapter handles itself."""
    metrics: NullMetrics = NULL_METRICS
    """Where ``send()`` counts deliveries, retries and rate-limit waits (set by the Bot)."""
    uses_http: bool = False
    """True when the adapter serves HTTP (the web chat, webhook modes): ``BotOS`` then
    starts its shared server (:mod:`onethread.platforms.ingress`) before the bots."""
    ingress: Ingress | None = None
    """The HTTP server to mount on (set by ``Bot.use_ingress``; ``BotOS`` shares one)."""

    def __init__(self, *, retry_policy: RetryPolicy | None = None) -> None:
        self.retry_policy = retry_policy or RetryPolicy()
        self._failure: asyncio.Future[BaseException] | None = None
        self._edit_clock: dict[str, float] = {}  # chat -> loop time of its next allowed edit

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """Mistakes in this platform's config ``options``: ``(option, message with the fix)``.

        Called by ``onethread run --check`` and before ``run`` starts, with the
        environment the credentials come from. The default finds none.
        """
        return []

    @classmethod
    async def probe_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str], timeout: float
    ) -> list[tuple[str, str]]:
        """A service this platform needs that does not answer: ``(option, message with
        the fix)``.

        Called by ``onethread run --check`` (next to its store probes) once
        :meth:`check_options` found nothing, for a program the adapter connects
        to that someone must start (Signal's signal-cli daemon), never a
        platform's cloud API. Open a connection within ``timeout`` seconds and
        close it; log nothing in. The default finds none.
        """
        return []

    # -- lifecycle -------------------------------------------------------------

    def bind(self, bot: Any) -> None:
        """Called once by the ``Bot`` that owns this adapter, before ``start``.

        The default does nothing; an adapter that shows stored conversations
        (the web chat) reads ``bot.session`` here.
        """
        return None

    def on_unstored_reply(self, msg: Inbound, reply: str) -> None:
        """Called by the ``Bot`` after it answered ``msg`` with ``reply`` outside the
        history (a slash command, an access refusal): neither is stored, and the
        model never sees them.

        The default does nothing; an adapter that redraws the conversation from
        the history (the web chat, on a page reload) keeps them itself.
        """
        return None

    def on_done(self, msg: Inbound, dropped: str = "") -> None:
        """Called by the ``Bot`` once it is done with ``msg``: its turn ended (replied,
        refused or failed; ``dropped`` empty), or it was dropped before one
        (``dropped`` says why: a duplicate, not addressed to the bot, stopping).

        The default does nothing; the webhook platform's ``mode: sync`` answers
        the HTTP request with what the turn sent.
        """
        return None

    @abstractmethod
    async def start(self, on_inbound: OnInbound) -> None:
        """Connect and begin delivering messages to ``on_inbound``; return once connected."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect and release every resource. Idempotent."""

    def report_failure(self, exc: BaseException) -> None:
        """Called by the adapter when its connection fails for good; the supervisor restarts it."""
        fut = self._failure_future()
        if not fut.done():
            fut.set_result(exc)

    async def wait_failure(self) -> BaseException:
        """Wait until the adapter reports a failure; return the error."""
        return await self._failure_future()

    def reset_failure(self) -> None:
        """Forget a reported failure (the supervisor calls this before a restart)."""
        self._failure = None

    def _failure_future(self) -> asyncio.Future[BaseException]:
        if self._failure is None:
            self._failure = asyncio.get_running_loop().create_future()
        return self._failure

    # -- sending ---------------------------------------------------------------

    @abstractmethod
    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Send one chunk (within ``max_message_length``) and return the message id.

        ``formatted`` asks for the platform's markup (Markdown); ``False`` means
        plain text. Raise the mapped ``onethread.errors`` on failure.
        """

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """Send one file (``attachment`` describes ``data``): a photo for images where
        the platform has photos, else a document, with ``attachment.caption``.
        Return the message id; raise the mapped ``onethread.errors``. The default
        says the platform takes no files."""
        raise NotImplementedError(f"{self.name or type(self).__name__} cannot send files")

    @final
    async def send_files(
        self, chat_id: str, files: Sequence[tuple[Attachment, bytes]], *, thread_id: str = ""
    ) -> list[str]:
        """Send each file in order, retried like text; return the message ids.

        A file larger than ``max_file_bytes`` (or any file, on a platform that
        takes none) is not sent: a short text line says so instead, so the
        person knows something is missing. Raises the last ``PlatformError``
        when a file cannot be delivered.
        """
        ids: list[str] = []
        for attachment, data in files:
            label = attachment.name or f"a {attachment.kind}"
            if len(data) > self.max_file_bytes:
                note = f"(I could not send {label}: it is larger than {self.name} allows.)"
                ids += await self.send(chat_id, note, thread_id=thread_id)
                continue
            try:
                ids.append(await self._send_file(chat_id, attachment, data, thread_id))
            except NotImplementedError:
                note = f"(I could not send {label}: {self.name} takes no files from me.)"
                ids += await self.send(chat_id, note, thread_id=thread_id)
        return ids

    async def _send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, thread_id: str
    ) -> str:
        return await send_with_retry(
            lambda: self.do_send_file(chat_id, attachment, data, thread_id=thread_id),
            self.retry_policy,
            what=f"{self.name} file to {chat_id}",
            on_wait=self._on_wait,  # retries and rate-limit waits count as for text
        )

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """The bytes of ``msg.attachments[index]``, fetched from the platform.

        Adapters whose platform sends files implement it (from what they kept
        in ``msg.raw``); the default says the platform has none. Raise the
        mapped ``onethread.errors`` on failure.
        """
        raise NotImplementedError(f"{self.name or type(self).__name__} cannot fetch attachments")

    @final
    async def download(self, msg: Inbound, index: int, *, max_bytes: int) -> bytes:
        """The bytes of attachment ``index`` of ``msg``, at most ``max_bytes`` of them.

        Raises ``AttachmentRefused`` (``reason="too_large"``) before fetching
        when the platform says the file is larger, and after when it was.
        """
        declared = msg.attachments[index].size
        if declared > max_bytes:
            raise _too_large(declared, max_bytes)
        data = await self.do_download(msg, index)
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes)
        return data

    async def do_edit(
        self, chat_id: str, message_id: str, text: str, thread_id: str = "", *,
        formatted: bool = True,
    ) -> None:  # fmt: skip
        """Replace the text of sent message ``message_id`` with ``text`` (one chunk).

        Platforms that can edit implement it (raising the mapped errors, a 429
        as ``RetryAfter``); then replies stream as an edited draft. The default
        says the platform cannot edit.
        """
        raise NotImplementedError(f"{self.name or type(self).__name__} cannot edit messages")

    @property
    def can_edit(self) -> bool:
        """True when this adapter implements :meth:`do_edit`."""
        return type(self).do_edit is not Adapter.do_edit

    def reply_stream(self, chat_id: str, thread_id: str = "") -> ReplyStream | None:
        """Where a streamed reply to ``chat_id`` goes: an edited draft when the
        platform can edit (:class:`~onethread.platforms.draft.EditDraft`), else
        None (the reply is sent whole). The web chat and the terminal return
        their own streams (deltas over their channel)."""
        return self.draft(chat_id, thread_id) if self.can_edit else None

    @final
    def draft(self, chat_id: str, thread_id: str = "") -> EditDraft:
        """A new draft reply in ``chat_id`` (needs :meth:`do_edit`)."""
        return EditDraft(self, chat_id, thread_id)

    @final
    def next_edit_at(self, chat_id: str) -> float:
        """Loop time before which no draft in ``chat_id`` posts or edits again."""
        return self._edit_clock.get(chat_id, 0.0)

    @final
    def note_edit(self, chat_id: str, wait: float) -> None:
        """Record a draft's call in ``chat_id``: the next waits ``wait`` seconds."""
        now = asyncio.get_running_loop().time()
        if len(self._edit_clock) > 1000:  # forget chats whose clocks have run out
            self._edit_clock = {k: v for k, v in self._edit_clock.items() if v > now}
        self._edit_clock[chat_id] = max(self._edit_clock.get(chat_id, 0.0), now + wait)

    def measure(self, markdown: str) -> int:
        """Length of ``markdown`` once rendered, as the platform counts it (default: as is)."""
        return len(markdown)

    @final
    def chunks(self, text: str) -> tuple[list[str], bool]:
        """``text`` cut into messages (at most ``max_messages``; True when cut).

        Cut on the Markdown (never inside a code block's markup: each chunk
        renders on its own), then cut shorter while a rendered chunk is longer
        than ``max_message_length`` by :meth:`measure` (e.g. a table padded
        into aligned text).
        """
        limit = self.max_message_length
        if (
            0 < len(text) <= limit
            and limit >= 16
            and self.max_messages >= 1
            and self.measure(text) <= limit
        ):
            return [text], False  # the usual reply: one message, as cap_messages would say
        while True:
            chunks, cut = cap_messages(text, limit, self.max_messages)
            if limit <= 64 or all(self.measure(c) <= self.max_message_length for c in chunks):
                return chunks, cut
            limit = max(64, limit * 4 // 5)

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:  # noqa: B027
        """Show a typing indicator once (default: the platform has none)."""

    @final
    async def send(self, chat_id: str, text: str, *, thread_id: str = "") -> list[str]:
        """Send ``text`` split to the platform's limit, in order, in the same thread.

        At most ``max_messages`` (10) messages: a longer text is sent as its
        first part, ending with a note that it was cut (``cap_messages``).
        Retries rate limits and server errors per ``retry_policy``; a formatting
        rejection is resent as plain text. Returns the ids of the sent messages.
        Raises the last ``PlatformError`` when a chunk cannot be delivered.
        Counted in ``metrics`` as one delivery, ``delivered`` or ``failed``.
        """
        chunks, cut = self.chunks(text)
        if cut:
            log.warning(
                "%s send to %s: a %d-character reply cut to %d messages",
                self.name, chat_id, len(text), len(chunks),
            )  # fmt: skip
        ids: list[str] = []
        try:
            for chunk in chunks:
                ids.append(await self.send_chunk(chat_id, chunk, thread_id))
        except Exception:
            self.metrics.delivery(self.name, "failed")
            raise
        self.metrics.delivery(self.name, "delivered")
        return ids

    def _on_wait(self, rate_limited: bool, seconds: float) -> None:
        self.metrics.delivery(self.name, "retried")
        if rate_limited:
            self.metrics.rate_limit_wait(self.name, seconds)

    def delivery_marks(self, message_ids: Sequence[str]) -> dict[str, str]:
        """History metadata saying how text sent as ``message_ids`` really went out,
        for ``notify()``, the outbox and scheduled messages to record with it
        (WhatsApp outside its 24-hour window: ``{"delivery": "template",
        "template": NAME}``). The default has none."""
        return {}

    @final
    def fits(self, text: str) -> bool:
        """True when :meth:`send` sends ``text`` whole (not cut at ``max_messages``)."""
        if len(text) <= self.max_message_length and self.measure(text) <= self.max_message_length:
            return True
        return not self.chunks(text)[1]

    @final
    async def send_chunk(self, chat_id: str, chunk: str, thread_id: str = "") -> str:
        """Send one chunk (from :meth:`chunks`), retried; markup the platform
        rejects is resent as plain text (the Markdown taken away). Returns its id."""
        what = f"{self.name} send to {chat_id}"
        try:
            return await send_with_retry(
                lambda: self.do_send(chat_id, chunk, thread_id=thread_id, formatted=True),
                self.retry_policy,
                what=what,
                on_wait=self._on_wait,
            )
        except FormattingRejected:
            log.info("%s: markup rejected, resending as plain text", what)
            plain = to_plain(chunk) or chunk
            return await send_with_retry(
                lambda: self.do_send(chat_id, plain, thread_id=thread_id, formatted=False),
                self.retry_policy,
                what=what,
                on_wait=self._on_wait,
            )

    @final
    def typing(self, chat_id: str, thread_id: str = "") -> AbstractAsyncContextManager[None]:
        """Keep the typing indicator on while the block runs; always stopped on exit.

        The indicator is first sent once the block has given the loop a turn
        (a block that never waits shows none), then every ``typing_interval``
        seconds; a typing failure never breaks the block.
        """
        return _Typing(self, chat_id, thread_id)


class _Typing:
    """The ``Adapter.typing`` context manager; touched on the event loop thread only.

    Cheap on the hot path: entering schedules one callback, and a task exists
    only while a ``do_typing`` call is in flight (a per-turn task, cancelled
    and awaited at exit, cost every turn two loop iterations).
    """

    __slots__ = ("_active", "_adapter", "_chat_id", "_handle", "_loop", "_task", "_thread_id")

    def __init__(self, adapter: Adapter, chat_id: str, thread_id: str) -> None:
        self._adapter = adapter
        self._chat_id = chat_id
        self._thread_id = thread_id
        self._active = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._active = True
        self._handle = self._loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._active and self._loop is not None:
            self._task = self._loop.create_task(self._call())

    async def _call(self) -> None:
        adapter = self._adapter
        try:
            await adapter.do_typing(self._chat_id, self._thread_id)
        except Exception as exc:  # a typing failure must never break the turn
            log.debug("%s typing indicator failed: %s", adapter.name, exc)
        if self._active and self._loop is not None:
            self._handle = self._loop.call_later(adapter.typing_interval, self._fire)

    async def __aexit__(self, *exc_info: object) -> None:
        self._active = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _too_large(size: int, limit: int) -> AttachmentRefused:
    return AttachmentRefused(
        "too_large",
        f"That file is {_mb(size)}; I can take files up to {_mb(limit)}.",
        limit=limit,
    )


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1000:.0f} KB"
