"""Long conversations: the token budget, summaries, /new archives (issue 16).

Through the real ``openai`` SDK against tests/fake_openai.py, whose fake model
answers from what it was sent and reports ``usage.prompt_tokens`` (its own
count: words).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fake_openai import FakeOpenAI, FakeReply, error
from onethread.agent import Agent, OpenAIModel, tokens
from onethread.agent.summary import EXTRACT_HEADER, SUMMARY_ROLE, SUMMARY_SYSTEM
from onethread.bots import BotSessionManager
from onethread.session.history.memory import MemoryHistoryStore
from onethread.session.keys import archive_key, summary_key
from services import redis_prefix, redis_url

KEY = "bot_console_u1"
FILLER = "Tell me something interesting about rivers and mountains and the sea, please."
ANSWER = "Rivers carve valleys over long ages, and mountains rise where the plates meet."
SUMMARY_MARK = SUMMARY_SYSTEM.split(".")[0]


def _fake_summary(body: dict[str, Any]) -> str:
    """The fake summariser: the previous summary, plus every new line holding a digit."""
    text = str(body["messages"][-1]["content"])
    before, _, rest = text.partition("\n\nNEW MESSAGES:\n")
    previous = before.removeprefix("PREVIOUS SUMMARY:\n")
    new = rest.partition("\n\nUPDATED SUMMARY:")[0]
    lines = [] if previous == "(none yet)" else previous.splitlines()
    # Each line starts with its provenance "[YYYY-MM-DD ...]": look for digits after it.
    lines += [line for line in new.splitlines() if re.search(r"\d", line.partition("]")[2])]
    return "\n".join(lines) or "Nothing worth keeping yet."


def _is_summary(body: dict[str, Any]) -> bool:
    return str(body["messages"][0].get("content", "")).startswith(SUMMARY_MARK)


def _fake_chat(body: dict[str, Any]) -> str:
    """The fake model: answers the lucky-number question from what it was sent."""
    messages = body["messages"]
    if "what is my lucky number" in str(messages[-1]["content"]).lower():
        sent = "\n".join(str(m.get("content") or "") for m in messages[:-1])
        found = re.search(r"lucky number is (\d+)", sent)
        return f"Your lucky number is {found.group(1)}." if found else "I do not know."
    return ANSWER


def handler(body: dict[str, Any]) -> str:
    return _fake_summary(body) if _is_summary(body) else _fake_chat(body)


@pytest.fixture(autouse=True)
def _fresh_corrections() -> None:
    tokens.forget_corrections()


def _agent(server: FakeOpenAI, **kw: Any) -> Agent:
    model = OpenAIModel("fake-model", base_url=server.base_url, api_key="sk-test", **kw)
    return Agent("helper", instructions="You are a helpful assistant.", model=model)


def _words(body: dict[str, Any]) -> int:
    """The fake server's own prompt count (as it reports in usage.prompt_tokens)."""
    return sum(len(str(m.get("content") or "").split()) for m in body["messages"])


async def _settle(manager: BotSessionManager) -> None:
    while manager.compaction.pending:
        await asyncio.gather(*manager.compaction.pending.values(), return_exceptions=True)


async def test_300_turns_within_budget_keep_the_lucky_number() -> None:
    async with FakeOpenAI(handler) as server:
        agent = _agent(server)
        manager = BotSessionManager(MemoryHistoryStore(), context_tokens=2000)
        seen = 0
        for turn in range(1, 301):
            ratio = tokens.correction("fake-model")
            if turn == 1:
                prompt = "my lucky number is 7"
            elif turn == 300:
                prompt = "What is my lucky number?"
            else:
                prompt = FILLER
            reply = await manager.chat(agent, "u1", prompt, platform="console")
            for body in server.requests[seen:]:
                assert _words(body) <= 2000, turn  # the fake's count
                estimate = tokens.estimate_messages(body["messages"], body.get("tools") or ())
                if ratio != 1.0 or turn == 1:
                    assert estimate * ratio <= 2000, (turn, estimate, ratio)
            seen = len(server.requests)
            if turn < 300:
                await asyncio.sleep(0)  # folds run between turns, as they would live
        assert reply == "Your lucky number is 7."
        await _settle(manager)
        turns = [b for b in server.requests if not _is_summary(b)]
        folds = [b for b in server.requests if _is_summary(b)]
        assert folds, "no summary was ever asked for"
        last = turns[-1]["messages"]
        # The first message itself is long out of the window: the number came from the summary.
        assert not any(m["content"] == "my lucky number is 7" for m in last)
        assert any("SUMMARY of the earlier conversation" in str(m["content"]) for m in last)
        later = [b for b in turns[50:] if "lucky number is 7" in str(b["messages"])]
        assert later, "no later request carried the summary"
        summaries = await manager.store.load(summary_key(KEY))
        assert summaries and all(s.role == SUMMARY_ROLE for s in summaries)
        # Each fold updates the last: ranges follow each other, covers start at the first turn.
        first = (await manager.store.load(KEY))[0].timestamp
        for before, after in zip(summaries, summaries[1:], strict=False):
            assert after.metadata["folded"][0] > before.metadata["folded"][1]
            assert after.metadata["covers"][0] == first
        assert summaries[-1].metadata["platforms"] == ["console"]
        assert summaries[-1].metadata["kind"] == "summary"
        # The full history stays in the store.
        assert await manager.store.count(KEY) == 600
        await manager.close()


async def test_a_failing_summary_leaves_the_turn_answered_and_is_retried() -> None:
    failures = {"left": 2}

    def flaky(body: dict[str, Any]) -> FakeReply | str:
        if _is_summary(body) and failures["left"] > 0:
            failures["left"] -= 1
            return error(500)
        return handler(body)

    async with FakeOpenAI(flaky) as server:
        agent = _agent(server, max_retries=0)
        manager = BotSessionManager(MemoryHistoryStore(), context_tokens=600)
        await manager.chat(agent, "u1", "my lucky number is 7", platform="console")
        replies = []
        for _ in range(40):
            replies.append(await manager.chat(agent, "u1", FILLER, platform="console"))
            await _settle(manager)
        assert replies == [ANSWER] * 40  # every turn answered while the summary failed
        assert manager.compaction.failures == 2
        assert failures["left"] == 0
        summaries = await manager.store.load(summary_key(KEY))
        assert summaries, "the summary was never retried"
        assert "lucky number is 7" in summaries[-1].content
        await manager.close()


async def test_failures_pause_after_max_in_a_row() -> None:
    async with FakeOpenAI(lambda b: error(500) if _is_summary(b) else handler(b)) as server:
        agent = _agent(server, max_retries=0)
        manager = BotSessionManager(MemoryHistoryStore(), context_tokens=600)
        for _ in range(40):
            await manager.chat(agent, "u1", FILLER, platform="console")
            await _settle(manager)
        assert manager.compaction.failures == manager.compaction.max_failures
        assert sum(map(_is_summary, server.requests)) == manager.compaction.max_failures
        await manager.close()


async def test_the_offline_model_keeps_an_honest_extract() -> None:
    manager = BotSessionManager(MemoryHistoryStore(), context_tokens=400)
    agent = Agent("offline")  # no model configured
    await manager.chat(agent, "u1", "my lucky number is 7", platform="console")
    for i in range(30):
        await manager.chat(agent, "u1", f"{FILLER} ({'x' * i})", platform="console")
        await _settle(manager)
    summaries = await manager.store.load(summary_key(KEY))
    assert summaries and summaries[-1].metadata["kind"] == "extract"
    text = summaries[-1].content
    assert text.startswith(EXTRACT_HEADER)
    lines = text.splitlines()[1:]
    assert all("person on console" in line for line in lines)  # only the person's own words
    assert tokens.estimate(text) <= 400 // 4
    await manager.close()


async def test_compact_folds_now_and_says_how_much() -> None:
    async with FakeOpenAI(handler) as server:
        agent = _agent(server)
        manager = BotSessionManager(MemoryHistoryStore(), context_tokens=16_000)
        for text in ("my lucky number is 7", "I live in Lyon", "hello"):
            await manager.chat(agent, "u1", text, platform="console")
        assert not await manager.store.load(summary_key(KEY))  # far below the budget
        folded = await manager.compact(agent, "u1", platform="console")
        assert folded == 4  # all but the last exchange
        summary = (await manager.store.load(summary_key(KEY)))[-1]
        assert "lucky number is 7" in summary.content
        history, _ = await manager.compaction.load(KEY, agent, (await manager.store.load(KEY))[0])
        assert [e.role for e in history] == [SUMMARY_ROLE, "user", "assistant"]
        await manager.close()


async def test_new_archives_instead_of_deleting() -> None:
    manager = BotSessionManager(MemoryHistoryStore())
    agent = Agent("offline")
    await manager.chat(agent, "u1", "my lucky number is 7", platform="console")
    moved = await manager.reset("u1", platform="console")
    assert moved == 2
    assert await manager.store.load(KEY) == []
    archived = await manager.store.load(archive_key(KEY))
    assert [e.content for e in archived][0] == "my lucky number is 7"
    data = await manager.export("console:u1")
    assert archive_key(KEY) in data["sessions"]
    assert await manager.forget("console:u1") == 2
    assert await manager.store.load(archive_key(KEY)) == []
    await manager.close()


async def test_two_hosts_on_one_redis_never_fold_the_same_range_twice() -> None:
    from onethread.session.history.redis import RedisHistoryStore
    from onethread.session.locks.redis import RedisTurnLocks

    slow = {"calls": 0}

    async def slow_summary(body: dict[str, Any]) -> str:
        if _is_summary(body):
            slow["calls"] += 1
            await asyncio.sleep(0.05)  # a wide window for a second host to fold too
        return handler(body)

    with redis_prefix() as prefix:
        async with FakeOpenAI(slow_summary) as server:
            hosts = [
                BotSessionManager(
                    RedisHistoryStore(redis_url(), prefix=prefix),
                    locks=RedisTurnLocks(redis_url(), prefix=prefix),
                    context_tokens=700,
                )
                for _ in range(2)
            ]
            agents = [_agent(server), _agent(server)]
            await hosts[0].chat(agents[0], "u1", "my lucky number is 7", platform="console")
            for i in range(30):
                host = i % 2
                await hosts[host].chat(agents[host], "u1", FILLER, platform="console")
                if i % 5 == 4:  # both hosts fold at once, as two processes would
                    await asyncio.gather(
                        *(
                            h.compact(a, "u1", platform="console")
                            for h, a in zip(hosts, agents, strict=True)
                        )
                    )
            for h in hosts:
                await _settle(h)
            summaries = await hosts[0].store.load(summary_key(KEY))
            assert len(summaries) >= 2
            ranges = [s.metadata["folded"] for s in summaries]
            for before, after in zip(ranges, ranges[1:], strict=False):
                assert after[0] > before[1], ranges  # never the same range twice
            folded = sum(r[2] for r in ranges)
            assert folded <= await hosts[0].store.count(KEY)
            assert slow["calls"] == len(summaries)
            for h in hosts:
                await h.close()


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onethread", *args],
        cwd=cwd,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


async def test_new_then_history_show_archived(tmp_path: Path, _isolated_env: Path) -> None:
    from onethread.bots.commands import CommandRouter
    from onethread.platforms.base import Inbound
    from onethread.session.identity.file import FileIdentityResolver
    from onethread.session.urls import open_history_store

    resolver = FileIdentityResolver(_isolated_env / "identity.json")
    resolver.link("telegram", "12345", "alice")
    manager = BotSessionManager(
        store=open_history_store(f"sqlite:///{_isolated_env / 'history.db'}"),
        identity_resolver=resolver,
    )
    agent = Agent("offline")
    await manager.chat(agent, "12345", "my lucky number is 7", platform="telegram")
    await manager.compact(agent, "12345", platform="telegram")  # nothing yet: 1 exchange
    router = CommandRouter(manager, agent=agent)
    said = await router.handle(
        Inbound(platform="telegram", chat_id="12345", chat_type="dm", user_id="12345", text="/new")
    )
    assert said is not None and "2 earlier messages archived" in said
    await manager.chat(agent, "12345", "a fresh start", platform="telegram")
    history, _ = await manager.compaction.load(
        "user:alice", agent, (await manager.store.load("user:alice"))[-1]
    )
    assert "my lucky number is 7" not in str(history)  # archived: not loaded
    await manager.close()

    current = _cli(tmp_path, "history", "show", "alice")
    assert current.returncode == 0, current.stderr
    assert "a fresh start" in current.stdout and "lucky" not in current.stdout
    archived = _cli(tmp_path, "history", "show", "alice", "--archived")
    assert archived.returncode == 0, archived.stderr
    assert "my lucky number is 7" in archived.stdout and "a fresh start" not in archived.stdout
    export = json.loads(_cli(tmp_path, "history", "export", "alice").stdout)
    assert "user:alice#archived" in export["sessions"]
    sessions = json.loads(_cli(tmp_path, "sessions", "--json").stdout)
    assert [row["key"] for row in sessions] == ["user:alice"]


async def test_history_show_marks_summaries(tmp_path: Path, _isolated_env: Path) -> None:
    from onethread.session.urls import open_history_store

    manager = BotSessionManager(
        store=open_history_store(f"sqlite:///{_isolated_env / 'history.db'}")
    )
    agent = Agent("offline")
    for text in ("my lucky number is 7", "one", "two"):
        await manager.chat(agent, "u1", text, platform="console")
    assert await manager.compact(agent, "u1", platform="console") == 4
    await manager.close()
    show = _cli(tmp_path, "history", "show", "console:u1")
    assert show.returncode == 0, show.stderr
    assert "[SUMMARY of 4 more entries]" in show.stdout
    assert "[SUMMARY of 4 more entries]: (Extract, not a summary" in show.stdout
    assert "person on console] my lucky number is 7" in show.stdout


class _Recorder:
    """A plain Responder that records the history it was handed."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    async def respond(self, history: Any, message: Any, *, group: bool = False) -> str:
        self.seen.append(list(history))
        return "ok " * 40


async def test_a_responder_gets_the_summary_first_as_role_summary() -> None:
    from onethread.agent.messages import build_messages

    async with FakeOpenAI(handler) as server:
        recorder = _Recorder()
        recorder.summary_model = OpenAIModel(  # type: ignore[attr-defined]
            "fake-model", base_url=server.base_url, api_key="sk-test"
        )
        manager = BotSessionManager(MemoryHistoryStore(), context_tokens=500)
        await manager.chat(recorder, "u1", "my lucky number is 7", platform="console")
        for _ in range(20):
            await manager.chat(recorder, "u1", FILLER, platform="console")
            await _settle(manager)
        last = recorder.seen[-1]
        assert last[0].role == SUMMARY_ROLE and "lucky number is 7" in last[0].content
        assert all(e.role != SUMMARY_ROLE for e in last[1:])
        messages = build_messages("", last, last[-1])
        assert messages[1]["role"] == "assistant"  # the summary: the assistant's side
        assert messages[1]["content"].startswith("[SUMMARY of the earlier conversation, ")
        await manager.close()
        await recorder.summary_model.aclose()  # type: ignore[attr-defined]


def test_default_budget_from_the_model_table() -> None:
    assert tokens.default_budget("gpt-4o-mini") == 128_000 - 8_192
    assert tokens.default_budget("openai/gpt-4o") == 128_000 - 8_192
    assert tokens.default_budget("gpt-4") == 8_192 - 1_638
    assert tokens.default_budget("some-local-model") == 16_000 - 3_200
    assert tokens.default_budget(None) == 16_000 - 3_200
    manager = BotSessionManager(MemoryHistoryStore())
    assert manager.compaction.budget(Agent("a", context_tokens=3000)) == 3000
    assert (
        BotSessionManager(MemoryHistoryStore(), context_tokens=900).compaction.budget(
            Agent("a", context_tokens=3000)
        )
        == 900
    )


def test_usage_corrects_the_estimate_per_model() -> None:
    tokens.observe("m1", 1000, 500)
    assert tokens.correction("m1") == 0.5
    assert tokens.correction("m2") == 1.0
    tokens.observe("m1", 1000, 2000)
    assert 0.5 < tokens.correction("m1") < 2.0


async def test_loading_stops_at_the_budget_whatever_the_history_size() -> None:
    from onethread.session.history.base import HistoryEntry

    class Counting(MemoryHistoryStore):
        asked: list[int | None] = []

        async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
            self.asked.append(limit)
            return await super().load(key, limit)

    store = Counting()
    entries = [
        HistoryEntry(role="user" if i % 2 == 0 else "assistant", content=FILLER, timestamp=i)
        for i in range(100_000)
    ]
    await store.append(KEY, entries)
    manager = BotSessionManager(store, context_tokens=2000)
    message = HistoryEntry(role="user", content="hi", timestamp=200_000.0)
    history, due = await manager.compaction.load(KEY, Agent("a"), message)
    assert due and 40 < len(history) < 200
    assert all(limit is not None and limit <= 2048 for limit in store.asked)


@pytest.mark.parametrize(
    ("mode", "last_ago", "due"),
    [("never", 10**6, False), ("idle", 60, False), ("idle", 4 * 3600, True)],
)
def test_reset_policy_idle(mode: str, last_ago: float, due: bool) -> None:
    from onethread.session.reset import ResetPolicy

    policy = ResetPolicy(mode, idle_minutes=240)
    assert policy.due(1_000_000.0 - last_ago, 1_000_000.0) is due


def test_reset_policy_daily_and_bad_values() -> None:
    import datetime as dt

    from onethread.session.reset import ResetPolicy

    policy = ResetPolicy("daily", daily_at="04:00")
    at = dt.datetime(2026, 5, 3, 5, 0, tzinfo=dt.UTC).timestamp()
    assert policy.due(at - 2 * 3600, at)  # 03:00, before today's 04:00
    assert not policy.due(at - 1800, at)  # 04:30
    with pytest.raises(ValueError, match="never, idle or daily"):
        ResetPolicy("weekly")
    with pytest.raises(ValueError, match="HH:MM"):
        ResetPolicy("daily", daily_at="4am")


async def test_an_idle_session_is_archived_before_the_next_message() -> None:
    from onethread.session.reset import ResetPolicy

    manager = BotSessionManager(MemoryHistoryStore(), reset=ResetPolicy("idle", idle_minutes=1))
    agent = _Recorder()
    await manager.chat(agent, "u1", "my lucky number is 7", platform="console")
    await manager.chat(agent, "u1", "still here", platform="console")
    assert len(agent.seen[-1]) == 2  # not idle: same conversation
    old = await manager.store.load(KEY)
    store = MemoryHistoryStore()  # the same entries, two minutes older
    await store.append(KEY, [replace(e, timestamp=e.timestamp - 120) for e in old])
    manager._store = store
    await manager.chat(agent, "u1", "back again", platform="console")
    assert agent.seen[-1] == []  # a fresh conversation...
    assert len(await store.load(archive_key(KEY))) == 4  # ...the old one archived
    await manager.close()


def test_config_session_section(tmp_path: Path) -> None:
    from onethread.config import ConfigFileError, load_config

    good = tmp_path / "onethread.yaml"
    good.write_text(
        "context_tokens: 4000\nagent: {summary_model: small}\n"
        "session: {reset: daily, daily_at: '03:30'}\n"
    )
    config = load_config(good)
    assert config.context_tokens == 4000 and config.agent.summary_model == "small"
    assert (config.session.reset, config.session.daily_at) == ("daily", "03:30")
    bad = tmp_path / "bad.yaml"
    bad.write_text("session: {reset: weekly}\n")
    with pytest.raises(ConfigFileError, match="session.reset"):
        load_config(bad)


async def test_a_summary_that_times_out_is_retried_and_never_delays_a_reply() -> None:
    slow = {"left": 1, "overlapped": 0}
    servers: list[FakeOpenAI] = []

    def handler_slow(body: dict[str, Any]) -> FakeReply | str:
        if _is_summary(body) and slow["left"] > 0:
            slow["left"] -= 1
            return FakeReply(content=_fake_summary(body), delay=2.0)
        if not _is_summary(body) and servers[0].in_flight > 1:
            slow["overlapped"] += 1  # a turn answered while the summary was pending
        return handler(body)

    async with FakeOpenAI(handler_slow) as server:
        servers.append(server)
        agent = _agent(server, max_retries=0)
        manager = BotSessionManager(MemoryHistoryStore(), context_tokens=600, summary_timeout=0.3)
        await manager.chat(agent, "u1", "my lucky number is 7", platform="console")
        for _ in range(30):
            reply = await manager.chat(agent, "u1", FILLER, platform="console")
            assert reply == ANSWER
        await _settle(manager)
        assert manager.compaction.failures == 1 and slow["left"] == 0
        assert slow["overlapped"] > 0  # turns went on while the summary hung
        await manager.chat(agent, "u1", FILLER, platform="console")  # the next turn retries
        await _settle(manager)
        summaries = await manager.store.load(summary_key(KEY))
        assert summaries and "lucky number is 7" in summaries[-1].content
        await manager.close()


def test_the_summariser_sees_provenance_of_mirrors_and_attachments() -> None:
    import datetime as dt

    from onethread.agent.summary import provenance_line
    from onethread.session.attachments import Attachment
    from onethread.session.history.base import HistoryEntry

    may3 = dt.datetime(2026, 5, 3, 9, 0, tzinfo=dt.UTC).timestamp()
    reminder = HistoryEntry(
        role="assistant",
        content="Stand-up in 5 minutes",
        timestamp=may3,
        platform="telegram",
        mirror=True,
        source="cron",
    )
    assert provenance_line(reminder) == (
        "[2026-05-03 09:00 UTC, cron sent by the bot on its own on telegram] "
        "[sent by the bot on its own via cron] Stand-up in 5 minutes"
    )
    voice = HistoryEntry(
        role="user",
        content="",
        timestamp=may3,
        platform="discord",
        user_name="Alice",
        attachments=(Attachment("voice", "audio/ogg", transcript="call Bob at 10"),),
    )
    line = provenance_line(voice)
    assert line.startswith("[2026-05-03 09:00 UTC, person (Alice) on discord]")
    assert "call Bob at 10" in line
