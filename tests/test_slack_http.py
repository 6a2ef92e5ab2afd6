"""Slack ``mode: http``: slack-bolt behind the one HTTP server, with the fake Slack
POSTing signed Events API requests to the Request URL as Slack does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fake_slack import FakeSlack
from helpers import RecordingAgent
from onethread.bots import BotOS
from onethread.errors import ConfigError
from onethread.platforms.ingress import Ingress
from onethread.platforms.slack import SlackAdapter

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def botos(fake: FakeSlack) -> AsyncIterator[BotOS]:
    options = {"mode": "http", "token": fake.bot_token, "signing_secret": fake.signing_secret,
               "base_url": fake.base_url}  # fmt: skip
    running = BotOS(RecordingAgent(), platforms={"slack": options}, store="memory://",
                    http={"port": 0})  # fmt: skip
    task = asyncio.create_task(running.start())
    await asyncio.wait_for(running.bots["slack"].ready.wait(), 10)
    fake.request_url = running.ingress.url + "webhooks/slack"
    yield running
    await running.stop()
    await task


def agent(botos: BotOS) -> RecordingAgent:
    found = botos.agent
    assert isinstance(found, RecordingAgent)
    return found


async def test_url_verification_is_answered(fake: FakeSlack, botos: BotOS) -> None:
    status, body = await fake.verify_url(fake.request_url)
    assert status == 200
    assert "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" in body


async def test_a_turn_arrives_over_http(fake: FakeSlack, botos: BotOS) -> None:
    assert not [r for r in fake.requests if r.method == "apps.connections.open"]
    await fake.inject_dm("U1", "hello over http")
    [sent] = await fake.wait_for_messages(1)
    assert sent.text == "reply:hello over http"
    [(_, message, ctx)] = agent(botos).calls
    assert (ctx.platform, ctx.user_id) == ("slack", "U1")
    assert fake.http_deliveries[0].status == 200


async def test_ack_leaves_at_once_while_the_turn_runs(fake: FakeSlack, botos: BotOS) -> None:
    agent(botos).delay = 3.5  # longer than Slack waits for an ack
    await fake.inject_dm("U2", "slow one")
    await fake.wait_until(lambda: fake.http_deliveries, what="the first POST")
    first = fake.http_deliveries[0]
    assert first.status == 200 and first.seconds < 1.0
    await fake.wait_for_messages(1, timeout=10)
    assert [d.retry for d in fake.http_deliveries if d.event_id == first.event_id] == [0]


async def test_a_retried_event_is_answered_once(fake: FakeSlack, botos: BotOS) -> None:
    await fake.inject_dm("U3", "only once")
    await fake.wait_for_messages(1)
    envelope = next(e for e in fake.envelopes if e["payload"]["event"].get("text") == "only once")
    await fake.redeliver(envelope, reason="http_timeout")  # X-Slack-Retry-Num: 1
    await fake.wait_until(lambda: any(d.retry == 1 for d in fake.http_deliveries))
    await asyncio.sleep(0.3)
    assert [m.text for m in fake.sent] == ["reply:only once"]
    assert len(agent(botos).calls) == 1


async def test_forged_unsigned_stale_and_oversized_start_nothing(
    fake: FakeSlack, botos: BotOS, caplog: pytest.LogCaptureFixture
) -> None:
    dm = fake.dm_channel_for("U9")
    message = {"type": "message", "channel": dm, "channel_type": "im", "user": "U9",
               "text": "forged-text-55", "ts": "1.000001"}  # fmt: skip
    event = {"type": "event_callback", "team_id": fake.team_id, "api_app_id": fake.app_id,
             "event_id": "EvFORGED", "event": message}  # fmt: skip
    body = json.dumps(event).encode()
    forged = FakeSlack(signing_secret="not-the-apps-secret").sign(body)
    stale = fake.sign(body, timestamp=int(time.time()) - 6 * 60)
    big = json.dumps({**event, "pad": "x" * 1_100_000}).encode()
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (body, {"Content-Type": "application/json"}, 401),
        (body, forged, 403),
        (body, stale, 401),
        (body, {**fake.sign(body), "X-Slack-Request-Timestamp": "soon"}, 401),
        (big, fake.sign(big), 413),
    ]
    async with aiohttp.ClientSession() as http:
        for data, headers, status in cases:
            async with http.post(fake.request_url, data=data, headers=headers) as resp:
                assert resp.status == status, headers
        # the same body, signed right, goes through: the refusals were about the signature
        async with http.post(fake.request_url, data=body, headers=fake.sign(body)) as resp:
            assert resp.status == 200
    [sent] = await fake.wait_for_messages(1)
    assert sent.text == "reply:forged-text-55"
    assert len(agent(botos).calls) == 1
    assert "forged-text-55" not in caplog.text and "stale request" in caplog.text


async def test_http_mode_needs_its_secret_and_the_server(fake: FakeSlack) -> None:
    async def on_inbound(msg: Any) -> None:
        return None

    no_secret = SlackAdapter(token=fake.bot_token, base_url=fake.base_url, mode="http")
    no_secret.ingress = Ingress(port=0)
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        await no_secret.start(on_inbound)
    alone = SlackAdapter(token=fake.bot_token, base_url=fake.base_url, mode="http",
                         signing_secret="s")  # fmt: skip
    with pytest.raises(ConfigError, match="HTTP server"):
        await alone.start(on_inbound)
    with pytest.raises(ConfigError, match="mode"):
        SlackAdapter(mode="events")
    # http mode needs no app-level token; Socket Mode still does.
    env = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "abc"}
    assert SlackAdapter.check_options({"mode": "http"}, env) == []
    problems = SlackAdapter.check_options({"mode": "http", "signing_secret": "a b"}, env)
    assert [option for option, _ in problems] == ["signing_secret"]


def test_config_check_asks_http_mode_for_the_signing_secret_not_the_app_token() -> None:
    from onethread.config import parse_config
    from onethread.config_check import config_problems

    config = parse_config(
        "platforms:\n  slack: {mode: http, token: '${SLACK_BOT_TOKEN}'}\n",
        "t.yaml",
        env={"SLACK_BOT_TOKEN": "xoxb-1-x"},
    )
    _, problems = config_problems(config, {"SLACK_BOT_TOKEN": "xoxb-1-x"})
    assert [key for key, _ in problems] == ["platforms.slack.signing_secret"]
    assert "SLACK_SIGNING_SECRET" in problems[0][1]
    env = {"SLACK_BOT_TOKEN": "xoxb-1-x", "SLACK_SIGNING_SECRET": "abc"}
    assert config_problems(config, env)[1] == []
