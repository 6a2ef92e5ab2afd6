"""/link names a new person (issue 11, point 15), through FakeAdapter platforms.

The same flow through the real Telegram and Discord clients is in
test_e2e_platforms.py (test_link_names_the_new_person_through_real_clients).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import RecordingAgent
from onethread.bots import Bot, BotOS
from onethread.bots.policy import OpenPolicy
from onethread.errors import StoreError
from onethread.session import IdentityLink, InMemoryIdentityResolver, SQLiteIdentityResolver
from onethread.session.identity.base import unlinked_id
from onethread.session.pairing import LEGACY_CODE_LENGTH, PairingStore
from onethread.testing import FakeAdapter

CODE = re.compile(r"/link ([A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4})\n")
DATA = Path(__file__).parent / "data"


class World:
    """A BotOS with FakeAdapter bots; ``say`` returns the bot's reply."""

    def __init__(self, botos: BotOS, resolver: Any) -> None:
        self.botos, self.resolver = botos, resolver

    def fake(self, name: str) -> FakeAdapter:
        adapter = self.botos.bots[name].adapter
        assert isinstance(adapter, FakeAdapter)
        return adapter

    async def say(self, platform: str, user: str, text: str, **kw: Any) -> str:
        fake = self.fake(platform)
        before = len(fake.sent)
        await fake.inject(text, user=user, chat_id=kw.pop("chat_id", f"{platform}-{user}"), **kw)
        return (await fake.wait_sent(before + 1))[before].text

    async def code(self, platform: str, user: str, text: str = "/link", **kw: Any) -> str:
        reply = await self.say(platform, user, text, **kw)
        match = CODE.search(reply)
        assert match, reply
        return match.group(1)

    async def pair(
        self, a: tuple[str, str, str], b: tuple[str, str, str], text: str = "/link"
    ) -> str:
        """A (platform, user, display name) issues, B redeems; returns B's confirmation."""
        code = await self.code(a[0], a[1], text, user_name=a[2])
        return await self.say(b[0], b[1], f"/link {code}", user_name=b[2])


@pytest.fixture
async def make_world() -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[BotOS, asyncio.Task[None]]] = []

    async def make(resolver: Any = None, pairing: PairingStore | None = None) -> World:
        resolver = resolver if resolver is not None else InMemoryIdentityResolver()
        botos = BotOS(
            agent=RecordingAgent(),
            identity_resolver=resolver,
            store="memory://",
            pairing=pairing or PairingStore(":memory:"),
        )
        for name in ("telegram", "discord", "slack", "web"):
            adapter = FakeAdapter(name)
            bot = Bot(name, botos.agent, adapter=adapter, session=botos.session,
                      access=OpenPolicy())  # fmt: skip
            botos.add_bot(bot)
        task = asyncio.create_task(botos.start())
        await botos.wait_ready(5)
        started.append((botos, task))
        return World(botos, resolver)

    yield make
    for botos, task in started:
        await botos.stop()
        await task


async def test_a_new_person_is_named_after_the_issuers_display_name(make_world: Any) -> None:
    world = await make_world()
    await world.say("discord", "d1", "remember: blue", user_name="Al")
    code_reply = await world.say("telegram", "t1", "/link", user_name="Alice")
    assert 'you will be called "alice"' in code_reply and "/link NAME" in code_reply
    code = CODE.search(code_reply)
    assert code
    confirm = await world.say("discord", "d1", f"/link {code.group(1)}", user_name="Al")
    assert confirm.startswith('Linked as "alice"')
    assert world.fake("telegram").sent[-1].text == confirm  # the issuer is told the name too
    assert world.resolver.resolve("telegram", "t1") == world.resolver.resolve("discord", "d1")
    assert world.resolver.resolve("discord", "d1") == "alice"
    whoami = await world.say("telegram", "t1", "/whoami", user_name="Alice")
    assert 'Linked as "alice"' in whoami and "discord:d1, telegram:t1" in whoami
    # `onethread history show alice` reads this: the merged conversation is there.
    exported = await world.botos.session.export("alice")
    assert "remember: blue" in [e["content"] for e in exported["sessions"]["user:alice"]]


async def test_names_are_made_unique(make_world: Any) -> None:
    world = await make_world()
    world.resolver.link("slack", "admin-made", "alice")  # an operator's link
    await world.botos.session.mirror("alice-2", "a reminder for an alice-2 with no links yet")
    confirm = await world.pair(("telegram", "t1", "Alice"), ("discord", "d1", "Alice"))
    assert confirm.startswith('Linked as "alice-3"')
    confirm = await world.pair(("telegram", "t2", "ALICE"), ("discord", "d2", "x"))
    assert confirm.startswith('Linked as "alice-4"')
    # An account that already has a person gives it to the other side.
    confirm = await world.pair(("slack", "s1", "Someone Else"), ("telegram", "t1", "Alice"))
    assert confirm.startswith('Linked as "alice-3"')


async def test_display_names_are_normalised_to_valid_ids(make_world: Any) -> None:
    world = await make_world()
    confirm = await world.pair(("telegram", "t1", "Zoë: the Admin!"), ("discord", "d1", "z"))
    assert confirm.startswith('Linked as "zoë-the-admin"')
    # Nothing usable in either display name: "person", then "person-2".
    assert (await world.pair(("telegram", "t2", "🙂"), ("discord", "d2", "🙃"))).startswith(
        'Linked as "person"'
    )
    assert (await world.pair(("telegram", "t3", "🙂"), ("discord", "d3", "🙂"))).startswith(
        'Linked as "person-2"'
    )
    # The redeemer's display name when the issuer's is unusable.
    assert (await world.pair(("telegram", "t4", "..."), ("discord", "d4", "Bob"))).startswith(
        'Linked as "bob"'
    )


async def test_a_web_id_is_never_used_as_a_name(make_world: Any) -> None:
    """The web chat's user id is its credential; FakeAdapter's display name defaults to it."""
    world = await make_world()
    secret = "b7f3c2e9-browser-id-4d1a"
    code = await world.code("web", secret)
    confirm = await world.say("telegram", "t1", f"/link {code}", user_name="Tom")
    assert confirm.startswith('Linked as "tom"') and secret not in confirm


async def test_link_name_chooses_the_name(make_world: Any) -> None:
    world = await make_world()
    reply = await world.say("telegram", "t1", "/link Mary Jane", user_name="M")
    assert 'you will be called "mary-jane"' in reply and "/link NAME" not in reply
    code = CODE.search(reply)
    assert code
    assert (await world.say("discord", "d1", f"/link {code.group(1)}")).startswith(
        'Linked as "mary-jane"'
    )
    # Once linked, a name does not rename the person, and the reply says so.
    reply = await world.say("telegram", "t1", "/link bob")
    assert 'join you, "mary-jane"' in reply and 'the name "bob" is not used' in reply


async def test_the_grammar_names_versus_codes(make_world: Any) -> None:
    world = await make_world()
    store = world.botos.link_flow.store
    # A name with something other than letters, spaces, . _ -: refused, no code made.
    refused = await world.say("telegram", "t1", "/link b@b!")
    assert "letters" in refused and "'@'" in refused and store.counts() == (0, 0)
    # Anything with a digit is a code: a mistyped one is refused (and counted).
    assert "not valid" in await world.say("telegram", "t1", "/link bob9")
    assert "not valid" in await world.say("telegram", "t1", "/link K7QW-2MXP-H4R")
    assert store.counts() == (0, 2)
    # Eight letters are a name when no 0.1 codes are live.
    assert 'called "abcd-efgh"' in await world.say("telegram", "t1", "/link ABCD-EFGH")
    # In a group a name gives only the safety notice; nothing is issued or burned.
    group = await world.say("telegram", "t2", "/link alice", chat_type="group", chat_id="g",
                            mentions_bot=True)  # fmt: skip
    assert "direct message" in group and "no longer works" not in group
    assert store.counts() == (1, 2)
    # /help documents the grammar.
    help_text = await world.say("telegram", "t1", "/help")
    assert "/link NAME" in help_text and "/link CODE" in help_text and "digits" in help_text


async def test_codes_of_0_1_still_work_through_link(make_world: Any, tmp_path: Path) -> None:
    path = tmp_path / "pairing.db"
    shutil.copy(DATA / "pairing-0.1.0.db", path)
    made_at = 1796530096.26  # when 0.1 made the file: its expired code is still kept then
    store = PairingStore(path, clock=lambda: made_at + 60)
    # A letters-only 8-character code, written as 0.1 wrote its rows (0.1 drew such
    # codes about one time in eleven): while it is live, 8 letters read as a code.
    legacy = "ABCDEFGH"
    assert len(legacy) == LEGACY_CODE_LENGTH
    store._conn.execute(
        "INSERT INTO codes (hash, purpose, platform, user_id, chat_id, user_name, created, "
        "expires) VALUES (?, 'link', 'slack', 's-legacy', 's-chat', 'Sam', 0, 4e9)",
        (store._hash(legacy),),
    )
    world = await make_world(pairing=store)
    confirm = await world.say("discord", "d1", "/link XWC4-3NR5", user_name="D")
    assert confirm.startswith('Linked as "legacy-lee"')  # the file's issuer, "Legacy Lee"
    assert world.resolver.resolve("telegram", "t-legacy") == "legacy-lee"
    confirm = await world.say("discord", "d2", "/link abcd efgh", user_name="D")
    assert confirm.startswith('Linked as "sam"')
    assert "expired" in await world.say("discord", "d3", "/link 8KQ633NV")
    # No 0.1 code is live any more: eight letters are a name again.
    assert 'called "abcdefgh"' in await world.say("discord", "d4", "/link ABCDEFGH")


class LinkOnly:
    """A user's own resolver: resolve and link, nothing else."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, str], str] = {}

    def resolve(self, platform: str, platform_user_id: str) -> str:
        return self.links.get((platform, platform_user_id), unlinked_id(platform, platform_user_id))

    def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
        self.links[(platform, platform_user_id)] = unified_user_id


class WithLinksFor(LinkOnly):
    """resolve, link and links_for, but no claim."""

    def links_for(self, unified_user_id: str) -> list[IdentityLink]:
        return [IdentityLink(p, u, v) for (p, u), v in self.links.items() if v == unified_user_id]


async def test_resolvers_without_claim(make_world: Any) -> None:
    own = LinkOnly()
    own.link("slack", "s0", "alice")
    world = await make_world(resolver=own)
    confirm = await world.pair(("telegram", "t1", "Alice"), ("discord", "d1", "x"))
    # Nothing can tell which names are taken: a random suffix, never plain "alice".
    name = own.resolve("telegram", "t1")
    assert re.fullmatch(r"alice-[0-9a-f]{6}", name) and confirm.startswith(f'Linked as "{name}"')
    checked = WithLinksFor()
    checked.link("slack", "s0", "alice")
    world = await make_world(resolver=checked)
    confirm = await world.pair(("telegram", "t1", "Alice"), ("discord", "d1", "x"))
    assert confirm.startswith('Linked as "alice-2"')


async def test_two_botos_on_the_same_files_name_two_alices_apart(
    make_world: Any, tmp_path: Path
) -> None:
    """Two BotOS, each with its own resolver and pairing store on the same files, as
    two processes have; both name an Alice at the same moment. (The claim itself is
    raced across real OS processes in test_identity_contract.py.)"""
    worlds = [
        await make_world(
            resolver=SQLiteIdentityResolver(tmp_path / "identity.db"),
            pairing=PairingStore(tmp_path / "pairing.db"),
        )
        for _ in range(2)
    ]
    for round_ in range(5):
        codes = [await w.code("telegram", f"t{i}-{round_}", user_name="Alice")
                 for i, w in enumerate(worlds)]  # fmt: skip
        confirms = await asyncio.gather(
            *(w.say("discord", f"d{i}-{round_}", f"/link {c}") for i, (w, c) in
              enumerate(zip(worlds, codes, strict=True)))
        )  # fmt: skip
        names = {re.match(r'Linked as "([^"]+)"', c).group(1) for c in confirms}  # type: ignore[union-attr]
        assert len(names) == 2
    everyone = {link.unified_user_id for link in worlds[0].resolver.all_links()}
    assert everyone == {"alice"} | {f"alice-{n}" for n in range(2, 11)}
    for w in worlds:
        w.resolver.close()


async def test_a_full_store_and_paused_linking_are_said_plainly(
    make_world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="onethread")
    world = await make_world(pairing=PairingStore(":memory:", max_codes=1, max_failures_total=2))
    code = await world.code("telegram", "t1")
    for user in ("t2", "t3"):
        assert "Too many link codes" in await world.say("telegram", user, "/link")
    for user in ("d1", "d2"):
        assert "not valid" in await world.say("discord", user, "/link AAAA-AAAA-AAA2")
    for user in ("d3", "d4"):  # even the right code: redemption is closed for an hour
        assert "paused for everyone" in await world.say("discord", user, f"/link {code}")
    assert world.resolver.resolve("discord", "d3") == "discord:d3"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # One line per kind of trouble, not one per message.
    assert sum("access.max_codes" in w for w in warnings) == 1
    assert sum("brute-force" in w for w in warnings) == 1


async def test_a_name_whose_accounts_all_left_stays_with_its_conversation(make_world: Any) -> None:
    """Unlinking every account frees no name while its conversation is kept."""
    world = await make_world()
    assert (await world.pair(("telegram", "t1", "Alice"), ("discord", "d1", "A"))).startswith(
        'Linked as "alice"'
    )
    await world.say("telegram", "t1", "my secret is 42", user_name="Alice")
    for platform, user in (("telegram", "t1"), ("discord", "d1")):
        assert "no longer linked" in await world.say(platform, user, "/unlink")
    assert world.resolver.links_for("alice") == []
    confirm = await world.pair(("slack", "s1", "Alice"), ("discord", "d2", "Other Alice"))
    assert confirm.startswith('Linked as "alice-2"')
    await world.say("slack", "s1", "what is my secret?", user_name="Alice")
    history = world.botos.agent.calls[-1][0]  # type: ignore[union-attr]
    assert all("42" not in entry.content for entry in history)


class FailsOnce(InMemoryIdentityResolver):
    """Refuses the first link of one account, as a store that went away for a moment."""

    def __init__(self, account: tuple[str, str]) -> None:
        super().__init__()
        self.account, self.failed = account, False

    def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
        if (platform, platform_user_id) == self.account and not self.failed:
            self.failed = True
            raise StoreError("the identity store is unreachable")
        super().link(platform, platform_user_id, unified_user_id)


async def test_a_store_failure_half_way_leaves_the_code_usable(make_world: Any) -> None:
    resolver = FailsOnce(("discord", "d1"))
    world = await make_world(resolver=resolver)
    code = await world.code("telegram", "t1", user_name="Alice")
    failed = await world.say("discord", "d1", f"/link {code}")
    assert "went wrong" in failed and resolver.resolve("telegram", "t1") == "alice"
    assert resolver.resolve("discord", "d1") == "discord:d1"
    assert (await world.say("discord", "d1", f"/link {code}")).startswith('Linked as "alice"')
    assert resolver.resolve("discord", "d1") == "alice"
