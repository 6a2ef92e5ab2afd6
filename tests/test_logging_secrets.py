"""With -vv the log shows no bot token and no /link code (SDK loggers stay at WARNING)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fake_telegram import FakeTelegram
from onethread import Agent
from onethread.bots import BotOS
from onethread.cli.main import _setup_logging
from onethread.session import InMemoryIdentityResolver
from onethread.session.pairing import PairingStore


async def test_verbose_logging_leaks_neither_token_nor_code(
    caplog: pytest.LogCaptureFixture, tmp_path: object
) -> None:
    saved = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "telegram")}
    _setup_logging(2)
    caplog.set_level(logging.DEBUG)
    try:
        async with FakeTelegram() as tg:
            botos = BotOS(
                Agent(name="a"),
                platforms={"telegram": {"token": tg.token, "base_url": tg.base_url}},
                identity_resolver=InMemoryIdentityResolver(),
                store="memory://",
                pairing=PairingStore(":memory:"),
            )
            task = asyncio.create_task(botos.start())
            await botos.wait_ready(15)
            tg.inject_message(1, "/link")
            [reply] = await tg.wait_for_messages(1, timeout=15)
            await botos.stop()
            await task
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    code = reply.text.split("/link ")[1].split()[0]
    assert tg.token.split(":")[-1] not in caplog.text
    assert code not in caplog.text
    assert "onethread" in caplog.text  # our own debug lines were captured
