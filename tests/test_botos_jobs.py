"""BotOS.schedule/jobs/cancel over in-process FakeAdapters: delivery like notify(),
mirrored with the label, prompt jobs, failures marked, restarts, /tz, /reminders, tools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import RecordingAgent
from onethread._fake_adapter import FakeAdapter
from onethread.bots import BotOS
from onethread.bots.bot import Bot
from onethread.errors import BadRequest, OutcomeUnknown
from onethread.session import InMemoryIdentityResolver, set_session_context
from onethread.session.context import clear_session_context
from onethread.session.history.base import HistoryEntry
from onethread.tools import reminders

pytestmark = pytest.mark.timeout(60)


class Flaky(FakeAdapter):
    """Refuses every send while ``down`` (a platform rejecting the message for good)."""

    down = False
    unknown = False  # the request went out, the answer never came
    attempts = 0

    async def do_send(self, chat_id: str, text: str, *, thread_id: str = "",
                      formatted: bool = True) -> str:  # fmt: skip
        self.attempts += 1
        if self.unknown:
            raise OutcomeUnknown("timed out after sending", platform=self.name)
        if self.down:
            raise BadRequest("outside the 24-hour window", platform=self.name)
        return await super().do_send(chat_id, text, thread_id=thread_id, formatted=formatted)


Make = Callable[..., Awaitable[tuple[BotOS, FakeAdapter, FakeAdapter]]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    running: list[tuple[BotOS, asyncio.Task[None]]] = []

    async def build(
        store: Any = "memory://", agent: Any = None, **options: Any
    ) -> tuple[BotOS, FakeAdapter, FakeAdapter]:
        resolver = InMemoryIdentityResolver()
        resolver.link("telegram", "100", "alice")
        resolver.link("discord", "200", "alice")
        tg, dc = Flaky("telegram"), Flaky("discord")
        botos = BotOS(
            agent or RecordingAgent(),
            bots=[Bot("telegram", adapter=tg), Bot("discord", adapter=dc)],
            identity_resolver=resolver,
            store=store,
            **options,
        )
        task = asyncio.create_task(botos.start())
        await botos.wait_ready()
        running.append((botos, task))
        return botos, tg, dc

    yield build
    for botos, task in running:
        await botos.stop()
        await asyncio.gather(task, return_exceptions=True)


async def alice_talks_on(adapter: FakeAdapter, user: str) -> None:
    before = len(adapter.sent)
    await adapter.inject("hello", user=user)
    await adapter.wait_sent(before + 1)


async def mirrored(botos: BotOS, user: str = "alice") -> list[HistoryEntry]:
    return [e for e in await botos.session.store.load(f"user:{user}") if e.source == "cron"]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.02)


async def test_schedule_refuses_bad_arguments(make: Make) -> None:
    botos, _, _ = await make()
    with pytest.raises(ValueError, match="exactly one of"):
        await botos.schedule("alice", "x")
    with pytest.raises(ValueError, match="exactly one of"):
        await botos.schedule("alice", "x", at=timedelta(1), every=timedelta(hours=1))
    with pytest.raises(ValueError, match="no time zone"):
        await botos.schedule("alice", "x", at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="at least 1 minute"):
        await botos.schedule("alice", "x", every=timedelta(seconds=5))
    with pytest.raises(ValueError, match="five fields"):
        await botos.schedule("alice", "x", cron="every day")
    with pytest.raises(ValueError, match="platform"):
        await botos.schedule("alice", "x", at=timedelta(0), platform="Not A Platform")
    assert await botos.jobs() == []


async def test_delivered_where_the_person_talked_last_and_mirrored_with_the_label(
    make: Make,
) -> None:
    botos, tg, dc = await make()
    await alice_talks_on(tg, "100")
    await alice_talks_on(dc, "200")  # Discord is the most recent
    job = await botos.schedule("alice", "Stand-up in 5 minutes", at=timedelta(seconds=0.2))
    assert [j.id for j in await botos.jobs("alice")] == [job.id]
    await dc.wait_sent(2)
    assert dc.sent[-1].text == "Stand-up in 5 minutes" and dc.sent[-1].chat_id == "dm-200"
    assert len(tg.sent) == 1
    [entry] = await mirrored(botos)
    assert entry.mirror and entry.content == "Stand-up in 5 minutes"
    assert entry.metadata["job_id"] == job.id
    assert entry.metadata["scheduled_for"] == job.next_run.isoformat()
    assert (entry.platform, entry.chat_id) == ("discord", "dm-200")

    async def done() -> bool:
        return await botos.jobs("alice") == []  # a one-off ends

    await eventually(done)
    exposed = (await botos.metrics.exposition()).decode()
    assert 'onethread_scheduled_jobs_total{outcome="due"} 1' in exposed


async def test_platform_and_label_chosen_by_the_caller(make: Make) -> None:
    botos, tg, dc = await make()
    await alice_talks_on(tg, "100")
    await alice_talks_on(dc, "200")
    await botos.schedule("alice", "on telegram", at=timedelta(0), platform="telegram",
                         source_label="standup")  # fmt: skip
    await tg.wait_sent(2)
    assert tg.sent[-1].text == "on telegram" and len(dc.sent) == 1
    [entry] = [e for e in await botos.session.store.load("user:alice") if e.source == "standup"]
    assert entry.platform == "telegram"


async def test_cancelled_jobs_never_fire(make: Make) -> None:
    botos, tg, _ = await make()
    await alice_talks_on(tg, "100")
    job = await botos.schedule("alice", "never", at=timedelta(seconds=0.3))
    keep = await botos.schedule("alice", "kept", at=timedelta(seconds=0.5))
    assert await botos.cancel(job.id)
    assert not await botos.cancel(job.id)
    assert not await botos.cancel("no-such-id")
    await tg.wait_sent(2)
    await asyncio.sleep(0.3)
    assert [m.text for m in tg.sent[1:]] == ["kept"]
    got = await botos.job_service.store.get(job.id)
    assert got is not None and got.status == "cancelled" and got.last_status == ""
    assert keep.id != job.id


async def test_a_prompt_job_runs_a_turn_for_the_delivery_platform_and_delivers_the_reply(
    make: Make,
) -> None:
    agent = RecordingAgent()
    botos, tg, dc = await make(agent=agent)
    await alice_talks_on(dc, "200")
    await botos.schedule("alice", "Summarise my day", at=timedelta(0), prompt=True)
    await dc.wait_sent(2)
    assert dc.sent[-1].text == "reply:Summarise my day"
    history, message, ctx = agent.calls[-1]
    assert (ctx.platform, ctx.chat_id, ctx.unified_user_id, ctx.source) == (
        "discord",
        "dm-200",
        "alice",
        "cron",
    )
    assert message.content == "Summarise my day" and message.source == "cron"
    assert [e.content for e in history][:1] == ["hello"]  # the person's session
    prompt, reply = await mirrored(botos)
    assert (prompt.role, prompt.content) == ("user", "Summarise my day")
    assert (reply.role, reply.content, reply.platform) == ("assistant", "reply:Summarise my day",
                                                           "discord")  # fmt: skip
    last = await botos.session.last_seen("alice")
    assert last is not None and last.content == "hello"  # a scheduled prompt is not "them"


async def test_failed_deliveries_are_retried_then_marked_failed_in_the_job_and_history(
    make: Make,
) -> None:
    botos, tg, _ = await make(scheduler={"retry_delays": (0.05, 0.05)})
    await alice_talks_on(tg, "100")
    tg.down = True
    job = await botos.schedule("alice", "Your parcel is here", at=timedelta(0))

    async def failed() -> bool:
        got = await botos.job_service.store.get(job.id)
        return got is not None and got.status == "failed"

    await eventually(failed)
    got = await botos.job_service.store.get(job.id)
    assert got is not None and got.last_status == "failed" and "24-hour" in got.last_error
    [entry] = await mirrored(botos)
    assert entry.content == "Your parcel is here"
    assert entry.metadata["delivery"] == "failed"
    assert entry.metadata["delivery_error"] == "BadRequest"
    assert len(tg.sent) == 1  # only the greeting went out


async def test_a_send_whose_outcome_is_unknown_is_never_repeated(make: Make) -> None:
    botos, tg, _ = await make(scheduler={"retry_delays": (0.05, 0.05)})
    await alice_talks_on(tg, "100")
    tg.unknown = True
    before = tg.attempts
    job = await botos.schedule("alice", "maybe arrived", at=timedelta(0))
    await eventually(lambda: _has_failed(botos))
    await asyncio.sleep(0.2)  # past both retry delays
    assert tg.attempts == before + 1  # tried once: a retry could send it twice
    [entry] = await mirrored(botos)
    assert entry.metadata["delivery_error"] == "OutcomeUnknown"
    got = await botos.job_service.store.get(job.id)
    assert got is not None and got.status == "failed" and got.attempts == 0


async def test_a_failed_prompt_keeps_one_reply_across_retries(make: Make) -> None:
    agent = RecordingAgent()
    botos, tg, _ = await make(agent=agent, scheduler={"retry_delays": (0.05,)})
    await alice_talks_on(tg, "100")
    tg.down = True
    await botos.schedule("alice", "plan my week", at=timedelta(0), prompt=True)
    await eventually(lambda: _has_failed(botos))
    assert sum(1 for _, m, _ in agent.calls if m.content == "plan my week") == 1
    prompt, reply = await mirrored(botos)
    assert reply.content == "reply:plan my week" and reply.metadata["delivery"] == "failed"


async def _has_failed(botos: BotOS) -> bool:
    return any(e.metadata.get("delivery") == "failed" for e in await mirrored(botos))


async def test_jobs_survive_a_restart_on_sqlite_and_a_missed_one_fires_once(
    make: Make, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    botos, tg, _ = await make(store=url)
    await alice_talks_on(tg, "100")
    soon = await botos.schedule("alice", "while down", at=timedelta(seconds=0.4))
    later = await botos.schedule("alice", "after restart", at=timedelta(seconds=2.0))
    daily = await botos.schedule("alice", "daily", cron="0 9 * * *")
    await botos.stop()
    await asyncio.sleep(0.6)  # "soon" falls due while nothing runs
    assert len(tg.sent) == 1

    again, tg2, _ = await make(store=url)
    assert {j.id for j in await again.jobs("alice")} >= {later.id, daily.id}
    await tg2.wait_sent(2, timeout=10)
    assert [m.text for m in tg2.sent] == ["while down", "after restart"]
    entries = await mirrored(again)
    assert [e.content for e in entries] == ["while down", "after restart"]
    assert entries[0].metadata["scheduled_for"] == soon.next_run.isoformat()

    async def only_daily_left() -> bool:
        return [j.id for j in await again.jobs("alice")] == [daily.id]

    await eventually(only_daily_left)


async def test_tz_and_reminders_commands(make: Make) -> None:
    botos, tg, _ = await make(timezone="America/New_York")
    await tg.inject("/help", user="100")
    [help_text] = await tg.wait_sent(1)
    assert "/reminders" in help_text.text and "/tz ZONE" in help_text.text
    tg.sent.clear()
    await tg.inject("/tz", user="100")
    await tg.inject("/tz Mars/Base", user="100")
    await tg.inject("/tz Asia/Kolkata", user="100")
    await tg.wait_sent(3)
    assert "not set; I use America/New_York" in tg.sent[0].text
    assert "unknown time zone" in tg.sent[1].text
    assert "Asia/Kolkata" in tg.sent[2].text
    assert await botos.job_service.zone_of("alice") == "Asia/Kolkata"
    job = await botos.schedule("alice", "drink water", cron="0 9 * * *")
    assert job.timezone == "Asia/Kolkata"
    assert job.next_run.astimezone(UTC).strftime("%H:%M") == "03:30"
    await tg.inject("/reminders", user="100")
    await tg.wait_sent(4)
    assert job.id in tg.sent[3].text and "drink water" in tg.sent[3].text
    assert "09:00 IST" in tg.sent[3].text
    await tg.inject("/reminders", user="999")  # someone else sees nothing of alice's
    await tg.wait_sent(5)
    assert "no reminders" in tg.sent[4].text
    await tg.inject("/reminders", user="100", chat_id="g1", chat_type="group", mentions_bot=True)
    await tg.wait_sent(6)
    assert "direct message" in tg.sent[5].text and "drink water" not in tg.sent[5].text


async def test_reminder_tools_act_for_the_current_person_only(make: Make) -> None:
    botos, tg, _ = await make()
    remind_me, list_reminders, cancel_reminder = reminders(botos)
    token = set_session_context(platform="telegram", user_id="100", unified_user_id="alice")
    try:
        said = await remind_me("in 10 minutes", "call mum")
        assert "set for" in said
        assert "error" in await remind_me("whenever", "x")
        [job] = await botos.jobs("alice")
        assert job.text == "call mum" and job.id in said
    finally:
        clear_session_context(token)
    token = set_session_context(platform="telegram", user_id="300", unified_user_id="telegram:300")
    try:
        assert "no reminders" in await list_reminders()
        assert "error" in await cancel_reminder(job.id)  # not theirs
    finally:
        clear_session_context(token)
    assert [j.id for j in await botos.jobs("alice")] == [job.id]
    token = set_session_context(platform="telegram", user_id="100", unified_user_id="alice",
                                chat_type="group", chat_id="g1")  # fmt: skip
    try:
        assert "direct message" in await list_reminders()  # a group would read them
    finally:
        clear_session_context(token)
    token = set_session_context(platform="telegram", user_id="100", unified_user_id="alice")
    try:
        assert job.id in await list_reminders()
        assert "cancelled" in await cancel_reminder(job.id)
    finally:
        clear_session_context(token)
    assert await botos.jobs() == []
    with pytest.raises(RuntimeError, match="conversation turn"):
        await list_reminders()
