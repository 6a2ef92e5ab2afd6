"""Bot: one agent on one platform."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..agent.files import File
from ..agent.responder import Responder, as_responder
from ..errors import PlatformError, StoreUnavailable
from ..logs import log_turn
from ..metrics import NULL_METRICS, NullMetrics
from ..platforms.base import Adapter, Attachment, Inbound
from ..platforms.draft import ReplyStream
from ..platforms.registry import load_adapter_class
from ..session._conn.shared import masked
from ..session.blobs import DEFAULT_MAX_BYTES
from ..session.history.base import DELIVERY_CUT, HistoryStore
from ..session.identity.base import IdentityResolverProtocol
from ..session.locks import LocalDuplicateFilter
from ..session.outage import store_failed, stores_ok
from ..session.validation import validate_platform
from .attachments import Taken, take_attachments
from .commands import CommandRouter
from .gate import Gate, Verdict
from .heap import freeze_startup_heap
from .linking import LinkFlow
from .manager import BotSessionManager, TurnStats
from .policy import AccessPolicy, default_policy
from .supervisor import Backoff, supervise

if TYPE_CHECKING:
    from ..platforms.ingress import Ingress

__all__ = ["Bot", "run_until_signal"]

log = logging.getLogger("onethread.bot")

TURN_FAILED = "Sorry, something went wrong on my side and I could not answer that. Try again?"

_BOT_OPTIONS = ("store", "max_history", "session", "adapter", "gate", "backoff",
                "drain_timeout", "access", "owners", "commands", "pairing",
                "gc_freeze", "blobs", "max_attachment_bytes", "streaming",
                "metrics", "context_tokens", "summary_model", "reset", "ingress")  # fmt: skip


def _default_agent() -> Responder:
    from ..agent import Agent

    return Agent(name="assistant")


class Bot:
    """One agent served on one platform.

    Args:
        platform: a registered platform name (``"telegram"``, ``"discord"``,
            ``"slack"``, ``"web"``, ``"console"``).
        agent: the agent answering (default: an ``Agent`` named ``assistant``):
            an ``onethread.Agent``, any ``onethread.agent.Responder``, or a
            praisonaiagents / OpenAI Agents SDK / pydantic-ai agent or compiled
            LangGraph graph, wrapped so it keeps no conversation between
            people. Anything else is a ``TypeError`` naming what is accepted.
        token: the platform credential; default from the platform's env var.
        identity_resolver: links accounts across platforms (default: none,
            every DM keeps its legacy key).
        **options: ``store`` (history store or URL), ``max_history``,
            ``context_tokens``, ``summary_model`` and ``reset`` (see
            ``BotSessionManager``),
            ``session`` (a shared ``BotSessionManager``), ``adapter`` (an
            adapter instance, e.g. ``onethread.testing.FakeAdapter``),
            ``drain_timeout`` (seconds running turns get at stop, default 10),
            ``access`` (an ``AccessPolicy``; default per ``default_policy``),
            ``owners`` (owner user ids on this platform), ``pairing`` (a
            ``PairingStore`` for /link and approval codes), ``gc_freeze``
            (default True: at start, move the objects alive then out of the
            cyclic garbage collector's walk, see ``onethread.bots.heap``),
            ``blobs`` (blob store or URL for attachments, see
            ``BotSessionManager``), ``max_attachment_bytes`` (default 20 MB:
            larger attachments are refused with a message to the sender),
            ``streaming`` (default True: replies appear while the model writes
            them, as a draft edited about once a second on platforms that can
            edit, as deltas in the web chat and the terminal; False sends each
            reply whole, in one go);
            ``metrics`` (an ``onethread.metrics.Metrics`` to count turns and
            deliveries in; default none, BotOS gives its bots its own);
            ``ingress`` (an ``onethread.platforms.ingress.Ingress``: the HTTP
            server the web chat and webhook modes serve on; BotOS shares one);
            anything else goes to the platform adapter (e.g. ``base_url``).

    ``await start()`` runs until ``stop()``; ``run()`` is the blocking form that
    stops cleanly on SIGINT/SIGTERM. A lost connection is restarted with
    backoff; a wrong token raises ``PlatformAuthError`` from ``start()``.
    """

    def __init__(
        self,
        platform: str,
        agent: object = None,
        *,
        token: str | None = None,
        identity_resolver: IdentityResolverProtocol | None = None,
        **options: Any,
    ) -> None:
        self.platform = validate_platform(platform)
        self.agent: Responder = as_responder(agent) if agent is not None else _default_agent()
        own = {k: options.pop(k) for k in _BOT_OPTIONS if k in options}
        session: BotSessionManager | None = own.get("session")
        self._owns_session = session is None
        if session is None:
            store: HistoryStore | str | None = own.get("store")
            session = BotSessionManager(
                store=store,
                identity_resolver=identity_resolver,
                max_history=own.get("max_history", 100),
                blobs=own.get("blobs"),
                context_tokens=own.get("context_tokens"),
                summary_model=own.get("summary_model"),
                reset=own.get("reset"),
            )
        elif identity_resolver is not None and session.identity_resolver is not identity_resolver:
            raise ValueError("pass identity_resolver to the shared session manager, not the Bot")
        self._session = session
        self.max_attachment_bytes = int(own.get("max_attachment_bytes", DEFAULT_MAX_BYTES))
        if self.max_attachment_bytes <= 0:
            raise ValueError("max_attachment_bytes must be a positive number of bytes")
        adapter: Adapter | None = own.get("adapter")
        if adapter is None:
            adapter_cls: Any = load_adapter_class(self.platform)  # subclasses take token=
            adapter = adapter_cls(token=token, **options)
        elif options or token is not None:
            raise TypeError(f"adapter options {sorted(options)} given with a ready adapter")
        self.adapter = adapter
        adapter.bind(self)  # e.g. the web chat shows the stored conversation on load
        self._gate: Gate = own.get("gate") or Gate(LocalDuplicateFilter())
        self._owns_gate = own.get("gate") is None  # BotOS.add_bot may share its own
        self.access: AccessPolicy = own.get("access") or default_policy(
            self.platform, owners=own.get("owners", ()), store=own.get("pairing")
        )
        self._commands: CommandRouter  # set by use_commands()
        self.use_commands(
            own.get("commands")
            or CommandRouter(
                self._session,
                extra={"link": LinkFlow(self._session, own.get("pairing"))},
                agent=self.agent,
            )
        )
        self._backoff: Backoff = own.get("backoff") or Backoff()
        self.drain_timeout: float = float(own.get("drain_timeout", 10.0))
        self.gc_freeze: bool = bool(own.get("gc_freeze", True))
        self.streaming: bool = bool(own.get("streaming", True))
        self._turns: set[asyncio.Task[None]] = set()  # touched on the loop thread only
        self._tails: dict[str, asyncio.Task[None]] = {}  # key -> its latest task (loop only)
        self._closed = False
        self._stopping: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self.ready = asyncio.Event()
        self.on_turn: Callable[[Inbound, str], Awaitable[None]] | None = None
        self.metrics: NullMetrics = NULL_METRICS
        self.use_metrics(own.get("metrics") or NULL_METRICS)
        self.ingress: Ingress | None = None
        if own.get("ingress") is not None:
            self.use_ingress(own["ingress"])

    def use_ingress(self, ingress: Ingress) -> None:
        """Serve this bot's HTTP routes and webhook on ``ingress`` (read by the adapter
        at start; ``BotOS`` gives every bot built without one its shared server)."""
        self.ingress = ingress
        self.adapter.ingress = ingress

    def use_metrics(self, metrics: NullMetrics) -> None:
        """Count this bot's turns and its adapter's deliveries in ``metrics``."""
        self.metrics = metrics
        self.adapter.metrics = metrics

    def adopt(self, session: BotSessionManager, gate: Gate) -> bool:
        """Move this (not yet started) bot onto a shared session manager and gate.

        Returns False, changing nothing, when the bot was given its own
        ``session=`` or is running. Used by ``BotOS.add_bot``.
        """
        if not self._owns_session or self._stopping is not None:
            return False
        if self._session.identity_resolver is not None and (
            self._session.identity_resolver is not session.identity_resolver
        ):
            return False
        self._session = session
        self._owns_session = False
        self.use_gate(gate)
        self.use_commands(CommandRouter(session, agent=self.agent))
        return True

    def use_gate(self, gate: Gate) -> None:
        """Filter inbound messages with ``gate`` (``BotOS`` shares its duplicate
        filter) unless this bot was built with its own ``gate=``."""
        if self._owns_gate:
            self._gate = gate

    def use_commands(self, router: CommandRouter) -> None:
        """Answer slash commands with ``router`` (``BotOS`` shares one across its bots);
        this platform's ``/help`` lines (``adapter.help_lines``) are added to it."""
        router.platform_help.setdefault(self.platform, self.adapter.help_lines)
        self._commands = router

    @property
    def session(self) -> BotSessionManager:
        """The session manager (``bot._session``, the seed's name, is the same object)."""
        return self._session

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Connect and serve until :meth:`stop`. Raises ``PlatformAuthError`` for a bad token."""
        if self._stopping is not None and not self._stopping.is_set():
            raise RuntimeError(f"{self.platform} bot is already running")
        self._stopping = asyncio.Event()
        self._closed = False
        self._done = asyncio.Event()
        self._session.bind_loop()
        if self.gc_freeze:
            freeze_startup_heap()
        try:
            await supervise(
                self.adapter, self._on_inbound, self._stopping, self.ready, self._backoff
            )
        finally:
            self._stopping.set()
            self.ready.clear()
            await self._drain()
            self._closed = True
            try:
                await asyncio.wait_for(self.adapter.stop(), 10.0)
            finally:
                if self._owns_session:
                    await self._session.close()
                self._done.set()

    async def stop(self) -> None:
        """Stop taking messages, let running turns finish (bounded), disconnect. Idempotent."""
        if self._stopping is None or self._done is None:
            return
        self._stopping.set()
        await self._done.wait()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (blocking), then stop cleanly."""
        asyncio.run(run_until_signal(self.start, self.stop))

    async def _drain(self) -> None:
        """Let running turns finish, for at most ``drain_timeout`` seconds in all.

        The adapter is still connected meanwhile, so a message that arrives
        during the drain (and that the platform already considers delivered)
        is answered too, within the same deadline; then the rest is cancelled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        if self._turns:
            log.info("%s: waiting for %d running turn(s)", self.platform, len(self._turns))
        while self._turns and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._turns), timeout=remaining)
        pending = set(self._turns)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%s: cancelled %d turn(s) still running at stop", self.platform,
                        len(pending))  # fmt: skip
            await asyncio.wait(pending, timeout=2.0)

    # -- sending ---------------------------------------------------------------

    async def send(
        self,
        chat_id: str,
        text: str,
        thread_id: str | None = None,
        attachments: Sequence[File | Attachment] = (),
    ) -> list[str]:
        """Send ``text`` (split to the platform's limit, at most 10 messages, retried),
        then each of ``attachments`` (``onethread.File`` or stored ``Attachment``):
        images as photos where the platform has them, the rest as documents.

        Returns the ids of the sent messages; see ``Adapter.send`` and
        ``Adapter.send_files``. ``text`` may be empty when files are sent.
        """
        files = await self._session.store_files(attachments) if attachments else ()
        chat, thread = str(chat_id), thread_id or ""
        ids = await self.adapter.send(chat, text, thread_id=thread) if (text or not files) else []
        if files:
            pairs = await self._session.file_bytes(files)
            ids += await self.adapter.send_files(chat, pairs, thread_id=thread)
        if not self.fits(text):
            await self._send_whole(chat, text, thread)
        return ids

    def fits(self, text: str) -> bool:
        """True when ``text`` goes out whole; False when :meth:`send` cuts it at the
        platform's message cap (the whole text then follows as ``reply.md``)."""
        return self.adapter.fits(text)

    async def _send_whole(self, chat_id: str, text: str, thread_id: str) -> None:
        """Send a cut text whole as a Markdown file; a failure is logged, not raised
        (the person has the first part; the history says the text was cut)."""
        try:
            await self.adapter.send_files(chat_id, [whole_reply_file(text)], thread_id=thread_id)
        except PlatformError as exc:
            log.warning("%s: could not send a cut reply whole as a file: %s", self.platform, exc)

    # -- the turn --------------------------------------------------------------

    async def _on_inbound(self, msg: Inbound) -> None:
        """Called by the adapter for every event; starts a turn task for accepted ones.

        Messages of one session are handled in arrival order: each task waits
        for the previous task of the same session key (``_tails``, touched on
        the loop thread only) before it does anything that can suspend.
        """
        if self._stopping is None or self._closed:
            self.adapter.on_done(msg, "stopping")
            return
        try:
            verdict = await self._gate.check(msg)
        except StoreUnavailable as exc:
            # The duplicate filter's server is down. Answering a redelivery twice
            # beats dropping every message: let it through (the turn says sorry
            # if the history is down too).
            store_failed(exc, f"the duplicate check of a {self.platform} message")
            verdict = Verdict.ACCEPT
        if verdict is not Verdict.ACCEPT:
            if verdict is Verdict.DUPLICATE:
                self.metrics.duplicate(self.platform)
            log.debug("%s: dropped message %s: %s", self.platform, msg.message_id, verdict.value)
            self.adapter.on_done(msg, verdict.value)
            return
        key = self._session.key_for(
            msg.user_id, platform=msg.platform, chat_id=msg.chat_id, chat_type=msg.chat_type,
            thread_id=msg.thread_id,
        )  # fmt: skip
        task = asyncio.create_task(self._handle(msg, self._tails.get(key)))
        self._tails[key] = task
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)
        task.add_done_callback(lambda t: self._tails.pop(key, None) if self._tails.get(key) is t
                               else None)  # fmt: skip

    async def _take_attachments(self, msg: Inbound) -> Taken | None:
        """Fetch and store ``msg``'s attachments (``None`` when it has none)."""
        if not msg.attachments:
            return None
        return await take_attachments(
            self.adapter, msg, self._session.blobs, max_bytes=self.max_attachment_bytes
        )

    async def _handle(self, msg: Inbound, previous: asyncio.Task[None] | None = None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))
        started = time.perf_counter()
        stats = TurnStats()
        outcome = "error"
        reply: str | None = None
        attempted = False  # the turn began sending its reply
        stream: ReplyStream | None = None
        try:
            reply = await self.access.check(msg)
            if reply is not None:  # refused: at most one short reply, never the agent
                outcome = "refused"
                if reply:
                    await self.adapter.send(msg.chat_id, reply, thread_id=msg.thread_id)
                    self.adapter.on_unstored_reply(msg, reply)
                return
            reply = await self._commands.handle(msg) if msg.text else None
            command = reply is not None  # its reply is not stored in the history
            if reply is None:
                taken = await self._take_attachments(msg) if msg.attachments else None
                if taken is not None and not taken.attachments and not msg.text.strip():
                    # Nothing left to answer: say only why each attachment was refused.
                    outcome = "attachment_refused"
                    await self.adapter.send(
                        msg.chat_id, "\n".join(taken.refusals), thread_id=msg.thread_id
                    )
                    return
                if taken is not None and taken.refusals:
                    await self.adapter.send(
                        msg.chat_id, "\n".join(taken.refusals), thread_id=msg.thread_id
                    )
                typing = self.adapter.typing(msg.chat_id, msg.thread_id)
                stream = (
                    self.adapter.reply_stream(msg.chat_id, msg.thread_id)
                    if self.streaming
                    else None
                )
                on_delta: Callable[[str], Awaitable[None]] | None = None
                if stream is not None:
                    draft = stream

                    async def on_delta(piece: str) -> None:
                        await typing.__aexit__(None, None, None)  # the words show instead
                        await draft.feed(piece)

                async def deliver(
                    text: str, files: Sequence[tuple[Attachment, bytes]] = ()
                ) -> dict[str, str] | None:
                    nonlocal attempted
                    attempted = True
                    await typing.__aexit__(None, None, None)  # no "typing…" after the reply
                    if stream is not None:
                        marks = await stream.finish(text)
                    else:
                        whole = self.adapter.fits(text)
                        await self.adapter.send(msg.chat_id, text, thread_id=msg.thread_id)
                        marks = None if whole else {"delivery": DELIVERY_CUT}
                    if files:
                        await self.adapter.send_files(msg.chat_id, files, thread_id=msg.thread_id)
                    if marks and marks.get("delivery") == DELIVERY_CUT:
                        # The first part went out; the whole reply follows as a file.
                        await self._send_whole(msg.chat_id, text, msg.thread_id)
                    return marks

                async with typing:
                    # The turn sends the reply itself, so that a reply that cannot be
                    # delivered is stored marked as such (metadata["delivery"]).
                    reply = await self._session.chat(
                        self.agent,
                        msg.user_id,
                        msg.text,
                        platform=msg.platform,
                        chat_id=msg.chat_id,
                        chat_type=msg.chat_type,
                        chat_name=msg.chat_name,
                        thread_id=msg.thread_id,
                        user_name=msg.user_name,
                        message_id=msg.message_id,
                        attachments=taken.attachments if taken is not None else (),
                        deliver=deliver,
                        on_delta=on_delta,
                        stats=stats,
                    )
                stores_ok()  # a whole turn worked: any store outage on record is over
                outcome = "model_error" if stats.model_failed else "ok"
            else:
                outcome = "command"
            if reply and not attempted:  # a command's answer, or the model-failure apology
                await self.adapter.send(msg.chat_id, reply, thread_id=msg.thread_id)
                if command:
                    self.adapter.on_unstored_reply(msg, reply)
            if self.on_turn is not None:
                await self.on_turn(msg, reply)
        except PlatformError as exc:
            outcome = "undelivered"
            log.error(
                "%s: could not deliver the reply to %s: %s",
                self.platform,
                masked(self.platform, msg.chat_id),
                exc,
            )
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome = "error"
            if isinstance(exc, StoreUnavailable):  # an outage: one line for all of it
                store_failed(exc, f"a turn on {self.platform}")
            else:
                log.exception("%s: turn for message %s failed", self.platform, msg.message_id)
            if attempted:  # the reply went out (the store failed after): no apology on top
                return
            reply = TURN_FAILED
            with contextlib.suppress(PlatformError):  # the platform may be the problem
                await self.adapter.send(msg.chat_id, TURN_FAILED, thread_id=msg.thread_id)
        finally:
            total = time.perf_counter() - started
            self.metrics.turn(self.platform, outcome, total, stats.model_seconds)
            log_turn(self.platform, msg.user_id, len(msg.text), len(reply or ""),
                     stats.model_seconds, total, outcome)  # fmt: skip
            try:
                if stream is not None:
                    await stream.close()  # a turn that ended without its final text
            finally:
                self.adapter.on_done(msg)


def cut_marks(bot: Bot, text: str) -> dict[str, str]:
    """History metadata for ``text`` sent by ``bot``: ``{"delivery": "cut"}`` when the
    chat got only its first part (the whole text followed as a file), else ``{}``."""
    return {} if bot.fits(text) else {"delivery": DELIVERY_CUT}


def whole_reply_file(text: str) -> tuple[Attachment, bytes]:
    """A reply too long for the chat, whole, as a Markdown file to send after its cut part."""
    data = text.encode("utf-8")
    return Attachment("file", "text/markdown", "reply.md", len(data)), data


async def run_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Run ``start()``; on SIGINT/SIGTERM call ``stop()`` and return once it has."""
    loop = asyncio.get_running_loop()
    main = asyncio.ensure_future(start())
    stopper: list[asyncio.Task[None]] = []

    def on_signal(signame: str) -> None:
        log.info("received %s, stopping", signame)
        if not stopper:
            stopper.append(asyncio.ensure_future(stop()))

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            log.debug("cannot install a handler for %s here", sig.name)
    try:
        await main
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if stopper:
            await stopper[0]
