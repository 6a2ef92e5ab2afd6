"""The Matrix platform end to end: the REAL matrix-nio client (the bot's and the people's)
against a REAL Synapse on 127.0.0.1 (tests/synapse_server.py), one server for the session.

Without Synapse installed these tests skip with the install command; under
``CI=true`` a Synapse that is missing or does not start fails them.
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import RecordingAgent
from matrix_people import CuttableProxy, Person, body, final, is_edit
from onethread import File
from onethread.bots import Bot, BotOS
from onethread.bots.supervisor import Backoff
from onethread.errors import PlatformAuthError
from onethread.platforms.matrix import ENCRYPTED_NOTICE, MatrixAdapter
from onethread.platforms.matrix_state import state_path
from onethread.session import InMemoryIdentityResolver
from onethread.session.pairing import PairingStore
from synapse_server import Registered, Synapse, SynapseUnavailable

pytestmark = [pytest.mark.synapse, pytest.mark.timeout(180)]

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4"
    "890000000d4944415478da63f8cfc0f01f0005000201a6a6d8a30000000049454e44ae426082"
)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    try:
        server.start()
    except SynapseUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs a running Synapse: {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def person(synapse: Synapse, name: str = "alice") -> AsyncIterator[Person]:
    async with Person(synapse, synapse.register(name)) as p:
        yield p


def matrix_bot(synapse: Synapse, account: Registered, agent: Any, **options: Any) -> Bot:
    credentials: dict[str, Any] = {"token": account.access_token}
    if options.pop("by_password", False):
        credentials = {"password": account.password}
    return Bot(
        "matrix",
        agent,
        store="memory://",
        homeserver=synapse.url,
        user_id=account.user_id,
        **credentials,
        **options,
    )


@asynccontextmanager
async def running(bot: Bot) -> AsyncIterator[Bot]:
    task = asyncio.create_task(bot.start())
    ready = asyncio.create_task(bot.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises the start failure
    assert bot.ready.is_set(), "the matrix bot did not get ready"
    try:
        yield bot
    finally:
        await bot.stop()
        await task


def agent_of(bot: Bot) -> RecordingAgent:
    assert isinstance(bot.agent, RecordingAgent)
    return bot.agent


async def dm(alice: Person, bot_id: str) -> str:
    room = await alice.create_room([bot_id], direct=True)
    await alice.wait_joined(room, bot_id)
    return room


# -- DMs ---------------------------------------------------------------------------


async def test_dm_is_answered_in_html_with_typing_first(synapse: Synapse) -> None:
    account = synapse.register("bot")
    bot = matrix_bot(synapse, account, RecordingAgent(delay=1.0))
    async with person(synapse) as alice, running(bot):
        room = await dm(alice, account.user_id)
        asked = await alice.say(room, "is **this** bold?")
        [reply] = await alice.wait_messages(room, account.user_id, 1)
        content = reply["content"]
        assert content["msgtype"] == "m.text"
        assert content["body"] == "reply:is this bold?"
        assert content["format"] == "org.matrix.custom.html"
        assert content["formatted_body"] == "<p>reply:is <strong>this</strong> bold?</p>"
        assert account.user_id in alice.typing.get(room, set())
        await alice.quiet(1.0)
        assert account.user_id not in alice.typing_now[room]  # the reply ended it
        [(_, message, ctx)] = agent_of(bot).calls
    assert message.content == "is **this** bold?"
    assert (ctx.platform, ctx.chat_id, ctx.chat_type) == ("matrix", room, "dm")
    assert (ctx.user_id, ctx.message_id) == (alice.user_id, asked)


async def test_wrong_token_is_an_auth_error(synapse: Synapse) -> None:
    account = synapse.register("bot")
    adapter = MatrixAdapter(homeserver=synapse.url, user_id=account.user_id, token="syt_wrong")

    async def ignore(msg: object) -> None:
        return None

    with pytest.raises(PlatformAuthError, match="MATRIX_ACCESS_TOKEN"):
        await adapter.start(ignore)
    assert adapter.client is None  # a failed start leaves nothing open


async def test_a_token_revoked_while_syncing_is_reported_as_an_auth_failure(
    synapse: Synapse,
) -> None:
    account = synapse.register("bot")
    adapter = MatrixAdapter(
        homeserver=synapse.url,
        user_id=account.user_id,
        token=account.access_token,
        poll_timeout=0.5,
    )

    async def ignore(msg: object) -> None:
        return None

    await adapter.start(ignore)
    try:
        async with Person(synapse, account) as same:
            await same.client.logout()  # the token the bot syncs with is gone
        failure = await asyncio.wait_for(adapter.wait_failure(), 30)
    finally:
        await adapter.stop()
    assert isinstance(failure, PlatformAuthError) and "M_UNKNOWN_TOKEN" in str(failure)


async def test_invites_are_taken_only_from_the_allowlist(synapse: Synapse) -> None:
    account = synapse.register("bot")
    async with person(synapse) as alice, person(synapse, "mallory") as mallory:
        bot = matrix_bot(synapse, account, RecordingAgent(), invite_from=[alice.user_id])
        async with running(bot):
            refused = await mallory.create_room([account.user_id], direct=True)
            await mallory.wait_for(
                lambda e: (
                    e["room_id"] == refused
                    and e.get("type") == "m.room.member"
                    and e.get("state_key") == account.user_id
                    and e["content"].get("membership") == "leave"
                )
            )
            room = await dm(alice, account.user_id)
            await alice.say(room, "hi")
            await alice.wait_messages(room, account.user_id, 1)


async def test_first_start_skips_history_and_a_restart_neither_replays_nor_misses(
    synapse: Synapse,
) -> None:
    account = synapse.register("bot")
    async with person(synapse) as alice:
        # The account was in the room before onethread ever ran: that is history.
        room = await alice.create_room([account.user_id], direct=True)
        async with Person(synapse, account) as before:
            await before.join(room)
        await alice.say(room, "old news")

        agent = RecordingAgent()
        async with running(matrix_bot(synapse, account, agent, by_password=True)) as bot:
            await alice.say(room, "first")
            await alice.wait_messages(room, account.user_id, 1)
            device = bot.adapter.client.device_id if isinstance(bot.adapter, MatrixAdapter) else ""
        await alice.say(room, "while you were away")
        async with running(matrix_bot(synapse, account, agent, by_password=True)) as bot:
            await alice.wait_messages(room, account.user_id, 2)
            await alice.say(room, "back")
            await alice.wait_messages(room, account.user_id, 3)
            assert isinstance(bot.adapter, MatrixAdapter) and bot.adapter.client is not None
            assert bot.adapter.client.device_id == device  # the kept login, no new device
            devices = await bot.adapter.client.devices()
        await alice.quiet(1.0)
        replies = [body(e) for e in alice.messages(room, account.user_id)]
    assert replies == ["reply:first", "reply:while you were away", "reply:back"]
    assert [m.content for _, m, _ in agent.calls] == ["first", "while you were away", "back"]
    # The registration's device and onethread's one: restarts added none.
    assert len(getattr(devices, "devices", [])) == 2
    path = state_path(account.user_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert account.password not in path.read_text()


async def test_a_kept_login_the_server_refuses_is_replaced_on_the_same_device(
    synapse: Synapse,
) -> None:
    from onethread.platforms.matrix_state import MatrixState

    account = synapse.register("bot")
    agent = RecordingAgent()
    async with running(matrix_bot(synapse, account, agent, by_password=True)):
        pass
    kept = MatrixState.load(state_path(account.user_id))
    assert kept.access_token and kept.device_id
    async with Person(synapse, Registered(account.user_id, "", kept.access_token, "")) as same:
        await same.client.logout()  # e.g. signed out from another client's device list
    async with (
        person(synapse) as alice,
        running(matrix_bot(synapse, account, agent, by_password=True)) as bot,
    ):
        assert isinstance(bot.adapter, MatrixAdapter) and bot.adapter.client is not None
        assert bot.adapter.client.device_id == kept.device_id
        room = await dm(alice, account.user_id)
        await alice.say(room, "still there?")
        await alice.wait_messages(room, account.user_id, 1)
    again = MatrixState.load(state_path(account.user_id))
    assert again.device_id == kept.device_id and again.access_token != kept.access_token


async def test_a_lost_connection_is_restarted_and_nothing_is_missed_or_repeated(
    synapse: Synapse,
) -> None:
    account = synapse.register("bot")
    proxy = CuttableProxy(synapse.port)
    await proxy.start()
    bot = Bot("matrix", RecordingAgent(), store="memory://", homeserver=proxy.url,
              user_id=account.user_id, token=account.access_token, poll_timeout=1,
              max_sync_failures=2, backoff=Backoff(base=0.1, cap=0.5))  # fmt: skip
    try:
        async with person(synapse) as alice, running(bot):
            room = await dm(alice, account.user_id)
            await alice.say(room, "before")
            await alice.wait_messages(room, account.user_id, 1)
            proxy.cut()
            for _ in range(300):  # the supervisor notices the connection is gone
                if not bot.ready.is_set():
                    break
                await asyncio.sleep(0.05)
            assert not bot.ready.is_set(), "the lost connection was never noticed"
            await alice.say(room, "during")
            proxy.restore()
            await asyncio.wait_for(bot.ready.wait(), 30)
            await alice.wait_messages(room, account.user_id, 2)
            await alice.say(room, "after")
            await alice.wait_messages(room, account.user_id, 3)
            await alice.quiet(1.0)
            replies = [body(e) for e in alice.messages(room, account.user_id)]
    finally:
        await proxy.stop()
    assert replies == ["reply:before", "reply:during", "reply:after"]


# -- groups and threads --------------------------------------------------------------


async def test_group_answers_only_mentions_and_replies(synapse: Synapse) -> None:
    account = synapse.register("bot")
    async with Person(synapse, account) as me:
        await me.client.set_displayname("Helper Bot")
    bot = matrix_bot(synapse, account, RecordingAgent())
    async with person(synapse) as alice, person(synapse, "bob") as bob, running(bot):
        room = await alice.create_room([account.user_id, bob.user_id], name="Team")
        await bob.join(room)
        await alice.wait_joined(room, account.user_id)
        await alice.say(room, "hello everyone")
        await bob.say(room, "hi alice")
        await alice.say(room, "Helper Bot: one", **{"m.mentions": {"user_ids": [account.user_id]}})
        [first] = await alice.wait_messages(room, account.user_id, 1)
        await bob.say(room, "what does helper bot think? two")  # its name in the text
        await alice.wait_messages(room, account.user_id, 2)
        await alice.say(
            room, "three", **{"m.relates_to": {"m.in_reply_to": {"event_id": first["event_id"]}}}
        )
        await alice.wait_messages(room, account.user_id, 3)
        await bob.say(room, "not for the bot")
        await alice.say(room, f"{account.user_id} four")
        await alice.wait_messages(room, account.user_id, 4)
        await alice.quiet(1.0)
        replies = [body(e) for e in alice.messages(room, account.user_id)]
        calls = agent_of(bot).calls
    assert replies == [
        "reply:one",
        "reply:what does helper bot think? two",
        "reply:three",
        "reply:four",
    ]
    assert {ctx.chat_type for _, _, ctx in calls} == {"group"}
    assert calls[0][2].chat_name == "Team"


async def test_a_room_invited_to_as_direct_stays_a_dm_with_a_third_member(
    synapse: Synapse,
) -> None:
    account = synapse.register("bot")
    bot = matrix_bot(synapse, account, RecordingAgent())
    async with person(synapse) as alice, person(synapse, "bob") as bob, running(bot):
        room = await alice.create_room([account.user_id, bob.user_id], direct=True)
        await bob.join(room)
        await alice.wait_joined(room, account.user_id)
        await alice.say(room, "no mention needed here")
        [reply] = await alice.wait_messages(room, account.user_id, 1)
        [(_, _, ctx)] = agent_of(bot).calls
    assert ctx.chat_type == "dm" and body(reply) == "reply:no mention needed here"


async def test_a_thread_reply_stays_in_the_thread(synapse: Synapse) -> None:
    account = synapse.register("bot")
    bot = matrix_bot(synapse, account, RecordingAgent())
    async with person(synapse) as alice, person(synapse, "bob") as bob, running(bot):
        room = await alice.create_room([account.user_id, bob.user_id], name="Threads")
        await alice.wait_joined(room, account.user_id)
        root = await alice.say(room, "a topic")
        relation = {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": root},
        }
        asked = await alice.say(
            room,
            f"{account.user_id} in the thread",
            **{"m.relates_to": relation, "m.mentions": {"user_ids": [account.user_id]}},
        )
        [reply] = await alice.wait_messages(room, account.user_id, 1)
        [(_, _, ctx)] = agent_of(bot).calls
    rel = reply["content"]["m.relates_to"]
    assert (rel["rel_type"], rel["event_id"]) == ("m.thread", root)
    assert rel["m.in_reply_to"]["event_id"] == asked  # the thread's latest, for old clients
    assert ctx.thread_id == root and body(reply) == "reply:in the thread"


# -- files ---------------------------------------------------------------------------


async def test_an_image_both_ways(synapse: Synapse) -> None:
    account = synapse.register("bot")
    bot = matrix_bot(synapse, account, RecordingAgent())
    async with person(synapse) as alice, running(bot):
        room = await dm(alice, account.user_id)
        url = await alice.upload(PNG, "image/png", "dot.png")
        info = {"mimetype": "image/png", "size": len(PNG)}
        image = {"msgtype": "m.image", "body": "what is this?", "filename": "dot.png"}
        await alice.send(room, {**image, "url": url, "info": info})
        [reply] = await alice.wait_messages(room, account.user_id, 1)
        [(_, message, _)] = agent_of(bot).calls
        [picture] = message.attachments
        assert (picture.kind, picture.mime, picture.name) == ("image", "image/png", "dot.png")
        assert await bot.session.blobs.get(picture.blob) == PNG
        assert message.content == "what is this?" and body(reply) == "reply:what is this?"

        await bot.send(room, "", attachments=[File(PNG, name="back.png", mime="image/png")])
        sent = await alice.wait_for(
            lambda e: (
                e.get("content", {}).get("msgtype") == "m.image"
                and e.get("sender") == account.user_id
            )
        )
        content = sent["content"]
        assert content["filename"] == "back.png" and content["info"]["mimetype"] == "image/png"
        assert content["url"].startswith("mxc://")
        assert await alice.download(content["url"]) == PNG


# -- streaming, encryption -------------------------------------------------------------


class SlowStream:
    """A Responder that writes its reply in pieces (so the draft is posted, then edited)."""

    async def respond(
        self, history: Any, message: Any, *, group: bool = False, on_delta: Any = None
    ) -> str:
        for piece in ("one ", "two ", "three ", "four"):
            if on_delta is not None:
                await on_delta(piece)
            await asyncio.sleep(0.7)
        return "one two three four"


async def test_a_streamed_reply_is_edited_in_place(synapse: Synapse) -> None:
    account = synapse.register("bot")
    bot = matrix_bot(synapse, account, SlowStream())
    async with person(synapse) as alice, running(bot):
        room = await dm(alice, account.user_id)
        await alice.say(room, "count")
        [draft] = await alice.wait_messages(room, account.user_id, 1)
        await alice.wait_for(lambda e: is_edit(e) and body(e) == "* one two three four")
        await alice.quiet(0.5)
    assert len(alice.messages(room, account.user_id)) == 1  # one message, edited
    assert body(draft) != "one two three four"  # posted before the model had finished
    assert final(alice.events, draft["event_id"])["body"] == "one two three four"


async def test_an_encrypted_room_is_told_once(synapse: Synapse) -> None:
    account = synapse.register("bot")
    bot = matrix_bot(synapse, account, RecordingAgent())
    encryption = {
        "type": "m.room.encryption",
        "state_key": "",
        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
    }
    ciphertext = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnB...",
        "device_id": "X",
        "sender_key": "k",
        "session_id": "s",
    }
    async with person(synapse) as alice, running(bot):
        room = await alice.create_room([account.user_id], direct=True, initial_state=[encryption])
        await alice.wait_joined(room, account.user_id)
        await alice.send(room, ciphertext, "m.room.encrypted")
        [notice] = await alice.wait_messages(room, account.user_id, 1)
        await alice.send(room, ciphertext, "m.room.encrypted")
        await alice.quiet(1.5)
    assert notice["content"] == {"msgtype": "m.notice", "body": ENCRYPTED_NOTICE}
    assert len(alice.messages(room, account.user_id)) == 1
    assert agent_of(bot).calls == []


# -- one conversation with the web chat --------------------------------------------------


async def test_link_between_matrix_and_the_web_chat_gives_one_conversation(
    synapse: Synapse, tmp_path: Path
) -> None:
    account = synapse.register("bot")
    agent = RecordingAgent()
    resolver = InMemoryIdentityResolver()
    botos = BotOS(
        agent,
        platforms={
            "matrix": {
                "homeserver": synapse.url,
                "user_id": account.user_id,
                "token": account.access_token,
            },
            "web": {"port": 0},
        },
        identity_resolver=resolver,
        store="memory://",
        pairing=PairingStore(tmp_path / "pairing.db"),
    )
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(60)
    try:
        async with person(synapse) as alice, aiohttp.ClientSession() as http:
            room = await dm(alice, account.user_id)
            await alice.say(room, "/link")
            [issued] = await alice.wait_messages(room, account.user_id, 1)
            code = body(issued).split("/link ")[1].split()[0]
            web = botos.bots["web"].adapter
            url = f"{web.url}ws"  # type: ignore[attr-defined]
            async with http.ws_connect(url, params={"user": "w1", "name": "Alice"}) as ws:

                async def web_says(text: str) -> str:
                    await ws.send_json({"type": "message", "id": uuid.uuid4().hex, "text": text})
                    while True:
                        frame = await ws.receive_json(timeout=30)
                        if frame.get("type") == "message" and frame.get("role") == "assistant":
                            await ws.send_json({"type": "ack", "id": frame["id"]})
                            return str(frame["text"])

                assert "Linked" in await web_says(f"/link {code}")
                await alice.say(room, "remember: blue")
                await alice.wait_for(lambda e: body(e) == "reply:remember: blue")
                assert await web_says("what colour?") == "reply:what colour?"
    finally:
        await botos.stop()
        await task
    assert resolver.resolve("matrix", alice.user_id) == resolver.resolve("web", "w1")
    history, message, ctx = agent.calls[-1]
    assert message.content == "what colour?" and ctx.platform == "web"
    assert "remember: blue" in [entry.content for entry in history]
