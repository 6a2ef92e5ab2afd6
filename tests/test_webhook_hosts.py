"""Two hosts behind one load balancer: a platform's retry of one event reaches the
other host, and the shared duplicate filter (Redis, PostgreSQL) answers it once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import aiohttp
import pytest

from helpers import RecordingAgent
from onethread.bots import BotOS
from onethread.session.urls import open_coordination, open_history_store
from test_multihost_platforms import shared  # noqa: F401  (the Redis / PostgreSQL fixture)

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]

SECRET = "hosts-webhook-secret"


async def test_a_retry_to_another_host_is_answered_once(
    shared: tuple[str, dict[str, str]],  # noqa: F811
) -> None:
    url, options = shared
    agent = RecordingAgent()
    agent.delay = 0.2  # the first host is still answering when the retry arrives
    hosts = [
        BotOS(
            agent,
            platforms={"webhook": {"secret": SECRET}},
            store=open_history_store(url, **options),
            coordination=open_coordination(url, **options),
            http={"port": 0},
            metrics=False,
        )
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(host.start()) for host in hosts]
    try:
        for host in hosts:
            await host.wait_ready(10)
        body = json.dumps({"user_id": "u1", "text": "pay invoice 7", "message_id": "evt-9"})
        raw = body.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Onethread-Signature": "sha256="
            + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest(),
        }

        async def post(host: BotOS) -> dict[str, Any]:
            async with aiohttp.ClientSession() as http:
                target = host.ingress.url + "webhooks/webhook"
                async with http.post(target, data=raw, headers=headers) as resp:
                    assert resp.status == 200
                    answer: dict[str, Any] = await resp.json()
                    return answer

        answers = await asyncio.gather(post(hosts[0]), post(hosts[1]))
        replies = [a["reply"] for a in answers if a["reply"]]
        assert replies == ["reply:pay invoice 7"]
        assert sorted(bool(a.get("duplicate")) for a in answers) == [False, True]
        assert len(agent.calls) == 1
    finally:
        for host in hosts:
            await host.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
