"""Shared fixtures: every test gets its own ONETHREAD_HOME and a clean environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from byo_frameworks import QUIET_ENV

_ENV = (
    "MATRIX_HOMESERVER", "MATRIX_USER_ID", "MATRIX_ACCESS_TOKEN", "MATRIX_PASSWORD",
    "ONETHREAD_HOME", "ONETHREAD_IDENTITY_PATH", "ONETHREAD_MODEL", "OPENAI_API_KEY",
    "OPENAI_BASE_URL", "TELEGRAM_BOT_TOKEN", "TELEGRAM_API_BASE_URL", "DISCORD_BOT_TOKEN",
    "DISCORD_API_BASE_URL", "DISCORD_GATEWAY_URL", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN",
    "SLACK_API_BASE_URL", "SLACK_SIGNING_SECRET", "TELEGRAM_WEBHOOK_SECRET", "WEBHOOK_SECRET",
    "SIGNAL_ACCOUNT", "SIGNAL_CLI_URL", "EMAIL_ADDRESS", "EMAIL_PASSWORD", "EMAIL_IMAP_URL",
    "EMAIL_SMTP_URL", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_PHONE_NUMBER_ID", "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN", "WHATSAPP_API_BASE_URL", "ONETHREAD_WEB_TOKEN", "HTTP_PROXY",
    "HTTPS_PROXY", "ALL_PROXY",
    "http_proxy", "https_proxy", "all_proxy",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No test reads the developer's ~/.onethread or real credentials."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in QUIET_ENV.items():  # no framework traces or telemetry leave the box
        monkeypatch.setenv(name, value)
    home = tmp_path / "onethread-home"
    monkeypatch.setenv("ONETHREAD_HOME", str(home))
    yield home


@pytest.fixture(autouse=True)
def _no_heap_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a bot freezes the start-up heap once per process (bots/heap.py);
    the test process is not a bot's: keep its garbage collector as it is."""
    import onethread.bots.heap as heap

    monkeypatch.setattr(heap, "_done", True)


@pytest.fixture(scope="session", autouse=True)
def _redis_cluster_stopped() -> Iterator[None]:
    """The Redis Cluster some tests start (``services.redis_cluster_url``) dies with the session."""
    yield
    from services import stop_redis_cluster

    stop_redis_cluster()
