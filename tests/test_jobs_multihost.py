"""Three hosts share one schedule (Redis, then PostgreSQL): 200 jobs due in the same
second, one host SIGKILLed while it holds claims; each job is delivered exactly once.

Each host is its own OS process running a BotOS on Telegram (the real
python-telegram-bot client) against its own fake Telegram server in this
process; the count is taken at the fakes. The killed host's sends hang before
they reach its server, so what it held must be handed over when its lease ends
(the one repeat the outbox and job store allow, a host dying after the
platform accepted a message, cannot happen here by construction).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from _job_worker import stores
from fake_telegram import FakeTelegram
from onethread.session.history.base import HistoryEntry
from onethread.session.jobs.when import make_job
from services import postgres_schema, postgres_url, redis_prefix, redis_url

pytestmark = [pytest.mark.service, pytest.mark.multiprocess, pytest.mark.timeout(180)]

WORKER = Path(__file__).with_name("_job_worker.py")
JOBS = 200


@pytest.fixture(params=["redis", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    with ExitStack() as stack:
        if request.param == "redis":
            yield "redis", redis_url(), stack.enter_context(redis_prefix())
        else:
            yield "postgres", postgres_url(), stack.enter_context(postgres_schema())


def spawn(kind: str, url: str, ns: str, role: str, concurrency: int, tg: FakeTelegram) -> Any:
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_API_BASE_URL": tg.base_url}
    return subprocess.Popen(
        [sys.executable, str(WORKER), kind, url, ns, role, str(concurrency)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


async def test_200_jobs_due_at_once_on_3_hosts_one_killed_each_delivered_once(
    shared: tuple[str, str, str],
) -> None:
    kind, url, ns = shared
    history, jobs = stores(kind, url, ns)
    fakes = [FakeTelegram() for _ in range(3)]
    for fake in fakes:
        await fake.start()
    procs: list[Any] = []
    try:
        for i in range(JOBS):  # each person last talked on Telegram, chat 1000+i
            entry = HistoryEntry(
                role="user",
                content="hi",
                timestamp=time.time(),
                platform="telegram",
                chat_id=str(1000 + i),
                user_id=str(1000 + i),
            )
            await history.append(f"user:u{i}", [entry])  # fmt: skip
        roles = [("victim", 16), ("host", 4), ("host", 4)]
        pairs = zip(roles, fakes, strict=True)
        procs = [spawn(kind, url, ns, role, c, fake) for (role, c), fake in pairs]
        for proc in procs:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line.strip() == "ready", proc.stderr.read()
        due = datetime.fromtimestamp(int(time.time()) + 2, UTC)  # one second for all 200
        for i in range(JOBS):
            await jobs.add(make_job(f"u{i}", f"job {i}", at=due))
        victim = procs[0]
        line = await asyncio.wait_for(asyncio.to_thread(victim.stdout.readline), 30)
        assert line.startswith("stuck job "), victim.stderr.read()
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.wait)

        def delivered() -> list[str]:
            return [str(m.chat_id) for fake in fakes for m in fake.sent]

        async with asyncio.timeout(90):
            while len(set(delivered())) < JOBS:
                await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # past another lease: any repeat would show now
        counts = Counter(delivered())
        assert counts == Counter({str(1000 + i): 1 for i in range(JOBS)})
        assert fakes[0].sent == []  # the killed host sent nothing
        texts = {str(m.chat_id): m.text for fake in fakes[1:] for m in fake.sent}
        assert all(texts[str(1000 + i)] == f"job {i}" for i in range(JOBS))
        assert await jobs.find() == []
        finished = await jobs.find(finished=True)
        assert len(finished) == JOBS and {j.status for j in finished} == {"done"}
        for i in range(JOBS):
            mirrored = [e for e in await history.load(f"user:u{i}") if e.source == "cron"]
            assert [e.content for e in mirrored] == [f"job {i}"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for fake in fakes:
            await fake.stop()
        await jobs.close()
        await history.close()
