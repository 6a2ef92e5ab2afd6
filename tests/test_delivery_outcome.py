"""How delivery ends is kept with the reply (issue 11, points 3 and 7).

A reply that could not be delivered stays in history marked
``metadata["delivery"] == "failed"`` in every store, the model sees it
labelled, ``history show`` flags it; failed notify and outbox deliveries are
mirrored marked; a reply too long for 10 messages goes out cut, with a note.
Platform paths run the real python-telegram-bot client against the fake Bot
API server (which refuses ``sendMessage`` as Telegram does for a bot the
person blocked); paths no platform fake can reach use ``FakeAdapter``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from fake_telegram import FakeTelegram
from helpers import RecordingAgent
from onethread.agent.messages import CUT_SHORT, UNDELIVERED, build_messages, entry_text
from onethread.bots import Bot, BotOS, BotSessionManager
from onethread.bots.bot import TURN_FAILED
from onethread.errors import BadRequest, OutcomeUnknown, PlatformUnavailable, StoreError
from onethread.platforms.delivery import CUT_NOTE, RetryPolicy
from onethread.session.history.base import HistoryEntry, HistoryStore
from onethread.session.history.memory import MemoryHistoryStore
from onethread.session.urls import open_history_store
from onethread.testing import FakeAdapter
from services import postgres_schema, postgres_url, redis_prefix, redis_url

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning"),
]

STORES = ["memory", "sqlite", "redis", "postgres"]
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=5.0)
BLOCKED = "Forbidden: bot was blocked by the user"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture(params=STORES)
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], HistoryStore]]:
    """Opens the same store again (memory: a new, empty one)."""
    with ExitStack() as stack:
        name = request.param
        if name == "memory":  # nothing to reopen: gone with the process
            yield MemoryHistoryStore
            return
        if name == "redis":
            url, options = redis_url(), {"prefix": stack.enter_context(redis_prefix())}
        elif name == "postgres":
            url, options = postgres_url(), {"schema": stack.enter_context(postgres_schema())}
        else:
            url, options = f"sqlite:///{tmp_path}/h.db", {}
        yield lambda: open_history_store(url, **options)


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def stored(session: BotSessionManager, user: str, n: int) -> list[HistoryEntry]:
    async def enough() -> bool:
        return len(await session.history(user, platform="telegram", chat_id=user)) >= n

    await wait_for(enough, f"{n} stored entries")
    return await session.history(user, platform="telegram", chat_id=user)


async def test_undelivered_reply_is_kept_marked_in_every_store(
    fake: FakeTelegram, store_factory: Callable[[], HistoryStore]
) -> None:
    agent = RecordingAgent()
    bot = Bot("telegram", agent, token=fake.token, base_url=fake.base_url, retry_policy=FAST,
              store=store_factory(), gc_freeze=False)  # fmt: skip
    runner = asyncio.create_task(bot.start())
    try:
        await asyncio.wait_for(bot.ready.wait(), 10)
        fake.fail("sendMessage", 403, BLOCKED)  # the person blocked the bot
        fake.inject_message(42, "first")
        first = await stored(bot.session, "42", 2)
        assert fake.sent == []  # nothing reached the person
        fake.inject_message(42, "second")  # unblocked
        [delivered] = await fake.wait_for_messages(1)
        assert delivered.text == "reply:second"
        entries = await stored(bot.session, "42", 4)
    finally:
        await bot.stop()
        await runner
    assert first == entries[:2]
    assert [(e.role, e.content) for e in entries] == [
        ("user", "first"), ("assistant", "reply:first"),
        ("user", "second"), ("assistant", "reply:second"),
    ]  # fmt: skip
    assert entries[1].metadata == {"delivery": "failed", "delivery_error": "BadRequest"}
    assert entries[1].undelivered and not entries[3].undelivered
    assert "delivery" not in entries[3].metadata
    # The next turn's model saw the failed reply, labelled as not delivered.
    history, message, _ = agent.calls[1]
    assert [e.content for e in history] == ["first", "reply:first"]
    sent_to_model = build_messages("", history, message)
    assert sent_to_model[1]["role"] == "assistant"
    assert sent_to_model[1]["content"] == f"[{UNDELIVERED} (BadRequest)] reply:first"
    # Kept across a restart: a fresh store object reads the mark back.
    reopened = store_factory()
    if isinstance(reopened, MemoryHistoryStore):
        return
    try:
        again = await reopened.load("bot_telegram_42")
        assert [e.metadata.get("delivery") for e in again] == [None, "failed", None, None]
    finally:
        await reopened.close()


async def test_retried_server_errors_that_never_clear_mark_the_reply(
    fake: FakeTelegram,
) -> None:
    """Retries run out (502 every time): the reply is stored marked, after every retry."""
    bot = Bot("telegram", RecordingAgent(), token=fake.token, base_url=fake.base_url,
              retry_policy=FAST, store="memory://", gc_freeze=False)  # fmt: skip
    runner = asyncio.create_task(bot.start())
    try:
        await asyncio.wait_for(bot.ready.wait(), 10)
        fake.server_error("sendMessage", 502, times=FAST.attempts)
        fake.inject_message(42, "hello")
        entries = await stored(bot.session, "42", 2)
    finally:
        await bot.stop()
        await runner
    statuses = [c.status for c in fake.requests if c.method == "sendMessage"]
    assert statuses == [502] * FAST.attempts
    assert entries[1].metadata["delivery_error"] == "PlatformUnavailable"


def test_entry_text_labels_undelivered_text() -> None:
    failed = {"delivery": "failed", "delivery_error": "OutcomeUnknown"}
    reply = HistoryEntry("assistant", "see you at 5", 1.0, metadata=failed)
    assert entry_text(reply) == f"[{UNDELIVERED} (OutcomeUnknown)] see you at 5"
    cron = HistoryEntry("assistant", "stand-up", 1.0, mirror=True, source="cron",
                        metadata=failed)  # fmt: skip
    assert entry_text(cron) == (
        f"[{UNDELIVERED} (OutcomeUnknown)] [sent by the bot on its own via cron] stand-up"
    )
    fine = HistoryEntry("assistant", "ok", 1.0, metadata={"delivery": "ok?"})
    assert entry_text(fine) == "ok" and not fine.undelivered


# -- the same through onethread's own FakeAdapter: paths the platform fake cannot reach ----


class FailingAdapter(FakeAdapter):
    """Sends fail with ``error`` while it is set (as a platform refusing would)."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.error: BaseException | None = None
        self.attempts = 0

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        return await super().do_send(chat_id, text, thread_id=thread_id, formatted=formatted)


class BrokenAppendStore(MemoryHistoryStore):
    """A store whose appends fail (an outage after the reply went out)."""

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        raise StoreError("the store is down")


async def run_bot(bot: Bot) -> asyncio.Task[None]:
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 5)
    return task


class CountingStore(MemoryHistoryStore):
    """Records the size of every append (one append is one transaction)."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        self.appends.append(len(entries))
        await super().append(key, entries)


@pytest.mark.parametrize("fails", [False, True])
async def test_a_turn_is_one_append_whatever_its_delivery(fails: bool) -> None:
    """The reply is stored once, with the user's message, after delivery: no second
    write to mark it, and no entry written while it was still being sent."""
    store = CountingStore()
    manager = BotSessionManager(store=store)
    seen_during_send: list[int] = []

    async def deliver(text: str) -> None:
        seen_during_send.append(await store.count("bot_fake_u1"))
        if fails:
            raise PlatformUnavailable("503", platform="fake")

    if fails:
        with pytest.raises(PlatformUnavailable):
            await manager.chat(RecordingAgent(), "u1", "hi", platform="fake", deliver=deliver)
    else:
        assert await manager.chat(RecordingAgent(), "u1", "hi", platform="fake",
                                  deliver=deliver) == "reply:hi"  # fmt: skip
    assert store.appends == [2] and seen_during_send == [0]
    [message, reply] = await store.load("bot_fake_u1")
    assert message.content == "hi" and message.timestamp <= reply.timestamp
    assert reply.undelivered is fails
    await manager.close()


async def test_a_delivered_reply_gets_no_apology_when_the_store_fails_after() -> None:
    adapter = FailingAdapter()
    bot = Bot("fake", RecordingAgent(), adapter=adapter, store=BrokenAppendStore(),
              gc_freeze=False)  # fmt: skip
    runner = await run_bot(bot)
    try:
        await adapter.inject("hello")
        await adapter.wait_sent(1)
        await asyncio.sleep(0.05)
    finally:
        await bot.stop()
        await runner
    assert [m.text for m in adapter.sent] == ["reply:hello"]  # not TURN_FAILED on top
    assert TURN_FAILED not in [m.text for m in adapter.sent]


async def test_a_turn_cancelled_while_sending_is_stored_marked() -> None:
    """Stop during a send that hangs: the turn is stored, the reply marked, none lost."""

    class Hanging(FakeAdapter):
        async def do_send(self, chat_id: str, text: str, *, thread_id: str = "",
                          formatted: bool = True) -> str:  # fmt: skip
            await asyncio.Event().wait()  # never answers
            return "never"

    adapter = Hanging("fake")
    store = MemoryHistoryStore()
    session = BotSessionManager(store=store)  # not the bot's: still open after its stop
    bot = Bot("fake", RecordingAgent(), adapter=adapter, session=session, drain_timeout=0.2,
              gc_freeze=False)  # fmt: skip
    runner = await run_bot(bot)
    await adapter.inject("are you there?", user="u1")
    await asyncio.sleep(0.05)
    assert await store.load("bot_fake_u1") == []  # stored once the outcome is known
    await bot.stop()  # the drain deadline cancels the hanging send
    await runner
    entries = await store.load("bot_fake_u1")
    assert [(e.content, e.metadata.get("delivery_error")) for e in entries] == [
        ("are you there?", None),
        ("reply:are you there?", "CancelledError"),
    ]
    await session.close()


async def test_notify_that_fails_is_mirrored_marked_and_raised() -> None:
    adapter = FailingAdapter()
    botos = BotOS(RecordingAgent(), bots=[Bot("fake", adapter=adapter, gc_freeze=False)],
                  store="memory://", gc_freeze=False)  # fmt: skip
    runner = asyncio.create_task(botos.start())
    try:
        await botos.wait_ready(5)
        await adapter.inject("hi", user="u1")

        async def turn_stored() -> bool:
            return await botos.session.store.count("bot_fake_u1") == 2

        await wait_for(turn_stored, "the turn stored")
        adapter.error = BadRequest("chat not found", platform="fake")
        with pytest.raises(BadRequest):
            await botos.notify("fake:u1", "Reminder: stand-up")
        adapter.error = None
        await botos.notify("fake:u1", "Reminder: lunch")
        entries = await botos.session.store.load("bot_fake_u1")
    finally:
        await botos.stop()
        await runner
    mirrored = {e.content: e for e in entries if e.mirror}
    failed = mirrored["Reminder: stand-up"]
    assert failed.metadata["delivery"] == "failed"
    assert failed.metadata["delivery_error"] == "BadRequest"
    assert failed.metadata["platform"] == "fake"
    assert not mirrored["Reminder: lunch"].undelivered


@pytest.mark.parametrize(
    ("error", "retried", "attempt"),
    [
        (BadRequest("chat not found", platform="fake"), False, 1),
        (OutcomeUnknown("read timeout", platform="fake"), False, 1),
        (PlatformUnavailable("503", platform="fake"), True, 1),
        (PlatformUnavailable("503", platform="fake"), True, 5),
    ],
)
async def test_outbox_delivery_that_fails_is_mirrored_marked(
    error: BaseException, retried: bool, attempt: int
) -> None:
    """The outbox callback: refusals are acknowledged (not retried) and mirrored as
    failed; retryable errors are raised for the outbox to retry, and mirrored as
    failed only on the last attempt."""
    from onethread.session.outbox import OutboxItem

    class Outbox:
        max_attempts = 5

    adapter = FailingAdapter()
    botos = BotOS(RecordingAgent(), bots=[Bot("fake", adapter=adapter, gc_freeze=False)],
                  store="memory://", gc_freeze=False)  # fmt: skip
    botos.outbox = Outbox()  # type: ignore[assignment]  # only max_attempts is read
    adapter.error = error
    item = OutboxItem("fake", "dm-u1", "from host B", unified_user_id="fake:u1", id="1-0",
                      attempts=attempt)  # fmt: skip
    if retried:
        with pytest.raises(type(error)):
            await botos._deliver(item)
    else:
        await botos._deliver(item)
    entries = await botos.session.store.load("bot_fake_u1")
    last = attempt == Outbox.max_attempts
    if not retried or last:
        [entry] = entries
        assert entry.mirror and entry.undelivered
        assert entry.metadata["delivery_error"] == type(error).__name__
    else:
        assert entries == []
    await botos.session.close()


async def test_history_show_marks_an_undelivered_reply(_isolated_env: Path) -> None:
    """``onethread history show`` (a subprocess, the real CLI) flags the failed reply."""
    manager = BotSessionManager(store=open_history_store(f"sqlite:///{_isolated_env}/history.db"))

    async def refused(text: str) -> None:
        raise BadRequest("bot was blocked by the user", platform="telegram")

    with pytest.raises(BadRequest):
        await manager.chat(RecordingAgent(), "7", "ping", platform="telegram", deliver=refused)
    await manager.chat(RecordingAgent(), "7", "again", platform="telegram")
    await manager.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onethread", "history", "show", "telegram:7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert "assistant [NOT DELIVERED: BadRequest]: reply:ping" in lines[1]
    assert lines[3].endswith("assistant: reply:again")


class Verbose:
    """A Responder whose every reply is about 1 MB of prose."""

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        paragraph = " ".join(f"word{i}" for i in range(150))  # ~1,000 characters
        return "\n\n".join(f"{n}. {paragraph}" for n in range(1000))  # ~1 MB


async def test_a_one_megabyte_reply_goes_out_as_ten_messages_with_a_cut_note(
    fake: FakeTelegram,
) -> None:
    """Was 245 Telegram messages; now the first part in 10, the last saying it was cut,
    then the whole reply as a file."""
    bot = Bot("telegram", Verbose(), token=fake.token, base_url=fake.base_url,
              retry_policy=FAST, store="memory://", gc_freeze=False)  # fmt: skip
    runner = asyncio.create_task(bot.start())
    try:
        await asyncio.wait_for(bot.ready.wait(), 10)
        fake.inject_message(42, "tell me everything")
        entries = await stored(bot.session, "42", 2)
        await asyncio.sleep(0.2)  # nothing else follows
    finally:
        await bot.stop()
        await runner
    reply = entries[1]
    assert len(reply.content) > 1_000_000  # history keeps what the model wrote
    assert reply.metadata == {"delivery": "cut"}
    assert len(fake.sent) == 10
    assert all(len(m.text) <= 4096 for m in fake.sent)
    assert fake.sent[-1].text.endswith(CUT_NOTE)
    assert fake.sent[0].text.startswith("0. word0 word1")
    assert entry_text(reply).startswith(f"[{CUT_SHORT}] 0. word0")
    # ... and the whole reply follows as a file, so nothing is lost to the person.
    [whole] = fake.sent_files
    assert (whole.method, whole.filename) == ("sendDocument", "reply.md")
    assert whole.data == reply.content.encode()


async def test_a_notify_too_long_for_the_chat_is_marked_cut_and_sent_whole_as_a_file(
    fake: FakeTelegram,
) -> None:
    """notify() (and Bot.send) cut a long text at the message cap like a reply does:
    the whole text follows as reply.md and the mirrored entry is marked cut."""
    bot = Bot("telegram", RecordingAgent(), token=fake.token, base_url=fake.base_url,
              retry_policy=FAST, gc_freeze=False)  # fmt: skip
    botos = BotOS(RecordingAgent(), bots=[bot], store="memory://", gc_freeze=False)
    runner = asyncio.create_task(botos.start())
    long_text = "\n\n".join(f"{n}. " + "word " * 200 for n in range(100))  # ~100 KB
    try:
        await botos.wait_ready(10)
        fake.inject_message(42, "hi")
        await stored(botos.session, "42", 2)
        await botos.notify("telegram:42", "short one")
        await botos.notify("telegram:42", long_text)
        entries = await botos.session.history("42", platform="telegram", chat_id="42")
    finally:
        await botos.stop()
        await runner
    mirrored = {e.content: e for e in entries if e.mirror}
    assert mirrored["short one"].metadata.get("delivery") is None
    assert mirrored[long_text].metadata["delivery"] == "cut"
    assert fake.sent[-1].text.endswith(CUT_NOTE)
    [whole] = fake.sent_files
    assert (whole.filename, whole.data) == ("reply.md", long_text.encode())


async def test_refused_outbox_item_is_acknowledged_and_mirrored_failed_on_redis() -> None:
    """Host B serves the platform from a real Redis outbox; the platform refuses the
    message: it is recorded as not delivered, once, and not handed out again."""
    from onethread.session.locks.redis import RedisDuplicateFilter, RedisTurnLocks
    from onethread.session.outbox import OutboxItem
    from onethread.session.outbox.redis import RedisOutbox
    from onethread.session.urls import Coordination

    url = redis_url()
    with redis_prefix() as prefix:
        outbox = RedisOutbox(url, prefix=prefix, visibility=0.2, poll=0.02)
        locks = RedisTurnLocks(url, prefix=prefix)
        coordination = Coordination(locks, RedisDuplicateFilter(url, prefix=prefix), outbox, True)
        adapter = FailingAdapter()
        adapter.error = BadRequest("chat not found", platform="fake")
        host_b = BotOS(RecordingAgent(), bots=[Bot("fake", adapter=adapter, gc_freeze=False)],
                       store=open_history_store(url, prefix=prefix), coordination=coordination,
                       gc_freeze=False)  # fmt: skip
        runner = asyncio.create_task(host_b.start())
        host_a = RedisOutbox(url, prefix=prefix)  # another host queues the message
        try:
            await host_b.wait_ready(5)
            await host_a.put(OutboxItem("fake", "dm-u1", "Reminder: dentist",
                                        unified_user_id="fake:u1", source="cron"))  # fmt: skip

            async def mirrored() -> bool:
                return await host_b.session.store.count("bot_fake_u1") == 1

            await wait_for(mirrored, "the failed delivery mirrored")
            await asyncio.sleep(0.6)  # three visibility windows: no second hand-out
            [entry] = await host_b.session.store.load("bot_fake_u1")
        finally:
            await host_a.close()
            await host_b.stop()
            await runner
            await coordination.close()
    assert entry.mirror and entry.source == "cron" and entry.content == "Reminder: dentist"
    assert entry.metadata["delivery"] == "failed"
    assert entry.metadata["delivery_error"] == "BadRequest"
    assert adapter.sent == [] and adapter.attempts == 1  # refused once, not retried
