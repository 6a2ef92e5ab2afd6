"""Everything about a platform lives in its ``PlatformSpec`` (issue 11, point 20).

A platform added as one registry entry (here a throwaway ``pager`` platform
whose adapter is defined in this file) is picked up by the config, ``--check``,
``onethread init``, the quiet SDK loggers, the access policy and the log
masking, with no other file edited. A scan of the source keeps every other
module from naming a platform.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import onethread
from onethread.bots.policy import OpenPolicy, default_policy
from onethread.config import ConfigFileError, parse_config
from onethread.config_check import check_config
from onethread.platforms import registry
from onethread.platforms.base import Adapter, OnInbound
from onethread.session._conn.shared import declare_secret_ids, who

SRC = Path(onethread.__file__).parent


class PagerAdapter(Adapter):
    """A platform that exists only in this test."""

    name = "pager"

    def __init__(self, *, token: str | None = None, pin: str = "") -> None:
        super().__init__()
        self.token = token

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        pin = str(options.get("pin", ""))
        return [] if pin.isdigit() or not pin else [("pin", f"must be digits, got {pin!r}")]

    async def start(self, on_inbound: OnInbound) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        return ""


@pytest.fixture
def pager(monkeypatch: pytest.MonkeyPatch) -> registry.PlatformSpec:
    entry = registry.PlatformSpec(
        __name__,
        "PagerAdapter",
        None,
        title="Pager",
        credentials=(("token", "PAGER_TOKEN"),),
        loggers=("pager_sdk",),
        init_lines=("pager:", "  token: ${PAGER_TOKEN}"),
    )
    monkeypatch.setitem(registry.PLATFORMS, "pager", entry)
    return entry


def test_config_serves_a_new_platform_when_its_credentials_are_set(pager: Any) -> None:
    config = parse_config("{}", "test")
    assert "pager" not in config.platform_options({})
    assert "pager" in config.platform_options({"PAGER_TOKEN": "t"})


def test_one_of_credentials_serve_the_platform_with_either(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = registry.PlatformSpec(
        __name__, "PagerAdapter", None, title="Pager",
        credentials=(("token", "PAGER_TOKEN"),),
        one_of=(("pin", "PAGER_PIN"), ("code", "PAGER_CODE")),
    )  # fmt: skip
    monkeypatch.setitem(registry.PLATFORMS, "pager", entry)
    assert entry.credentials_text() == "PAGER_TOKEN + (PAGER_PIN or PAGER_CODE)"
    assert entry.variables() == ("PAGER_TOKEN", "PAGER_PIN", "PAGER_CODE")
    assert entry.missing_from({"PAGER_TOKEN": "t"}) == ["PAGER_PIN or PAGER_CODE"]
    assert entry.missing_from({"PAGER_CODE": "c"}) == ["PAGER_TOKEN"]
    config = parse_config("{}", "test")
    assert "pager" not in config.platform_options({"PAGER_TOKEN": "t"})
    assert "pager" in config.platform_options({"PAGER_TOKEN": "t", "PAGER_CODE": "c"})
    assert registry.credentials()["pager"] == {
        "token": "PAGER_TOKEN", "pin": "PAGER_PIN", "code": "PAGER_CODE"
    }  # fmt: skip


def test_check_names_the_new_platforms_missing_credential_and_bad_option(pager: Any) -> None:
    config = parse_config("platforms: {pager: {pin: 12a}}", "test.yaml")
    with pytest.raises(ConfigFileError) as info:
        check_config(config, {})
    text = str(info.value)
    assert "platforms.pager.token" in text and "PAGER_TOKEN" in text
    assert "platforms.pager.pin" in text and "must be digits" in text


def test_init_template_and_quiet_loggers_come_from_the_spec(pager: Any) -> None:
    import importlib

    cli_main = importlib.import_module("onethread.cli.main")
    text = cli_main.starter_config()
    try:
        assert "  # pager:\n  #   token: ${PAGER_TOKEN}" in text
        assert text.index("  web:") < text.index("pager")
        cli_main._setup_logging(2)
        assert logging.getLogger("pager_sdk").level == logging.WARNING
    finally:
        logging.getLogger("pager_sdk").setLevel(logging.NOTSET)


def test_local_platforms_are_open_and_secret_ids_masked(
    pager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(default_policy("web"), OpenPolicy)
    assert who("web", "browser-secret") != "web:browser-secret"
    assert who("pager", "42") == "pager:42"
    monkeypatch.setattr("onethread.session._conn.shared._SECRET_IDS", frozenset())
    declare_secret_ids(["pager"])
    assert "42" not in who("pager", "42")


def _platform_literals(path: Path) -> list[tuple[int, str]]:
    names = set(registry.PLATFORMS)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in names:
                found.append((node.lineno, node.value))
    return found


def test_no_other_module_names_a_platform() -> None:
    """Only the registry and each platform's own modules (``platforms/<name>.py`` and
    its helpers ``platforms/<name>_*.py``) name platforms.

    Allowed, because those commands ARE those platforms: ``onethread chat`` is
    the ``console`` platform, and ``--host``/``--port`` are the built-in web
    chat's (in the config model and in ``run``).
    """
    allowed = {
        "platforms/registry.py": set(registry.PLATFORMS),
        "cli/run.py": {"web", "console"},
        "config.py": {"web"},
        "platforms/telegram.py": {"webhook"},  # Telegram's mode: webhook, not the platform
    }
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        # A platform's module and its helpers (web_protocol.py, slack_http.py) name it.
        own = Path(rel).stem.split("_")[0] if rel.startswith("platforms/") else None
        for line, name in _platform_literals(path):
            if name == own or name in allowed.get(rel, set()):
                continue
            offenders.append(f"{rel}:{line} names {name!r}")
    assert offenders == []
