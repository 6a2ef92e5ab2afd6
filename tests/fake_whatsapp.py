"""A protocol-faithful fake of the WhatsApp Cloud API (Graph API), plus webhook payloads.

The adapter's real HTTP client runs against it on 127.0.0.1; nothing of the
client is mocked. One app (``app_secret``), one business number
(``phone_number_id``), one access token.

Usage::

    fake = FakeGraph()
    await fake.start()                        # binds 127.0.0.1:<random port>
    adapter = WhatsAppAdapter(**fake.options())
    ...
    await fake.stop()

Graph API under ``base_url`` (``http://127.0.0.1:PORT/v22.0``), bearer token
required on every call (else Graph's 190 ``OAuthException`` with HTTP 401):

- ``GET /{phone_number_id}``: ``verified_name``, ``display_phone_number``, ``id``.
- ``POST /{phone_number_id}/messages``: a message (``messaging_product``,
  ``to`` or ``recipient``, ``type`` text/image/audio/video/document/sticker/
  template; text ``body`` at most 4,096 characters, media by an uploaded
  ``id``) answered ``{"messaging_product", "contacts": [{"input", "wa_id"}],
  "messages": [{"id": "wamid..."}]}``; or ``{"status": "read", "message_id",
  "typing_indicator"}`` (mark as read), answered ``{"success": true}``.
- ``POST /{phone_number_id}/media`` (multipart: ``messaging_product``,
  ``type``, ``file``): ``{"id": MEDIA_ID}``.
- ``GET /{media_id}``: ``{"url", "mime_type", "sha256", "file_size", "id",
  "messaging_product"}``; the URL (on this server, ``/media-download/...``)
  gives the bytes only with the bearer token.

Errors are Graph's body: ``{"error": {"message", "type", "code",
"error_subcode", "error_data": {"messaging_product", "details"},
"fbtrace_id"}}``. ``fail_next(code, n=1, ...)`` answers the next ``n``
message sends with one (``status`` HTTP, default 400; 130429 with
``retry_after`` sets ``Retry-After``).

``latency`` (seconds) delays each message send's answer after it is carried out.

Records: ``sent`` (:class:`Sent`), ``reads`` (:class:`Read`), ``uploads``
(media id -> (bytes, mime, filename)), ``downloads`` (media ids fetched),
``requests`` (``(method, path, status)``). ``await wait_for(predicate)``.

Webhooks (what Meta POSTs to the bot), in the Cloud API's shape:
:func:`message_payload`, :func:`status_payload`, and :meth:`FakeGraph.signed`
(``(body bytes, headers)`` with ``X-Hub-Signature-256`` as Meta computes it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeGraph", "Read", "Sent", "message_payload", "status_payload"]

Json = dict[str, Any]
VERSION = "v22.0"
TEXT_LIMIT = 4096
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
_ids = itertools.count(1)


@dataclass
class Sent:
    """A message the bot sent: ``to`` (or ``recipient``), ``type``, text ``body``,
    ``media`` (the media object: ``id``, ``caption``, ``filename``), ``template``."""

    id: str
    to: str
    type: str
    body: str = ""
    media: Json = field(default_factory=dict)
    template: Json = field(default_factory=dict)
    by_recipient: bool = False
    at: float = field(default_factory=time.monotonic)


@dataclass
class Read:
    """A mark-as-read (``typing`` when it carried the typing indicator)."""

    message_id: str
    typing: bool


def _wamid() -> str:
    return "wamid.HBgL" + secrets.token_hex(12).upper()


def graph_error(
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    kind: str = "OAuthException",
    details: str = "",
) -> Json:
    """A Graph API error body."""
    err: Json = {"message": message, "type": kind, "code": code,
                 "fbtrace_id": "A" + secrets.token_urlsafe(16)}  # fmt: skip
    if subcode is not None:
        err["error_subcode"] = subcode
    if details:
        err["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": err}


_MESSAGES = {
    100: "(#100) Invalid parameter",
    130429: "(#130429) Rate limit hit",
    131056: "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    131047: "(#131047) Re-engagement message",
    190: "Error validating access token: Session has expired",
    131000: "(#131000) Something went wrong",
}


class FakeGraph:
    """The fake Graph API (see the module docstring)."""

    def __init__(
        self,
        *,
        token: str = "EAAGfake" + "x" * 40,
        phone_number_id: str = "106540352242922",
        app_secret: str = "fake-app-secret-0123456789abcdef",
        verify_token: str = "fake-verify-token",
        latency: float = 0.0,
    ) -> None:
        self.token = token
        self.phone_number_id = phone_number_id
        self.app_secret = app_secret
        self.verify_token = verify_token
        self.latency = latency
        self.sent: list[Sent] = []
        self.reads: list[Read] = []
        self.uploads: dict[str, tuple[bytes, str, str]] = {}
        self.downloads: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        self._failures: list[tuple[int, int | None, int, float | None]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._changed = asyncio.Event()

    # -- set-up --------------------------------------------------------------------

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``WHATSAPP_API_BASE_URL`` is set to."""
        return f"{self.root}/{VERSION}"

    def options(self) -> dict[str, str]:
        """The adapter's credentials and endpoint, pointing at this fake."""
        return {"token": self.token, "phone_number_id": self.phone_number_id,
                "app_secret": self.app_secret, "verify_token": self.verify_token,
                "base_url": self.base_url}  # fmt: skip

    def env(self) -> dict[str, str]:
        """The ``WHATSAPP_*`` environment variables pointing at this fake."""
        return {"WHATSAPP_ACCESS_TOKEN": self.token,
                "WHATSAPP_PHONE_NUMBER_ID": self.phone_number_id,
                "WHATSAPP_APP_SECRET": self.app_secret,
                "WHATSAPP_VERIFY_TOKEN": self.verify_token,
                "WHATSAPP_API_BASE_URL": self.base_url}  # fmt: skip

    async def start(self) -> None:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_get("/media-download/{media_id}", self._download)
        app.router.add_get(f"/{VERSION}/{{node}}", self._get_node)
        app.router.add_post(f"/{VERSION}/{{node}}/messages", self._messages)
        app.router.add_post(f"/{VERSION}/{{node}}/media", self._upload)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- switches ------------------------------------------------------------------

    def fail_next(
        self, code: int, n: int = 1, *, subcode: int | None = None, status: int = 400,
        retry_after: float | None = None,
    ) -> None:  # fmt: skip
        """The next ``n`` message sends answer Graph error ``code``."""
        self._failures += [(code, subcode, status, retry_after)] * n

    def add_media(self, data: bytes, mime: str, filename: str = "") -> str:
        """Media a person sent (what a webhook's ``image.id`` etc. names)."""
        media_id = str(900_000_000_000 + next(_ids))
        self.uploads[media_id] = (data, mime, filename)
        return media_id

    def signed(self, payload: Mapping[str, Any] | bytes, secret: str | None = None
               ) -> tuple[bytes, dict[str, str]]:  # fmt: skip
        """``(body, headers)`` as Meta POSTs a webhook: JSON, signed with the app secret."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        key = (secret if secret is not None else self.app_secret).encode()
        digest = hmac.new(key, body, hashlib.sha256).hexdigest()
        return body, {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; sent={self.sent!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    def texts(self, to: str | None = None) -> list[str]:
        """Bodies of text messages sent (to ``to``)."""
        return [s.body for s in self.sent if s.type == "text" and to in (None, s.to)]

    # -- handlers ------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _error(self, request: web.Request, status: int, body: Json,
               headers: Mapping[str, str] | None = None) -> web.Response:  # fmt: skip
        self.requests.append((request.method, request.path, status))
        return web.json_response(body, status=status, headers=headers)

    def _unauthorized(self, request: web.Request) -> web.Response:
        return self._error(request, 401, graph_error(190, _MESSAGES[190], subcode=463))

    async def _get_node(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        node = request.match_info["node"]
        self.requests.append(("GET", request.path, 200))
        if node == self.phone_number_id:
            return web.json_response({"verified_name": "Fake Business", "id": node,
                                      "display_phone_number": "+1 555-010-0000"})  # fmt: skip
        if node in self.uploads:
            data, mime, _ = self.uploads[node]
            return web.json_response({
                "messaging_product": "whatsapp", "id": node, "mime_type": mime,
                "sha256": hashlib.sha256(data).hexdigest(), "file_size": len(data),
                "url": f"{self.root}/media-download/{node}?ext=1&hash=ATu",
            })  # fmt: skip
        return self._error(request, 400, graph_error(
            100, f"Unsupported get request. Object with ID '{node}' does not exist",
            subcode=33, kind="GraphMethodException"))  # fmt: skip

    async def _download(self, request: web.Request) -> web.StreamResponse:
        media_id = request.match_info["media_id"]
        if not self._authorized(request):
            return self._unauthorized(request)
        if media_id not in self.uploads:
            return web.Response(status=404)
        self.downloads.append(media_id)
        data, mime, _ = self.uploads[media_id]
        return web.Response(body=data, content_type=mime)

    async def _upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        if request.match_info["node"] != self.phone_number_id:
            return self._error(request, 400, graph_error(100, "(#100) Invalid phone number id"))
        form = await request.post()
        upload = form.get("file")
        if form.get("messaging_product") != "whatsapp" or not isinstance(upload, web.FileField):
            return self._error(
                request,
                400,
                graph_error(
                    100, "(#100) The parameter messaging_product is required.", subcode=2494010
                ),
            )
        data = upload.file.read()
        media_id = self.add_media(data, str(form.get("type") or upload.content_type),
                                  upload.filename or "")  # fmt: skip
        self.requests.append(("POST", request.path, 200))
        return web.json_response({"id": media_id})

    async def _messages(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        if request.match_info["node"] != self.phone_number_id:
            return self._error(request, 400, graph_error(100, "(#100) Invalid phone number id"))
        try:
            body = await request.json()
        except ValueError:
            return self._error(request, 400, graph_error(100, "(#100) Invalid JSON"))
        if body.get("messaging_product") != "whatsapp":
            return self._error(
                request,
                400,
                graph_error(
                    100,
                    "(#100) The parameter messaging_product is required.",
                    kind="OAuthException",
                ),
            )
        if body.get("status") == "read":
            self.reads.append(Read(str(body.get("message_id")), "typing_indicator" in body))
            self.requests.append(("POST", request.path, 200))
            self._changed.set()
            return web.json_response({"success": True})
        if self._failures:
            code, subcode, status, retry_after = self._failures.pop(0)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            return self._error(request, status, graph_error(
                code, _MESSAGES.get(code, f"(#{code}) error"), subcode=subcode,
                details="fake failure"), headers)  # fmt: skip
        to = str(body.get("to") or body.get("recipient") or "")
        kind = str(body.get("type") or "text")
        if not to:
            return self._error(
                request,
                400,
                graph_error(100, "(#100) The parameter to is required.", details="to or recipient"),
            )
        sent = Sent(_wamid(), to, kind, by_recipient="to" not in body)
        if kind == "text":
            text = (body.get("text") or {}).get("body")
            if not isinstance(text, str) or not text:
                return self._error(request, 400, graph_error(
                    100, "(#100) The parameter text['body'] is required."))  # fmt: skip
            if len(text) > TEXT_LIMIT:
                return self._error(
                    request,
                    400,
                    graph_error(
                        100, "(#100) Param text['body'] must be at most 4096 characters long."
                    ),
                )
            sent.body = text
        elif kind in MEDIA_TYPES:
            media = body.get(kind) or {}
            if str(media.get("id")) not in self.uploads:
                return self._error(
                    request,
                    400,
                    graph_error(131053, "(#131053) Media upload error", details="unknown media id"),
                )
            sent.media = dict(media)
            sent.body = str(media.get("caption") or "")
        elif kind == "template":
            sent.template = dict(body.get("template") or {})
            if not sent.template.get("name"):
                return self._error(
                    request,
                    400,
                    graph_error(
                        132001, "(#132001) Template name does not exist in the translation"
                    ),
                )
        else:
            return self._error(request, 400, graph_error(100, f"(#100) Invalid type {kind}"))
        self.sent.append(sent)
        self.requests.append(("POST", request.path, 200))
        self._changed.set()
        if self.latency:  # carried out, answered late (a client may give up meanwhile)
            await asyncio.sleep(self.latency)
        return web.json_response({
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": sent.id}],
        })  # fmt: skip


# -- webhook payloads (what Meta POSTs) --------------------------------------------------


def _value(phone_number_id: str, **parts: Any) -> Json:
    return {
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550100000",
                                 "phone_number_id": phone_number_id},
                    **parts,
                },
            }],
        }],
    }  # fmt: skip


def message_payload(
    wa_id: str | None,
    text: str | None = None,
    *,
    name: str = "",
    user_id: str | None = None,
    message_id: str | None = None,
    kind: str = "text",
    content: Any = None,
    phone_number_id: str = "106540352242922",
    timestamp: int | None = None,
) -> Json:
    """A ``messages`` webhook from one person: ``wa_id`` (None: hidden behind a
    username) and/or ``user_id`` (a BSUID); a text, or ``kind`` with ``content``
    (e.g. ``kind="image", content={"id": ..., "mime_type": ...}``)."""
    message: Json = {"id": message_id or _wamid(), "timestamp": str(timestamp or int(time.time())),
                     "type": kind}  # fmt: skip
    if wa_id is not None:
        message["from"] = wa_id
    if user_id is not None:
        message["from_user_id"] = user_id
    message[kind] = {"body": text} if kind == "text" else (content or {})
    contact: Json = {"profile": {"name": name}}
    if wa_id is not None:
        contact["wa_id"] = wa_id
    if user_id is not None:
        contact["user_id"] = user_id
    return _value(phone_number_id, contacts=[contact], messages=[message])


def status_payload(
    message_id: str,
    status: str,
    recipient: str,
    *,
    error_code: int | None = None,
    phone_number_id: str = "106540352242922",
) -> Json:
    """A ``statuses`` webhook: what became of a message the bot sent."""
    item: Json = {"id": message_id, "status": status, "timestamp": str(int(time.time())),
                  "recipient_id": recipient}  # fmt: skip
    if error_code is not None:
        item["errors"] = [{"code": error_code, "title": _MESSAGES.get(error_code, "error"),
                           "message": _MESSAGES.get(error_code, "error"),
                           "error_data": {"details": "fake"}}]  # fmt: skip
    return _value(phone_number_id, statuses=[item])
