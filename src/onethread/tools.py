"""Ready-made agent tools.

``reminders()`` gives the agent three tools to manage the reminders of the
person it is talking to: ``remind_me(when, text)``, ``list_reminders()`` and
``cancel_reminder(id)``::

    from onethread import Agent
    from onethread.tools import reminders

    agent = Agent("assistant", tools=[*reminders()])

Each tool acts for the person in the current ``SessionContext`` only (their
``unified_user_id``): a person can never list or cancel another's jobs, and
``list_reminders`` answers in direct messages only (a group would read them). They
work inside turns of a running ``BotOS`` (its scheduled-job store); outside a
turn they answer with an error the model can read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .bots.jobs import JobService, current_jobs
from .session.context import get_session_context
from .session.jobs.timing import zone
from .session.jobs.when import parse_when

__all__ = ["reminders"]


def _service(given: Any) -> tuple[JobService, str]:
    ctx = get_session_context()
    if not ctx.unified_user_id:
        raise RuntimeError("reminders can only be managed during a conversation turn")
    service = given.job_service if given is not None else current_jobs()
    if service is None:
        raise RuntimeError("reminders need a running BotOS (none is running in this process)")
    return service, ctx.unified_user_id


def reminders(botos: Any = None) -> list[Callable[..., Any]]:
    """The reminder tools: ``[remind_me, list_reminders, cancel_reminder]``.

    ``botos`` is the BotOS whose jobs they manage; by default the one running
    the current turn.
    """

    async def remind_me(when: str, text: str) -> str:
        """Set a reminder for the person you are talking to.

        Args:
            when: when to send it: an ISO 8601 time (2026-03-01T09:00), or 'in 10 minutes',
                'in 2 hours', 'tomorrow at 9', 'today at 17:30', 'at 6pm', 'monday at 9'
                (wall-clock times are in the person's time zone).
            text: the reminder message to send them then.
        """
        service, user = _service(botos)
        tz = await service.zone_of(user)
        try:
            at = parse_when(when, tz, now=service.scheduler.clock())
        except ValueError as exc:
            return f"error: {exc}"
        try:
            job = await service.schedule(user, text, at=at)
        except ValueError as exc:
            return f"error: {exc}"
        local = job.next_run.astimezone(zone(tz))
        return f"Reminder {job.id} set for {local:%a %d %b %Y %H:%M} ({tz}): {text}"

    async def list_reminders() -> str:
        """List the reminders and scheduled messages of the person you are talking to."""
        service, user = _service(botos)
        if get_session_context().chat_type not in ("", "dm"):
            return "error: reminders are private; ask me in a direct message to list them"
        return await service.describe(user)

    async def cancel_reminder(id: str) -> str:
        """Cancel one of the person's reminders by its id.

        Args:
            id: the reminder's id, as list_reminders shows it.
        """
        service, user = _service(botos)
        if await service.cancel(id, user):
            return f"Reminder {id} cancelled."
        return f"error: no active reminder {id!r} of yours; list_reminders shows their ids"

    return [remind_me, list_reminders, cancel_reminder]
