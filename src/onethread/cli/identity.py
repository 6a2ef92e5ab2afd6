"""``onethread identity ...`` (account links) and ``onethread access ...`` (approvals).

Every command works on the configured identity store (the config's
``identity:`` URL, default ``$ONETHREAD_HOME/identity.json``), so a running
``onethread run`` sees the change on its next message.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import did_you_mean
from ..errors import ConfigError, OnethreadError
from ..platforms.registry import PLATFORMS
from .common import close_resolver, config_from_args, open_identity, redact_url, say, table

__all__ = ["add_parsers", "known_platform", "parse_links"]


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``identity`` and ``access`` to the subcommand parser ``sub``."""
    identity = sub.add_parser(
        "identity",
        parents=[common],
        help="link accounts on different platforms to one person",
        description="Manage identity links: which platform accounts are one person.",
    )
    isub = identity.add_subparsers(
        dest="action",
        metavar="ACTION",
        required=True,
        help="one of these; ACTION -h shows its help",
    )
    link = isub.add_parser(
        "link",
        parents=[common],
        help="link PLATFORM account ID to person UNIFIED",
        description=(
            "Link an account to a person: their messages from it share the person's one "
            "conversation. A running onethread run sees the link on its next message."
        ),
    )
    link.add_argument("platform", help="e.g. telegram")
    link.add_argument("id", help="the account's id on that platform, e.g. 12345")
    link.add_argument("unified", help="the person's unified id, e.g. alice (no ':')")
    link.set_defaults(func=_cmd_link)
    unlink = isub.add_parser(
        "unlink",
        parents=[common],
        help="remove an account's link",
        description="Remove an account's link: its next messages start a separate conversation.",
    )
    unlink.add_argument("platform", help="e.g. telegram")
    unlink.add_argument("id", help="the account's id on that platform, e.g. 12345")
    unlink.set_defaults(func=_cmd_unlink)
    listing = isub.add_parser(
        "list",
        parents=[common],
        help="show links (of one person)",
        description="Show every link, or one person's accounts; ids are printed whole.",
    )
    listing.add_argument("unified", nargs="?", help="only this person's accounts")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_cmd_list)
    imp = isub.add_parser(
        "import",
        parents=[common],
        help="import links from an identity.json (PraisonAI's format too)",
        description=(
            "Import links from an identity.json file (onethread's or PraisonAI's format). "
            "Accounts already linked to someone else are skipped unless --replace is given."
        ),
    )
    imp.add_argument("path", help='a JSON file: {"links": {"telegram::12345": "alice"}}')
    imp.add_argument(
        "--replace", action="store_true", help="move accounts already linked to someone else"
    )
    imp.set_defaults(func=_cmd_import)

    access = sub.add_parser(
        "access",
        parents=[common],
        help="approve senders (access policy 'approval')",
        description="Approve or revoke senders for the 'approval' access policy.",
    )
    asub = access.add_subparsers(
        dest="action",
        metavar="ACTION",
        required=True,
        help="one of these; ACTION -h shows its help",
    )
    approve = asub.add_parser(
        "approve",
        parents=[common],
        help="approve the sender who was given CODE",
        description="Approve the sender the bot gave CODE: their next message is answered.",
    )
    approve.add_argument("platform", help="where the sender wrote, e.g. telegram")
    approve.add_argument("code", help="the code the bot gave the sender (dashes optional)")
    approve.set_defaults(func=_cmd_approve)
    revoke = asub.add_parser(
        "revoke",
        parents=[common],
        help="withdraw a sender's approval",
        description=(
            "Withdraw a sender's approval. A running onethread run that has served them "
            "keeps doing so until it restarts."
        ),
    )
    revoke.add_argument("platform", help="e.g. telegram")
    revoke.add_argument("id", help="the sender's account id on that platform")
    revoke.set_defaults(func=_cmd_revoke)
    approved = asub.add_parser(
        "list",
        parents=[common],
        help="show approved senders",
        description="Show the approved senders, as PLATFORM:ID.",
    )
    approved.add_argument("platform", nargs="?", help="only this platform's senders")
    approved.set_defaults(func=_cmd_approved)


def known_platform(name: str) -> str:
    """``name`` if it is a registered platform, else ``ConfigError`` with a did-you-mean."""
    if name not in PLATFORMS:
        raise ConfigError(f"unknown platform {name!r}; {did_you_mean(name, PLATFORMS)}")
    return name


@contextmanager
def _resolver(args: argparse.Namespace, *needs: str) -> Iterator[Any]:
    config = config_from_args(args)
    resolver = open_identity(config)
    try:
        for method in needs:
            if not callable(getattr(resolver, method, None)):
                raise ConfigError(
                    f"the identity store {redact_url(config.identity or '')!r} has no "
                    f"{method}(); use a built-in store (file:, sqlite:, redis:, postgresql:)"
                )
        yield resolver
    finally:
        close_resolver(resolver)


def _user_value_error(exc: ValueError) -> ConfigError:
    return ConfigError(str(exc))


def _cmd_link(args: argparse.Namespace) -> int:
    platform = known_platform(args.platform)
    with _resolver(args) as resolver:
        before = resolver.resolve(platform, args.id)
        try:
            resolver.link(platform, args.id, args.unified)
        except ValueError as exc:
            raise _user_value_error(exc) from exc
    moved = "" if before in (args.unified, f"{platform}:{args.id}") else f" (was {before})"
    say(f"linked {platform}:{args.id} -> {args.unified}{moved}")
    return 0


def _cmd_unlink(args: argparse.Namespace) -> int:
    platform = known_platform(args.platform)
    with _resolver(args, "unlink") as resolver:
        before = resolver.resolve(platform, args.id)
        if not resolver.unlink(platform, args.id):
            raise OnethreadError(f"{platform}:{args.id} is not linked; nothing to do")
    say(f"unlinked {platform}:{args.id} (was {before})")
    return 0


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _cmd_list(args: argparse.Namespace) -> int:
    with _resolver(args, "all_links", "links_for") as resolver:
        links = resolver.links_for(args.unified) if args.unified else resolver.all_links()
    if args.json:
        rows = [
            {
                "platform": x.platform,
                "platform_user_id": x.platform_user_id,
                "unified_user_id": x.unified_user_id,
                "linked_at": x.linked_at,
            }
            for x in links
        ]
        say(json.dumps(rows, indent=2))
        return 0
    if not links:
        say(f"no accounts linked to {args.unified}" if args.unified else "no links yet")
        return 0
    ordered = sorted(links, key=lambda x: (x.unified_user_id, x.platform, x.platform_user_id))
    cells = [
        (x.unified_user_id, x.platform, x.platform_user_id, _when(x.linked_at)) for x in ordered
    ]
    say(table(("person", "platform", "account", "linked"), cells))
    return 0


def parse_links(path: Path) -> list[tuple[str, str, str]]:
    """``(platform, platform_user_id, unified)`` from an identity.json (either format).

    Accepts PraisonAI's ``{"links": {"telegram::12345": "alice"}}`` and
    onethread's version 1 (``{"unified": "alice", ...}`` values). Raises
    ``ConfigError`` naming the file and the bad entry.
    """
    from ..session.identity._common import validate_link_args

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc})") from exc
    raw = doc.get("links") if isinstance(doc, dict) else None
    if not isinstance(raw, dict):
        raise ConfigError(
            f'{path}: expected {{"links": {{"telegram::12345": "alice", ...}}}} at the top level'
        )
    out = []
    for key, value in raw.items():
        platform, sep, account = str(key).partition("::")
        unified = value.get("unified") if isinstance(value, dict) else value
        where = f"{path}: links[{key!r}]"
        if not sep:
            raise ConfigError(f"{where}: the key must be 'platform::account_id'")
        if not isinstance(unified, str):
            raise ConfigError(f'{where}: the value must be the unified id, e.g. "alice"')
        try:
            validate_link_args(platform, account, unified)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        out.append((platform, account, unified))
    return out


def _cmd_import(args: argparse.Namespace) -> int:
    links = parse_links(Path(args.path))
    added = same = 0
    conflicts: list[str] = []
    with _resolver(args) as resolver:
        for platform, account, unified in links:
            current = resolver.resolve(platform, account)
            if current == unified:
                same += 1
                continue
            if current != f"{platform}:{account}" and not args.replace:
                conflicts.append(f"{platform}:{account} is linked to {current}, not {unified}")
                continue
            resolver.link(platform, account, unified)
            added += 1
    say(f"imported {added} link(s) from {args.path}; {same} already present")
    if conflicts:
        raise OnethreadError(
            f"skipped {len(conflicts)} conflicting link(s) (pass --replace to move them): "
            + "; ".join(conflicts)
        )
    return 0


# -- access ------------------------------------------------------------------------


@contextmanager
def _pairing() -> Iterator[Any]:
    from ..session.pairing import PairingStore

    store = PairingStore()
    try:
        yield store
    finally:
        store.close()


def _cmd_approve(args: argparse.Namespace) -> int:
    from ..bots.policy import approve_code

    platform = known_platform(args.platform)
    with _pairing() as store:
        _, user_id = approve_code(store, platform, args.code)
    say(f"approved {platform}:{user_id}; their next message is answered")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    platform = known_platform(args.platform)
    with _pairing() as store:
        if not store.revoke(platform, args.id):
            raise OnethreadError(f"{platform}:{args.id} was not approved; nothing to do")
    say(f"revoked the approval of {platform}:{args.id}")
    return 0


def _cmd_approved(args: argparse.Namespace) -> int:
    platform = known_platform(args.platform) if args.platform else None
    with _pairing() as store:
        rows = store.approved(platform)
    if not rows:
        say("no approved senders")
    for p, user_id in rows:
        say(f"{p}:{user_id}")
    return 0
