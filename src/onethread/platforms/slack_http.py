"""Slack ``mode: http``: the Events API POSTed by Slack to ``/webhooks/slack``.

Used by :class:`onethread.platforms.slack.SlackAdapter` built with
``mode="http"``: instead of a Socket Mode connection, Slack sends each event to
the app's Request URL (``http.public_url + /webhooks/slack``, set by hand
under Event Subscriptions: Slack has no API call for it), so several hosts
behind a load balancer share the traffic.

Each request is verified first, with slack-sdk's ``SignatureVerifier`` and the
app's signing secret (``SLACK_SIGNING_SECRET``): the v0 HMAC of
``v0:<X-Slack-Request-Timestamp>:<raw body>`` must match ``X-Slack-Signature``,
and the timestamp must be within five minutes of now (a replayed request is
refused). Missing or stale headers: 401; a wrong signature: 403; logged
without the body; nothing runs. A verified request goes to slack-bolt's
``AsyncApp.async_dispatch`` (Bolt's own parsing, its ``url_verification``
answer with the ``challenge``, its ack before the listener runs), so the ack
leaves at once, well within Slack's 3 seconds, and the turn runs after.
An event no listener handles is acked too (Bolt would answer 404, which Slack
retries and counts against the app). Slack retries an event it got no timely
ack for, with ``X-Slack-Retry-Num``: the retry carries the same message, whose
id (``channel:ts``) the bot's duplicate filter (shared across hosts) answers once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from .ingress import json_response, refuse

__all__ = ["REPLAY_WINDOW", "SIGNING_SECRET_ENV", "SlackEvents"]

log = logging.getLogger("onethread.platforms.slack")

SIGNING_SECRET_ENV = "SLACK_SIGNING_SECRET"
REPLAY_WINDOW = 5 * 60
"""Seconds a request's timestamp may be off from now (Slack's own advice: five minutes)."""


class SlackEvents:
    """The ``/webhooks/slack`` endpoint of one running adapter.

    ``listeners`` is the adapter's set of running Bolt listener tasks (they
    add themselves); the adapter awaits them at stop. Loop thread only.
    """

    def __init__(self, app: AsyncApp, signing_secret: str) -> None:
        self.app = app
        self.verifier = SignatureVerifier(signing_secret)

    async def webhook_post(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Verify the v0 signature and timestamp, then let Bolt ack and dispatch."""
        timestamp = request.headers.get("X-Slack-Request-Timestamp")
        signature = request.headers.get("X-Slack-Signature")
        if not timestamp or not signature:
            return refuse(request, "slack", 401, "no X-Slack-Signature/-Request-Timestamp")
        try:
            age = abs(time.time() - int(timestamp))
        except ValueError:
            return refuse(request, "slack", 401, "unreadable X-Slack-Request-Timestamp")
        if age > REPLAY_WINDOW:
            return refuse(request, "slack", 401, "stale request (timestamp over 5 minutes off)")
        if not self.verifier.is_valid(body, timestamp, signature):
            return refuse(request, "slack", 403, "wrong X-Slack-Signature")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return refuse(request, "slack", 400, "body is not UTF-8")
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            reason = request.headers.get("X-Slack-Retry-Reason", "")
            log.info("slack: retry %s of an event (%s)", retry, reason or "no reason given")
        headers: dict[str, Any] = dict(request.headers)
        bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=headers)
        response = await self.app.async_dispatch(bolt_request)
        if response.status == 404:  # no listener for this event: ack it all the same
            log.debug("slack: no listener for a request; acked")
            return json_response(200, ok=True)
        return await to_aiohttp_response(response)


async def finish(listeners: set[asyncio.Task[Any]], timeout: float) -> None:
    """Let running listener tasks finish for ``timeout`` seconds, then cancel the rest."""
    pending = set(listeners)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
