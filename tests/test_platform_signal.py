"""Signal through signal-cli's JSON-RPC daemon: the real adapter against a protocol-faithful
fake of the daemon (``fake_signal.FakeSignalCli``) on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fake_signal import FakeSignalCli, sticker_file
from helpers import RecordingAgent
from onethread.agent.files import File
from onethread.bots import Bot
from onethread.bots.supervisor import Backoff
from onethread.errors import (
    BadRequest,
    ConfigError,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
)
from onethread.platforms.signal import SignalAdapter
from onethread.platforms.web import WebAdapter
from test_blobs import png

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[FakeSignalCli]:
    d = FakeSignalCli(tmp_path / "signal-cli")
    await d.start()
    yield d
    await d.stop()


def signal_bot(daemon: FakeSignalCli, agent: Any = None, **options: Any) -> Bot:
    options.setdefault("data_dir", daemon.data_dir)
    return Bot(
        "signal",
        agent or RecordingAgent(),
        store="memory://",
        account=daemon.account,
        url=daemon.url,
        backoff=Backoff(base=0.05, cap=0.2),
        **options,
    )


async def serve(bot: Bot) -> asyncio.Task[None]:
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 10)
    return task


@pytest.fixture
async def served(daemon: FakeSignalCli) -> AsyncIterator[Bot]:
    bot = signal_bot(daemon)
    task = await serve(bot)
    yield bot
    await bot.stop()
    await task


def recorded(bot: Bot) -> RecordingAgent:
    assert isinstance(bot.agent, RecordingAgent)
    return bot.agent


# -- a conversation -----------------------------------------------------------------


async def test_dm_answered_as_plain_text_with_typing_and_a_read_receipt(
    daemon: FakeSignalCli, served: Bot
) -> None:
    recorded(served).delay = 0.2  # long enough for the typing notice to go out
    alice = daemon.person("Alice", "+15550001111")
    ts = daemon.inject_dm(alice, "say **hello**")
    [sent] = await daemon.wait_for_sent(1)
    assert sent.recipients == [alice.uuid] and sent.group_id is None
    assert sent.message == "reply:say hello"  # the Markdown rendered as Signal's plain text
    assert sent.params["textStyle"] == ["10:5:BOLD"]  # ... with its styles, in UTF-16 units
    assert sent.params["account"] == daemon.account
    [(history, message, ctx)] = recorded(served).calls
    assert message.content == "say **hello**" and history == []
    assert (ctx.platform, ctx.chat_type, ctx.chat_id) == ("signal", "dm", alice.uuid)
    assert (ctx.user_id, ctx.user_name, ctx.message_id) == (alice.uuid, "Alice", str(ts))
    typing = await daemon.wait_for_call("sendTyping")
    assert typing.params["recipient"] == [alice.uuid]
    receipt = await daemon.wait_for_call("sendReceipt")
    assert receipt.params["recipient"] == alice.uuid
    assert receipt.params["targetTimestamp"] == [ts] and receipt.params["type"] == "read"


async def test_a_person_with_a_hidden_number_is_known_by_uuid(
    daemon: FakeSignalCli, served: Bot
) -> None:
    bob = daemon.person("Bob", number=None)
    daemon.inject_dm(bob, "first")
    await daemon.wait_for_sent(1)
    daemon.inject_dm(bob, "second")
    [_, sent] = await daemon.wait_for_sent(2)
    assert sent.recipients == [bob.uuid]
    [_, (history, _, ctx)] = recorded(served).calls
    assert ctx.user_id == bob.uuid and [e.content for e in history] == ["first", "reply:first"]


async def test_group_answers_only_mentions_replies_and_commands(
    daemon: FakeSignalCli, served: Bot
) -> None:
    alice, bob = daemon.person("Alice", "+15550001111"), daemon.person("Bob", None)
    group = daemon.group("Book club", alice, bob)
    daemon.inject_group(alice, group, "anyone read it yet?")  # not for the bot
    mention = daemon.mention_of(daemon.me, start=0)
    daemon.inject_group(bob, group, "\ufffc what did you think?", mentions=[mention])
    [first] = await daemon.wait_for_sent(1)
    assert first.group_id == group.id and first.recipients == []
    assert first.message == "reply:what did you think?"
    # A quote of someone else's message is not for the bot; one of the bot's is.
    daemon.inject_group(alice, group, "agreed", quote=daemon.quote_of(1, bob, "x"))
    daemon.inject_group(
        alice, group, "and the ending?", quote=daemon.quote_of(first.timestamp, daemon.me, "...")
    )
    [_, second] = await daemon.wait_for_sent(2)
    assert second.message == "reply:and the ending?"
    # A mention in the middle is kept as @number; a mention of someone else is no call.
    daemon.inject_group(alice, group, "ask \ufffc", mentions=[daemon.mention_of(bob, start=4)])
    daemon.inject_group(bob, group, "/whoami")
    await daemon.wait_for_sent(3)
    texts = [m.content for _, m, _ in recorded(served).calls]
    assert texts == ["what did you think?", "and the ending?"]
    ctx = recorded(served).calls[0][2]
    assert (ctx.chat_type, ctx.chat_id, ctx.chat_name) == ("group", group.id, "Book club")
    assert ctx.user_id == bob.uuid
    assert bob.uuid in daemon.sent[2].message  # /whoami answered in the group


async def test_sync_receipt_and_typing_envelopes_start_no_turn(
    daemon: FakeSignalCli, served: Bot
) -> None:
    alice = daemon.person("Alice", "+15550001111")
    daemon.inject_sync_sent(alice, "hello from the bot account's phone")
    daemon.inject_receipt(alice, [123])
    daemon.inject_typing(alice)
    daemon.inject_dm(daemon.me, "note to self from another device")
    daemon.inject_dm(alice, "the real one")
    [sent] = await daemon.wait_for_sent(1)
    assert sent.message == "reply:the real one"
    await asyncio.sleep(0.2)
    assert [m.content for _, m, _ in recorded(served).calls] == ["the real one"]
    receipts = [c for c in daemon.calls if c.method == "sendReceipt"]
    assert [c.params["recipient"] for c in receipts] == [alice.uuid]


# -- attachments ----------------------------------------------------------------------


@pytest.mark.parametrize("daemon_folder_here", [True, False], ids=["data_dir", "getAttachment"])
async def test_attachment_in_reaches_the_blob_store(
    daemon: FakeSignalCli, tmp_path: Path, daemon_folder_here: bool
) -> None:
    data_dir = daemon.data_dir if daemon_folder_here else tmp_path / "elsewhere"
    bot = signal_bot(daemon, data_dir=data_dir)
    task = await serve(bot)
    try:
        alice = daemon.person("Alice", "+15550001111")
        image = png()
        daemon.inject_dm(alice, None, attachments=[daemon.attachment(image, "image/png", None)])
        await daemon.wait_for_sent(1)
        [(_, message, _)] = recorded(bot).calls
        [att] = message.attachments
        assert (att.kind, att.mime, att.size) == ("image", "image/png", len(image))
        assert await bot.session.blobs.get(att.blob) == image
    finally:
        await bot.stop()
        await task
    fetched = [c for c in daemon.calls if c.method == "getAttachment"]
    assert bool(fetched) is not daemon_folder_here


async def test_voice_note_file_and_sticker_are_described(
    daemon: FakeSignalCli, served: Bot
) -> None:
    alice = daemon.person("Alice", "+15550001111")
    sticker_file(daemon.data_dir, "ab12", 3, png())
    timestamp = 1_700_000_000_000
    data = {"timestamp": timestamp, "message": None, "expiresInSeconds": 0,
            "isExpirationUpdate": False, "viewOnce": False,
            "sticker": {"packId": "ab12", "stickerId": 3}}  # fmt: skip
    daemon.emit(daemon._envelope(alice, timestamp, dataMessage=data))
    await daemon.wait_for_sent(1)
    [att] = recorded(served).calls[0][1].attachments
    assert (att.kind, att.mime) == ("sticker", "image/png")
    note = daemon.attachment(b"OggS" + bytes(60), "audio/aac", None)
    doc = daemon.attachment(b"%PDF-1.4\n" + bytes(20), "application/pdf", "minutes.pdf")
    daemon.inject_dm(alice, "two files", attachments=[note, doc])
    await daemon.wait_for_sent(2)
    kinds = [(a.kind, a.name) for a in recorded(served).calls[1][1].attachments]
    assert kinds == [("voice", ""), ("file", "minutes.pdf")]


@pytest.mark.parametrize("outbox", [False, True], ids=["data-uri", "outbox_dir"])
async def test_attachment_out(daemon: FakeSignalCli, tmp_path: Path, outbox: bool) -> None:
    outbox_dir = tmp_path / "outbox" if outbox else None
    bot = signal_bot(daemon, outbox_dir=outbox_dir)
    task = await serve(bot)
    try:
        alice = daemon.person("Alice", "+15550001111")
        image = png()
        ids = await bot.send(alice.uuid, "your chart", attachments=[File(image, name="chart.png")])
        text, with_file = await daemon.wait_for_sent(2)
    finally:
        await bot.stop()
        await task
    assert ids == [str(text.timestamp), str(with_file.timestamp)]
    assert text.message == "your chart" and not text.files
    [(name, mime, data)] = with_file.files
    assert data == image and name.endswith("chart.png")
    [ref] = with_file.params["attachments"]
    if outbox_dir is not None:
        assert ref.startswith(str(outbox_dir)) and not Path(ref).exists()  # removed after
        assert list(outbox_dir.iterdir()) == []
    else:
        assert ref.startswith("data:image/png;filename=chart.png;base64,")
        assert (name, mime) == ("chart.png", "image/png")


# -- the connection -----------------------------------------------------------------------


async def test_daemon_restart_reconnects_and_loses_nothing_sent_after(
    daemon: FakeSignalCli, served: Bot
) -> None:
    alice = daemon.person("Alice", "+15550001111")
    daemon.inject_dm(alice, "before")
    await daemon.wait_for_sent(1)
    await daemon.stop()
    for _ in range(200):
        if not served.ready.is_set():
            break
        await asyncio.sleep(0.025)
    assert not served.ready.is_set(), "the lost connection was never noticed"
    daemon.inject_dm(alice, "while it was down")  # waits on Signal's servers
    await asyncio.sleep(0.3)  # the adapter retries against a closed port meanwhile
    await daemon.start()
    await asyncio.wait_for(served.ready.wait(), 10)
    daemon.inject_dm(alice, "after")
    sent = await daemon.wait_for_sent(3)
    assert [s.message for s in sent] == ["reply:before", "reply:while it was down", "reply:after"]
    assert daemon.connections == 2


async def test_rate_limit_is_waited_out_and_retried(daemon: FakeSignalCli, served: Bot) -> None:
    alice = daemon.person("Alice", "+15550001111")
    daemon.rate_limit_next_send(1)
    await served.send(alice.uuid, "hello")
    [sent] = await daemon.wait_for_sent(1)
    assert sent.message == "hello"
    assert [c.method for c in daemon.calls].count("send") == 2


async def test_unregistered_recipient_is_a_clear_error(daemon: FakeSignalCli, served: Bot) -> None:
    gone = daemon.person("Gone", "+15550009999")
    daemon.unregistered.add(gone.uuid)
    with pytest.raises(BadRequest, match="not registered on Signal"):
        await served.send(gone.uuid, "hello?")
    daemon.fail_next("send", -1, f"Group not found: {'A' * 43}=")
    with pytest.raises(BadRequest, match="Group not found"):
        await served.send("A" * 43 + "=", "hi group")


async def test_multi_account_daemon_without_the_account_is_refused(tmp_path: Path) -> None:
    other = FakeSignalCli(tmp_path / "signal-cli", account="+15550000002", multi_account=True)
    await other.start()
    try:
        bot = Bot("signal", RecordingAgent(), store="memory://", account="+15550000001",
                  url=other.url)  # fmt: skip
        with pytest.raises(PlatformAuthError, match=r"no account \+15550000001"):
            await asyncio.wait_for(bot.start(), 10)
    finally:
        await other.stop()


async def test_multi_account_daemon_serves_the_named_account(tmp_path: Path) -> None:
    d = FakeSignalCli(tmp_path / "signal-cli", multi_account=True)
    await d.start()
    bot = signal_bot(d)
    task = await serve(bot)
    try:
        alice = d.person("Alice", "+15550001111")
        d.inject_dm(alice, "hi")
        [sent] = await d.wait_for_sent(1)
        assert sent.params["account"] == d.account
        listed = next(c for c in d.calls if c.method == "listContacts")
        assert listed.params["recipient"] == [d.account]
    finally:
        await bot.stop()
        await task
        await d.stop()


async def test_no_daemon_is_a_clear_unavailable_error(unused_tcp_port: int) -> None:
    adapter = SignalAdapter(account="+15550000001", url=f"tcp://127.0.0.1:{unused_tcp_port}")

    async def nothing(_: Any) -> None:
        return None

    with pytest.raises(PlatformUnavailable, match="cannot reach signal-cli's daemon"):
        await adapter.start(nothing)
    with pytest.raises(PlatformUnavailable, match="not connected"):
        await adapter.do_send("+15550001111", "hi")


async def test_missing_or_malformed_account_is_a_config_error() -> None:
    async def nothing(_: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="SIGNAL_ACCOUNT"):
        await SignalAdapter().start(nothing)
    with pytest.raises(ConfigError, match="leading \\+"):
        await SignalAdapter(account="015112345678").start(nothing)
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        SignalAdapter(account="+15550000001", url="http://127.0.0.1:7583")
    with pytest.raises(ConfigError, match="unknown signal option"):
        SignalAdapter(account="+15550000001", colour="blue")
    problems = SignalAdapter.check_options({"account": "4915112345678"}, {})
    assert [key for key, _ in problems] == ["account"]
    assert SignalAdapter.check_options({}, {"SIGNAL_ACCOUNT": "+4915112345678"}) == []


async def test_check_probes_the_daemon_and_names_the_fix(
    daemon: FakeSignalCli, tmp_path: Path
) -> None:
    env = {"SIGNAL_ACCOUNT": "+4915112345678", "SIGNAL_CLI_URL": daemon.url}
    assert await SignalAdapter.probe_options({}, env, 2.0) == []
    port = daemon.port
    await daemon.stop()  # nothing listens there now
    [(option, message)] = await SignalAdapter.probe_options({}, env, 2.0)
    assert option == "url" and f"cannot reach signal-cli's daemon at {daemon.url}" in message
    assert f"signal-cli -a ACCOUNT daemon --tcp 127.0.0.1:{port}" in message
    assert "SIGNAL_CLI_URL" in message
    socket = tmp_path / "no-daemon.sock"
    [(option, message)] = await SignalAdapter.probe_options({"url": f"unix://{socket}"}, env, 2.0)
    assert f"daemon --socket {socket}" in message and "the url option" in message


# -- /link between Signal and the web chat -----------------------------------------------


async def test_link_between_signal_and_the_web_chat_gives_one_conversation(
    daemon: FakeSignalCli, tmp_path: Path
) -> None:
    from onethread.bots import BotOS
    from onethread.session import InMemoryIdentityResolver
    from onethread.session.pairing import PairingStore

    resolver = InMemoryIdentityResolver()
    agent = RecordingAgent()
    botos = BotOS(
        agent,
        platforms={
            "signal": {"account": daemon.account, "url": daemon.url, "data_dir": daemon.data_dir},
            "web": {"port": 0},
        },
        identity_resolver=resolver,
        store="memory://",
        pairing=PairingStore(tmp_path / "pairing.db"),
    )
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(20)
    alice = daemon.person("Alice", "+15550001111")
    try:
        daemon.inject_dm(alice, "/link")
        [code_msg] = await daemon.wait_for_sent(1)
        code = code_msg.message.split("/link ")[1].split()[0]
        web = botos.bots["web"].adapter
        assert isinstance(web, WebAdapter)
        async with aiohttp.ClientSession() as http:
            params = {"user": "w1", "name": "Alice", "history": "0"}
            async with http.ws_connect(web.url + "ws", params=params) as ws:
                await ws.send_json({"type": "message", "id": "m1", "text": f"/link {code}"})
                linked = await _web_reply(ws)
                assert "Linked" in linked
                assert resolver.resolve("signal", alice.uuid) == resolver.resolve("web", "w1")
                daemon.inject_dm(alice, "remember: blue")
                await daemon.wait_for_sent(3)  # the code, the "linked" notice, the reply
                await ws.send_json({"type": "message", "id": "m2", "text": "what colour?"})
                assert await _web_reply(ws) == "reply:what colour?"
    finally:
        await botos.stop()
        await task
    history, message, ctx = agent.calls[-1]
    assert message.content == "what colour?" and ctx.platform == "web"
    assert "remember: blue" in [e.content for e in history]
    assert ctx.unified_user_id == resolver.resolve("signal", alice.uuid)


async def _web_reply(ws: aiohttp.ClientWebSocketResponse) -> str:
    while True:
        frame = await ws.receive_json(timeout=10)
        if frame.get("type") == "message" and frame.get("role") == "assistant":
            await ws.send_json({"type": "ack", "id": frame["id"]})
            return str(frame["text"])


async def test_a_send_cut_off_by_the_daemon_going_away_is_not_repeated(
    daemon: FakeSignalCli, served: Bot
) -> None:
    alice = daemon.person("Alice", "+15550001111")
    daemon.stalled.add("send")
    sending = asyncio.create_task(served.send(alice.uuid, "did this arrive?"))
    await daemon.wait_for_call("send")
    await daemon.stop()
    with pytest.raises(OutcomeUnknown, match="no answer from signal-cli"):
        await sending
    assert [c.method for c in daemon.calls].count("send") == 1


async def test_a_send_the_daemon_never_answers_times_out_once(daemon: FakeSignalCli) -> None:
    bot = signal_bot(daemon, request_timeout=0.3)
    task = await serve(bot)
    try:
        daemon.stalled.add("send")
        with pytest.raises(OutcomeUnknown, match="within 0.3s"):
            await bot.send(daemon.person("Alice", None).uuid, "hello")
        assert [c.method for c in daemon.calls].count("send") == 1
    finally:
        await bot.stop()
        await task


async def test_a_daemon_of_another_account_stops_the_bot_with_the_fix(tmp_path: Path) -> None:
    other = FakeSignalCli(tmp_path / "signal-cli", account="+15550000002")  # started with -a
    await other.start()
    try:
        bot = Bot("signal", RecordingAgent(), store="memory://", account="+15550000001",
                  url=other.url)  # fmt: skip
        task = asyncio.create_task(bot.start())
        await asyncio.wait_for(bot.ready.wait(), 10)
        other.inject_dm(other.person("Alice", None), "hello")
        with pytest.raises(ConfigError, match=r"serves \+15550000002, not SIGNAL_ACCOUNT"):
            await asyncio.wait_for(task, 10)
        assert other.sent == []
    finally:
        await other.stop()


async def test_a_stop_while_a_message_is_handed_on_lets_it_finish(daemon: FakeSignalCli) -> None:
    adapter = SignalAdapter(account=daemon.account, url=daemon.url, data_dir=daemon.data_dir)
    entered, release = asyncio.Event(), asyncio.Event()
    got: list[str] = []

    async def on_inbound(msg: Any) -> None:
        entered.set()
        await release.wait()
        got.append(msg.text)

    await adapter.start(on_inbound)
    daemon.inject_dm(daemon.person("Alice", None), "hi")
    await asyncio.wait_for(entered.wait(), 5)
    stopping = asyncio.create_task(adapter.stop())  # as the supervisor does on a reconnect
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert got == ["hi"]


async def test_a_daemon_on_a_unix_socket(tmp_path: Path) -> None:
    d = FakeSignalCli(tmp_path / "signal-cli", socket_path=tmp_path / "signal.sock")
    await d.start()
    bot = signal_bot(d)
    assert d.url.startswith("unix://")
    task = await serve(bot)
    try:
        d.inject_dm(d.person("Alice", None), "over the socket")
        [sent] = await d.wait_for_sent(1)
        assert sent.message == "reply:over the socket"
    finally:
        await bot.stop()
        await task
        await d.stop()


async def test_long_replies_are_cut_at_signals_2000_byte_body_limit(
    daemon: FakeSignalCli, served: Bot
) -> None:
    words = " ".join(["grüße"] * 700)  # 4200 characters, 4900 bytes of UTF-8
    alice = daemon.person("Alice", None)
    await served.send(alice.uuid, words)
    sent = daemon.sent
    assert len(sent) >= 3
    assert all(len(s.message.encode("utf-8")) <= 2000 for s in sent)
    assert " ".join(s.message for s in sent).split() == words.split()
