"""The admin page in a real browser (Playwright driving Debian's Chromium).

Log in with the token, approve a pending sender (who then gets an answer),
cancel a scheduled job, unlink an account (its next message starts a separate conversation); refused
without the token, refused cross-site (a form on another origin has no CSRF
token), refused after repeated wrong tokens. A screenshot of the overview is
written to ``$ONETHREAD_ADMIN_SCREENSHOT`` when set (the README's docs/admin.png).
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from helpers import RecordingAgent
from onethread.bots import Bot, BotOS
from onethread.bots.policy import ApprovalPolicy
from onethread.ops.admin import APPROVED_TEXT, MAX_FAILURES
from onethread.platforms.web import WebAdapter
from onethread.session import InMemoryIdentityResolver
from onethread.session.pairing import PairingStore
from onethread.testing import FakeAdapter
from test_web_browser import TIMEOUT_MS, browser  # noqa: F401  (the fixture)

pytestmark = pytest.mark.browser

TOKEN = "admin-token-for-tests-7f3a"
OWNER = "100"  # alice's Telegram account, linked; owners are always served


@pytest.fixture
async def botos(tmp_path: Path) -> AsyncIterator[BotOS]:
    pairing = PairingStore(tmp_path / "pairing.db")
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", OWNER, "alice")
    resolver.link("telegram", "200", "bob")
    agent = RecordingAgent()
    telegram = FakeAdapter("telegram")
    policy = ApprovalPolicy(pairing, owners=[OWNER, "200"])
    os_ = BotOS(
        agent,
        platforms={"web": {"port": 0}},
        bots=[Bot("telegram", agent, adapter=telegram, access=policy, pairing=pairing)],
        store="memory://",
        identity_resolver=resolver,
        pairing=pairing,
        admin_token=TOKEN,
        audit=str(tmp_path / "audit.db"),
    )
    task = asyncio.create_task(os_.start())
    await os_.wait_ready(5)
    yield os_
    await os_.stop()
    await task
    pairing.close()


def base(botos: BotOS) -> str:
    adapter = botos.bots["web"].adapter
    assert isinstance(adapter, WebAdapter)
    return adapter.url


def telegram(botos: BotOS) -> FakeAdapter:
    adapter = botos.bots["telegram"].adapter
    assert isinstance(adapter, FakeAdapter)
    return adapter


async def say(botos: BotOS, text: str, user: str) -> str:
    """``user`` writes ``text`` on Telegram; returns the bot's answer."""
    fake = telegram(botos)
    before = len(fake.sent)
    await fake.inject(text, user=user, user_name=f"user {user}")
    sent = await fake.wait_sent(before + 1)
    return sent[-1].text


async def test_admin_approves_unlinks_and_refuses(browser, botos: BotOS) -> None:  # noqa: F811
    from playwright.async_api import expect

    agent = botos.agent
    assert isinstance(agent, RecordingAgent)
    await say(botos, "hello from alice", OWNER)
    asked = await say(botos, "hi, may I talk to you?", "555")
    assert "approved people only" in asked and "reply:" not in asked

    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: problems.append(m.text) if "Security Policy" in m.text else None)

    # Without a session: the login form, nothing else.
    await page.goto(base(botos) + "admin")
    await expect(page.locator("h1")).to_have_text("Log in")
    assert await page.locator("#approvals").count() == 0
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator("#platforms")).to_contain_text("connected")

    # A real scheduled job (BotOS's scheduler), listed with a Cancel button.
    job = await botos.schedule("alice", "Stand-up in 5 minutes", at=datetime.timedelta(hours=1))
    await page.reload()
    await expect(page.locator("#jobs")).to_contain_text("Stand-up in 5 minutes")

    row = page.locator("#approvals tr", has_text="555")
    await expect(row).to_contain_text("user 555")
    await expect(page.locator("#people")).to_contain_text("alice")
    await expect(page.locator("#stores")).to_contain_text("MemoryHistoryStore")
    shot = os.environ.get("ONETHREAD_ADMIN_SCREENSHOT")
    await page.set_viewport_size({"width": 1100, "height": 900})
    await page.screenshot(path=shot or str(Path(botos.ops.audit.path).with_name("admin.png")),
                          full_page=True)  # fmt: skip

    # Approve: the sender is told, and their next message is answered by the agent.
    await row.locator("button.approve").click()
    await expect(page.locator(".flash")).to_contain_text("approve telegram:555: approved")
    await expect(page.locator("#approvals")).to_contain_text("Nobody is waiting")
    sent = await telegram(botos).wait_sent(3)
    assert sent[-1].chat_id == "dm-555" and sent[-1].text == APPROVED_TEXT
    assert await say(botos, "thanks!", "555") == "reply:thanks!"

    # Cancel the job: gone from the page and from the scheduler.
    await page.locator("#jobs tr", has_text="Stand-up").locator("button").click()
    await expect(page.locator(".flash")).to_contain_text(f"cancel job {job.id}: cancelled")
    await expect(page.locator("#jobs")).not_to_contain_text("Stand-up in 5 minutes")
    assert [j.id for j in await botos.jobs("alice")] == []

    # One person's history, read-only; then unlink their Telegram account there.
    await page.click("a[href='/admin/person?u=alice']")
    await expect(page.locator("#history")).to_contain_text("hello from alice")
    await expect(page.locator("#history")).to_contain_text("reply:hello from alice")
    await page.locator("#accounts form", has_text="Unlink").first.click()
    await expect(page.locator(".flash")).to_contain_text("unlinked from alice")
    assert botos.session.resolve("telegram", OWNER) == f"telegram:{OWNER}"
    calls = len(agent.calls)
    assert await say(botos, "who am I talking to?", OWNER) == "reply:who am I talking to?"
    history, message, ctx = agent.calls[calls]
    assert history == [] and ctx.unified_user_id == f"telegram:{OWNER}"  # a separate conversation

    # Cross-site: another origin's page posts the unlink form without the CSRF token.
    evil = web.Application()
    form = (
        f'<form method="post" action="{base(botos)}admin/unlink">'
        '<input name="platform" value="telegram"><input name="user_id" value="200">'
        '<button id="go">win a prize</button></form>'
    )

    async def evil_page(request: web.Request) -> web.Response:
        return web.Response(text=form, content_type="text/html")

    evil.router.add_get("/", evil_page)
    runner = web.AppRunner(evil)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.click("#go")
        await expect(page.locator("body")).to_contain_text("refused")
    finally:
        await runner.cleanup()
    assert botos.session.resolve("telegram", "200") == "bob"  # still linked

    audit = botos.ops.audit.recent()
    actions = [(a.action, a.target, a.detail.split(";")[0]) for a in reversed(audit)]
    assert actions == [
        ("login", "admin page", "ok"),
        ("approve", "telegram:555", "approved"),
        ("cancel", f"job {job.id}", "cancelled"),
        ("unlink", f"telegram:{OWNER}", "unlinked from alice"),
    ]
    assert all(a.who.startswith("admin#") and a.who.endswith("@127.0.0.1") for a in audit)
    await context.close()

    # No session: actions are refused outright (401), nothing changes.
    anonymous = await browser.new_context()
    resp = await anonymous.request.post(
        base(botos) + "admin/unlink", form={"platform": "telegram", "user_id": "200"}
    )
    assert resp.status == 401
    assert botos.session.resolve("telegram", "200") == "bob"
    await anonymous.close()
    assert problems == []  # no script errors, no CSP violation (the stylesheet is ours)


async def test_guessed_tokens_are_rate_limited(browser, botos: BotOS) -> None:  # noqa: F811
    from playwright.async_api import expect

    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    for i in range(MAX_FAILURES):
        await page.goto(base(botos) + "admin")
        await page.fill("#token", f"guess-{i}")
        await page.click("button[type=submit]")
        await expect(page.locator(".error")).to_have_text("Wrong token.")
    await page.goto(base(botos) + "admin")
    await page.fill("#token", TOKEN)  # even the right token, now
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Too many attempts")
    assert await page.locator("#approvals").count() == 0
    await context.close()
