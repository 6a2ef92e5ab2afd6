"""Unreachable stores, as an operator meets them: real ``onethread`` processes, real servers.

* a store on a closed port: ``run --check`` names it, ``run`` and ``chat``
  refuse to start with one line and exit 1;
* an outage mid-run (a private ``redis-server`` this test starts on a free
  port, kills and restarts): one WARNING line per outage, one when it is
  over, no traceback, and the person gets an answer again without a restart.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from onethread.errors import StoreError, StoreUnavailable
from onethread.session.outage import SETTLE
from onethread.session.probe import probe_store

pytestmark = pytest.mark.multiprocess

APOLOGY = "Sorry, something went wrong on my side"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    return _free_port()


def cli(cwd: Path, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onethread", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


# -- probes -------------------------------------------------------------------------


async def test_probe_names_the_store_and_hides_the_password() -> None:
    port = _closed_port()
    with pytest.raises(StoreUnavailable) as info:
        await probe_store(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert info.value.store == f"Redis at redis://:***@127.0.0.1:{port}/0"
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StoreUnavailable) as pg:
        await probe_store(f"postgresql://me:hunter2@127.0.0.1:{port}/db", timeout=2)
    assert pg.value.store == f"PostgreSQL at postgresql://me:***@127.0.0.1:{port}/db"
    assert "hunter2" not in str(pg.value) and "\n" not in str(pg.value)


async def test_probe_of_reachable_stores(tmp_path: Path) -> None:
    await probe_store("redis://127.0.0.1:6379/0")
    await probe_store("postgresql://postgres@127.0.0.1:5432/test")
    await probe_store(f"sqlite:///{tmp_path}/new/folder/history.db")  # creatable
    await probe_store("memory://")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        await probe_store(f"sqlite:///{tmp_path}/dir.db")


async def test_probe_times_out_on_a_server_that_says_nothing() -> None:
    # Accepts the connection, never answers: the probe's own deadline ends it.
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await probe_store(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        assert time.monotonic() - started < 10  # bounded, not the driver's default
    finally:
        silent.close()


# -- start-up -----------------------------------------------------------------------


def test_check_connects_to_every_store_and_names_each(tmp_path: Path) -> None:
    port = _closed_port()
    (tmp_path / "onethread.yaml").write_text(
        f"history: redis://:hunter2@127.0.0.1:{port}/0\n"
        f"identity: postgresql://me:hunter2@127.0.0.1:{port}/db\n"
    )
    result = cli(tmp_path, "run", "--check")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: onethread.yaml: history: the history store")
    assert f"Redis at redis://:***@127.0.0.1:{port}/0" in lines[0]
    assert "turn locks" in lines[0] and "change history: in onethread.yaml" in lines[0]
    assert lines[1].startswith("error: onethread.yaml: identity: the identity store")
    assert f"postgresql://me:***@127.0.0.1:{port}/db" in lines[1]


def test_check_reports_reachable_stores(tmp_path: Path) -> None:
    (tmp_path / "onethread.yaml").write_text(
        "history: redis://127.0.0.1:6379/0\nidentity: postgresql://postgres@127.0.0.1:5432/test\n"
    )
    result = cli(tmp_path, "run", "--check")
    assert result.returncode == 0, result.stderr
    assert "history: redis://127.0.0.1:6379/0 (reachable)" in result.stdout


def test_check_lists_config_mistakes_and_unreachable_stores_together(tmp_path: Path) -> None:
    port = _closed_port()
    (tmp_path / "onethread.yaml").write_text(
        f"history: redis://127.0.0.1:{port}/0\nmax_history: lots\n"
    )
    result = cli(tmp_path, "run", "--check")
    assert result.returncode == 2
    assert "max_history:" in result.stderr and f"127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
@pytest.mark.parametrize("command", ["run", "chat"])
def test_run_and_chat_refuse_an_unreachable_store(
    tmp_path: Path, scheme: str, command: str
) -> None:
    port = _closed_port()
    url = f"{scheme}://me:hunter2@127.0.0.1:{port}/0"
    (tmp_path / "onethread.yaml").write_text(f"history: {url}\n")
    args = ["run", "--port", "0"] if command == "run" else ["chat"]
    result = cli(tmp_path, *args, input="hello\n")
    assert result.returncode == 1, result
    assert result.stdout == ""  # no banner: it never claimed to be running
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the history store")
    assert "cannot be reached" in lines[0] and ":***@127.0.0.1" in lines[0]
    assert "hunter2" not in lines[0]
    assert "start it or check the URL" in lines[0] and "history: in onethread.yaml" in lines[0]


def test_an_unreachable_identity_store_is_named(tmp_path: Path) -> None:
    port = _closed_port()
    (tmp_path / "onethread.yaml").write_text(f"identity: redis://127.0.0.1:{port}/0\n")
    result = cli(tmp_path, "chat", input="hello\n")
    assert result.returncode == 1
    assert result.stderr.startswith("error: the identity store cannot be reached")
    assert len(result.stderr.splitlines()) == 1


# -- an outage while running ----------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` on ``port``, no persistence, killable and restartable."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(_free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _say(url: str, user: str, message_id: str, text: str) -> str:
    """Send one web chat message; return the bot's reply text."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}ws?user={user}&name={user}&history=0") as ws:
            await ws.send_json({"type": "message", "id": message_id, "text": text})
            while True:
                frame = await ws.receive_json(timeout=20)
                if frame.get("type") == "message" and frame.get("role") == "assistant":
                    await ws.send_json({"type": "ack", "id": frame["id"]})
                    reply = str(frame["text"])
                    if f'"{text}"' in reply or APOLOGY in reply:  # not a replayed earlier one
                        return reply


async def _banner(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    seen = ""
    while "Ctrl-C stops" not in seen:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"no banner; got {seen!r}"
        seen += line.decode()
    return seen


async def test_an_outage_mid_run_is_one_warning_and_one_recovery_line(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    (tmp_path / "onethread.yaml").write_text(f"history: redis://127.0.0.1:{private_redis.port}/0\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onethread", "run", "--port", "0",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        banner = await _banner(proc)
        match = re.search(r"web chat:\s+(http://127\.0\.0\.1:\d+/)", banner)
        assert match, banner
        url = match.group(1)
        assert "No language model" in await _say(url, "alice", "m1", "before")

        private_redis.kill()  # outage 1: three messages, each told sorry
        for i in range(3):
            assert APOLOGY in await _say(url, "alice", f"down{i}", f"during {i}")

        private_redis.start()  # back (empty: no persistence); no restart of onethread
        # A pooled connection opened before the outage may fail its first command
        # after it (the driver then reconnects): a few turns, the last one whole.
        for i in range(3):
            reply = await _say(url, "alice", f"up{i}", f"after {i}")
        assert '"after 2"' in reply and APOLOGY not in reply  # answered (offline model)
        # Failures in the first SETTLE seconds after a recovery are the old outage's
        # tail (stale pooled connections): a new outage is one that comes later.
        await asyncio.sleep(SETTLE + 0.5)

        private_redis.kill()  # outage 2: logged again
        assert APOLOGY in await _say(url, "alice", "down9", "again")
        proc.send_signal(signal.SIGINT)
        _, stderr_bytes = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = stderr_bytes.decode()
    assert "Traceback" not in stderr, stderr
    where = f"Redis at redis://127.0.0.1:{private_redis.port}/0"
    down = [x for x in stderr.splitlines() if x.startswith(f"WARNING onethread.store: {where}")
            and "is unreachable" in x]  # fmt: skip
    back = [x for x in stderr.splitlines() if "is reachable again" in x]
    assert len(down) == 2, stderr
    assert len(back) == 1 and where in back[0], stderr
    assert "failure(s) while it was down" in back[0]
    # Nothing else logged a line per failed message.
    others = [x for x in stderr.splitlines() if x.startswith(("ERROR", "WARNING"))]
    assert len(others) == 3, stderr


# -- in process: the outage registry and the driver boundary ---------------------------


def test_one_warning_per_outage_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onethread.session import outage
    from onethread.session.outage import down_stores, store_failed, stores_ok

    monkeypatch.setattr(outage, "_recovered", {})

    stores_ok()  # nothing on record from an earlier test
    caplog.set_level("DEBUG", logger="onethread.store")
    error = StoreUnavailable("Redis at redis://h:1/0", "refused")
    assert store_failed(error, "a turn") is True
    assert store_failed(error, "a turn") is False
    assert down_stores() == ["Redis at redis://h:1/0"]
    stores_ok()
    stores_ok()
    assert store_failed(error) is False  # right after a recovery: the outage's tail
    stores_ok()  # ... and its end is not announced either
    monkeypatch.setattr(outage, "SETTLE", 0.0)
    assert store_failed(error) is True  # a later outage is logged again
    stores_ok()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 4
    assert warnings[0].startswith("Redis at redis://h:1/0 is unreachable: refused (a turn failed)")
    assert "reachable again" in warnings[1] and "2 failure(s)" in warnings[1]
    assert down_stores() == []


def test_a_tail_failure_that_goes_on_is_reported_late(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onethread.session import outage

    monkeypatch.setattr(outage, "_recovered", {"S": 0.0})
    monkeypatch.setattr(outage, "_down", {})
    clock = [5.0]
    monkeypatch.setattr(outage.time, "monotonic", lambda: clock[0])
    caplog.set_level("WARNING", logger="onethread.store")
    error = StoreUnavailable("S", "refused")
    assert outage.store_failed(error) is False  # 5 s after a recovery: quiet
    clock[0] = 5.0 + outage.SETTLE
    assert outage.store_failed(error) is True  # still failing: it is an outage after all
    assert outage.store_failed(error) is False
    outage.stores_ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "is unreachable" in lines[0] and "3 failure(s)" in lines[1]


def test_only_an_unreachable_server_is_an_outage() -> None:
    import psycopg
    import redis

    from onethread.session._conn import postgres as pg
    from onethread.session._conn import redis as rd

    url = "postgresql://me:pw@h/db"
    assert isinstance(pg.store_error(url, psycopg.OperationalError("refused")), StoreUnavailable)
    assert isinstance(pg.store_error(url, psycopg.errors.AdminShutdown()), StoreUnavailable)
    assert not isinstance(pg.store_error(url, psycopg.errors.SyntaxError()), StoreUnavailable)
    assert not isinstance(
        pg.store_error(url, psycopg.errors.SerializationFailure()), StoreUnavailable
    )
    assert "pw" not in str(pg.store_error(url, psycopg.OperationalError("x")))
    rurl = "redis://h:6379/0"
    assert isinstance(rd.store_error(rurl, redis.ConnectionError("down")), StoreUnavailable)
    assert isinstance(rd.store_error(rurl, redis.TimeoutError("slow")), StoreUnavailable)
    assert not isinstance(rd.store_error(rurl, redis.ResponseError("WRONGTYPE")), StoreUnavailable)


# -- a PostgreSQL outage, through a proxy this test cuts --------------------------------


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 to ``target``; :meth:`cut` drops every connection
    and stops listening (the server is "gone"), :meth:`restore` listens again on
    the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass  # the other side went away: closing both is all there is to do
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def restore(self) -> None:
        await self.start()


@pytest.mark.service
async def test_a_postgresql_outage_is_store_unavailable_and_passes() -> None:
    """Through a real cut, every part a turn uses raises StoreUnavailable, and works after."""
    from helpers import RecordingAgent
    from onethread.bots import BotSessionManager
    from onethread.session.history.postgres import PostgresHistoryStore
    from services import postgres_schema, postgres_url

    admin = postgres_url()
    proxy = CuttableProxy(int(admin.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    url = admin.replace(admin.rsplit("@", 1)[1].split("/")[0], f"127.0.0.1:{proxy.port}")
    with postgres_schema() as schema:
        store = PostgresHistoryStore(url, schema=schema, timeout=2.0)
        manager = BotSessionManager(store=store)
        agent = RecordingAgent()
        try:
            await manager.chat(agent, "u1", "before", platform="telegram")
            await proxy.cut()
            with pytest.raises(StoreUnavailable) as info:
                await manager.chat(agent, "u1", "during", platform="telegram")
            assert info.value.store.startswith("PostgreSQL at postgresql://")
            await proxy.restore()
            for _ in range(3):  # the pool replaces the connections the cut broke
                try:
                    await manager.chat(agent, "u1", "after", platform="telegram")
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.5)
            entries = await store.load("bot_telegram_u1")
            assert [e.content for e in entries if e.role == "user"] == ["before", "after"]
        finally:
            await manager.close()
            await proxy.cut()


async def test_the_outbox_serves_again_after_an_outage(private_redis: RedisServer) -> None:
    """Before, the outbox's serve task died with the first Redis error, for good."""
    from helpers import RecordingAgent
    from onethread.bots import Bot, BotOS
    from onethread.session.outbox import OutboxItem
    from onethread.testing import FakeAdapter

    url = f"redis://127.0.0.1:{private_redis.port}/0"
    adapter = FakeAdapter("telegram")
    bot = Bot("telegram", RecordingAgent(), adapter=adapter)
    botos = BotOS(RecordingAgent(), bots=[bot], store=url)
    assert botos.outbox is not None
    serving = asyncio.create_task(botos.start())
    try:
        await botos.wait_ready()
        await botos.outbox.put(OutboxItem(platform="telegram", chat_id="42", text="before"))
        await adapter.wait_sent(1, timeout=15)
        private_redis.kill()
        await asyncio.sleep(1.5)  # the serve loop meets the outage and backs off
        private_redis.start()
        for _ in range(20):  # put itself may meet a connection from before the outage
            try:
                await botos.outbox.put(OutboxItem(platform="telegram", chat_id="42", text="after"))
                break
            except StoreUnavailable:
                await asyncio.sleep(0.25)
        sent = await adapter.wait_sent(2, timeout=20)
        assert [m.text for m in sent] == ["before", "after"]
    finally:
        await botos.stop()
        await asyncio.gather(serving, return_exceptions=True)
