"""Slack adapter: slack-bolt's ``AsyncApp`` over Socket Mode (slack-sdk's aiohttp client),
or (``mode="http"``) the Events API on ``/webhooks/slack`` (:mod:`.slack_http`).

Credentials: ``SLACK_BOT_TOKEN`` (``xoxb-``) and ``SLACK_APP_TOKEN`` (``xapp-``),
read at construction. ``SLACK_API_BASE_URL`` (or ``base_url``) points the Web
API client, which the Socket Mode client shares, at another server (a proxy,
the tests' fake); the websocket URL always comes from ``apps.connections.open``.

Connection: ``start()`` calls ``auth.test`` (the bot's ids; bad tokens raise
``PlatformAuthError``), then ``apps.connections.open``, connects, and returns
once Slack says ``hello``. The SDK then keeps the socket alive by itself: it
follows Slack's ``disconnect`` (``refresh_requested``...) and reconnects after a
dropped or stale socket (pings every ``ping_interval`` s). When the socket
stays down for ``connect_timeout`` s the adapter reports ``ConnectionLost``;
the supervisor's restart then re-checks the tokens.

Events: ``message`` (``channel_type`` ``im`` -> ``"dm"``, else ``"group"``) and
``app_mention``. A channel mention arrives as both, with one ``ts``: both get
the message id ``"{channel}:{ts}"``, so the gate answers once. Edits, joins and
other subtypes are ignored; ``bot_message`` is kept (``from_bot``). Bolt acks
each envelope before the listener runs. Bolt's "ignore self events" is off: the
gate drops ``from_self``. Other events are Bolt's: add listeners on
``adapter.app`` (unhandled ones are logged by Bolt and not acked); your own
``message``/``app_mention`` listeners would never run (Bolt runs the first match).

Threads: in channels ``thread_id`` is ``thread_ts``, or the message's own ``ts``
when top-level, so the reply to a mention starts a thread; in DMs only thread
messages have one. A leading ``<@bot>`` mention is stripped (``@bot /whoami``
is a command) and ``&amp;``/``&lt;``/``&gt;`` unescaped; other markup stays.

Names: ``user_name`` from ``users.info``, ``chat_name`` from
``conversations.info`` (the user's name in a DM), cached per id until the next
``start()``; empty without the ``users:read``/``channels:read`` scopes.

Formatting: the Markdown is rendered to Slack mrkdwn by a real parser
(``onethread.platforms.markup.to_slack_mrkdwn``: ``*bold*``, ``_italic_``,
``<url|text>``, code blocks, tables as aligned text in a code block) and sent as
``text``, also in a ``section`` block when it fits one (3,000 characters).
``max_message_length`` is 12,000 (plain text could have 40,000). A refused
block (``invalid_blocks``) is resent as plain text: no blocks, ``mrkdwn=False``.
Streamed replies edit the draft with ``chat.update``.

Typing: Slack has no typing indicator for bots. In a thread the adapter sets
the assistant thread status (``assistant.threads.setStatus``, cleared by the
reply or after two minutes); where Slack refuses it the channel is remembered
and skipped.

Files: a ``file_share`` message's ``files`` (hosted ones; tombstoned or
hidden files have no bytes to fetch) become attachments by ``mimetype``;
a message of files only is answered. The bytes are fetched from
``url_private_download`` with the bot token as ``Authorization: Bearer``
(scope ``files:read``), only from ``files.slack.com`` or the host of
``base_url``, redirects not followed; Slack's sign-in page instead of the file
(a token without ``files:read``) raises ``PlatformAuthError``. Files go out
with slack-sdk's ``files_upload_v2`` (``files.getUploadURLExternal``, the
upload, ``files.completeUploadExternal``; scope ``files:write``), shared in
the chat and thread with the caption as ``initial_comment``;
``max_file_bytes`` is Slack's 1 GB.

Errors: see ``map_slack_errors``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackRequestError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

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
from .markup import to_slack_mrkdwn
from .slack_errors import map_slack_errors
from .slack_events import attachments_of, hosted_files, normalize_event
from .slack_files import FILE_HOSTS as FILE_HOSTS
from .slack_files import download_file
from .slack_http import SIGNING_SECRET_ENV, SlackEvents, finish

__all__ = ["SlackAdapter", "attachments_of", "hosted_files", "map_slack_errors", "normalize_event"]

log = logging.getLogger("onethread.platforms.slack")

DEFAULT_BASE_URL = "https://slack.com/api/"
_OPTIONS = ("token", "app_token", "base_url", "retry_policy", "ping_interval", "connect_timeout",
            "mode", "signing_secret")  # fmt: skip
_MODES = ("socket", "http")
_CACHE_MAX = 10_000
_TYPING_STATUS = "is typing..."


_SECTION_LIMIT = 3000


def _message_args(text: str, formatted: bool) -> dict[str, Any]:
    """``text`` (and a section block) for a formatted chunk; plain text otherwise."""
    if not formatted:
        return {"text": _escape(text), "mrkdwn": False}
    mrkdwn = to_slack_mrkdwn(text)
    args: dict[str, Any] = {"text": mrkdwn}
    if 0 < len(mrkdwn) <= _SECTION_LIMIT:
        args["blocks"] = [{"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}]
    return args


def _escape(text: str) -> str:
    """Slack's three control characters, escaped as its text fields require."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Token prefixes, from Slack's token types page
# (https://api.slack.com/authentication/token-types): bot tokens start with
# xoxb-, app-level tokens (the ones Socket Mode connects with) with xapp-, user
# tokens with xoxp-. slack-bolt's Socket Mode handlers document the xapp-
# prefix for their app_token too.
_TOKENS = {
    "token": ("SLACK_BOT_TOKEN", "xoxb-",
              "the Bot User OAuth Token (xoxb-..., under OAuth & Permissions)"),
    "app_token": ("SLACK_APP_TOKEN", "xapp-",
                  "an app-level token (xapp-..., under Basic Information > App-Level Tokens, "
                  "scope connections:write)"),
}  # fmt: skip
_KINDS = {"xoxb-": "a bot token", "xapp-": "an app-level token", "xoxp-": "a user token"}


def _shape_problem(token: str, where: str, option: str) -> str | None:
    _, prefix, source = _TOKENS[option]
    problem = whitespace_problem(token, where)
    if problem is not None or token.startswith(prefix):
        return problem
    kind = next((k for p, k in _KINDS.items() if token.startswith(p)), "")
    got = f"is {kind}" if kind else "does not start with " + repr(prefix)
    return f"{where} {got}; it needs {source}"


def _credential(value: str, env: str, option: str, prefix: str) -> str:
    """``value`` (else ``env`` read now), checked: ``ConfigError`` naming ``env`` if unusable."""
    token = value or os.environ.get(env, "")
    if not token:
        raise ConfigError(f"the slack platform needs {env} (or the {option!r} option)")
    problem = _shape_problem(token, f"{env} (the {option!r} option)", option)
    if problem is not None:
        raise ConfigError(problem)
    return token


def _base_url(value: str | None) -> str:
    url = value if value is not None else os.environ.get("SLACK_API_BASE_URL", "")
    url = url or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"SLACK_API_BASE_URL must be an http(s) URL, got {url!r}")
    return url if url.endswith("/") else url + "/"  # slack-sdk joins method names onto it


class SlackAdapter(Adapter):
    """Slack via slack-bolt in Socket Mode (see the module docstring for behaviour).

    Options: ``token`` (``SLACK_BOT_TOKEN``), ``app_token``
    (``SLACK_APP_TOKEN``), ``base_url`` (``SLACK_API_BASE_URL``),
    ``retry_policy``, ``ping_interval`` (seconds between Socket Mode pings,
    default 10) and ``connect_timeout`` (how long ``start()`` waits for
    ``hello`` and how long the socket may stay down before a failure is
    reported, default 30). Raises ``ConfigError`` for unknown options; missing
    or malformed tokens raise it from ``start()`` (the variables are read
    again there), never at construction. ``app`` is the Bolt app, ``web`` its
    Web API client.
    """

    name: ClassVar[str] = "slack"
    max_message_length: ClassVar[int] = 12_000  # markdown blocks; plain text allows 40,000
    max_file_bytes: ClassVar[int] = 1_000_000_000  # Slack takes files up to 1 GB
    typing_interval: ClassVar[float] = 60.0  # the thread status lasts two minutes

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The tokens' shapes: ``token`` starts with ``xoxb-``, ``app_token`` with ``xapp-``
        (Socket Mode only); a known ``mode``; a signing secret without spaces."""
        problems = []
        mode = options.get("mode", "socket")
        if mode not in _MODES:
            return [("mode", f"must be socket or http, got {mode!r}")]
        if mode == "http":
            secret, where = credential_in(options, env, "signing_secret", SIGNING_SECRET_ENV)
            problem = whitespace_problem(secret, where) if secret else None
            if problem is not None:
                problems.append(("signing_secret", problem))
        for option, (variable, _, _) in _TOKENS.items():
            if option == "app_token" and mode == "http":
                continue
            token, where = credential_in(options, env, option, variable)
            problem = _shape_problem(token, where, option) if token else None
            if problem is not None:
                problems.append((option, problem))
        return problems

    def __init__(
        self,
        *,
        token: str | None = None,
        app_token: str | None = None,
        base_url: str | None = None,
        retry_policy: RetryPolicy | None = None,
        ping_interval: float = 10.0,
        connect_timeout: float = 30.0,
        mode: str = "socket",
        signing_secret: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"unknown option(s) for the slack platform: {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(_OPTIONS)}"
            )
        if ping_interval <= 0 or connect_timeout <= 0:
            raise ConfigError("slack: ping_interval and connect_timeout must be positive")
        if mode not in _MODES:
            raise ConfigError(f"slack mode must be 'socket' or 'http', got {mode!r}")
        super().__init__(retry_policy=retry_policy)
        self.mode = mode
        self.uses_http = mode == "http"
        self._signing_secret = (
            signing_secret if signing_secret is not None else os.environ.get(SIGNING_SECRET_ENV, "")
        )
        self.events: SlackEvents | None = None
        """The ``/webhooks/slack`` endpoint while started in http mode."""
        self._serving: Ingress | None = None
        # Read now, checked by start() (which reads an unset variable again).
        self._token = token if token is not None else os.environ.get("SLACK_BOT_TOKEN", "")
        self._app_token = (
            app_token if app_token is not None else os.environ.get("SLACK_APP_TOKEN", "")
        )
        self.base_url = _base_url(base_url)
        self.ping_interval = float(ping_interval)
        self.connect_timeout = float(connect_timeout)
        # No SDK-level retries: its default retries a timed-out or cut-off call once
        # (ServerTimeoutError, ServerDisconnectedError), which can post a message
        # twice. Retrying is send()'s job, and only for what certainly did not arrive.
        self.web = AsyncWebClient(base_url=self.base_url, retry_handlers=[])
        self.app = AsyncApp(
            client=self.web,
            name="onethread",
            # Our auth.test result authorizes every event: Bolt's own would call
            # auth.test again and drop events while it fails.
            authorize=self._bolt_authorize(),
            # Socket Mode has no HTTP signatures; in http mode SlackEvents verifies
            # each request (with slack-sdk's SignatureVerifier) before Bolt sees it.
            request_verification_enabled=False,
            ssl_check_enabled=False,
            ignoring_self_events_enabled=False,  # the gate, not the adapter, filters
        )
        self.web.token = self._token or None  # after AsyncApp() so Bolt uses authorize alone
        self.app.event("message")(self._on_event)
        self.app.event("app_mention")(self._on_event)
        self.bot_user_id = ""
        self.bot_id = ""
        self.bot_name = ""
        self.team_id = ""
        self._handler: AsyncSocketModeHandler | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._listeners: set[asyncio.Task[Any]] = set()
        self._on_inbound: OnInbound | None = None
        self._user_names: dict[str, str] = {}
        self._chat_names: dict[str, str] = {}
        self._no_status: set[str] = set()

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Check the tokens, open the Socket Mode connection, return after Slack's ``hello``.

        Raises ``ConfigError`` for a missing or malformed token,
        ``PlatformAuthError`` for a bad or revoked one, ``PlatformUnavailable``
        when Slack cannot be reached or says no ``hello`` within
        ``connect_timeout``.
        """
        if self._handler is not None or self.events is not None:
            raise RuntimeError("the slack adapter is already started; stop() it first")
        self._token = _credential(self._token, "SLACK_BOT_TOKEN", "token", "xoxb-")
        if self.mode == "http":
            await self._start_http(on_inbound)
            return
        self._app_token = _credential(self._app_token, "SLACK_APP_TOKEN", "app_token", "xapp-")
        await self._auth_test()
        # Opened here rather than by the SDK, whose connect() retries every error forever.
        with map_slack_errors("apps.connections.open"):
            opened = await self.web.apps_connections_open(app_token=self._app_token)
        self._user_names.clear()
        self._chat_names.clear()
        self._no_status.clear()
        self._on_inbound = on_inbound
        hello = asyncio.Event()

        async def on_socket_message(
            _client: AsyncBaseSocketModeClient, message: dict[str, Any], _raw: str | None
        ) -> None:
            if message.get("type") == "hello":
                hello.set()

        handler = AsyncSocketModeHandler(
            self.app, app_token=self._app_token, ping_interval=self.ping_interval
        )
        self._handler = handler
        handler.client.wss_uri = str(opened["url"])
        handler.client.message_listeners.append(on_socket_message)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await handler.client.connect()  # type: ignore[no-untyped-call]
                await hello.wait()
        except TimeoutError as exc:
            await self.stop()
            raise PlatformUnavailable(
                f"no Socket Mode hello within {self.connect_timeout:g}s", platform="slack"
            ) from exc
        except BaseException:
            await self.stop()
            raise
        self._watchdog = asyncio.create_task(self._watch(handler.client))
        log.info("slack: connected as %s (%s)", self.bot_name, self.bot_user_id)

    async def _auth_test(self) -> None:
        self.web.token = self._token
        with map_slack_errors("auth.test"):
            auth = await self.web.auth_test()
        self.bot_user_id = str(auth.get("user_id") or "")
        self.bot_id = str(auth.get("bot_id") or "")
        self.bot_name = str(auth.get("user") or "")
        self.team_id = str(auth.get("team_id") or "")

    async def _start_http(self, on_inbound: OnInbound) -> None:
        """Check the token, mount ``/webhooks/slack`` and serve (see :mod:`.slack_http`)."""
        self._signing_secret = self._signing_secret or os.environ.get(SIGNING_SECRET_ENV, "")
        if not self._signing_secret:
            raise ConfigError(
                f"slack mode: http needs the app's signing secret: set {SIGNING_SECRET_ENV} "
                "(Basic Information > App Credentials) or the 'signing_secret' option"
            )
        ingress = self.ingress
        if ingress is None:
            raise ConfigError(
                "slack mode: http needs the HTTP server: serve it with BotOS or "
                "`onethread run` (or pass ingress=Ingress(...) to the Bot)"
            )
        await self._auth_test()
        self._user_names.clear()
        self._chat_names.clear()
        self._no_status.clear()
        self._on_inbound = on_inbound
        events = SlackEvents(self.app, self._signing_secret)
        ingress.mount_webhook("slack", events)
        self.events = events
        try:
            await ingress.acquire()
        except BaseException:
            await self.stop()
            raise
        self._serving = ingress
        url = ingress.webhook_url("slack") or ingress.url + "webhooks/slack"
        log.info("slack: Events API as %s (%s); Request URL: %s", self.bot_name,
                 self.bot_user_id, url)  # fmt: skip

    async def stop(self) -> None:
        """Close the socket, its session and tasks, and running listeners (in http mode:
        unmount the endpoint and let running listeners finish first). Idempotent."""
        events, self.events = self.events, None
        serving, self._serving = self._serving, None
        if events is not None:
            if self.ingress is not None:
                self.ingress.unmount_webhook("slack", events)
            await finish(self._listeners, timeout=10.0)
        if serving is not None:
            await serving.release()
        handler, self._handler = self._handler, None
        watchdog, self._watchdog = self._watchdog, None
        self._on_inbound = None
        tasks: list[asyncio.Future[Any]] = [*self._listeners]
        if watchdog is not None:
            tasks.append(watchdog)
        if handler is not None:
            client = handler.client
            try:
                await asyncio.wait_for(client.close(), 3.0)  # type: ignore[no-untyped-call]
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                log.warning("slack: closing the socket failed: %r", exc)
            # close() cancels the SDK's tasks without waiting for them; wait here.
            sdk_tasks = (client.message_processor, client.current_session_monitor,
                         client.message_receiver)  # fmt: skip
            tasks += [t for t in sdk_tasks if t is not None]
            if not client.aiohttp_client_session.closed:
                await client.aiohttp_client_session.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def _watch(self, client: SocketModeClient) -> None:
        """Report ``ConnectionLost`` when the SDK's own reconnects fail for ``connect_timeout``."""
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        while True:
            await asyncio.sleep(min(1.0, self.ping_interval))
            if await client.is_connected():
                down_since = None
                continue
            now = loop.time()
            if down_since is None:
                down_since = now
                log.info("slack: Socket Mode connection down; the SDK is reconnecting")
            elif now - down_since >= self.connect_timeout:
                self.report_failure(
                    ConnectionLost(
                        f"Socket Mode down for {self.connect_timeout:g}s", platform="slack"
                    )
                )
                return

    # -- inbound ---------------------------------------------------------------

    def _bolt_authorize(self) -> Callable[..., Awaitable[AuthorizeResult]]:
        """Bolt's ``authorize``: the bot token and the ids learned by ``start()``."""

        # A plain function: Bolt passes arguments by the names in the signature.
        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            return AuthorizeResult(
                enterprise_id=enterprise_id,
                team_id=team_id or self.team_id,
                bot_token=self._token,
                bot_id=self.bot_id,
                bot_user_id=self.bot_user_id,
            )

        return authorize

    async def _on_event(self, event: dict[str, Any]) -> None:
        """Bolt listener (run after the ack) for ``message`` and ``app_mention``."""
        task = asyncio.current_task()
        if task is not None:
            self._listeners.add(task)
            task.add_done_callback(self._listeners.discard)
        on_inbound = self._on_inbound
        inbound = normalize_event(event, bot_user_id=self.bot_user_id, bot_id=self.bot_id)
        if inbound is None or on_inbound is None:
            return
        user_name = inbound.user_name or await self._user_name(inbound.user_id)
        if inbound.chat_type == "dm":
            chat_name = user_name
        else:
            chat_name = await self._chat_name(inbound.chat_id)
        await on_inbound(dataclasses.replace(inbound, user_name=user_name, chat_name=chat_name))

    async def _user_name(self, user_id: str) -> str:
        if not user_id.startswith(("U", "W")):
            return ""

        def pick(resp: AsyncSlackResponse) -> str:
            user = resp.get("user") or {}
            profile = user.get("profile") or {}
            return str(profile.get("display_name") or user.get("real_name") or user.get("name"))

        return await self._lookup(
            self._user_names, user_id, lambda: self.web.users_info(user=user_id), pick
        )

    async def _chat_name(self, channel_id: str) -> str:
        def pick(resp: AsyncSlackResponse) -> str:
            return str((resp.get("channel") or {}).get("name") or "")

        return await self._lookup(
            self._chat_names,
            channel_id,
            lambda: self.web.conversations_info(channel=channel_id),
            pick,
        )

    async def _lookup(
        self,
        cache: dict[str, str],
        key: str,
        call: Callable[[], Awaitable[AsyncSlackResponse]],
        pick: Callable[[AsyncSlackResponse], str],
    ) -> str:
        if key in cache:
            return cache[key]
        try:
            with map_slack_errors(f"name of {key}"):
                name = pick(await call())
        except (RetryAfter, PlatformUnavailable) as exc:  # OutcomeUnknown too: a timeout
            log.debug("slack: name lookup failed for now: %s", exc)
            return ""  # transient: ask again next time
        except PlatformError as exc:
            log.debug("slack: name lookup refused: %s", exc)
            name = ""  # e.g. a missing users:read scope: do not ask again
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = name
        return name

    # -- outbound --------------------------------------------------------------

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Post one chunk (a markdown block, or plain text) and return ``"{channel}:{ts}"``."""
        args = _message_args(text, formatted)
        args["channel"] = chat_id
        if thread_id:
            args["thread_ts"] = thread_id
        with map_slack_errors(f"chat.postMessage to {chat_id}"):
            resp = await self.web.chat_postMessage(**args)
        return f"{resp.get('channel') or chat_id}:{resp['ts']}"

    def measure(self, markdown: str) -> int:
        """Length of the mrkdwn sent."""
        return len(to_slack_mrkdwn(markdown))

    async def do_edit(
        self, chat_id: str, message_id: str, text: str, thread_id: str = "", *,
        formatted: bool = True,
    ) -> None:  # fmt: skip
        """``chat.update`` a posted message (``message_id`` is ``channel:ts``)."""
        channel, _, ts = message_id.rpartition(":")
        args = _message_args(text, formatted)
        with map_slack_errors(f"chat.update in {chat_id}"):
            await self.web.chat_update(channel=channel or chat_id, ts=ts, **args)

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """Set the assistant thread status in a thread; nothing outside threads."""
        if not thread_id or chat_id in self._no_status:
            return
        try:
            with map_slack_errors("assistant.threads.setStatus"):
                await self.web.assistant_threads_setStatus(
                    channel_id=chat_id, thread_ts=thread_id, status=_TYPING_STATUS
                )
        except (BadRequest, PlatformAuthError) as exc:
            log.debug("slack: no typing status in %s: %s", chat_id, exc)
            self._no_status.add(chat_id)

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """Upload with ``files_upload_v2`` and share in the chat (and thread);
        return ``"{channel}:{file_id}"`` (Slack posts the file message itself)."""
        name = attachment.name or attachment.kind
        args: dict[str, Any] = {"channel": chat_id, "file": data, "filename": name, "title": name}
        if attachment.caption:
            args["initial_comment"] = attachment.caption
        if thread_id:
            args["thread_ts"] = thread_id
        try:
            with map_slack_errors(f"file upload to {chat_id}"):
                resp = await self.web.files_upload_v2(**args)
        except SlackRequestError as exc:  # the upload step failed: nothing was shared
            raise PlatformUnavailable(f"file upload to {chat_id}: {exc}", platform="slack") from exc
        file_id = str((resp.get("file") or {}).get("id") or "")
        return f"{chat_id}:{file_id}"

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """GET ``url_private_download`` with the bot token (see the module docstring)."""
        if not isinstance(msg.raw, Mapping):
            raise BadRequest("this message carries no Slack file", platform="slack")
        item = hosted_files(msg.raw)[index]
        return await download_file(item, base_url=self.base_url, token=self._token)
