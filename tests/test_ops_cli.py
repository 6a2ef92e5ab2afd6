"""``onethread run`` serves /readyz and /metrics, and ``--log-format json`` writes the
per-turn line as one JSON object per line (the same fields as the text line)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from onethread.cli.main import _setup_logging
from onethread.logs import TURN_FIELDS, TURN_LOGGER
from test_cli import _read_banner, readme_run_command

pytestmark = pytest.mark.multiprocess


async def test_run_with_json_logs_serves_readyz_and_metrics(tmp_path: Path) -> None:
    *prefix, run = readme_run_command()  # [onethread] or [python, -m, onethread], then "run"
    proc = subprocess.Popen(
        [*prefix, "--log-format", "json", run, "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = _read_banner(proc, 20)
        match = re.search(r"web chat:\s+(http://127\.0\.0\.1:\d+/)", banner)
        assert match, banner
        url = match.group(1)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url + "ws?user=alice&name=Alice") as ws:
                await ws.send_json({"type": "message", "id": "m1", "text": "hello json"})
                while True:
                    frame = await ws.receive_json(timeout=10)
                    if frame.get("type") == "message" and frame.get("role") == "assistant":
                        break
            async with http.get(url + "readyz") as resp:
                assert resp.status == 200
                body = await resp.json()
            # The turn is counted once stored, a moment after its reply went out.
            turns: dict[tuple[tuple[str, str], ...], float] = {}
            async with asyncio.timeout(10):
                while not turns:
                    async with http.get(url + "metrics") as resp:
                        assert resp.status == 200
                        metrics = await resp.text()
                    turns = {
                        tuple(sorted(s.labels.items())): s.value
                        for family in text_string_to_metric_families(metrics)
                        for s in family.samples
                        if s.name == "onethread_turns_total"
                    }
                    await asyncio.sleep(0 if turns else 0.05)
        assert body["platforms"] == {"web": {"ok": True, "state": "connected"}}
        assert set(body["stores"]) == {"history", "identity", "pairing"}
        assert turns == {(("outcome", "ok"), ("platform", "web")): 1.0}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        lines = [line for line in proc.stderr.read().splitlines() if line.strip()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    turn_lines = [r for r in records if r["logger"] == TURN_LOGGER]
    assert len(turn_lines) == 1, records
    turn = turn_lines[0]
    assert turn["level"] == "INFO" and turn["platform"] == "web" and turn["outcome"] == "ok"
    assert turn["chars_in"] == len("hello json") and set(TURN_FIELDS) <= set(turn)
    assert "alice" not in json.dumps(turn) and "hello" not in json.dumps(turn)


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    turns, audit = logging.getLogger(TURN_LOGGER), logging.getLogger("onethread.audit")
    saved = (root.level, list(root.handlers), turns.level, audit.level)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    turns.setLevel(saved[2])
    audit.setLevel(saved[3])


@pytest.mark.usefixtures("_restore_logging")
def test_run_shows_the_turn_line_at_the_default_level() -> None:
    logging.getLogger().handlers.clear()
    _setup_logging(0, "text", serving=True)
    assert logging.getLogger(TURN_LOGGER).isEnabledFor(logging.INFO)
    assert logging.getLogger("onethread.audit").isEnabledFor(logging.INFO)
    assert not logging.getLogger("onethread.bot").isEnabledFor(logging.INFO)


def test_json_lines_stay_one_line_with_a_traceback() -> None:
    from onethread.logs import JsonFormatter

    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "onethread.bot", logging.ERROR, __file__, 1, "turn %s failed", ("m1",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "turn m1 failed" and data["level"] == "ERROR"
    assert "RuntimeError: boom" in data["exc"]
    assert "platform" not in data  # only the per-turn line carries the turn fields


def test_the_readme_examples_of_operating_match_what_is_served() -> None:
    """The README's scrape config and /readyz body are what the code serves."""
    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Operating onethread", 1)[1].split("\n## ", 1)[0]
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", section, re.S))
    scrape = yaml.safe_load(blocks["yaml"])["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics"
    body = json.loads(blocks["json"])
    assert set(body) == {"ready", "stores", "platforms"}
    for store in body["stores"].values():
        assert set(store) <= {"ok", "kind", "error"} and "kind" in store
    for platform in body["platforms"].values():
        assert platform["state"] in ("connected", "connecting", "failed")
