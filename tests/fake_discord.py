"""A protocol-faithful fake of Discord (REST API v10 + Gateway), for tests.

The real discord.py client runs against it on 127.0.0.1; nothing of the client
is mocked. One bot, one guild with a few channels, any number of users.

Usage::

    fake = FakeDiscord()                   # token "fake-discord-token"
    await fake.start()                     # binds 127.0.0.1:<random port>
    adapter = DiscordAdapter(token=fake.token, base_url=fake.base_url,
                             gateway_url=fake.gateway_url)
    ...
    await fake.stop()

Addresses: ``base_url`` (REST root, ``http://127.0.0.1:PORT/api/v10``),
``gateway_url`` (``ws://127.0.0.1:PORT/gateway``), ``env()`` (the
``DISCORD_*`` environment variables pointing at the fake).

World: ``bot_id``/``bot_name``, ``guild_id``, channel ids ``general_id``,
``random_id`` (guild text channels, type 0), ``announcements_id`` (type 5);
``add_channel(name, type=0)`` adds more before or after start
(``await fake.announce_channel(id)`` dispatches CHANNEL_CREATE);
``await create_thread(parent_id, name=..., announce=True)`` makes a public
thread (type 11) and dispatches THREAD_CREATE. ``dm_channel_for(user_id)``
gives (and creates) the DM channel id of a user.

Inbound (each returns the message JSON that was dispatched as MESSAGE_CREATE):

- ``await inject_dm(user_id, text, username=None, bot=False, reply_to=None)``
- ``await inject_guild_message(channel_id, user_id, text, username=None,
  mention_bot=False, thread_id=None, reply_to=None, reply_ping=True, bot=False,
  announce_thread=True)``: ``mention_bot`` prefixes ``<@bot_id>`` and lists the
  bot in ``mentions``; ``thread_id`` posts into that thread of ``channel_id``
  (created on first use, THREAD_CREATE unless ``announce_thread=False``);
  ``reply_to`` is a message id (inbound or one the bot sent).
- ``files=[(filename, data, content_type), ...]`` on both injectors (and
  ``voice=True`` for a voice message: Opus/Ogg, ``IS_VOICE_MESSAGE`` flag,
  ``duration_secs`` and ``waveform``): the message carries ``attachments`` as
  Discord sends them (``id``, ``filename``, ``size``, ``content_type``,
  signed CDN ``url``/``proxy_url``), the bytes served at that URL
  (``/attachments/{channel}/{id}/{name}?ex=..&is=..&hm=..``; a wrong or missing
  ``hm`` is 404, as an expired Discord link). ``cdn_downloads`` counts fetches.
- ``await redeliver(message)``: the same message (same id) dispatched again.
- ``await inject_event(t, d)``: any other dispatch (e.g. ``TYPING_START``).

Outbound records: ``sent`` (list of :class:`SentMessage` with ``chat_id``,
``thread_id``, ``channel_id``, ``text``, ``id``), ``typing`` (channel ids),
``requests`` (every HTTP request, :class:`RecordedRequest`), ``identifies``
(IDENTIFY payloads without the token, e.g. ``["intents"]``), ``resumes``,
``heartbeats``, ``connections`` (websocket connections accepted),
``gateway_queries``, ``sent_files`` (:class:`SentFile`: files the bot uploaded
with a multipart ``POST /channels/{id}/messages``, ``files[n]`` parts and
``payload_json``, as the real API takes them). Waiters: ``await wait_for_messages(n, timeout=5)``,
``wait_for_typing(n)``, ``wait_for_identifies(n)``, ``wait_for_resumes(n)``,
``wait_until(predicate, timeout, what)``.

Switches:

- ``rate_limit_next(n, retry_after=0.2, global_=False, route="messages")``: the
  next ``n`` matching requests get Discord's 429 (JSON body ``message`` /
  ``retry_after`` / ``global``, ``Retry-After``, ``X-RateLimit-*`` and ``Via``
  headers). ``route="any"`` applies to every authenticated request.
- ``fail_next_5xx(n, status=503, route="messages")``: the next ``n`` matching
  requests fail with that status. discord.py itself retries 500/502/504/524
  (sleeping 1 s, 3 s, ...); 503 reaches the caller at once.
- ``forbid(channel_id)``: sends there get 403 ``Missing Permissions`` (50013).
- ``revoke_token(close_gateway=True)``: REST answers 401 ``{"message": "401: Unauthorized",
  "code": 0}``, live gateway sessions are closed with 4004, IDENTIFY/RESUME fail
  with 4004. A client built with another token gets the same.
- ``drop_connection()``: abort every gateway TCP connection (no close frame);
  sessions stay resumable. ``await close_connection(code)``: a close frame with
  ``code``. ``await send_reconnect()``: op 7. ``await invalidate_session(
  resumable=False)``: op 9.
- ``message_content_allowed=False`` (constructor): the application lacks the
  Message Content intent; an IDENTIFY asking for it is closed with 4014.
- ``echo_own_messages`` (default True): like Discord, the bot's own sends come
  back as MESSAGE_CREATE.

Gateway protocol: HELLO (op 10) -> IDENTIFY (op 2; token and intents checked)
-> READY (with ``resume_gateway_url`` = ``gateway_url``) + GUILD_CREATE;
heartbeat op 1 -> ACK op 11; RESUME (op 6) replays missed dispatches then sends
RESUMED, or op 9 when the session is unknown; dispatches carry increasing
``s``. ``?compress=zlib-stream`` is honoured with one zlib stream per
connection, each payload flushed with Z_SYNC_FLUSH, and ``?compress=zstd-stream``
(what discord.py asks for when ``zstandard`` is installed) with one zstd stream
per connection, each payload ending a block; ``encoding`` must be json.
REST responses carry exactly ``Content-Type: application/json`` (discord.py
compares the header verbatim).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

__all__ = ["FakeDiscord", "RecordedRequest", "SentFile", "SentMessage"]

DISCORD_EPOCH_MS = 1420070400000
MESSAGE_CONTENT_INTENT = 1 << 15
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19
THREAD_TYPES = {10, 11, 12}

Json = dict[str, Any]


@dataclass
class SentMessage:
    """A message the bot posted: ``chat_id`` is the parent channel for thread posts."""

    id: str
    channel_id: str
    chat_id: str
    thread_id: str
    text: str
    payload: Json = field(repr=False)


@dataclass
class SentFile:
    """A file the bot uploaded: the ``files[n]`` part of a multipart message post."""

    message_id: str
    channel_id: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    caption: str = ""


@dataclass
class RecordedRequest:
    """One HTTP request the fake answered."""

    method: str
    path: str
    host: str
    status: int = 0
    json: Any = None


@dataclass
class _Session:
    id: str
    seq: int = 0
    log: list[Json] = field(default_factory=list)
    conn: _Conn | None = None
    resumable: bool = True


_STREAMS = (None, "zlib-stream", "zstd-stream")


def _stream_compressor(kind: str | None) -> Callable[[bytes], bytes] | None:
    """One compression stream for a connection: each call returns one whole payload."""
    if kind == "zlib-stream":
        stream = zlib.compressobj()
        return lambda data: stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
    if kind == "zstd-stream":
        import zstandard  # discord.py asks for zstd only when it is installed

        zstd = zstandard.ZstdCompressor().compressobj()
        return lambda data: zstd.compress(data) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    return None


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    request: web.Request
    compress: Callable[[bytes], bytes] | None = None  # the stream the client asked for
    session: _Session | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed_by_fake: bool = False

    async def close(self, code: int, message: bytes = b"") -> None:
        self.closed_by_fake = True
        await self.ws.close(code=code, message=message)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


# A token of the real shape (base64url of a snowflake, a timestamp, an HMAC), so
# `onethread run --check` accepts it; the fake accepts only this value.
DEFAULT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GfAkE1.fake-discord-token_for-onethread-tests"


class FakeDiscord:
    """Discord's REST API and Gateway, faked on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_name: str = "onethread-bot",
        heartbeat_interval_ms: int = 41250,
        message_content_allowed: bool = True,
        echo_own_messages: bool = True,
    ) -> None:
        self.token = token
        self.bot_name = bot_name
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.message_content_allowed = message_content_allowed
        self.echo_own_messages = echo_own_messages
        self._counter = itertools.count(1)
        self.bot_id = self.snowflake()
        self.application_id = self.bot_id
        self.guild_id = self.snowflake()
        self._channels: dict[str, Json] = {}
        self._users: dict[str, Json] = {}
        self._messages: dict[str, Json] = {}
        self._dm_by_user: dict[str, str] = {}
        self.general_id = self.add_channel("general")
        self.random_id = self.add_channel("random")
        self.announcements_id = self.add_channel("announcements", type=5)
        # records
        self.sent: list[SentMessage] = []
        self.sent_files: list[SentFile] = []
        self.cdn: dict[str, tuple[bytes, str]] = {}  # attachment id -> (bytes, content type)
        self.cdn_downloads = 0
        # PATCHed messages: (channel_id, message_id, content, time.monotonic() on arrival).
        self.edits: list[tuple[str, str, str, float]] = []
        self.edit_window = (5, 5.0)  # Discord's message bucket: 5 per 5 s per channel
        self.edits_refused = 0
        self.typing: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.identifies: list[Json] = []
        self.resumes: list[Json] = []
        self.heartbeats = 0
        self.connections = 0
        self.gateway_queries: list[dict[str, str]] = []
        # switches
        self._rate_limits: list[tuple[float, bool, str]] = []
        self._failures: list[tuple[int, str]] = []
        self._cut_off = 0  # message sends to carry out and leave unanswered
        self._revoked = False
        self._forbidden: set[str] = set()
        # plumbing
        self._sessions: dict[str, _Session] = {}
        self._conns: set[_Conn] = set()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Serve on 127.0.0.1 at a free port."""
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/{version}/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{channel}/{id}/{name}", self._cdn_get)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and the server."""
        for conn in list(self._conns):
            with contextlib.suppress(ConnectionError, RuntimeError):  # already gone
                await conn.close(1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """The REST root, as ``DISCORD_API_BASE_URL`` expects it."""
        return f"http://127.0.0.1:{self._port}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The Gateway websocket URL, as ``DISCORD_GATEWAY_URL`` expects it."""
        return f"ws://127.0.0.1:{self._port}/gateway"

    def env(self) -> dict[str, str]:
        """Environment variables that point a ``DiscordAdapter`` at this fake."""
        return {
            "DISCORD_BOT_TOKEN": self.token,
            "DISCORD_API_BASE_URL": self.base_url,
            "DISCORD_GATEWAY_URL": self.gateway_url,
        }

    # -- world -----------------------------------------------------------------

    def snowflake(self) -> str:
        """A new, time-ordered Discord id."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._counter) & 0x3FFFFF))

    def add_channel(self, name: str, *, type: int = 0) -> str:
        """Add a guild channel (0 text, 5 announcement, 15 forum); returns its id."""
        cid = self.snowflake()
        self._channels[cid] = {
            "id": cid,
            "type": type,
            "guild_id": self.guild_id,
            "name": name,
            "position": len(self._channels),
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }
        return cid

    async def announce_channel(self, channel_id: str) -> None:
        """Dispatch CHANNEL_CREATE for a channel added after READY."""
        await self._dispatch("CHANNEL_CREATE", self._channels[channel_id])

    async def create_thread(
        self,
        parent_id: str,
        *,
        name: str = "a thread",
        thread_id: str | None = None,
        announce: bool = True,
    ) -> str:
        """Create a public thread under ``parent_id``; dispatch THREAD_CREATE if ``announce``."""
        tid = thread_id or self.snowflake()
        parent = self._channels[parent_id]
        self._channels[tid] = {
            "id": tid,
            "type": 11,
            "guild_id": self.guild_id,
            "parent_id": parent_id,
            "owner_id": self.bot_id,
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _now_iso(),
                "locked": False,
            },
        }
        assert parent["type"] in (0, 5, 15), "threads live under text, announcement or forum"
        if announce:
            await self._dispatch("THREAD_CREATE", {**self._channels[tid], "newly_created": True})
        return tid

    def dm_channel_for(self, user_id: str | int) -> str:
        """The DM channel id between the bot and ``user_id`` (created on first use)."""
        uid = str(user_id)
        if uid not in self._dm_by_user:
            cid = self.snowflake()
            self._dm_by_user[uid] = cid
            self._channels[cid] = {
                "id": cid,
                "type": 1,
                "last_message_id": None,
                "recipients": [self._user(uid)],
                "flags": 0,
            }
        return self._dm_by_user[uid]

    def _user(self, user_id: str, username: str | None = None, *, bot: bool = False) -> Json:
        user = self._users.get(user_id)
        if user is None or username is not None:
            name = username or f"user{user_id[-4:]}"
            user = {
                "id": user_id,
                "username": name.lower(),
                "global_name": name,
                "discriminator": "0",
                "avatar": None,
                "bot": bot,
                "public_flags": 0,
            }
            self._users[user_id] = user
        return user

    def _bot_user(self) -> Json:
        return {
            "id": self.bot_id,
            "username": self.bot_name,
            "global_name": None,
            "discriminator": "0",
            "avatar": None,
            "bot": True,
            "verified": True,
            "flags": 0,
            "mfa_enabled": False,
        }

    def _member(self) -> Json:
        return {"roles": [], "joined_at": _now_iso(), "deaf": False, "mute": False, "flags": 0}

    def _guild(self) -> Json:
        channels = [
            c
            for c in self._channels.values()
            if c.get("guild_id") and c["type"] not in THREAD_TYPES
        ]
        threads = [c for c in self._channels.values() if c["type"] in THREAD_TYPES]
        return {
            "id": self.guild_id,
            "name": "Fake Guild",
            "icon": None,
            "owner_id": self.snowflake(),
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "system_channel_flags": 0,
            "preferred_locale": "en-US",
            "features": [],
            "roles": [
                {
                    "id": self.guild_id,
                    "name": "@everyone",
                    "permissions": "1071698660929",
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "members": [{**self._member(), "user": self._bot_user()}],
            "member_count": 2,
            "channels": channels,
            "threads": threads,
            "voice_states": [],
            "presences": [],
            "large": False,
            "unavailable": False,
            "joined_at": _now_iso(),
        }

    # -- inbound injection -----------------------------------------------------

    async def inject_dm(
        self,
        user_id: str | int,
        text: str,
        *,
        username: str | None = None,
        bot: bool = False,
        reply_to: str | None = None,
        files: list[tuple[str, bytes, str]] | None = None,
        voice: bool = False,
    ) -> Json:
        """A user writes to the bot in a DM. Returns the dispatched message JSON."""
        uid = str(user_id)
        author = self._user(uid, username, bot=bot)
        channel_id = self.dm_channel_for(uid)
        msg = self._message_json(channel_id, author, text, reply_to=reply_to)
        self._attach(msg, files or [], voice=voice)
        await self._dispatch("MESSAGE_CREATE", msg)
        return msg

    async def inject_guild_message(
        self,
        channel_id: str,
        user_id: str | int,
        text: str,
        *,
        username: str | None = None,
        mention_bot: bool = False,
        thread_id: str | None = None,
        reply_to: str | None = None,
        reply_ping: bool = True,
        bot: bool = False,
        announce_thread: bool = True,
        files: list[tuple[str, bytes, str]] | None = None,
        voice: bool = False,
    ) -> Json:
        """A user posts in a guild channel (or in its thread ``thread_id``)."""
        uid = str(user_id)
        author = self._user(uid, username, bot=bot)
        target = channel_id
        if thread_id is not None:
            if thread_id not in self._channels:
                await self.create_thread(channel_id, thread_id=thread_id, announce=announce_thread)
            target = thread_id
        mentions: list[Json] = []
        if mention_bot:
            text = f"<@{self.bot_id}> {text}"
            mentions.append({**self._bot_user(), "member": self._member()})
        msg = self._message_json(
            target,
            author,
            text,
            guild=True,
            mentions=mentions,
            reply_to=reply_to,
            reply_ping=reply_ping,
        )
        self._attach(msg, files or [], voice=voice)
        await self._dispatch("MESSAGE_CREATE", msg)
        return msg

    def _attachment_json(self, channel_id: str, filename: str, data: bytes, mime: str) -> Json:
        """One attachment object as Discord sends it, its bytes put on the fake CDN."""
        aid = self.snowflake()
        self.cdn[aid] = (data, mime)
        now = int(time.time())
        query = f"ex={now + 86400:x}&is={now:x}&hm={self._cdn_signature(aid)}&"
        url = f"http://127.0.0.1:{self._port}/attachments/{channel_id}/{aid}/{filename}?{query}"
        item: Json = {
            "id": aid,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": mime,
        }
        if mime.startswith("image/"):
            item["width"], item["height"] = 1, 1
        return item

    def _attach(self, msg: Json, files: list[tuple[str, bytes, str]], *, voice: bool) -> None:
        items = [self._attachment_json(msg["channel_id"], n, d, m) for n, d, m in files]
        if voice:
            for item in items:
                item["duration_secs"] = 2.0
                item["waveform"] = base64.b64encode(bytes(16)).decode()
            msg["flags"] |= 1 << 13  # IS_VOICE_MESSAGE
        msg["attachments"] = items

    def _cdn_signature(self, attachment_id: str) -> str:
        return hashlib.sha256(f"{self.token}:{attachment_id}".encode()).hexdigest()

    async def _cdn_get(self, request: web.Request) -> web.Response:
        """The CDN: an attachment's bytes, for a correctly signed URL only."""
        aid = request.match_info["id"]
        found = self.cdn.get(aid)
        if found is None or request.query.get("hm") != self._cdn_signature(aid):
            return web.Response(status=404, text="This content is no longer available.")
        self.cdn_downloads += 1
        self._notify()
        return web.Response(body=found[0], content_type=found[1])

    async def redeliver(self, message: Json) -> None:
        """Dispatch the same message (same id) again, as Discord may after a resume."""
        await self._dispatch("MESSAGE_CREATE", message)

    async def inject_event(self, t: str, d: Json) -> None:
        """Dispatch any gateway event."""
        await self._dispatch(t, d)

    def _message_json(
        self,
        channel_id: str,
        author: Json,
        text: str,
        *,
        guild: bool = False,
        mentions: list[Json] | None = None,
        reply_to: str | None = None,
        reply_ping: bool = True,
    ) -> Json:
        mid = self.snowflake()
        msg: Json = {
            "id": mid,
            "channel_id": channel_id,
            "author": author,
            "content": text,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": list(mentions or []),
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if guild:
            msg["guild_id"] = self.guild_id
            msg["member"] = self._member()
        if reply_to is not None:
            ref = self._messages[reply_to]
            msg["type"] = 19
            msg["message_reference"] = {
                "type": 0,
                "message_id": reply_to,
                "channel_id": ref["channel_id"],
                **({"guild_id": self.guild_id} if guild else {}),
            }
            msg["referenced_message"] = ref
            if reply_ping and all(m["id"] != ref["author"]["id"] for m in msg["mentions"]):
                msg["mentions"].append(ref["author"])
        if (
            not self.message_content_allowed
            and guild
            and not any(m["id"] == self.bot_id for m in msg["mentions"])
        ):
            # Without the intent Discord blanks guild messages that do not mention the bot.
            msg["content"] = ""
        self._messages[mid] = msg
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel["last_message_id"] = mid
        return msg

    # -- switches --------------------------------------------------------------

    def rate_limit_next(
        self,
        n: int = 1,
        retry_after: float = 0.2,
        *,
        global_: bool = False,
        route: str = "messages",
    ) -> None:
        """Answer the next ``n`` matching requests with 429 (route "messages" or "any")."""
        self._rate_limits.extend([(retry_after, global_, route)] * n)

    def fail_next_5xx(self, n: int = 1, status: int = 503, *, route: str = "messages") -> None:
        """Answer the next ``n`` matching requests with ``status`` (route "messages" or "any")."""
        self._failures.extend([(status, route)] * n)

    def cut_off_next(self, n: int = 1) -> None:
        """The next ``n`` message sends are carried out, then their connection is closed
        without an answer (the client cannot know the message was posted)."""
        self._cut_off += n

    def forbid(self, channel_id: str) -> None:
        """The bot lacks permission in ``channel_id``: sends get 403 Missing Permissions."""
        self._forbidden.add(channel_id)

    def revoke_token(self, *, close_gateway: bool = True) -> None:
        """Make the token invalid: REST 401, gateway sessions closed with 4004.

        ``close_gateway=False`` leaves live gateway sessions open (only REST and
        later IDENTIFY/RESUME fail), to test a 401 on a send without a race.
        """
        self._revoked = True
        if not close_gateway:
            return
        for conn in list(self._conns):
            task = asyncio.create_task(conn.close(4004, b"Authentication failed."))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def drop_connection(self) -> None:
        """Abort every gateway connection abruptly (TCP close, no close frame)."""
        for conn in list(self._conns):
            transport = conn.request.transport
            if transport is not None:
                transport.abort()

    async def close_connection(self, code: int = 4000) -> None:
        """Close every gateway connection with a close frame carrying ``code``."""
        for conn in list(self._conns):
            await conn.close(code)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT on every gateway connection."""
        for conn in list(self._conns):
            await self._send(conn, {"op": 7, "d": None, "s": None, "t": None})

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION on every gateway connection."""
        for conn in list(self._conns):
            if conn.session is not None and not resumable:
                conn.session.resumable = False
            await self._send(conn, {"op": 9, "d": resumable, "s": None, "t": None})

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
                raise TimeoutError(f"fake discord: timed out waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[SentMessage]:
        """Wait until the bot has sent ``n`` messages in all; return them all."""
        await self.wait_until(lambda: len(self.sent) >= n, timeout, f"{n} sent messages")
        return list(self.sent)

    async def wait_for_files(self, n: int, timeout: float = 5.0) -> list[SentFile]:
        """Wait until the bot uploaded ``n`` files in all; return the uploads."""
        await self.wait_until(lambda: len(self.sent_files) >= n, timeout, f"{n} files")
        return self.sent_files

    async def wait_for_typing(self, n: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait for ``n`` typing calls in all; return the channel ids."""
        await self.wait_until(lambda: len(self.typing) >= n, timeout, f"{n} typing calls")
        return list(self.typing)

    async def wait_for_identifies(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait for ``n`` successful IDENTIFYs in all."""
        await self.wait_until(lambda: len(self.identifies) >= n, timeout, f"{n} identifies")

    async def wait_for_resumes(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait for ``n`` successful RESUMEs in all."""
        await self.wait_until(lambda: len(self.resumes) >= n, timeout, f"{n} resumes")

    def _notify(self) -> None:
        self._changed.set()

    # -- gateway ---------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        query = dict(request.query)
        self.gateway_queries.append(query)
        compress = query.get("compress")
        conn = _Conn(ws, request, _stream_compressor(compress))
        self._conns.add(conn)
        self.connections += 1
        self._notify()
        try:
            if query.get("v") not in ("9", "10"):
                await conn.close(4012, b"Invalid API version.")
                return ws
            if query.get("encoding", "json") != "json" or compress not in _STREAMS:
                await conn.close(4000, b"fake: only json, zlib-stream or zstd-stream supported")
                return ws
            await self._send(
                conn,
                {
                    "op": 10,
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                    "s": None,
                    "t": None,
                },
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await conn.close(4002, b"Error while decoding payload.")
                    break
                try:
                    payload = json.loads(msg.data)
                except ValueError:
                    await conn.close(4002, b"Error while decoding payload.")
                    break
                await self._on_op(conn, payload)
        finally:
            self._conns.discard(conn)
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                if ws.close_code in (1000, 1001) and not conn.closed_by_fake:
                    session.resumable = False  # a clean client close ends the session
            self._notify()
        return ws

    async def _on_op(self, conn: _Conn, payload: Json) -> None:
        op, d = payload.get("op"), payload.get("d")
        if op == 1:
            self.heartbeats += 1
            await self._send(conn, {"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            await self._identify(conn, d)
        elif op == 6:
            await self._resume(conn, d)
        elif conn.session is None:
            await conn.close(4003, b"Not authenticated.")
        elif op in (3, 4, 8):
            pass  # presence, voice state, member requests: accepted, nothing to answer
        else:
            await conn.close(4001, b"Unknown opcode.")
        self._notify()

    async def _identify(self, conn: _Conn, d: Json) -> None:
        if conn.session is not None:
            await conn.close(4005, b"Already authenticated.")
            return
        if d.get("token") != self.token or self._revoked:
            await conn.close(4004, b"Authentication failed.")
            return
        intents = int(d.get("intents", 0))
        if intents & MESSAGE_CONTENT_INTENT and not self.message_content_allowed:
            await conn.close(4014, b"Disallowed intent(s).")
            return
        self.identifies.append({k: v for k, v in d.items() if k != "token"})
        session = _Session(id=f"session-{self.snowflake()}", conn=conn)
        self._sessions[session.id] = session
        conn.session = session
        flags = GATEWAY_MESSAGE_CONTENT_LIMITED if self.message_content_allowed else 0
        ready = {
            "v": 10,
            "user": self._bot_user(),
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": flags},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "presences": [],
            "geo_ordered_rtc_regions": [],
        }
        await self._dispatch_session(session, "READY", ready)
        await self._dispatch_session(session, "GUILD_CREATE", self._guild())

    async def _resume(self, conn: _Conn, d: Json) -> None:
        if d.get("token") != self.token or self._revoked:
            await conn.close(4004, b"Authentication failed.")
            return
        session = self._sessions.get(str(d.get("session_id")))
        if session is None or not session.resumable:
            await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})
            return
        seq = d.get("seq") or 0
        self.resumes.append({k: v for k, v in d.items() if k != "token"})
        session.conn = conn
        conn.session = session
        for frame in [f for f in session.log if f["s"] > seq]:
            await self._send(conn, frame)
        await self._dispatch_session(session, "RESUMED", {})

    async def _dispatch(self, t: str, d: Json) -> None:
        for session in list(self._sessions.values()):
            if session.resumable:
                await self._dispatch_session(session, t, d)
        self._notify()

    async def _dispatch_session(self, session: _Session, t: str, d: Json) -> None:
        session.seq += 1
        frame = {"op": 0, "t": t, "s": session.seq, "d": d}
        session.log.append(frame)
        del session.log[:-500]
        if session.conn is not None:
            await self._send(session.conn, frame)

    async def _send(self, conn: _Conn, frame: Json) -> None:
        data = json.dumps(frame)
        async with conn.lock:
            if conn.ws.closed:
                return  # the event stays in the session log for a RESUME
            try:
                if conn.compress is not None:
                    await conn.ws.send_bytes(conn.compress(data.encode()))
                else:
                    await conn.ws.send_str(data)
            except ConnectionError:
                pass  # peer vanished mid-send; the event stays in the session log

    # -- REST ------------------------------------------------------------------

    _ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("GET", re.compile(r"users/@me"), "_r_me"),
        ("GET", re.compile(r"oauth2/applications/@me"), "_r_app"),
        ("GET", re.compile(r"gateway"), "_r_gateway"),
        ("GET", re.compile(r"gateway/bot"), "_r_gateway_bot"),
        ("POST", re.compile(r"channels/(\d+)/messages"), "_r_send"),
        ("PATCH", re.compile(r"channels/(\d+)/messages/(\d+)"), "_r_edit"),
        ("POST", re.compile(r"channels/(\d+)/typing"), "_r_typing"),
        ("GET", re.compile(r"channels/(\d+)"), "_r_channel"),
        ("POST", re.compile(r"users/@me/channels"), "_r_open_dm"),
    ]

    async def _rest(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"].strip("/")
        body: Any = None
        files: list[tuple[str, str, bytes]] = []
        if request.content_type == "multipart/form-data":
            body, files = await self._multipart(request)
        elif request.can_read_body:
            raw = await request.read()
            with contextlib.suppress(ValueError):  # not JSON (e.g. multipart): kept as None
                body = json.loads(raw)
        record = RecordedRequest(request.method, "/" + tail, request.host, json=body)
        self.requests.append(record)
        response = await self._answer(request, tail, body, files)
        record.status = response.status
        self._notify()
        return response

    async def _multipart(self, request: web.Request) -> tuple[Any, list[tuple[str, str, bytes]]]:
        """``payload_json`` (the JSON body) and the ``files[n]`` parts, in order."""
        body: Any = None
        files: list[tuple[str, str, bytes]] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            data = await part.read()
            if part.name == "payload_json":
                body = json.loads(data)
            elif part.name and re.fullmatch(r"files\[\d+\]", part.name):
                mime = part.headers.get("Content-Type", "application/octet-stream")
                files.append((part.filename or "", mime, bytes(data)))
        return body, files

    async def _answer(
        self, request: web.Request, tail: str, body: Any, files: list[tuple[str, str, bytes]]
    ) -> web.Response:
        if request.match_info["version"] not in ("v9", "v10"):
            return self._json({"message": "404: Not Found", "code": 0}, 404)
        for method, pattern, name in self._ROUTES:
            match = pattern.fullmatch(tail)
            if match and request.method == method:
                handler = name
                break
        else:
            return self._json({"message": "404: Not Found", "code": 0}, 404)
        if tail != "gateway":  # GET /gateway needs no token
            auth = request.headers.get("Authorization", "")
            if auth != f"Bot {self.token}" or self._revoked:
                return self._json({"message": "401: Unauthorized", "code": 0}, 401)
        is_message = handler == "_r_send"
        for switches in (self._rate_limits, self._failures):
            if switches and (switches[0][-1] == "any" or is_message):
                item = switches.pop(0)
                if switches is self._rate_limits:
                    return self._rate_limited(item[0], item[1])
                return self._json({"message": "Service Unavailable", "code": 0}, int(item[0]))
        if is_message:
            result: web.Response = await self._r_send(body, match.group(1), files)
        else:
            result = await getattr(self, handler)(body, *match.groups())
        if is_message and self._cut_off:
            self._cut_off -= 1  # carried out (the message exists), but never answered
            if request.transport is not None:
                request.transport.close()
        return result

    def _json(
        self, data: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        hdrs = {"Content-Type": "application/json"}  # exactly this: discord.py compares it
        hdrs.update(headers or {})
        return web.Response(status=status, body=json.dumps(data).encode(), headers=hdrs)

    def _ratelimit_headers(self, remaining: int, reset_after: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": "fakebucket0000000000000000000000",
        }

    def _rate_limited(self, retry_after: float, global_: bool) -> web.Response:
        headers = self._ratelimit_headers(0, retry_after)
        headers["Retry-After"] = str(math.ceil(retry_after))
        headers["X-RateLimit-Scope"] = "global" if global_ else "user"
        headers["Via"] = "1.1 google"
        if global_:
            headers["X-RateLimit-Global"] = "true"
        return self._json(
            {
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": global_,
                "code": 0,
            },
            429,
            headers,
        )

    async def _r_me(self, body: Any) -> web.Response:
        return self._json(self._bot_user())

    async def _r_app(self, body: Any) -> web.Response:
        flags = GATEWAY_MESSAGE_CONTENT_LIMITED if self.message_content_allowed else 0
        return self._json(
            {
                "id": self.application_id,
                "name": self.bot_name,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self._user(self.snowflake(), "owner"),
                "verify_key": "0" * 64,
                "flags": flags,
                "team": None,
                "summary": "",
            }
        )

    async def _r_gateway(self, body: Any) -> web.Response:
        return self._json({"url": self.gateway_url})

    async def _r_gateway_bot(self, body: Any) -> web.Response:
        return self._json(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _r_channel(self, body: Any, channel_id: str) -> web.Response:
        channel = self._channels.get(channel_id)
        if channel is None:
            return self._json({"message": "Unknown Channel", "code": 10003}, 404)
        return self._json(channel, headers=self._ratelimit_headers(4, 1.0))

    async def _r_open_dm(self, body: Any) -> web.Response:
        cid = self.dm_channel_for(str((body or {}).get("recipient_id")))
        return self._json(self._channels[cid])

    async def _r_typing(self, body: Any, channel_id: str) -> web.Response:
        if channel_id not in self._channels:
            return self._json({"message": "Unknown Channel", "code": 10003}, 404)
        self.typing.append(channel_id)
        return web.Response(status=204, headers=self._ratelimit_headers(4, 5.0))

    async def _r_edit(self, body: Any, channel_id: str, message_id: str) -> web.Response:
        """``PATCH`` a message: 5 edits per 5 s per channel, else 429 with ``retry_after``."""
        target = next((m for m in self.sent if m.channel_id == channel_id and m.id == message_id),
                      None)  # fmt: skip
        if target is None:
            return self._json({"message": "Unknown Message", "code": 10008}, 404)
        content = (body or {}).get("content") or ""
        if not isinstance(content, str) or len(content) > 2000:
            return self._json({"message": "Invalid Form Body", "code": 50035}, 400)
        if not content:
            return self._json({"message": "Cannot send an empty message", "code": 50006}, 400)
        now = time.monotonic()
        count, window = self.edit_window
        recent = [at for (ch, _, _, at) in self.edits if ch == channel_id and now - at < window]
        if len(recent) >= count:
            self.edits_refused += 1
            return self._rate_limited(round(window - (now - recent[-count]), 3), False)
        target.text = content
        self.edits.append((channel_id, message_id, content, now))
        guild = "guild_id" in self._channels.get(channel_id, {})
        msg = self._message_json(channel_id, self._bot_user(), content, guild=guild)
        msg["id"] = message_id
        return self._json(msg, headers=self._ratelimit_headers(count - len(recent) - 1, window))

    async def _r_send(
        self, body: Any, channel_id: str, files: list[tuple[str, str, bytes]] | None = None
    ) -> web.Response:
        channel = self._channels.get(channel_id)
        if channel is None:
            return self._json({"message": "Unknown Channel", "code": 10003}, 404)
        if channel_id in self._forbidden:
            return self._json({"message": "Missing Permissions", "code": 50013}, 403)
        content = (body or {}).get("content") or ""
        if not isinstance(content, str) or len(content) > 2000:
            return self._json(
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {
                        "content": {
                            "_errors": [
                                {
                                    "code": "BASE_TYPE_MAX_LENGTH",
                                    "message": "Must be 2000 or fewer in length.",
                                }
                            ]
                        }
                    },
                },
                400,
            )
        files = files or []
        declared = (body or {}).get("attachments") or []
        if len(declared) != len(files):
            return self._json({"message": "Invalid Form Body", "code": 50035}, 400)
        if sum(len(f[2]) for f in files) > 10 * 1024 * 1024:
            return self._json({"message": "Request entity too large", "code": 40005}, 413)
        if not content and not (body or {}).get("embeds") and not files:
            return self._json({"message": "Cannot send an empty message", "code": 50006}, 400)
        guild = "guild_id" in channel
        msg = self._message_json(channel_id, self._bot_user(), content, guild=guild)
        msg["attachments"] = [self._attachment_json(channel_id, n, d, m) for n, m, d in files]
        for name, mime, data in files:
            self.sent_files.append(SentFile(msg["id"], channel_id, name, mime, data, content))
        if channel["type"] in THREAD_TYPES:
            chat_id, thread_id = channel["parent_id"], channel_id
        else:
            chat_id, thread_id = channel_id, ""
        self.sent.append(SentMessage(msg["id"], channel_id, chat_id, thread_id, content, body))
        if self.echo_own_messages:
            await self._dispatch("MESSAGE_CREATE", msg)
        return self._json(msg, headers=self._ratelimit_headers(4, 1.0))
