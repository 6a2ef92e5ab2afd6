"""Web adapter: a chat page and a WebSocket, served by aiohttp (no extra install).

``GET /`` serves one page (HTML, CSS and JavaScript shipped in the package: no
build step, no CDN); the page talks to ``/ws`` with the JSON frames described
in :mod:`onethread.platforms.web_protocol`. ``GET /healthz`` answers ``ok``.
The routes live on the bot's HTTP server (:mod:`onethread.platforms.ingress`,
shared with operations and webhooks under ``BotOS``), or on a server of the
adapter's own at ``host:port`` when the bot has none.

Behaviour a caller should know:

- Who is who: the page keeps a random id in the browser's ``localStorage``;
  that id is the platform user id, so the same browser is the same user, and
  ``chat_id`` is ``web-<id>`` (always a DM). The id is the visitor's only
  credential: whoever holds it reads that conversation (and, once the account
  is linked with ``/link``, the person's whole history). The display name is
  whatever the visitor typed.
- Binding: ``127.0.0.1`` by default. Any other host needs an access token
  (``access_token=`` or ``ONETHREAD_WEB_TOKEN``), else ``ConfigError`` at
  construction. With a token, the page needs ``?token=<token>`` once (a cookie
  keeps it) and the socket needs the token too; otherwise 401. Browsers'
  cross-origin sockets are refused (403) unless listed in ``allowed_origins``.
- Nothing is lost on a dropped socket: the page resends unacked messages (the
  bot's gate drops repeats by id) and the server keeps each reply until a page
  acks it, replaying it on reconnect (``outbox_size`` per user, oldest dropped).
  A user may have several tabs open; each gets every message.
- History: on page load the server sends the conversation from
  ``history_provider(user_id)`` (an async function returning
  ``web_protocol.history_message`` dicts). :func:`attach_history` wires it to a
  ``Bot``'s session manager; without one the page starts empty. Slash
  commands and their replies are not in the history (the model never sees
  them); the adapter keeps the last ``side_log_size`` of them per user in
  memory (:class:`~onethread.platforms.web_protocol.SideLog`) and shows them
  in their place on a reload. A server restart forgets them.
- Files (:mod:`onethread.platforms.web_files`): the page's paper clip uploads a
  file over HTTP (``POST /files``, at most ``max_upload_bytes``, default the
  bot's ``max_attachment_bytes``, 20 MB), then sends the message over the
  socket naming it. Images show inline, other files as download links, in
  the history too; ``GET /files/<hex>`` serves a file only to the browser id
  that owns it (404 for anyone else). Files the bot sends (a tool's
  ``File``, ``notify``) show the same way.
- ``port=0`` picks a free port; ``adapter.port`` and ``adapter.url`` are real
  once ``start()`` returned. ``token`` is accepted for the ``Bot`` interface
  and unused.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import BadRequest, ConfigError, PlatformUnavailable, StoreUnavailable
from ..session._conn.shared import masked
from ..session.attachments import Attachment
from ..session.blobs import DEFAULT_MAX_BYTES
from ..session.outage import store_failed
from .base import Adapter, Inbound, OnInbound
from .delivery import RetryPolicy
from .draft import ReplyStream
from .ingress import Ingress
from .markup import to_web_html
from .web_access import COOKIE, SECURITY_HEADERS, authorized, is_loopback, origin_allowed
from .web_files import WebFiles, file_json, user_of
from .web_history import attach_history
from .web_protocol import (
    Outbox,
    ProtocolError,
    SideLog,
    chat_id_for,
    clean_name,
    parse_client_frame,
    user_for_chat,
    valid_id,
)
from .web_stream import WebStream

__all__ = ["TOKEN_ENV", "HistoryProvider", "WebAdapter", "attach_history", "is_loopback"]

log = logging.getLogger("onethread.platforms.web")

PLATFORM = "web"
TOKEN_ENV = "ONETHREAD_WEB_TOKEN"
HistoryProvider = Callable[[str], Awaitable[list[dict[str, Any]]]]
"""``async (user_id) -> [history_message(...), ...]``: the conversation shown on page load."""

_STATIC: dict[str, str] = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
_SOCKET_ERRORS = (ConnectionError, RuntimeError)  # writing to a socket that is closing


class WebAdapter(Adapter):
    """Serve the chat page and its WebSocket on ``host:port``.

    Args:
        token: unused (the web platform has no credential); accepted so
            ``Bot`` can pass it.
        host: interface to bind; anything but loopback needs ``access_token``.
        port: TCP port; 0 picks a free one (read ``adapter.port`` after start).
        access_token: required by the page and the socket when set; default
            ``ONETHREAD_WEB_TOKEN``.
        history_provider: see :data:`HistoryProvider`; also settable later
            (``attach_history``).
        allowed_origins: extra page origins (``https://chat.example.com``)
            allowed to open the socket, for a reverse proxy that rewrites Host.
        outbox_size: unacked replies kept per user for a reconnect.
        side_log_size: slash commands and replies (messages) kept per user
            for a page reload.
        max_upload_bytes: largest file the page may upload (default: the
            bot's ``max_attachment_bytes``, else 20 MB).

    Raises ``ConfigError`` for a non-loopback host without a token or a bad port.
    """

    name: ClassVar[str] = PLATFORM
    max_message_length: ClassVar[int] = 100_000
    max_file_bytes: ClassVar[int] = 100 * 1024 * 1024  # served from our own blob store

    def __init__(
        self,
        *,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        access_token: str | None = None,
        retry_policy: RetryPolicy | None = None,
        history_provider: HistoryProvider | None = None,
        allowed_origins: Iterable[str] = (),
        outbox_size: int = 100,
        side_log_size: int = 100,
        max_upload_bytes: int | None = None,
    ) -> None:
        super().__init__(retry_policy=retry_policy)
        del token  # no credential on this platform
        if access_token is None:
            access_token = os.environ.get(TOKEN_ENV) or None
        if access_token is not None and not access_token.strip():
            raise ConfigError(f"web access_token (or {TOKEN_ENV}) must not be blank")
        if not is_loopback(host) and access_token is None:
            raise ConfigError(
                f"the web platform binds to {host!r}, which other machines can reach: set "
                f"access_token (or the {TOKEN_ENV} environment variable), or bind to 127.0.0.1"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"web port must be an integer from 0 to 65535, got {port!r}")
        self.host = host
        self.port = port
        self.access_token = access_token
        self.history_provider: HistoryProvider | None = history_provider
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._outbox = Outbox(per_user=outbox_size)
        self._side_log = SideLog(per_user=side_log_size)
        self._sockets: dict[str, set[web.WebSocketResponse]] = {}
        self._serving: Ingress | None = None  # the server we acquired, while started
        self._own: Ingress | None = None  # ours, when the bot has no shared one
        self._on_inbound: OnInbound | None = None
        self._static: dict[str, bytes] = {}
        if max_upload_bytes is not None and max_upload_bytes < 1:
            raise ConfigError(f"web max_upload_bytes must be positive, got {max_upload_bytes!r}")
        self._upload_limit_set = max_upload_bytes is not None
        self.files = WebFiles(max_bytes=max_upload_bytes or DEFAULT_MAX_BYTES)
        """Uploads, and which browser id may read which file."""
        self._streams: dict[str, WebStream] = {}  # reply id -> its stream, while it streams
        self.mounts: list[Callable[[web.Application], None]] = []
        """Called with the aiohttp app before it serves: more routes on the same server
        (``BotOS`` adds ``/readyz``, ``/metrics`` and ``/admin`` to its shared
        server directly)."""
        self.uses_http = True

    @property
    def url(self) -> str:
        """The page's address (without the access token)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """A real port, and an access token whenever other machines can reach the page."""
        problems: list[tuple[str, str]] = []
        port = options.get("port", 8080)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            msg = f"must be a port number from 0 to 65535 (0: any free port), got {port!r}"
            problems.append(("port", msg))
        host = str(options.get("host", "127.0.0.1"))
        if not is_loopback(host) and not (options.get("access_token") or env.get(TOKEN_ENV)):
            problems.append(
                (
                    "access_token",
                    f"required when host is {host} (reachable from other machines); "
                    f"export {TOKEN_ENV}=<a long random secret> (or set access_token), "
                    "or bind to 127.0.0.1",
                )
            )
        return problems

    # -- lifecycle -------------------------------------------------------------

    def bind(self, bot: Any) -> None:
        """Show ``bot``'s stored conversation when a page loads (:func:`attach_history`);
        keep uploads in its session's blob store."""
        attach_history(bot)
        session = bot.session
        self.files.blob_store = lambda: session.blobs
        if not self._upload_limit_set:
            self.files.max_bytes = int(getattr(bot, "max_attachment_bytes", DEFAULT_MAX_BYTES))

    async def start(self, on_inbound: OnInbound) -> None:
        """Serve the chat on the bot's HTTP server (``self.ingress``, given by ``BotOS``),
        else on one of its own at ``host:port``; return once serving.

        Raises ``PlatformUnavailable`` when the address cannot be bound (the
        supervisor retries with backoff).
        """
        if self._serving is not None:
            raise RuntimeError("the web adapter is already started")
        ingress = self.ingress
        if ingress is None:
            if self._own is None:
                self._own = Ingress(host=self.host, port=self.port)
            ingress = self._own
        try:
            ingress.add_routes(self.http_routes)
        except RuntimeError as exc:
            raise ConfigError(
                "the web chat's routes must be added to the HTTP server before it starts"
            ) from exc
        self._on_inbound = on_inbound
        try:
            await ingress.acquire()
        except PlatformUnavailable as exc:
            self._on_inbound = None
            raise PlatformUnavailable(str(exc), platform=PLATFORM) from exc
        self._serving = ingress
        self.host, self.port = ingress.host, ingress.port
        log.info("web chat on %s", self.url)

    def http_routes(self, app: web.Application) -> None:
        """Add the chat's routes (and ``mounts``) to the HTTP server's ``app``."""
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/ws", self._websocket)
        app.router.add_post("/files", self._upload)
        app.router.add_get("/files/{file}", self._file)
        for mount in self.mounts:
            mount(app)
        app.on_response_prepare.append(self._add_headers)

    async def stop(self) -> None:
        """Close every socket (going away) and let go of the server. Idempotent."""
        serving, self._serving = self._serving, None
        sockets = [ws for group in self._sockets.values() for ws in group]
        self._sockets.clear()
        await asyncio.gather(*(self._close(ws) for ws in sockets))
        if serving is not None:
            await serving.release()
        self._on_inbound = None

    @staticmethod
    async def _close(ws: web.WebSocketResponse) -> None:
        try:
            await asyncio.wait_for(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping"), 2.0
            )
        except (TimeoutError, *_SOCKET_ERRORS) as exc:
            log.debug("web: socket did not close cleanly: %r", exc)

    # -- sending ---------------------------------------------------------------

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Deliver to every open tab of the user and keep it until a tab acks it.

        Raises ``BadRequest`` for a chat id that is not ``web-<user id>``.
        """
        user = user_for_chat(chat_id)
        if user is None:
            raise BadRequest(f"not a web chat id: {chat_id!r}", platform=PLATFORM)
        return await self._post(user, uuid.uuid4().hex, text, formatted)

    async def _post(self, user: str, message_id: str, text: str, formatted: bool) -> str:
        payload: dict[str, Any] = {
            "type": "message",
            "id": message_id,
            "role": "assistant",
            "text": text,
            "format": "markdown" if formatted else "plain",
            "ts": time.time(),
        }
        if formatted:
            payload["html"] = to_web_html(text)
        self._outbox.add(user, payload)
        await self._broadcast(user, payload)
        return message_id

    def reply_stream(self, chat_id: str, thread_id: str = "") -> ReplyStream | None:
        """Deltas to the user's open tabs as the model writes (``delta`` frames); the
        final ``message`` frame has the same id. A ``stop`` frame from a tab stops it."""
        user = user_for_chat(chat_id)
        if user is None:
            return None
        return WebStream(self, user, uuid.uuid4().hex)

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """A message with the file (inline image or download link) to every open tab,
        kept until a tab acks it; the file becomes readable by that user only."""
        user = user_for_chat(chat_id)
        if user is None:
            raise BadRequest(f"not a web chat id: {chat_id!r}", platform=PLATFORM)
        if not attachment.blob:
            blobs = self.files.blobs
            if blobs is None:
                raise BadRequest("this web chat has no blob store to serve files from",
                                 platform=PLATFORM)  # fmt: skip
            attachment = attachment.with_(blob=await blobs.put(data), size=len(data))
        self.files.own(user, [attachment])
        payload: dict[str, Any] = {
            "type": "message",
            "id": uuid.uuid4().hex,
            "role": "assistant",
            "text": attachment.caption,
            "format": "plain",
            "ts": time.time(),
            "attachments": [file_json(attachment)],
        }
        self._outbox.add(user, payload)
        await self._broadcast(user, payload)
        return str(payload["id"])

    def on_unstored_reply(self, msg: Inbound, reply: str) -> None:
        """Keep a command and its reply so a reloaded page shows them (not the model)."""
        user = user_for_chat(msg.chat_id)
        if user is None:
            return
        now = time.time()
        common = {"platform": PLATFORM, "source": "", "mirror": False, "command": True}
        self._side_log.add(
            user,
            {"role": "user", "text": msg.text, "ts": now, **common},
            {"role": "assistant", "text": reply, "ts": now, **common},
        )

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """Tell the user's open tabs the bot is typing (not kept for later)."""
        user = user_for_chat(chat_id)
        if user is not None:
            await self._broadcast(user, {"type": "typing"})

    async def _broadcast(
        self,
        user: str,
        payload: dict[str, Any],
        *,
        skip: web.WebSocketResponse | None = None,
    ) -> int:
        sent = 0
        for ws in list(self._sockets.get(user, ())):
            if ws is skip or ws.closed:
                continue
            try:
                await ws.send_json(payload)
                sent += 1
            except _SOCKET_ERRORS as exc:
                log.debug("web: could not write to a socket of %s: %r", masked(PLATFORM, user), exc)
        return sent

    # -- HTTP ------------------------------------------------------------------

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)

    def authorized(self, request: web.Request) -> bool:
        """True when ``request`` carries the access token (or, with none set, comes to a
        loopback host name); routes mounted on this server use it too."""
        return self._authorized(request)

    def _authorized(self, request: web.Request) -> bool:
        return authorized(request, self.access_token)

    def _origin_allowed(self, request: web.Request) -> bool:
        return origin_allowed(request, self.allowed_origins)

    def _read_static(self, name: str) -> bytes:
        data = self._static.get(name)
        if data is None:
            resource = importlib.resources.files("onethread.web").joinpath("static", name)
            data = self._static[name] = resource.read_bytes()
        return data

    def _asset(self, name: str) -> web.Response:
        return web.Response(
            body=self._read_static(name),
            content_type=_STATIC[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def _page(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(
                text="This chat needs its access token: open it as /?token=<access token>."
            )
        response = self._asset("index.html")
        if self.access_token is not None and request.query.get("token"):
            response.set_cookie(COOKIE, self.access_token, httponly=True, samesite="Strict")
        return response

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC or name == "index.html":
            raise web.HTTPNotFound()
        return self._asset(name)

    async def _upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="missing or wrong access token")
        if not self._origin_allowed(request):
            raise web.HTTPForbidden(text="cross-origin upload refused")
        return await self.files.upload(request, user_of(request))

    async def _file(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="missing or wrong access token")
        return await self.files.serve(request, user_of(request))

    # -- the socket ------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="missing or wrong access token")
        if not self._origin_allowed(request):
            raise web.HTTPForbidden(text="cross-origin socket refused")
        user = request.query.get("user", "")
        if not valid_id(user):
            raise web.HTTPBadRequest(text="user must be 1-128 letters, digits, '_' or '-'")
        name = clean_name(request.query.get("name", ""))
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        try:
            await ws.send_json({"type": "hello", "user": user, "name": name})
            await self._catch_up(ws, user, request.query.get("history", "1") != "0")
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    await self._on_frame(ws, user, name, frame.data)
                elif frame.type is WSMsgType.ERROR:
                    log.debug(
                        "web: socket of %s failed: %r", masked(PLATFORM, user), ws.exception()
                    )
        except _SOCKET_ERRORS as exc:
            log.debug("web: socket of %s dropped: %r", masked(PLATFORM, user), exc)
        finally:
            group = self._sockets.get(user)
            if group is not None:
                group.discard(ws)
                if not group:
                    del self._sockets[user]
        return ws

    async def _catch_up(self, ws: web.WebSocketResponse, user: str, with_history: bool) -> None:
        """Send the history (page load), then the replies the user has not acked yet."""
        if with_history:
            messages = await self._history(user)
            if messages is None:
                await ws.send_json({"type": "error", "error": "history is unavailable"})
            else:
                messages = self._side_log.merge(user, messages)
                self.files.own_shown(user, messages)
                await ws.send_json({"type": "history", "messages": messages})
                # Replies already in the history need no replay.
                shown = (m.get("text") for m in messages if m.get("role") == "assistant")
                self._outbox.discard_texts(user, (t for t in shown if isinstance(t, str)))
                shown_files = (f.get("file") for m in messages for f in m.get("attachments") or ())
                self._outbox.discard_files(user, (f for f in shown_files if isinstance(f, str)))
        # Registered in the same step as the snapshot: a reply sent from now on
        # goes live, everything before it is in the snapshot.
        pending = self._outbox.pending(user)
        self._sockets.setdefault(user, set()).add(ws)
        for payload in pending:
            await ws.send_json(payload)

    async def _history(self, user: str) -> list[dict[str, Any]] | None:
        if self.history_provider is None:
            return []
        try:
            return list(await self.history_provider(user))
        except StoreUnavailable as exc:  # an outage: one line for all of it
            store_failed(exc, "loading a web chat's history")
            return None
        except Exception:
            log.exception("web: could not load the history of %s", masked(PLATFORM, user))
            return None

    async def _on_frame(self, ws: web.WebSocketResponse, user: str, name: str, raw: str) -> None:
        try:
            frame = parse_client_frame(raw)
        except ProtocolError as exc:
            error: dict[str, Any] = {"type": "error", "error": str(exc)}
            if exc.frame_id:
                error["id"] = exc.frame_id
            await ws.send_json(error)
            return
        if frame.type == "ping":
            await ws.send_json({"type": "pong"})
        elif frame.type == "ack":
            self._outbox.ack(user, frame.id)
        elif frame.type == "stop":
            stream = self._streams.get(frame.id)
            if stream is not None and stream.user == user:  # only the reader's own reply
                stream.stopped = True
        else:
            await self._on_message(ws, user, name, frame.id, frame.text, frame.files)

    async def _on_message(
        self,
        ws: web.WebSocketResponse,
        user: str,
        name: str,
        message_id: str,
        text: str,
        files: tuple[str, ...] = (),
    ) -> None:
        on_inbound = self._on_inbound
        if on_inbound is None:  # stopping: no ack, so the page resends it later
            return
        attachments = []
        for file in files:
            found = self.files.owned(user, file)
            if found is None:  # not uploaded by this browser (or forgotten by a restart)
                error = "an attached file is not on the server any more; attach it again"
                await ws.send_json({"type": "error", "id": message_id, "error": error})
                return
            attachments.append(found)
        inbound = Inbound(
            platform=PLATFORM,
            chat_id=chat_id_for(user),
            chat_type="dm",
            user_id=user,
            user_name=name,
            text=text,
            message_id=message_id,
            mentions_bot=True,
            attachments=tuple(attachments),
        )
        # Other tabs of the same user show what was typed here.
        echo: dict[str, Any] = {"type": "message", "id": message_id, "role": "user",
                                "text": text, "ts": time.time()}  # fmt: skip
        if attachments:
            echo["attachments"] = [file_json(a) for a in attachments]
        await self._broadcast(user, echo, skip=ws)
        try:
            await on_inbound(inbound)
        except Exception:
            log.exception("web: message %s of %s was not taken", message_id, masked(PLATFORM, user))
            await ws.send_json({"type": "error", "id": message_id, "error": "not delivered"})
            return
        await ws.send_json({"type": "ack", "id": message_id})
