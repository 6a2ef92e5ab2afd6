"""The one HTTP server of ``onethread run``: web chat, operations and webhooks.

An :class:`Ingress` owns ONE aiohttp application and runner on ``host:port``.
It serves ``GET /healthz`` itself, the routes that adapters and operations add
before it starts (the web chat's page and socket, ``/readyz``, ``/metrics``,
``/admin``), and ``/webhooks/<platform>`` for every webhook endpoint mounted
while it runs. ``BotOS`` builds one from ``http: {host, port, public_url}``
and hands it to every bot (``Bot.use_ingress``), so the adapter finds it as
``self.ingress`` in ``start()``. A bot built alone has none unless given
``ingress=Ingress(...)``; the web chat then makes its own.

Writing a webhook adapter (Telegram ``mode: webhook``, Slack ``mode: http``,
WhatsApp, the generic ``webhook`` platform)::

    class MyAdapter(Adapter):
        uses_http = True                       # BotOS starts the server for it

        async def start(self, on_inbound):
            ingress = self.ingress             # set by the Bot; None: refuse (ConfigError)
            self._on_inbound = on_inbound
            ingress.mount_webhook("my", self)  # now POST /webhooks/my reaches webhook_post
            await ingress.acquire()            # serving once this returns
            url = ingress.webhook_url("my")    # None without public_url: register nothing
            ...

        async def webhook_post(self, request, body: bytes) -> web.StreamResponse:
            if not my_signature_ok(request, body):            # FIRST, before parsing
                return refuse(request, "my", 401, "bad signature")  # logged without the body
            inbound = normalize(json.loads(body))
            self.tasks.spawn(self._on_inbound(inbound))       # the turn runs after...
            return web.Response(text="ok")                    # ...the 200 goes out now

        async def webhook_get(self, request) -> web.StreamResponse:   # optional
            ...                                               # e.g. a verify-token challenge

        async def stop(self):
            self.ingress.unmount_webhook("my", self)
            await self.tasks.close()           # finish (bounded), then cancel, the tasks
            await self.ingress.release()

What the ingress guarantees before ``webhook_post`` runs: the platform name is
mounted (else 404 with the list of mounted ones, or 503 for a name announced
with :meth:`Ingress.expect_webhook` whose adapter is not connected yet), the
method is POST (GET goes to ``webhook_get`` when the endpoint has one, else
405), and the body has at
most ``max_body_bytes`` (1 MB: a larger ``Content-Length`` is refused with 413
before a byte is read, a longer body while reading). ``body`` is the raw bytes,
as signed by the platform. What the endpoint must do: verify its own secret
before anything else and answer 401/403 through :func:`refuse` (one log line
with the path, the reason and the size, never the body, and nothing started);
answer a verified request at once and run its turn after, in a task of its
:class:`WebhookTasks` (``await tasks.close()`` on stop). Platform retries of one
event need nothing more: ``on_inbound`` goes through the bot's gate, whose
duplicate filter (shared across hosts on Redis/PostgreSQL) passes one
``platform:chat_id:message_id`` once, so give the ``Inbound`` the platform's
own stable message id.

``acquire()``/``release()`` count users: the server starts with the first
``acquire()`` (building the application from the routes added so far) and
stops with the last ``release()``. Routes from :meth:`Ingress.add_routes`
must be added before the server starts (aiohttp freezes its router);
webhook endpoints are looked up per request, so they come and go at any time.

Without ``public_url`` nothing is registered with a platform: adapters read
``webhook_url(name)`` and skip their registration call when it is ``None``
(the operator registers the URL by hand, or the platform is a test fake).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import ConfigError, PlatformUnavailable

__all__ = [
    "MAX_BODY_BYTES",
    "Ingress",
    "RouteAdder",
    "WebhookEndpoint",
    "WebhookTasks",
    "json_response",
    "refuse",
]

log = logging.getLogger("onethread.platforms.ingress")

MAX_BODY_BYTES = 1_000_000
"""Largest webhook body taken (1 MB); more is refused with 413 before the adapter sees it."""

RouteAdder = Callable[[web.Application], None]
"""Adds routes to the application before it serves (``app.router.add_get(...)``)."""

_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CHUNK = 64 * 1024


@runtime_checkable
class WebhookEndpoint(Protocol):
    """What ``Ingress.mount_webhook`` takes: a ``webhook_post`` coroutine method.

    ``webhook_post(request, body)`` gets the raw body (at most
    ``max_body_bytes``) and returns the response. An endpoint may also have
    ``async def webhook_get(request) -> web.StreamResponse`` (a platform's
    subscription challenge); without it, GET is 405.
    """

    async def webhook_post(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Verify ``body`` against the platform's secret, then answer (see the module doc)."""
        ...


def json_response(status: int, **fields: Any) -> web.Response:
    """A small JSON answer (``{"error": ...}`` for refusals, ``{"ok": true}`` for acks)."""
    return web.Response(
        status=status,
        text=json.dumps(fields, ensure_ascii=False),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def refuse(request: web.Request, platform: str, status: int, reason: str) -> web.Response:
    """Refuse a webhook request: one WARNING line (path, reason, body size; never the
    body or its headers' secrets) and a JSON ``{"error": reason}`` with ``status``.

    Use it for every failed verification (401: no or unreadable credentials,
    403: a wrong signature or token) and for malformed bodies (400).
    """
    log.warning(
        "%s webhook: refused %s %s with %d: %s (%s bytes, from %s)",
        platform,
        request.method,
        request.path,
        status,
        reason,
        request.content_length if request.content_length is not None else "?",
        request.remote or "?",
    )
    return json_response(status, error=reason)


class WebhookTasks:
    """The turns a webhook adapter started after answering; awaited on stop.

    Touched on the event loop thread only. ``spawn`` logs a task's exception
    (a turn must never fail silently); ``close`` waits for the running tasks
    for at most ``timeout`` seconds, then cancels the rest and waits for them.
    """

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self._tasks: set[asyncio.Future[Any]] = set()  # loop thread only

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``work`` (a coroutine) in a tracked task; return it."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s webhook: a task failed", self.platform, exc_info=task.exception())

    async def close(self, timeout: float = 10.0) -> None:
        """Let running tasks finish for ``timeout`` seconds, cancel the rest. Idempotent."""
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%s webhook: cancelled %d task(s) at stop", self.platform, len(pending))
            await asyncio.wait(pending, timeout=2.0)


def _checked_public_url(public_url: str | None) -> str | None:
    if public_url is None or not public_url.strip():
        return None
    parts = urlsplit(public_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"http public_url must be an absolute http(s) URL such as "
            f"https://bot.example.com, got {public_url!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"http public_url must have no ?query or #fragment, got {public_url!r}")
    return public_url.strip().rstrip("/")


class Ingress:
    """One aiohttp server: ``/healthz``, added routes, and ``/webhooks/<platform>``.

    Args:
        host: interface to bind (``127.0.0.1`` by default).
        port: TCP port; 0 picks a free one (read ``ingress.port`` once serving).
        public_url: the address the platforms reach this server at
            (``https://bot.example.com``, maybe with a path prefix); webhook
            adapters register ``public_url + /webhooks/<platform>`` with their
            platform. ``None``: nothing is registered anywhere.
        max_body_bytes: largest webhook body (default 1 MB); more is 413.

    Raises ``ConfigError`` for a bad port or public URL. All state is touched
    on the event loop thread only; ``_lock`` serialises start and stop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        public_url: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"http port must be an integer from 0 to 65535, got {port!r}")
        if max_body_bytes < 1:
            raise ConfigError(f"http max_body_bytes must be positive, got {max_body_bytes!r}")
        self.host = host
        self.port = port
        self.public_url = _checked_public_url(public_url)
        self.max_body_bytes = max_body_bytes
        self._adders: list[RouteAdder] = []
        self._webhooks: dict[str, WebhookEndpoint] = {}
        self._expected: set[str] = set()  # names answered 503, not 404, while unmounted
        self._runner: web.AppRunner | None = None
        self._users = 0
        self._lock: asyncio.Lock | None = None  # created on the loop that starts us

    # -- what is served ----------------------------------------------------------

    @property
    def serving(self) -> bool:
        """True while the server listens."""
        return self._runner is not None

    @property
    def url(self) -> str:
        """The local address (``http://127.0.0.1:8080/``); the port is real once serving."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        from .web import is_loopback

        return is_loopback(self.host)

    def add_routes(self, adder: RouteAdder) -> None:
        """Have ``adder(app)`` add its routes when the server starts. Idempotent per adder.

        Raises ``RuntimeError`` when the server already runs without them (routes
        are fixed once it serves: add them before the first ``acquire()``).
        """
        if adder in self._adders:
            return
        if self._runner is not None:
            raise RuntimeError(
                "the HTTP server is already serving: add routes before it starts "
                "(BotOS adds its platforms' routes before starting them)"
            )
        self._adders.append(adder)

    @staticmethod
    def webhook_path(platform: str) -> str:
        """``/webhooks/<platform>``."""
        return f"/webhooks/{platform}"

    def webhook_url(self, platform: str) -> str | None:
        """The public URL of ``platform``'s webhook, or ``None`` without ``public_url``."""
        if self.public_url is None:
            return None
        return self.public_url + self.webhook_path(platform)

    def mount_webhook(self, platform: str, endpoint: WebhookEndpoint) -> None:
        """Send ``/webhooks/<platform>`` requests to ``endpoint`` from now on.

        Raises ``ValueError`` for a name that is not lower-case letters, digits,
        ``_`` or ``-``, and ``ConfigError`` when another endpoint holds it.
        """
        if not _NAME_RE.fullmatch(platform):
            raise ValueError(
                f"webhook name must be lower-case letters, digits, _ or -: {platform!r}"
            )
        if not callable(getattr(endpoint, "webhook_post", None)):
            raise TypeError(f"{type(endpoint).__name__} has no webhook_post method")
        held = self._webhooks.get(platform)
        if held is not None and held is not endpoint:
            raise ConfigError(f"/webhooks/{platform} is already served by another adapter")
        self._webhooks[platform] = endpoint

    def expect_webhook(self, platform: str) -> None:
        """Announce that ``platform`` will mount ``/webhooks/<platform>``: until it
        does (its adapter still checks its credentials, or retries after a failed
        start), requests there get 503 and a log line saying the platform is not
        connected, instead of a 404 that reads like a wrong URL. Idempotent."""
        self._expected.add(platform)

    def unmount_webhook(self, platform: str, endpoint: WebhookEndpoint | None = None) -> None:
        """Stop serving ``/webhooks/<platform>`` (404 from now on); only if held by
        ``endpoint`` when given. Idempotent."""
        if endpoint is None or self._webhooks.get(platform) is endpoint:
            self._webhooks.pop(platform, None)

    def webhooks(self) -> list[str]:
        """The platforms mounted under ``/webhooks/``, sorted."""
        return sorted(self._webhooks)

    # -- lifecycle ---------------------------------------------------------------

    def _the_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def acquire(self) -> None:
        """Count one user; start serving if not yet. Return once serving.

        Raises ``PlatformUnavailable`` when the address cannot be bound (then
        nothing is counted; a supervised adapter retries with backoff).
        """
        async with self._the_lock():
            if self._runner is None:
                await self._start()
            self._users += 1

    async def release(self) -> None:
        """Undo one :meth:`acquire`; the last one stops the server. Extra calls do nothing."""
        async with self._the_lock():
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                runner, self._runner = self._runner, None
                if runner is not None:
                    await runner.cleanup()
                    log.info("HTTP server on %s stopped", self.url)

    async def _start(self) -> None:
        app = web.Application()  # a fresh one each time: a stopped app cannot serve again
        app.router.add_get("/healthz", _healthz)
        path = "/webhooks/{platform}"
        app.router.add_route("*", path, self._webhook)
        for adder in self._adders:
            adder(app)
        # No access log: its lines would carry user ids and tokens from the query.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise PlatformUnavailable(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._runner = runner
        addresses = runner.addresses
        if addresses and isinstance(addresses[0], tuple):
            self.port = int(addresses[0][1])
        log.info("HTTP server on %s", self.url)

    # -- the webhook route -------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        platform = request.match_info["platform"]
        endpoint = self._webhooks.get(platform)
        if endpoint is None and platform in self._expected:
            answer = refuse(
                request,
                platform,
                503,
                f"the {platform} platform is configured but not connected: its start "
                "failed or is being retried (the server log says why)",
            )
            answer.headers["Retry-After"] = "30"
            return answer
        if endpoint is None:
            mounted = ", ".join(self.webhooks()) or "none"
            return json_response(
                404, error=f"no webhook platform {platform!r} here (mounted: {mounted})"
            )
        if request.method == "GET":
            get: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = getattr(
                endpoint, "webhook_get", None
            )
            if get is None:
                return json_response(405, error="this webhook takes POST only")
            return await get(request)
        if request.method != "POST":
            return json_response(405, error="this webhook takes POST (and GET where asked)")
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            return refuse(request, platform, 413, self._too_large())
        body = await self._read(request)
        if body is None:
            return refuse(request, platform, 413, self._too_large())
        return await endpoint.webhook_post(request, body)

    def _too_large(self) -> str:
        return f"body larger than {self.max_body_bytes} bytes"

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or None once it passes the limit (chunked bodies have no length)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")
