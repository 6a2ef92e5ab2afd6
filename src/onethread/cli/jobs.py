"""onethread jobs list|add|cancel: scheduled messages, from the command line.

USER is a person's unified id (alice) or an unlinked account as PLATFORM:ID
(telegram:12345). Jobs go to the store the config's "history" URL names (a
SQLite file next to the history, or the same Redis or PostgreSQL server); a
running "onethread run" picks them up (SQLite: within 2 s; Redis and
PostgreSQL: at once).

Times: --at reads ISO 8601 (2026-03-01T09:00; without an offset, in the
person's zone), "in 10 minutes", "tomorrow at 9"; --every reads 10m, 1h,
"1 day"; --cron five fields ("0 9 * * 1-5"). Wall-clock and cron times are in
the person's /tz zone, else the config's timezone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..config import Config
from ..errors import ConfigError, OnethreadError
from ..session.jobs.base import Job, JobStore
from ..session.jobs.timing import zone
from ..session.jobs.when import make_job, parse_every, parse_when
from ..session.urls import open_job_store
from .common import config_from_args, say

__all__ = ["add_parsers"]

T = TypeVar("T")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``jobs`` (list, add, cancel) to the subcommand parser ``sub``."""
    jobs = sub.add_parser(
        "jobs",
        parents=[common],
        help="list, add or cancel scheduled messages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jsub = jobs.add_subparsers(
        dest="action",
        metavar="ACTION",
        required=True,
        help="one of these; ACTION -h shows its help",
    )
    show = jsub.add_parser(
        "list",
        parents=[common],
        help="list scheduled messages",
        description="List the scheduled messages (everyone's, or one person's), soonest first.",
    )
    show.add_argument("user", nargs="?", help="only this person's (unified id or PLATFORM:ID)")
    show.add_argument("--all", action="store_true", help="include finished ones")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_cmd_list)
    add = jsub.add_parser(
        "add",
        parents=[common],
        help="schedule a message for a person",
        description="Schedule a message (or, with --prompt, an agent turn) for a person: "
        "once (--at), repeatedly (--every) or on a cron schedule (--cron).",
    )
    add.add_argument("user", help="unified id (alice) or PLATFORM:ID (telegram:12345)")
    add.add_argument("text", help="the message (or, with --prompt, the agent's prompt)")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", help="once: 'in 10 minutes', 'tomorrow at 9', ISO 8601")
    when.add_argument("--every", help="repeatedly: '10m', '1h', '1 day' (at least 1 minute)")
    when.add_argument("--cron", help="on a cron schedule: '0 9 * * 1-5'")
    add.add_argument("--prompt", action="store_true", help="run an agent turn, send its reply")
    add.add_argument(
        "--platform", help="deliver on this platform (default: where they talked last)"
    )
    add.add_argument("--label", default="cron", help="source label in the history (default cron)")
    add.set_defaults(func=_cmd_add)
    cancel = jsub.add_parser(
        "cancel",
        parents=[common],
        help="cancel a scheduled message",
        description="Cancel a scheduled message by its id; it will not fire again.",
    )
    cancel.add_argument("id", help="the job id, as `onethread jobs list` shows it")
    cancel.set_defaults(func=_cmd_cancel)


def _with_store(config: Config, job: Callable[[JobStore], Awaitable[T]]) -> T:
    try:
        store: JobStore = open_job_store(config.history)
    except ConfigError as exc:
        raise ConfigError(f"history: {exc}") from exc

    async def run() -> T:
        try:
            return await job(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _row(job: Job) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(job.to_json())
    return data


def _cmd_list(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    jobs = _with_store(config, lambda s: s.find(args.user, finished=args.all))
    if args.json:
        say(json.dumps([_row(j) for j in jobs], indent=2, ensure_ascii=False))
        return 0
    if not jobs:
        who = f" for {args.user}" if args.user else ""
        say(f"no scheduled messages{who}")
        return 0
    table = Table("id", "who", "next run", "schedule", "status", "text", box=None)
    for job in jobs:
        local = job.next_run.astimezone(zone(job.timezone))
        status = (
            job.status
            if job.status != "active" or not job.last_status
            else (f"active (last: {job.last_status})")
        )
        kind = job.describe() + (", prompt" if job.prompt else "")
        table.add_row(
            job.id, Text(job.unified_user_id), f"{local:%Y-%m-%d %H:%M %Z}", Text(kind),
            status, Text(job.text),
        )  # fmt: skip
    Console(soft_wrap=True).print(table)
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    config = config_from_args(args)

    async def add(store: JobStore) -> Job:
        tz = await store.get_zone(args.user) or config.timezone
        try:
            at = parse_when(args.at, tz) if args.at is not None else None
            every = parse_every(args.every) if args.every is not None else None
            job = make_job(
                args.user, args.text, at=at, every=every, cron=args.cron, prompt=args.prompt,
                platform=args.platform, source_label=args.label, tz=tz,
            )  # fmt: skip
        except ValueError as exc:  # a usage mistake: exit 2, the message names the fix
            raise ConfigError(str(exc)) from exc
        await store.add(job)
        return job

    job = _with_store(config, add)
    local = job.next_run.astimezone(zone(job.timezone))
    say(f"scheduled {job.id} for {job.unified_user_id}: {job.describe()}, "
        f"first at {local:%Y-%m-%d %H:%M %Z}")  # fmt: skip
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not _with_store(config, lambda s: s.cancel(args.id.strip())):
        raise OnethreadError(f"no active job {args.id!r} (see: onethread jobs list)")
    say(f"cancelled {args.id}")
    return 0
