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
from onethread import Agent
from onethread.bots import Bot
from onethread.bots.manager import READER_STOPPED
from onethread.platforms.web import WebAdapter, attach_history
from onethread.testing import ScriptedModel

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
    "a *b* _c_ **d** `e<f>`",
    "```py\nx = 1 < 2\n```",
    "[docs](https://example.com/?a=1&b=2)",
    "[x](javascript:alert(1)) [y](vbscript:x) ![i](data:text/html,<script>1</script>)",
    '"quoted" & <b onclick="x()">b</b> <script>window.pwned=1</script>',
    "[a](https://x.y/```js\ncode```)",
    "| a | b |\n|---|---|\n| <i>1</i> | 2 |",
]


async def test_server_rendered_markdown_is_inert_in_the_page(browser: Browser, bot: Bot) -> None:
    """The web chat's HTML comes from markdown-it (raw HTML off); the page inserts it."""
    from onethread.platforms.markup import to_web_html

    page, problems = await open_page(browser, url_of(bot))
    for source in MARKDOWN_CASES:
        html = to_web_html(source)
        attrs = await page.evaluate(
            """(h) => { const d = document.createElement('div'); window.onethread.setHtml(d, h);
                 return [...d.querySelectorAll('*')].flatMap(e => [...e.attributes]
                   .map(a => e.tagName + ' ' + a.name + '=' + a.value)); }""",
            html,
        )
        for attr in attrs:  # no event handlers, no script URLs, whatever the input
            name = attr.split(" ", 1)[1].split("=", 1)[0]
            assert name in {"href", "target", "rel", "class", "src", "alt"}, attr
            assert "javascript:" not in attr and "vbscript:" not in attr, attr
        tags = await page.evaluate(
            """(h) => { const d = document.createElement('div'); window.onethread.setHtml(d, h);
                 return [...d.querySelectorAll('*')].map(e => e.tagName.toLowerCase()); }""",
            html,
        )
        assert not {"script", "iframe", "b", "i", "object"} & set(tags), (source, tags)
    assert await page.evaluate("window.pwned") is None
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


STREAMED = (
    "Here is a table:\n\n| fruit | qty |\n|---|---:|\n| apple | 3 |\n\n"
    "and <script>window.pwned=1</script> some **bold** words " + " ".join(["more"] * 12)
)


async def streaming_bot(model: ScriptedModel) -> tuple[Bot, asyncio.Task[None]]:
    b = Bot("web", Agent("a", model=model), store="memory://", port=0)
    attach_history(b)
    task = asyncio.create_task(b.start())
    await asyncio.wait_for(b.ready.wait(), 5)
    return b, task


async def test_a_streamed_reply_shows_deltas_then_safe_markdown(browser: Browser) -> None:
    from playwright.async_api import expect

    b, task = await streaming_bot(ScriptedModel([STREAMED], stream_delay=0.1))
    try:
        page, problems = await open_page(browser, url_of(b))
        await page.fill("#name", "Sam")
        await page.click("#start")
        await page.fill("#text", "show me")
        await page.press("#text", "Enter")
        streaming = page.locator(".msg.assistant.streaming")
        await expect(streaming).to_have_count(1)  # deltas shown while the model writes
        await expect(streaming.locator(".stop")).to_be_visible()
        partial = await streaming.locator(".body").text_content()
        assert partial and len(partial) < len(STREAMED)
        final = page.locator(".msg.assistant:not(.streaming)")
        await expect(final).to_have_count(1)
        await expect(page.locator(".msg.assistant")).to_have_count(1)  # replaced, not added
        await expect(final.locator("table td").first).to_have_text("apple")
        await expect(final.locator("strong")).to_have_text("bold")
        await expect(final.locator(".body")).to_contain_text("<script>window.pwned=1</script>")
        assert await page.locator(".msg script").count() == 0
        assert await page.evaluate("window.pwned") is None
        assert problems == []
    finally:
        await b.stop()
        await task


async def test_the_stop_button_ends_the_reply_and_keeps_what_was_written(
    browser: Browser,
) -> None:
    from playwright.async_api import expect

    words = " ".join(f"w{i}" for i in range(200))
    b, task = await streaming_bot(ScriptedModel([words], stream_delay=0.05))
    try:
        page, problems = await open_page(browser, url_of(b))
        await page.fill("#name", "Sam")
        await page.click("#start")
        await page.fill("#text", "talk a lot")
        await page.press("#text", "Enter")
        await expect(page.locator(".msg.assistant.streaming .body")).to_contain_text("w3")
        await page.click(".msg.assistant.streaming .stop")
        final = page.locator(".msg.assistant:not(.streaming) .body")
        await expect(final).to_contain_text(READER_STOPPED)
        shown = await final.text_content()
        assert shown is not None and "w199" not in shown
        user = await page.evaluate("localStorage.getItem('onethread.user')")
        [_, reply] = await b.session.history(user, platform="web", chat_id=f"web-{user}")
        assert reply.content.endswith(READER_STOPPED) and reply.metadata["stopped"] == "reader"
        assert reply.content.startswith("w0 w1 w2 w3")
        assert problems == []
    finally:
        await b.stop()
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
