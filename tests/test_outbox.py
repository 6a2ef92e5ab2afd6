"""The cross-host outbox (Redis Streams, PostgreSQL table): once, retried, never lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from _outbox_worker import make_outbox, start
from onethread.session.outbox import Outbox, OutboxItem
from services import postgres_schema, postgres_url, redis_namespace

pytestmark = pytest.mark.service


@dataclass
class Shared:
    kind: str
    url: str
    namespace: str

    def outbox(self, **options: Any) -> Any:
        return make_outbox(self.kind, self.url, self.namespace, **options)


@pytest.fixture(params=["redis", "redis-cluster", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    with ExitStack() as stack:
        if request.param in ("redis", "redis-cluster"):
            url, prefix = redis_namespace(request.param)
            yield Shared("redis", url, stack.enter_context(prefix))
        else:
            yield Shared("postgres", postgres_url(), stack.enter_context(postgres_schema()))


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., asyncio.Task[None]]]:
    """Starts ``outbox.serve(...)`` tasks; cancels them and closes the outboxes afterwards."""
    started: list[tuple[Any, asyncio.Task[None]]] = []

    def serve(outbox: Any, platforms: list[str], deliver: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(outbox.serve(platforms, deliver))
        started.append((outbox, task))
        return task

    yield serve
    for outbox, task in started:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()


def item(text: str, platform: str = "telegram") -> OutboxItem:
    return OutboxItem(platform, chat_id="42", text=text, unified_user_id="alice", metadata={"n": 1})


async def wait_until(check: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.01)


async def test_each_item_goes_out_once_across_two_serving_hosts(
    shared: Shared, running: Any
) -> None:
    sender = shared.outbox()
    assert isinstance(sender, Outbox)
    await sender.put(item("put before anyone served telegram"))
    got: list[tuple[str, OutboxItem]] = []

    def recorder(host: str) -> Any:
        async def deliver(it: OutboxItem) -> None:
            await asyncio.sleep(0.001)
            got.append((host, it))

        return deliver

    running(shared.outbox(poll=0.05), ["telegram"], recorder("b"))
    running(shared.outbox(poll=0.05), ["telegram", "slack"], recorder("c"))
    await asyncio.gather(*(sender.put(item(f"m{i}")) for i in range(40)))
    await sender.put(item("for slack", "slack"))
    await wait_until(lambda: len(got) >= 42, within=10)
    await asyncio.sleep(0.2)  # nothing more arrives
    await sender.close()
    texts = Counter(it.text for _, it in got)
    assert len(got) == 42 and set(texts.values()) == {1}
    assert all(it.attempts == 1 and it.metadata == {"n": 1} for _, it in got)
    assert [h for h, it in got if it.platform == "slack"] == ["c"]


async def test_a_failed_delivery_is_retried_after_visibility(shared: Shared, running: Any) -> None:
    outbox = shared.outbox(visibility=0.3, poll=0.05)
    attempts: list[int] = []

    async def flaky(it: OutboxItem) -> None:
        attempts.append(it.attempts)
        if it.attempts == 1:
            raise ConnectionError("platform down")

    await outbox.put(item("retry me"))
    running(outbox, ["telegram"], flaky)
    await wait_until(lambda: len(attempts) >= 2, within=5)
    await asyncio.sleep(0.5)
    assert attempts == [1, 2]


async def test_an_item_that_always_fails_is_set_aside(shared: Shared, running: Any) -> None:
    outbox = shared.outbox(visibility=0.1, max_attempts=2, poll=0.02)
    attempts: list[int] = []

    async def broken(it: OutboxItem) -> None:
        attempts.append(it.attempts)
        raise ValueError("never works")

    await outbox.put(item("poison"))
    running(outbox, ["telegram"], broken)
    await wait_until(lambda: len(attempts) >= 2, within=5)
    dead: list[OutboxItem] = []

    async def listed() -> None:
        while not dead:
            dead.extend(await outbox.dead())
            await asyncio.sleep(0.05)

    await asyncio.wait_for(listed(), timeout=5)
    await asyncio.sleep(0.3)
    assert attempts == [1, 2]
    assert [d.text for d in dead] == ["poison"]


async def test_a_long_delivery_keeps_its_claim(shared: Shared, running: Any) -> None:
    got: list[str] = []

    def host(name: str, seconds: float) -> Any:
        async def deliver(it: OutboxItem) -> None:
            await asyncio.sleep(seconds)
            got.append(name)

        return deliver

    first = shared.outbox(visibility=0.3, poll=0.02)
    await first.put(item("slow"))
    running(first, ["telegram"], host("slow host", 1.0))  # over three visibilities
    await asyncio.sleep(0.1)
    running(shared.outbox(visibility=0.3, poll=0.02), ["telegram"], host("other host", 0))
    await wait_until(lambda: bool(got), within=5)
    await asyncio.sleep(0.5)
    assert got == ["slow host"]


async def test_a_host_killed_mid_delivery_loses_nothing(shared: Shared, running: Any) -> None:
    visibility = 0.5
    sender = shared.outbox(visibility=visibility)
    await sender.put(item("survives"))
    proc = start(shared.kind, shared.url, shared.namespace, visibility)
    try:
        line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        assert line == "got survives\n", proc.stderr.read()  # type: ignore[union-attr]
        await asyncio.to_thread(proc.wait)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    got: list[OutboxItem] = []

    async def deliver(it: OutboxItem) -> None:
        got.append(it)

    running(shared.outbox(visibility=visibility, poll=0.05), ["telegram"], deliver)
    await wait_until(lambda: bool(got), within=visibility + 5)
    await asyncio.sleep(0.2)
    await sender.close()
    assert [(g.text, g.attempts) for g in got] == [("survives", 2)]


async def test_depth_counts_what_waits_per_platform(shared: Shared, running: Any) -> None:
    """The ``onethread_outbox_depth`` gauge's source: queued and in-flight, not delivered."""
    outbox = shared.outbox(poll=0.05)
    try:
        assert await outbox.depth(["telegram", "slack"]) == {"telegram": 0, "slack": 0}
        for n in range(3):
            await outbox.put(item(f"t{n}"))
        await outbox.put(item("s0", platform="slack"))
        assert await outbox.depth(["telegram", "slack"]) == {"telegram": 3, "slack": 1}
        delivered: list[str] = []

        async def deliver(it: OutboxItem) -> None:
            delivered.append(it.text)

        running(shared.outbox(poll=0.05), ["telegram"], deliver)
        await wait_until(lambda: len(delivered) == 3, 10)
        async with asyncio.timeout(5):
            while (await outbox.depth(["telegram", "slack"]))["telegram"]:
                await asyncio.sleep(0.02)  # acknowledged just after deliver returns
        assert await outbox.depth(["telegram", "slack"]) == {"telegram": 0, "slack": 1}
    finally:
        await outbox.close()
