"""Telegram adapter: python-telegram-bot's ``Bot`` with a long-polling ``getUpdates`` loop,
or (``mode="webhook"``) updates POSTed to ``/webhooks/telegram``
(:mod:`onethread.platforms.telegram_webhook`).

Credentials come from ``TELEGRAM_BOT_TOKEN``; ``TELEGRAM_API_BASE_URL`` (or
``base_url=``) is the Bot API *server root*, e.g. ``http://127.0.0.1:8081`` for
a local Bot API server. The adapter appends ``/bot<token>/<method>`` itself.

Why our own polling loop and not ``Application.run_polling``/``Updater``: the
``Updater`` retries network errors forever (only logging them) and ends its
polling task silently on ``InvalidToken``, so a dead connection or a revoked
token would never reach the supervisor. The loop below is the Updater's
(``getUpdates`` with ``offset`` = last update + 1 to confirm, long-poll
``timeout``), but it retries a failing poll only ``max_poll_failures`` times,
then reports ``ConnectionLost`` (or ``PlatformAuthError``) with
``report_failure`` and leaves restarts and backoff to the supervisor.

Replies are sent as HTML rendered from the agent's Markdown by a real parser
(``onethread.platforms.markup.to_telegram_html``); Telegram's "can't parse
entities" is mapped to ``FormattingRejected`` and the base class resends the chunk as plain text.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from telegram import Bot, InputFile, Message, Update
from telegram import error as tg
from telegram.constants import ChatAction, ParseMode
from telegram.request import HTTPXRequest

from ..errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    PlatformAuthError,
    PlatformError,
    PlatformUnavailable,
    RetryAfter,
)
from ..session.attachments import Attachment
from .base import Adapter, Inbound, OnInbound, credential_in, whitespace_problem
from .delivery import RetryPolicy
from .ingress import Ingress
from .markup import to_plain, to_telegram_html
from .telegram_errors import BASE_URL_ENV, PLATFORM, TOKEN_ENV, map_telegram_errors, not_modified
from .telegram_events import media, normalize_message, normalize_update
from .telegram_webhook import SECRET_ENV, TelegramWebhook, derive_secret, valid_secret

__all__ = [
    "TelegramAdapter",
    "map_telegram_errors",
    "normalize_message",
    "normalize_update",
]

log = logging.getLogger("onethread.platforms.telegram")

# The shape @BotFather gives: the bot's numeric id, ':', then the secret. The
# Bot API manual (https://core.telegram.org/bots/api#authorizing-your-bot)
# shows "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"; tokens issued today carry
# 35 characters of [A-Za-z0-9_-] after the colon. 30 or more are accepted, so
# a longer secret some day is not refused; what this catches is a value that
# cannot be a token at all ("obviously-fake", a paste of the wrong field).
TOKEN_SHAPE = re.compile(r"[0-9]+:[A-Za-z0-9_-]{30,}")
DEFAULT_API_ROOT = "https://api.telegram.org"
ALLOWED_UPDATES = ("message", "channel_post")


_PHOTO_MAX = 10 * 1024 * 1024  # sendPhoto's limit; larger images go as documents

# -- the adapter ---------------------------------------------------------------


def _chat_ref(chat_id: str) -> int | str:
    """Numeric chat ids as ``int``; ``@channelname`` stays a string."""
    return int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id


def _thread_ref(thread_id: str) -> int | None:
    if not thread_id:
        return None
    if not thread_id.isdigit():
        raise BadRequest(f"thread_id {thread_id!r} is not a forum topic id", platform=PLATFORM)
    return int(thread_id)


class TelegramAdapter(Adapter):
    """Telegram via python-telegram-bot, long polling ``getUpdates``.

    Args:
        token: the bot token (default ``TELEGRAM_BOT_TOKEN``, read now and, if
            unset then, again by ``start()``, which raises ``ConfigError``
            naming the variable when there is none).
        base_url: Bot API server root (default ``TELEGRAM_API_BASE_URL``, else
            ``https://api.telegram.org``); ``/bot<token>`` is appended.
        retry_policy: how ``send`` retries rate limits and server errors; its
            ``max_delay`` (60 s) also caps the wait a ``getUpdates`` 429 asks
            for (polling resumes after it, whatever ``retry_after`` says).
        poll_timeout: long-poll ``timeout`` of ``getUpdates`` in seconds (whole
            seconds for api.telegram.org; ``stop()`` does not wait for it).
        drop_pending_updates: skip updates that queued up before the first start
            (restarts after a lost connection never drop anything).
        max_poll_failures: consecutive failed polls (retried with a short
            backoff) before the connection is reported lost to the supervisor.
        read_timeout: seconds to wait for the answer to a call (PTB's 5 by
            default; the long poll gets ``poll_timeout`` on top). A send that
            times out may have arrived: it fails and is not retried.
        mode: ``"polling"`` (default) or ``"webhook"``: Telegram POSTs updates
            to the bot's HTTP server (``self.ingress``, given by ``BotOS``), so
            several hosts behind a load balancer share the traffic.
        webhook_secret: the ``secret_token`` Telegram sends with each update
            (default ``TELEGRAM_WEBHOOK_SECRET``, else derived from the token).
        delete_webhook_on_stop: call ``deleteWebhook`` at stop (default False:
            with several hosts, one stopping must not unhook the others).

    ``bot`` is the running ``telegram.Bot`` (``None`` while stopped), for
    callers who need a Bot API method the adapter does not wrap.
    """

    name: ClassVar[str] = PLATFORM
    max_message_length: ClassVar[int] = 4096
    max_file_bytes: ClassVar[int] = 50 * 1024 * 1024  # the Bot API's upload limit
    poll_retry_delay: float = 0.5  # first backoff after a failed poll; doubles each time

    _OPTIONS: ClassVar[tuple[str, ...]] = (
        "token", "base_url", "retry_policy", "poll_timeout", "drop_pending_updates",
        "max_poll_failures", "read_timeout", "mode", "webhook_secret",
        "delete_webhook_on_stop",
    )  # fmt: skip

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The token's shape: ``<bot id digits>:<secret>`` (see ``TOKEN_SHAPE``); the mode
        and the webhook secret's characters."""
        mode = options.get("mode", "polling")
        if mode not in ("polling", "webhook"):
            return [("mode", f"must be polling or webhook, got {mode!r}")]
        secret, where = credential_in(options, env, "webhook_secret", SECRET_ENV)
        if mode == "webhook" and secret and not valid_secret(secret):
            return [("webhook_secret", f"{where} must be 1-256 letters, digits, '_' or '-'")]
        token, where = credential_in(options, env, "token", TOKEN_ENV)
        if not token:
            return []  # "not set" is the config check's own problem
        problem = whitespace_problem(token, where)
        if problem is None and not TOKEN_SHAPE.fullmatch(token):
            problem = (
                f"{where} is not a Telegram bot token, which looks like "
                "123456789:AAH... (the bot's id, a colon, then about 35 letters, digits, "
                "'_' or '-'); copy it again from @BotFather (/token)"
            )
        return [("token", problem)] if problem else []

    def __init__(
        self,
        *,
        token: str | None = None,
        base_url: str | None = None,
        retry_policy: RetryPolicy | None = None,
        poll_timeout: float = 10.0,
        drop_pending_updates: bool = False,
        max_poll_failures: int = 3,
        read_timeout: float = 5.0,
        mode: str = "polling",
        webhook_secret: str | None = None,
        delete_webhook_on_stop: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"unknown telegram option(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(self._OPTIONS)}"
            )
        super().__init__(retry_policy=retry_policy)
        if poll_timeout <= 0 or max_poll_failures < 1 or read_timeout <= 0:
            raise ConfigError(
                "telegram: poll_timeout and read_timeout must be > 0 and max_poll_failures >= 1"
            )
        root = base_url if base_url is not None else os.environ.get(BASE_URL_ENV, "")
        self.api_root = (root or DEFAULT_API_ROOT).rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.poll_timeout = float(poll_timeout)
        self.drop_pending_updates = drop_pending_updates
        self.max_poll_failures = max_poll_failures
        self.read_timeout = float(read_timeout)
        if mode not in ("polling", "webhook"):
            raise ConfigError(f"telegram mode must be 'polling' or 'webhook', got {mode!r}")
        self.mode = mode
        self.uses_http = mode == "webhook"
        secret = webhook_secret if webhook_secret is not None else os.environ.get(SECRET_ENV)
        if secret and not valid_secret(secret):
            raise ConfigError(
                f"telegram webhook_secret (or {SECRET_ENV}) must be 1-256 letters, digits, "
                "'_' or '-'"
            )
        self._webhook_secret = secret or None
        self.delete_webhook_on_stop = delete_webhook_on_stop
        self.webhook: TelegramWebhook | None = None
        """The ``/webhooks/telegram`` endpoint while started in webhook mode."""
        self.bot: Bot | None = None
        self.bot_id = 0
        self.bot_username = ""
        self._offset: int | None = None  # next update_id to fetch; survives restarts
        self._poll_task: asyncio.Task[None] | None = None
        self._serving: Ingress | None = None  # the HTTP server acquired in webhook mode
        self._started_once = False
        # How the poll loop pauses (a capped 429 wait, the backoff); tests swap it.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __repr__(self) -> str:
        return f"TelegramAdapter(api_root={self.api_root!r}, bot={self.bot_username or '?'})"

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Check the token (``getMe``), clear any webhook, start polling; return once polling.

        Raises ``ConfigError`` when there is no token, ``PlatformAuthError``
        for a rejected one and ``PlatformUnavailable`` when the server cannot
        be reached.
        """
        if self._poll_task is not None or self.webhook is not None:
            raise RuntimeError("telegram adapter is already started; stop() it first")
        self._token = self._token or os.environ.get(TOKEN_ENV, "")
        if not self._token:
            raise ConfigError(f"no Telegram bot token: set {TOKEN_ENV} (or pass token=)")
        if self.mode == "webhook" and self.ingress is None:
            raise ConfigError(
                "telegram mode: webhook needs the HTTP server: serve it with BotOS or "
                "`onethread run` (or pass ingress=Ingress(...) to the Bot)"
            )
        bot = Bot(
            self._token,
            base_url=f"{self.api_root}/bot",
            base_file_url=f"{self.api_root}/file/bot",
            request=HTTPXRequest(connection_pool_size=32, read_timeout=self.read_timeout),
            # The long poll holds its connection for up to poll_timeout; PTB adds
            # the poll timeout to this read timeout for getUpdates.
            get_updates_request=HTTPXRequest(connection_pool_size=2),
        )
        self.bot = bot
        try:
            with map_telegram_errors():
                await bot.initialize()  # getMe: checks the token
                me = bot.bot
                self.bot_id, self.bot_username = me.id, me.username or ""
                drop = self.drop_pending_updates and not self._started_once
                if self.mode == "webhook":
                    await self._start_webhook(bot, on_inbound, drop)
                    self._started_once = True
                    return
                # Polling and a webhook exclude each other (409 Conflict); as PTB's Updater does.
                await bot.delete_webhook(drop_pending_updates=drop)
        except BaseException:
            await self.stop()  # a failed start leaves no client open
            raise
        self._started_once = True
        self._poll_task = asyncio.create_task(
            self._poll(bot, on_inbound), name=f"telegram-poll-{self.bot_username}"
        )
        self._poll_task.add_done_callback(self._poll_done)
        log.info("telegram: polling as @%s via %s", self.bot_username, self.api_root)

    async def _start_webhook(self, bot: Bot, on_inbound: OnInbound, drop: bool) -> None:
        """Mount ``/webhooks/telegram``, serve, and register it when there is a public URL."""
        ingress = self.ingress
        assert ingress is not None  # checked by start()
        secret = self._webhook_secret or derive_secret(self._token)

        def normalize(update: Update) -> Inbound | None:
            return normalize_update(update, bot_id=self.bot_id, bot_username=self.bot_username)

        endpoint = TelegramWebhook(bot, secret, normalize, on_inbound)
        ingress.mount_webhook(PLATFORM, endpoint)
        self.webhook = endpoint
        await ingress.acquire()
        self._serving = ingress
        url = ingress.webhook_url(PLATFORM)
        if url is None:
            log.info(
                "telegram: webhook mode as @%s on %s without http.public_url: not registered "
                "with Telegram (setWebhook it yourself)",
                self.bot_username, ingress.url + "webhooks/telegram",
            )  # fmt: skip
            return
        await bot.set_webhook(
            url,
            allowed_updates=list(ALLOWED_UPDATES),
            secret_token=secret,
            drop_pending_updates=drop,
        )
        log.info("telegram: webhook %s registered as @%s", url, self.bot_username)

    async def stop(self) -> None:
        """Stop polling (or unmount the webhook, finishing its started turns) and close the
        HTTP clients. Idempotent; returns within a few seconds."""
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # unlike `await task`, keeps a cancel of stop() itself
        endpoint, self.webhook = self.webhook, None
        serving, self._serving = self._serving, None
        if endpoint is not None:
            if self.ingress is not None:
                self.ingress.unmount_webhook(PLATFORM, endpoint)
            await endpoint.tasks.close()
        bot, self.bot = self.bot, None
        if bot is not None:
            if endpoint is not None and self.delete_webhook_on_stop and serving is not None:
                if serving.public_url is not None:
                    try:
                        with map_telegram_errors():
                            await bot.delete_webhook()
                    except PlatformError as exc:
                        log.warning("telegram: deleteWebhook at stop failed: %s", exc)
            await bot.shutdown()
        if serving is not None:
            await serving.release()

    def _poll_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug or an unreadable update: let the supervisor restart us
            log.error("telegram: polling stopped unexpectedly", exc_info=exc)
            lost = ConnectionLost(f"polling stopped: {exc!r}", platform=PLATFORM)
            lost.__cause__ = exc
            self.report_failure(lost)

    async def _poll(self, bot: Bot, on_inbound: OnInbound) -> None:
        failures = 0
        capped = False  # a long rate limit is being sat out (logged once, not per poll)
        while True:
            try:
                with map_telegram_errors():
                    updates = await bot.get_updates(
                        offset=self._offset, timeout=dtm.timedelta(seconds=self.poll_timeout),
                        allowed_updates=ALLOWED_UPDATES,
                    )  # fmt: skip
            except RetryAfter as exc:
                # The server's say-so is capped as a send's wait is: a 429 asking for
                # 97 minutes must not deafen the bot. Poll again after the cap; if
                # still limited, the server says so again (logged at WARNING once).
                wait = min(exc.retry_after, self.retry_policy.max_delay)
                if wait < exc.retry_after:
                    if not capped:
                        log.warning(
                            "telegram: getUpdates rate limited for %gs; polling again every "
                            "%gs until it lifts", exc.retry_after, wait,
                        )  # fmt: skip
                    capped = True
                else:
                    log.warning("telegram: getUpdates rate limited; waiting %gs", wait)
                await self.sleep(wait)
                continue
            except PlatformAuthError as exc:
                self.report_failure(exc)
                return
            except PlatformError as exc:
                failures += 1
                reason = exc.__cause__ or exc  # the SDK's error, without our "telegram:" prefix
                if failures >= self.max_poll_failures:
                    lost = ConnectionLost(
                        f"getUpdates failed {failures} times in a row, last: {reason!r}",
                        platform=PLATFORM,
                    )
                    lost.__cause__ = exc
                    self.report_failure(lost)
                    return
                delay = self.poll_retry_delay * 2 ** (failures - 1)
                log.warning("telegram: getUpdates failed (%r); retrying in %.2fs", reason, delay)
                await self.sleep(delay)
                continue
            failures = 0
            capped = False
            for update in updates:
                await self._deliver(update, on_inbound)
                # Confirmed by the next getUpdates; set after delivery, so a stop
                # mid-batch redelivers (the gate drops duplicates) rather than loses.
                self._offset = update.update_id + 1

    async def _deliver(self, update: Update, on_inbound: OnInbound) -> None:
        inbound = normalize_update(update, bot_id=self.bot_id, bot_username=self.bot_username)
        if inbound is None:
            log.debug("telegram: ignoring update %s (no text message)", update.update_id)
            return
        try:
            await on_inbound(inbound)
        except Exception:  # one bad message must not stop the polling loop
            log.exception("telegram: handling update %s failed", update.update_id)

    # -- sending ---------------------------------------------------------------

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """``sendPhoto`` for images up to 10 MB, else ``sendDocument`` (multipart upload)."""
        bot = self._running_bot()
        upload = InputFile(data, filename=attachment.name or "file", attach=True)
        common: dict[str, Any] = {
            "chat_id": _chat_ref(chat_id),
            "caption": attachment.caption or None,
            "message_thread_id": _thread_ref(thread_id),
        }
        with map_telegram_errors():
            if attachment.kind == "image" and len(data) <= _PHOTO_MAX:
                message = await bot.send_photo(photo=upload, **common)
            else:
                message = await bot.send_document(document=upload, **common)
        return str(message.message_id)

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """``getFile``, then the file itself from the Bot API's file URL (up to 20 MB there)."""
        if not isinstance(msg.raw, Message):
            raise BadRequest("this message carries no Telegram file", platform=PLATFORM)
        file_id = media(msg.raw)[index][1]
        bot = self._running_bot()
        with map_telegram_errors():
            file = await bot.get_file(file_id)
            data = await file.download_as_bytearray()
        return bytes(data)

    def _running_bot(self) -> Bot:
        if self.bot is None:
            raise PlatformUnavailable("not connected: start() the adapter first", platform=PLATFORM)
        return self.bot

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Send one chunk with ``sendMessage`` (HTML from Markdown, or plain) into the topic."""
        bot = self._running_bot()
        with map_telegram_errors():
            message = await bot.send_message(
                chat_id=_chat_ref(chat_id),
                text=to_telegram_html(text) if formatted else text,
                parse_mode=ParseMode.HTML if formatted else None,
                message_thread_id=_thread_ref(thread_id),
            )
        return str(message.message_id)

    def measure(self, markdown: str) -> int:
        """Characters Telegram counts: the text once its HTML entities are parsed."""
        return len(to_plain(markdown))

    async def do_edit(
        self, chat_id: str, message_id: str, text: str, thread_id: str = "", *,
        formatted: bool = True,
    ) -> None:  # fmt: skip
        """Replace a sent message's text with ``editMessageText`` (HTML from Markdown, or plain).

        Telegram's "message is not modified" (the same text again) is no error here.
        """
        bot = self._running_bot()
        try:
            with map_telegram_errors():
                await bot.edit_message_text(
                    chat_id=_chat_ref(chat_id),
                    message_id=int(message_id),
                    text=to_telegram_html(text) if formatted else text,
                    parse_mode=ParseMode.HTML if formatted else None,
                )
        except BadRequest as exc:
            if not isinstance(exc.__cause__, tg.BadRequest) or not not_modified(exc.__cause__):
                raise

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """``sendChatAction(typing)`` in the chat (and forum topic); Telegram shows it ~5 s."""
        bot = self._running_bot()
        with map_telegram_errors():
            await bot.send_chat_action(
                chat_id=_chat_ref(chat_id),
                action=ChatAction.TYPING,
                message_thread_id=_thread_ref(thread_id),
            )
