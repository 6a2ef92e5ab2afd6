"""A protocol-faithful fake of Slack (Web API + Socket Mode), for tests.

The real slack-sdk / slack-bolt clients run against it on 127.0.0.1; nothing of
the client is mocked. One workspace, one app with one bot user, a few channels,
any number of users.

Usage::

    fake = FakeSlack()                     # tokens fake.bot_token / fake.app_token
    await fake.start()                     # binds 127.0.0.1:<random port>
    adapter = SlackAdapter(token=fake.bot_token, app_token=fake.app_token,
                           base_url=fake.base_url)
    ...
    await fake.stop()

Addresses: ``base_url`` (Web API root, ``http://127.0.0.1:PORT/api/``, as
``SLACK_API_BASE_URL`` expects it), ``socket_url`` (the Socket Mode websocket,
handed out with a one-time ``ticket`` by ``apps.connections.open``), ``env()``
(the ``SLACK_*`` environment variables pointing at the fake).

World: ``team_id``, ``app_id``, ``bot_user_id``/``bot_id``/``bot_name``;
channels ``general_id`` (public, ``C...``) and ``private_id`` (private,
``G...``); ``add_channel(name, private=False, mpim=False)`` adds more;
``add_user(user_id, name, display_name="")`` names a user (users are created on
first use as ``user-<id>``); ``dm_channel_for(user_id)`` gives (and creates)
the ``D...`` channel of a user's DM with the bot.

Web API (``POST /api/<method>``, form, query or JSON arguments, token in the
``Authorization: Bearer`` header or a ``token`` argument): ``auth.test``,
``apps.connections.open`` (app token only), ``chat.postMessage`` (checks the
channel, ``no_text``, ``msg_too_long`` over 40,000 characters, block types,
50 blocks, 12,000 characters of ``markdown`` blocks -> ``msg_blocks_too_long``),
``users.info``, ``conversations.info``, ``assistant.threads.setStatus``,
``files.getUploadURLExternal`` (``filename``, ``length``; answers an
``upload_url`` on this server and a ``file_id``), the upload itself (``POST``
the bytes to ``upload_url``: ``200 OK - <length>``; a length other than the
one announced is refused), ``files.completeUploadExternal`` (``files`` JSON
``[{"id", "title"}]``, ``channel_id``, ``initial_comment``, ``thread_ts``;
``file_not_found`` for an id not uploaded); other
methods answer ``unknown_method``. Wrong token kinds answer
``not_allowed_token_type``, unknown tokens ``invalid_auth``, none ``not_authed``.
Every answer is Slack's ``{"ok": true, ...}`` / ``{"ok": false, "error": ...}``.

Socket Mode: a connection sends ``{"type": "hello", ...}`` first, then
``events_api`` envelopes (``envelope_id``, ``payload`` = the Events API
``event_callback`` body, ``accepts_response_payload``, ``retry_attempt``,
``retry_reason``) to the newest open connection (queued while none is open).
Acks (``{"envelope_id": ...}``) are recorded in ``acks``.

Inbound (each returns the event dict it dispatched):

- ``await inject_dm(user_id, text, thread_ts=None)``: a ``message`` event with
  ``channel_type: "im"``.
- ``await inject_channel_message(channel_id, user_id, text, mention=False,
  thread_ts=None)``: ``mention`` prefixes ``<@bot_user_id>`` and, like Slack,
  sends TWO envelopes with the same ``ts``: ``message`` and ``app_mention``.
  ``thread_ts`` makes it a thread reply (with ``parent_user_id``).
- ``files=[(name, data, mimetype), ...]`` on ``inject_dm`` and
  ``inject_channel_message``: a ``file_share`` message whose ``files`` are
  Slack file objects (``id``, ``name``, ``mimetype``, ``filetype``, ``size``,
  ``url_private``, ``url_private_download``, ``mode: "hosted"``); the bytes
  are served at those URLs only with the bot token as ``Authorization:
  Bearer``; without it Slack's sign-in page comes back (HTTP 200, HTML), as
  the real one does. ``private_downloads`` records ``(file_id, ok)``.
- ``await inject_bot_message(channel_id, text, bot_id="B0OTHER")``: subtype
  ``bot_message``.
- ``await inject_event(event)``: any other event (e.g. ``reaction_added``).
- ``await redeliver(envelope)``: the same event again (new ``envelope_id``,
  ``retry_attempt`` + 1, ``retry_reason`` ``"timeout"``), as Slack retries.
- ``echo_own_messages`` (default True): like Slack, the bot's own posts come
  back as ``message`` events (with ``bot_id``).

Events API over HTTP (the app's Request URL): set ``request_url`` and every
event goes there instead of a socket, as Slack POSTs it: the ``event_callback``
body as JSON, signed with ``signing_secret`` (``X-Slack-Signature: v0=<hex
HMAC-SHA256 of "v0:<ts>:<body>">``, ``X-Slack-Request-Timestamp``). An answer
other than 2xx, or none within ``ack_timeout`` (3 s, as Slack waits), is
retried up to 3 times after ``http_retry_delay`` seconds, with
``X-Slack-Retry-Num`` and ``X-Slack-Retry-Reason`` (``http_timeout``,
``http_error``); ``redeliver(envelope)`` sends the same body with the next
retry number. ``http_deliveries`` records :class:`HttpDelivery` (``event_id``,
``retry``, ``status``, ``seconds``; status 0 for no answer in time).
``await verify_url(url)`` sends the ``url_verification`` request Slack sends
when the Request URL is saved and returns ``(status, body)``;
``sign(body, timestamp=None)`` gives the headers for any body.

Records: ``sent`` (:class:`SentMessage`: ``chat_id``, ``thread_id``, ``text``
as the reader sees it, ``ts``, ``blocks``, ``formatted``, ``payload``),
``statuses`` (assistant thread status calls as ``(channel_id, thread_ts,
status)``; ``typing`` is the same list), ``requests`` (every Web API call,
:class:`RecordedRequest` with ``method``, ``host``, ``token_kind``, ``status``,
``error``), ``envelopes`` (every envelope pushed), ``acks`` (envelope ids),
``connections`` (websockets accepted), ``disconnects_sent``, ``sent_files``
(:class:`SentFile`, each completed upload). Waiters:
``await wait_for_messages(n, timeout=5)``, ``wait_for_acks(n)``,
``wait_for_connections(n)``, ``wait_for_statuses(n)``, ``wait_for_files(n)``,
``wait_until(predicate, timeout, what)``.

Switches:

- ``rate_limit_next(n, retry_after=1, method="chat.postMessage")``: HTTP 429,
  ``{"ok": false, "error": "ratelimited"}`` and ``Retry-After`` (real Slack
  sends whole seconds; a float is passed through for fast tests).
  ``method="*"`` matches every method.
- ``fail_next_5xx(n, status=503, method="chat.postMessage")``: an HTML error
  page with that status, as Slack's edge sends.
- ``fail_next_error(error, n=1, method="chat.postMessage", status=200)``: a
  Slack error code (``fatal_error``, ``channel_not_found``, ...).
- ``reject_blocks_next(n)``: the next ``n`` ``chat.postMessage`` calls that
  carry ``blocks`` answer ``invalid_blocks``.
- ``revoke_token(which="both", error="invalid_auth")``: ``"bot"``, ``"app"``
  or ``"both"`` stop working (``account_inactive`` etc. also possible);
  revoking the app token closes open sockets. ``restore_tokens()`` undoes it.
- ``slow_next(seconds, n=1, method="chat.postMessage")``: the call is carried
  out (the message is posted) and answered ``seconds`` late.
- ``cut_off_next(n=1, method="chat.postMessage")``: the call is carried out,
  then its connection is closed without an answer.
- ``drop_connection()``: abort every websocket (no close frame).
  ``await close_connection(code=1000)``: a close frame.
  ``await send_disconnect(reason="refresh_requested", close_after=5.0)``:
  Slack's ``disconnect`` message; the socket is closed after ``close_after``
  seconds unless the client closed it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

__all__ = ["FakeSlack", "HttpDelivery", "RecordedRequest", "SentFile", "SentMessage"]

Json = dict[str, Any]

TEXT_LIMIT = 40_000
MARKDOWN_BLOCKS_LIMIT = 12_000
BLOCK_TYPES = {
    "actions", "context", "divider", "file", "header", "image", "input", "markdown",
    "rich_text", "section", "video", "table",
}  # fmt: skip


@dataclass
class HttpDelivery:
    """One POST of an event to the Request URL."""

    event_id: str
    retry: int
    status: int  # 0: no answer within ack_timeout, or no connection
    seconds: float


@dataclass
class SentMessage:
    """A message the bot posted. ``text`` is what a reader sees (markdown block or text)."""

    chat_id: str
    thread_id: str
    text: str
    ts: str
    blocks: list[Json] | None = None
    mrkdwn: bool | None = None
    payload: Json = field(default_factory=dict, repr=False)

    @property
    def formatted(self) -> bool:
        """True when the message carried blocks (the adapter's Markdown path)."""
        return bool(self.blocks)

    @property
    def message_id(self) -> str:
        """``channel:ts``, the id the adapter returns for it."""
        return f"{self.chat_id}:{self.ts}"


@dataclass
class SentFile:
    """A file the bot uploaded and shared (``files.completeUploadExternal``)."""

    file_id: str
    chat_id: str
    thread_id: str
    filename: str
    title: str
    data: bytes = field(repr=False)
    initial_comment: str = ""


@dataclass
class RecordedRequest:
    """One Web API request the fake answered."""

    method: str
    host: str
    token_kind: str  # "bot", "app", "unknown" or "none"
    args: Json = field(default_factory=dict, repr=False)
    status: int = 200
    error: str = ""


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    request: web.Request
    closed_by_fake: bool = False


@dataclass
class _Failure:
    method: str
    status: int
    error: str | None  # None: an HTML body instead of Slack JSON
    retry_after: float | None = None
    needs_blocks: bool = False


def _valid_section(block: Json) -> bool:
    """A section's text object: ``mrkdwn`` or ``plain_text``, 1 to 3000 characters."""
    obj = block.get("text")
    if not isinstance(obj, dict) or obj.get("type") not in ("mrkdwn", "plain_text"):
        return False
    return 0 < len(str(obj.get("text", ""))) <= 3000


def _shown(text: str, blocks: Any) -> str:
    """What a reader sees: the markdown blocks, else the section texts, else the text."""
    markdown = [str(b.get("text", "")) for b in blocks or [] if b["type"] == "markdown"]
    if markdown:
        return "\n".join(markdown)
    sections = [_unescape(str(b["text"]["text"])) for b in blocks or [] if b["type"] == "section"]
    return "\n".join(sections) if sections else _unescape(text)


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _truthy(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


class FakeSlack:
    """Slack's Web API and Socket Mode, faked on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-1-fake-bot-token",
        app_token: str = "xapp-1-A0FAKE-1-fake-app-token",
        bot_name: str = "onethread",
        echo_own_messages: bool = True,
        signing_secret: str = "8f742231b10e8888abcd99yyyzzz85a5",
    ) -> None:
        self.bot_token = bot_token
        self.signing_secret = signing_secret
        self.request_url = ""
        self.ack_timeout = 3.0
        self.http_retry_delay = 0.2
        self.http_deliveries: list[HttpDelivery] = []
        self.app_token = app_token
        self.bot_name = bot_name
        self.echo_own_messages = echo_own_messages
        self.team_id = "T0FAKE"
        self.app_id = "A0FAKE"
        self.bot_user_id = "U0BOT"
        self.bot_id = "B0BOT"
        self._ids = itertools.count(1)
        self._ts_base = int(time.time())
        self._channels: dict[str, Json] = {}
        self._users: dict[str, Json] = {}
        self._dm_by_user: dict[str, str] = {}
        self.general_id = self.add_channel("general")
        self.private_id = self.add_channel("secret-plans", private=True)
        self.add_user(self.bot_user_id, bot_name, is_bot=True)
        # records
        self.sent: list[SentMessage] = []
        # chat.update: (channel, ts, text shown, time.monotonic()); one per second per channel.
        self.updates: list[tuple[str, str, str, float]] = []
        self.update_interval = 1.0
        self.updates_refused = 0
        self._last_update: dict[str, float] = {}
        self.statuses: list[tuple[str, str, str]] = []
        self.requests: list[RecordedRequest] = []
        self.envelopes: list[Json] = []
        self.acks: list[str] = []
        self.connections = 0
        self.disconnects_sent = 0
        self.sent_files: list[SentFile] = []
        self.private_downloads: list[tuple[str, bool]] = []
        self.hosted: dict[str, tuple[Json, bytes]] = {}  # file id -> (file object, bytes)
        self._uploads: dict[str, Json] = {}  # file id -> {"filename", "length", "data"}
        # switches
        self._failures: list[_Failure] = []
        self._late: list[tuple[str, float | None]] = []  # (method, delay; None: cut off)
        self._revoked: dict[str, str] = {}  # "bot"/"app" -> error code
        # plumbing
        self._tickets: set[str] = set()
        self._conns: list[_Conn] = []
        self._pending: list[Json] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Serve on 127.0.0.1 at a free port."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._web_api)
        app.router.add_get("/link/", self._socket)
        app.router.add_get("/files-pri/{team_file}/{tail:.*}", self._private_file)
        app.router.add_post("/upload/v1/{file_id}", self._upload)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every connection and the server."""
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns):
            conn.closed_by_fake = True
            with contextlib.suppress(ConnectionError, RuntimeError):  # already gone
                await asyncio.wait_for(conn.ws.close(code=1001), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """The Web API root, as ``SLACK_API_BASE_URL`` expects it (ends with a slash)."""
        return f"http://127.0.0.1:{self._port}/api/"

    @property
    def socket_url(self) -> str:
        """The Socket Mode websocket URL without its ticket."""
        return f"ws://127.0.0.1:{self._port}/link/"

    def env(self) -> dict[str, str]:
        """The ``SLACK_*`` environment variables pointing at this fake."""
        return {
            "SLACK_BOT_TOKEN": self.bot_token,
            "SLACK_APP_TOKEN": self.app_token,
            "SLACK_API_BASE_URL": self.base_url,
        }

    # -- world -----------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08X}"

    def new_ts(self) -> str:
        """A fresh, increasing message timestamp (``"1700000000.000042"``)."""
        n = next(self._ids)
        return f"{self._ts_base + n}.{n:06d}"

    def add_channel(self, name: str, *, private: bool = False, mpim: bool = False) -> str:
        """Add a channel the bot is a member of; return its id."""
        channel_id = self._new_id("G" if private or mpim else "C")
        self._channels[channel_id] = {
            "id": channel_id, "name": name, "is_channel": not (private or mpim),
            "is_group": private and not mpim, "is_im": False, "is_mpim": mpim,
            "is_private": private or mpim, "is_member": True, "created": self._ts_base,
        }  # fmt: skip
        return channel_id

    def add_user(
        self, user_id: str, name: str, *, display_name: str = "", is_bot: bool = False
    ) -> None:
        """Name a user (``name`` is the handle and real name unless ``display_name``)."""
        self._users[user_id] = {
            "id": user_id, "team_id": self.team_id, "name": name, "real_name": name,
            "deleted": False, "is_bot": is_bot,
            "profile": {"real_name": name, "display_name": display_name, "team": self.team_id},
        }  # fmt: skip

    def _user(self, user_id: str) -> Json:
        if user_id not in self._users:
            self.add_user(user_id, f"user-{user_id.lower()}")
        return self._users[user_id]

    def dm_channel_for(self, user_id: str) -> str:
        """The ``D...`` channel id of ``user_id``'s DM with the bot (created on first use)."""
        if user_id not in self._dm_by_user:
            channel_id = self._new_id("D")
            self._user(user_id)
            self._dm_by_user[user_id] = channel_id
            self._channels[channel_id] = {
                "id": channel_id, "is_im": True, "user": user_id, "is_org_shared": False,
                "created": self._ts_base,
            }  # fmt: skip
        return self._dm_by_user[user_id]

    def channel_type(self, channel_id: str) -> str:
        """Slack's ``channel_type`` for events in ``channel_id``."""
        info = self._channels.get(channel_id, {})
        if info.get("is_im"):
            return "im"
        if info.get("is_mpim"):
            return "mpim"
        return "group" if info.get("is_private") else "channel"

    # -- switches --------------------------------------------------------------

    def rate_limit_next(
        self, n: int = 1, retry_after: float = 1, method: str = "chat.postMessage"
    ) -> None:
        """The next ``n`` calls of ``method`` get HTTP 429 ``ratelimited`` + ``Retry-After``."""
        self._failures += [_Failure(method, 429, "ratelimited", retry_after)] * n

    def fail_next_5xx(
        self, n: int = 1, status: int = 503, method: str = "chat.postMessage"
    ) -> None:
        """The next ``n`` calls of ``method`` fail with ``status`` and an HTML body."""
        self._failures += [_Failure(method, status, None)] * n

    def fail_next_error(
        self, error: str, n: int = 1, method: str = "chat.postMessage", status: int = 200
    ) -> None:
        """The next ``n`` calls of ``method`` answer ``{"ok": false, "error": error}``."""
        self._failures += [_Failure(method, status, error)] * n

    def slow_next(self, seconds: float, n: int = 1, method: str = "chat.postMessage") -> None:
        """The next ``n`` calls of ``method`` are carried out, then answered ``seconds`` late."""
        self._late += [(method, seconds)] * n

    def cut_off_next(self, n: int = 1, method: str = "chat.postMessage") -> None:
        """The next ``n`` calls of ``method`` are carried out, then left unanswered (the
        connection is closed)."""
        self._late += [(method, None)] * n

    def reject_blocks_next(self, n: int = 1) -> None:
        """The next ``n`` ``chat.postMessage`` calls carrying blocks answer ``invalid_blocks``."""
        self._failures += [_Failure("chat.postMessage", 200, "invalid_blocks", None, True)] * n

    def revoke_token(self, which: str = "both", error: str = "invalid_auth") -> None:
        """Make the bot and/or app token fail with ``error``; revoking the app drops sockets."""
        kinds = ("bot", "app") if which == "both" else (which,)
        for kind in kinds:
            self._revoked[kind] = error
        if "app" in kinds:
            self.drop_connection()

    def restore_tokens(self) -> None:
        """Undo ``revoke_token``."""
        self._revoked.clear()

    def drop_connection(self) -> None:
        """Abort every Socket Mode connection at the TCP level (no close frame)."""
        for conn in list(self._conns):
            conn.closed_by_fake = True
            transport = conn.request.transport
            if transport is not None:
                transport.abort()

    async def close_connection(self, code: int = 1000) -> None:
        """Close every Socket Mode connection with a close frame."""
        for conn in list(self._conns):
            conn.closed_by_fake = True
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.close(code=code)

    async def send_disconnect(
        self, reason: str = "refresh_requested", close_after: float = 5.0
    ) -> None:
        """Send Slack's ``disconnect`` message; close those sockets after ``close_after`` s."""
        for conn in list(self._conns):
            await conn.ws.send_json(
                {"type": "disconnect", "reason": reason,
                 "debug_info": {"host": "applink-fake-1"}}
            )  # fmt: skip
            self.disconnects_sent += 1
            self._spawn(self._close_later(conn, close_after))

    async def _close_later(self, conn: _Conn, delay: float) -> None:
        await asyncio.sleep(delay)
        if conn in self._conns:
            conn.closed_by_fake = True
            await conn.ws.close(code=1000)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- inbound ---------------------------------------------------------------

    def _message_event(
        self, channel_id: str, user_id: str, text: str, thread_ts: str | None
    ) -> Json:
        ts = self.new_ts()
        self._user(user_id)
        event: Json = {
            "type": "message", "channel": channel_id, "user": user_id, "text": text,
            "ts": ts, "event_ts": ts, "team": self.team_id,
            "client_msg_id": str(uuid.uuid4()),
            "channel_type": self.channel_type(channel_id),
            "blocks": [{"type": "rich_text", "block_id": "b1", "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
            ]}],
        }  # fmt: skip
        if thread_ts:
            event["thread_ts"] = thread_ts
            event["parent_user_id"] = self._parent_user(channel_id, thread_ts) or user_id
        return event

    def _parent_user(self, channel_id: str, thread_ts: str) -> str | None:
        for env in self.envelopes:
            ev = env["payload"]["event"]
            if ev.get("channel") == channel_id and ev.get("ts") == thread_ts:
                return str(ev.get("user", ""))
        for msg in self.sent:
            if msg.chat_id == channel_id and msg.ts == thread_ts:
                return self.bot_user_id
        return None

    def _file_object(self, name: str, data: bytes, mimetype: str, user_id: str) -> Json:
        """A Slack file object, as in a ``file_share`` event; its bytes hosted here."""
        file_id = self._new_id("F")
        base = f"http://127.0.0.1:{self._port}/files-pri/{self.team_id}-{file_id}"
        obj: Json = {
            "id": file_id, "created": int(time.time()), "timestamp": int(time.time()),
            "name": name, "title": name, "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1] if "." in name else "binary",
            "pretty_type": mimetype, "user": user_id, "user_team": self.team_id,
            "editable": False, "size": len(data), "mode": "hosted", "is_external": False,
            "external_type": "", "is_public": False, "public_url_shared": False,
            "display_as_bot": False, "username": "",
            "url_private": f"{base}/{name}", "url_private_download": f"{base}/download/{name}",
            "permalink": f"https://fake-workspace.slack.com/files/{user_id}/{file_id}/{name}",
        }  # fmt: skip
        self.hosted[file_id] = (obj, data)
        return obj

    def _with_files(self, event: Json, files: list[tuple[str, bytes, str]] | None) -> Json:
        if files:
            event["subtype"] = "file_share"
            event["upload"] = False
            event["display_as_bot"] = False
            event["files"] = [self._file_object(n, d, m, event["user"]) for n, d, m in files]
            if not event["text"]:
                event["blocks"] = []
        return event

    async def _private_file(self, request: web.Request) -> web.Response:
        """``url_private``/``url_private_download``: the bytes for the bot token, else sign-in."""
        file_id = request.match_info["team_file"].split("-", 1)[-1]
        found = self.hosted.get(file_id)
        auth = request.headers.get("Authorization", "")
        ok = auth == f"Bearer {self.bot_token}" and "bot" not in self._revoked
        self.private_downloads.append((file_id, ok and found is not None))
        self._changed.set()
        if not ok:  # Slack answers 200 with its sign-in page, not 401
            return web.Response(text="<!DOCTYPE html><html><title>Slack</title>sign in</html>",
                                content_type="text/html")  # fmt: skip
        if found is None:
            return web.Response(status=404, text="file not found")
        obj, data = found
        return web.Response(body=data, content_type=obj["mimetype"] or "application/octet-stream")

    async def _upload(self, request: web.Request) -> web.Response:
        """The ``upload_url`` of ``files.getUploadURLExternal``: the raw bytes (or a form)."""
        upload = self._uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="upload url not found")
        if request.content_type == "multipart/form-data":
            form = await request.post()
            part = form.get("file") or form.get("filename")
            data = part.file.read() if isinstance(part, web.FileField) else b""
        else:
            data = await request.read()
        if len(data) != upload["length"]:
            return web.Response(status=400, text="length does not match")
        upload["data"] = data
        return web.Response(text=f"OK - {len(data)}")

    async def inject_dm(
        self,
        user_id: str,
        text: str,
        *,
        thread_ts: str | None = None,
        files: list[tuple[str, bytes, str]] | None = None,
    ) -> Json:
        """A user writes to the bot in their DM (in ``thread_ts``'s thread if given)."""
        event = self._message_event(self.dm_channel_for(user_id), user_id, text, thread_ts)
        self._with_files(event, files)
        await self.inject_event(event)
        return event

    async def inject_channel_message(
        self,
        channel_id: str,
        user_id: str,
        text: str,
        *,
        mention: bool = False,
        thread_ts: str | None = None,
        files: list[tuple[str, bytes, str]] | None = None,
    ) -> Json:
        """A user writes in a channel; ``mention`` sends ``message`` AND ``app_mention``."""
        if mention and f"<@{self.bot_user_id}>" not in text:
            text = f"<@{self.bot_user_id}> {text}"
        event = self._message_event(channel_id, user_id, text, thread_ts)
        self._with_files(event, files)
        await self.inject_event(event)
        if mention:
            mention_event = {
                k: v for k, v in event.items() if k not in ("channel_type", "parent_user_id")
            }
            mention_event["type"] = "app_mention"
            await self.inject_event(mention_event)
        return event

    async def inject_bot_message(
        self, channel_id: str, text: str, *, bot_id: str = "B0OTHER", username: str = "otherbot"
    ) -> Json:
        """Another integration posts (subtype ``bot_message``)."""
        ts = self.new_ts()
        event: Json = {
            "type": "message", "subtype": "bot_message", "channel": channel_id, "text": text,
            "ts": ts, "event_ts": ts, "bot_id": bot_id, "username": username,
            "channel_type": self.channel_type(channel_id),
        }  # fmt: skip
        await self.inject_event(event)
        return event

    async def inject_event(
        self, event: Json, *, retry_attempt: int = 0, retry_reason: str = ""
    ) -> Json:
        """Push ``event`` in an ``events_api`` envelope; return the envelope."""
        envelope: Json = {
            "envelope_id": str(uuid.uuid4()),
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
            "payload": {
                "token": "fake-verification-token", "team_id": self.team_id,
                "context_team_id": self.team_id, "api_app_id": self.app_id, "event": event,
                "type": "event_callback", "event_id": self._new_id("Ev"),
                "event_time": int(time.time()), "is_ext_shared_channel": False,
                "event_context": f"4-{uuid.uuid4().hex}",
                "authorizations": [{
                    "enterprise_id": None, "team_id": self.team_id,
                    "user_id": self.bot_user_id, "is_bot": True,
                    "is_enterprise_install": False,
                }],
            },
        }  # fmt: skip
        await self._push(envelope)
        return envelope

    async def redeliver(self, envelope: Json, reason: str = "timeout") -> Json:
        """Deliver ``envelope``'s event again, as Slack's retry does."""
        again = dict(envelope, envelope_id=str(uuid.uuid4()))
        again["retry_attempt"] = int(envelope.get("retry_attempt") or 0) + 1
        again["retry_reason"] = reason
        await self._push(again)
        return again

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """Slack's signature headers for ``body`` (timestamp: now)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(self.signing_secret.encode(), b"v0:" + ts.encode() + b":" + body,
                          hashlib.sha256).hexdigest()  # fmt: skip
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
                "Content-Type": "application/json"}  # fmt: skip

    async def verify_url(self, url: str) -> tuple[int, str]:
        """Slack's ``url_verification`` request to ``url``; ``(status, body)`` of the answer."""
        import aiohttp

        body = json.dumps({"token": "fake-verification-token", "type": "url_verification",
                           "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
                          ).encode()  # fmt: skip
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=self.sign(body)) as resp:
                return resp.status, await resp.text()

    async def _post_event(self, envelope: Json) -> None:
        """POST ``envelope``'s event to ``request_url``, retried as Slack does."""
        import aiohttp

        body = json.dumps(envelope["payload"]).encode()
        retry = int(envelope.get("retry_attempt") or 0)
        reason = str(envelope.get("retry_reason") or "")
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as http:
            while True:
                headers = self.sign(body)
                if retry:
                    headers |= {"X-Slack-Retry-Num": str(retry),
                                "X-Slack-Retry-Reason": reason or "http_error"}  # fmt: skip
                started = loop.time()
                status = 0
                try:
                    async with http.post(self.request_url, data=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=self.ack_timeout)
                                         ) as resp:  # fmt: skip
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                self.http_deliveries.append(HttpDelivery(
                    str(envelope["payload"].get("event_id", "")), retry, status,
                    loop.time() - started))  # fmt: skip
                self._changed.set()
                if 200 <= status < 300 or retry >= 3:
                    return
                retry += 1
                reason = "http_timeout" if status == 0 else "http_error"
                await asyncio.sleep(self.http_retry_delay)

    async def _push(self, envelope: Json) -> None:
        self.envelopes.append(envelope)
        if self.request_url:
            self._spawn(self._post_event(envelope))
            return
        live = [c for c in self._conns if not c.ws.closed]
        if not live:
            self._pending.append(envelope)
            return
        try:
            await live[-1].ws.send_json(envelope)
        except ConnectionError:  # the socket died under us: Slack would deliver it later
            self._pending.append(envelope)

    # -- waiting ---------------------------------------------------------------

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Wait until ``predicate()`` holds; ``TimeoutError`` naming ``what`` otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake slack: timed out waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[SentMessage]:
        """Wait until the bot has posted ``n`` messages in all; return them all."""
        await self.wait_until(lambda: len(self.sent) >= n, timeout, f"{n} sent messages")
        return list(self.sent)

    async def wait_for_files(self, n: int, timeout: float = 5.0) -> list[SentFile]:
        """Wait until ``n`` uploads were shared in all; return them."""
        await self.wait_until(lambda: len(self.sent_files) >= n, timeout, f"{n} files")
        return self.sent_files

    async def wait_for_acks(self, n: int, timeout: float = 5.0) -> list[str]:
        """Wait until ``n`` envelopes were acked in all; return the envelope ids."""
        await self.wait_until(lambda: len(self.acks) >= n, timeout, f"{n} acks")
        return list(self.acks)

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Wait until ``n`` websockets were accepted in all."""
        await self.wait_until(lambda: self.connections >= n, timeout, f"{n} connections")

    async def wait_for_statuses(
        self, n: int = 1, timeout: float = 5.0
    ) -> list[tuple[str, str, str]]:
        """Wait for ``n`` assistant status (typing) calls in all."""
        await self.wait_until(lambda: len(self.statuses) >= n, timeout, f"{n} status calls")
        return list(self.statuses)

    @property
    def typing(self) -> list[tuple[str, str, str]]:
        """Alias of ``statuses``: Slack's only bot typing indicator."""
        return self.statuses

    # -- Web API ---------------------------------------------------------------

    async def _args(self, request: web.Request) -> Json:
        args: Json = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    args.update(body)
            else:
                args.update(dict(await request.post()))
        return args

    def _token_kind(self, token: str) -> str:
        if not token:
            return "none"
        if token == self.bot_token:
            return "bot"
        if token == self.app_token:
            return "app"
        return "unknown"

    async def _web_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        args = await self._args(request)
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else str(args.pop("token", ""))
        args.pop("token", None)
        kind = self._token_kind(token)
        rec = RecordedRequest(method, urlsplit(str(request.url)).hostname or "", kind, args)
        self.requests.append(rec)
        self._changed.set()
        response = self._dispatch(method, args, kind, rec)
        rec.status = response.status
        late = next((i for i, (m, _) in enumerate(self._late) if m in ("*", method)), None)
        if late is not None:
            _, delay = self._late.pop(late)
            if delay is None:
                rec.status = 0
                if request.transport is not None:
                    request.transport.close()
            else:
                await asyncio.sleep(delay)
        return response

    def _error(
        self, rec: RecordedRequest, error: str, status: int = 200, **extra: Any
    ) -> web.Response:
        rec.error = error
        return web.json_response({"ok": False, "error": error, **extra}, status=status)

    def _take_failure(self, method: str, args: Json) -> _Failure | None:
        for i, failure in enumerate(self._failures):
            if failure.method not in ("*", method):
                continue
            if failure.needs_blocks and not args.get("blocks"):
                continue
            return self._failures.pop(i)
        return None

    def _dispatch(self, method: str, args: Json, kind: str, rec: RecordedRequest) -> web.Response:
        wanted = "app" if method == "apps.connections.open" else "bot"
        if kind == "none":
            return self._error(rec, "not_authed")
        if kind == "unknown":
            return self._error(rec, "invalid_auth")
        if kind != wanted:
            return self._error(rec, "not_allowed_token_type")
        if kind in self._revoked:
            return self._error(rec, self._revoked[kind])
        failure = self._take_failure(method, args)
        if failure is not None:
            if failure.error is None:
                rec.error = f"http {failure.status}"
                return web.Response(
                    status=failure.status, content_type="text/html",
                    text=f"<html><body><h1>{failure.status} Service Unavailable</h1></body></html>",
                )  # fmt: skip
            headers = {}
            if failure.retry_after is not None:
                headers["Retry-After"] = f"{failure.retry_after:g}"
            resp = self._error(rec, failure.error, failure.status)
            resp.headers.update(headers)
            return resp
        handler = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._connections_open,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "assistant.threads.setStatus": self._set_status,
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
        }.get(method)
        if handler is None:
            return self._error(rec, "unknown_method", req_method=method)
        result = handler(args)
        if result.get("error") == "ratelimited":  # Slack: HTTP 429 and Retry-After (seconds)
            resp = self._error(rec, "ratelimited", 429)
            resp.headers["Retry-After"] = str(max(1, math.ceil(result["retry_after"])))
            return resp
        if "error" in result:
            return self._error(rec, result["error"])
        return web.json_response({"ok": True, **result})

    def _auth_test(self, args: Json) -> Json:
        return {
            "url": "https://fake-workspace.slack.com/", "team": "Fake Workspace",
            "user": self.bot_name, "team_id": self.team_id, "user_id": self.bot_user_id,
            "bot_id": self.bot_id, "is_enterprise_install": False,
        }  # fmt: skip

    def _connections_open(self, args: Json) -> Json:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"{self.socket_url}?ticket={ticket}&app_id={self.app_id}"}

    def _resolve_channel(self, channel: str) -> str | None:
        if channel in self._channels:
            return channel
        if channel.startswith(("U", "W")):  # posting to a user id opens their DM
            return self.dm_channel_for(channel)
        return None

    def _post_message(self, args: Json) -> Json:
        channel = self._resolve_channel(str(args.get("channel", "")))
        if channel is None:
            return {"error": "channel_not_found"}
        text = str(args.get("text") or "")
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except json.JSONDecodeError:
                return {"error": "invalid_blocks_format"}
        if blocks is not None:
            if not isinstance(blocks, list) or len(blocks) > 50:
                return {"error": "invalid_blocks"}
            for block in blocks:
                if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
                    return {"error": "invalid_blocks"}
            md = sum(len(str(b.get("text", ""))) for b in blocks if b["type"] == "markdown")
            if md > MARKDOWN_BLOCKS_LIMIT:
                return {"error": "msg_blocks_too_long"}
            for block in blocks:
                if block["type"] == "section" and not _valid_section(block):
                    return {"error": "invalid_blocks"}
        if not text and not blocks:
            return {"error": "no_text"}
        if len(text) > TEXT_LIMIT:
            return {"error": "msg_too_long"}
        ts = self.new_ts()
        thread_ts = str(args.get("thread_ts") or "")
        shown = _shown(text, blocks)
        message: Json = {
            "type": "message", "user": self.bot_user_id, "bot_id": self.bot_id,
            "app_id": self.app_id, "text": text, "ts": ts, "team": self.team_id,
            "bot_profile": {"id": self.bot_id, "app_id": self.app_id, "name": self.bot_name},
        }  # fmt: skip
        if blocks:
            message["blocks"] = blocks
        if thread_ts:
            message["thread_ts"] = thread_ts
        self.sent.append(
            SentMessage(channel, thread_ts, shown, ts, blocks, _truthy(args.get("mrkdwn")), args)
        )
        self._changed.set()
        if self.echo_own_messages:
            event = dict(message, channel=channel, event_ts=ts,
                         channel_type=self.channel_type(channel))  # fmt: skip
            if thread_ts:
                event["parent_user_id"] = self._parent_user(channel, thread_ts) or ""
            self._spawn(self.inject_event(event))
        return {"channel": channel, "ts": ts, "message": message}

    def _get_upload_url(self, args: Json) -> Json:
        filename = str(args.get("filename") or "")
        try:
            length = int(args.get("length", ""))
        except ValueError:
            return {"error": "invalid_arguments"}
        if not filename or length < 1:
            return {"error": "invalid_arguments"}
        file_id = self._new_id("F")
        self._uploads[file_id] = {"filename": filename, "length": length, "data": None}
        return {"upload_url": f"http://127.0.0.1:{self._port}/upload/v1/{file_id}",
                "file_id": file_id}  # fmt: skip

    def _complete_upload(self, args: Json) -> Json:
        try:
            files = json.loads(str(args.get("files") or ""))
        except json.JSONDecodeError:
            return {"error": "invalid_arguments"}
        if not isinstance(files, list) or not files:
            return {"error": "invalid_arguments"}
        channel = None
        if args.get("channel_id"):
            channel = self._resolve_channel(str(args["channel_id"]))
            if channel is None:
                return {"error": "channel_not_found"}
        out = []
        for item in files:
            upload = self._uploads.get(str(item.get("id")))
            if upload is None or upload["data"] is None:
                return {"error": "file_not_found"}
        for item in files:
            file_id = str(item["id"])
            upload = self._uploads.pop(file_id)
            title = str(item.get("title") or upload["filename"])
            if channel is not None:
                self.sent_files.append(SentFile(
                    file_id, channel, str(args.get("thread_ts") or ""), upload["filename"],
                    title, upload["data"], str(args.get("initial_comment") or "")))  # fmt: skip
            out.append({"id": file_id, "title": title})
        self._changed.set()
        return {"files": out}

    def _update(self, args: Json) -> Json:
        """``chat.update``: at most one per ``update_interval`` s per channel, else 429."""
        channel = str(args.get("channel", ""))
        ts = str(args.get("ts", ""))
        target = next((m for m in self.sent if m.chat_id == channel and m.ts == ts), None)
        if target is None:
            return {"error": "message_not_found"}
        text = str(args.get("text") or "")
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if blocks is not None and not all(
            isinstance(b, dict) and b.get("type") in BLOCK_TYPES
            and (b["type"] != "section" or _valid_section(b)) for b in blocks
        ):  # fmt: skip
            return {"error": "invalid_blocks"}
        if not text and not blocks:
            return {"error": "no_text"}
        if len(text) > TEXT_LIMIT:
            return {"error": "msg_too_long"}
        now = time.monotonic()
        last = self._last_update.get(channel)
        if last is not None and now - last < self.update_interval:
            self.updates_refused += 1
            return {"error": "ratelimited", "retry_after": self.update_interval - (now - last)}
        self._last_update[channel] = now
        target.text, target.blocks = _shown(text, blocks), blocks
        self.updates.append((channel, ts, target.text, now))
        self._changed.set()
        return {"channel": channel, "ts": ts, "text": text}

    def _users_info(self, args: Json) -> Json:
        user_id = str(args.get("user", ""))
        if not user_id.startswith(("U", "W")):
            return {"error": "user_not_found"}
        return {"user": self._user(user_id)}

    def _conversations_info(self, args: Json) -> Json:
        info = self._channels.get(str(args.get("channel", "")))
        if info is None:
            return {"error": "channel_not_found"}
        return {"channel": info}

    def _set_status(self, args: Json) -> Json:
        channel = str(args.get("channel_id", ""))
        thread_ts = str(args.get("thread_ts", ""))
        if channel not in self._channels:
            return {"error": "channel_not_found"}
        if not thread_ts:
            return {"error": "invalid_thread_ts"}
        self.statuses.append((channel, thread_ts, str(args.get("status", ""))))
        self._changed.set()
        return {}

    # -- Socket Mode -----------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets or "app" in self._revoked:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)  # tickets are single use
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Conn(ws, request)
        self._conns.append(conn)
        self.connections += 1
        self._changed.set()
        try:
            await ws.send_json({
                "type": "hello", "num_connections": len(self._conns),
                "debug_info": {"host": "applink-fake-1", "build_number": 1,
                               "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            })  # fmt: skip
            pending, self._pending = self._pending, []
            for envelope in pending:
                await ws.send_json(envelope)
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(ValueError):  # a client may send junk; Slack ignores it
                    data = json.loads(msg.data)
                    if isinstance(data, dict) and "envelope_id" in data:
                        self.acks.append(str(data["envelope_id"]))
                        self._changed.set()
        except ConnectionError:
            pass  # aborted by drop_connection() or the client
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
            self._changed.set()
        return ws
