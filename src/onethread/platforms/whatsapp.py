"""WhatsApp adapter: the Cloud API (Graph API over aiohttp), inbound by webhook.

Credentials (options, else the environment, read at construction):
``token`` (``WHATSAPP_ACCESS_TOKEN``), ``phone_number_id``
(``WHATSAPP_PHONE_NUMBER_ID``), ``app_secret`` (``WHATSAPP_APP_SECRET``: the
key of the webhook signatures) and ``verify_token``
(``WHATSAPP_VERIFY_TOKEN``: what you type in the Meta app's webhook set-up).
``base_url`` (``WHATSAPP_API_BASE_URL``) points the client at another Graph
API root (a proxy, the tests' fake); default ``https://graph.facebook.com/v22.0``.

Inbound: WhatsApp only speaks webhooks. ``onethread run`` serves
``GET /webhooks/whatsapp`` (Meta's verification: ``hub.mode=subscribe`` with
the verify token, answered with ``hub.challenge``) and ``POST
/webhooks/whatsapp`` (checked against ``X-Hub-Signature-256`` with the app
secret before anything else; answered 200 at once, the turn runs after).
See :mod:`onethread.platforms.whatsapp_events` for what becomes a message:
text, media (image, audio, voice note, video, document, sticker: fetched
from the Graph media URL with the token into the blob store), a location
and a shared contact as a line of text, a button or list reply as the title
tapped. Reactions are not messages to answer: they are ignored (logged at
DEBUG), as are unsupported and system messages. ``contacts[].profile.name``
is the display name. ``statuses[]`` (``sent``, ``delivered``, ``read``,
``failed``) never start a turn: each is recorded against the message the bot
sent (:meth:`WhatsAppAdapter.delivery_status`; a failure is logged at
WARNING with Graph's code).

Who is who: a person's id is their ``wa_id``. WhatsApp's business-scoped user
ids (BSUIDs: ``user_id`` beside or instead of ``wa_id``) are accepted: the
``wa_id`` wins when the payload has it, a BSUID seen with a ``wa_id`` maps to
it (:class:`~onethread.platforms.whatsapp_events.Aliases`), and a person
known only by BSUID is that BSUID (sent to with ``recipient`` instead of
``to``). So an account that moves from phone number to username keeps its
history: Meta keeps the phone number in webhooks for everyone the business
talked with since the change (its contact book), every such payload also
carries the BSUID, and from then on a BSUID-only message maps to the same
``wa_id`` and the same session. A host that had not seen the pair yet (a
restart, another host) answers a BSUID-only message under the BSUID; the next
message that carries both ids moves that session's entries into the
``wa_id``'s (``HistoryStore.merge``, under both turn locks) before its turn.

Outbound: text (4,096 characters, WhatsApp's ``*bold*``/``_italic_`` markup
from the Markdown), files uploaded to ``/PHONE_NUMBER_ID/media`` then sent
by id (image, audio, video, sticker, else document; 100 MB). While a turn
runs the person's message is marked read with the typing indicator. WhatsApp
cannot edit a message: replies are sent whole (no streaming).

The 24-hour customer service window: free-form messages reach a person only
within 24 hours of their last message. Before sending, the adapter checks
when the person last wrote (this host's memory, else their history); outside
the window a send raises ``DeliveryWindowClosed`` (``notify()`` and
scheduled messages keep the text in the history marked
``delivery_error: "DeliveryWindowClosed"``), unless ``template`` names an
approved template: then that template is sent instead (once per send, its
first body parameter the text when ``template_param`` is true) and the
history entry is marked ``delivery: "template"``, ``template: NAME``.

Errors: see :func:`~onethread.platforms.whatsapp_graph.map_whatsapp_errors`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import yarl
from aiohttp import web

from ..errors import BadRequest, ConfigError, DeliveryWindowClosed
from ..session._conn.shared import masked
from ..session.attachments import Attachment
from .base import Adapter, Inbound, OnInbound, credential_in, whitespace_problem
from .delivery import RetryPolicy
from .ingress import Ingress, WebhookTasks, refuse
from .markup import to_whatsapp
from .whatsapp_events import (
    SIGNATURE_HEADER,
    Aliases,
    Status,
    is_bsuid,
    media_ids,
    parse_webhook,
    signature_ok,
)
from .whatsapp_graph import DEFAULT_BASE_URL, GraphClient, map_whatsapp_errors

__all__ = ["WINDOW_SECONDS", "WhatsAppAdapter", "map_whatsapp_errors"]

log = logging.getLogger("onethread.platforms.whatsapp")

PLATFORM = "whatsapp"
WINDOW_SECONDS = 24 * 3600
_ENV = {
    "token": "WHATSAPP_ACCESS_TOKEN",
    "phone_number_id": "WHATSAPP_PHONE_NUMBER_ID",
    "app_secret": "WHATSAPP_APP_SECRET",
    "verify_token": "WHATSAPP_VERIFY_TOKEN",
}
BASE_URL_ENV = "WHATSAPP_API_BASE_URL"
MEDIA_HOSTS = ("lookaside.fbsbx.com",)  # where Graph's media URLs point
_RECORDS_MAX = 10_000
_TEMPLATE_REUSE = 60.0  # seconds one template stands for the rest of a send
# Per-type limits of the Cloud API's media (bytes); larger files go as documents.
_LIMITS = {"image": 5 * 2**20, "audio": 16 * 2**20, "voice": 16 * 2**20, "video": 16 * 2**20,
           "sticker": 500 * 1024}  # fmt: skip
_TYPES = {
    "image": ("image/jpeg", "image/png"),
    "audio": ("audio/aac", "audio/mp4", "audio/mpeg", "audio/amr", "audio/ogg"),
    "video": ("video/mp4", "video/3gpp"),
    "sticker": ("image/webp",),
}


@functools.lru_cache(maxsize=256)
def _render(markdown: str) -> str:
    """``to_whatsapp``, remembered: ``send()`` measures a reply whole and per chunk, then
    sends it; one parse instead of three (the parse was most of a turn's CPU)."""
    return to_whatsapp(markdown)


def _bounded_put(store: OrderedDict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > _RECORDS_MAX:
        store.popitem(last=False)


class WhatsAppAdapter(Adapter):
    """WhatsApp via the Cloud API (see the module docstring).

    Args:
        token: access token (default ``WHATSAPP_ACCESS_TOKEN``).
        phone_number_id: the business number's id (``WHATSAPP_PHONE_NUMBER_ID``).
        app_secret: the Meta app's secret (``WHATSAPP_APP_SECRET``).
        verify_token: the webhook verify token (``WHATSAPP_VERIFY_TOKEN``).
        base_url: Graph API root with its version (``WHATSAPP_API_BASE_URL``).
        template: an approved template to send outside the 24-hour window
            (``None``: raise ``DeliveryWindowClosed`` instead).
        template_language: the template's language code (default ``en_US``).
        template_param: pass the text as the template's ``{{1}}`` (default False).
        timeout: seconds per Graph API call.

    ``ConfigError`` (naming the variable) from ``start()`` when a credential
    is missing; ``PlatformAuthError`` when Graph refuses the token.
    """

    name: ClassVar[str] = PLATFORM
    uses_http = True  # inbound comes by webhook on the one HTTP server
    max_message_length: ClassVar[int] = 4096
    max_file_bytes: ClassVar[int] = 100 * 1024 * 1024
    typing_interval: ClassVar[float] = 20.0  # WhatsApp shows the indicator up to 25 s

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """Credentials pasted with spaces; a phone number id that is not digits."""
        problems = []
        for option, variable in _ENV.items():
            value, where = credential_in(options, env, option, variable)
            problem = whitespace_problem(value, where) if value else None
            if problem is None and option == "phone_number_id" and value and not value.isdigit():
                problem = (f"{where} is not a phone number id (digits, under WhatsApp > API "
                           "Setup in the Meta app; not the phone number itself)")  # fmt: skip
            if problem:
                problems.append((option, problem))
        return problems

    def __init__(
        self,
        *,
        token: str | None = None,
        phone_number_id: str | None = None,
        app_secret: str | None = None,
        verify_token: str | None = None,
        base_url: str | None = None,
        template: str | None = None,
        template_language: str = "en_US",
        template_param: bool = False,
        timeout: float = 30.0,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(retry_policy=retry_policy)
        given = {"token": token, "phone_number_id": phone_number_id, "app_secret": app_secret,
                 "verify_token": verify_token}  # fmt: skip
        self._creds = {k: str(v if v else os.environ.get(_ENV[k], "")) for k, v in given.items()}
        url = base_url or os.environ.get(BASE_URL_ENV, "") or DEFAULT_BASE_URL
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{BASE_URL_ENV} must be an http(s) URL, got {url!r}")
        self.base_url = url.rstrip("/")
        self.template = template or None
        self.template_language = template_language
        self.template_param = bool(template_param)
        self.timeout = float(timeout)
        self.aliases = Aliases()
        self.graph: GraphClient | None = None
        self._on_inbound: OnInbound | None = None
        self._session: Any = None  # the Bot's session manager (bind): when people last wrote
        self.tasks = WebhookTasks(PLATFORM)
        """The message handlers started after a webhook's 200 (awaited at stop)."""
        self._serving: Ingress | None = None  # the server we mounted on and acquired
        # Loop thread only: chat -> (Unix time they last wrote, that message's id).
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._statuses: OrderedDict[str, Status] = OrderedDict()
        self._marks: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._templates: dict[str, tuple[float, str]] = {}  # chat -> (loop time, template id)
        self._adopted: OrderedDict[str, str] = OrderedDict()  # BSUID -> wa_id merged into

    @property
    def phone_number_id(self) -> str:
        """The business number's id the adapter sends from."""
        return self._creds["phone_number_id"]

    def bind(self, bot: Any) -> None:
        """Keep the bot's session manager: the window check reads when a person last wrote."""
        self._session = bot.session

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Check the credentials (Graph: the phone number's ``verified_name``), then take
        webhooks at ``/webhooks/whatsapp`` on the bot's HTTP server (``self.ingress``).

        Raises ``ConfigError`` naming what is missing (a credential, or an HTTP
        server: serve it with ``BotOS``/``onethread run``, or give the ``Bot``
        ``ingress=``), ``PlatformAuthError`` when Graph refuses the token.
        """
        missing = [_ENV[k] for k, v in self._creds.items() if not v]
        if missing:
            raise ConfigError(f"the whatsapp platform needs {', '.join(missing)} "
                              "(or the matching options)")  # fmt: skip
        ingress = self.ingress
        if ingress is None:
            raise ConfigError(
                "the whatsapp platform receives messages by webhook: serve it with BotOS or "
                "`onethread run` (one HTTP server), or give the Bot ingress=Ingress(...)"
            )
        ingress.expect_webhook(PLATFORM)  # 503, not 404, until the Graph check passes
        graph = GraphClient(self.base_url, self._creds["token"], timeout=self.timeout)
        graph.open()
        try:
            with map_whatsapp_errors(f"checking the phone number id at {self.base_url}"):
                me = await graph.get(self.phone_number_id, fields="verified_name")
            self._on_inbound = on_inbound
            ingress.mount_webhook(PLATFORM, self)
            await ingress.acquire()
        except BaseException:
            ingress.unmount_webhook(PLATFORM, self)
            self._on_inbound = None
            await graph.close()
            raise
        self.graph = graph
        self._serving = ingress
        url = ingress.webhook_url(PLATFORM) or f"<public_url>{ingress.webhook_path(PLATFORM)}"
        log.info("whatsapp: serving %s (%s) via %s; webhook (callback URL in the Meta app): %s",
                 me.get("verified_name", "?"), self.phone_number_id, self.base_url,
                 url)  # fmt: skip

    async def stop(self) -> None:
        """Stop taking webhooks, let handlers finish (bounded), close the client. Idempotent."""
        self._on_inbound = None
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.unmount_webhook(PLATFORM, self)
        await self.tasks.close(timeout=5.0)
        if serving is not None:
            await serving.release()
        graph, self.graph = self.graph, None
        if graph is not None:
            await graph.close()

    # -- webhooks --------------------------------------------------------------

    async def webhook_get(self, request: web.Request) -> web.StreamResponse:
        """Meta's subscription check: echo ``hub.challenge`` for the right verify token
        (403 otherwise, logged without the token)."""
        query = request.query
        token = self._creds["verify_token"].encode()
        given = query.get("hub.verify_token", "").encode()
        if query.get("hub.mode") != "subscribe" or not token:
            return refuse(request, PLATFORM, 403, "not a subscription request (hub.mode)")
        if not hmac.compare_digest(given, token):
            return refuse(request, PLATFORM, 403, "wrong hub.verify_token")
        return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")

    def verify(self, body: bytes, signature: str | None) -> bool:
        """True when ``signature`` (``X-Hub-Signature-256``) is the app secret's HMAC
        of ``body``."""
        return signature_ok(body, signature, self._creds["app_secret"])

    def parse(self, body: bytes) -> tuple[list[Inbound], list[Status]]:
        """A verified body's messages and status callbacks (statuses recorded here).

        Raises ``BadRequest`` for a body that is not JSON.
        """
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise BadRequest("the webhook body is not JSON", platform=PLATFORM) from exc
        if not isinstance(payload, Mapping):
            raise BadRequest("the webhook body is not a JSON object", platform=PLATFORM)
        inbound, statuses = parse_webhook(
            payload, phone_number_id=self.phone_number_id, aliases=self.aliases
        )
        for status in statuses:
            self._record_status(status)
        now = time.time()
        for msg in inbound:
            # When they wrote, not when it came: Meta retries a webhook for days, and the
            # window runs from the message. (A clock ahead of ours counts as now.)
            try:
                sent_at = min(now, float(msg.raw.get("timestamp") or now))
            except (TypeError, ValueError):
                sent_at = now
            known = self._seen.get(msg.chat_id)
            if known is None or sent_at >= known[0]:
                _bounded_put(self._seen, msg.chat_id, (sent_at, msg.message_id))
        return inbound, statuses

    async def webhook_post(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """A webhook: verified, then answered 200 at once; its messages are handled after.

        401 without a signature, 403 with a wrong one (logged without the
        body); neither starts anything. 400 for a signed body that is not JSON.
        """
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return refuse(request, PLATFORM, 401, f"missing {SIGNATURE_HEADER}")
        if not self.verify(body, signature):
            return refuse(request, PLATFORM, 403, "signature does not match the app secret")
        try:
            inbound, _ = self.parse(body)
        except BadRequest as exc:
            return refuse(request, PLATFORM, 400, str(exc))
        on_inbound = self._on_inbound
        if inbound and on_inbound is not None:
            self.tasks.spawn(self._handle(on_inbound, inbound))
        return web.Response(text="ok")

    async def _handle(self, on_inbound: OnInbound, inbound: list[Inbound]) -> None:
        for msg in inbound:
            try:
                await self._adopt(msg)
                await on_inbound(msg)
            except Exception:  # one bad message must not drop the rest of the batch
                log.exception("whatsapp: handling message %s failed", msg.message_id)

    async def _adopt(self, msg: Inbound) -> None:
        """A message carrying both ids: move what the person wrote as a BSUID alone (on
        a host that did not know the pair yet) into their ``wa_id``'s session, once per
        pair and process, before the message's turn reads it."""
        raw = msg.raw if isinstance(msg.raw, Mapping) else {}
        bsuid = str(raw.get("from_user_id") or "")
        session = self._session
        if not bsuid or bsuid == msg.user_id or session is None:
            return
        if self._adopted.get(bsuid) == msg.user_id:
            return
        src = session.key_for(bsuid, platform=PLATFORM, chat_id=bsuid)
        dst = session.key_for(msg.user_id, platform=PLATFORM, chat_id=msg.chat_id)
        if src != dst:
            async with session.locks.hold(src), session.locks.hold(dst):
                moved = await session.store.merge(src, dst)
            if moved:
                log.info("whatsapp: %d entries of %s moved to %s (same person)", moved,
                         masked(PLATFORM, bsuid), masked(PLATFORM, msg.user_id))  # fmt: skip
        _bounded_put(self._adopted, bsuid, msg.user_id)

    def _record_status(self, status: Status) -> None:
        _bounded_put(self._statuses, status.message_id, status)
        if status.status == "failed":
            log.warning("whatsapp: message %s to %s failed: %s (code %s)", status.message_id,
                        masked(PLATFORM, status.recipient), status.error_title or "?",
                        status.error_code)  # fmt: skip
        else:
            log.debug("whatsapp: message %s %s", status.message_id, status.status)

    def delivery_status(self, message_id: str) -> Status | None:
        """The latest ``statuses[]`` callback for a message the bot sent (this host's last
        10,000), else None."""
        return self._statuses.get(message_id)

    def delivery_marks(self, message_ids: Sequence[str]) -> dict[str, str]:
        """``{"delivery": "template", "template": NAME}`` when these messages went out as
        the template (outside the 24-hour window); else ``{}``."""
        marks: dict[str, str] = {}
        for message_id in message_ids:
            marks.update(self._marks.get(message_id, {}))
        return marks

    # -- the 24-hour window ----------------------------------------------------

    async def last_seen(self, chat_id: str) -> float | None:
        """Unix time the person last wrote (this host's memory, else their history)."""
        seen = self._seen.get(chat_id)
        if seen is not None and time.time() - seen[0] < WINDOW_SECONDS:
            return seen[0]
        session = self._session
        if session is None:
            return seen[0] if seen is not None else None
        unified = session.resolve(PLATFORM, chat_id) or f"{PLATFORM}:{chat_id}"
        entry = await session.last_seen(unified, PLATFORM)
        when = float(entry.timestamp) if entry is not None else None
        if when is not None and (seen is None or when > seen[0]):
            _bounded_put(self._seen, chat_id, (when, entry.message_id))
        return when if seen is None or (when is not None and when > seen[0]) else seen[0]

    async def _window(self, chat_id: str, text: str) -> str | None:
        """None inside the window (send as asked); else the id of the template that
        stands for this send: sent now, or within the last minute (the rest of a
        long text, another notice right after: the person already has it).

        Raises ``DeliveryWindowClosed`` when no template is configured. Only
        checked with a session to read (a bare adapter lets Graph decide).
        """
        if self._session is None:
            return None
        last = await self.last_seen(chat_id)
        if last is not None and time.time() - last < WINDOW_SECONDS:
            return None
        if self.template is None:
            raise DeliveryWindowClosed(chat_id, last_seen=last, platform=PLATFORM)
        sent = self._templates.get(chat_id)
        if sent is not None and asyncio.get_running_loop().time() - sent[0] < _TEMPLATE_REUSE:
            return sent[1]
        return await self._send_template(chat_id, text)

    async def _send_template(self, chat_id: str, text: str) -> str:
        assert self.template is not None
        template: dict[str, Any] = {"name": self.template,
                                    "language": {"code": self.template_language}}  # fmt: skip
        if self.template_param:
            # Template parameters take no line breaks, tabs or runs of 4+ spaces.
            flat = " ".join(text.split())[:1000]
            template["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": flat}]}
            ]
        message_id = await self._post_message(chat_id, {"type": "template", "template": template})
        self._templates[chat_id] = (asyncio.get_running_loop().time(), message_id)
        _bounded_put(self._marks, message_id, {"delivery": "template", "template": self.template})
        log.info("whatsapp: %s outside the 24-hour window: sent template %s",
                 masked(PLATFORM, chat_id), self.template)  # fmt: skip
        return message_id

    # -- outbound --------------------------------------------------------------

    def _graph(self) -> GraphClient:
        if self.graph is None:
            raise BadRequest("not started: start() the adapter first", platform=PLATFORM)
        return self.graph

    async def _post_message(self, chat_id: str, content: Mapping[str, Any]) -> str:
        to = {"recipient": chat_id} if is_bsuid(chat_id) else {"to": chat_id}
        payload = {"messaging_product": "whatsapp", "recipient_type": "individual", **to,
                   **content}  # fmt: skip
        with map_whatsapp_errors(f"send to {masked(PLATFORM, chat_id)}"):
            answer = await self._graph().post(f"{self.phone_number_id}/messages", payload, chat_id)
        try:
            return str(answer["messages"][0]["id"])
        except (KeyError, IndexError, TypeError) as exc:
            raise BadRequest(f"Graph answered a send without a message id: {answer!r}",
                             platform=PLATFORM) from exc  # fmt: skip

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Send one chunk as a text message (WhatsApp markup from the Markdown, or plain).

        Outside the 24-hour window: the template (see the module docstring) or
        ``DeliveryWindowClosed``.
        """
        standing = await self._window(chat_id, text)
        if standing is not None:
            return standing
        body = _render(text) if formatted else text
        return await self._post_message(
            chat_id, {"type": "text", "text": {"preview_url": False, "body": body}}
        )

    def measure(self, markdown: str) -> int:
        """Length of the WhatsApp markup sent."""
        return len(_render(markdown))

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """Mark the person's last message read, with the typing indicator (up to 25 s)."""
        seen = self._seen.get(chat_id)
        if seen is None or not seen[1] or self.graph is None:
            return
        payload = {"messaging_product": "whatsapp", "status": "read", "message_id": seen[1],
                   "typing_indicator": {"type": "text"}}  # fmt: skip
        with map_whatsapp_errors("mark as read"):
            await self.graph.post(f"{self.phone_number_id}/messages", payload)

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """Upload to ``/PHONE_NUMBER_ID/media``, then send by media id (see the module doc)."""
        standing = await self._window(chat_id, attachment.caption or attachment.name)
        if standing is not None:
            return standing
        kind = attachment.kind if attachment.kind in _LIMITS else "document"
        mime = attachment.mime or "application/octet-stream"
        if kind == "voice":
            kind = "audio"
        if kind != "document" and (mime not in _TYPES[kind] or len(data) > _LIMITS[kind]):
            kind = "document"
        name = attachment.name or f"{attachment.kind}"
        with map_whatsapp_errors(f"upload of {name}"):
            uploaded = await self._graph().upload(
                f"{self.phone_number_id}/media", data, mime=mime, filename=name
            )
        media: dict[str, Any] = {"id": str(uploaded["id"])}
        if attachment.caption and kind in ("image", "video", "document"):
            media["caption"] = attachment.caption[:1024]
        if kind == "document":
            media["filename"] = name
        return await self._post_message(chat_id, {"type": kind, kind: media})

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """The media's URL from ``GET /MEDIA_ID``, then its bytes with the token.

        Only from Meta's media host (``lookaside.fbsbx.com``, https) or the
        host of ``base_url``; redirects are not followed.
        """
        if not isinstance(msg.raw, Mapping):
            raise BadRequest("this message carries no WhatsApp media", platform=PLATFORM)
        media_id = media_ids(msg.raw)[index]
        graph = self._graph()
        with map_whatsapp_errors(f"media {media_id}"):
            info = await graph.get(media_id, phone_number_id=self.phone_number_id)
        url = yarl.URL(str(info.get("url") or ""))
        api = yarl.URL(self.base_url)
        meta_host = url.host in MEDIA_HOSTS and url.scheme == "https"
        if not (meta_host or (url.host == api.host and url.scheme == api.scheme)):
            raise BadRequest(f"media URL host {url.host!r} is not Meta's; not fetched",
                             platform=PLATFORM)  # fmt: skip
        limit = self.max_file_bytes
        with map_whatsapp_errors(f"download of media {media_id}"):
            return await graph.fetch(url, max_bytes=limit)
