"""``onethread history show|export|forget USER`` and ``onethread sessions``.

USER is a person's unified id (``alice``: their sessions on every linked
account) or an unlinked account as ``PLATFORM:ID`` (``telegram:12345``),
exactly as the ``who`` column of ``onethread sessions`` shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..config import Config
from ..errors import ConfigError, OnethreadError
from ..platforms.registry import PLATFORMS
from .common import (
    close_resolver,
    config_from_args,
    history_url,
    open_history,
    open_identity,
    printable,
    redact_url,
    say,
    table,
)

__all__ = ["add_parsers", "who"]

_HISTORY_HELP = """\
Show, export or forget what is stored of a person's conversations.

USER is a person's unified id (alice: their sessions on every linked account)
or an unlinked account as PLATFORM:ID (telegram:12345), exactly as the "who"
column of onethread sessions shows it."""
_USER_HELP = "unified id (alice) or PLATFORM:ID of an unlinked account (telegram:12345)"

T = TypeVar("T")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``history`` and ``sessions`` to the subcommand parser ``sub``."""
    history = sub.add_parser(
        "history",
        parents=[common],
        help="show, export or forget a person's conversation",
        description=_HISTORY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hsub = history.add_subparsers(
        dest="action",
        metavar="ACTION",
        required=True,
        help="one of these; ACTION -h shows its help",
    )
    show = hsub.add_parser(
        "show",
        parents=[common],
        help="print a person's conversation",
        description="Print a person's conversation, oldest first, from every linked account.",
    )
    show.add_argument("user", help=_USER_HELP)
    show.add_argument("--platform", "-p", help="only messages on this platform")
    show.add_argument("--json", action="store_true", help="print JSON entries")
    show.add_argument(
        "--archived",
        action="store_true",
        help="show what /new (or a reset) archived instead of the current conversation",
    )
    show.set_defaults(func=_cmd_show)
    export = hsub.add_parser(
        "export",
        parents=[common],
        help="print everything stored of a person, as JSON",
        description=(
            "Print everything stored of a person as JSON: their linked accounts and every "
            "entry of their conversations, with provenance."
        ),
    )
    export.add_argument("user", help=_USER_HELP)
    export.set_defaults(func=_cmd_export)
    forget = hsub.add_parser(
        "forget",
        parents=[common],
        help="delete a person's conversations (every linked account)",
        description=(
            "Delete a person's conversations on every linked account (asks first). "
            "Identity links are kept: onethread identity unlink removes them."
        ),
    )
    forget.add_argument("user", help=_USER_HELP)
    forget.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    forget.set_defaults(func=_cmd_forget)

    sessions = sub.add_parser(
        "sessions",
        parents=[common],
        help="list recent sessions: who, platforms, last seen",
        description=(
            "List the most recent sessions: who (as USER for onethread history), the "
            "platforms, when the last message was and how many messages it holds."
        ),
    )
    sessions.add_argument("--limit", "-n", type=int, default=50, help="how many (default 50)")
    sessions.add_argument("--json", action="store_true", help="print JSON")
    sessions.set_defaults(func=_cmd_sessions)


def _store_missing(config: Config) -> bool:
    """True when the history is a SQLite file that does not exist (nothing stored yet)."""
    url = history_url(config)
    if not url.lower().startswith("sqlite:///"):
        return False
    return not Path(url[len("sqlite:///") :]).expanduser().exists()


def _with_manager(config: Config, job: Callable[[Any], Awaitable[T]], *, history: bool = True) -> T:
    """Run ``job(manager)`` with a session manager on the configured stores, then close them.

    ``history=False``: an empty in-memory history instead (nothing stored yet,
    and reading must not create the file); the identity store is the real one.
    """
    from ..bots import BotSessionManager

    resolver = open_identity(config)
    try:
        store = open_history(config) if history else "memory://"
        manager = BotSessionManager(store=store, identity_resolver=resolver)

        async def run() -> T:
            try:
                return await job(manager)
            finally:
                await manager.close()

        return asyncio.run(run())
    finally:
        close_resolver(resolver)


def _export(config: Config, user: str) -> dict[str, Any]:
    history = not _store_missing(config)
    result: dict[str, Any] = _with_manager(config, lambda m: m.export(user), history=history)
    return result


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _nothing(user: str) -> str:
    hint = "" if ":" in user else f"; an unlinked account is PLATFORM:ID, e.g. console:{user}"
    return f"no history for {user}{hint} (see: onethread sessions)"


def _cmd_show(args: argparse.Namespace) -> int:
    data = _export(config_from_args(args), args.user)
    entries = [
        (key, entry)
        for key, rows in data["sessions"].items()
        if key.endswith("#archived") == bool(args.archived)
        for entry in rows
        if not args.platform or entry.get("platform") == args.platform
    ]
    entries.sort(key=lambda item: float(item[1]["timestamp"]))
    if args.json:
        say(json.dumps([dict(entry, session=key) for key, entry in entries], indent=2))
        return 0
    if not entries:
        if args.archived:
            say(f"nothing archived for {args.user}")
        else:
            say(_nothing(args.user) if not data["sessions"] else f"no messages on {args.platform}")
        return 0
    for _key, entry in entries:
        if entry["role"] == "summary":  # folded earlier entries, written by the model
            folded = (entry.get("metadata") or {}).get("folded") or [0, 0, 0]
            speaker = f"[SUMMARY of {folded[2]} more entries]"
        elif entry["role"] == "user":
            speaker = entry.get("user_name") or entry.get("user_id") or "user"
        else:
            speaker = "assistant"
            if entry.get("mirror"):
                speaker += f" ({entry.get('source') or 'mirror'})"
        metadata = entry.get("metadata") or {}
        if metadata.get("delivery") == "failed":  # kept, but the person never got it
            speaker += f" [NOT DELIVERED: {metadata.get('delivery_error') or 'error'}]"
        elif metadata.get("delivery") == "cut":  # too long: only the first part was sent
            speaker += " [SENT CUT SHORT]"
        where = entry.get("platform") or "-"
        line = f"{_when(float(entry['timestamp']))}  {where:<8}  {speaker}: {entry['content']}"
        say(printable(line))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    data = _export(config_from_args(args), args.user)
    if not data["sessions"]:
        sys.stderr.write(f"note: {_nothing(args.user)}\n")
    say(json.dumps(data, indent=2))
    return 0


def _confirm(question: str) -> bool:
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        sys.stdout.write("\n")  # EOF: end the prompt line
    return answer.strip().lower() in ("y", "yes")


def _cmd_forget(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    data = _export(config, args.user)
    sessions: dict[str, list[Any]] = data["sessions"]
    if not sessions:
        say(_nothing(args.user))
        return 0
    count = sum(len(rows) for rows in sessions.values())
    keys = ", ".join(sessions)
    question = (
        f"Delete {count} message(s) of {args.user} in {len(sessions)} session(s) ({keys})? "
        "This cannot be undone."
    )
    if not args.yes and not _confirm(question):
        raise OnethreadError("not confirmed; nothing was deleted (--yes skips the question)")
    removed = _with_manager(config, lambda m: m.forget(args.user))
    say(f"forgot {removed} message(s) of {args.user}; identity links were kept")
    return 0


def who(key: str) -> str:
    """Who a session key belongs to, as USER for ``history``: ``alice``, ``telegram:12345``.

    Group sessions read ``telegram chat -100123`` (they belong to the chat).
    """
    if key.startswith("user:"):
        return key[len("user:") :]
    if key.startswith("bot_"):
        rest = key[len("bot_") :]
        for name in sorted(PLATFORMS, key=len, reverse=True):
            if rest.startswith(f"{name}_"):
                return f"{name}:{rest[len(name) + 1 :]}"
        platform, _, user = rest.partition("_")
        return f"{platform}:{user}"
    if key.startswith("chat:"):
        platform, _, chat = key[len("chat:") :].partition(":")
        chat, _, thread = chat.partition(":thread:")
        return f"{platform} chat {chat}" + (f" thread {thread}" if thread else "")
    return key


def _cmd_sessions(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit must be 1 or more")
    config = config_from_args(args)
    if _store_missing(config):
        rows: list[Any] = []
    else:
        rows = _with_manager(config, lambda m: m.store.sessions(args.limit))
        # Summaries ("{key}#summary") and archives ("{key}#archived") belong to their session.
        rows = [r for r in rows if "#" not in r.key]
    if args.json:
        out = [
            {
                "who": who(r.key),
                "key": r.key,
                "platforms": list(r.platforms),
                "last_seen": r.last_timestamp,
                "messages": r.count,
            }
            for r in rows
        ]
        say(json.dumps(out, indent=2))
        return 0
    if not rows:
        say(f"no sessions yet (history: {redact_url(history_url(config))})")
        return 0
    cells = [
        (who(r.key), ", ".join(r.platforms) or "-", _when(r.last_timestamp), str(r.count))
        for r in rows
    ]
    say(table(("who", "platforms", "last seen", "messages"), cells))
    return 0
