"""``/metrics`` after real turns, parsed with prometheus-client's own parser; the
per-turn log line (text and JSON); ``/readyz`` with the in-process stores."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import RecordingAgent
from onethread.bots import Bot, BotOS
from onethread.errors import ModelError, PlatformUnavailable, RetryAfter
from onethread.logs import TURN_LOGGER, JsonFormatter
from onethread.metrics import DELIVERY_OUTCOMES, LINK_OUTCOMES, TURN_OUTCOMES, Metrics
from onethread.platforms.delivery import RetryPolicy
from onethread.platforms.web import WebAdapter
from onethread.session import InMemoryIdentityResolver
from onethread.session.history.base import HistoryEntry
from onethread.session.pairing import PairingStore
from onethread.testing import FakeAdapter

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=1.0)


class Agent(RecordingAgent):
    """Answers, except that a message ``fail`` makes the model fail; with ``hold`` set,
    every answer waits for that event."""

    hold: asyncio.Event | None = None

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        if message.content == "fail":
            raise ModelError("upstream 500", status_code=500)
        reply = await super().respond(history, message, group=group)
        if self.hold is not None:
            await self.hold.wait()
        return reply


class FlakyAdapter(FakeAdapter):
    """Fails the next sends as told: ``errors`` is a queue of exceptions to raise first."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.errors: list[Exception] = []

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        if self.errors:
            raise self.errors.pop(0)
        return await super().do_send(chat_id, text, thread_id=thread_id, formatted=formatted)


@pytest.fixture
async def botos() -> AsyncIterator[BotOS]:
    telegram = FlakyAdapter("telegram")
    telegram.retry_policy = FAST
    agent = Agent()
    os_ = BotOS(
        agent,
        platforms={"web": {"port": 0}},
        bots=[Bot("telegram", agent, adapter=telegram)],
        store="memory://",
        identity_resolver=InMemoryIdentityResolver(),
        pairing=PairingStore(":memory:"),
        audit=":memory:",
    )
    task = asyncio.create_task(os_.start())
    await os_.wait_ready(5)
    yield os_
    await os_.stop()
    await task


def base_url(botos: BotOS) -> str:
    adapter = botos.bots["web"].adapter
    assert isinstance(adapter, WebAdapter)
    return adapter.url


def fake(botos: BotOS) -> FlakyAdapter:
    adapter = botos.bots["telegram"].adapter
    assert isinstance(adapter, FlakyAdapter)
    return adapter


async def settled(*bots: Bot) -> None:
    """Until every turn of ``bots`` has finished (its accounting runs after the send)."""
    async with asyncio.timeout(10):
        while any(bot._turns for bot in bots):
            await asyncio.sleep(0.005)


async def turn(botos: BotOS, text: str, **kw: str) -> None:
    adapter = fake(botos)
    before = len(adapter.sent)
    await adapter.inject(text, **kw)
    await adapter.wait_sent(before + 1)
    await settled(*botos.bots.values())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(botos: BotOS) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url(botos) + "metrics") as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return samples(await resp.text())


async def test_metrics_count_what_happened(botos: BotOS) -> None:
    for i in range(3):
        await turn(botos, f"hello {i}", user="u1", message_id=f"m{i}")
    await fake(botos).inject("hello 0", user="u1", message_id="m0")  # redelivered: dropped
    await turn(botos, "fail", user="u2")  # the model fails: the apology is sent
    fake(botos).errors += [PlatformUnavailable("503", platform="telegram"),
                           RetryAfter(0.01, platform="telegram")]  # fmt: skip
    await turn(botos, "retried twice", user="u3")
    await turn(botos, "/link", user="u4")  # a command: a link code is issued
    await turn(botos, "/link WRONGCODE2345", user="u5")  # refused
    fake(botos).errors += [PlatformUnavailable("503", platform="telegram")] * 3
    await fake(botos).inject("never arrives", user="u6")
    await settled(*botos.bots.values())

    got = await scrape(botos)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("onethread_turns_total", platform="telegram", outcome="ok") == 4
    assert value("onethread_turns_total", platform="telegram", outcome="model_error") == 1
    assert value("onethread_turns_total", platform="telegram", outcome="command") == 2
    assert value("onethread_turns_total", platform="telegram", outcome="undelivered") == 1
    assert value("onethread_turn_seconds_count", platform="telegram") == 8
    assert value("onethread_model_seconds_count", platform="telegram") == 6  # not commands
    assert value("onethread_duplicates_dropped_total", platform="telegram") == 1
    assert value("onethread_deliveries_total", platform="telegram", outcome="delivered") == 7
    assert value("onethread_deliveries_total", platform="telegram", outcome="failed") == 1
    # two retries for "retried twice", two for the send that failed for good (3 attempts)
    assert value("onethread_deliveries_total", platform="telegram", outcome="retried") == 4
    assert value("onethread_rate_limit_waits_total", platform="telegram") == 1
    assert value("onethread_rate_limit_wait_seconds_total", platform="telegram") == 0.01
    assert value("onethread_link_attempts_total", outcome="issued") == 1
    assert value("onethread_link_attempts_total", outcome="refused") == 1
    assert value("onethread_platform_up", platform="telegram") == 1
    assert value("onethread_platform_up", platform="web") == 1
    assert value("onethread_turn_locks") == 0
    # No user id, chat id or text in any label.
    labels = {v for (_, lbls) in got for (k, v) in lbls if k != "le"}
    allowed = {"telegram", "web"} | TURN_OUTCOMES | DELIVERY_OUTCOMES | LINK_OUTCOMES
    assert labels <= allowed, labels - allowed


async def test_locked_out_link_attempts_are_counted(botos: BotOS) -> None:
    for i in range(6):
        await turn(botos, f"/link WRONGCODE{i:04d}", user="guesser")
    got = await scrape(botos)
    assert got[("onethread_link_attempts_total", (("outcome", "refused"),))] == 5
    assert got[("onethread_link_attempts_total", (("outcome", "locked_out"),))] == 1


async def test_live_turn_locks_are_a_gauge(botos: BotOS) -> None:
    agent = botos.agent
    assert isinstance(agent, Agent)
    release = asyncio.Event()
    agent.hold = release  # both turns wait inside the model, holding their turn locks
    await fake(botos).inject("slow", user="a")
    await fake(botos).inject("slow", user="b")
    async with asyncio.timeout(10):
        while len(agent.calls) < 2:
            await asyncio.sleep(0.01)
    got = await scrape(botos)
    assert got[("onethread_turn_locks", ())] == 2
    release.set()
    await fake(botos).wait_sent(2)
    await settled(*botos.bots.values())
    assert (await scrape(botos))[("onethread_turn_locks", ())] == 0


async def test_metrics_off_serves_404_and_counts_nothing() -> None:
    adapter = FakeAdapter("telegram")
    os_ = BotOS(RecordingAgent(), platforms={"web": {"port": 0}},
                bots=[Bot("telegram", adapter=adapter, store="memory://")],
                store="memory://", metrics=False)  # fmt: skip
    task = asyncio.create_task(os_.start())
    await os_.wait_ready(5)
    try:
        await adapter.inject("hi")
        await adapter.wait_sent(1)
        async with aiohttp.ClientSession() as http:
            async with http.get(base_url(os_) + "metrics") as resp:
                assert resp.status == 404
    finally:
        await os_.stop()
        await task


def test_each_botos_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.turn("telegram", "ok", 0.1, 0.05)
    assert a.registry is not b.registry
    text_a = samples(asyncio.run(a.exposition()).decode())
    text_b = samples(asyncio.run(b.exposition()).decode())
    key = ("onethread_turns_total", (("outcome", "ok"), ("platform", "telegram")))
    assert text_a[key] == 1 and key not in text_b


def test_labels_are_bounded() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="unknown turn outcome"):
        m.turn("telegram", "user-123", 0.1, 0.0)
    with pytest.raises(ValueError, match="unknown delivery outcome"):
        m.delivery("telegram", "bob")
    with pytest.raises(ValueError, match="unknown link outcome"):
        m.link("alice")


def test_scheduled_job_hook_appears_with_its_first_use() -> None:
    m = Metrics()
    assert "scheduled_jobs" not in asyncio.run(m.exposition()).decode()
    m.scheduled_job("due")
    m.scheduled_job("late")
    m.scheduled_job("late")
    got = samples(asyncio.run(m.exposition()).decode())
    assert got[("onethread_scheduled_jobs_total", (("outcome", "late"),))] == 2
    with pytest.raises(ValueError):
        m.scheduled_job("whenever")


# -- the per-turn log line -------------------------------------------------------


async def test_one_info_line_per_turn_without_text_or_ids(
    botos: BotOS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TURN_LOGGER)
    await turn(botos, "a secret message", user="987654321")
    await turn(botos, "fail", user="987654321")
    lines = [r for r in caplog.records if r.name == TURN_LOGGER]
    assert len(lines) == 2
    first, second = (r.getMessage() for r in lines)
    assert first.startswith("turn platform=telegram account=telegram:#")
    assert " in=16 out=" in first and "outcome=ok" in first and "model_ms=" in first
    assert "outcome=model_error" in second
    for line in (first, second):
        assert "secret" not in line and "987654321" not in line
    fields = lines[0].turn  # type: ignore[attr-defined]
    assert set(fields) == {"platform", "account", "chars_in", "chars_out", "model_ms",
                           "total_ms", "outcome"}  # fmt: skip
    assert fields["chars_out"] == len("reply:a secret message")
    assert fields["total_ms"] >= fields["model_ms"] >= 0
    record = json.loads(JsonFormatter().format(lines[0]))
    assert record["logger"] == TURN_LOGGER and record["level"] == "INFO"
    assert {k: record[k] for k in fields} == fields


async def test_an_account_gets_the_same_hash_every_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from onethread.session._conn.shared import who

    caplog.set_level(logging.INFO, logger=TURN_LOGGER)
    adapter = FakeAdapter("telegram")
    bot = Bot("telegram", RecordingAgent(), adapter=adapter, store="memory://")
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 5)
    try:
        await adapter.inject("one", user="42")
        await adapter.inject("two", user="42")
        await adapter.wait_sent(2)
        await settled(bot)
    finally:
        await bot.stop()
        await task
    accounts = {r.turn["account"] for r in caplog.records if r.name == TURN_LOGGER}  # type: ignore[attr-defined]
    assert accounts == {who("telegram", "42", always=True)}
    assert "42" not in next(iter(accounts))


# -- /readyz and /healthz with in-process stores ------------------------------------


async def test_readyz_names_each_store_and_platform(botos: BotOS) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url(botos) + "readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
        async with http.get(base_url(botos) + "healthz") as resp:
            assert resp.status == 200 and await resp.text() == "ok"
    assert body["ready"] is True
    assert set(body["stores"]) == {"history", "identity", "pairing"}
    assert body["stores"]["history"] == {"ok": True, "kind": "MemoryHistoryStore"}
    assert body["platforms"] == {
        "web": {"ok": True, "state": "connected"},
        "telegram": {"ok": True, "state": "connected"},
    }


async def test_readyz_is_503_while_a_platform_is_down(botos: BotOS) -> None:
    botos.bots["telegram"].ready.clear()
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url(botos) + "readyz") as resp:
            assert resp.status == 503
            body = await resp.json()
    assert body["platforms"]["telegram"] == {"ok": False, "state": "connecting"}


def test_an_empty_lock_set_given_to_the_manager_is_kept() -> None:
    """Lock sets have a length now (the gauge); an empty one must not read as "none given"."""
    from onethread.bots import BotSessionManager
    from onethread.session.locks import LocalTurnLocks

    locks = LocalTurnLocks()
    assert len(locks) == 0
    assert BotSessionManager(store="memory://", locks=locks).locks is locks


def test_recording_does_not_import_prometheus_client() -> None:
    """~80 ms of imports: paid when metrics are first read, not at start-up."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from onethread.bots import BotOS\n"
        "b = BotOS(platforms=['web'], store='memory://', audit=':memory:')\n"
        "b.metrics.turn('web', 'ok', 0.01, 0.005)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported at start-up'\n"
        "b.metrics.registry\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_a_completed_link_is_counted() -> None:
    import re

    agent = RecordingAgent()
    telegram, discord = FakeAdapter("telegram"), FakeAdapter("discord")
    os_ = BotOS(
        agent,
        platforms={"web": {"port": 0}},
        bots=[Bot("telegram", agent, adapter=telegram), Bot("discord", agent, adapter=discord)],
        store="memory://",
        identity_resolver=InMemoryIdentityResolver(),
        pairing=PairingStore(":memory:"),
        audit=":memory:",
    )
    task = asyncio.create_task(os_.start())
    await os_.wait_ready(5)
    try:
        await telegram.inject("/link", user="t1")
        issued = (await telegram.wait_sent(1))[-1].text
        match = re.search(r"/link (\S+(?: \S+)*)\n", issued)
        assert match, issued
        await discord.inject(f"/link {match.group(1)}", user="d1")
        assert "Linked" in (await discord.wait_sent(1))[-1].text
        await settled(*os_.bots.values())
        got = await scrape(os_)
    finally:
        await os_.stop()
        await task
    assert got[("onethread_link_attempts_total", (("outcome", "issued"),))] == 1
    assert got[("onethread_link_attempts_total", (("outcome", "linked"),))] == 1
    assert ("onethread_link_attempts_total", (("outcome", "refused"),)) not in got


async def test_a_message_of_refused_attachments_only_is_its_own_outcome() -> None:
    from onethread.session.attachments import Attachment

    metrics = Metrics()
    adapter = FakeAdapter("telegram")
    bot = Bot("telegram", RecordingAgent(), adapter=adapter, store="memory://",
              max_attachment_bytes=1000, metrics=metrics)  # fmt: skip
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 5)
    try:
        big = Attachment("file", name="big.bin", size=5_000_000)
        await adapter.inject("", user="1", files=[(big, b"x" * 10)])
        await adapter.wait_sent(1)
        await settled(bot)
    finally:
        await bot.stop()
        await task
    got = samples((await metrics.exposition()).decode())
    key = ("onethread_turns_total", (("outcome", "attachment_refused"), ("platform", "telegram")))
    assert got[key] == 1
    assert ("onethread_model_seconds_count", (("platform", "telegram"),)) in got  # zero, present
    assert got[("onethread_model_seconds_count", (("platform", "telegram"),))] == 0
