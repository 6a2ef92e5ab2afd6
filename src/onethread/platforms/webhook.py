"""The generic ``webhook`` platform: any system talks to the agent by signed JSON POSTs.

``POST /webhooks/webhook`` on the one HTTP server (:mod:`.ingress`) with a JSON
object body::

    {"user_id": "u-42", "text": "What is on my list?",       # required
     "chat_id": "ticket-7", "user_name": "Ada",              # optional
     "message_id": "evt-123",                                # optional: retries answered once
     "callback_url": "https://crm.example.com/onethread"}    # optional (async mode)

signed with the shared secret (``WEBHOOK_SECRET`` or the ``secret`` option)::

    X-Onethread-Signature: sha256=<hex HMAC-SHA256 of the raw body>

A missing signature is 401, a wrong one 403 (logged without the body, nothing
runs). A body that is not such an object is 400 with the fix in ``error``.
Every DM is the sender's (``user_id``) conversation; ``chat_id`` (default the
``user_id``) is where replies go.

``mode: sync`` (default): the response carries the reply once the turn ends,
``200 {"ok": true, "message_id", "reply", "replies": [...]}`` (``replies``: each
message the turn sent; ``reply``: them joined). After ``reply_timeout``
seconds (default 30) the answer is ``504 {"ok": false, "error": ...}``; the
turn goes on and its reply is kept in the history. A repeat of a
``message_id`` already answered gets ``200`` with ``"duplicate": true`` and no
reply. ``mode: async``: ``202 {"ok": true, "message_id"}`` at once; each reply
is POSTed to ``callback_url`` (the request's, else the ``callback_url``
option) as ``{"type": "message", "chat_id", "user_id", "text", "in_reply_to",
"message_id"}``, signed the same way, and retried with backoff (``retry_policy``)
on connection errors, 429 and 5xx. Messages the bot sends on its own
(``notify``, reminders) go to the chat's last ``callback_url`` (kept in memory),
else the option's. Responses of this endpoint carry ``X-Onethread-Signature``
too, so a caller can check them.

Callback URLs and SSRF: a callback URL makes this server send a request where
the caller says. Only ``http``/``https`` URLs without user info are taken;
whoever holds the secret can still point the bot at hosts on its own network
(a metadata service, an admin port). Set ``callback_hosts`` (``["crm.example.com",
"*.example.org", "hooks.example.com:8443"]``) to allow only those hosts; a URL
whose host is not listed is refused with 400. Without it every host is allowed
(the secret is the only guard): set it whenever this server can reach
anything private.

The platform takes no files (a reply's file is announced in a line of text).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ..errors import BadRequest, ConfigError, OutcomeUnknown, PlatformUnavailable, RetryAfter
from .base import Adapter, Inbound, OnInbound, credential_in, whitespace_problem
from .delivery import RetryPolicy
from .ingress import Ingress, WebhookTasks, json_response, refuse

__all__ = [
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "WebhookAdapter",
    "check_callback_url",
    "sign",
]

log = logging.getLogger("onethread.platforms.webhook")

PLATFORM = "webhook"
SECRET_ENV = "WEBHOOK_SECRET"
MIN_SECRET_CHARS = 16
"""The shortest secret `run --check` accepts (a guessable one lets anyone write as anyone)."""
SIGNATURE_HEADER = "X-Onethread-Signature"
_MODES = ("sync", "async")
_ID_LIMIT = 256


def sign(secret: str, body: bytes) -> str:
    """The ``X-Onethread-Signature`` value of ``body``: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _host_allowed(host: str, port: int | None, allowed: Iterable[str]) -> bool:
    for entry in allowed:
        name, _, want_port = entry.lower().partition(":")
        if want_port and (port is None or str(port) != want_port):
            continue
        if name == host or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


def check_callback_url(url: str, allowed_hosts: Sequence[str] = ()) -> str | None:
    """Why ``url`` may not be a callback (``None``: it may).

    ``http``/``https`` only, a host, no ``user:password@``; with
    ``allowed_hosts``, the host (and port when an entry names one) must be
    listed (``*.example.com`` matches its subdomains).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "callback_url is not a URL; send an absolute http(s) URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback_url must be an absolute http:// or https:// URL"
    if parts.username or parts.password:
        return "callback_url must not carry user:password@; put credentials elsewhere"
    if allowed_hosts and not _host_allowed(parts.hostname.lower(), port, allowed_hosts):
        return (
            f"callback_url host {parts.hostname!r} is not allowed; add it to the webhook "
            "platform's callback_hosts option"
        )
    return None


@dataclass
class _Exchange:
    """One request's turn: what it sent, and where (loop thread only)."""

    message_id: str
    callback_url: str
    sync: bool
    replies: list[str] = field(default_factory=list)
    done: asyncio.Future[str] | None = None  # sync: set to "" or the drop reason


class WebhookAdapter(Adapter):
    """Serve any system by signed JSON POSTs on ``/webhooks/webhook`` (see the module doc).

    Args:
        secret: the shared HMAC secret (default ``WEBHOOK_SECRET``); ``token``
            is taken as the secret too (``Bot(token=...)``).
        mode: ``"sync"`` (the reply in the response) or ``"async"`` (202, the
            reply POSTed to ``callback_url``).
        reply_timeout: seconds a sync request waits for its turn (then 504).
        callback_url: where async replies go when a request names none, and
            where the bot's own messages go for chats that never sent one.
        callback_hosts: the hosts callbacks may go to (empty: any; see SSRF).
        callback_timeout: seconds one callback POST may take.
        retry_policy: how callbacks are retried (connection errors, 429, 5xx).

    Raises ``ConfigError`` for a bad mode, timeout or ``callback_url``; the
    missing secret is a ``ConfigError`` from ``start()``.
    """

    name: ClassVar[str] = PLATFORM
    max_message_length: ClassVar[int] = 100_000

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """A known mode, a usable secret and default callback URL."""
        problems: list[tuple[str, str]] = []
        mode = options.get("mode", "sync")
        if mode not in _MODES:
            problems.append(("mode", f"must be sync or async, got {mode!r}"))
        secret, where = credential_in(options, env, "secret", SECRET_ENV)
        problem = whitespace_problem(secret, where) if secret else None
        if problem is None and secret and len(secret) < MIN_SECRET_CHARS:
            problem = (
                f"{where} is too short ({len(secret)} characters): whoever guesses it "
                f"writes as any user_id; use at least {MIN_SECRET_CHARS} random ones "
                "(e.g. `openssl rand -hex 32`)"
            )
        if problem is not None:
            problems.append(("secret", problem))
        url = options.get("callback_url")
        hosts = options.get("callback_hosts") or ()
        if url and (problem := check_callback_url(str(url), list(hosts))) is not None:
            problems.append(("callback_url", problem))
        return problems

    def __init__(
        self,
        *,
        token: str | None = None,
        secret: str | None = None,
        mode: str = "sync",
        reply_timeout: float = 30.0,
        callback_url: str | None = None,
        callback_hosts: Sequence[str] = (),
        callback_timeout: float = 10.0,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(retry_policy=retry_policy)
        if mode not in _MODES:
            raise ConfigError(f"webhook mode must be 'sync' or 'async', got {mode!r}")
        if reply_timeout <= 0 or callback_timeout <= 0:
            raise ConfigError("webhook reply_timeout and callback_timeout must be positive")
        self.mode = mode
        self.uses_http = True
        self.reply_timeout = float(reply_timeout)
        self.callback_timeout = float(callback_timeout)
        self.callback_hosts = tuple(str(h).lower() for h in callback_hosts)
        if callback_url and (problem := check_callback_url(callback_url, self.callback_hosts)):
            raise ConfigError(f"webhook callback_url option: {problem}")
        self.callback_url = callback_url or ""
        self._secret = secret or token or os.environ.get(SECRET_ENV, "")
        self.tasks = WebhookTasks(PLATFORM)
        """Async mode's turns, started after the 202."""
        self._exchanges: dict[str, _Exchange] = {}  # thread token -> its request (loop only)
        self._chat_callbacks: dict[str, str] = {}  # chat id -> its last callback URL (loop only)
        self._on_inbound: OnInbound | None = None
        self._serving: Ingress | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Mount ``/webhooks/webhook`` on the bot's HTTP server and serve.

        Raises ``ConfigError`` without a secret or an HTTP server, and
        ``PlatformUnavailable`` when the server cannot listen.
        """
        if self._serving is not None:
            raise RuntimeError("the webhook adapter is already started; stop() it first")
        self._secret = self._secret or os.environ.get(SECRET_ENV, "")
        if not self._secret:
            raise ConfigError(
                f"the webhook platform needs a shared secret: export {SECRET_ENV}=<a long "
                "random string> (or set the secret option)"
            )
        ingress = self.ingress
        if ingress is None:
            raise ConfigError(
                "the webhook platform needs the HTTP server: serve it with BotOS or "
                "`onethread run` (or pass ingress=Ingress(...) to the Bot)"
            )
        self._on_inbound = on_inbound
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.callback_timeout)
        )
        ingress.mount_webhook(PLATFORM, self)
        try:
            await ingress.acquire()
        except BaseException:
            await self.stop()
            raise
        self._serving = ingress
        log.info("webhook: %s mode on %s", self.mode,
                 ingress.webhook_url(PLATFORM) or ingress.url + "webhooks/webhook")  # fmt: skip

    async def stop(self) -> None:
        """Unmount, finish async turns (bounded), answer open sync requests 503. Idempotent."""
        if self.ingress is not None:
            self.ingress.unmount_webhook(PLATFORM, self)
        await self.tasks.close()
        for exchange in list(self._exchanges.values()):
            if exchange.done is not None and not exchange.done.done():
                exchange.done.set_result("stopping")
        serving, self._serving = self._serving, None
        if serving is not None:
            await serving.release()
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        self._on_inbound = None

    # -- inbound ---------------------------------------------------------------

    def _reply(self, status: int, **fields: Any) -> web.Response:
        response = json_response(status, **fields)
        assert isinstance(response.body, bytes)
        response.headers[SIGNATURE_HEADER] = sign(self._secret, response.body)
        return response

    async def webhook_post(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Verify the signature, check the body, then answer (sync: with the reply)."""
        given = request.headers.get(SIGNATURE_HEADER)
        if given is None:
            return refuse(request, PLATFORM, 401, f"no {SIGNATURE_HEADER} header")
        if not hmac.compare_digest(given.encode(), sign(self._secret, body).encode()):
            return refuse(request, PLATFORM, 403, f"wrong {SIGNATURE_HEADER}")
        on_inbound = self._on_inbound
        if on_inbound is None:
            return self._reply(503, ok=False, error="the webhook platform is stopping")
        try:
            fields = _fields(body)
            callback = fields.get("callback_url") or ""
            if callback and (problem := check_callback_url(callback, self.callback_hosts)):
                raise ValueError(problem)
            if self.mode == "async" and not (callback or self.callback_url):
                raise ValueError(
                    'async mode needs "callback_url" in the body (or the callback_url option)'
                )
        except ValueError as exc:
            return refuse(request, PLATFORM, 400, str(exc))
        chat_id = fields.get("chat_id") or fields["user_id"]
        if callback:
            self._chat_callbacks[chat_id] = callback
        message_id = fields.get("message_id") or uuid.uuid4().hex
        token = uuid.uuid4().hex
        exchange = _Exchange(message_id, callback or self.callback_url, self.mode == "sync")
        inbound = Inbound(
            platform=PLATFORM, chat_id=chat_id, chat_type="dm", user_id=fields["user_id"],
            text=fields["text"], message_id=message_id, user_name=fields.get("user_name", ""),
            thread_id=token, mentions_bot=True,
        )  # fmt: skip
        if not exchange.sync:
            self._exchanges[token] = exchange
            self.tasks.spawn(on_inbound(inbound))
            return self._reply(202, ok=True, message_id=message_id)
        exchange.done = asyncio.get_running_loop().create_future()
        self._exchanges[token] = exchange
        try:
            await on_inbound(inbound)
            dropped = await asyncio.wait_for(asyncio.shield(exchange.done), self.reply_timeout)
        except TimeoutError:
            error = (
                f"no reply within {self.reply_timeout:g} s (reply_timeout); the turn goes on "
                "and its reply is kept in the history; use mode: async for long turns"
            )
            return self._reply(504, ok=False, message_id=message_id, error=error)
        finally:
            self._exchanges.pop(token, None)
        if dropped == "stopping":
            error = "the webhook platform is stopping; send it again later"
            return self._reply(503, ok=False, message_id=message_id, error=error)
        if dropped:
            duplicate = dropped.startswith("duplicate")
            return self._reply(
                200, ok=True, message_id=message_id, reply="", replies=[], duplicate=duplicate
            )
        replies = exchange.replies
        return self._reply(
            200, ok=True, message_id=message_id, reply="\n\n".join(replies), replies=replies
        )

    def on_done(self, msg: Inbound, dropped: str = "") -> None:
        """A sync request's turn ended (or was dropped): answer it."""
        exchange = self._exchanges.get(msg.thread_id)
        if exchange is not None and exchange.done is not None and not exchange.done.done():
            exchange.done.set_result(dropped)
        elif exchange is not None and not exchange.sync:
            self._exchanges.pop(msg.thread_id, None)

    # -- sending ---------------------------------------------------------------

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Into the open sync response, else POSTed to the callback URL (signed).

        Raises ``BadRequest`` when there is nowhere to deliver (no open request
        and no callback URL), ``PlatformUnavailable``/``RetryAfter`` for a
        callback that can be retried, ``OutcomeUnknown`` for one that timed out.
        """
        exchange = self._exchanges.get(thread_id) if thread_id else None
        if exchange is not None and exchange.sync and exchange.done is not None:
            if not exchange.done.done():
                exchange.replies.append(text)
                return f"{exchange.message_id}:{len(exchange.replies)}"
        url = (exchange.callback_url if exchange is not None else "") or (
            self._chat_callbacks.get(chat_id) or self.callback_url
        )
        if not url:
            raise BadRequest(
                f"nowhere to deliver to webhook chat {chat_id!r}: no open request and no "
                "callback_url (set the callback_url option)",
                platform=PLATFORM,
            )
        message_id = uuid.uuid4().hex
        payload: dict[str, Any] = {"type": "message", "chat_id": chat_id, "text": text,
                                   "message_id": message_id}  # fmt: skip
        if exchange is not None:
            payload["in_reply_to"] = exchange.message_id
        await self._post(url, json.dumps(payload, ensure_ascii=False).encode())
        return message_id

    async def _post(self, url: str, body: bytes) -> None:
        http = self._http
        if http is None:
            raise PlatformUnavailable("not started", platform=PLATFORM)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body)}
        try:
            async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise PlatformUnavailable(
                f"callback not reachable: {exc!r}", platform=PLATFORM
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OutcomeUnknown(f"callback cut off: {exc!r}", platform=PLATFORM) from exc
        if status == 429:
            try:
                wait = float(retry_after)
            except ValueError:
                wait = 1.0
            raise RetryAfter(wait, platform=PLATFORM)
        if status >= 500:
            raise PlatformUnavailable(f"callback answered {status}", platform=PLATFORM)
        if not 200 <= status < 300:
            raise BadRequest(f"callback answered {status}", platform=PLATFORM)


def _fields(body: bytes) -> dict[str, str]:
    """The request's fields, checked; ``ValueError`` naming the fix."""
    example = 'send a JSON object such as {"user_id": "u-42", "text": "hello"}'
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON ({exc}); {example}") from None
    if not isinstance(data, dict):
        raise ValueError(f"body is not a JSON object; {example}")
    fields: dict[str, str] = {}
    for name in ("user_id", "text", "chat_id", "user_name", "message_id", "callback_url"):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and name.endswith("_id"):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f'"{name}" must be a string, got {type(value).__name__}')
        if name.endswith("_id") and len(value) > _ID_LIMIT:
            raise ValueError(f'"{name}" is longer than {_ID_LIMIT} characters')
        fields[name] = value
    if not fields.get("user_id", "").strip():
        raise ValueError(f'"user_id" is missing: add the sender\'s id; {example}')
    if not fields.get("text", "").strip():
        raise ValueError(f'"text" is missing or empty: add the message text; {example}')
    return fields
