"""What every ``onethread`` subcommand shares: the config, the stores, the agent."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..config import DEFAULT_CONFIG_NAME, Config, ConfigFileError, Problem, load_config
from ..errors import ConfigError, MissingDependencyError, StoreError, StoreUnavailable
from ..session._conn.shared import redact
from ..session.history.base import HistoryStore
from ..session.urls import (
    REDIS_SCHEMES,
    default_history_url,
    default_identity_url,
    open_history_store,
    open_identity_resolver,
)

__all__ = [
    "build_agent",
    "checked_config",
    "close_resolver",
    "config_from_args",
    "require_stores",
    "service_problems",
    "store_problems",
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


def checked_config(
    args: argparse.Namespace, web: dict[str, Any] | None = None
) -> tuple[Config, dict[str, dict[str, Any]], list[Problem]]:
    """The config, the platforms it serves, and EVERY mistake in it (none raised).

    A file with mistakes is still checked as far as it goes (its faulty keys
    left out), so one run reports them all. Raises ``ConfigFileError`` only
    when the file cannot be read or parsed at all.
    """
    from ..config_check import config_problems

    try:
        config = config_from_args(args)
        known: list[Problem] = []
    except ConfigFileError as exc:
        if exc.config is None:
            raise
        config, known = exc.config, exc.problems
    platforms, problems = config_problems(config, web=web, known=known)
    return config, platforms, problems


def _stores(config: Config) -> list[tuple[str, str, str]]:
    """``(config key, what it holds, URL)`` of every store ``run`` opens."""
    history = history_url(config)
    scheme = history.partition(":")[0].lower()
    shared = scheme in (*REDIS_SCHEMES, "postgresql", "postgres")
    what = "history store"
    if shared:
        what += " (it also holds the turn locks, duplicate filter and outbox)"
    return [("history", what, history), ("identity", "identity store", identity_url(config))]


def _fix(config: Config, key: str, url: str) -> str:
    where = config.source or DEFAULT_CONFIG_NAME
    if url.partition(":")[0].lower() in ("sqlite", "file"):
        return f"or change {key}: in {where}"
    return f"start it or check the URL (host, port, user, password), or change {key}: in {where}"


def store_problems(config: Config, skip: Sequence[str] = ()) -> list[Problem]:
    """Connect to every configured store (5 s timeout each, all at once); one problem each.

    Stores whose key is in ``skip`` (already reported as wrong) and stores whose
    driver is not installed (reported by the config check) are not tried.
    """
    from ..session.probe import probe_store

    stores = [s for s in _stores(config) if s[0] not in skip]

    async def probe_all() -> list[BaseException | None]:
        async def one(url: str) -> BaseException | None:
            try:
                await probe_store(url)
            except (StoreError, MissingDependencyError) as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(url) for _, _, url in stores)))

    problems: list[Problem] = []
    for (key, what, url), error in zip(stores, asyncio.run(probe_all()), strict=True):
        if isinstance(error, StoreError):
            state = "cannot be reached" if isinstance(error, StoreUnavailable) else "is unusable"
            detail = str(error).rstrip(". ")
            problems.append((key, f"the {what} {state}: {detail}; {_fix(config, key, url)}"))
    return problems


def service_problems(
    platforms: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str] | None = None,
    *,
    skip: Sequence[str] = (),
    timeout: float = 5.0,
) -> list[Problem]:
    """Ask every platform to be served whether the program it connects to answers
    (``Adapter.probe_options``: Signal's signal-cli daemon), all at once, ``timeout``
    seconds each; ``(platforms.NAME.OPTION, message)`` for each that does not.

    Platforms named in ``skip`` (their options were already reported as wrong,
    or their SDK is missing) are not asked.
    """
    from ..platforms.registry import load_adapter_class

    env = os.environ if env is None else env
    asked = [name for name in platforms if name not in skip]

    async def probe_all() -> list[list[tuple[str, str]]]:
        async def one(name: str) -> list[tuple[str, str]]:
            cls = load_adapter_class(name)
            return await cls.probe_options(platforms[name], env, timeout)

        return list(await asyncio.gather(*(one(name) for name in asked)))

    found = asyncio.run(probe_all()) if asked else []
    return [
        (f"platforms.{name}.{option}", message)
        for name, problems in zip(asked, found, strict=True)
        for option, message in problems
    ]


def require_stores(config: Config) -> None:
    """Refuse to start (``StoreError``, one line naming the store and the fix) when a store
    cannot be reached."""
    problems = store_problems(config)
    if problems:
        raise StoreError(problems[0][1])


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


def describe_model(agent: Any, *, ask_server: bool = False) -> str:
    """A short description of the agent's model for banners.

    With ``ask_server``, when ``OPENAI_BASE_URL`` is set but no model is named,
    the server is asked which models it offers (``GET /models``, 5 s at most),
    so the fix can be copied. Not from inside a running event loop.
    """
    from ..agent import OfflineModel, OpenAIModel

    model = getattr(agent, "model", None)
    if isinstance(model, OfflineModel):
        text = f"offline ({model.note})"
        if ask_server and _server_without_model():
            text = f"offline ({model.note}; {_offered_models()})"
        return text
    if isinstance(model, OpenAIModel):
        return f"{model.model} at {redact_url(model.base_url or 'api.openai.com')}"
    return type(model).__name__


def _server_without_model() -> bool:
    return (
        bool(os.environ.get("OPENAI_BASE_URL"))
        and not os.environ.get("ONETHREAD_MODEL", "").strip()
    )


def _offered_models() -> str:
    from ..agent.models_openai import list_models
    from ..errors import ModelError

    try:
        names = asyncio.run(list_models())
    except ModelError as exc:
        return f"could not ask it which models it has: {exc}"
    if not names:
        return "it lists no models"
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"it offers: {shown}"
