"""``onethread run`` (serve every configured platform) and ``onethread chat`` (the terminal)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CONFIG_NAME, Config, ConfigFileError, Problem
from ..errors import ConfigError, PlatformUnavailable, StoreError
from ..platforms.registry import PLATFORMS
from ..session.reset import ResetPolicy
from .common import (
    build_agent,
    checked_config,
    close_resolver,
    config_from_args,
    describe_model,
    history_url,
    identity_url,
    open_history,
    open_identity,
    redact_url,
    require_stores,
    say,
    service_problems,
    store_problems,
)

__all__ = ["add_parsers", "banner", "cmd_chat", "cmd_run"]


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not from 0 to 65535 (0: any free port)")
    return port


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``run`` and ``chat`` to the subcommand parser ``sub``."""
    run = sub.add_parser(
        "run",
        parents=[common],
        help="serve the agent on the web chat and every configured platform",
        description=(
            "Serve the agent. With no config: the web chat on http://127.0.0.1:8080, plus "
            "every platform whose credentials are in the environment ("
            + "; ".join(
                f"{entry.title}: {entry.credentials_text()}"
                for entry in PLATFORMS.values()
                if entry.credentials or entry.one_of
            )
            + "). Ctrl-C stops cleanly."
        ),
    )
    run.add_argument(
        "--host",
        help="interface of the one HTTP server: web chat, webhooks, /healthz "
        "(default: http.host, else 127.0.0.1)",
    )
    run.add_argument(
        "--port",
        type=_port,
        help="its port (default: http.port, else 8080; 0: any free port)",
    )
    run.add_argument("--check", action="store_true", help="validate the config and exit")
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser(
        "chat",
        parents=[common],
        help="chat with the agent in this terminal",
        description=(
            "Chat with the agent in this terminal: the same agent, history and identity "
            "stores as `onethread run`, with the slash commands (/help). /quit or Ctrl-D "
            "leaves; the conversation is kept for next time."
        ),
    )
    chat.add_argument("--user", "-u", help="who you are (default: your login name)")
    chat.add_argument("--name", help="display name (default: the user)")
    chat.set_defaults(func=cmd_chat)


# -- run ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``onethread run``: serve until SIGINT/SIGTERM, then stop cleanly (exit 0)."""
    web = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    config, platforms, problems = checked_config(args, web)
    if args.check:
        return _check(config, platforms, problems)
    if problems:
        raise ConfigFileError(config.source, problems)
    agent = build_agent(config)  # tool schemas and the model, checked by --check too
    http = config.http_options(web=web)
    if "web" in platforms:
        _check_port(str(http["host"]), int(http["port"]))
    require_stores(config)
    resolver = open_identity(config)
    pairing: Any = None
    try:
        pairing = open_pairing(config)
        botos = _build_botos(config, agent, platforms, resolver, pairing, http)
        model = describe_model(agent, ask_server=True)
        asyncio.run(_serve(botos, lambda: banner(config, agent, botos, model=model)))
    finally:
        if pairing is not None:
            pairing.close()
        close_resolver(resolver)
    return 0


def _check(config: Config, platforms: Mapping[str, Any], problems: list[Problem]) -> int:
    """``run --check``: every mistake, every unreachable store and every platform's
    unreachable daemon (``Adapter.probe_options``) in one listing."""
    if not problems:
        agent = build_agent(config)  # the model and the tool schemas
    stores = store_problems(config, skip=[key for key, _ in problems])
    wrong = {key.split(".")[1] for key, _ in problems if key.startswith("platforms.")}
    services = service_problems(platforms, skip=sorted(wrong))
    if problems:
        raise ConfigFileError(config.source, problems + stores + services)
    if stores or services:
        where = f"{config.source}: " if config.source else ""
        text = "\n".join(f"{where}{key}: {msg}" for key, msg in stores + services)
        raise StoreError(text) if stores else PlatformUnavailable(text)
    where = config.source or "no config file, defaults"
    say(
        f"{where}: OK | platforms: {', '.join(platforms)} | "
        f"model: {describe_model(agent, ask_server=True)} | "
        f"history: {redact_url(history_url(config))} (reachable) | "
        f"identity: {redact_url(identity_url(config))} (reachable)"
    )
    return 0


def open_pairing(config: Config) -> Any:
    """The pairing store ``run`` uses: ``$ONETHREAD_HOME/pairing.db``, capped by the config."""
    from ..session.pairing import PairingStore

    return PairingStore(max_codes=config.access.max_codes)


def _check_port(host: str, port: int) -> None:
    """Fail early, with the fix, when the web chat's port is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host.strip("[]"), port), family=family):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass --port N "
            "(--port 0 picks a free port) or stop the program using it"
        ) from exc


def _policies(config: Config, names: list[str], pairing: Any) -> dict[str, Any]:
    from ..bots.policy import make_policy

    policies = {}
    for name in names:
        mode = config.access.mode(name)
        if mode is None and PLATFORMS[name].forgeable_sender:
            mode = "allowlist"  # a forged sender must not get in by default (email)
        if mode is not None:
            policies[name] = make_policy(
                mode,
                allowlist=config.access.allowlist.get(name, ()),
                owners=config.owner_ids(name),
                store=pairing,
            )
    return policies


def _build_botos(
    config: Config,
    agent: Any,
    platforms: Mapping[str, Mapping[str, Any]],
    resolver: Any,
    pairing: Any,
    http: Mapping[str, Any] | None = None,
) -> Any:
    from ..bots import BotOS
    from ..session.urls import open_coordination

    store = open_history(config)
    try:
        botos = BotOS(
            agent,
            platforms=platforms,
            identity_resolver=resolver,
            store=store,
            coordination=open_coordination(config.history),
            max_history=config.max_history,
            **_session_options(config),
            timezone=config.timezone,
            access=_policies(config, list(platforms), pairing),
            owners=dict(config.owners),
            pairing=pairing,
            http=http if http is not None else config.http_options(),
        )
    except ConfigError as exc:
        if config.source is None:
            raise
        raise ConfigFileError(config.source, [("platforms", str(exc))]) from exc
    return botos


async def _announce_when_ready(botos: Any, text: Callable[[], str]) -> None:
    web = botos.bots.get("web")
    if web is not None:
        await web.ready.wait()
    else:
        waits = [asyncio.ensure_future(bot.ready.wait()) for bot in botos.bots.values()]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
    say(text())


async def _serve(botos: Any, text: Callable[[], str]) -> None:
    from ..bots.bot import run_until_signal

    async def start() -> None:
        announce = asyncio.create_task(_announce_when_ready(botos, text))
        try:
            await botos.start()
        finally:
            announce.cancel()

    await run_until_signal(start, botos.stop)


def _add_hint(config: Config, served: Mapping[str, Any]) -> str:
    for name, entry in PLATFORMS.items():
        if name in served or not (entry.credentials or entry.one_of):
            continue
        exports = " ".join(f"{var}=..." for _, var in entry.credentials)
        if entry.one_of:
            (_, first), *others = entry.one_of
            either = f"{first}=..." + "".join(f" (or {var}=...)" for _, var in others)
            exports = f"{exports} {either}".strip()
        title = entry.title
        if config.platforms is None:
            return f"add {title}: export {exports} and restart"
        where = config.source or DEFAULT_CONFIG_NAME
        return f"add {title}: add {name}: under platforms: in {where} and export {exports}"
    return ""


def banner(config: Config, agent: Any, botos: Any, *, model: str | None = None) -> str:
    """The start-up banner: URL, model, stores, platforms, and how to add a platform.

    ``model`` replaces the model's description (one worked out before the loop runs).
    """
    lines = ["onethread is running"]
    web = botos.bots.get("web")
    if web is not None:
        url = str(getattr(web.adapter, "url", ""))
        if getattr(web.adapter, "access_token", None):
            url += " (add ?token=<your access token> once)"
        lines.append(f"  web chat:  {url}")
    hooks = [name for name, bot in botos.bots.items() if bot.adapter.uses_http and name != "web"]
    ingress = getattr(botos, "ingress", None)
    if hooks and ingress is not None:
        urls = [ingress.webhook_url(name) or ingress.url + f"webhooks/{name}" for name in hooks]
        lines.append(f"  webhooks:  {', '.join(urls)}")
        if ingress.public_url is None:
            lines.append("             (no http.public_url: nothing registered; point the "
                         "platforms at these through your proxy)")  # fmt: skip
    lines.append(f"  model:     {model or describe_model(agent)}")
    lines.append(f"  history:   {redact_url(history_url(config))}")
    lines.append(f"  identity:  {redact_url(identity_url(config))}")
    lines.append(f"  platforms: {', '.join(botos.bots)}")
    hint = _add_hint(config, botos.bots)
    if hint:
        lines.append(f"  {hint}")
    lines.append("  Ctrl-C stops.")
    return "\n".join(lines)


# -- chat --------------------------------------------------------------------------


def _login_name() -> str:
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name here (e.g. a container uid without a passwd entry)
        return "me"
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "me"


@contextlib.contextmanager
def _line_editing(history_file: Path) -> Iterator[None]:
    """Readline editing and a kept input history for ``input()`` on a terminal."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input still works
        yield
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(history_file)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.set_history_length(1000)
            history_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            readline.write_history_file(history_file)


def cmd_chat(args: argparse.Namespace) -> int:
    """``onethread chat``: a REPL on the console platform; returns 0 on /quit, EOF or Ctrl-C."""
    from ..bots import Bot
    from ..platforms.registry import load_adapter_class
    from ..session.urls import onethread_home

    config = config_from_args(args)
    agent = build_agent(config)
    require_stores(config)
    user = args.user or _login_name()
    console = load_adapter_class("console")
    try:
        # greeting="": the banner below is the one greeting.
        adapter = console(user=user, user_name=args.name or user, greeting="")  # type: ignore[call-arg]
    except ValueError as exc:
        raise ConfigError(f"--user: {exc}") from exc
    resolver = open_identity(config)
    try:
        store = open_history(config)
        # The terminal is the operator's own: only an explicit access.platforms.console applies.
        explicit = "console" in config.access.platforms
        policies = _policies(config, ["console"], None) if explicit else {}
        access = {"access": policies["console"]} if policies else {}
        bot = Bot(
            "console",
            agent,
            identity_resolver=resolver,
            store=store,
            max_history=config.max_history,
            **_session_options(config),
            adapter=adapter,
            owners=config.owner_ids("console"),
            **access,
        )
        say(
            f"onethread chat as {user} | model: {describe_model(agent, ask_server=True)} | "
            f"history: {redact_url(history_url(config))} | /help for commands, "
            "/quit or Ctrl-D to leave"
        )
        editing = (
            _line_editing(onethread_home() / "chat_history")
            if sys.stdin.isatty()
            else contextlib.nullcontext()
        )
        with editing:
            asyncio.run(_chat(bot, adapter))
        if sys.stdout.isatty():
            say()  # Ctrl-D or Ctrl-C left the cursor on the prompt line
    finally:
        close_resolver(resolver)
    reader = getattr(adapter, "_thread", None)
    if reader is not None and reader.is_alive():
        # The input thread is still blocked in input(): CPython aborts at shutdown
        # when a daemon thread holds stdin's lock ("could not acquire lock ... at
        # interpreter shutdown"). Everything is stopped and closed: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


async def _chat(bot: Any, adapter: Any) -> None:
    from ..bots.bot import run_until_signal

    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Future[None]] = []

    def request_stop() -> None:
        if not stopping:
            stopping.append(asyncio.ensure_future(bot.stop()))

    def on_eof() -> None:  # may be called from the adapter's reader thread
        loop.call_soon_threadsafe(request_stop)

    adapter.on_eof = on_eof
    await run_until_signal(bot.start, bot.stop)
    if stopping:
        await stopping[0]


def _session_options(config: Config) -> dict[str, Any]:
    """The session manager's long-conversation options from the config file."""
    section = config.session
    return {
        "context_tokens": config.context_tokens,
        "summary_model": config.agent.summary_model,
        "reset": ResetPolicy(section.reset, section.idle_minutes, section.daily_at),
    }
