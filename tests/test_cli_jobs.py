"""``onethread jobs list|add|cancel`` as a user runs it, and a running bot picking up
a job the CLI added from another process."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from onethread._fake_adapter import FakeAdapter
from onethread.bots import BotOS
from onethread.bots.bot import Bot
from test_cli import assert_user_error, cli

pytestmark = pytest.mark.multiprocess


def test_add_list_cancel(tmp_path: Path, _isolated_env: Path) -> None:
    (tmp_path / "onethread.yaml").write_text("timezone: Asia/Kolkata\n")
    added = cli(tmp_path, "jobs", "add", "telegram:42", "stand up", "--at", "in 10 minutes")
    assert added.returncode == 0, added.stderr
    assert "scheduled" in added.stdout and "once" in added.stdout
    daily = cli(tmp_path, "jobs", "add", "alice", "good morning", "--cron", "0 9 * * *",
                "--prompt")  # fmt: skip
    assert daily.returncode == 0, daily.stderr
    assert "09:00 IST" in daily.stdout  # the config's zone: alice set none
    listed = cli(tmp_path, "jobs", "list", "--json")
    jobs = json.loads(listed.stdout)
    assert {(j["unified_user_id"], j["text"], j["prompt"]) for j in jobs} == {
        ("telegram:42", "stand up", False),
        ("alice", "good morning", True),
    }
    mine = cli(tmp_path, "jobs", "list", "alice")
    assert "good morning" in mine.stdout and "stand up" not in mine.stdout
    job_id = next(j["id"] for j in jobs if j["unified_user_id"] == "alice")
    assert cli(tmp_path, "jobs", "cancel", job_id).returncode == 0
    assert [j["text"] for j in json.loads(cli(tmp_path, "jobs", "list", "--json").stdout)] == [
        "stand up"
    ]
    everything = json.loads(cli(tmp_path, "jobs", "list", "--all", "--json").stdout)
    assert {j["status"] for j in everything} == {"active", "cancelled"}


def test_mistakes_are_clear(tmp_path: Path) -> None:
    assert_user_error(cli(tmp_path, "jobs", "add", "alice", "x", "--every", "10s"),
                      "at least 1 minute")  # fmt: skip
    assert_user_error(cli(tmp_path, "jobs", "add", "alice", "x", "--at", "whenever"),
                      "tomorrow at 9")  # fmt: skip
    assert_user_error(cli(tmp_path, "jobs", "add", "alice", "x", "--cron", "9am"), "five fields")
    missing = cli(tmp_path, "jobs", "cancel", "nope")
    assert missing.returncode == 1 and "no active job 'nope'" in missing.stderr
    both = cli(tmp_path, "jobs", "add", "alice", "x", "--at", "in 1 hour", "--every", "1h")
    assert both.returncode == 2 and "not allowed with" in both.stderr


async def test_a_running_bot_fires_a_job_the_cli_added(tmp_path: Path, _isolated_env: Path) -> None:
    tg = FakeAdapter("telegram")
    botos = BotOS(bots=[Bot("telegram", adapter=tg)], store=f"sqlite:///{_isolated_env}/history.db")
    task = asyncio.create_task(botos.start())
    try:
        await botos.wait_ready()
        await tg.inject("hi", user="42")
        await tg.wait_sent(1)
        await botos.schedule("telegram:42", "warm-up", at=timedelta(hours=1))  # the file exists
        added = await asyncio.to_thread(
            cli, tmp_path, "jobs", "add", "telegram:42", "from the shell", "--at", "in 1 second"
        )
        assert added.returncode == 0, added.stderr
        await tg.wait_sent(2, timeout=15)  # noticed through SQLite's data_version
        assert tg.sent[-1].text == "from the shell"
    finally:
        await botos.stop()
        await task


def test_config_timezone_must_be_a_known_zone(tmp_path: Path) -> None:
    (tmp_path / "onethread.yaml").write_text("timezone: Mars/Olympus\n")
    result = cli(tmp_path, "jobs", "list")
    assert_user_error(result, "timezone", "IANA")
