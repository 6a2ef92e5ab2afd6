"""What every ``onethread`` subcommand shares: the config, the stores, the agent."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ..config import DEFAULT_CONFIG_NAME, Config, ConfigFileError, load_config
from ..errors import ConfigError
from ..session._conn.shared import redact
from ..session.history.base import HistoryStore
from ..session.urls import (
    default_history_url,
    default_identity_url,
    open_history_store,
    open_identity_resolver,
)

__all__ = [
    "build_agent",
    "close_resolver",
    "config_from_args",
    "describe_model",
    "history_url",
    "identity_url",
    "open_history",
    "open_identity",
    "printable",
    "redact_url",
    "say",
    "table",
]


def say(text: str = "", *, file: TextIO | None = None) -> None:
    """Print one line and flush (the banner must reach a pipe at once)."""
    out = file or sys.stdout
    out.write(text + "\n")
    out.flush()


def printable(text: str) -> str:
    """``text`` without terminal control sequences: a remote user's message must not
    drive the operator's terminal (ESC, OSC, cursor moves). Newlines and tabs stay."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns, every value whole: ids are never cut to the terminal's
    width (they are there to be copied), a narrow terminal wraps the line instead."""
    cells = [[" ".join(printable(value).split()) for value in row] for row in rows]
    widths = [max(len(r[i]) for r in [list(headers), *cells]) for i in range(len(headers))]
    lines = [list(headers), *cells]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``--config``, else ``./onethread.yaml`` if present, else defaults."""
    path: str | None = getattr(args, "config", None)
    if path is not None:
        return load_config(path)
    if Path(DEFAULT_CONFIG_NAME).is_file():
        return load_config(DEFAULT_CONFIG_NAME)
    return Config()


def history_url(config: Config) -> str:
    """The history store URL in effect."""
    return config.history or default_history_url()


def identity_url(config: Config) -> str:
    """The identity store URL in effect."""
    return config.identity or default_identity_url()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for printing)."""
    return redact(url)


def _key_error(config: Config, key: str, exc: ConfigError) -> ConfigError:
    if config.source is None:
        return exc
    return ConfigFileError(config.source, [(key, str(exc))])


def open_history(config: Config) -> HistoryStore:
    """Open the configured history store; a bad URL is a ``ConfigError`` naming the key."""
    try:
        store: HistoryStore = open_history_store(config.history)
    except ConfigError as exc:
        raise _key_error(config, "history", exc) from exc
    return store


def open_identity(config: Config) -> Any:
    """Open the configured identity resolver; errors as :func:`open_history`."""
    try:
        return open_identity_resolver(config.identity)
    except ConfigError as exc:
        raise _key_error(config, "identity", exc) from exc


def close_resolver(resolver: Any) -> None:
    """Close ``resolver`` if it has ``close()`` (the SQLite one holds a connection)."""
    close = getattr(resolver, "close", None)
    if callable(close):
        close()


def build_agent(config: Config) -> Any:
    """The agent the config describes; ``ConfigFileError`` for a bad tool or model."""
    from ..agent import Agent
    from ..config_check import tool_functions

    tools = tool_functions(config)
    section = config.agent
    try:
        return Agent(section.name, section.instructions, tools, model=section.model)
    except TypeError as exc:
        raise ConfigFileError(config.source, [("agent.tools", str(exc))]) from exc
    except ConfigError as exc:
        raise ConfigFileError(config.source, [("agent.model", str(exc))]) from exc


def describe_model(agent: Any) -> str:
    """A short description of the agent's model for banners."""
    from ..agent import OfflineModel, OpenAIModel

    model = getattr(agent, "model", None)
    if isinstance(model, OfflineModel):
        return "offline (set ONETHREAD_MODEL and OPENAI_API_KEY for a real one)"
    if isinstance(model, OpenAIModel):
        return f"{model.model} at {redact_url(model.base_url or 'api.openai.com')}"
    return type(model).__name__
