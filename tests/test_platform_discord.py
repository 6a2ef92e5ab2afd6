"""DiscordAdapter: the real discord.py client against the fake Discord in fake_discord.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import discord
import pytest
from discord.state import ConnectionState

from fake_discord import MESSAGE_CONTENT_INTENT, FakeDiscord
from onethread.errors import (
    BadRequest,
    ConfigError,
    FormattingRejected,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)
from onethread.platforms.base import Inbound
from onethread.platforms.delivery import RetryPolicy
from onethread.platforms.discord import DiscordAdapter, map_discord_errors, normalize_message
from onethread.platforms.registry import load_adapter_class

FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=60.0)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any name lookup but localhost: nothing may try to reach discord.com."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", None):
            looked_up.append(str(host))
            raise OSError(f"test guard: lookup of {host!r} refused")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield looked_up
    assert looked_up == [], f"something tried to resolve {looked_up}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


class Inbox:
    """Collects what the adapter delivers; ``next()`` skips the bot's own echoes."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Inbound] = asyncio.Queue()

    async def __call__(self, inbound: Inbound) -> None:
        await self.queue.put(inbound)

    async def next(self, *, timeout: float = 5.0, own: bool = False) -> Inbound:
        while True:
            item = await asyncio.wait_for(self.queue.get(), timeout)
            if own or not item.from_self:
                return item


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Awaitable[tuple[DiscordAdapter, Inbox]]]]:
    """Start adapters against a fake; every one is stopped at teardown."""
    adapters: list[DiscordAdapter] = []

    async def _make(server: FakeDiscord, **options: Any) -> tuple[DiscordAdapter, Inbox]:
        options.setdefault("token", server.token)
        options.setdefault("base_url", server.base_url)
        options.setdefault("gateway_url", server.gateway_url)
        options.setdefault("retry_policy", FAST)
        adapter = DiscordAdapter(**options)
        adapters.append(adapter)
        inbox = Inbox()
        await adapter.start(inbox)
        return adapter, inbox

    yield _make
    for adapter in adapters:
        await adapter.stop()


def _leftover_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


# -- construction ------------------------------------------------------------------


def test_registered_under_its_name() -> None:
    assert load_adapter_class("discord") is DiscordAdapter
    assert DiscordAdapter.name == "discord"
    assert DiscordAdapter.max_message_length == 2000


async def test_missing_token_is_named_by_start_not_construction() -> None:
    adapter = DiscordAdapter(base_url="http://127.0.0.1:1")  # constructing needs no credential

    async def never(msg: object) -> None:
        raise AssertionError(msg)

    with pytest.raises(ConfigError, match="set DISCORD_BOT_TOKEN"):
        await adapter.start(never)


def test_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="colour.*accepted: token, base_url, gateway_url"):
        DiscordAdapter(token="t", colour="blue")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "env-token")
    monkeypatch.setenv("DISCORD_API_BASE_URL", "http://127.0.0.1:1/api/v10")
    monkeypatch.setenv("DISCORD_GATEWAY_URL", "ws://127.0.0.1:1/gateway")
    adapter = DiscordAdapter()
    assert adapter._token == "env-token"
    assert adapter.base_url == "http://127.0.0.1:1/api/v10"
    assert adapter.gateway_url == "ws://127.0.0.1:1/gateway"
    assert DiscordAdapter(token="arg", base_url="http://x/api/v10").base_url == "http://x/api/v10"


# -- start -------------------------------------------------------------------------


async def test_start_logs_in_and_identifies_with_the_message_content_intent(
    fake: FakeDiscord, make: Any
) -> None:
    await make(fake)
    assert [r.path for r in fake.requests[:2]] == ["/users/@me", "/oauth2/applications/@me"]
    assert all(r.host.startswith("127.0.0.1:") for r in fake.requests)
    assert len(fake.identifies) == 1
    intents = fake.identifies[0]["intents"]
    assert intents & MESSAGE_CONTENT_INTENT
    assert intents & (1 << 9) and intents & (1 << 12)  # guild messages, direct messages
    # zstd-stream when zstandard is installed (the framework extras bring it), else zlib-stream
    compress = discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE
    assert fake.gateway_queries == [{"v": "10", "encoding": "json", "compress": compress}]
    assert fake.heartbeats >= 1


async def test_from_environment_and_gateway_url_asked_from_rest_root(
    fake: FakeDiscord, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_BOT_TOKEN", fake.token)
    monkeypatch.setenv("DISCORD_API_BASE_URL", fake.base_url)
    adapter, inbox = await make(fake, token=None, base_url=None, gateway_url=None)
    assert "/gateway/bot" in [r.path for r in fake.requests]
    await fake.inject_dm(7, "hello")
    assert (await inbox.next()).text == "hello"


async def test_bad_token_raises_auth_error_once_without_a_loop(fake: FakeDiscord) -> None:
    adapter = DiscordAdapter(token="wrong", base_url=fake.base_url, gateway_url=fake.gateway_url)
    started = time.monotonic()
    with pytest.raises(PlatformAuthError) as info:
        await adapter.start(Inbox())
    assert time.monotonic() - started < 3
    assert isinstance(info.value.__cause__, discord.LoginFailure)
    assert [(r.path, r.status) for r in fake.requests] == [("/users/@me", 401)]
    assert fake.connections == 0
    await adapter.stop()
    assert _leftover_tasks() == []


async def test_disallowed_message_content_intent_says_how_to_fix_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeDiscord(message_content_allowed=False) as server:
        adapter = DiscordAdapter(
            token=server.token, base_url=server.base_url, gateway_url=server.gateway_url
        )
        with caplog.at_level(logging.WARNING, "onethread.platforms.discord"):
            with pytest.raises(PlatformAuthError, match="Message Content intent"):
                await adapter.start(Inbox())
        assert "Message Content" in caplog.text and "developer portal" in caplog.text
        await adapter.stop()
        assert _leftover_tasks() == []


async def test_start_twice_without_stop_is_refused(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    with pytest.raises(RuntimeError, match="already started"):
        await adapter.start(inbox)


# -- inbound -----------------------------------------------------------------------


async def test_dm_arrives_normalised(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    sent = await fake.inject_dm(42, "hello there", username="Alice")
    got = await inbox.next()
    assert got == Inbound(
        platform="discord",
        chat_id=fake.dm_channel_for(42),
        chat_type="dm",
        chat_name="Alice",
        user_id="42",
        user_name="Alice",
        message_id=sent["id"],
        text="hello there",
        mentions_bot=True,
    )
    assert isinstance(got.raw, discord.Message)


async def test_guild_messages_mention_and_plain(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.inject_guild_message(fake.general_id, 43, "just chatting", username="Bob")
    plain = await inbox.next()
    assert (plain.chat_id, plain.chat_type, plain.chat_name) == (
        fake.general_id,
        "group",
        "general",
    )
    assert (plain.user_id, plain.user_name, plain.thread_id) == ("43", "Bob", "")
    assert plain.mentions_bot is False
    await fake.inject_guild_message(fake.general_id, 43, "are you there?", mention_bot=True)
    mention = await inbox.next()
    assert mention.mentions_bot is True
    assert mention.text == "are you there?"  # the leading mention is removed
    await fake.inject_guild_message(fake.general_id, 43, "/whoami")
    assert (await inbox.next()).mentions_bot is True


async def test_reply_to_a_bot_message_addresses_the_bot(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    [bot_msg_id] = await adapter.send(fake.general_id, "I am the bot")
    await fake.inject_guild_message(
        fake.general_id, 43, "answering you", reply_to=bot_msg_id, reply_ping=False
    )
    got = await inbox.next()
    assert got.mentions_bot is True and got.text == "answering you"


async def test_thread_message_has_parent_chat_and_thread_id(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    thread = await fake.create_thread(fake.general_id, name="planning")
    await fake.inject_guild_message(fake.general_id, 43, "in thread", thread_id=thread)
    got = await inbox.next()
    assert (got.chat_id, got.thread_id, got.chat_type) == (fake.general_id, thread, "group")
    assert got.chat_name == "general"


async def test_thread_unknown_to_the_cache_is_fetched(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.inject_guild_message(
        fake.random_id, 43, "surprise", thread_id=fake.snowflake(), announce_thread=False
    )
    got = await inbox.next()
    assert (got.chat_id, got.chat_type) == (fake.random_id, "group")
    assert got.thread_id != ""
    await fake.inject_guild_message(fake.random_id, 43, "again", thread_id=got.thread_id)
    assert (await inbox.next()).thread_id == got.thread_id
    fetches = [r.path for r in fake.requests if r.path == f"/channels/{got.thread_id}"]
    assert len(fetches) == 1  # remembered after the first fetch


async def test_announcement_channel_is_a_channel(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.inject_guild_message(fake.announcements_id, 43, "news")
    assert (await inbox.next()).chat_type == "channel"


async def test_bots_and_own_messages_are_marked_not_dropped(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.inject_guild_message(fake.general_id, 99, "beep", bot=True, username="OtherBot")
    other = await inbox.next()
    assert other.from_bot is True and other.from_self is False
    await adapter.send(fake.general_id, "my own words")
    own = await inbox.next(own=True)
    assert own.from_self is True and own.from_bot is True and own.text == "my own words"


async def test_redelivered_message_reaches_the_gate_twice(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    msg = await fake.inject_dm(42, "once")
    await fake.redeliver(msg)
    first, second = await inbox.next(), await inbox.next()
    assert first.message_id == second.message_id == msg["id"]


async def test_non_message_events_and_system_messages_are_ignored(
    fake: FakeDiscord, make: Any
) -> None:
    adapter, inbox = await make(fake)
    await fake.inject_event(
        "TYPING_START",
        {"channel_id": fake.general_id, "guild_id": fake.guild_id, "user_id": "43",
         "timestamp": int(time.time())},
    )  # fmt: skip
    joined = await fake.inject_guild_message(fake.general_id, 43, "")
    joined = {**joined, "type": 7, "id": fake.snowflake()}  # "X joined the server"
    await fake.inject_event("MESSAGE_CREATE", joined)
    await fake.inject_dm(42, "still alive")
    assert (await inbox.next()).text == "still alive"
    assert inbox.queue.empty()


async def test_empty_guild_content_warns_once_about_the_intent(
    fake: FakeDiscord, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    adapter, inbox = await make(fake)
    with caplog.at_level(logging.WARNING, "onethread.platforms.discord"):
        for _ in range(2):
            await fake.inject_guild_message(fake.general_id, 43, "")  # as without the intent
        await fake.inject_dm(42, "marker")
        assert (await inbox.next()).text == "marker"
    warnings = [r for r in caplog.records if "Message Content intent" in r.getMessage()]
    assert len(warnings) == 1


# -- outbound ----------------------------------------------------------------------


async def test_send_delivers_and_returns_the_id(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    ids = await adapter.send(fake.general_id, "hello **world**")
    [sent] = await fake.wait_for_messages(1)
    assert ids == [sent.id]
    assert (sent.chat_id, sent.thread_id, sent.text) == (fake.general_id, "", "hello **world**")
    assert sent.payload["allowed_mentions"]["parse"] == ["users"]  # never @everyone


async def test_reply_goes_into_the_thread(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    thread = await fake.create_thread(fake.general_id)
    await fake.inject_guild_message(fake.general_id, 43, "q", thread_id=thread, mention_bot=True)
    got = await inbox.next()
    await adapter.send(got.chat_id, "a", thread_id=got.thread_id)
    [sent] = await fake.wait_for_messages(1)
    assert (sent.channel_id, sent.chat_id, sent.thread_id) == (thread, fake.general_id, thread)


async def test_dm_reply(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.inject_dm(42, "hi")
    got = await inbox.next()
    await adapter.send(got.chat_id, "hello back")
    [sent] = await fake.wait_for_messages(1)
    assert sent.chat_id == fake.dm_channel_for(42) and sent.text == "hello back"


async def test_ten_thousand_characters_arrive_split_and_in_order(
    fake: FakeDiscord, make: Any
) -> None:
    adapter, inbox = await make(fake)
    words = [f"word{i}" for i in range(1500)]
    text = " ".join(words)
    text = text[:10_000]
    ids = await adapter.send(fake.general_id, text)
    sent = await fake.wait_for_messages(len(ids))
    assert len(sent) == len(ids) >= 5
    assert all(len(m.text) <= 2000 for m in sent)
    assert " ".join(m.text for m in sent).split() == text.split()


async def test_plain_text_escapes_markdown_since_discord_never_rejects_it(
    fake: FakeDiscord, make: Any
) -> None:
    # Discord renders Markdown client-side: no FormattingRejected ever, so base's
    # plain-text fallback never triggers. formatted=False still means "show literally".
    adapter, inbox = await make(fake)
    await adapter.do_send(fake.general_id, "**not bold**", formatted=False)
    [sent] = await fake.wait_for_messages(1)
    assert sent.text == r"\*\*not bold\*\*"


async def test_rate_limit_is_waited_out_by_discord_py(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    fake.rate_limit_next(2, retry_after=0.1)
    started = time.monotonic()
    await adapter.send(fake.general_id, "patience")
    assert time.monotonic() - started >= 0.2
    posts = [r.status for r in fake.requests if r.path.endswith("/messages")]
    assert posts == [429, 429, 200]
    assert [m.text for m in fake.sent] == ["patience"]


async def test_rate_limit_beyond_discord_py_tries_is_retried_by_our_policy(
    fake: FakeDiscord, make: Any
) -> None:
    adapter, inbox = await make(fake)
    fake.rate_limit_next(6, retry_after=0.05)  # discord.py gives up after 5
    await adapter.send(fake.general_id, "eventually")
    posts = [r.status for r in fake.requests if r.path.endswith("/messages")]
    assert posts == [429] * 6 + [200]
    assert [m.text for m in fake.sent] == ["eventually"]


async def test_server_errors_are_retried(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    fake.fail_next_5xx(2, status=503)
    await adapter.send(fake.general_id, "after outage")
    assert [m.text for m in fake.sent] == ["after outage"]


class CountingDiscord(DiscordAdapter):
    """Counts ``do_send`` attempts (a refused connection never reaches the fake)."""

    attempts = 0

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        self.attempts += 1
        return await super().do_send(chat_id, text, thread_id=thread_id, formatted=formatted)


@pytest.mark.parametrize(
    ("fault", "attempts", "error"),
    [
        ("503", 2, None),  # a server error: retried
        ("refused", FAST.attempts, PlatformUnavailable),  # never connected: every attempt
        ("cut-off", 1, OutcomeUnknown),  # posted, left unanswered: not sent again
    ],
)
async def test_send_retries_only_what_certainly_did_not_arrive(
    fake: FakeDiscord, fault: str, attempts: int, error: type[Exception] | None
) -> None:
    adapter = CountingDiscord(token=fake.token, base_url=fake.base_url,
                              gateway_url=fake.gateway_url, retry_policy=FAST)  # fmt: skip
    await adapter.start(Inbox())
    try:
        if fault == "503":
            fake.fail_next_5xx(1, status=503)
        elif fault == "cut-off":
            fake.cut_off_next()
        if error is None:
            await adapter.send(fake.general_id, "exactly once, please")
        else:
            if fault == "refused":
                await fake.stop()
            with pytest.raises(error) as info:
                await adapter.send(fake.general_id, "exactly once, please")
            assert type(info.value) is error
    finally:
        await adapter.stop()
    assert adapter.attempts == attempts
    if fault != "refused":
        assert [m.text for m in fake.sent] == ["exactly once, please"]


async def _revoke(server: FakeDiscord) -> str:
    server.revoke_token(close_gateway=False)
    return server.general_id


async def _forbid(server: FakeDiscord) -> str:
    server.forbid(server.general_id)
    return server.general_id


async def _unknown(server: FakeDiscord) -> str:
    return "123"


async def _limit(server: FakeDiscord) -> str:
    server.rate_limit_next(5, retry_after=0.05)
    return server.general_id


async def _outage(server: FakeDiscord) -> str:
    server.fail_next_5xx(1, status=503)
    return server.general_id


@pytest.mark.parametrize(
    ("prime", "text", "expected"),
    [
        (_limit, "x", RetryAfter),
        (_outage, "x", PlatformUnavailable),
        (_forbid, "x", BadRequest),
        (_unknown, "x", BadRequest),
        (_revoke, "x", PlatformAuthError),
        (_outage, "x" * 2001, PlatformUnavailable),
    ],
    ids=["429", "503", "403", "404", "401", "503-before-400"],
)
async def test_do_send_maps_http_errors(
    fake: FakeDiscord, make: Any, prime: Any, text: str, expected: type[Exception]
) -> None:
    adapter, inbox = await make(fake)
    channel = await prime(fake)
    with pytest.raises(expected) as info:
        await adapter.do_send(channel, text)
    assert not isinstance(info.value, FormattingRejected)
    assert isinstance(info.value.__cause__, discord.HTTPException)
    assert info.value.platform == "discord"
    if expected is RetryAfter:
        assert info.value.retry_after == pytest.approx(0.05)  # type: ignore[attr-defined]


async def test_too_long_is_a_bad_request(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    with pytest.raises(BadRequest, match="50035"):
        await adapter.do_send(fake.general_id, "x" * 2001)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (discord.RateLimited(3.5), RetryAfter),
        (discord.LoginFailure("bad"), PlatformAuthError),
        (discord.PrivilegedIntentsRequired(None), PlatformAuthError),
        (discord.GatewayNotFound(), PlatformUnavailable),
        (aiohttp.ConnectionTimeoutError(), PlatformUnavailable),  # never connected
        (aiohttp.ServerDisconnectedError(), OutcomeUnknown),  # cut off after sending
        (aiohttp.ClientConnectionError("reset"), OutcomeUnknown),
        (aiohttp.SocketTimeoutError(), OutcomeUnknown),  # no answer in time
        (TimeoutError(), OutcomeUnknown),
    ],
)
async def test_map_discord_errors(error: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info:
        async with map_discord_errors():
            raise error
    assert type(info.value) is expected
    assert info.value.__cause__ is error
    if isinstance(error, discord.RateLimited):
        assert info.value.retry_after == 3.5  # type: ignore[attr-defined]


async def test_send_before_start_fails_cleanly(fake: FakeDiscord) -> None:
    adapter = DiscordAdapter(token=fake.token, base_url=fake.base_url)
    with pytest.raises(Exception, match="not started"):
        await adapter.do_send(fake.general_id, "x")


async def test_typing_reaches_the_fake(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    thread = await fake.create_thread(fake.general_id)
    async with adapter.typing(fake.general_id, thread):
        await fake.wait_for_typing(1)
    await adapter.do_typing(fake.general_id)
    assert await fake.wait_for_typing(2) == [thread, fake.general_id]


# -- connection life -----------------------------------------------------------


async def test_dropped_gateway_is_resumed_by_discord_py(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    fake.drop_connection()
    await fake.inject_dm(42, "sent while down")  # replayed on RESUME
    await fake.wait_for_resumes(1)
    await fake.inject_dm(42, "after resume")
    assert (await inbox.next()).text == "sent while down"
    assert (await inbox.next()).text == "after resume"
    assert len(fake.identifies) == 1
    assert not adapter._failure_future().done()


async def test_invalid_session_leads_to_a_new_identify(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.invalidate_session(resumable=False)
    await fake.wait_for_identifies(2, timeout=10)
    await fake.inject_dm(42, "new session")
    assert (await inbox.next(timeout=10)).text == "new session"


async def test_fatal_gateway_close_is_reported(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    fake.revoke_token()  # the gateway closes with 4004
    failure = await asyncio.wait_for(adapter.wait_failure(), 5)
    assert isinstance(failure, PlatformAuthError)
    await adapter.stop()
    with pytest.raises(PlatformAuthError):  # a restart does not loop: it fails at login
        await adapter.start(inbox)


async def test_restart_after_failure_and_after_stop(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.close_connection(4010)  # "invalid shard": discord.py gives up
    failure = await asyncio.wait_for(adapter.wait_failure(), 5)
    assert "4010" in str(failure)
    await adapter.stop()
    adapter.reset_failure()
    await adapter.start(inbox)
    await fake.inject_dm(42, "back")
    assert (await inbox.next()).text == "back"
    await adapter.stop()
    await adapter.start(inbox)
    await fake.inject_dm(42, "again")
    assert (await inbox.next()).text == "again"
    assert len(fake.identifies) == 3


async def test_stop_is_prompt_idempotent_and_leaves_nothing(fake: FakeDiscord, make: Any) -> None:
    adapter, inbox = await make(fake)
    await fake.inject_dm(42, "x")
    await inbox.next()
    started = time.monotonic()
    await adapter.stop()
    await adapter.stop()
    assert time.monotonic() - started < 5
    assert _leftover_tasks() == []
    await fake.wait_until(lambda: not fake._conns, what="the gateway socket to close")
    for _ in range(50):  # discord.py's heartbeat thread exits once it wakes up
        if not [t for t in threading.enumerate() if t.name.startswith("keep-alive")]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("discord.py heartbeat thread still running")


# -- normalisation on real discord.py objects -------------------------------------


@pytest.fixture
def state(fake: FakeDiscord) -> ConnectionState[Any]:
    """A discord.py connection state holding the fake's bot user and guild."""
    intents = discord.Intents.default()
    intents.message_content = True
    client = discord.Client(intents=intents)
    conn = client._connection
    conn.user = discord.ClientUser(state=conn, data=fake._bot_user())  # type: ignore[arg-type]
    conn._add_guild_from_data(fake._guild())  # type: ignore[arg-type]
    return conn


def _message(state: ConnectionState[Any], data: dict[str, Any]) -> discord.Message:
    channel, _ = state._get_guild_channel(data)  # type: ignore[arg-type]
    return discord.Message(state=state, channel=channel, data=data)  # type: ignore[arg-type]


async def test_normalize_dm(fake: FakeDiscord, state: ConnectionState[Any]) -> None:
    data = await fake.inject_dm(5, "hey", username="Carol")
    got = normalize_message(_message(state, data), bot_id=fake.bot_id)
    assert got is not None
    assert (got.chat_type, got.chat_id, got.user_name, got.mentions_bot) == (
        "dm", data["channel_id"], "Carol", True,
    )  # fmt: skip


async def test_normalize_guild_thread_and_mentions(
    fake: FakeDiscord, state: ConnectionState[Any]
) -> None:
    thread = await fake.create_thread(fake.general_id, name="t")
    state._add_guild_from_data(fake._guild())  # type: ignore[arg-type]
    data = await fake.inject_guild_message(
        fake.general_id, 6, "hello", mention_bot=True, thread_id=thread
    )
    got = normalize_message(_message(state, data), bot_id=fake.bot_id)
    assert got is not None
    assert (got.chat_id, got.thread_id, got.text, got.mentions_bot) == (
        fake.general_id, thread, "hello", True,
    )  # fmt: skip
    data = await fake.inject_guild_message(fake.general_id, 6, "<@1> not me")
    got = normalize_message(_message(state, data), bot_id=fake.bot_id)
    assert got is not None and got.mentions_bot is False and got.text == "<@1> not me"


async def test_normalize_ignores_system_and_empty_messages(
    fake: FakeDiscord, state: ConnectionState[Any]
) -> None:
    data = await fake.inject_guild_message(fake.general_id, 6, "pinned a message")
    assert normalize_message(_message(state, {**data, "type": 6}), bot_id=fake.bot_id) is None
    data = await fake.inject_guild_message(fake.general_id, 6, "")
    assert normalize_message(_message(state, data), bot_id=fake.bot_id) is None
    data = await fake.inject_guild_message(fake.general_id, 6, "", mention_bot=True)
    assert normalize_message(_message(state, data), bot_id=fake.bot_id) is None


# -- what a user reads when Discord cannot be reached ---------------------------------


async def test_a_dns_failure_is_one_readable_line() -> None:
    from aiohttp.client_reqrep import ConnectionKey

    key = ConnectionKey("discord.com", 443, True, True, None, None, None)
    dns = aiohttp.ClientConnectorDNSError(key, socket.gaierror(-2, "Name or service not known"))
    with pytest.raises(PlatformUnavailable) as info:
        async with map_discord_errors():
            raise dns
    text = str(info.value)
    assert text == (
        "discord: network error: Cannot connect to host discord.com:443 ssl:default "
        "[Name or service not known]"
    )
    assert "ConnectionKey" not in text and "\n" not in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_logs_no_voice_noise_and_one_short_line(tmp_path: Any) -> None:
    """A fresh process, as `onethread run` is: discord.py's voice warnings are given
    once per process, at the first Client."""
    import subprocess
    import sys

    script = f"""
import asyncio, logging
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from onethread.platforms.discord import DiscordAdapter
from onethread.errors import PlatformUnavailable

async def main():
    adapter = DiscordAdapter(token="obviously-fake", base_url="http://127.0.0.1:{_closed_port()}")
    async def never(msg):
        raise AssertionError(msg)
    try:
        await adapter.start(never)
    except PlatformUnavailable as exc:
        print("ERROR:", exc)

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "voice will NOT be supported" not in result.stderr
    assert "PyNaCl" not in result.stderr and "davey" not in result.stderr
    [line] = [x for x in result.stdout.splitlines() if x.startswith("ERROR:")]
    assert "Cannot connect to host 127.0.0.1" in line and len(line) < 200, line
