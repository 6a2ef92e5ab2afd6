"""Several hosts behind one load balancer: three ``onethread run`` processes on one
shared Redis (then PostgreSQL) behind a round-robin proxy. 30 people send 10 signed
WhatsApp webhooks each, every one delivered twice (a platform retry) to two different
hosts at once: every message is answered exactly once (sends counted at the fake Graph
API), a person's turns never overlap (the fake model sees at most one at a time per
person), and each history is complete and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import signal
import socket
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fake_openai import FakeOpenAI
from fake_whatsapp import FakeGraph, message_payload
from onethread.session.urls import open_history_store
from services import postgres_url, redis_url

pytestmark = [pytest.mark.service, pytest.mark.multiprocess, pytest.mark.timeout(300)]

HOSTS = 3
PEOPLE = 30
MESSAGES = 10
_TAG = re.compile(r"p(\d+) m(\d+)")


@pytest.fixture(params=["redis", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(store URL, this run's tag in every person's id). On Redis (``onethread run``
    takes no key prefix) the run's keys are the ones naming its people, deleted
    afterwards; on PostgreSQL a fresh database."""
    tag = f"{uuid.uuid4().int % 10**6:06d}"
    if request.param == "redis":
        url = redis_url().rsplit("/", 1)[0] + "/11"
        yield url, tag
        import redis

        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"*1555{tag}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        return
    import psycopg

    admin = postgres_url()
    name = f"ot_wa_hosts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}", tag
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RoundRobin:
    """The load balancer: each POST goes to the next host; a redelivery of a body
    already in flight or served goes to another host than the one that has it."""

    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams
        self._next = itertools.count()
        self.routed: dict[str, list[int]] = defaultdict(list)  # body hash -> hosts
        self.statuses: Counter[int] = Counter()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.read()
        digest = hashlib.sha256(body).hexdigest()
        host = next(self._next) % len(self.upstreams)
        while host in self.routed[digest] and len(self.routed[digest]) < len(self.upstreams):
            host = (host + 1) % len(self.upstreams)
        self.routed[digest].append(host)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "x-hub-signature-256")}  # fmt: skip
        async with self._http.request(request.method, self.upstreams[host] + request.path_qs,
                                      data=body, headers=headers) as resp:  # fmt: skip
            text = await resp.text()
            self.statuses[resp.status] += 1
            return web.Response(status=resp.status, text=text)


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeGraph, FakeOpenAI, dict[str, Any]]]:
    seen: dict[str, Any] = {"inflight": Counter(), "overlaps": [], "turns": Counter()}

    async def model(body: dict[str, Any]) -> str:
        users = [m for m in body["messages"] if m["role"] == "user"]
        text = str(users[-1]["content"]) if users else ""
        found = _TAG.search(text)
        person = found.group(1) if found else "?"
        seen["inflight"][person] += 1
        seen["turns"][person] += 1
        if seen["inflight"][person] > 1:
            seen["overlaps"].append(text)
        try:
            await asyncio.sleep(0.005)
        finally:
            seen["inflight"][person] -= 1
        return f"ack: {text}"

    graph, oa = FakeGraph(), FakeOpenAI(model)
    await graph.start()
    await oa.start()
    try:
        yield graph, oa, seen
    finally:
        await oa.close()
        await graph.stop()


async def wait_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.returncode is not None:
                raise AssertionError(f"host exited early with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became healthy")


async def test_three_hosts_answer_each_message_once_in_order(
    shared: tuple[str, str], fakes: tuple[FakeGraph, FakeOpenAI, dict[str, Any]], tmp_path: Path
) -> None:
    graph, oa, seen = fakes
    store_url, tag = shared
    people = [f"1555{tag}{p:02d}" for p in range(PEOPLE)]
    ports = [free_port() for _ in range(HOSTS)]
    env = {**os.environ, **graph.env(), "OPENAI_BASE_URL": oa.base_url,
           "OPENAI_API_KEY": "sk-test", "ONETHREAD_HOME": str(tmp_path / "home")}  # fmt: skip
    procs = []
    for i, port in enumerate(ports):
        config = tmp_path / f"host{i}.yaml"
        config.write_text(
            f"agent: {{name: assistant, model: gpt-test}}\n"
            f"http: {{host: 127.0.0.1, port: {port}}}\n"
            f"platforms:\n  whatsapp: {{}}\n"
            f"history: {store_url}\nidentity: {store_url}\n"
            f"access: {{default: open}}\n"
        )
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "onethread", "run", "--config", str(config), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE))  # fmt: skip
    upstreams = [f"http://127.0.0.1:{port}" for port in ports]
    proxy = RoundRobin(upstreams)
    await proxy.start()
    try:
        for url, proc in zip(upstreams, procs, strict=True):
            await wait_healthy(url, proc)

        async def person(p: int) -> None:
            wa_id = people[p]
            async with aiohttp.ClientSession() as http:
                for m in range(MESSAGES):
                    payload = message_payload(wa_id, f"p{p:02d} m{m:02d}", name=f"P{p}",
                                              phone_number_id=graph.phone_number_id)  # fmt: skip
                    body, headers = graph.signed(payload)
                    url = proxy.url + "/webhooks/whatsapp"
                    # The delivery and Meta's retry of it, at once, to two hosts.
                    sent = [http.post(url, data=body, headers=headers) for _ in range(2)]
                    statuses = []
                    for response in await asyncio.gather(*sent):
                        statuses.append(response.status)
                        response.release()
                    assert statuses == [200, 200]
                    await graph.wait_for(lambda n=m: len(graph.texts(wa_id)) > n, timeout=60,
                                         what=f"reply {m} to person {p}")  # fmt: skip

        await asyncio.gather(*(person(p) for p in range(PEOPLE)))
        await asyncio.sleep(1.0)  # any duplicate turn would have answered by now
    finally:
        await proxy.stop()
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 30) for p in procs]
        errors = [(await p.stderr.read()).decode(errors="replace") for p in procs if p.stderr]
    assert codes == [0] * HOSTS, errors
    # Every delivery pair went to two different hosts, and every host served.
    assert len(proxy.routed) == PEOPLE * MESSAGES
    assert all(len(set(hosts)) == 2 for hosts in proxy.routed.values())
    assert {h for hosts in proxy.routed.values() for h in hosts} == set(range(HOSTS))
    # Every message answered exactly once, in order, per person.
    assert len(graph.sent) == PEOPLE * MESSAGES
    for p, wa_id in enumerate(people):
        assert graph.texts(wa_id) == [f"ack: p{p:02d} m{m:02d}" for m in range(MESSAGES)]
    assert seen["overlaps"] == [] and all(n == MESSAGES for n in seen["turns"].values())
    # Each history complete and in order.
    store = open_history_store(store_url)
    try:
        for p, wa_id in enumerate(people):
            entries = await store.load(f"bot_whatsapp_{wa_id}", 100)
            expected = []
            for m in range(MESSAGES):
                expected += [
                    ("user", f"p{p:02d} m{m:02d}"),
                    ("assistant", f"ack: p{p:02d} m{m:02d}"),
                ]
            assert [(e.role, e.content) for e in entries] == expected
    finally:
        await store.close()
