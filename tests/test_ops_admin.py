"""The admin page over HTTP (aiohttp's client): who may use it, what each action does,
what it writes to the audit trail, and that it agrees with the CLI."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import RecordingAgent
from onethread.bots import Bot, BotOS
from onethread.bots.policy import ApprovalPolicy
from onethread.cli import main
from onethread.ops.admin import ADMIN_TOKEN_ENV, MAX_FAILURES, Throttle
from onethread.ops.audit import AuditLog
from onethread.platforms.web import TOKEN_ENV, WebAdapter
from onethread.session.history.base import HistoryEntry
from onethread.session.pairing import PairingStore
from onethread.session.urls import open_identity_resolver
from onethread.testing import FakeAdapter

TOKEN = "admin-token-for-tests-21c9"


async def serve(**options: Any) -> tuple[BotOS, asyncio.Task[None]]:
    agent = RecordingAgent()
    adapter = FakeAdapter("telegram")
    pairing = options.pop("pairing", None)
    bot_options = {}
    if pairing is not None:
        bot_options = {"access": ApprovalPolicy(pairing, owners=["1"]), "pairing": pairing}
    botos = BotOS(
        agent,
        platforms={"web": options.pop("web", {"port": 0})},
        bots=[Bot("telegram", agent, adapter=adapter, **bot_options)],
        store="memory://",
        pairing=pairing,
        **options,
    )
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(5)
    return botos, task


@pytest.fixture
async def botos(tmp_path: Path) -> AsyncIterator[BotOS]:
    pairing = PairingStore()  # the CLI's default file under $ONETHREAD_HOME
    resolver = open_identity_resolver(None)  # likewise: identity.json under $ONETHREAD_HOME
    os_, task = await serve(pairing=pairing, identity_resolver=resolver, admin_token=TOKEN)
    yield os_
    await os_.stop()
    await task
    pairing.close()


def url(botos: BotOS, path: str = "") -> str:
    adapter = botos.bots["web"].adapter
    assert isinstance(adapter, WebAdapter)
    return adapter.url + path


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, botos: BotOS, token: str = TOKEN) -> str:
    """Log in; return the page's CSRF token."""
    async with http.post(url(botos, "admin/login"), data={"token": token}) as resp:
        assert resp.status == 200, await resp.text()
        page = await resp.text()
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match is not None
    return match.group(1)


async def post(
    http: aiohttp.ClientSession, botos: BotOS, action: str, csrf: str, **form: str
) -> tuple[int, str]:
    async with http.post(url(botos, f"admin/{action}"), data={"csrf": csrf, **form}) as resp:
        return resp.status, await resp.text()


async def test_admin_is_off_without_a_token_even_on_loopback() -> None:
    os_, task = await serve(audit=":memory:")
    try:
        async with client() as http:
            async with http.get(url(os_, "admin")) as resp:
                assert resp.status == 403
                assert ADMIN_TOKEN_ENV in await resp.text()
            async with http.post(url(os_, "admin/login"), data={"token": ""}) as resp:
                assert resp.status == 403
    finally:
        await os_.stop()
        await task


async def test_the_web_token_is_the_fallback_and_the_admin_token_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "web-token-123")
    os_, task = await serve(audit=":memory:")
    try:
        async with client() as http:
            await login(http, os_, "web-token-123")
            # /metrics needs the web token too once the chat has one
            async with http.get(url(os_, "metrics")) as resp:
                assert resp.status == 401
            headers = {"Authorization": "Bearer web-token-123"}
            async with http.get(url(os_, "metrics"), headers=headers) as resp:
                assert resp.status == 200
    finally:
        await os_.stop()
        await task
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "separate-admin-token")
    os_, task = await serve(audit=":memory:")
    try:
        async with client() as http:
            async with http.post(url(os_, "admin/login"), data={"token": "web-token-123"}) as r:
                assert r.status == 401
            await login(http, os_, "separate-admin-token")
    finally:
        await os_.stop()
        await task


async def test_forms_need_the_session_csrf_and_our_origin(botos: BotOS) -> None:
    botos.session.identity_resolver.link("telegram", "7", "carol")  # type: ignore[union-attr]
    async with client() as http:
        csrf = await login(http, botos)
        form = {"platform": "telegram", "user_id": "7"}
        assert (await post(http, botos, "unlink", "wrong", **form))[0] == 403
        assert (await post(http, botos, "unlink", "", **form))[0] == 403
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "null"}):  # fmt: skip
            async with http.post(url(botos, "admin/unlink"), data={"csrf": csrf, **form},
                                 headers=headers) as resp:  # fmt: skip
                assert resp.status == 403, headers
        assert botos.session.resolve("telegram", "7") == "carol"
        status, page = await post(http, botos, "unlink", csrf, **form)
        assert status == 200 and "unlinked from carol" in page
        assert botos.session.resolve("telegram", "7") == "telegram:7"


async def test_deny_link_and_refusals_are_audited_and_agree_with_the_cli(
    botos: BotOS, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="onethread.audit")
    fake = botos.bots["telegram"].adapter
    assert isinstance(fake, FakeAdapter)
    for user in ("555", "666"):
        await fake.inject("hello", user=user, user_name=f"name {user}")
    await fake.wait_sent(2)
    async with client() as http:
        csrf = await login(http, botos)
        async with http.get(url(botos, "admin")) as resp:
            page = await resp.text()
        assert "name 555" in page and "name 666" in page
        status, page = await post(http, botos, "deny", csrf, platform="telegram", user_id="666")
        assert "deny telegram:666: denied" in page and "name 666" not in page
        status, page = await post(http, botos, "approve", csrf, platform="telegram",
                                  user_id="555")  # fmt: skip
        assert "approve telegram:555: approved" in page
        status, page = await post(http, botos, "link", csrf, platform="telegram",
                                  user_id="555", unified="dora")  # fmt: skip
        assert "link telegram:555: linked to dora" in page
        status, page = await post(http, botos, "link", csrf, platform="telegram",
                                  user_id="555", unified="dora")  # fmt: skip
        assert "link telegram:555: linked to dora" in page and "(was" not in page
        status, page = await post(http, botos, "link", csrf, platform="telegram",
                                  user_id="666", unified="dora")  # fmt: skip
        status, page = await post(http, botos, "link", csrf, platform="telegram",
                                  user_id="666", unified="erik")  # fmt: skip
        assert "link telegram:666: linked to erik (was dora)" in page
        status, page = await post(http, botos, "link", csrf, platform="telegram",
                                  user_id="555", unified="bad:id")  # fmt: skip
        assert "refused:" in page
        status, page = await post(http, botos, "link", csrf, platform="nosuch",
                                  user_id="1", unified="x")  # fmt: skip
        assert "refused: unknown platform" in page
    store = botos.pairing_store()
    assert store is not None
    assert not store.is_approved("telegram", "666")
    # The CLI reads the same files and agrees.
    assert main(["access", "list"]) == 0
    assert capsys.readouterr().out.strip() == "telegram:555"
    assert main(["identity", "list", "dora"]) == 0
    assert "555" in capsys.readouterr().out
    logged = [r.getMessage() for r in caplog.records if r.name == "onethread.audit"]
    assert len(logged) == 9 and logged[1].startswith("admin admin#")
    assert "deny telegram:666 (denied)" in logged[1]
    # The trail is in the store (a file), not only in this process.
    trail = AuditLog(botos.ops.audit.path).recent()
    assert [(a.action, a.detail.split(":")[0]) for a in reversed(trail)] == [
        ("login", "ok"), ("deny", "denied"), ("approve", "approved; told them"),
        ("link", "linked to dora"), ("link", "linked to dora"), ("link", "linked to dora"),
        ("link", "linked to erik (was dora)"), ("link", "refused"), ("link", "refused"),
    ]  # fmt: skip


async def test_person_page_escapes_text_and_shows_marks(botos: BotOS) -> None:
    store = botos.session.store
    await store.append("user:erin", [
        HistoryEntry("user", "<script>alert(1)</script>", 1.0, platform="telegram",
                     user_name="<b>erin</b>"),
        HistoryEntry("assistant", "reminder!", 2.0, mirror=True, source="cron"),
        HistoryEntry("assistant", "lost reply", 3.0,
                     metadata={"delivery": "failed", "delivery_error": "PlatformUnavailable"}),
        HistoryEntry("assistant", "very long reply", 4.0, metadata={"delivery": "cut"}),
    ])  # fmt: skip
    async with client() as http:
        await login(http, botos)
        async with http.get(url(botos, "admin/person"), params={"u": "erin"}) as resp:
            page = await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>erin</b>" not in page and "&lt;b&gt;erin&lt;/b&gt;" in page
    assert "mirrored: cron" in page
    assert "not delivered (PlatformUnavailable)" in page
    assert "cut: only the first part was sent" in page


async def test_recent_errors_and_logout(botos: BotOS) -> None:
    logging.getLogger("onethread.test").error("the store went away (StoreError)")
    async with client() as http:
        csrf = await login(http, botos)
        async with http.get(url(botos, "admin")) as resp:
            assert "the store went away (StoreError)" in await resp.text()
        status, page = await post(http, botos, "logout", csrf)
        assert status == 401 and "Log in" in page  # redirected to the login form
        async with http.get(url(botos, "admin")) as resp:
            assert resp.status == 401  # the session is gone
        assert (await post(http, botos, "approve", csrf, platform="telegram", user_id="1"))[
            0
        ] == 401


async def test_wrong_tokens_lock_the_login_out(botos: BotOS) -> None:
    async with client() as http:
        for _ in range(MAX_FAILURES):
            async with http.post(url(botos, "admin/login"), data={"token": "guess"}) as resp:
                assert resp.status == 401
        async with http.post(url(botos, "admin/login"), data={"token": TOKEN}) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) > 0


def test_throttle_per_client_and_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("onethread.ops.admin.time.monotonic", lambda: now[0])
    throttle = Throttle(per_client=3, total=5, window=60.0)
    for _ in range(3):
        throttle.fail("a")
    assert throttle.retry_after("a") == 60.0
    assert throttle.retry_after("b") == 0.0
    throttle.fail("b")
    throttle.fail("c")
    assert throttle.retry_after("d") == 60.0  # five failures in all: everyone waits
    now[0] += 61.0
    assert throttle.retry_after("a") == 0.0 and throttle.retry_after("d") == 0.0


async def test_long_lists_are_capped_on_the_page(
    botos: BotOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("onethread.ops.admin.MAX_ENTRIES", 2)
    monkeypatch.setattr("onethread.ops.admin.MAX_PEOPLE", 1)
    for n, who in enumerate(("frank", "grace")):
        await botos.session.store.append(f"user:{who}", [
            HistoryEntry("user", f"{who} {i}", 10.0 * n + i, platform="telegram")
            for i in range(3)
        ])  # fmt: skip
    async with client() as http:
        await login(http, botos)
        async with http.get(url(botos, "admin/person"), params={"u": "frank"}) as resp:
            page = await resp.text()
        async with http.get(url(botos, "admin")) as resp:
            overview = await resp.text()
    assert "the latest 2 of 3 entries" in page
    assert "frank 0" not in page and "frank 1" in page and "frank 2" in page
    assert "?u=grace" in overview and "?u=frank" not in overview  # the most recent only


@dataclass
class Job:
    """The fields of DESIGN.md's ``Job`` the admin page shows."""

    id: str
    unified_user_id: str
    text: str
    next_run: datetime.datetime
    every: datetime.timedelta | None = None
    cron: str | None = None
    prompt: bool = False
    platform: str | None = None
    source_label: str = "cron"


class SchedulingBotOS(BotOS):
    """``BotOS.jobs()``/``cancel()`` replaced by a stand-in whose jobs the test controls
    (and can break)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        self.active = {
            "j1": Job("j1", "alice", "Stand-up in 5 minutes", soon),
            "j2": Job("j2", "bob", "<b>Summarise</b> my day", soon, cron="0 18 * * 1-5",
                      prompt=True),
        }  # fmt: skip

    async def jobs(self, user: str | None = None) -> list[Job]:
        return [j for j in self.active.values() if user is None or j.unified_user_id == user]

    async def cancel(self, job_id: str) -> bool:
        return self.active.pop(job_id, None) is not None


async def test_scheduled_jobs_are_listed_and_cancelled_when_there_is_a_scheduler(
    botos: BotOS,
) -> None:
    async with client() as http:
        await login(http, botos)
        async with http.get(url(botos, "admin")) as resp:
            assert "No scheduled jobs." in await resp.text()  # the real scheduler, idle
        job = await botos.schedule("alice", "a real reminder", at=datetime.timedelta(hours=1))
        async with http.get(url(botos, "admin")) as resp:
            page = await resp.text()
        assert job.id in page and "a real reminder" in page
    os_ = SchedulingBotOS(RecordingAgent(), platforms={"web": {"port": 0}}, store="memory://",
                          admin_token=TOKEN, audit=":memory:")  # fmt: skip
    task = asyncio.create_task(os_.start())
    await os_.wait_ready(5)
    try:
        async with client() as http:
            csrf = await login(http, os_)
            async with http.get(url(os_, "admin")) as resp:
                page = await resp.text()
            assert "Stand-up in 5 minutes" in page and "cron 0 18 * * 1-5" in page
            assert "prompt: &lt;b&gt;Summarise&lt;/b&gt;" in page
            status, page = await post(http, os_, "cancel", csrf, job_id="j1")
            assert "cancel job j1: cancelled" in page and "Stand-up" not in page
            status, page = await post(http, os_, "cancel", csrf, job_id="j1")
            assert "cancel job j1: refused: job j1 is not active" in page
            assert set(os_.active) == {"j2"}
            os_.active = None  # type: ignore[assignment]  # the scheduler breaks: a bug
            status, _ = await post(http, os_, "cancel", csrf, job_id="j2")
            assert status == 500
        trail = [(a.action, a.target, a.detail) for a in reversed(os_.ops.audit.recent())]
        assert trail[1:] == [
            ("cancel", "job j1", "cancelled"),
            ("cancel", "job j1", "refused: job j1 is not active (already done or cancelled)"),
            ("cancel", "job j2", "failed: AttributeError"),  # audited all the same
        ]
    finally:
        await os_.stop()
        await task


async def test_a_proxy_origin_listed_for_the_web_chat_is_accepted() -> None:
    """Behind a reverse proxy the page's origin is not the Host the server sees."""
    os_, task = await serve(
        web={"port": 0, "allowed_origins": ["https://bot.example.com"]},
        admin_token=TOKEN, audit=":memory:",
    )  # fmt: skip
    try:
        async with client() as http:
            csrf = await login(http, os_)
            for origin, status in (("https://bot.example.com", 200), ("https://evil.example", 403)):
                async with http.post(url(os_, "admin/deny"), headers={"Origin": origin},
                                     data={"csrf": csrf, "platform": "telegram",
                                           "user_id": "1"}) as resp:  # fmt: skip
                    assert resp.status == status, origin
    finally:
        await os_.stop()
        await task


async def test_approving_a_sender_of_a_platform_served_elsewhere(botos: BotOS) -> None:
    """The approval is stored (their next message, on the host that serves them, is
    answered); nobody is told from here, and the page says so."""
    from onethread.bots.policy import APPROVAL_PURPOSE

    store = botos.pairing_store()
    assert store is not None
    assert store.issue(APPROVAL_PURPOSE, "discord", "77", chat_id="dm-77") is not None
    async with client() as http:
        csrf = await login(http, botos)
        status, page = await post(http, botos, "approve", csrf, platform="discord", user_id="77")
    assert "approve discord:77: approved; not told (discord is not served here)" in page
    assert store.is_approved("discord", "77")
    assert store.requests(APPROVAL_PURPOSE) == []
