"""The email platform against real servers: Dovecot (IMAP, IDLE and not) and aiosmtpd (SMTP).

The bot's mailbox lives in a Dovecot started by these tests as an unprivileged
process (``tests/mail_servers.py``); mail reaches it through an aiosmtpd
exchange that delivers into the maildir, and the bot's replies land in that
exchange's outboxes. Every connection is TLS (imaps://, STARTTLS on imap://
and smtp://) with a certificate made here. Reading mail and building replies
are pure functions, tested on their own first.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from helpers import RecordingAgent
from mail_servers import (
    BOT_DOMAIN,
    PASSWORD,
    Dovecot,
    MailExchange,
    dovecot_or_skip,
    mailbox_flags,
    make_cert,
)
from onethread import File
from onethread.bots import Bot, BotOS
from onethread.bots.policy import AllowlistPolicy, OpenPolicy, default_policy
from onethread.errors import ConfigError, PlatformAuthError
from onethread.platforms import Inbound
from onethread.platforms.email import EmailAdapter, normalize_mail
from onethread.platforms.email_imap import MailUrl
from onethread.platforms.email_mime import build_mail, dmarc_passed, ignore_reason, parse_mail
from onethread.platforms.registry import PLATFORMS
from onethread.session import InMemoryIdentityResolver
from onethread.session.pairing import PairingStore
from onethread.testing import FakeAdapter

pytestmark = pytest.mark.timeout(90)

CODE = re.compile(r"/link ([A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4})")
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
    b"\x00\x00\x00IEND\xaeB`\x82"
)


def mail(
    sender: str,
    to: str,
    subject: str,
    body: str,
    *,
    msgid: str | None = None,
    in_reply_to: str = "",
    references: str = "",
    headers: dict[str, str] | None = None,
    html: str = "",
    files: tuple[tuple[str, str, bytes], ...] = (),
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = msgid or make_msgid(domain="example.org")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    if body:
        msg.set_content(body)
    if html:
        if body:
            msg.add_alternative(html, subtype="html")
        else:
            msg.set_content(html, subtype="html")
    for name, mime, data in files:
        major, _, minor = mime.partition("/")
        msg.add_attachment(data, maintype=major, subtype=minor, filename=name)
    return msg


# -- reading and building mail (pure) ---------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted"),
        ({"Auto-Submitted": "auto-generated; type=vacation"}, "Auto-Submitted"),
        ({"Precedence": "bulk"}, "Precedence"),
        ({"Precedence": "list"}, "Precedence"),
        ({"Precedence": "junk"}, "Precedence"),
        ({"List-Id": "<team.lists.example.org>"}, "mailing list"),
        ({"Return-Path": "<>"}, "null return path"),
        ({"X-Autoreply": "yes"}, "X-Autoreply"),
        ({"Auto-Submitted": "no"}, None),
        ({"Precedence": "first-class"}, None),
        ({"Return-Path": "<alice@example.org>"}, None),
    ],
)
def test_automatic_mail_is_recognised(headers: dict[str, str], reason: str | None) -> None:
    msg, _ = parse_mail(bytes(mail("alice@example.org", "b@x.org", "hi", "hi", headers=headers)))
    found = ignore_reason(msg)
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_bounces_are_recognised() -> None:
    daemon = mail("MAILER-DAEMON@mx.example.org", "b@x.org", "Undelivered", "failed")
    assert "bounce" in (ignore_reason(parse_mail(bytes(daemon))[0]) or "")
    report = EmailMessage()
    report["From"] = "postbox@mx.example.org"
    report["Subject"] = "Delivery Status Notification"
    report.set_content("failed")
    report.add_attachment("Action: failed\n", subtype="delivery-status")
    report.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
    assert "multipart/report" in (ignore_reason(parse_mail(bytes(report))[0]) or "")


def test_text_html_quotes_and_threading_are_read() -> None:
    quoted = (
        "Sounds good, see you then.\n\nOn Mon, 1 Dec 2026, Bot <bot@bot.test> wrote:\n"
        "> Shall we meet at noon?\n> Regards\n"
    )
    _, parsed = parse_mail(
        bytes(
            mail(
                "Alice Example <Alice@Example.org>", "bot@bot.test", "Re: Re: lunch", quoted,
                msgid="<m3@example.org>", in_reply_to="<b2@bot.test>",
                references="<m1@example.org> <b2@bot.test>",
            )
        )
    )  # fmt: skip
    assert parsed.text == "Sounds good, see you then."
    assert (parsed.address, parsed.name) == ("alice@example.org", "Alice Example")
    assert parsed.thread_id == "<m1@example.org>"  # the root of References
    assert parsed.reply.references == ("<m1@example.org>", "<b2@bot.test>", "<m3@example.org>")
    html_only = mail(
        "a@example.org", "b@bot.test", "x", "",
        html="<html><head><style>p{}</style></head><body><p>Hello <b>there</b></p>"
        "<p>second&nbsp;line</p><script>alert(1)</script></body></html>",
    )  # fmt: skip
    assert parse_mail(bytes(html_only))[1].text == "Hello there\n\nsecond line"
    inbound = normalize_mail(parsed, own_address="bot@bot.test")
    alice = "alice@example.org"
    assert (inbound.chat_id, inbound.user_id, inbound.chat_type) == (alice, alice, "dm")
    assert inbound.message_id == "<m3@example.org>" and not inbound.from_self
    assert normalize_mail(parsed, own_address="Alice@example.org").from_self
    # A command written in the subject line of an empty mail is read.
    assert parse_mail(bytes(mail("a@example.org", "b@bot.test", "/link", "")))[1].text == "/link"


def test_reply_carries_threading_headers_quotes_nothing_and_has_html() -> None:
    _, parsed = parse_mail(
        bytes(mail("a@example.org", "bot@bot.test", "RE: Re: Plans", "what now?",
                   msgid="<m2@example.org>", references="<m1@example.org>"))
    )  # fmt: skip
    out = build_mail(
        sender="bot@bot.test", sender_name="Assistant", to="a@example.org",
        markdown="**Yes**, and `code` <script>", reply=parsed.reply, subject="unused",
    )  # fmt: skip
    assert out["Subject"] == "Re: Plans"
    assert out["In-Reply-To"] == "<m2@example.org>"
    assert out["References"] == "<m1@example.org> <m2@example.org>"
    assert out["Auto-Submitted"] == "auto-replied"
    plain = out.get_body(("plain",))
    html = out.get_body(("html",))
    assert plain is not None and html is not None
    assert "what now" not in plain.get_content() and "what now" not in html.get_content()
    assert "<strong>Yes</strong>" in html.get_content()
    assert "<script>" not in html.get_content()  # raw HTML in the model's text stays text
    fresh = build_mail(sender="bot@bot.test", sender_name="", to="a@example.org",
                       markdown="hi", reply=None, subject="A reminder")  # fmt: skip
    assert fresh["Subject"] == "A reminder" and fresh["In-Reply-To"] is None
    assert fresh["Auto-Submitted"] == "auto-generated"
    # A mail without a Message-ID is still answered under its subject (nothing to thread on).
    _, bare = parse_mail(b"From: a@example.org\r\nSubject: no id\r\n\r\nhello\r\n")
    assert bare.message_id == "" and bare.text == "hello"
    out = build_mail(sender="bot@bot.test", sender_name="", to="a@example.org", markdown="hi",
                     reply=bare.reply, subject="unused")  # fmt: skip
    assert out["Subject"] == "Re: no id" and out["In-Reply-To"] is None


@pytest.mark.parametrize(
    ("headers", "passed"),
    [
        (["mx.bot.test; dkim=pass header.d=example.org; dmarc=pass (p=REJECT) "
          "header.from=example.org"], True),
        (["MX.bot.test 1; spf=pass smtp.mailfrom=example.org; dmarc=pass header.from=Example.org"],
         True),  # domains and the server's name in any case; a version number after it
        (["mx.bot.test; dmarc=fail header.from=example.org"], False),
        (["mx.bot.test; dmarc=pass header.from=evil.example"], False),
        (["mx.other.test; dmarc=pass header.from=example.org"], False),
        # The topmost header of our server decides; one a forger added below it does not.
        (["mx.bot.test; dmarc=fail header.from=example.org",
          "mx.bot.test; dmarc=pass header.from=example.org"], False),
        ([], False),
    ],
)  # fmt: skip
def test_dmarc_verdict_of_the_receiving_server(headers: list[str], passed: bool) -> None:
    msg = mail("Alice <alice@example.org>", "bot@bot.test", "hi", "hi")
    for value in headers:
        msg["Authentication-Results"] = value
    assert dmarc_passed(parse_mail(bytes(msg))[0], "mx.bot.test") is passed


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://imap.example.org", "must look like"),
        ("imap://imap.example.org:143?plaintext", "loopback"),
        ("imaps://127.0.0.1:993?plaintext", "loopback"),
        ("imap://imap.example.org/INBOX", "only ?plaintext"),
    ],
)
def test_bad_urls_are_refused_with_the_fix(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        MailUrl.parse(url, kinds=("imaps", "imap"), variable="EMAIL_IMAP_URL")


def test_urls_and_options() -> None:
    assert MailUrl.parse("imaps://imap.gmail.com", kinds=("imaps", "imap"), variable="X") == (
        MailUrl("imaps", "imap.gmail.com", 993, "implicit")
    )
    smtp = MailUrl.parse("smtp://me%40x.org@smtp.x.org", kinds=("smtps", "smtp"), variable="X")
    assert (smtp.port, smtp.tls, smtp.username) == (587, "starttls", "me@x.org")
    assert (
        MailUrl.parse("imap://127.0.0.1:1?plaintext", kinds=("imaps", "imap"), variable="X").tls
        == "none"
    )
    env = {"EMAIL_ADDRESS": "not an address", "EMAIL_IMAP_URL": "http://x"}
    problems = dict(EmailAdapter.check_options({}, env))
    assert "not an email address" in problems["address"]
    assert "EMAIL_IMAP_URL must look like" in problems["imap_url"]
    with pytest.raises(ConfigError, match="unknown email option"):
        EmailAdapter(adress="typo@example.org")


async def test_missing_settings_are_named_by_start() -> None:
    adapter = EmailAdapter(address="bot@example.org")

    async def ignore(_: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="EMAIL_PASSWORD.*EMAIL_IMAP_URL.*EMAIL_SMTP_URL"):
        await adapter.start(ignore)


async def test_a_corrupt_state_file_is_named_never_overwritten(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"uidvalidity": ')
    adapter = EmailAdapter(
        address="bot@example.org", password="pw", imap_url="imaps://127.0.0.1:1",
        smtp_url="smtps://127.0.0.1:1", state_path=state,
    )  # fmt: skip

    async def ignore(_: Any) -> None:
        return None

    with pytest.raises(ConfigError, match=re.escape(str(state)) + ".*fix or delete it"):
        await adapter.start(ignore)
    assert state.read_text() == '{"uidvalidity": '


def test_email_default_access_is_an_allowlist_that_answers_no_stranger() -> None:
    assert PLATFORMS["email"].forgeable_sender
    assert isinstance(default_policy("email", owners=["me@example.org"]), AllowlistPolicy)
    assert isinstance(default_policy("email"), AllowlistPolicy)  # even with no owner set
    assert not isinstance(default_policy("telegram"), AllowlistPolicy)


async def test_the_config_file_allowlist_serves_email_without_naming_a_mode() -> None:
    from onethread.cli.run import _policies
    from onethread.config import parse_config

    config = parse_config(
        "platforms: {email: {}}\n"
        "owners: {email: me@example.org}\n"
        "access:\n  allowlist: {email: [partner@example.org]}\n",
        "test.yaml",
        env={},
    )
    policy = _policies(config, ["email"], None)["email"]
    assert isinstance(policy, AllowlistPolicy)
    assert policy.allowed == {"me@example.org", "partner@example.org"}
    stranger = Inbound("email", "x@example.org", "dm", "x@example.org", "hi")
    assert await policy.check(stranger) == ""  # dropped, never answered
    partner = Inbound("email", "partner@example.org", "dm", "partner@example.org", "hi")
    assert await policy.check(partner) is None


# -- against the servers ----------------------------------------------------------


@dataclass
class Servers:
    idle: Dovecot
    polling: Dovecot
    mx: MailExchange
    cert: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    dovecot_or_skip()
    cert, key = make_cert(tmp_path_factory.mktemp("mailcert"))
    idle, polling = Dovecot(cert=(cert, key)), Dovecot(cert=(cert, key), idle=False)
    mx = MailExchange(cert, key)
    try:
        idle.start()
        polling.start()
        mx.start()
        yield Servers(idle, polling, mx, cert)
    finally:
        mx.stop()
        idle.stop()
        polling.stop()


_count = iter(range(1, 10**6))


@dataclass
class Mailbox:
    """A bot's mailbox and how to make an adapter for it."""

    address: str
    server: Dovecot
    servers: Servers

    def adapter(self, **options: Any) -> EmailAdapter:
        s = self.server
        imap_url = (
            f"imaps://127.0.0.1:{s.imaps_port}" if s.idle else f"imap://127.0.0.1:{s.imap_port}"
        )
        return EmailAdapter(
            address=self.address, password=PASSWORD, imap_url=imap_url,
            smtp_url=self.servers.mx.url, tls_ca_file=str(self.servers.cert), **options,
        )  # fmt: skip

    async def receive(self, msg: EmailMessage) -> None:
        """A person's mail arrives (through the exchange, SMTP with STARTTLS)."""
        await self.servers.mx.send(msg, mail_from=str(msg["From"]).split("<")[-1].strip(">"),
                                   to=self.address)  # fmt: skip


def new_mailbox(servers: Servers, *, idle: bool = True) -> Mailbox:
    address = f"bot{next(_count)}@{BOT_DOMAIN}"
    box = Mailbox(address, servers.idle if idle else servers.polling, servers)
    servers.mx.serve(address, box.server)
    return box


@pytest.fixture
def box(servers: Servers) -> Mailbox:
    with servers.mx.lock:  # people's outboxes start empty in every test
        servers.mx.outboxes.clear()
    return new_mailbox(servers)


class Running:
    def __init__(self, bot: Bot, task: asyncio.Task[None]) -> None:
        self.bot, self.task = bot, task

    async def stop(self) -> None:
        await self.bot.stop()
        await self.task


async def run_bot(bot: Bot) -> Running:
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 30)
    return Running(bot, task)


@pytest.fixture
async def stack() -> AsyncIterator[list[Running]]:
    running: list[Running] = []
    yield running
    for r in reversed(running):
        await r.stop()


async def start_bot(stack: list[Running], adapter: EmailAdapter, agent: Any, **kw: Any) -> Bot:
    kw.setdefault("access", OpenPolicy())
    bot = Bot("email", agent, adapter=adapter, store=kw.pop("store", "memory://"), **kw)
    stack.append(await run_bot(bot))
    return bot


async def test_a_mail_is_answered_in_its_thread_and_marked(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    agent = RecordingAgent()
    await start_bot(stack, box.adapter(), agent)
    alice = "alice@example.org"
    await box.receive(mail(f"Alice <{alice}>", box.address, "Plans", "Lunch on Friday?",
                           msgid="<m1@example.org>"))  # fmt: skip
    [reply] = await servers.mx.wait_mail(alice)
    assert reply["In-Reply-To"] == "<m1@example.org>"
    assert reply["References"] == "<m1@example.org>"
    assert reply["Subject"] == "Re: Plans"
    assert reply["From"] == box.address and reply["To"] == alice
    body = reply.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "reply:Lunch on Friday?"
    assert reply.get_body(("html",)) is not None
    # Alice answers the bot's mail: the thread goes on, one conversation.
    bot_id = str(reply["Message-ID"])
    await box.receive(mail(alice, box.address, "Re: Plans", "Noon is fine.\n\n> reply:Lunch",
                           msgid="<m2@example.org>", in_reply_to=bot_id,
                           references=f"<m1@example.org> {bot_id}"))  # fmt: skip
    second = (await servers.mx.wait_mail(alice, 2))[1]
    assert second["In-Reply-To"] == "<m2@example.org>"
    assert second["References"] == f"<m1@example.org> {bot_id} <m2@example.org>"
    assert second["Subject"] == "Re: Plans"
    history, message, ctx = agent.calls[-1]
    assert [h.content for h in history] == ["Lunch on Friday?", "reply:Lunch on Friday?"]
    assert message.content == "Noon is fine."  # the quote is not the message
    assert (ctx.platform, ctx.user_id, ctx.thread_id) == ("email", alice, "<m1@example.org>")
    flags = mailbox_flags(box.server, box.address)
    assert flags["<m1@example.org>"] >= {"\\Seen", "OnethreadDone"}
    assert flags["<m2@example.org>"] >= {"\\Seen", "OnethreadDone"}
    # Authenticated submission over STARTTLS; the envelope sender is the bot.
    assert (box.address, [alice], True) in servers.mx.envelopes


async def test_restart_neither_replays_nor_misses(
    servers: Servers, box: Mailbox, stack: list[Running], tmp_path: Path
) -> None:
    agent = RecordingAgent()
    store = f"sqlite:///{tmp_path / 'history.db'}"
    bob = "bob@example.org"
    await box.receive(mail(bob, box.address, "old", "from before the first start"))
    await start_bot(stack, box.adapter(), agent, store=store)
    await box.receive(mail(bob, box.address, "one", "first", msgid="<r1@example.org>"))
    await servers.mx.wait_mail(bob, 1)
    await stack.pop().stop()
    # Mail that comes while the bot is down is answered after the restart, once.
    await box.receive(mail(bob, box.address, "two", "second", msgid="<r2@example.org>"))
    await start_bot(stack, box.adapter(), agent, store=store)
    mails = await servers.mx.wait_mail(bob, 2)
    await asyncio.sleep(1.0)  # a replay would arrive now
    assert [m["In-Reply-To"] for m in servers.mx.outbox(bob)] == [
        "<r1@example.org>",
        "<r2@example.org>",
    ]
    assert [c[1].content for c in agent.calls] == ["first", "second"]
    assert len(mails) == 2
    # A later message in the first thread still answers its last mail (kept on disk).
    await stack[-1].bot.send(bob, "a follow-up", thread_id="<r1@example.org>")
    follow = (await servers.mx.wait_mail(bob, 3))[2]
    assert (follow["Subject"], follow["In-Reply-To"]) == ("Re: one", "<r1@example.org>")
    assert list((tmp_path / "onethread-home" / "email").glob("*.json"))  # under ONETHREAD_HOME


async def test_a_marked_mail_is_not_answered_again_when_the_state_file_missed_it(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    agent = RecordingAgent()
    jo = "jo@example.org"
    await start_bot(stack, box.adapter(), agent)
    await box.receive(mail(jo, box.address, "one", "first", msgid="<k1@example.org>"))
    await servers.mx.wait_mail(jo, 1)
    await stack.pop().stop()
    # A crash after the mail was marked but before the state file was written.
    [state_file] = (Path(os.environ["ONETHREAD_HOME"]) / "email").glob("*.json")
    state = json.loads(state_file.read_text())
    state["last_uid"] -= 1
    state_file.write_text(json.dumps(state))
    await start_bot(stack, box.adapter(), agent)
    await box.receive(mail(jo, box.address, "two", "second", msgid="<k2@example.org>"))
    await servers.mx.wait_mail(jo, 2)
    await asyncio.sleep(0.5)
    assert [m["In-Reply-To"] for m in servers.mx.outbox(jo)] == [
        "<k1@example.org>",
        "<k2@example.org>",
    ]


async def test_a_renumbered_folder_answers_only_mail_not_yet_processed(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    agent = RecordingAgent()
    gina = "gina@example.org"
    await start_bot(stack, box.adapter(), agent)
    await box.receive(mail(gina, box.address, "one", "first", msgid="<u1@example.org>"))
    await servers.mx.wait_mail(gina, 1)
    await stack.pop().stop()
    # The server renumbered the folder (a restore, a migration): the stored UID means nothing.
    [state_file] = (Path(os.environ["ONETHREAD_HOME"]) / "email").glob("*.json")
    state = json.loads(state_file.read_text())
    state["uidvalidity"] += 1
    state_file.write_text(json.dumps(state))
    await box.receive(mail(gina, box.address, "two", "second", msgid="<u2@example.org>"))
    await start_bot(stack, box.adapter(), agent)
    await servers.mx.wait_mail(gina, 2)
    await asyncio.sleep(0.5)
    assert [m["In-Reply-To"] for m in servers.mx.outbox(gina)] == [
        "<u1@example.org>",
        "<u2@example.org>",
    ]


async def test_a_lost_imap_connection_is_reconnected(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    adapter = box.adapter(poll_interval=3600)
    adapter.reconnect_delay = 0.05
    await start_bot(stack, adapter, RecordingAgent())
    first = adapter._inbox
    assert first is not None and first._client is not None
    await asyncio.sleep(0.3)  # idling
    first._client.protocol.transport.close()  # the connection drops
    for _ in range(200):
        if adapter._inbox is not None and adapter._inbox is not first:
            break
        await asyncio.sleep(0.05)
    assert adapter._inbox is not first
    await asyncio.sleep(0.3)
    await box.receive(mail("hank@example.org", box.address, "back?", "still there?"))
    [reply] = await servers.mx.wait_mail("hank@example.org", timeout=10)
    assert reply["Subject"] == "Re: back?"


async def test_a_mail_too_large_to_read_is_refused_with_a_message(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    agent = RecordingAgent()
    await start_bot(stack, box.adapter(max_mail_bytes=4000), agent)
    big = (("big.bin", "application/octet-stream", b"x" * 20_000),)
    await box.receive(mail("ivy@example.org", box.address, "big", "see attached", files=big))
    [reply] = await servers.mx.wait_mail("ivy@example.org")
    body = reply.get_body(("plain",))
    assert body is not None and "larger than" in body.get_content()
    assert reply["Subject"] == "Re: big"
    assert agent.calls == []


async def test_served_from_the_environment_alone(
    servers: Servers, box: Mailbox, stack: list[Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onethread.config import Config

    env = {
        "EMAIL_ADDRESS": box.address,
        "EMAIL_PASSWORD": PASSWORD,
        "EMAIL_IMAP_URL": f"imaps://127.0.0.1:{box.server.imaps_port}",
        "EMAIL_SMTP_URL": servers.mx.url,
        "SSL_CERT_FILE": str(servers.cert),  # OpenSSL's own variable: the test CA
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Config().platform_options()["email"] == {}
    bot = Bot("email", RecordingAgent(), store="memory://", access=OpenPolicy())
    assert isinstance(bot.adapter, EmailAdapter)
    stack.append(await run_bot(bot))
    await box.receive(mail("kim@example.org", box.address, "env", "configured by env"))
    [reply] = await servers.mx.wait_mail("kim@example.org")
    assert reply["From"] == box.address


async def test_plaintext_imap_is_accepted_on_loopback_for_tests(
    servers: Servers, stack: list[Running]
) -> None:
    box = new_mailbox(servers, idle=False)
    adapter = EmailAdapter(
        address=box.address, password=PASSWORD, smtp_url=servers.mx.url,
        imap_url=f"imap://127.0.0.1:{box.server.imap_port}?plaintext",
        tls_ca_file=str(servers.cert), poll_interval=0.2,
    )  # fmt: skip
    await start_bot(stack, adapter, RecordingAgent())
    assert adapter.imap is not None and adapter.imap.tls == "none"
    await box.receive(mail("lee@example.org", box.address, "plain", "no TLS on loopback"))
    [reply] = await servers.mx.wait_mail("lee@example.org", timeout=10)
    assert reply["Subject"] == "Re: plain"


async def test_idle_wakes_on_new_mail(servers: Servers, box: Mailbox, stack: list[Running]) -> None:
    adapter = box.adapter(poll_interval=3600)  # only IDLE can notice the mail in time
    await start_bot(stack, adapter, RecordingAgent())
    assert adapter._inbox is not None and adapter._inbox.idle
    await asyncio.sleep(0.3)  # the watcher is idling now
    await box.receive(mail("carol@example.org", box.address, "ping", "are you there?"))
    [reply] = await servers.mx.wait_mail("carol@example.org", timeout=10)
    assert reply["Subject"] == "Re: ping"


async def test_polling_when_the_server_has_no_idle(servers: Servers, stack: list[Running]) -> None:
    box = new_mailbox(servers, idle=False)  # also imap:// with STARTTLS
    adapter = box.adapter(poll_interval=0.2)
    await start_bot(stack, adapter, RecordingAgent())
    assert adapter._inbox is not None and not adapter._inbox.idle
    assert adapter.imap is not None and adapter.imap.tls == "starttls"
    await box.receive(mail("dave@example.org", box.address, "poll", "hello poller"))
    [reply] = await servers.mx.wait_mail("dave@example.org", timeout=10)
    assert reply["Subject"] == "Re: poll"


async def test_attachments_both_ways(servers: Servers, box: Mailbox, stack: list[Running]) -> None:
    agent = RecordingAgent()
    bot = await start_bot(stack, box.adapter(), agent)
    erin = "erin@example.org"
    await box.receive(mail(erin, box.address, "pic", "what is this?",
                           files=(("dot.png", "image/png", PNG),)))  # fmt: skip
    await servers.mx.wait_mail(erin)
    message = agent.calls[-1][1]
    [attachment] = message.attachments
    assert (attachment.kind, attachment.mime, attachment.name) == ("image", "image/png", "dot.png")
    assert await bot.session.blobs.get(attachment.blob) == PNG
    await bot.send(
        erin,
        "",
        thread_id=agent.calls[-1][2].thread_id,
        attachments=[File(b"col1,col2\n1,2\n", name="report.csv", mime="text/csv")],
    )
    sent = (await servers.mx.wait_mail(erin, 2))[1]
    [part] = list(sent.iter_attachments())
    assert part.get_filename() == "report.csv" and part.get_content_type() == "text/csv"
    assert part.get_payload(decode=True) == b"col1,col2\n1,2\n"
    assert sent["Subject"] == "Re: pic"


async def test_auto_replies_lists_and_bounces_are_never_answered(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    agent = RecordingAgent()
    await start_bot(stack, box.adapter(), agent)
    frank = "frank@example.org"
    ignored = [
        mail(frank, box.address, "Out of office", "away", msgid="<a1@example.org>",
             headers={"Auto-Submitted": "auto-replied"}),
        mail(frank, box.address, "[list] news", "digest", msgid="<a2@example.org>",
             headers={"List-Id": "<news.example.org>", "Precedence": "list"}),
        mail("MAILER-DAEMON@example.org", box.address, "Undelivered Mail", "failed",
             msgid="<a3@example.org>"),
    ]  # fmt: skip
    for msg in ignored:
        await box.receive(msg)
    # A bounce's envelope has a null sender: delivered with "Return-Path: <>".
    bounce = mail(frank, box.address, "failure notice", "could not deliver",
                  msgid="<a4@example.org>")  # fmt: skip
    box.server.deliver(box.address, b"Return-Path: <>\r\n" + bytes(bounce))
    await box.receive(mail(frank, box.address, "real", "a real question", msgid="<a5@example.org>"))
    [reply] = await servers.mx.wait_mail(frank)
    # Dovecot numbers the mails in the order it finds them (maildir: not always sent
    # order): wait until the watcher has been through all five.
    for _ in range(200):
        flags = await asyncio.to_thread(mailbox_flags, box.server, box.address)
        if len(flags) == 5 and all("OnethreadDone" in f for f in flags.values()):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a late answer would be sent by now
    assert reply["In-Reply-To"] == "<a5@example.org>" and len(servers.mx.outbox(frank)) == 1
    assert not servers.mx.outbox("mailer-daemon@example.org")
    assert [c[1].content for c in agent.calls] == ["a real question"]
    for msgid in ("<a1@example.org>", "<a2@example.org>", "<a3@example.org>", "<a4@example.org>"):
        assert "OnethreadDone" in flags[msgid] and "\\Seen" not in flags[msgid], msgid


async def test_default_allowlist_serves_listed_addresses_and_answers_no_one_else(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    agent = RecordingAgent()
    owner = "owner@example.org"
    bot = Bot("email", agent, adapter=box.adapter(), store="memory://", owners=[owner])
    assert isinstance(bot.access, AllowlistPolicy)  # no access= given: the email default
    stack.append(await run_bot(bot))
    await box.receive(mail("stranger@example.org", box.address, "hi", "let me in"))
    await box.receive(mail(owner, box.address, "hi", "it is me"))
    await servers.mx.wait_mail(owner)
    await asyncio.sleep(0.5)
    assert not servers.mx.outbox("stranger@example.org")  # not even a refusal: no backscatter
    assert [c[1].content for c in agent.calls] == ["it is me"]


async def test_verified_by_answers_only_mail_that_passed_dmarc(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> None:
    agent = RecordingAgent()
    await start_bot(stack, box.adapter(verified_by="mx.bot.test"), agent)
    mo = "mo@example.org"
    forged = mail(mo, box.address, "forged", "not really Mo", msgid="<f1@example.org>")
    forged["Authentication-Results"] = "mx.bot.test; dmarc=pass header.from=example.org"
    # The receiving server's own verdict comes first (it is added on top, at delivery).
    box.server.deliver(box.address, b"Authentication-Results: mx.bot.test; dmarc=fail "
                       b"header.from=example.org\r\n" + bytes(forged))  # fmt: skip
    real = mail(mo, box.address, "real", "really Mo", msgid="<f2@example.org>")
    box.server.deliver(box.address, b"Authentication-Results: mx.bot.test; dkim=pass "
                       b"header.d=example.org; dmarc=pass header.from=example.org\r\n"
                       + bytes(real))  # fmt: skip
    [reply] = await servers.mx.wait_mail(mo)
    await asyncio.sleep(0.5)
    assert reply["In-Reply-To"] == "<f2@example.org>" and len(servers.mx.outbox(mo)) == 1
    assert [c[1].content for c in agent.calls] == ["really Mo"]


@pytest.fixture
async def linked_world(
    servers: Servers, box: Mailbox, stack: list[Running]
) -> AsyncIterator[tuple[BotOS, FakeAdapter, InMemoryIdentityResolver, RecordingAgent]]:
    resolver = InMemoryIdentityResolver()
    agent = RecordingAgent()
    botos = BotOS(agent=agent, identity_resolver=resolver, store="memory://",
                  pairing=PairingStore(":memory:"))  # fmt: skip
    telegram = FakeAdapter("telegram")
    botos.add_bot(Bot("telegram", agent, adapter=telegram, session=botos.session,
                      access=OpenPolicy()))  # fmt: skip
    botos.add_bot(Bot("email", agent, adapter=box.adapter(), session=botos.session,
                      access=AllowlistPolicy(["alice@example.org"])))  # fmt: skip
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(30)
    yield botos, telegram, resolver, agent
    await botos.stop()
    await task


async def say(fake: FakeAdapter, user: str, text: str) -> str:
    before = len(fake.sent)
    await fake.inject(text, user=user, chat_id=f"chat-{user}")
    return (await fake.wait_sent(before + 1))[before].text


async def test_forged_from_cannot_link_or_read_anyones_history(
    servers: Servers, box: Mailbox, linked_world: Any
) -> None:
    botos, telegram, resolver, agent = linked_world
    alice, mallory = "alice@example.org", "mallory@evil.example"
    await box.receive(mail(alice, box.address, "secret", "my locker code is 4711"))
    await servers.mx.wait_mail(alice, 1)
    # Mallory gets a code on Telegram and mails it "from" Alice, answers to her own box.
    reply = await say(telegram, "mallory", "/link")
    code = CODE.search(reply)
    assert code is not None, reply
    await box.receive(mail(alice, box.address, "link", f"/link {code.group(1)}",
                           headers={"Reply-To": mallory}))  # fmt: skip
    refusal = (await servers.mx.wait_mail(alice, 2))[1].get_body(("plain",))
    assert refusal is not None and "cannot be redeemed by email" in refusal.get_content()
    assert resolver.resolve("telegram", "mallory") == "telegram:mallory"  # not linked
    assert resolver.resolve("email", alice) == f"email:{alice}"
    # The code is spent: it no longer links anything, from anywhere.
    assert "already used" in await say(telegram, "other", f"/link {code.group(1)}")
    # A forged question about Alice's history is answered to Alice, never to Mallory.
    await box.receive(mail(alice, box.address, "q", "what is my locker code?",
                           headers={"Reply-To": mallory}))  # fmt: skip
    await servers.mx.wait_mail(alice, 3)
    await asyncio.sleep(0.5)
    assert not servers.mx.outbox(mallory)
    # And Mallory's own conversation holds nothing of Alice's.
    await say(telegram, "mallory", "what is the locker code?")
    history = agent.calls[-1][0]
    assert all("4711" not in h.content for h in history)


async def test_link_code_is_issued_by_mail_and_redeemed_elsewhere(
    servers: Servers, box: Mailbox, linked_world: Any
) -> None:
    botos, telegram, resolver, agent = linked_world
    alice = "alice@example.org"
    await box.receive(mail(alice, box.address, "link", "/link alice"))
    [issued] = await servers.mx.wait_mail(alice)
    body = issued.get_body(("plain",))
    assert body is not None
    code = CODE.search(body.get_content())
    assert code is not None, body.get_content()
    confirm = await say(telegram, "t-alice", f"/link {code.group(1)}")
    assert "Linked" in confirm
    assert resolver.resolve("email", alice) == resolver.resolve("telegram", "t-alice") == "alice"
    # The confirmation reaches the mailbox too.
    confirmed = (await servers.mx.wait_mail(alice, 2))[1].get_body(("plain",))
    assert confirmed is not None and "Linked" in confirmed.get_content()


async def test_wrong_password_fails_start(box: Mailbox) -> None:
    adapter = EmailAdapter(
        address=box.address, password="wrong", smtp_url=box.servers.mx.url,
        imap_url=f"imaps://127.0.0.1:{box.server.imaps_port}", tls_ca_file=str(box.servers.cert),
    )  # fmt: skip

    async def ignore(_: Any) -> None:
        return None

    with pytest.raises(PlatformAuthError, match="app password"):
        await adapter.start(ignore)
    untrusted = EmailAdapter(
        address=box.address, password=PASSWORD, smtp_url=box.servers.mx.url,
        imap_url=f"imaps://127.0.0.1:{box.server.imaps_port}",
    )  # fmt: skip
    with pytest.raises(PlatformAuthError, match="certificate"):
        await untrusted.start(ignore)
