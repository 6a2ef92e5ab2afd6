"""The web chat page in a real browser: Playwright driving Debian's Chromium.

No browser is downloaded: Playwright (from pip) launches ``/usr/bin/chromium``
(``apt-get install chromium``). Without it the tests are skipped, except under
``CI=true``, where a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from helpers import RecordingAgent
from onethread.bots import Bot
from onethread.platforms.web import WebAdapter, attach_history

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 10_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run)")
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):
        _unavailable(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install playwright")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    b = Bot("web", RecordingAgent(), store="memory://", port=0)
    attach_history(b)
    task = asyncio.create_task(b.start())
    await asyncio.wait_for(b.ready.wait(), 5)
    yield b
    await b.stop()
    await task


def url_of(bot: Bot) -> str:
    assert isinstance(bot.adapter, WebAdapter)
    return bot.adapter.url


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A fresh page whose script errors and CSP violations are collected."""
    page = await browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def on_console(msg: Any) -> None:
        # A reconnect attempt while the server is down is logged by Chromium; not a bug.
        if msg.type == "error" and "WebSocket connection to" not in msg.text:
            problems.append(f"console error: {msg.text}")

    page.on("console", on_console)
    await page.goto(url)
    return page, problems


async def test_chat_reply_and_history_after_reload(browser: Browser, bot: Bot) -> None:
    from playwright.async_api import expect

    page, problems = await open_page(browser, url_of(bot))
    await page.fill("#name", "Alice")
    await page.click("#start")
    await expect(page.locator("#who")).to_have_text("Alice")
    await expect(page.locator("#status")).to_have_text("connected")

    await page.fill("#text", "hello **world**")
    await page.press("#text", "Enter")
    reply = page.locator(".msg.assistant")
    await expect(reply).to_have_count(1)
    await expect(reply).to_contain_text("reply:hello world")
    await expect(reply.locator("strong")).to_have_text("world")  # Markdown rendered
    await expect(page.locator(".msg.user .body")).to_have_text("hello **world**")
    await expect(page.locator(".msg.pending")).to_have_count(0)  # acked

    await page.reload()
    await expect(page.locator("#status")).to_have_text("connected")
    await expect(page.locator(".msg.user .body")).to_have_text("hello **world**")
    await expect(page.locator(".msg.assistant strong")).to_have_text("world")
    await expect(page.locator(".msg")).to_have_count(2)  # history once, no replayed duplicate

    await page.fill("#text", "after reload")
    await page.press("#text", "Enter")
    await expect(page.locator(".msg.assistant")).to_have_count(2)
    assert isinstance(bot.agent, RecordingAgent)
    users = {ctx.user_id for _, _, ctx in bot.agent.calls}
    names = {ctx.user_name for _, _, ctx in bot.agent.calls}
    assert len(users) == 1 and names == {"Alice"}  # the same browser is the same user
    assert len(bot.agent.calls[1][0]) == 2  # and the second turn saw the first
    assert problems == []


async def test_replies_cannot_inject_html(browser: Browser, bot: Bot) -> None:
    from playwright.async_api import expect

    page, problems = await open_page(browser, url_of(bot))
    await page.fill("#name", "Mallory")
    await page.click("#start")
    await page.fill("#text", '<img src=x onerror="window.pwned=1"> [x](javascript:alert(1))')
    await page.press("#text", "Enter")
    reply = page.locator(".msg.assistant .body")
    await expect(reply).to_contain_text("<img src=x")
    assert await page.locator(".msg img").count() == 0
    assert await page.locator(".msg a").count() == 0
    assert await page.evaluate("window.pwned") is None
    assert problems == []


MARKDOWN_CASES = [
    (
        "a *b* _c_ **d** `e<f>`",
        "a <em>b</em> <em>c</em> <strong>d</strong> <code>e&lt;f&gt;</code>",
    ),
    ("```py\nx = 1 < 2\n```", '<pre><code class="language-py">x = 1 &lt; 2</code></pre>'),
    ("one\ntwo", "one<br>two"),
    ("snake_case_name", "snake_case_name"),
    (
        "[docs](https://example.com/?a=1&b=2)",
        '<a href="https://example.com/?a=1&amp;b=2" target="_blank" '
        'rel="noopener noreferrer">docs</a>',
    ),
    (
        "see https://example.com.",
        'see <a href="https://example.com" target="_blank" '
        'rel="noopener noreferrer">https://example.com</a>.',
    ),
    ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
    ('"quoted" & <b>', "&quot;quoted&quot; &amp; &lt;b&gt;"),
    ("[a](https://x.y/```js\ncode```)", None),  # must not break out of the attribute
]


async def test_markdown_renderer(browser: Browser, bot: Bot) -> None:
    page, problems = await open_page(browser, url_of(bot))
    for source, expected in MARKDOWN_CASES:
        html = await page.evaluate("(s) => window.onethread.renderMarkdown(s)", source)
        if expected is not None:
            assert html == expected, source
        # whatever the input, the result parses into no element with an event handler
        attrs = await page.evaluate(
            """(h) => { const d = document.createElement('div'); d.innerHTML = h;
                 return [...d.querySelectorAll('*')].flatMap(e => [...e.attributes]
                   .map(a => a.name)); }""",
            html,
        )
        assert set(attrs) <= {"href", "target", "rel", "class"}, (source, html)
    assert problems == []


async def test_page_reconnects_without_losing_messages(browser: Browser) -> None:
    from playwright.async_api import expect

    from onethread.bots.supervisor import Backoff
    from onethread.errors import ConnectionLost

    agent = RecordingAgent(delay=0.8)
    bot = Bot("web", agent, store="memory://", port=0, backoff=Backoff(base=1.0))
    attach_history(bot)
    task = asyncio.create_task(bot.start())
    try:
        await asyncio.wait_for(bot.ready.wait(), 5)
        page, problems = await open_page(browser, url_of(bot))
        await page.fill("#name", "Rita")
        await page.click("#start")
        await expect(page.locator("#status")).to_have_text("connected")
        await page.fill("#text", "slow question")
        await page.press("#text", "Enter")
        await expect(page.locator(".msg.pending")).to_have_count(0)  # reached the bot

        bot.adapter.report_failure(ConnectionLost("dropped by the test"))  # server goes away
        await expect(page.locator("#status")).to_have_text("reconnecting…")
        await page.fill("#text", "typed while offline")
        await page.press("#text", "Enter")
        await expect(page.locator(".msg.pending")).to_have_count(1)

        # the reply finished while no socket was open, the message waited in the page
        assistant = page.locator(".msg.assistant .body")
        await expect(assistant).to_have_text(["reply:slow question", "reply:typed while offline"])
        await expect(page.locator(".msg.pending")).to_have_count(0)
        await expect(page.locator("#status")).to_have_text("connected")
        assert [m.content for _, m, _ in agent.calls] == ["slow question", "typed while offline"]
        assert problems == []
    finally:
        await bot.stop()
        await task


async def test_commands_stay_on_the_page_after_reload_and_the_notice_is_said_once(
    browser: Browser,
) -> None:
    """The real offline agent: its no-model notice once per conversation; /help and
    /whoami with their replies are still shown after a reload, in their place, and
    never reach the model (its memory counts only the two real turns)."""
    from playwright.async_api import expect

    from onethread import Agent

    bot = Bot("web", Agent("assistant"), store="memory://", port=0)
    task = asyncio.create_task(bot.start())
    try:
        await asyncio.wait_for(bot.ready.wait(), 5)
        page, problems = await open_page(browser, url_of(bot))
        await page.fill("#name", "Ada")
        await page.click("#start")
        await expect(page.locator("#status")).to_have_text("connected")
        assistant = page.locator(".msg.assistant .body")
        for n, text in enumerate(["hello", "/help", "/whoami", "still there?"], start=1):
            await page.fill("#text", text)
            await page.press("#text", "Enter")
            await expect(assistant).to_have_count(n)
        await expect(page.locator(".msg.pending")).to_have_count(0)
        notice = "No language model is configured"
        await expect(page.locator(".msg.assistant", has_text=notice)).to_have_count(1)
        await expect(assistant.nth(3)).to_contain_text(
            "I remember this conversation: 2 earlier messages from web."
        )
        before = await page.locator(".msg .body").all_inner_texts()

        await page.reload()
        await expect(page.locator("#status")).to_have_text("connected")
        await expect(page.locator(".msg")).to_have_count(8)
        after = await page.locator(".msg .body").all_inner_texts()
        assert after == before
        users = await page.locator(".msg.user .body").all_inner_texts()
        assert users == ["hello", "/help", "/whoami", "still there?"]
        assert "/quit" not in after[3] and "/whoami" in after[3]  # the web chat's /help
        assert "You are Ada (web id" in after[5]
        user = await page.evaluate("localStorage.getItem('onethread.user')")
        stored = await bot.session.history(user, platform="web", chat_id=f"web-{user}")
        assert [e.content for e in stored if e.role == "user"] == ["hello", "still there?"]
        assert len(stored) == 4  # the commands are on the page, not in the history
        assert problems == []
    finally:
        await bot.stop()
        await task
