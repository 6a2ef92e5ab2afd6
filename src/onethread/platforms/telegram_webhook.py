"""Telegram ``mode: webhook``: updates POSTed by Telegram to ``/webhooks/telegram``.

Used by :class:`onethread.platforms.telegram.TelegramAdapter` when built with
``mode="webhook"``. At start the adapter checks its token (``getMe``), mounts
:class:`TelegramWebhook` on the bot's HTTP server (``onethread.platforms.ingress``)
and, when the server has a ``public_url``, calls ``setWebhook`` with
``public_url + /webhooks/telegram``, the ``secret_token`` and the
``allowed_updates`` it handles. Without ``public_url`` nothing is registered
(register the URL yourself, or point a local Bot API server at it).

Each request is verified first: ``X-Telegram-Bot-Api-Secret-Token`` must equal
the secret (missing: 401; wrong: 403; logged without the body; nothing runs).
The body becomes an ``Update`` with python-telegram-bot's ``Update.de_json``,
is answered 200 at once, and its turn runs after in a tracked task. Telegram
redelivers an update it got no 2xx for; the bot's duplicate filter (shared
across hosts on Redis/PostgreSQL) answers it once.

The secret: ``webhook_secret=`` (or ``TELEGRAM_WEBHOOK_SECRET``), else derived
from the bot token (an HMAC, so every host of one bot derives the same one and
it is as secret as the token). Telegram allows 1-256 characters of
``A-Z a-z 0-9 _ -``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from telegram import Bot, Update

from .base import Inbound, OnInbound
from .ingress import WebhookTasks, json_response, refuse

__all__ = ["SECRET_ENV", "SECRET_HEADER", "TelegramWebhook", "derive_secret", "valid_secret"]

log = logging.getLogger("onethread.platforms.telegram")

SECRET_ENV = "TELEGRAM_WEBHOOK_SECRET"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")

Normalize = Callable[[Update], Inbound | None]


def valid_secret(secret: str) -> bool:
    """True when Telegram accepts ``secret`` as a ``secret_token``."""
    return bool(_SECRET_RE.fullmatch(secret))


def derive_secret(token: str) -> str:
    """The webhook secret of a bot with no configured one: 64 hex digits from its token."""
    return hmac.new(token.encode(), b"onethread telegram webhook", hashlib.sha256).hexdigest()


class TelegramWebhook:
    """The ``/webhooks/telegram`` endpoint of one running adapter.

    ``tasks`` holds the turns started after answering; the adapter closes it
    at stop. Touched on the event loop thread only.
    """

    def __init__(self, bot: Bot, secret: str, normalize: Normalize, on_inbound: OnInbound) -> None:
        self.bot = bot
        self.secret = secret.encode()
        self.normalize = normalize
        self.on_inbound = on_inbound
        self.tasks = WebhookTasks("telegram")

    async def webhook_post(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Verify the secret header, parse the update, answer 200, run the turn after."""
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            return refuse(request, "telegram", 401, f"no {SECRET_HEADER} header")
        if not hmac.compare_digest(given.encode(), self.secret):
            return refuse(request, "telegram", 403, f"wrong {SECRET_HEADER}")
        try:
            data: Any = json.loads(body)
            if not isinstance(data, dict) or "update_id" not in data:
                raise ValueError("not an update")
            update = Update.de_json(data, self.bot)
        except Exception as exc:  # PTB raises whatever a malformed object trips over
            return refuse(request, "telegram", 400, f"not a Telegram update ({type(exc).__name__})")
        inbound = self.normalize(update)
        if inbound is None:
            log.debug("telegram: ignoring update %s (no text message)", update.update_id)
        else:
            self.tasks.spawn(self.on_inbound(inbound))
        return json_response(200, ok=True)
