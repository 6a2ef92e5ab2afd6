"""Scheduled messages for a BotOS: schedule, list, cancel, deliver, /tz and /reminders.

``BotOS`` owns one :class:`JobService`: it keeps jobs in the deployment's job
store, runs the :class:`~onethread.bots.scheduler.Scheduler`, and delivers
each occurrence the way ``notify()`` does: on the person's most recently
used platform (or the job's ``platform``), mirrored into their history with
the job's ``source_label``. A ``prompt`` job first runs an agent turn with the
job's text and delivers the reply.

Every mirrored entry carries ``metadata["job_id"]`` and
``metadata["scheduled_for"]`` (the occurrence's original time, ISO 8601 UTC;
a late one fired after a restart keeps its original time). An occurrence
that fails after every retry is recorded in the person's history with
``metadata["delivery"] == "failed"`` and ``metadata["delivery_error"]`` (the
error's class, as replies are marked), and in the job (``last_status ==
"failed"``, ``last_error`` with the message). A send whose outcome is unknown
(``OutcomeUnknown``: it may have arrived) is not retried, so never repeated.
"""

from __future__ import annotations

import contextvars
import logging
import weakref
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import DeliveryWindowClosed, OutcomeUnknown, RecipientUnknown
from ..platforms.base import Inbound
from ..session.history.base import delivery_failed
from ..session.identity.base import unlinked_id
from ..session.jobs.base import Job, JobStore
from ..session.jobs.timing import zone
from ..session.jobs.when import make_job
from ..session.outbox import OutboxItem
from ..session.validation import validate_platform
from .bot import cut_marks
from .scheduler import Scheduler, Undelivered

if TYPE_CHECKING:
    from .botos import BotOS

__all__ = ["JobService", "current_jobs"]

log = logging.getLogger("onethread.jobs")

_current: contextvars.ContextVar[JobService | None] = contextvars.ContextVar(
    "onethread_jobs", default=None
)
_running: weakref.WeakSet[JobService] = weakref.WeakSet()


def current_jobs() -> JobService | None:
    """The job service of the BotOS running the current turn (for the reminder tools).

    Set by ``BotOS.start`` in the tasks it starts; outside them, the one
    running in this process if there is exactly one.
    """
    found = _current.get()
    if found is not None:
        return found
    running = list(_running)
    return running[0] if len(running) == 1 else None


def _when(t: datetime, tz: str) -> str:
    return t.astimezone(zone(tz)).strftime("%a %d %b %Y %H:%M %Z")


class JobService:
    """Jobs of one BotOS (see the module doc). Built by ``BotOS``; use its
    ``schedule``/``jobs``/``cancel``.

    Args:
        botos: the BotOS whose bots, session and outbox deliver.
        store: the job store.
        timezone: the deployment's zone, for people who set none (default UTC).
        **scheduler_options: given to :class:`Scheduler` (``grace``, ``lease``,
            ``retry_delays``, ``concurrency``, ``clock``, ``max_sleep``).
    """

    def __init__(
        self, botos: BotOS, store: JobStore, *, timezone: str = "UTC", **scheduler_options: Any
    ) -> None:
        zone(timezone)
        self.botos = botos
        self.store = store
        self.timezone = timezone
        scheduler_options.setdefault("record", botos.metrics.scheduled_job)
        self.scheduler = Scheduler(store, self._fire, failed=self._failed, **scheduler_options)

    # -- the API behind BotOS.schedule/jobs/cancel ----------------------------------

    async def zone_of(self, user: str) -> str:
        """The person's zone (``/tz``), else the deployment's."""
        return await self.store.get_zone(user) or self.timezone

    async def set_zone(self, user: str, tz: str | None) -> None:
        """Set (``None``: clear) the person's zone; ``ValueError`` for an unknown one."""
        if tz is not None:
            tz = zone(tz).key
        await self.store.set_zone(user, tz)

    async def schedule(
        self,
        user: str,
        text: str,
        *,
        at: datetime | timedelta | None = None,
        every: timedelta | None = None,
        cron: str | None = None,
        prompt: bool = False,
        platform: str | None = None,
        source_label: str = "cron",
    ) -> Job:
        """Store a new job and wake the scheduler (see ``BotOS.schedule``)."""
        if platform is not None:
            validate_platform(platform)
        tz = await self.zone_of(user) if isinstance(user, str) and user else self.timezone
        job = make_job(
            user, text, at=at, every=every, cron=cron, prompt=prompt, platform=platform,
            source_label=source_label, tz=tz, now=self.scheduler.clock(),
        )  # fmt: skip
        await self.store.add(job)
        self.scheduler.wake()
        log.info("job %s for %s: %s, first at %s", job.id, user, job.describe(),
                 job.next_run.isoformat())  # fmt: skip
        return job

    async def jobs(self, user: str | None = None) -> list[Job]:
        """Active jobs (of ``user``), soonest first."""
        return await self.store.find(user)

    async def cancel(self, job_id: str, user: str | None = None) -> bool:
        """Cancel an active job (only ``user``'s when given)."""
        done = await self.store.cancel(str(job_id).strip(), user)
        if done:
            self.scheduler.wake()
        return done

    async def run(self) -> None:
        """Run the scheduler until cancelled (``BotOS.start`` does)."""
        _current.set(self)
        _running.add(self)
        try:
            await self.scheduler.run()
        finally:
            _running.discard(self)

    def enter(self) -> None:
        """Make this the job service of the current context (and tasks made from it)."""
        _current.set(self)

    # -- delivery --------------------------------------------------------------------

    async def _target(self, job: Job) -> tuple[str, str, str]:
        """(platform, chat id, account id) to deliver ``job`` to."""
        last = await self.botos.session.last_seen(job.unified_user_id, job.platform)
        if last is None:
            raise RecipientUnknown(job.unified_user_id)
        return last.platform, last.chat_id, last.user_id

    def _metadata(
        self, job: Job, occurrence: datetime, platform: str, chat_id: str
    ) -> dict[str, Any]:
        return {
            "job_id": job.id,
            "scheduled_for": occurrence.astimezone(UTC).isoformat(),
            "platform": platform,
            "chat_id": chat_id,
        }

    async def _fire(self, job: Job, occurrence: datetime) -> None:
        """Deliver one occurrence (the Scheduler's ``fire``)."""
        platform, chat_id, account = await self._target(job)
        meta = self._metadata(job, occurrence, platform, chat_id)
        session = self.botos.session
        text = job.text
        if job.prompt:
            text = job.pending_reply or await session.scheduled_turn(
                self.botos.agent, job.unified_user_id, job.text, platform=platform,
                chat_id=chat_id, user_id=account, source=job.source_label,
            )  # fmt: skip
        bot = self.botos.bots.get(platform)
        if bot is None:
            outbox = self.botos.outbox
            if outbox is None:
                raise RecipientUnknown(job.unified_user_id)
            # Another host serves the platform: it sends and mirrors the text (a prompt
            # job's reply) with the job's label and metadata; the outbox's guarantees hold.
            await outbox.put(
                OutboxItem(platform=platform, chat_id=chat_id, text=text,
                           unified_user_id=job.unified_user_id, source=job.source_label,
                           metadata=meta)
            )  # fmt: skip
            return
        try:
            ids = await bot.send(chat_id, text)
        except Exception as exc:
            # A send whose outcome is unknown may have arrived: never sent twice. A closed
            # delivery window (WhatsApp's 24 hours) stays closed until the person writes.
            retry = not isinstance(exc, OutcomeUnknown | DeliveryWindowClosed)
            raise Undelivered(exc, pending_reply=text if job.prompt else "", retry=retry) from exc
        meta.update(cut_marks(bot, text))
        meta.update(bot.adapter.delivery_marks(ids))
        await self._record(job, text, text, meta)

    async def _record(self, job: Job, text: str, reply: str, meta: dict[str, Any]) -> None:
        """Put what was sent into the person's history. Never raises: the message
        is out, and a failure here must not send it again."""
        session = self.botos.session
        try:
            if job.prompt:
                await session.record_scheduled_turn(
                    job.unified_user_id, job.text, reply, source=job.source_label, metadata=meta
                )
            else:
                await session.mirror(
                    job.unified_user_id, text, source=job.source_label, metadata=meta
                )
        except Exception:
            log.exception("job %s: delivered, but mirroring it into the history failed", job.id)

    async def _failed(self, job: Job, occurrence: datetime, exc: BaseException) -> None:
        """Record an occurrence that failed for good in the person's history."""
        cause = exc.cause if isinstance(exc, Undelivered) else exc
        try:
            platform, chat_id, _ = await self._target(job)
        except RecipientUnknown:
            platform = chat_id = ""
        meta = self._metadata(job, occurrence, platform, chat_id)
        meta.update(delivery_failed(cause))
        session = self.botos.session
        if job.prompt and job.pending_reply:
            await session.record_scheduled_turn(
                job.unified_user_id, job.text, job.pending_reply, source=job.source_label,
                metadata=meta,
            )  # fmt: skip
        else:
            await session.mirror(job.unified_user_id, job.text, source=job.source_label,
                                 metadata=meta)  # fmt: skip

    # -- chat commands -----------------------------------------------------------------

    def _sender(self, msg: Inbound) -> str:
        unified = self.botos.session.resolve(msg.platform, msg.user_id)
        return unified if unified is not None else unlinked_id(msg.platform, msg.user_id)

    async def tz_command(self, msg: Inbound, arg: str) -> str:
        """``/tz`` shows the sender's zone; ``/tz Europe/Berlin`` sets it; ``/tz reset`` clears."""
        user = self._sender(msg)
        if not arg:
            own = await self.store.get_zone(user)
            if own is None:
                return (f"Your time zone is not set; I use {self.timezone}. "
                        "Set it with /tz Europe/Berlin (any IANA name).")  # fmt: skip
            return f"Your time zone is {own}."
        if arg.lower() in ("reset", "clear", "default"):
            await self.set_zone(user, None)
            return f"Time zone cleared; I use {self.timezone}."
        try:
            await self.set_zone(user, arg)
        except ValueError as exc:
            return str(exc)
        now = datetime.now(zone(arg))
        return (f"Time zone set to {zone(arg).key} (it is {now:%H:%M} there). Reminders "
                "and schedules you set from now on use it.")  # fmt: skip

    async def reminders_command(self, msg: Inbound, _arg: str) -> str:
        """``/reminders``: the sender's scheduled messages (in a DM only: a group
        would read them)."""
        if msg.chat_type != "dm":
            return "Send /reminders in a direct message to me."
        user = self._sender(msg)
        return await self.describe(user)

    async def describe(self, user: str) -> str:
        """The person's active jobs as lines of text (for /reminders and the tools)."""
        jobs = await self.jobs(user)
        if not jobs:
            return "You have no reminders or scheduled messages."
        tz = await self.zone_of(user)
        lines = [f"Your scheduled messages (times in {tz}):"]
        for job in jobs:
            kind = "" if not job.recurring else f", {job.describe()}"
            what = "prompt" if job.prompt else "message"
            lines.append(f"- {job.id}: {_when(job.next_run, tz)}{kind} ({what}): {job.text}")
        lines.append("Ask me to cancel one by its id.")
        return "\n".join(lines)
