"""Operations: ``/readyz``, ``/metrics`` and ``/admin`` on the one HTTP server.

``BotOS`` builds one :class:`Operations` and adds it to its HTTP server
(``onethread.platforms.ingress``, next to ``/healthz``, the liveness check,
the web chat and the webhooks). Without a platform that serves HTTP there is
no server, so none of these is served.

- ``GET /readyz``: 200 when every configured store answers and every platform
  is connected, else 503; JSON naming each (:mod:`.health`).
- ``GET /metrics``: the BotOS's own Prometheus registry in the text format
  (:class:`onethread.metrics.Metrics`). Open on loopback; when the web chat has
  an access token, the scrape needs it too (``Authorization: Bearer``). With
  no web chat, a server reachable from other machines (webhooks only) refuses
  the scrape: put a proxy in front that keeps ``/metrics`` private.
- ``/admin``: the operator page (:mod:`.admin`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from aiohttp import web

from ..metrics import Metrics, NullMetrics, RefreshFailed
from .admin import ADMIN_TOKEN_ENV, Admin
from .audit import AuditLog, RecentErrors
from .health import readiness

if TYPE_CHECKING:
    from ..bots.botos import BotOS

__all__ = ["ADMIN_TOKEN_ENV", "Operations"]

log = logging.getLogger("onethread.ops")

_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Operations:
    """The operator endpoints of one BotOS.

    Args:
        botos: the BotOS served.
        metrics: its metrics (``NullMetrics``: ``/metrics`` answers 404).
        audit: an ``AuditLog``, or its path (default ``$ONETHREAD_HOME/audit.db``).
        admin_token: the admin page's token; default ``ONETHREAD_ADMIN_TOKEN``,
            else the web chat's access token, else the page is off.
    """

    def __init__(
        self,
        botos: BotOS,
        *,
        metrics: NullMetrics,
        audit: AuditLog | str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.botos = botos
        self.metrics = metrics
        self.errors = RecentErrors()
        self.audit = audit if isinstance(audit, AuditLog) else AuditLog(audit)
        if admin_token is None:
            admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        if admin_token is None:
            admin_token = getattr(botos.http_adapter(), "access_token", None)
        self.admin = Admin(botos, token=admin_token, audit=self.audit, errors=self.errors)
        self._attached = False

    def mount(self, app: web.Application) -> None:
        """Add ``/readyz``, ``/metrics`` and the admin routes to ``app``."""
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self.admin.mount(app)

    def attach(self) -> None:
        """Start keeping recent WARNING+ records of the ``onethread`` loggers."""
        if not self._attached:
            logging.getLogger("onethread").addHandler(self.errors)
            self._attached = True

    def detach(self) -> None:
        """Stop keeping records; close the audit file."""
        if self._attached:
            logging.getLogger("onethread").removeHandler(self.errors)
            self._attached = False
        self.audit.close()

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = await readiness(self.botos)
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body, indent=2) + "\n",
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def _scrape_allowed(self, request: web.Request) -> bool:
        authorized = getattr(self.botos.http_adapter(), "authorized", None)
        if callable(authorized):
            return bool(authorized(request))
        return self.botos.ingress.loopback  # webhooks only: private when on loopback only

    async def _metrics(self, request: web.Request) -> web.Response:
        if not isinstance(self.metrics, Metrics):
            raise web.HTTPNotFound(text="metrics are switched off (BotOS(metrics=False))")
        if not self._scrape_allowed(request):
            raise web.HTTPUnauthorized(text="missing or wrong access token")
        try:
            body = await self.metrics.exposition()
        except RefreshFailed as exc:  # a store is down: the rest of the metrics still count
            log.warning("metrics: could not refresh %s", exc)
            body = exc.body
        return web.Response(
            body=body, headers={"Content-Type": _PROMETHEUS_TEXT, "Cache-Control": "no-store"}
        )
