"""The ``onethread`` command: run the bots, chat in the terminal, manage identity and history.

``main(argv)`` returns the exit code: 0 on success (and after Ctrl-C stops a
server cleanly), 2 for a user mistake (bad config, bad arguments), 1 for a
runtime failure. A user mistake prints ``error: ...`` naming the fix, never a
traceback; ``--debug`` shows one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_CONFIG_NAME
from ..errors import ConfigError, OnethreadError
from ..platforms.registry import PLATFORMS

__all__ = ["STARTER_CONFIG", "build_parser", "main", "starter_config"]

_STARTER_TEMPLATE = """\
# onethread: one AI agent on every messaging platform, one conversation per person.
# Check this file:  onethread run --check      Start:  onethread run
# ${VAR} is replaced by the environment variable VAR; ${VAR:-fallback} gives a default.

agent:
  name: assistant
  instructions: You are a helpful assistant. Answer briefly and kindly.
  # A model name on an OpenAI-compatible endpoint (set OPENAI_API_KEY, or
  # OPENAI_BASE_URL for a local server). null: $ONETHREAD_MODEL if set, else an
  # offline model that says plainly that no model is configured.
  model: null
  # Tools are plain Python functions, given as module:function import paths.
  # The folder of this file and the working directory are searched.
  tools: []
  #  - mytools:whoami

# The one HTTP server: the web chat, /healthz, /readyz, /metrics, /admin and
# /webhooks/<platform>. public_url is where platforms reach it; webhook
# platforms register public_url/webhooks/<platform> (none without it).
# http:
#   host: 127.0.0.1
#   port: 8080
#   public_url: https://bot.example.com

# The platforms to serve: exactly the ones listed here.
platforms:
{platform_lines}

# Where identity links and conversation history live. The defaults are under
# $ONETHREAD_HOME (default ~/.onethread). Accepted forms: memory://,
# file:PATH (identity only), sqlite:///PATH, redis://HOST:PORT/DB,
# redis+cluster://HOST:PORT,HOST:PORT/ (Redis Cluster), postgresql://USER@HOST:PORT/DB
# identity: file:~/.onethread/identity.json
# history: sqlite:///~/.onethread/history.db

# Who may talk to the bot: open (anyone), allowlist (the ids below and the
# owners), or approval (unknown senders get a code; approve it with
# `onethread access approve PLATFORM CODE`). Unset: web and the terminal are
# open; those marked "allowlist by default" above use allowlist; other
# platforms use approval when they have an owner, else open.
access:
  # default: approval
  platforms: {}
  #   telegram: allowlist
  allowlist: {}
  #   telegram: ["12345"]

# Your own account ids, per platform (always allowed).
owners: {}
#   telegram: "12345"

# How many earlier messages the model sees on each turn.
max_history: 100
"""


def _platform_lines() -> str:
    lines: list[str] = []
    for entry in sorted(PLATFORMS.values(), key=lambda e: not e.local):  # web chat first
        prefix = "  " if entry.local else "  # "
        lines.extend(prefix + line for line in entry.init_lines)
    return "\n".join(lines)


def starter_config() -> str:
    """The commented ``onethread.yaml`` that ``onethread init`` writes."""
    return _STARTER_TEMPLATE.replace("{platform_lines}", _platform_lines())


STARTER_CONFIG = starter_config()


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help=f"the YAML config file (default: ./{DEFAULT_CONFIG_NAME} if it exists)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (handlers are in ``func``)."""
    from . import history as cli_history
    from . import identity as cli_identity
    from . import jobs as cli_jobs
    from . import redis_move as cli_redis_move
    from . import run as cli_run

    common = _common()
    parser = argparse.ArgumentParser(
        prog="onethread",
        description="One AI agent on every messaging platform, one conversation per person.",
        epilog="Start with: onethread run   (then open the web chat it prints)",
    )
    parser.add_argument("--version", action="version", version=f"onethread {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", "-v", action="count", default=0, help="log more (-vv: debug)")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per log line, for log shippers (default text)",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        help="one of these; COMMAND -h shows its help",
    )
    cli_run.add_parsers(sub, common)

    init = sub.add_parser(
        "init",
        help="write a commented starter config",
        description="Write a commented starter config file.",
    )
    init.add_argument("path", nargs="?", default=DEFAULT_CONFIG_NAME, help="where to write it")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    init.set_defaults(func=_cmd_init)

    cli_identity.add_parsers(sub, common)
    cli_history.add_parsers(sub, common)
    cli_jobs.add_parsers(sub, common)
    cli_redis_move.add_parsers(sub, common)
    return parser


def _cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists; pass --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(starter_config(), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    flag = "" if str(path) == DEFAULT_CONFIG_NAME else f" --config {path}"
    print(f"wrote {path}; check it with: onethread run --check{flag}; start: onethread run{flag}")
    return 0


# SDK loggers that put credentials or message contents in their lines (httpx logs
# Telegram request URLs, which contain the bot token; PTB and slack_sdk log call
# parameters, which contain /link codes). They stay at WARNING whatever -v says.
_CHATTY_SDK_LOGGERS = ("httpx", "httpcore")  # plus each PlatformSpec.loggers


def _setup_logging(verbosity: int, log_format: str = "text", *, serving: bool = False) -> None:
    """Log to stderr: WARNING and up (``-v`` INFO, ``-vv`` DEBUG), as text or JSON lines.

    ``serving`` (``onethread run``): the per-turn line (``onethread.turns``) and
    the admin page's audit lines (``onethread.audit``), both INFO, are shown at
    the default level too: an operator wants one line per turn and every action.
    """
    from ..logs import TURN_LOGGER, JsonFormatter

    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    chatty = _CHATTY_SDK_LOGGERS + tuple(
        logger for entry in PLATFORMS.values() for logger in entry.loggers
    )
    for name in chatty:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    if serving:
        for name in (TURN_LOGGER, "onethread.audit"):
            logging.getLogger(name).setLevel(min(level, logging.INFO))


def _error(message: str) -> None:
    for line in message.splitlines() or [""]:
        sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``onethread`` command line; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return exc.code if isinstance(exc.code, int) else 2
    debug = bool(getattr(args, "debug", False))
    _setup_logging(args.verbose, args.log_format, serving=args.command == "run")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return 2
    except OnethreadError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`onethread history export alice | head`): not our error.
        # Point stdout at devnull so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        if debug:
            traceback.print_exc()
        _error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
