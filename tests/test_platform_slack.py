"""The Slack adapter: the real slack-bolt/slack-sdk against a protocol-faithful fake Slack."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_slack import FakeSlack
from helpers import RecordingAgent
from onethread.bots import Bot
from onethread.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    FormattingRejected,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformError,
    PlatformUnavailable,
    RetryAfter,
)
from onethread.platforms.base import Inbound
from onethread.platforms.delivery import RetryPolicy
from onethread.platforms.registry import load_adapter_class
from onethread.platforms.slack import SlackAdapter, normalize_event

pytestmark = pytest.mark.timeout(30)

BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.05, max_delay=5.0)


class Inbox:
    """Collects what the adapter hands to ``on_inbound``."""

    def __init__(self) -> None:
        self.items: list[Inbound] = []
        self._changed = asyncio.Event()

    async def __call__(self, msg: Inbound) -> None:
        self.items.append(msg)
        self._changed.set()

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Inbound]:
        async with asyncio.timeout(timeout):
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()
        return list(self.items)

    def people(self) -> list[Inbound]:
        """Messages that are not the bot's own echoes."""
        return [m for m in self.items if not m.from_self]


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSlack]:
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)  # the Socket Mode client would use them
    async with FakeSlack() as server:
        server.add_user("U1", "alice", display_name="Alice A.")
        yield server


def make_adapter(fake: FakeSlack, **options: Any) -> SlackAdapter:
    options.setdefault("ping_interval", 0.5)
    options.setdefault("connect_timeout", 5.0)
    options.setdefault("retry_policy", FAST_RETRY)
    return SlackAdapter(
        token=fake.bot_token, app_token=fake.app_token, base_url=fake.base_url, **options
    )


@pytest.fixture
async def running(fake: FakeSlack) -> AsyncIterator[tuple[SlackAdapter, Inbox]]:
    adapter = make_adapter(fake)
    inbox = Inbox()
    await adapter.start(inbox)
    try:
        yield adapter, inbox
    finally:
        await adapter.stop()


def only_local(fake: FakeSlack) -> None:
    assert fake.requests, "no request reached the fake"
    assert {r.host for r in fake.requests} == {"127.0.0.1"}


# -- normalize_event: pure, on Slack's JSON ---------------------------------------

DM_JSON = """{"type": "message", "channel": "D0DM1", "user": "U1", "text": "hi &lt;b&gt; &amp; co",
  "ts": "1700000001.000100", "event_ts": "1700000001.000100", "channel_type": "im",
  "client_msg_id": "5f1c", "team": "T0FAKE"}"""
CHANNEL_JSON = """{"type": "message", "channel": "C0GEN", "user": "U1",
  "text": "<@U0BOT> /whoami", "ts": "1700000002.000200", "channel_type": "channel"}"""
MENTION_JSON = """{"type": "app_mention", "channel": "C0GEN", "user": "U1",
  "text": "<@U0BOT> /whoami", "ts": "1700000002.000200", "event_ts": "1700000002.000200"}"""


def norm(raw: str | dict[str, Any]) -> Inbound | None:
    event = json.loads(raw) if isinstance(raw, str) else raw
    return normalize_event(event, bot_user_id=BOT_USER, bot_id=BOT_ID)


def test_normalize_dm() -> None:
    msg = norm(DM_JSON)
    assert msg is not None
    assert (msg.platform, msg.chat_id, msg.chat_type, msg.user_id) == ("slack", "D0DM1", "dm", "U1")
    assert msg.message_id == "D0DM1:1700000001.000100"
    assert msg.thread_id == ""  # a DM outside a thread is answered outside a thread
    assert msg.text == "hi <b> & co"
    assert msg.mentions_bot and not msg.from_bot and not msg.from_self


def test_normalize_dm_in_thread_keeps_the_thread() -> None:
    event = json.loads(DM_JSON) | {"thread_ts": "1700000000.000001", "parent_user_id": "U1"}
    msg = norm(event)
    assert msg is not None and msg.thread_id == "1700000000.000001"


def test_mention_as_message_and_app_mention_is_one_message() -> None:
    as_message, as_mention = norm(CHANNEL_JSON), norm(MENTION_JSON)
    assert as_message is not None and as_mention is not None
    assert as_message.message_id == as_mention.message_id == "C0GEN:1700000002.000200"
    for msg in (as_message, as_mention):
        assert msg.chat_type == "group"
        assert msg.mentions_bot
        assert msg.text == "/whoami"  # the leading mention is stripped: a command
        assert msg.thread_id == "1700000002.000200"  # top-level: the reply starts a thread


def test_normalize_channel_messages() -> None:
    plain = norm({"type": "message", "channel": "G0PRIV", "user": "U2", "text": "lunch?",
                  "ts": "5.1", "channel_type": "group"})  # fmt: skip
    assert plain is not None and plain.chat_type == "group" and not plain.mentions_bot
    in_thread = norm({"type": "message", "channel": "C0GEN", "user": "U2", "text": "more",
                      "ts": "6.1", "thread_ts": "4.1", "parent_user_id": BOT_USER,
                      "channel_type": "channel"})  # fmt: skip
    assert in_thread is not None
    assert in_thread.thread_id == "4.1"
    assert in_thread.mentions_bot  # a reply in the bot's thread addresses the bot
    mid = norm({"type": "message", "channel": "C0GEN", "user": "U2",
                "text": "ask <@U0BOT> about it", "ts": "7.1"})  # fmt: skip
    assert mid is not None and mid.mentions_bot and mid.text == "ask <@U0BOT> about it"


def test_normalize_bots_and_self() -> None:
    other = norm({"type": "message", "subtype": "bot_message", "channel": "C0GEN",
                  "text": "build ok", "ts": "8.1", "bot_id": "B0CI", "username": "ci"})  # fmt: skip
    assert other is not None
    assert other.from_bot and not other.from_self
    assert (other.user_id, other.user_name) == ("B0CI", "ci")
    own = norm({"type": "message", "channel": "C0GEN", "user": BOT_USER, "bot_id": BOT_ID,
                "text": "my reply", "ts": "9.1", "thread_ts": "2.1",
                "bot_profile": {"name": "onethread"}})  # fmt: skip
    assert own is not None and own.from_self and own.from_bot


@pytest.mark.parametrize(
    "event",
    [
        {"type": "message", "subtype": "message_changed", "channel": "C0GEN", "ts": "1.1",
         "message": {"user": "U1", "text": "edited"}},
        {"type": "message", "subtype": "message_deleted", "channel": "C0GEN", "ts": "1.2"},
        {"type": "message", "subtype": "channel_join", "channel": "C0GEN", "user": "U1",
         "ts": "1.3", "text": "<@U1> has joined"},
        {"type": "reaction_added", "user": "U1", "reaction": "tada",
         "item": {"type": "message", "channel": "C0GEN", "ts": "1.1"}},
        {"type": "message", "channel": "C0GEN", "text": "no sender", "ts": "1.4"},
    ],
)  # fmt: skip
def test_normalize_ignores_non_messages(event: dict[str, Any]) -> None:
    assert norm(event) is None


# -- construction ----------------------------------------------------------------


def test_registry_loads_the_adapter() -> None:
    assert load_adapter_class("slack") is SlackAdapter


def test_tokens_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-env")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-env")
    monkeypatch.setenv("SLACK_API_BASE_URL", "http://127.0.0.1:9/api")
    adapter = SlackAdapter()
    assert adapter.base_url == "http://127.0.0.1:9/api/"  # slack-sdk needs the slash
    assert adapter.web.base_url == adapter.base_url
    assert adapter.web.token == "xoxb-env"


@pytest.mark.parametrize(
    ("kwargs", "env", "named"),
    [
        ({"app_token": "xapp-1"}, {}, "SLACK_BOT_TOKEN"),
        ({"token": "xoxb-1"}, {}, "SLACK_APP_TOKEN"),
        ({"token": "xoxp-user", "app_token": "xapp-1"}, {}, "SLACK_BOT_TOKEN"),
        ({"token": "xoxb-1", "app_token": "xoxb-1"}, {}, "SLACK_APP_TOKEN"),
        ({}, {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "nope"}, "SLACK_APP_TOKEN"),
    ],
)
async def test_bad_credentials_are_config_errors_from_start(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    adapter = SlackAdapter(base_url="http://127.0.0.1:1/", **kwargs)  # constructing checks none

    async def never(msg: object) -> None:
        raise AssertionError(msg)

    with pytest.raises(ConfigError, match=named):
        await adapter.start(never)  # before any request: port 1 would refuse it


def test_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="colour.*accepted: token, app_token, base_url"):
        SlackAdapter(token="xoxb-1", app_token="xapp-1", colour="red")


# -- start, inbound --------------------------------------------------------------


async def test_start_identifies_and_connects(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    adapter, _ = running
    assert (adapter.bot_user_id, adapter.bot_id, adapter.bot_name) == (
        BOT_USER,
        BOT_ID,
        "onethread",
    )
    assert [r.method for r in fake.requests] == ["auth.test", "apps.connections.open"]
    assert [r.token_kind for r in fake.requests] == ["bot", "app"]
    assert fake.connections == 1
    only_local(fake)


async def test_dm_arrives_normalised_and_acked(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    _, inbox = running
    envelope_count = len(fake.envelopes)
    event = await fake.inject_dm("U1", "hello there")
    (msg,) = await inbox.wait_for(1)
    dm = fake.dm_channel_for("U1")
    assert (msg.chat_id, msg.chat_type, msg.user_id, msg.text) == (dm, "dm", "U1", "hello there")
    assert msg.message_id == f"{dm}:{event['ts']}"
    assert (msg.user_name, msg.chat_name) == ("Alice A.", "Alice A.")  # users.info
    assert msg.thread_id == "" and msg.mentions_bot
    acks = await fake.wait_for_acks(1)
    assert acks == [e["envelope_id"] for e in fake.envelopes[envelope_count:]]
    threaded = await fake.inject_dm("U1", "in a thread", thread_ts=event["ts"])
    await inbox.wait_for(2)
    assert inbox.items[1].thread_id == event["ts"] == threaded["thread_ts"]
    assert [r.method for r in fake.requests].count("users.info") == 1  # cached
    only_local(fake)


async def test_channel_mention_arrives_twice_with_one_id(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    _, inbox = running
    event = await fake.inject_channel_message(fake.general_id, "U1", "what's up?", mention=True)
    first, second = await inbox.wait_for(2)
    assert {first.raw["type"], second.raw["type"]} == {"message", "app_mention"}
    assert first.message_id == second.message_id == f"{fake.general_id}:{event['ts']}"
    for msg in (first, second):
        assert (msg.chat_type, msg.chat_name, msg.text) == ("group", "general", "what's up?")
        assert msg.mentions_bot and msg.thread_id == event["ts"]
    await fake.wait_for_acks(2)
    reply = await fake.inject_channel_message(
        fake.private_id, "U2", "no mention here", thread_ts="1700000000.000009"
    )
    third = (await inbox.wait_for(3))[2]
    assert third.chat_name == "secret-plans" and not third.mentions_bot
    assert third.thread_id == reply["thread_ts"]


async def test_redelivery_and_bot_messages_reach_the_gate(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    _, inbox = running
    await fake.inject_dm("U1", "once")
    first = fake.envelopes[-1]
    await fake.redeliver(first)
    await fake.inject_bot_message(fake.general_id, "deploy finished")
    await fake.inject_event({"type": "reaction_added", "user": "U1", "reaction": "tada",
                             "item": {"type": "message", "channel": fake.general_id,
                                      "ts": "1.1"}})  # fmt: skip
    items = await inbox.wait_for(3)
    assert items[0].message_id == items[1].message_id  # the gate drops the redelivery
    assert items[2].from_bot and items[2].user_name == "otherbot"
    await asyncio.sleep(0.2)
    assert len(inbox.items) == 3  # the reaction was ignored, nothing crashed


# -- sending ---------------------------------------------------------------------


async def test_send_posts_mrkdwn_in_the_thread(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    adapter, inbox = running
    ids = await adapter.send(fake.general_id, "**bold** & <tags>", thread_id="1700000000.000001")
    (sent,) = await fake.wait_for_messages(1)
    assert ids == [sent.message_id]
    assert (sent.chat_id, sent.thread_id, sent.text) == (
        fake.general_id, "1700000000.000001", "*bold* & <tags>",
    )  # fmt: skip
    mrkdwn = "*bold* &amp; &lt;tags&gt;"  # rendered by the parser, Slack's characters escaped
    assert sent.blocks == [{"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}]
    assert sent.payload["text"] == mrkdwn  # the notification fallback
    echo = (await inbox.wait_for(1))[0]
    assert echo.from_self and echo.message_id == sent.message_id
    only_local(fake)


async def test_long_send_is_split_within_the_limit_in_order(fake: FakeSlack) -> None:
    adapter = make_adapter(fake)  # sending needs no socket
    words = [f"word{i:05d}" for i in range(10_000)]
    text = " ".join(words)  # ~100,000 characters
    ids = await adapter.send("U1", text)
    sent = await fake.wait_for_messages(len(ids))
    assert len(sent) == len(ids) >= 9
    assert all(len(m.text) <= SlackAdapter.max_message_length for m in sent)
    assert " ".join(m.text for m in sent).split() == words
    assert {m.chat_id for m in sent} == {fake.dm_channel_for("U1")}
    short = "x" * 10_000
    assert len(await adapter.send("U1", short)) == 1  # 10,000 fits one Slack message
    assert fake.sent[-1].text == short


async def test_rate_limit_is_retried_after_retry_after(fake: FakeSlack) -> None:
    adapter = make_adapter(fake)
    fake.rate_limit_next(1, retry_after=0.3)
    with pytest.raises(RetryAfter) as info:
        await adapter.do_send(fake.general_id, "direct")
    assert info.value.retry_after == pytest.approx(0.3)
    fake.rate_limit_next(2, retry_after=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await adapter.send(fake.general_id, "eventually")
    assert loop.time() - began >= 0.55
    assert [m.text for m in fake.sent] == ["eventually"]
    posts = [r for r in fake.requests if r.method == "chat.postMessage"]
    assert [r.status for r in posts] == [429, 429, 429, 200]


async def test_server_errors_are_retried(fake: FakeSlack) -> None:
    adapter = make_adapter(fake)
    fake.fail_next_5xx(1, status=503)
    fake.fail_next_error("fatal_error", status=500)
    await adapter.send(fake.general_id, "survives")
    assert [m.text for m in fake.sent] == ["survives"]


async def test_rejected_markdown_falls_back_to_plain_text(fake: FakeSlack) -> None:
    adapter = make_adapter(fake)
    fake.reject_blocks_next(1)
    await adapter.send(fake.general_id, "**hi** <there>")
    (sent,) = fake.sent
    assert not sent.formatted and sent.mrkdwn is False
    assert sent.text == "hi <there>"  # the Markdown's markup taken away
    assert sent.payload["text"] == "hi &lt;there&gt;"
    posts = [r for r in fake.requests if r.method == "chat.postMessage"]
    assert [r.error for r in posts] == ["invalid_blocks", ""]


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        ("ratelimited", 429, RetryAfter),
        ("fatal_error", 200, PlatformUnavailable),
        ("internal_error", 500, PlatformUnavailable),
        (None, 502, PlatformUnavailable),
        ("invalid_auth", 200, PlatformAuthError),
        ("account_inactive", 200, PlatformAuthError),
        ("missing_scope", 200, PlatformAuthError),
        ("invalid_blocks", 200, FormattingRejected),
        ("msg_blocks_too_long", 200, FormattingRejected),
        ("msg_too_long", 200, BadRequest),
        ("channel_not_found", 200, BadRequest),
        ("not_in_channel", 200, BadRequest),
    ],
)
async def test_error_mapping(
    fake: FakeSlack, error: str | None, status: int, expected: type[PlatformError]
) -> None:
    adapter = make_adapter(fake)
    if error is None:
        fake.fail_next_5xx(1, status=status)
    elif error == "ratelimited":
        fake.rate_limit_next(1, retry_after=2)
    else:
        fake.fail_next_error(error, status=status)
    with pytest.raises(expected) as info:
        await adapter.do_send(fake.general_id, "x")
    assert type(info.value) is expected
    assert info.value.platform == "slack"
    assert info.value.__cause__ is not None


class CountingSlack(SlackAdapter):
    """Counts ``do_send`` attempts (a refused connection never reaches the fake)."""

    attempts = 0

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        self.attempts += 1
        return await super().do_send(chat_id, text, thread_id=thread_id, formatted=formatted)


@pytest.mark.parametrize(
    ("fault", "retried", "error"),
    [
        ("429", True, None),
        ("503", True, None),
        ("refused", True, PlatformUnavailable),  # retried until the attempts run out
        ("timeout", False, OutcomeUnknown),  # posted, answered too late: not sent again
        ("cut-off", False, OutcomeUnknown),  # posted, connection closed unanswered
        ("channel_not_found", False, BadRequest),
    ],
)
async def test_send_retries_only_what_certainly_did_not_arrive(
    fake: FakeSlack, fault: str, retried: bool, error: type[Exception] | None
) -> None:
    adapter = CountingSlack(token=fake.bot_token, app_token=fake.app_token,
                            base_url=fake.base_url, retry_policy=FAST_RETRY)  # fmt: skip
    adapter.web.timeout = 1  # the SDK's own per-call timeout (30 s by default)
    if fault == "429":
        fake.rate_limit_next(1, retry_after=0.01)
    elif fault == "503":
        fake.fail_next_5xx(1, status=503)
    elif fault == "refused":
        await fake.stop()
    elif fault == "timeout":
        fake.slow_next(3.0)
    elif fault == "cut-off":
        fake.cut_off_next()
    else:
        fake.fail_next_error(fault)
    try:
        if error is None:
            await adapter.send(fake.general_id, "exactly once, please")
        else:
            with pytest.raises(error) as info:
                await adapter.send(fake.general_id, "exactly once, please")
            assert type(info.value) is error
    finally:
        await adapter.stop()
    if fault == "refused":
        assert adapter.attempts == FAST_RETRY.attempts
        return
    assert adapter.attempts == (2 if retried else 1)
    posts = [r for r in fake.requests if r.method == "chat.postMessage"]
    assert len(posts) == adapter.attempts  # no retry hidden in the SDK either
    delivered = [m.text for m in fake.sent]
    assert delivered == ([] if fault == "channel_not_found" else ["exactly once, please"])


async def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = SlackAdapter(token="xoxb-1", app_token="xapp-1",
                           base_url=f"http://127.0.0.1:{port}/api/")  # fmt: skip
    with pytest.raises(PlatformUnavailable):
        await adapter.do_send("C1", "x")
    with pytest.raises(PlatformUnavailable):
        await adapter.start(Inbox())
    await adapter.stop()


# -- credentials -----------------------------------------------------------------


@pytest.mark.parametrize(("which", "error"), [("bot", "invalid_auth"), ("bot", "account_inactive"),
                                               ("app", "invalid_auth")])  # fmt: skip
async def test_bad_token_at_start_raises_auth_error(
    fake: FakeSlack, which: str, error: str
) -> None:
    fake.revoke_token(which, error)
    adapter = make_adapter(fake)
    with pytest.raises(PlatformAuthError, match=error):
        await adapter.start(Inbox())
    await asyncio.sleep(0.3)
    assert len(fake.requests) == (1 if which == "bot" else 2)  # no retry loop
    assert fake.connections == 0
    await adapter.stop()


async def test_unknown_token_at_start(fake: FakeSlack) -> None:
    adapter = SlackAdapter(token="xoxb-wrong", app_token=fake.app_token, base_url=fake.base_url)
    with pytest.raises(PlatformAuthError, match="invalid_auth"):
        await adapter.start(Inbox())
    await adapter.stop()


# -- connection life -------------------------------------------------------------


async def test_dropped_connection_reconnects_by_itself(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    adapter, inbox = running
    fake.drop_connection()
    await fake.wait_for_connections(2, timeout=10)
    await fake.inject_dm("U1", "still there?")
    (msg,) = await inbox.wait_for(1)
    assert msg.text == "still there?"
    assert [r.method for r in fake.requests].count("apps.connections.open") >= 2
    assert adapter._failure is None or not adapter._failure.done()


async def test_disconnect_refresh_requested_reconnects(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    _, inbox = running
    await fake.send_disconnect("refresh_requested")
    await fake.wait_for_connections(2)
    await fake.wait_until(lambda: len(fake._conns) == 1, what="the old socket closed")
    await fake.inject_dm("U1", "after refresh")
    assert (await inbox.wait_for(1))[0].text == "after refresh"


async def test_lasting_outage_reports_failure_and_restart_works(fake: FakeSlack) -> None:
    adapter = make_adapter(fake, connect_timeout=1.5)
    inbox = Inbox()
    await adapter.start(inbox)
    fake.revoke_token("app")  # drops the socket; the SDK's reconnects now fail
    failure = await asyncio.wait_for(adapter.wait_failure(), 8)
    assert isinstance(failure, ConnectionLost)
    await adapter.stop()
    adapter.reset_failure()
    with pytest.raises(PlatformAuthError):  # the restart tells a revoked token apart
        await adapter.start(inbox)
    fake.restore_tokens()
    await adapter.start(inbox)
    await fake.inject_dm("U1", "back")
    assert (await inbox.wait_for(1))[0].text == "back"
    await adapter.stop()


async def test_stop_is_prompt_idempotent_and_leaves_nothing(fake: FakeSlack) -> None:
    loop = asyncio.get_running_loop()
    # Earlier tests' garbage (an OpenAI client whose loop is gone) is collected first, so
    # that only what this adapter leaves behind is counted below.
    gc.collect()
    await asyncio.sleep(0)
    leaks: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: leaks.append(context))
    before = asyncio.all_tasks()
    adapter = make_adapter(fake)
    inbox = Inbox()
    for round_ in range(2):  # stop, then start again on the same instance
        await adapter.start(inbox)
        await fake.inject_dm("U1", f"round {round_}")
        await inbox.wait_for(round_ + 1)
        began = loop.time()
        await adapter.stop()
        assert loop.time() - began < 5
    await adapter.stop()  # idempotent
    await fake.wait_until(lambda: not fake._conns, what="sockets closed")
    await asyncio.sleep(0.1)
    left = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
    assert not left, left
    gc.collect()
    await asyncio.sleep(0)
    assert not leaks, leaks  # e.g. "Unclosed client session"
    loop.set_exception_handler(None)


async def test_typing_sets_the_thread_status(
    fake: FakeSlack, running: tuple[SlackAdapter, Inbox]
) -> None:
    adapter, _ = running
    dm = fake.dm_channel_for("U1")
    async with adapter.typing(dm, "1700000000.000001"):
        statuses = await fake.wait_for_statuses(1)
    assert statuses == [(dm, "1700000000.000001", "is typing...")]
    async with adapter.typing(dm):  # outside a thread Slack has no bot typing indicator
        await asyncio.sleep(0.05)
    await adapter.do_typing("C0MISSING", "1.1")  # refused: remembered, not retried
    await adapter.do_typing("C0MISSING", "1.1")
    calls = [r for r in fake.requests if r.method == "assistant.threads.setStatus"]
    assert len(calls) == 2


# -- with the real Bot -----------------------------------------------------------


async def test_bot_answers_a_channel_mention_once_in_its_thread(fake: FakeSlack) -> None:
    agent = RecordingAgent()
    bot = Bot("slack", agent, token=fake.bot_token, app_token=fake.app_token,
              base_url=fake.base_url, ping_interval=0.5, store="memory://")  # fmt: skip
    task = asyncio.create_task(bot.start())
    try:
        await asyncio.wait_for(bot.ready.wait(), 5)
        event = await fake.inject_channel_message(fake.general_id, "U1", "ping", mention=True)
        (reply,) = await fake.wait_for_messages(1)
        assert (reply.chat_id, reply.thread_id, reply.text) == (
            fake.general_id, event["ts"], "reply:ping",
        )  # fmt: skip
        await fake.inject_dm("U1", "hi")
        second = (await fake.wait_for_messages(2))[1]
        assert (second.chat_id, second.thread_id) == (fake.dm_channel_for("U1"), "")
        await asyncio.sleep(0.3)
        assert len(fake.sent) == 2  # the app_mention twin and the bot's echoes were dropped
        assert len(agent.calls) == 2
    finally:
        await bot.stop()
        await task
    only_local(fake)
