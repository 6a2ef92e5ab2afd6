"""BotOS: one agent on many platforms, one conversation per person."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..agent.files import File
from ..agent.responder import Responder, as_responder
from ..errors import (
    ConfigError,
    OutcomeUnknown,
    PlatformUnavailable,
    RecipientUnknown,
    RetryAfter,
    StoreError,
    StoreUnavailable,
)
from ..metrics import NULL_METRICS, Metrics, NullMetrics
from ..session._conn.shared import who
from ..session.attachments import Attachment
from ..session.history.base import delivery_failed
from ..session.identity.base import IdentityResolverProtocol
from ..session.jobs.base import Job, JobStore
from ..session.outage import store_failed
from ..session.outbox import Outbox, OutboxItem
from ..session.pairing import PairingStore
from ..session.text import clean_text
from ..session.urls import Coordination, open_coordination, open_job_store
from .bot import Bot, _default_agent, cut_marks, run_until_signal
from .commands import CommandRouter
from .gate import Gate
from .heap import freeze_startup_heap
from .jobs import JobService
from .linking import LinkFlow
from .manager import BotSessionManager

if TYPE_CHECKING:
    from ..platforms.ingress import Ingress

__all__ = ["BotOS"]

log = logging.getLogger("onethread.botos")


class BotOS:
    """Runs several platform bots that share ONE session manager.

    One history store, one identity resolver, one set of turn locks and one
    duplicate filter serve every platform, so a person linked on Telegram and
    Discord keeps one conversation, and their turns never run at once.

    Args:
        agent: the agent answering on every platform (default: ``Agent("assistant")``);
            anything ``Bot(agent=...)`` accepts, framework agents included.
        platforms: platform names, or a mapping of name -> adapter options.
        identity_resolver: links accounts across platforms.
        bots: ready ``Bot`` objects to add (they are re-pointed at the shared
            session only if they were built without one).
        **options: ``store``, ``max_history``, ``blobs``, ``context_tokens``,
            ``summary_model``, ``reset`` for the shared session manager
            (or ``session`` for a ready one); ``access`` (one ``AccessPolicy``
            or a mapping platform -> policy), ``owners`` (platform -> owner
            ids), ``pairing`` (a ``PairingStore`` for /link and approvals),
            ``gc_freeze`` (default True: at start, move the objects alive then
            out of the cyclic garbage collector's walk, which keeps full
            collections short; see ``onethread.bots.heap``), ``metrics``
            (default True: a ``Metrics`` with its own registry, served at
            ``/metrics``; False: none; or a ready ``Metrics``), ``audit``
            (the admin page's ``AuditLog`` or its path) and ``admin_token``
            (see ``onethread.ops``); ``jobs`` (a job store or URL; default:
            the one that goes with ``store``, see ``open_job_store``),
            ``timezone`` (the deployment's zone for schedules, default UTC),
            ``scheduler`` (a dict of ``onethread.bots.scheduler.Scheduler``
            options: ``grace``, ``lease``, ``retry_delays``, ...); ``http``
            (the one HTTP server: an ``onethread.platforms.ingress.Ingress`` or
            a dict of its options ``host``, ``port``, ``public_url``; default:
            the web platform's host and port, else 127.0.0.1:8080); the rest
            is given to every platform's Bot (e.g. ``drain_timeout``).

    One platform failing is restarted with backoff by its own supervisor and
    never stops the others; a platform with bad credentials is logged as fatal
    for that platform while the rest keep serving.
    """

    def __init__(
        self,
        agent: object = None,
        platforms: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None,
        identity_resolver: IdentityResolverProtocol | None = None,
        bots: Iterable[Bot] | None = None,
        **options: Any,
    ) -> None:
        self.agent: Responder = as_responder(agent) if agent is not None else _default_agent()
        session: BotSessionManager | None = options.pop("session", None)
        store = options.pop("store", None)
        coordination: Coordination | None = options.pop("coordination", None)
        if coordination is None:
            url = store if isinstance(store, str) and session is None else None
            coordination = open_coordination(url)
        self.coordination = coordination
        self._owns_session = session is None
        if session is None:
            session = BotSessionManager(
                store=store,
                identity_resolver=identity_resolver,
                max_history=options.pop("max_history", 100),
                locks=coordination.locks,
                blobs=options.pop("blobs", None),
                context_tokens=options.pop("context_tokens", None),
                summary_model=options.pop("summary_model", None),
                reset=options.pop("reset", None),
            )
        self._session = session
        self._gate = Gate(coordination.duplicates)
        self.outbox: Outbox | None = coordination.outbox
        self.pairing: PairingStore | None = options.pop("pairing", None)
        metrics = options.pop("metrics", True)
        self.metrics: NullMetrics = (
            metrics if isinstance(metrics, NullMetrics) else Metrics() if metrics else NULL_METRICS
        )
        audit = options.pop("audit", None)
        admin_token = options.pop("admin_token", None)
        self.link_flow = LinkFlow(session, self.pairing, notify=self._send_to, metrics=self.metrics)
        jobs_store = options.pop("jobs", None)
        self._owns_jobs = not isinstance(jobs_store, JobStore)
        self.job_service = JobService(
            self,
            _job_store(jobs_store, store, None if self._owns_session else session),
            timezone=options.pop("timezone", None) or "UTC",
            **(options.pop("scheduler", None) or {}),
        )
        self.commands = CommandRouter(
            session,
            extra={
                "link": self.link_flow,
                "tz": self.job_service.tz_command,
                "reminders": self.job_service.reminders_command,
            },
            agent=self.agent,
        )
        access = options.pop("access", None)
        http = options.pop("http", None)
        owners: Mapping[str, Iterable[str]] = options.pop("owners", None) or {}
        self.gc_freeze = bool(options.get("gc_freeze", True))  # also each Bot's option
        self.bots: dict[str, Bot] = {}
        per_platform: Mapping[str, Mapping[str, Any]]
        if platforms is None:
            per_platform = {}
        elif isinstance(platforms, Mapping):
            per_platform = platforms
        else:
            per_platform = {name: {} for name in platforms}
        for name, platform_options in per_platform.items():
            policy = access.get(name) if isinstance(access, Mapping) else access
            bot_options: dict[str, Any] = {**options, **platform_options}
            if policy is not None:
                bot_options["access"] = policy
            bot = Bot(
                name,
                self.agent,
                session=session,
                gate=self._gate,
                owners=owners.get(name, ()),
                pairing=self.pairing,
                **bot_options,
            )
            self.add_bot(bot)
        for bot in bots or ():
            self.add_bot(bot)
        self.ingress: Ingress = self._ingress_for(http)
        """The one HTTP server: web chat, ``/healthz``, operations, ``/webhooks/<platform>``."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: asyncio.Event | None = None
        self.failed: dict[str, BaseException] = {}
        self._watch_metrics()
        from ..ops import Operations

        self.ops = Operations(self, metrics=self.metrics, audit=audit, admin_token=admin_token)

    def _watch_metrics(self) -> None:
        """Gauges read at scrape time: platforms up, live turn locks, outbox depth."""
        metrics = self.metrics
        if not isinstance(metrics, Metrics):
            return
        locks = self._session.locks  # the ones turns really take
        if hasattr(locks, "__len__"):
            metrics.watch_locks(lambda: len(locks))  # type: ignore[arg-type]
        depth = getattr(self.outbox, "depth", None)
        if callable(depth):
            platforms = list(self.bots)

            async def refresh_outbox() -> None:
                for platform, n in (await depth(platforms)).items():
                    metrics.set_outbox_depth(platform, n)

            metrics.add_refresher(refresh_outbox)

    def _ingress_for(self, http: Ingress | Mapping[str, Any] | None) -> Ingress:
        """``http`` itself, an ``Ingress`` from ``http`` options, else one at the web
        chat's address."""
        from ..platforms.ingress import Ingress

        if isinstance(http, Ingress):
            return http
        if http is not None:
            return Ingress(**http)
        web = self.http_adapter()
        if web is not None and isinstance(getattr(web, "port", None), int):
            return Ingress(host=str(getattr(web, "host", "127.0.0.1")), port=web.port)
        return Ingress()

    async def _serve_http(self) -> bool:
        """Give every bot the shared server; start it when one of them serves HTTP.

        Routes (the web chat's, operations') are added first: the server's are
        fixed once it listens. Returns True when this BotOS holds the server
        (release it at stop). A port that cannot be bound is logged; the
        adapters that need the server retry with backoff.
        """
        ingress = self.ingress
        served = []
        for bot in self.bots.values():
            if bot.ingress is None:
                bot.use_ingress(ingress)
            if bot.ingress is ingress and bot.adapter.uses_http:
                served.append(bot)
        if not served:
            return False
        ingress.add_routes(self.ops.mount)  # /readyz, /metrics, /admin
        for bot in served:
            routes = getattr(bot.adapter, "http_routes", None)
            if callable(routes):
                ingress.add_routes(routes)
        try:
            await ingress.acquire()
        except PlatformUnavailable as exc:
            log.error("the HTTP server did not start (its platforms retry): %s", exc)
            return False
        return True

    def http_adapter(self) -> Any:
        """The adapter that serves HTTP (the web chat: it has ``mounts``), or None."""
        for bot in self.bots.values():
            if isinstance(getattr(bot.adapter, "mounts", None), list):
                return bot.adapter
        return None

    def pairing_store(self) -> PairingStore | None:
        """The pairing store approvals live in: ``pairing=``, else the first approval
        policy's (None when no platform asks for approval)."""
        if self.pairing is not None:
            return self.pairing
        from .policy import ApprovalPolicy

        for bot in self.bots.values():
            if isinstance(bot.access, ApprovalPolicy):
                return bot.access.store
        return None

    @property
    def session(self) -> BotSessionManager:
        """The shared session manager (also ``botos._session``)."""
        return self._session

    def add_bot(self, bot: Bot) -> None:
        """Add a bot. It is moved onto this BotOS's session manager when it was
        built with its own default one (a bot built with a different
        ``session=`` is refused), and onto its duplicate filter unless built with
        its own ``gate=``.
        """
        if bot.platform in self.bots:
            raise ConfigError(f"platform {bot.platform!r} is configured twice")
        if bot.session is not self._session and not bot.adopt(self._session, self._gate):
            raise ConfigError(
                f"the {bot.platform} bot has its own session manager; build it with "
                "session=botos.session so every platform shares one history"
            )
        bot.use_gate(self._gate)  # a message is answered once across bots and hosts
        bot.use_commands(self.commands)  # /link across platforms needs the shared flow
        bot.use_metrics(self.metrics)
        if isinstance(self.metrics, Metrics):
            self.metrics.watch_platform(bot.platform, bot.ready.is_set)
        if not self.gc_freeze:
            bot.gc_freeze = False  # BotOS(gc_freeze=False) holds for bots added ready-made
        self.bots[bot.platform] = bot

    async def _send_to(self, platform: str, chat_id: str, text: str) -> None:
        """Deliver ``text`` on ``platform`` (the /link confirmation to the other account)."""
        bot = self.bots.get(platform)
        if bot is not None:
            await bot.send(chat_id, text)

    async def send_to(self, platform: str, chat_id: str, text: str) -> bool:
        """Send ``text`` to a chat on ``platform``; False (nothing sent) when this BotOS
        does not serve that platform. Raises the platform's error when sending fails."""
        if platform not in self.bots:
            return False
        await self._send_to(platform, chat_id, text)
        return True

    async def start(self) -> None:
        """Start every bot and serve until :meth:`stop`.

        Raises only when every platform has failed fatally (the errors are in
        ``failed``); a single failing platform is logged and the others go on.
        """
        if not self.bots:
            raise ConfigError("BotOS has no platforms: pass platforms=[...] or bots=[...]")
        self._stopping = asyncio.Event()
        self._session.bind_loop()
        self.ops.attach()
        holds_http = await self._serve_http()
        if self.gc_freeze:
            freeze_startup_heap()
        self.job_service.enter()  # the reminder tools find this BotOS from its turns
        self._tasks = {name: asyncio.create_task(bot.start()) for name, bot in self.bots.items()}
        scheduling = asyncio.create_task(self.job_service.run())
        serving = None
        if self.outbox is not None:  # deliver what other hosts queued for our platforms
            serving = asyncio.create_task(self._serve_outbox(self.outbox))
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            pending: set[asyncio.Task[Any]] = set(self._tasks.values())
            while pending and not self._stopping.is_set():
                done, pending = await asyncio.wait(
                    pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stop_wait)
                for name, task in self._tasks.items():
                    if task in done and name not in self.failed:
                        exc = task.exception()
                        if exc is not None:
                            self.failed[name] = exc
                            log.error("%s: stopped for good: %s", name, exc)
            if len(self.failed) == len(self.bots):
                first = next(iter(self.failed.values()))
                raise first
        finally:
            stop_wait.cancel()
            scheduling.cancel()
            await asyncio.gather(scheduling, return_exceptions=True)
            if serving is not None:
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
            await asyncio.gather(*(bot.stop() for bot in self.bots.values()))
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            if holds_http:
                await self.ingress.release()
            self.ops.detach()
            if self._owns_jobs:
                await self.job_service.store.close()
            if self._owns_session:
                await self._session.close()
                await self.coordination.close()

    async def _serve_outbox(self, outbox: Outbox) -> None:
        """Deliver what other hosts queue for our platforms, until cancelled.

        Through an outage of the outbox's server, serve again with backoff
        (1 s doubling to 30 s; the outage is logged once); any other store
        error stops the outbox (logged) and leaves the bots serving.
        """
        loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            started = loop.time()
            try:
                await outbox.serve(list(self.bots), self._deliver)
                return
            except StoreUnavailable as exc:
                store_failed(exc, "the cross-host outbox")
            except StoreError as exc:
                log.error("the cross-host outbox stopped: %s", exc)
                return
            if loop.time() - started > 60:  # it had been serving: start the backoff over
                delay = 1.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        """Stop every bot (draining running turns) and return when all are down."""
        if self._stopping is not None:
            self._stopping.set()
        await asyncio.gather(*(bot.stop() for bot in self.bots.values()))

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (blocking), then stop cleanly."""
        asyncio.run(run_until_signal(self.start, self.stop))

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every bot is connected (tests and scripts)."""
        await asyncio.wait_for(
            asyncio.gather(*(bot.ready.wait() for bot in self.bots.values())), timeout
        )

    async def notify(
        self,
        unified_user_id: str,
        text: str,
        source_label: str = "notify",
        attachments: Sequence[File | Attachment] = (),
    ) -> list[str]:
        """Send ``text`` to the person where they last talked to the bot, and mirror it.

        ``unified_user_id`` is a unified id or an unlinked ``platform:user_id``.
        When another host serves that platform (a shared Redis or PostgreSQL
        store), the message is queued durably in the outbox and that host sends
        and mirrors it; the result is then ``[]``. Raises ``RecipientUnknown``
        when the person never wrote to a platform anyone can reach. Returns the
        sent message ids. When the send fails for good the text is mirrored
        anyway, marked ``metadata["delivery"] == "failed"``, and the error raised.
        ``attachments`` (``onethread.File`` or stored ``Attachment``) are sent
        after the text and mirrored with it; through the outbox they travel by
        blob address, so hosts must share the blob store (``s3://``).
        """
        unified_user_id, text = clean_text(unified_user_id), clean_text(text)
        source_label = clean_text(source_label)
        files = await self._session.store_files(attachments) if attachments else ()
        last = await self._session.last_seen(unified_user_id)
        if last is None:
            raise RecipientUnknown(unified_user_id)
        if last.platform not in self.bots:
            if self.outbox is None:
                raise RecipientUnknown(unified_user_id)
            await self.outbox.put(
                OutboxItem(
                    platform=last.platform,
                    chat_id=last.chat_id,
                    text=text,
                    unified_user_id=unified_user_id,
                    source=source_label,
                    attachments=files,
                )
            )
            return []
        bot = self.bots[last.platform]
        try:
            ids = await bot.send(last.chat_id, text, attachments=files)
        except Exception as exc:  # kept in history, marked not delivered, then raised
            await self._mirror_failed(
                unified_user_id, text, source_label, last.platform, last.chat_id, exc, files
            )
            raise
        await self._mirror_sent(
            unified_user_id, text, source_label, last.platform, last.chat_id,
            {**cut_marks(bot, text), **bot.adapter.delivery_marks(ids)}, files=files,
        )  # fmt: skip
        return ids

    async def _mirror_sent(
        self,
        unified_user_id: str,
        text: str,
        source: str,
        platform: str,
        chat_id: str,
        extra: Mapping[str, Any] | None = None,
        files: Sequence[Attachment] = (),
    ) -> None:
        await self._session.mirror(
            unified_user_id, text, source=source,
            metadata={"platform": platform, "chat_id": chat_id, **(extra or {})},
            attachments=files,
        )  # fmt: skip

    async def _mirror_failed(
        self,
        unified_user_id: str,
        text: str,
        source: str,
        platform: str,
        chat_id: str,
        exc: BaseException,
        files: Sequence[Attachment] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Mirror text whose send failed for good, marked so (never raises: the send
        error is what the caller must see)."""
        try:
            await self._mirror_sent(
                unified_user_id, text, source, platform, chat_id,
                {**(metadata or {}), **delivery_failed(exc)}, files,
            )  # fmt: skip
        except Exception:
            log.exception("could not record the failed delivery to %s", who(unified_user_id))

    async def _deliver(self, item: OutboxItem) -> None:
        """Outbox callback: send an item queued by another host, then mirror it.

        A send that failed for good is mirrored marked not delivered. Errors
        that a later attempt may cure (``RetryAfter``, ``PlatformUnavailable``)
        are raised so the outbox retries the item (mirrored as failed on its
        last attempt); any other error (a refused request, a send whose outcome
        is unknown) is not retried: that could repeat a message that arrived.
        """
        bot = self.bots[item.platform]
        try:
            ids = await bot.send(
                item.chat_id, item.text, item.thread_id or None, attachments=item.attachments
            )
        except Exception as exc:
            retryable = isinstance(exc, RetryAfter | PlatformUnavailable) and not isinstance(
                exc, OutcomeUnknown
            )
            # An outbox that does not say how many attempts it makes is never at its
            # last: a retryable failure is then not mirrored (rather than once per try).
            last = item.attempts >= getattr(self.outbox, "max_attempts", float("inf"))
            if item.unified_user_id and (last or not retryable):
                await self._mirror_failed(
                    item.unified_user_id, item.text, item.source, item.platform, item.chat_id,
                    exc, item.attachments, item.metadata,
                )  # fmt: skip
            if retryable:
                raise
            log.error("outbox: %s item %s not delivered, not retried: %s", item.platform,
                      item.id, exc)  # fmt: skip
            return
        if item.unified_user_id:
            await self._mirror_sent(
                item.unified_user_id, item.text, item.source, item.platform, item.chat_id,
                {**item.metadata, **cut_marks(bot, item.text),
                 **bot.adapter.delivery_marks(ids)}, files=item.attachments,
            )  # fmt: skip

    # -- scheduled messages ----------------------------------------------------

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
        """Schedule ``text`` for ``user`` (a unified id or ``PLATFORM:ID``); return the Job.

        Exactly one of ``at`` (an aware datetime, or a timedelta from now),
        ``every`` (a timedelta of at least a minute; first run one interval
        from now) or ``cron`` (five fields, e.g. ``"0 18 * * 1-5"``, in the
        person's ``/tz`` zone, else the deployment's ``timezone``), else
        ``ValueError``. Delivered like :meth:`notify` (most recently used
        platform, or ``platform``) and mirrored with ``source_label``;
        ``prompt=True`` runs an agent turn with ``text`` and delivers the
        reply. Stored in the deployment's job store: survives restarts, and
        each occurrence fires once across every host (see
        ``onethread.bots.scheduler``). Works before :meth:`start`; jobs fire
        while the BotOS runs.
        """
        return await self.job_service.schedule(
            user, text, at=at, every=every, cron=cron, prompt=prompt, platform=platform,
            source_label=source_label,
        )  # fmt: skip

    async def jobs(self, user: str | None = None) -> list[Job]:
        """Active scheduled jobs (of ``user``, else everyone's), soonest first."""
        return await self.job_service.jobs(user)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a scheduled job; True if it was active (it will not fire again)."""
        return await self.job_service.cancel(job_id)


def _job_store(jobs: Any, store: Any, session: BotSessionManager | None) -> JobStore:
    """The job store: given, or the one that goes with the history store."""
    if isinstance(jobs, JobStore):
        return jobs
    if isinstance(jobs, str):
        return open_job_store(jobs)  # type: ignore[no-any-return]
    if jobs is not None:
        raise ConfigError(f"jobs= must be a job store or a store URL, not {type(jobs).__name__}")
    if isinstance(store, str) or (store is None and session is None):
        return open_job_store(store)  # type: ignore[no-any-return]
    history = store if store is not None else session.store  # type: ignore[union-attr]
    url = getattr(history, "url", None)
    if isinstance(url, str) and hasattr(history, "prefix"):
        return open_job_store(url, prefix=history.prefix)  # type: ignore[no-any-return]
    if isinstance(url, str) and hasattr(history, "schema"):
        return open_job_store(url, schema=history.schema)  # type: ignore[no-any-return]
    path = getattr(history, "path", None)
    if path is not None:
        return open_job_store(f"sqlite:///{path}")  # type: ignore[no-any-return]
    return open_job_store("memory://")  # type: ignore[no-any-return]
