"""Files in the web chat in a real browser: Playwright driving Debian's Chromium.

A PNG attached with the paper clip reaches the (fake) vision model as an image
part, the reply shows, a reload shows the image inline from the history, and
another browser id cannot fetch it. Files the bot sends show as an inline
image or a download link.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from fake_openai import FakeOpenAI, text, tool_call
from onethread import Agent, File
from onethread.bots import Bot
from test_blobs import png
from test_web_browser import browser, open_page, url_of

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the fixture, imported for pytest


@pytest.fixture
async def vision_bot(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Bot, FakeOpenAI]]:
    async with FakeOpenAI() as oa:
        monkeypatch.setenv("OPENAI_BASE_URL", oa.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        b = Bot("web", Agent("a", model="gpt-4o-mini"), store="memory://", port=0)
        task = asyncio.create_task(b.start())
        await asyncio.wait_for(b.ready.wait(), 5)
        yield b, oa
        await b.stop()
        await task


async def test_a_png_attached_in_the_page_reaches_the_model_and_shows_after_reload(
    browser: object, vision_bot: tuple[Bot, FakeOpenAI], tmp_path: Path
) -> None:
    from playwright.async_api import expect

    bot, oa = vision_bot
    picture = tmp_path / "cat.png"
    picture.write_bytes(png())
    oa.queue(text("A tiny image."))
    page, problems = await open_page(browser, url_of(bot))  # type: ignore[arg-type]
    await page.fill("#name", "Alice")
    await page.click("#start")
    await expect(page.locator("#status")).to_have_text("connected")

    # The paper clip is an inline SVG: an emoji needs a font many Linux desktops lack.
    await expect(page.locator("#attach svg")).to_be_visible()
    async with page.expect_file_chooser() as chooser:
        await page.click("#attach")
    await (await chooser.value).set_files(str(picture))
    await expect(page.locator("#attachments .chip")).to_contain_text("cat.png")
    await page.fill("#text", "what is this?")
    await page.press("#text", "Enter")
    await expect(page.locator(".msg.assistant .body")).to_have_text("A tiny image.")
    await expect(page.locator(".msg.pending")).to_have_count(0)

    content = oa.requests[0]["messages"][-1]["content"]
    assert content[0]["text"].startswith("what is this?\n[image: cat.png (image/png")
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")

    await page.reload()
    await expect(page.locator("#status")).to_have_text("connected")
    image = page.locator(".msg.user .files img")
    await expect(image).to_have_count(1)
    await expect(image).to_have_attribute("alt", "cat.png")
    await page.wait_for_function(
        "() => { const i = document.querySelector('.msg.user .files img');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    src = await image.get_attribute("src")
    assert src is not None
    user = await page.evaluate("localStorage.getItem('onethread.user')")
    async with aiohttp.ClientSession() as http:
        mine = await http.get(src)
        assert mine.status == 200 and await mine.read() == png()
        theirs = await http.get(src.replace(f"user={user}", "user=someone-else"))
        assert theirs.status == 404
    # a second browser (its own id) cannot load it either
    other, _ = await open_page(browser, url_of(bot))  # type: ignore[arg-type]
    status = await other.evaluate("async (u) => (await fetch(u.replace(/user=[^&]+/, "
                                  "'user=' + 'x'.repeat(32)))).status", src)  # fmt: skip
    assert status == 404
    assert problems == []


async def test_files_the_bot_sends_show_inline_or_as_downloads(
    browser: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.async_api import expect

    def make_files() -> list[object]:
        """Make the invoice and the chart."""
        return ["Done.", File(b"%PDF-1.4 x", name="invoice.pdf"), File(png(), name="chart.png")]

    async with FakeOpenAI() as oa:
        monkeypatch.setenv("OPENAI_BASE_URL", oa.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        agent = Agent("a", model="gpt-test", tools=[make_files])
        bot = Bot("web", agent, store="memory://", port=0)
        task = asyncio.create_task(bot.start())
        try:
            await asyncio.wait_for(bot.ready.wait(), 5)
            oa.queue(tool_call("make_files"), text("Here they are."))
            page, problems = await open_page(browser, url_of(bot))  # type: ignore[arg-type]
            await page.fill("#name", "Bob")
            await page.click("#start")
            await page.fill("#text", "invoice please")
            await page.press("#text", "Enter")
            link = page.locator(".msg.assistant .files a")
            await expect(link).to_contain_text("invoice.pdf")
            await expect(link).to_have_attribute("download", "invoice.pdf")
            image = page.locator(".msg.assistant .files img")
            await expect(image).to_have_attribute("alt", "chart.png")
            await page.reload()  # now from the history: the reply entry carries the files
            await expect(page.locator(".msg.assistant .files a")).to_contain_text("invoice.pdf")
            await expect(page.locator(".msg.assistant .files img")).to_have_count(1)
            await expect(page.locator(".msg.assistant .files a")).to_have_count(1)  # no replay
            await page.wait_for_function(
                "() => [...document.querySelectorAll('.msg .files img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            user = await page.evaluate("localStorage.getItem('onethread.user')")
            await bot.send(f"web-{user}", "", attachments=[File(b"a,b\n", name="live.csv")])
            await expect(
                page.locator(".msg.assistant .files a", has_text="live.csv")
            ).to_have_count(1)
            assert problems == []
        finally:
            await bot.stop()
            await task
