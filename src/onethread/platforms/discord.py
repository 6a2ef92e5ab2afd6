"""Discord adapter, on discord.py 2.x (REST + Gateway).

Credentials: ``token`` or ``DISCORD_BOT_TOKEN``. Endpoints: ``base_url`` or
``DISCORD_API_BASE_URL`` (the REST root, e.g. ``http://127.0.0.1:PORT/api/v10``)
and ``gateway_url`` or ``DISCORD_GATEWAY_URL`` (``ws://127.0.0.1:PORT/gateway``).
With only the REST root overridden, the gateway URL is asked from that endpoint
(``GET /gateway/bot``). The overrides are per client: this module never touches
discord.py's process-wide ``Route.BASE`` or ``DiscordWebSocket.DEFAULT_GATEWAY``;
a small ``HTTPClient`` subclass rewrites the URLs of its own requests, so several
adapters in one process may talk to different endpoints.

Behaviour a caller should know:

- ``start()`` logs in (``GET /users/@me``; a refused token raises
  ``PlatformAuthError``) and returns once the gateway sent READY. The gateway
  task then belongs to discord.py, which reconnects by itself (RESUME, or a new
  IDENTIFY) after drops, RECONNECT and invalid sessions, with its own backoff.
  Only a close it cannot recover from (bad token 4004, disallowed intents 4014,
  other fatal codes) ends the task; that is reported with ``report_failure``.
- The client asks for the privileged Message Content intent. If the developer
  portal does not grant it, the gateway refuses the IDENTIFY and ``start()``
  raises ``PlatformAuthError`` saying how to enable it; messages that arrive with
  their content withheld log the same advice once.
- Rate limits: discord.py waits out 429s itself (per bucket, up to 5 tries per
  request) and retries 500/502/504 itself. What still fails reaches
  ``map_discord_errors``: ``RetryAfter`` (``retry_after`` from the 429 body),
  ``PlatformUnavailable`` (5xx, no connection), ``OutcomeUnknown`` (a timeout
  or a connection lost mid-call: the message may be posted, so a send is not
  retried; discord.py itself does not retry these on Linux), ``BadRequest`` (403 missing
  permission, 404, 400), ``PlatformAuthError`` (401). Waits longer than the
  retry policy's ``max_delay`` (at least 30 s, discord.py's floor) are not slept
  by discord.py but raised as ``RetryAfter``.
- Discord renders Markdown on the client and never rejects it, so
  ``FormattingRejected`` is never raised; ``formatted=False`` sends the text
  with Markdown escaped.
- Chats: a DM is ``"dm"``; a guild text, voice or forum channel is ``"group"``;
  an announcement channel is ``"channel"``. A message in a thread has
  ``chat_id`` = the parent channel and ``thread_id`` = the thread; replies go
  into the thread.
- Attachments: ``message.attachments`` become ``Attachment``s by their
  ``content_type`` (a voice message, flagged ``IS_VOICE_MESSAGE``, is a
  ``"voice"``); a message of attachments only is answered. Their bytes are
  fetched with discord.py's ``Attachment.read()`` from the CDN URL Discord
  gave, and only from Discord's CDN hosts or the host of ``base_url``.
  Files go out as a ``discord.File`` in a multipart ``POST .../messages``;
  ``max_file_bytes`` is 10 MiB, Discord's limit for a bot in a server without
  boosts (discord.py 2.7's ``utils.DEFAULT_FILE_SIZE_LIMIT_BYTES``, the
  tier 0 and 1 ``Guild.filesize_limit``); a larger file is named, not sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route

from ..errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    PlatformError,
    PlatformUnavailable,
)
from ..session.attachments import Attachment
from .base import Adapter, Inbound, OnInbound, credential_in, whitespace_problem
from .delivery import RetryPolicy
from .discord_errors import INTENT_HELP, PLATFORM, map_discord_errors
from .discord_events import TEXT_TYPES, attachments_of, normalize_message
from .markup import to_discord

__all__ = ["DiscordAdapter", "attachments_of", "map_discord_errors", "normalize_message"]

log = logging.getLogger("onethread.platforms.discord")

TOKEN_ENV = "DISCORD_BOT_TOKEN"
# A bot token is three base64url parts joined by dots: the bot's user id (a
# snowflake, in decimal digits, base64url-encoded), a timestamp, and an HMAC.
# Discord does not document the layout; the libraries that check it locally
# agree on it (serenity's utils::token::validate, nostrum's Token.check_token!).
TOKEN_SHAPE = re.compile(r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _encodes_an_id(part: str) -> bool:
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return False
    return decoded.isdigit()


API_ENV = "DISCORD_API_BASE_URL"
GATEWAY_ENV = "DISCORD_GATEWAY_URL"
_OPTIONS = ("token", "base_url", "gateway_url", "start_timeout", "retry_policy")
_ALLOWED_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=True)
# Where attachment bytes may be fetched from (besides the host of base_url).
CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})


class _EndpointHTTPClient(HTTPClient):
    """discord.py's HTTP client, pointed at another REST root and gateway (per client)."""

    def __init__(
        self,
        loop: Any,
        *,
        api_base: str | None,
        gateway_url: str | None,
        max_ratelimit_timeout: float | None,
    ) -> None:
        super().__init__(loop, max_ratelimit_timeout=max_ratelimit_timeout)
        self.api_base = api_base.rstrip("/") if api_base else None
        self.gateway_url = gateway_url

    async def request(self, route: Route, **kwargs: Any) -> Any:
        """Send ``route``, rewritten from discord.com to ``api_base`` when one is set."""
        if self.api_base is not None and route.url.startswith(Route.BASE):
            route.url = self.api_base + route.url[len(Route.BASE) :]
        return await super().request(route, **kwargs)

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        """Open the gateway socket, at ``gateway_url`` instead of Discord's default one."""
        target = yarl.URL(url)
        if self.gateway_url is not None and target.host == DiscordWebSocket.DEFAULT_GATEWAY.host:
            url = str(yarl.URL(self.gateway_url).with_query(target.query))
        return await super().ws_connect(url, compress=compress)


def _no_voice_warnings() -> None:
    """discord.py warns once per process, at the first Client, that PyNaCl (and davey)
    are missing so "voice will NOT be supported". onethread sends no voice over
    Discord: mark the warnings as given. (Class flags, absent in older versions.)"""
    for flag in ("warn_nacl", "warn_dave"):
        if getattr(discord.VoiceClient, flag, False):
            setattr(discord.VoiceClient, flag, False)


class _Client(discord.Client):
    """A discord.Client wired to one adapter, with the per-client endpoint override."""

    http: _EndpointHTTPClient

    def __init__(self, adapter: DiscordAdapter, intents: discord.Intents) -> None:
        timeout = adapter.retry_policy.max_delay
        _no_voice_warnings()
        super().__init__(intents=intents, max_ratelimit_timeout=timeout)
        self.http = _EndpointHTTPClient(
            self.loop,
            api_base=adapter.base_url,
            gateway_url=adapter.gateway_url,
            max_ratelimit_timeout=timeout,
        )
        self._connection.http = self.http
        self.adapter = adapter
        self.connected = asyncio.Event()

    async def on_connect(self) -> None:
        """READY arrived: the session is up."""
        self.connected.set()

    async def on_resumed(self) -> None:
        """A dropped session was resumed by discord.py."""
        log.info("discord: gateway session resumed")

    async def on_message(self, message: discord.Message) -> None:
        """Hand every message to the adapter."""
        await self.adapter._handle(message)


class DiscordAdapter(Adapter):
    """The Discord platform (discord.py), see the module docstring.

    Options: ``token`` (else ``DISCORD_BOT_TOKEN``), ``base_url`` (else
    ``DISCORD_API_BASE_URL``), ``gateway_url`` (else ``DISCORD_GATEWAY_URL``),
    ``start_timeout`` (seconds to wait for READY, default 30), ``retry_policy``.
    Unknown options raise ``ConfigError``; a missing token raises it from
    ``start()`` (the variable is read again there), never at construction.
    """

    name: ClassVar[str] = PLATFORM
    max_message_length: ClassVar[int] = 2000
    # A bot in a server without boosts (tier 0 and 1) and in DMs: 10 MiB
    # (discord.py 2.7: utils.DEFAULT_FILE_SIZE_LIMIT_BYTES, Guild.filesize_limit).
    max_file_bytes: ClassVar[int] = 10 * 1024 * 1024
    typing_interval: ClassVar[float] = 8.0  # Discord shows "typing" for about 10 s

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The token's shape: three base64url parts, the first the bot's id (``TOKEN_SHAPE``)."""
        token, where = credential_in(options, env, "token", TOKEN_ENV)
        if not token:
            return []  # "not set" is the config check's own problem
        problem = whitespace_problem(token, where)
        if token.startswith(("Bot ", "Bearer ")):
            problem = f"{where} starts with {token.split()[0]!r}; give the token alone"
        elif problem is None:
            match = TOKEN_SHAPE.fullmatch(token)
            if match is None or not _encodes_an_id(match.group(1)):
                problem = (
                    f"{where} is not a Discord bot token, which is three parts joined by dots "
                    "(MTIz...NzY4.GxYz12.abc...); copy it again from the Developer Portal "
                    "(your application > Bot > Reset Token)"
                )
        return [("token", problem)] if problem else []

    def __init__(
        self,
        *,
        token: str | None = None,
        base_url: str | None = None,
        gateway_url: str | None = None,
        start_timeout: float = 30.0,
        retry_policy: RetryPolicy | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"unknown discord option(s): {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(_OPTIONS)}"
            )
        super().__init__(retry_policy=retry_policy)
        self._token = (os.environ.get(TOKEN_ENV, "") if token is None else token).strip()
        self.base_url = base_url or os.environ.get(API_ENV) or None
        self.gateway_url = gateway_url or os.environ.get(GATEWAY_ENV) or None
        self.start_timeout = start_timeout
        self._client: _Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_inbound: OnInbound | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._fetched: dict[int, object] = {}
        self._bot_id = 0
        self._started = False
        self._stopping = False
        self._content_warned = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Log in, open the gateway and return once READY arrived.

        Raises ``ConfigError`` when there is no token, ``PlatformAuthError``
        for a refused token or intent, ``PlatformUnavailable`` when Discord
        cannot be reached in ``start_timeout``.
        """
        if self._client is not None:
            raise RuntimeError("DiscordAdapter is already started; stop() it first")
        self._token = self._token or os.environ.get(TOKEN_ENV, "").strip()
        if not self._token:
            raise ConfigError(f"discord needs a bot token: set {TOKEN_ENV} (or pass token=...)")
        self._on_inbound = on_inbound
        self._started = self._stopping = False
        intents = discord.Intents.default()
        intents.message_content = True
        client = self._client = _Client(self, intents)
        try:
            async with map_discord_errors():
                await client.login(self._token)
                if self.base_url is not None and self.gateway_url is None:
                    _, url, _ = await client.http.get_bot_gateway()
                    client.http.gateway_url = url
            flags = client.application_flags
            if not (flags.gateway_message_content or flags.gateway_message_content_limited):
                log.warning("discord: the Message Content intent looks disabled; %s", INTENT_HELP)
            assert client.user is not None  # set by login()
            self._bot_id = client.user.id
            self._task = asyncio.create_task(self._run(client), name="onethread-discord-gateway")
            await self._wait_connected(client, self._task)
        except BaseException:
            await self._shutdown()
            raise
        self._started = True
        log.info("discord: connected as %s (%s)", client.user, self._bot_id)

    async def _wait_connected(self, client: _Client, task: asyncio.Task[None]) -> None:
        connected = asyncio.ensure_future(client.connected.wait())
        try:
            await asyncio.wait(
                {connected, task}, timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            connected.cancel()
        if task.done():
            task.result()  # raises the mapped error of a connect that failed (even after READY)
        if client.connected.is_set():
            return
        raise PlatformUnavailable(
            f"no READY from the gateway within {self.start_timeout:g}s", platform=PLATFORM
        )

    async def _run(self, client: _Client) -> None:
        """The gateway loop; discord.py reconnects inside it, we report what ends it."""
        failure: PlatformError
        try:
            async with map_discord_errors():
                await client.connect(reconnect=True)
            failure = ConnectionLost("the gateway connection ended", platform=PLATFORM)
        except PlatformError as exc:
            failure = exc
        except Exception as exc:  # an SDK bug must still reach the supervisor
            log.exception("discord: the gateway task crashed")
            failure = ConnectionLost(f"the gateway task crashed: {exc!r}", platform=PLATFORM)
            failure.__cause__ = exc
        if self._stopping:
            return
        if not self._started:
            raise failure  # start() is waiting and raises it
        log.error("discord: gateway connection failed: %s", failure)
        self.report_failure(failure)

    async def stop(self) -> None:
        """Close the gateway, the HTTP session and every task; idempotent, returns in < 5 s."""
        self._stopping = True
        await self._shutdown()

    async def _shutdown(self) -> None:
        client, task, inflight = self._client, self._task, list(self._inflight)
        self._client, self._task, self._started = None, None, False
        self._stopping = True
        for handler in inflight:
            handler.cancel()
        pending: set[asyncio.Task[Any]] = set(inflight)
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), timeout=3.0)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("discord: closing the client failed: %r", exc)
            # discord.py leaves its "wait for guilds, then on_ready" task running.
            ready_task = getattr(client._connection, "_ready_task", None)
            if isinstance(ready_task, asyncio.Task):
                ready_task.cancel()
                pending.add(ready_task)
        if task is not None:
            task.cancel()
            pending.add(task)
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if task is not None and task.done() and not task.cancelled() and task.exception():
            log.debug("discord: gateway task ended with %r", task.exception())

    # -- inbound ---------------------------------------------------------------

    async def _handle(self, message: discord.Message) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            channel: object = message.channel
            if isinstance(channel, discord.PartialMessageable) and channel.guild_id is not None:
                channel = await self._resolve_channel(channel)
            self._warn_if_content_withheld(message)
            inbound = normalize_message(message, bot_id=self._bot_id, channel=channel)
            if inbound is not None and self._on_inbound is not None:
                await self._on_inbound(inbound)
        except Exception:  # one bad message must not take the gateway down
            log.exception("discord: handling message %s failed", message.id)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _resolve_channel(self, channel: discord.PartialMessageable) -> object:
        """Fetch an uncached guild channel (is it a thread?); the partial one on failure."""
        client = self._client
        if channel.id in self._fetched or client is None:
            return self._fetched.get(channel.id, channel)
        try:
            async with map_discord_errors():
                fetched: object = await client.fetch_channel(channel.id)
        except PlatformError as exc:
            log.warning("discord: could not fetch channel %s: %s", channel.id, exc)
            return channel
        if len(self._fetched) >= 1024:  # discord.py does not cache fetched channels; we do, bounded
            self._fetched.clear()
        self._fetched[channel.id] = fetched
        return fetched

    def _warn_if_content_withheld(self, message: discord.Message) -> None:
        if self._content_warned or message.guild is None or message.author.id == self._bot_id:
            return
        if message.type not in TEXT_TYPES or message.content:
            return
        if message.attachments or message.embeds or message.stickers or message.poll:
            return
        self._content_warned = True
        log.warning(
            "discord: a message arrived with empty content; Discord withholds message text "
            "without the Message Content intent: %s",
            INTENT_HELP,
        )

    # -- outbound --------------------------------------------------------------

    def _target(self, chat_id: str, thread_id: str) -> tuple[_Client, int]:
        client = self._client
        if client is None or client.is_closed():
            raise ConnectionLost("the adapter is not started or lost its client", platform=PLATFORM)
        try:
            return client, int(thread_id or chat_id)
        except ValueError as exc:
            raise BadRequest(
                f"not a Discord channel id: {thread_id or chat_id!r}", platform=PLATFORM
            ) from exc

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Post ``text`` to the channel (or to thread ``thread_id``); return the message id."""
        client, target = self._target(chat_id, thread_id)
        content = to_discord(text) if formatted else text
        if not formatted:
            escaped = discord.utils.escape_markdown(text)
            content = escaped if len(escaped) <= self.max_message_length else text
        async with map_discord_errors():
            sent = await client.get_partial_messageable(target).send(
                content, allowed_mentions=_ALLOWED_MENTIONS
            )
        return str(sent.id)

    def measure(self, markdown: str) -> int:
        """Length of the content sent (tables become code blocks)."""
        return len(to_discord(markdown))

    async def do_edit(
        self, chat_id: str, message_id: str, text: str, thread_id: str = "", *,
        formatted: bool = True,
    ) -> None:  # fmt: skip
        """``PATCH`` a posted message's content (in the thread, when ``thread_id`` is set)."""
        client, target = self._target(chat_id, thread_id)
        content = to_discord(text) if formatted else discord.utils.escape_markdown(text)
        async with map_discord_errors():
            await (
                client.get_partial_messageable(target)
                .get_partial_message(int(message_id))
                .edit(
                    content=content[: self.max_message_length], allowed_mentions=_ALLOWED_MENTIONS
                )
            )

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """Show "bot is typing" in the channel or thread for about 10 seconds."""
        client, target = self._target(chat_id, thread_id)
        async with map_discord_errors():
            await client.http.send_typing(target)

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """Post ``data`` as a ``discord.File`` (multipart ``files[0]`` + ``payload_json``),
        with ``attachment.caption`` as the message text; return the message id."""
        client, target = self._target(chat_id, thread_id)
        upload = discord.File(io.BytesIO(data), filename=attachment.name or f"{attachment.kind}")
        async with map_discord_errors():
            sent = await client.get_partial_messageable(target).send(
                attachment.caption or None, file=upload, allowed_mentions=_ALLOWED_MENTIONS
            )
        return str(sent.id)

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """The bytes of attachment ``index``: ``Attachment.read()`` from its CDN URL.

        Only Discord's CDN hosts (``CDN_HOSTS``, over https) or the host of ``base_url``
        are asked; any other URL raises ``BadRequest`` unfetched.
        """
        if not isinstance(msg.raw, discord.Message):
            raise BadRequest("this message carries no Discord attachment", platform=PLATFORM)
        item = msg.raw.attachments[index]
        url = yarl.URL(item.url)
        cdn = url.host in CDN_HOSTS and url.scheme == "https"
        api = yarl.URL(self.base_url) if self.base_url is not None else None
        configured = api is not None and (url.host, url.scheme) == (api.host, api.scheme)
        if not (cdn or configured):
            raise BadRequest(
                f"attachment URL {url.scheme}://{url.host} is not Discord's CDN; not fetched",
                platform=PLATFORM,
            )
        async with map_discord_errors():
            return await item.read()
