"""``onethread run`` with an ``http:`` section: the web chat, ``/healthz`` and a webhook
platform on ONE port, started from a config file as a user would."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from test_cli import _read_banner, readme_run_command

SECRET = "cli-webhook-secret-42"

CONFIG = """\
http:
  host: 127.0.0.1
  public_url: https://bot.example.com/base
platforms:
  web: {}
  webhook:
    secret: ${WEBHOOK_SECRET}
"""


async def test_run_serves_web_chat_healthz_and_webhooks_on_one_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    (tmp_path / "onethread.yaml").write_text(CONFIG)
    proc = subprocess.Popen(
        [*readme_run_command(), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = _read_banner(proc, 20)
        match = re.search(r"web chat:\s+(http://127\.0\.0\.1:(\d+)/)", banner)
        assert match and match.group(2) != "0", banner
        url = match.group(1)
        assert "webhooks:  https://bot.example.com/base/webhooks/webhook" in banner
        body = json.dumps({"user_id": "ops", "text": "ping"}).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "healthz") as resp:
                assert (resp.status, await resp.text()) == (200, "ok")
            async with http.get(url) as resp:
                assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            headers = {"X-Onethread-Signature": sig, "Content-Type": "application/json"}
            async with http.post(url + "webhooks/webhook", data=body, headers=headers) as resp:
                assert resp.status == 200
                answer = await resp.json()
            async with http.post(url + "webhooks/webhook", data=body) as resp:
                assert resp.status == 401
        assert answer["ok"] and "ping" in answer["reply"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_init_template_http_and_webhook_lines_pass_check(tmp_path: Path) -> None:
    """Uncommenting the template's http: section and webhook platform gives a valid file."""
    from onethread.cli.main import starter_config
    from test_cli import cli

    lines = []
    in_http = in_webhook = False
    for line in starter_config().splitlines():
        if line == "# http:":
            in_http = True
        elif in_http and not line.startswith("#   "):
            in_http = False
        if line.startswith("  # webhook:"):
            in_webhook = True
        elif in_webhook and not line.startswith("  #   "):
            in_webhook = False
        if in_http:
            line = line[2:]
        elif in_webhook and not line.startswith("  #   #"):
            line = "  " + line[4:]
        lines.append(line)
    text = "\n".join(lines) + "\n"
    assert "\nhttp:\n  host: 127.0.0.1\n" in text and "\n  webhook:" in text
    (tmp_path / "onethread.yaml").write_text(text)
    check = cli(tmp_path, "run", "--check", env={"WEBHOOK_SECRET": SECRET})
    assert check.returncode == 0, check.stderr
    assert "OK | platforms: web, webhook" in check.stdout
