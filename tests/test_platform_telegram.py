"""Telegram adapter: the real python-telegram-bot against the fake Bot API server.

Pure parts (normalising, markup, error mapping) run on real PTB objects built
from Bot API JSON; everything else runs the adapter against ``FakeTelegram``.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import Update
from telegram import error as tg

from fake_telegram import FakeTelegram, MarkupError, message_update, parse_markup
from onethread.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    FormattingRejected,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)
from onethread.platforms import Inbound, load_adapter_class
from onethread.platforms.delivery import RetryPolicy
from onethread.platforms.markup import to_plain, to_telegram_html
from onethread.platforms.telegram import (
    TelegramAdapter,
    map_telegram_errors,
    normalize_update,
)

pytestmark = [
    pytest.mark.timeout(30),
    # PTB 22 itself warns whenever it builds a RetryAfter (unless PTB_TIMEDELTA is set);
    # the adapter's own read of retry_after is silenced in map_telegram_errors.
    pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning"),
]

BOT_ID = 123456789
BOT = "onethread_test_bot"
FAST = RetryPolicy(attempts=4, base_delay=0.02, max_delay=5.0)


def norm(raw: dict[str, Any]) -> Inbound | None:
    return normalize_update(Update.de_json(raw, None), bot_id=BOT_ID, bot_username=BOT)


# -- normalising (pure, real PTB objects from Bot API JSON) ------------------------------


def test_dm_is_normalised() -> None:
    msg = norm(message_update(42, "hello", first_name="Ada", last_name="L", username="ada"))
    assert msg == Inbound(
        platform="telegram", chat_id="42", chat_type="dm", user_id="42", text="hello",
        message_id="1", chat_name="Ada L", thread_id="", user_name="Ada L", mentions_bot=True,
    )  # fmt: skip
    assert msg is not None and msg.raw.text == "hello"


@pytest.mark.parametrize(
    ("text", "addressed"),
    [
        ("just chatting", False),
        (f"@{BOT} what time is it", True),
        (f"hey @{BOT.upper()}", True),  # usernames are case-insensitive
        ("@someone_else hi", False),
        ("/help", True),
        (f"/new@{BOT}", True),
        ("/help@other_bot", False),  # a command for another bot in the group
        ("see /help", False),  # a command entity, but not a command message
        (f"😀🎉 @{BOT} hi", True),  # entity offsets are UTF-16: emoji before the mention
    ],
)
def test_group_mentions(text: str, addressed: bool) -> None:
    msg = norm(message_update(7, text, chat_id=-100500, chat_type="supergroup", chat_title="Ops"))
    assert msg is not None
    assert (msg.chat_type, msg.chat_id, msg.chat_name) == ("group", "-100500", "Ops")
    assert msg.mentions_bot is addressed


def test_text_mention_and_caption_address_the_bot() -> None:
    ents = [{"type": "text_mention", "offset": 0, "length": 3,
             "user": {"id": BOT_ID, "is_bot": True, "first_name": "Bot"}}]  # fmt: skip
    msg = norm(message_update(7, "Bot, hi", chat_id=-5, chat_type="group", entities=ents))
    assert msg is not None and msg.mentions_bot
    cap = norm(message_update(7, f"look @{BOT}", chat_id=-5, chat_type="group", caption=True))
    assert cap is not None and cap.text == f"look @{BOT}" and cap.mentions_bot


def test_reply_to_the_bot_addresses_it() -> None:
    bot_msg = {
        "message_id": 3, "date": 0, "chat": {"id": -5, "type": "group", "title": "G"},
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Bot"}, "text": "hi",
    }  # fmt: skip
    msg = norm(message_update(7, "thanks", chat_id=-5, chat_type="group", reply_to=bot_msg))
    assert msg is not None and msg.mentions_bot


def test_forum_topic_sets_thread_id_and_topic_root_is_not_a_reply() -> None:
    bot_user = {"id": BOT_ID, "is_bot": True, "first_name": "Bot"}
    # The bot opened topic 9: every message there "replies" to the bot's topic root.
    raw = message_update(7, "no mention", chat_id=-100, chat_type="supergroup", thread_id=9,
                         topic_creator=bot_user)  # fmt: skip
    msg = norm(raw)
    assert msg is not None and msg.thread_id == "9" and not msg.mentions_bot
    mention = norm(message_update(7, f"@{BOT} hi", chat_id=-100, chat_type="supergroup",
                                  thread_id=9))  # fmt: skip
    assert mention is not None and mention.thread_id == "9" and mention.mentions_bot


def test_sender_kinds() -> None:
    own = norm(message_update(BOT_ID, "echo", chat_id=-5, chat_type="group", is_bot=True))
    assert own is not None and own.from_self and own.from_bot
    other = norm(message_update(99, "beep", chat_id=-5, chat_type="group", is_bot=True))
    assert other is not None and other.from_bot and not other.from_self
    post = norm(message_update(0, "news", chat_id=-1009, chat_type="channel", chat_title="News"))
    assert post is not None
    assert (post.chat_type, post.user_id, post.user_name, post.from_bot) == (
        "channel", "-1009", "News", False,
    )  # fmt: skip


def test_non_messages_are_ignored_and_a_sticker_is_an_attachment() -> None:
    callback = {"update_id": 5, "callback_query": {
        "id": "1", "chat_instance": "x", "data": "d",
        "from": {"id": 7, "is_bot": False, "first_name": "A"}}}  # fmt: skip
    assert norm(callback) is None
    sticker = message_update(7, "x")
    del sticker["message"]["text"]
    sticker["message"]["sticker"] = {"file_id": "s", "file_unique_id": "u", "width": 1,
                                     "height": 1, "is_animated": False, "is_video": False,
                                     "type": "regular"}  # fmt: skip
    only_sticker = norm(sticker)  # an attachment-only message is never dropped
    assert only_sticker is not None and only_sticker.text == ""
    assert [a.kind for a in only_sticker.attachments] == ["sticker"]
    edited = message_update(7, "fixed typo")
    edited["edited_message"] = edited.pop("message")
    assert norm(edited) is None


# -- markup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "visible", "kinds"),
    [
        ("**bold** and *it* and _it2_", "bold and it and it2", ["bold", "italic", "italic"]),
        ("a < b && c > d", "a < b && c > d", []),
        ("call `f(x) <y>` now", "call f(x) <y> now", ["code"]),
        ("```python\nprint('<hi>')\n```", "print('<hi>')", ["pre"]),
        ("[docs](https://example.org/a_b?x=1&y=2)", "docs", ["text_link"]),
        ("## Title\nbody", "Title\n\nbody", ["bold"]),
        ("- one\n- two", "• one\n• two", []),
        ("| a | b |\n|---|---|\n| 1 | 22 |", "a | b\n--+---\n1 | 22", ["pre"]),
        ("<script>x</script>", "<script>x</script>", []),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4", []),
        ("~~gone~~", "gone", ["strikethrough"]),
    ],
)
def test_to_telegram_html(markdown: str, visible: str, kinds: list[str]) -> None:
    text, entities = parse_markup(to_telegram_html(markdown), "HTML")
    assert text == visible
    assert [e["type"] for e in entities] == kinds


def test_markdown_code_block_keeps_language() -> None:
    _, [pre] = parse_markup(to_telegram_html("```py\nx = 1\n```"), "HTML")
    assert pre["language"] == "py"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab *_`~#[]()<>&|-\n\\:/hx😀")), max_size=80))
def test_any_markdown_renders_to_html_telegram_accepts(markdown: str) -> None:
    """The parser closes what it opens: no chunk is ever refused for its markup."""
    visible, _ = parse_markup(to_telegram_html(markdown), "HTML")
    assert visible.strip() == visible.strip()
    assert len(to_plain(markdown)) >= len(visible.strip()) - 2  # measure() is honest


@pytest.mark.parametrize(
    ("text", "mode", "visible"),
    [
        ('<b>x</b> &lt;<a href="http://a?b=1&amp;c">l</a>', "HTML", "x <l"),
        ("<b>x", "HTML", None),
        ("a < b", "HTML", None),
        ("<br/>", "HTML", None),
        ("<b><i>x</b></i>", "HTML", None),
        ("*b* _i_ `c` [l](http://x)", "Markdown", "b i c l"),
        ("snake_case", "Markdown", None),
        ("*b* ||s|| __u__ ~x~ 1\\.5", "MarkdownV2", "b s u x 1.5"),
        ("1.5", "MarkdownV2", None),
        ("plain *text*", None, "plain *text*"),
    ],
)
def test_fake_parses_markup_like_telegram(text: str, mode: str | None, visible: str | None) -> None:
    """The fake's parser, which decides FormattingRejected in the tests above."""
    if visible is None:
        with pytest.raises(MarkupError):
            parse_markup(text, mode)
    else:
        assert parse_markup(text, mode)[0] == visible


# -- error mapping -------------------------------------------------------------------------


def caused(exc: tg.TelegramError, cause: BaseException) -> tg.TelegramError:
    """``exc`` raised ``from cause``, as PTB's HTTPXRequest raises its errors."""
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (tg.InvalidToken("Unauthorized"), PlatformAuthError),
        (tg.Forbidden("Forbidden: bot was blocked by the user"), BadRequest),
        (tg.BadRequest("Bad Request: chat not found"), BadRequest),
        (
            tg.BadRequest("Bad Request: can't parse entities: Unsupported start tag"),
            FormattingRejected,
        ),  # fmt: skip
        (tg.ChatMigrated(-1001), BadRequest),
        (tg.TimedOut(), OutcomeUnknown),
        (caused(tg.TimedOut(), httpx.ReadTimeout("read")), OutcomeUnknown),
        (caused(tg.TimedOut(), httpx.WriteTimeout("write")), OutcomeUnknown),
        (caused(tg.TimedOut(), httpx.ConnectTimeout("connect")), PlatformUnavailable),
        (caused(tg.TimedOut("Pool timeout"), httpx.PoolTimeout("pool")), PlatformUnavailable),
        (caused(tg.NetworkError("httpx.ConnectError"), httpx.ConnectError("refused")),
         PlatformUnavailable),
        (caused(tg.NetworkError("httpx.RemoteProtocolError"),
                httpx.RemoteProtocolError("Server disconnected")), OutcomeUnknown),
        (caused(tg.NetworkError("httpx.ReadError"), httpx.ReadError("reset")), OutcomeUnknown),
        (tg.NetworkError("Bad Gateway"), PlatformUnavailable),  # the server answered 502
        (caused(tg.NetworkError("Bad Gateway (502)"), tg.TelegramError("Invalid server response")),
         PlatformUnavailable),  # a 5xx with an HTML body
        (tg.Conflict("Conflict: terminated by other getUpdates request"), PlatformUnavailable),
        (tg.TelegramError("Invalid server response"), OutcomeUnknown),  # an unreadable 2xx
    ],
)  # fmt: skip
def test_error_mapping(exc: tg.TelegramError, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info, map_telegram_errors():
        raise exc
    assert type(info.value) is expected
    assert info.value.__cause__ is exc
    assert info.value.platform == "telegram"  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [3, dtm.timedelta(seconds=1.5)])
def test_retry_after_mapping_accepts_int_and_timedelta(value: int | dtm.timedelta) -> None:
    expected = value if isinstance(value, int) else value.total_seconds()
    with pytest.raises(RetryAfter) as info, map_telegram_errors():
        raise tg.RetryAfter(value)
    assert info.value.retry_after == expected


# -- construction --------------------------------------------------------------------------


async def test_missing_token_is_named_by_start_not_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeTelegram() as fake:
        adapter = TelegramAdapter(base_url=fake.base_url)  # constructing needs no credential
        with pytest.raises(ConfigError, match="no Telegram bot token: set TELEGRAM_BOT_TOKEN"):
            await adapter.start(Inbox())
        assert adapter.bot is None and fake.requests == []  # nothing was contacted
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", fake.token)  # set later: start() reads it
        await adapter.start(Inbox())
        assert adapter.bot_username == fake.bot_username
        await adapter.stop()


def test_options_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TelegramAdapter(token="1:x").api_root == "https://api.telegram.org"
    with pytest.raises(ConfigError, match="accepted: token, base_url"):
        TelegramAdapter(token="1:x", channel="oops")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:env")
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://127.0.0.1:9/")
    adapter = load_adapter_class("telegram")()
    assert isinstance(adapter, TelegramAdapter)
    assert adapter.api_root == "http://127.0.0.1:9"
    assert "1:env" not in repr(adapter)


# -- against the fake server ---------------------------------------------------------------


async def assert_settled(tasks_before: set[asyncio.Task[Any]], timeout: float = 2.0) -> None:
    """Nothing the adapter started is left: no task, and the fake sees no open connection
    (its own connection handlers end once the client has closed its sockets)."""
    current = asyncio.current_task()
    async with asyncio.timeout(timeout):
        while asyncio.all_tasks() - {current} - tasks_before:
            await asyncio.sleep(0.02)


class Inbox:
    """Collects what the adapter delivers to on_inbound."""

    def __init__(self) -> None:
        self.items: list[Inbound] = []
        self._event = asyncio.Event()

    async def __call__(self, msg: Inbound) -> None:
        self.items.append(msg)
        self._event.set()

    async def wait(self, n: int, timeout: float = 5.0) -> list[Inbound]:
        async with asyncio.timeout(timeout):
            while len(self.items) < n:
                self._event.clear()
                await self._event.wait()
        return self.items[:n]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def make_adapter(fake: FakeTelegram) -> Callable[..., TelegramAdapter]:
    def make(**options: Any) -> TelegramAdapter:
        options.setdefault("retry_policy", FAST)
        adapter = TelegramAdapter(token=fake.token, base_url=fake.base_url, **options)
        adapter.poll_retry_delay = 0.02
        return adapter

    return make


@pytest.fixture
async def running(
    fake: FakeTelegram, make_adapter: Callable[..., TelegramAdapter]
) -> AsyncIterator[tuple[TelegramAdapter, Inbox]]:
    adapter, inbox = make_adapter(), Inbox()
    await adapter.start(inbox)
    yield adapter, inbox
    await adapter.stop()


async def test_start_identifies_the_bot_and_polls(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, _ = running
    assert (adapter.bot_id, adapter.bot_username) == (fake.bot_id, fake.bot_username)
    [poll] = await fake.wait_for_call("getUpdates")
    assert [c.method for c in fake.requests[:3]] == ["getMe", "deleteWebhook", "getUpdates"]
    assert poll.params["allowed_updates"] == '["message", "channel_post"]'
    assert adapter.bot is not None and adapter.bot.base_url.startswith(fake.base_url)


async def test_inbound_dm_group_and_topic(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    _, inbox = running
    fake.inject_message(42, "hi there", first_name="Ada", username="ada")
    fake.inject_message(42, "ignored chatter", chat_id=-1007, chat_type="supergroup")
    last = fake.inject_message(43, f"@{fake.bot_username} status?", chat_id=-1007,
                               chat_type="supergroup", thread_id=11, first_name="Bob")  # fmt: skip
    dm, chatter, topic = await inbox.wait(3)
    assert (dm.chat_type, dm.chat_id, dm.user_id, dm.user_name, dm.mentions_bot) == (
        "dm", "42", "42", "Ada", True,
    )  # fmt: skip
    assert (chatter.chat_type, chatter.mentions_bot) == ("group", False)  # the gate drops it
    assert (topic.thread_id, topic.user_name, topic.mentions_bot) == ("11", "Bob", True)
    # The next poll's offset confirms what was delivered.
    await fake.wait_until(lambda: fake.confirmed_offset == last + 1)
    assert not fake.pending_updates


async def test_redelivered_message_reaches_on_inbound_again(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    """The adapter does not filter duplicates; the gate (keyed by chat and message id) does."""
    from onethread.bots.gate import Gate, Verdict
    from onethread.session.locks import LocalDuplicateFilter

    _, inbox = running
    update_id = fake.inject_message(42, "once")
    original = next(u for u in fake.pending_updates if u["update_id"] == update_id)
    fake.inject_update({"message": original["message"]})  # same message, new update
    first, again = await inbox.wait(2)
    assert first == again
    gate = Gate(LocalDuplicateFilter())
    assert [await gate.check(first), await gate.check(again)] == [Verdict.ACCEPT,
                                                                  Verdict.DUPLICATE]  # fmt: skip


async def test_send_formats_and_replies_in_the_topic(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, _ = running
    ids = await adapter.send("-1007", "**Done** & dusted", thread_id="11")
    [sent] = await fake.wait_for_messages(1)
    assert (sent.chat_id, sent.thread_id, sent.text, sent.parse_mode) == (
        -1007, 11, "Done & dusted", "HTML",
    )  # fmt: skip
    assert sent.entities == [{"type": "bold", "offset": 0, "length": 4}]
    assert ids == [str(sent.message_id)]


async def test_long_message_is_split_within_the_limit_in_order(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, _ = running
    words = [f"w{i:05d}" for i in range(1430)]  # 10,009 characters
    text = " ".join(words)
    ids = await adapter.send("42", text)
    sent = await fake.wait_for_messages(len(ids))
    assert len(ids) == 3 == len(fake.sent)
    assert all(len(m.text) <= 4096 for m in sent)
    assert " ".join(m.text for m in sent).split() == words


async def test_rate_limit_is_waited_out_then_sent(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, _ = running
    fake.rate_limit("sendMessage", retry_after=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await adapter.send("42", "after the flood")
    assert loop.time() - started >= 0.3
    assert [c.status for c in fake.requests if c.method == "sendMessage"] == [429, 200]
    assert [m.text for m in fake.sent] == ["after the flood"]


@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors_are_retried(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox], status: int
) -> None:
    adapter, _ = running
    fake.server_error("sendMessage", status, times=2)
    await adapter.send("42", "eventually")
    assert [m.text for m in fake.sent] == ["eventually"]


class CountingTelegram(TelegramAdapter):
    """Counts ``do_send`` attempts (a refused connection never reaches the fake)."""

    attempts = 0

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        self.attempts += 1
        return await super().do_send(chat_id, text, thread_id=thread_id, formatted=formatted)


async def _refuse_connections(fake: FakeTelegram) -> None:
    await fake.stop()  # nothing listens on the port any more: connection refused


async def _rate_limit(fake: FakeTelegram) -> None:
    fake.rate_limit("sendMessage", retry_after=0.01)


async def _server_500(fake: FakeTelegram) -> None:
    fake.server_error("sendMessage", 500)


async def _nginx_502(fake: FakeTelegram) -> None:
    fake.server_error("sendMessage", 502)


async def _answer_late(fake: FakeTelegram) -> None:
    fake.slow("sendMessage", 1.5)  # sent at once, answered after the 0.3 s read timeout


async def _cut_off(fake: FakeTelegram) -> None:
    fake.drop_connections()  # the request arrives, the connection closes unanswered


async def _refuse_request(fake: FakeTelegram) -> None:
    fake.fail("sendMessage", 400, "Bad Request: chat not found")


@pytest.mark.parametrize(
    ("fault", "retried", "error"),
    [
        (_rate_limit, True, None),
        (_server_500, True, None),
        (_nginx_502, True, None),
        (_refuse_connections, True, PlatformUnavailable),  # retried until attempts run out
        (_answer_late, False, OutcomeUnknown),  # a timeout: it may have arrived
        (_cut_off, False, OutcomeUnknown),  # cut off after sending: may have arrived
        (_refuse_request, False, BadRequest),
    ],
    ids=["429", "500", "502", "refused", "timeout", "cut-off", "400"],
)
async def test_send_retries_only_what_certainly_did_not_arrive(
    fake: FakeTelegram,
    fault: Callable[[FakeTelegram], Any],
    retried: bool,
    error: type[Exception] | None,
) -> None:
    adapter = CountingTelegram(token=fake.token, base_url=fake.base_url, retry_policy=FAST,
                               read_timeout=0.3)  # fmt: skip
    adapter.poll_retry_delay = 0.02
    await adapter.start(Inbox())
    try:
        await fault(fake)
        if error is None:
            await adapter.send("42", "exactly once, please")
        else:
            with pytest.raises(error) as info:
                await adapter.send("42", "exactly once, please")
            assert type(info.value) is error
    finally:
        await adapter.stop()
    if error is PlatformUnavailable:  # the server never saw it; every attempt was made
        assert adapter.attempts == FAST.attempts
        return
    assert adapter.attempts == (2 if retried else 1)
    sends = [c for c in fake.requests if c.method == "sendMessage"]
    assert len(sends) == adapter.attempts
    if fault in (_answer_late, _cut_off) or error is None:
        # Never twice: the timed-out message did arrive, and was not sent again.
        expected = [] if fault is _cut_off else ["exactly once, please"]
        assert [m.text for m in fake.sent] == expected


async def test_rejected_markup_falls_back_to_plain_text(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, _ = running
    # The parser never writes mis-nested HTML, so the refusal is scripted: Telegram's
    # answer to entities it cannot take. The plain resend drops the Markdown's markup.
    fake.fail("sendMessage", 400, "Bad Request: can't parse entities: Can't find end of "
              "the entity starting at byte offset 0", times=1)  # fmt: skip
    await adapter.send("42", "**a** *b* `c` [d](https://e.org)")
    [sent] = await fake.wait_for_messages(1)
    assert (sent.text, sent.parse_mode) == ("a b c d (https://e.org)", None)
    statuses = [(c.status, c.params.get("parse_mode")) for c in fake.requests
                if c.method == "sendMessage"]  # fmt: skip
    assert statuses == [(400, "HTML"), (200, None)]


async def test_parse_error_description_is_recognised(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    """Pins the one description check: the Bot API text for a markup error."""
    adapter, _ = running
    with pytest.raises(FormattingRejected, match="Can't parse entities"), map_telegram_errors():
        assert adapter.bot is not None  # mis-nested tags, refused by the fake as by Telegram
        await adapter.bot.send_message(chat_id=42, text="<b>a <i>b</b> c</i>", parse_mode="HTML")
    fake.fail("sendMessage", 400, "Bad Request: can't parse entities: Can't find end of the "
              "entity starting at byte offset 3")  # fmt: skip
    with pytest.raises(FormattingRejected):
        await adapter.do_send("42", "fine")
    with pytest.raises(BadRequest) as info:  # any other 400 is a plain BadRequest
        await adapter.do_send("42", "x" * 4097, formatted=False)
    assert type(info.value) is BadRequest and "too long" in str(info.value)


async def test_typing_reaches_the_fake(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, _ = running
    async with adapter.typing("-1007", "11"):
        await fake.wait_for_call("sendChatAction")
    [action] = fake.chat_actions
    assert (action.chat_id, action.action, action.thread_id) == (-1007, "typing", 11)


async def test_bad_token_raises_auth_error_once(fake: FakeTelegram) -> None:
    tasks_before = asyncio.all_tasks()
    adapter = TelegramAdapter(token="123456789:wrong", base_url=fake.base_url)
    with pytest.raises(PlatformAuthError) as info:
        await adapter.start(Inbox())
    assert "wrong" not in str(info.value) and "wrong" not in str(info.value.__cause__)
    assert [(c.method, c.status) for c in fake.requests] == [("getMe", 401)]
    assert adapter.bot is None
    await assert_settled(tasks_before)
    await adapter.stop()  # idempotent after a failed start


async def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: connection refused
    adapter = TelegramAdapter(token="1:x", base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(PlatformUnavailable):
        await adapter.start(Inbox())
    assert adapter.bot is None


async def test_webhook_is_removed_before_polling(
    fake: FakeTelegram, make_adapter: Callable[..., TelegramAdapter]
) -> None:
    fake.webhook_url = "https://example.org/hook"
    adapter, inbox = make_adapter(), Inbox()
    await adapter.start(inbox)
    try:
        fake.inject_message(42, "via polling")
        [msg] = await inbox.wait(1)
        assert msg.text == "via polling" and fake.webhook_url == ""
    finally:
        await adapter.stop()


async def test_drop_pending_updates_only_on_first_start(
    fake: FakeTelegram, make_adapter: Callable[..., TelegramAdapter]
) -> None:
    fake.inject_message(42, "stale")
    adapter, inbox = make_adapter(drop_pending_updates=True), Inbox()
    await adapter.start(inbox)
    await adapter.stop()
    fake.inject_message(42, "while restarting")
    await adapter.start(inbox)
    try:
        [msg] = await inbox.wait(1)
        assert msg.text == "while restarting"
    finally:
        await adapter.stop()


async def test_transient_poll_errors_recover_without_restart(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, inbox = running
    await fake.wait_for_call("getUpdates")
    fake.server_error("getUpdates", 502)
    fake.rate_limit("getUpdates", retry_after=0.1)
    fake.inject_message(42, "wakes the pending poll")  # the next two polls fail
    await inbox.wait(1)
    await fake.wait_for_call("getUpdates", n=4)
    fake.inject_message(42, "after the blip")
    await inbox.wait(2)
    assert [c.status for c in fake.requests if c.method == "getUpdates"][1:3] == [502, 429]
    assert not adapter._failure_future().done()


async def test_long_poll_rate_limit_is_capped_and_polling_resumes(
    fake: FakeTelegram,
    make_adapter: Callable[..., TelegramAdapter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A getUpdates 429 asking for 97 minutes (seen in production) is waited at most
    the send cap (60 s) each time; the bot polls again and hears the next message."""
    adapter, inbox = make_adapter(retry_policy=RetryPolicy()), Inbox()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # record the wait instead of sitting it out
        waits.append(seconds)
        await asyncio.sleep(0)

    adapter.sleep = sleep
    fake.rate_limit("getUpdates", retry_after=5820, times=3)
    await adapter.start(inbox)
    try:
        fake.inject_message(42, "still there?")
        [msg] = await inbox.wait(1)
        assert msg.text == "still there?"
        assert waits == [60.0, 60.0, 60.0]
        statuses = [c.status for c in fake.requests if c.method == "getUpdates"]
        assert statuses[:4] == [429, 429, 429, 200]
        long_notes = [r for r in caplog.records if "5820" in r.getMessage()]
        assert len(long_notes) == 1 and long_notes[0].levelname == "WARNING"
        assert not adapter._failure_future().done()
    finally:
        await adapter.stop()


async def test_dropped_connection_is_reported_and_restart_works(
    fake: FakeTelegram, make_adapter: Callable[..., TelegramAdapter]
) -> None:
    adapter, inbox = make_adapter(max_poll_failures=2), Inbox()
    await adapter.start(inbox)
    await fake.wait_for_call("getUpdates")
    fake.drop_connections()  # the pending long poll and every retry lose their connection
    failure = await asyncio.wait_for(adapter.wait_failure(), 5)
    assert isinstance(failure, ConnectionLost)
    assert isinstance(failure.__cause__, PlatformUnavailable)
    # What the supervisor does: stop, reset, start again on the same instance.
    await adapter.stop()
    adapter.reset_failure()
    fake.inject_message(42, "sent during the outage")
    fake.restore()
    await adapter.start(inbox)
    try:
        [msg] = await inbox.wait(1)
        assert msg.text == "sent during the outage"
    finally:
        await adapter.stop()


async def test_revoked_token_while_polling_is_reported_as_auth_error(
    fake: FakeTelegram, running: tuple[TelegramAdapter, Inbox]
) -> None:
    adapter, _ = running
    await fake.wait_for_call("getUpdates")
    fake.auth_failure = True
    failure = await asyncio.wait_for(adapter.wait_failure(), 5)
    assert isinstance(failure, PlatformAuthError)
    await asyncio.sleep(0.1)
    assert len([c for c in fake.requests if c.method == "getUpdates"]) == 1  # no retry loop


async def test_stop_is_prompt_and_leaves_nothing_running(
    fake: FakeTelegram, make_adapter: Callable[..., TelegramAdapter]
) -> None:
    tasks_before = asyncio.all_tasks()
    adapter = make_adapter(poll_timeout=30)
    await adapter.start(Inbox())
    await fake.wait_for_call("getUpdates")  # a 30 s long poll is in flight
    loop = asyncio.get_running_loop()
    started = loop.time()
    await adapter.stop()
    assert loop.time() - started < 1.0
    assert adapter.bot is None
    await assert_settled(tasks_before)
    assert fake.open_connections == 0
    await adapter.stop()  # idempotent
    with pytest.raises(PlatformUnavailable):
        await adapter.do_send("42", "after stop")
