"""BotSessionManager: the turn, from a resolved sender to a stored reply.

One manager is shared by every bot of a process (``BotOS`` makes sure of it):
one history store, one identity resolver, one set of turn locks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..agent.files import File, turn_files
from ..agent.models import ModelClient, OnDelta
from ..agent.responder import Responder, as_responder
from ..agent.transcribe import Transcriber
from ..errors import ModelError, ReplyStopped, StoreError
from ..session._conn.shared import masked, who
from ..session.attachments import Attachment
from ..session.blobs import BlobStore, open_blob_store
from ..session.context import SessionContext, clear_session_context, set_session_context
from ..session.history.base import HistoryEntry, HistoryStore, delivery_failed
from ..session.identity.base import IdentityLink, IdentityResolverProtocol, unlinked_id
from ..session.keys import (
    DM,
    GROUP_TYPES,
    archive_key,
    legacy_key,
    session_key,
    summary_key,
    unified_key,
)
from ..session.locks import LocalTurnLocks, TurnLocks
from ..session.reset import ResetPolicy
from ..session.text import clean_text, clean_value
from ..session.urls import open_history_store
from .compaction import Compaction

__all__ = [
    "APOLOGY",
    "MODEL_STOPPED",
    "READER_STOPPED",
    "BotSessionManager",
    "Responder",
    "TurnStats",
]

log = logging.getLogger("onethread.session")

_MERGED_MAX = 100_000  # accounts remembered as merged (see merge_legacy)

APOLOGY = "Sorry, I could not reach my language model just now. Please try again in a moment."
MODEL_STOPPED = "(the model stopped answering here)"
"""Ends a streamed reply whose model failed after writing part of it."""
READER_STOPPED = "(stopped here)"
"""Ends a streamed reply the person stopped (the web chat's stop button)."""


class TurnStats:
    """What :meth:`BotSessionManager.chat` measured of one turn (for metrics and the turn log).

    ``model_seconds``: time in ``agent.respond`` (0 when it was not reached);
    ``model_failed``: the model raised ``ModelError`` and the apology was returned.
    """

    __slots__ = ("model_failed", "model_seconds")

    def __init__(self) -> None:
        self.model_seconds = 0.0
        self.model_failed = False


class BotSessionManager:
    """Loads history, runs the agent under the turn lock, appends the turn.

    Args:
        store: a history store, a store URL, or ``None`` for the default
            (``sqlite:///$ONETHREAD_HOME/history.db``). Opened lazily.
        identity_resolver: maps platform accounts to a person; ``None`` keeps
            every DM on its legacy ``bot_{platform}_{user_id}`` key.
        max_history: at most this many earlier entries per turn (``None``: as
            many as the token budget holds).
        context_tokens: the prompt budget in tokens (instructions, tool
            schemas, summary, recent entries and the new message); ``None``:
            the agent's ``context_tokens``, else from its model's context
            window (``onethread.agent.tokens``), else 16,000, minus room for
            the reply. Older entries beyond it are folded into a summary
            after the reply is delivered (see ``onethread.bots.compaction``).
        summary_model: the model that writes summaries (a name or a
            ``ModelClient``); ``None``: the agent's own model.
        compaction: ``False`` keeps the budget but never summarises.
        summary_timeout: seconds a summary may take; past it the fold is
            dropped, logged and tried again after later turns.
        reset: when a session starts afresh on its own (``ResetPolicy``:
            ``never`` by default, ``idle`` or ``daily``); a reset archives.
        locks: turn locks (default: in-process); shared back-ends pass theirs.
        blobs: the blob store for attachment bytes, or its URL; ``None``: a
            ``file:`` store under ``ONETHREAD_HOME`` (``memory://`` when the
            history is in memory). Opened lazily.
        transcriber: turns voice notes into text before the turn (``None``:
            ``Transcriber.from_env()``, i.e. ``ONETHREAD_TRANSCRIBE_MODEL``).

    Concurrency: turns on one session key run one at a time, in arrival
    order, whichever bot or platform they come from (``locks``). Different
    keys run concurrently. ``_merged`` (accounts whose legacy history has been
    merged) is touched only on the event loop thread.
    """

    def __init__(
        self,
        store: HistoryStore | str | None = None,
        identity_resolver: IdentityResolverProtocol | None = None,
        max_history: int | None = None,
        *,
        locks: TurnLocks | None = None,
        blobs: BlobStore | str | None = None,
        transcriber: Transcriber | None = None,
        context_tokens: int | None = None,
        summary_model: ModelClient | str | None = None,
        compaction: bool = True,
        summary_timeout: float = 120.0,
        reset: ResetPolicy | None = None,
    ) -> None:
        if identity_resolver is not None and not isinstance(
            identity_resolver, IdentityResolverProtocol
        ):
            raise TypeError(
                "identity_resolver must have resolve(platform, platform_user_id) and "
                f"link(platform, platform_user_id, unified_user_id); got {identity_resolver!r}"
            )
        if max_history is not None and max_history < 0:
            raise ValueError("max_history must be >= 0 (or None: as the token budget allows)")
        self._store_arg = store
        self._store: HistoryStore | None = store if not isinstance(store, str | None) else None
        self.identity_resolver = identity_resolver
        self.max_history = max_history
        # Not `locks or ...`: lock sets have a length, and an empty one is falsy.
        self.locks: TurnLocks = locks if locks is not None else LocalTurnLocks()
        self._merged: set[tuple[str, str, str]] = set()
        # mirror_to_session calls made inside the loop, still writing (loop thread only).
        self.pending_mirrors: set[asyncio.Task[bool]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._blobs_arg = blobs
        self._blobs: BlobStore | None = blobs if not isinstance(blobs, str | None) else None
        self.transcriber = transcriber if transcriber is not None else Transcriber.from_env()
        # Which of blobs= / on_delta= each responder's respond() takes (by type, asked once).
        self._takes: dict[type, tuple[bool, bool]] = {}
        # Framework agents given to chat() directly, wrapped once: id -> (agent, wrapper).
        # The agent is held so its id is not reused while the entry lives.
        self._wrapped: dict[int, tuple[object, Responder]] = {}
        self._plain: set[type] = set()  # classes as_responder() returned as they are
        self.reset_policy = reset if reset is not None else ResetPolicy()
        #: The token budget and the summaries (``onethread.bots.compaction``).
        self.compaction = Compaction(
            self,
            context_tokens=context_tokens,
            summary_model=summary_model,
            summary_timeout=summary_timeout,
            enabled=compaction,
        )

    # -- plumbing --------------------------------------------------------------

    @property
    def blobs(self) -> BlobStore:
        """The blob store for attachment bytes (opened on first use)."""
        if self._blobs is None:
            url = self._blobs_arg if isinstance(self._blobs_arg, str) else None
            if url is None and _in_memory(self._store_arg, self._store):
                url = "memory://"
            self._blobs = open_blob_store(url)
        return self._blobs

    async def _transcribed(self, attachments: Sequence[Attachment]) -> tuple[Attachment, ...]:
        """``attachments`` with voice notes and audio transcribed (once; failures logged)."""
        if self.transcriber is None:
            return tuple(attachments)
        out = []
        for a in attachments:
            if a.kind in ("voice", "audio") and a.blob and not a.transcript:
                try:
                    data = await self.blobs.get(a.blob)
                    text = await self.transcriber.transcribe(data, name=a.name, mime=a.mime)
                except (ModelError, StoreError) as exc:
                    log.warning("could not transcribe %s: %s", a.blob, exc)
                else:
                    a = a.with_(transcript=text)
            out.append(a)
        return tuple(out)

    async def store_files(self, items: Sequence[File | Attachment]) -> tuple[Attachment, ...]:
        """Outgoing files as stored attachments: ``File`` bytes go into :attr:`blobs`.

        An ``Attachment`` must already be stored (``blob`` set); ``ValueError``
        otherwise, and ``TypeError`` for anything but the two.
        """
        out: list[Attachment] = []
        for item in items:
            if isinstance(item, File):
                blob = await self.blobs.put(item.data)
                out.append(Attachment(item.kind, item.mime, item.name, len(item.data), blob))
            elif isinstance(item, Attachment):
                if not item.blob:
                    raise ValueError(
                        f"attachment {item.name or item.kind!r} has no blob: send a "
                        "onethread.File(path_or_bytes) instead, or store the bytes first"
                    )
                out.append(item)
            else:
                raise TypeError(
                    f"attachments must be onethread.File or Attachment, not {type(item).__name__}"
                )
        return tuple(out)

    async def file_bytes(self, attachments: Sequence[Attachment]) -> list[tuple[Attachment, bytes]]:
        """Each stored attachment with its bytes, read from :attr:`blobs`."""
        return [(a, await self.blobs.get(a.blob)) for a in attachments]

    async def _respond(
        self,
        agent: Responder,
        history: Sequence[HistoryEntry],
        message: HistoryEntry,
        group: bool,
        on_delta: OnDelta | None = None,
    ) -> str:
        if not message.attachments and on_delta is None:
            return await agent.respond(history, message, group=group)
        kind = type(agent)
        takes = self._takes.get(kind)
        if takes is None:
            try:
                params = inspect.signature(agent.respond).parameters
                takes = ("blobs" in params, "on_delta" in params)
            except (TypeError, ValueError):
                takes = (False, False)
            self._takes[kind] = takes
        extra: dict[str, Any] = {}
        if takes[0] and message.attachments:
            extra["blobs"] = self.blobs
        if takes[1] and on_delta is not None:
            extra["on_delta"] = on_delta
        respond: Any = agent.respond
        reply: str = await respond(history, message, group=group, **extra)
        if on_delta is not None and not takes[1] and reply:
            await on_delta(reply)  # a responder that cannot stream: its reply in one piece
        return reply

    @property
    def store(self) -> HistoryStore:
        """The history store (opened on first use)."""
        if self._store is None:
            url = self._store_arg if isinstance(self._store_arg, str) else None
            self._store = open_history_store(url)
        return self._store

    def bind_loop(self) -> None:
        """Remember the running loop, so ``mirror_to_session`` from threads can reach it."""
        self.loop = asyncio.get_running_loop()

    def resolve(self, platform: str, user_id: str) -> str | None:
        """The sender's unified id (``platform:user_id`` if unlinked); ``None`` with no resolver."""
        if self.identity_resolver is None:
            return None
        return self.identity_resolver.resolve(platform, user_id)

    def key_for(
        self,
        user_id: str,
        *,
        platform: str,
        chat_id: str = "",
        chat_type: str = DM,
        thread_id: str = "",
    ) -> str:
        """The session key of this sender in this chat (see ``onethread.session.keys``)."""
        unified = self.resolve(platform, user_id) if chat_type not in GROUP_TYPES else None
        return session_key(
            platform=platform,
            user_id=user_id,
            chat_type=chat_type,
            chat_id=chat_id,
            thread_id=thread_id,
            unified_user_id=unified,
        )

    def forget_merge(self, platform: str, user_id: str) -> None:
        """Forget that this account's legacy history was merged (it was unlinked), so
        what it writes while unlinked is merged again if it is linked again."""
        self._merged = {m for m in self._merged if m[:2] != (platform, user_id)}

    async def merge_legacy(self, platform: str, user_id: str, unified: str) -> None:
        """Move the account's pre-link DM history into the person's session, once."""
        marker = (platform, user_id, unified)
        if marker in self._merged:
            return
        src, dst = legacy_key(platform, user_id), unified_key(unified)
        async with self.locks.hold(src), self.locks.hold(dst):
            moved = await self.store.merge(src, dst)
        self.compaction.forget(dst)  # older entries came in: count the session again
        if moved:
            log.info("merged %d legacy entries of %s into %s", moved, who(platform, user_id), dst)
        if len(self._merged) >= _MERGED_MAX:  # a memo, not a record: forgetting costs a
            self._merged.clear()  # no-op merge, while remembering every account forever
        self._merged.add(marker)  # would grow without bound (~300 bytes each)

    # -- the turn --------------------------------------------------------------

    def _responder(self, agent: object) -> Responder:
        """``agent`` as a Responder (``onethread.agent.as_responder``), wrapped once per agent."""
        if type(agent) in self._plain:
            return agent  # type: ignore[return-value]  # checked once per class: the hot path
        found = self._wrapped.get(id(agent))
        if found is not None and found[0] is agent:
            return found[1]
        responder = as_responder(agent)
        if responder is agent:
            self._plain.add(type(agent))
            return responder
        if len(self._wrapped) >= 64:  # a handful of agents in practice; never unbounded
            self._wrapped.pop(next(iter(self._wrapped)))
        self._wrapped[id(agent)] = (agent, responder)
        return responder

    async def chat(
        self,
        agent: Responder | object,
        user_id: str,
        prompt: str,
        *,
        platform: str,
        chat_id: str = "",
        chat_type: str = DM,
        chat_name: str = "",
        thread_id: str = "",
        user_name: str = "",
        message_id: str = "",
        attachments: Sequence[Attachment] = (),
        deliver: Callable[..., Awaitable[Mapping[str, Any] | None]] | None = None,
        on_delta: OnDelta | None = None,
        stats: TurnStats | None = None,
    ) -> str:
        """Run one turn and return the reply.

        Resolves the sender, takes the session's turn lock, sets the
        ``SessionContext`` for the agent's tools, loads the latest summary and
        the recent entries that fit the token budget (``compaction.load``),
        asks the agent, and appends the user message and the reply in one
        transaction; older entries are folded into the summary afterwards when
        they outgrow the budget (never in front of the reply). If the model fails (``ModelError``)
        the user's message is still stored and a short apology is returned
        (not delivered, not stored: the caller sends it). ``stats``, when
        given, receives the model's time and whether it failed.

        ``agent`` is anything ``Bot(agent=...)`` accepts: an ``Agent``, a
        Responder, or a framework's agent (wrapped, see ``onethread.agent``);
        anything else is a ``TypeError`` naming what is accepted.

        ``deliver`` (optional) sends the reply; it runs under the turn lock
        before the turn is stored. When it raises, the turn is stored anyway,
        the reply marked ``metadata["delivery"] == "failed"`` with
        ``metadata["delivery_error"]`` (the error's class name), and the error
        is re-raised. A mapping ``deliver`` returns becomes the reply's metadata
        (``{"delivery": "cut"}``: only the first part was sent). Without
        ``deliver`` the caller sends the returned reply.

        ``attachments`` (stored in :attr:`blobs` already) are kept with the
        message; voice notes are transcribed first when a transcriber is set.
        Files the agent's tools return (``onethread.File``) are stored and kept
        with the reply; ``deliver`` then gets them too:
        ``deliver(reply, files=[(attachment, bytes), ...])``.

        ``on_delta`` (optional) streams the reply: it is awaited with each piece
        of text as the model writes it (a responder that cannot stream gives
        its whole reply as one piece), and ``deliver`` then gets the final
        text. The reply is stored once, whole. When the model fails after
        writing part of the reply, the reply is what was written plus
        :data:`MODEL_STOPPED` (``metadata["stopped"] == "model"``), delivered and
        stored like any reply; when ``on_delta`` raises ``ReplyStopped`` (the
        reader stopped it), the same with :data:`READER_STOPPED`
        (``"reader"``). A failure before any text is the usual apology.

        Lone surrogates in any string become U+FFFD (``onethread.session.text``).
        """
        responder = self._responder(agent)
        if self.loop is None:
            self.bind_loop()
        texts = (user_id, prompt, chat_id, chat_name, thread_id, user_name, message_id)
        if not _all_ascii(texts):  # the usual turn is all ASCII: nothing to clean
            user_id, prompt, chat_id, chat_name, thread_id, user_name, message_id = map(
                clean_text, texts
            )
        unified = self.resolve(platform, user_id)
        group = chat_type in GROUP_TYPES
        key = session_key(
            platform=platform,
            user_id=user_id,
            chat_type=chat_type,
            chat_id=chat_id,
            thread_id=thread_id,
            unified_user_id=None if group else unified,
        )
        if (
            not group
            and unified is not None
            and key.startswith("user:")
            and (platform, user_id, unified) not in self._merged  # the check, without a call
        ):
            await self.merge_legacy(platform, user_id, unified)
        ctx = SessionContext(
            platform=platform,
            chat_id=chat_id,
            chat_name=chat_name,
            thread_id=thread_id,
            user_id=user_id,
            user_name=user_name,
            unified_user_id=unified if unified is not None else unlinked_id(platform, user_id),
            message_id=message_id,
            chat_type=chat_type,
        )
        files = await self._transcribed(attachments) if attachments else ()
        fold_due = False
        try:
            async with self.locks.hold(key):
                token = set_session_context(ctx)
                try:
                    if self.reset_policy.active:
                        await self._reset_if_due(key)
                    message = HistoryEntry(
                        role="user",
                        content=prompt,
                        timestamp=time.time(),
                        platform=platform,
                        chat_id=chat_id,
                        user_id=user_id,
                        user_name=user_name,
                        message_id=message_id,
                        attachments=files,
                    )
                    history, due = await self.compaction.load(key, responder, message)
                    written: list[str] = []
                    relay: OnDelta | None = None
                    if on_delta is not None:
                        stream_to = on_delta

                        async def relay(piece: str) -> None:
                            written.append(piece)
                            await stream_to(piece)

                    stopped: dict[str, str] = {}
                    asked = time.perf_counter()
                    try:
                        with turn_files() as produced:
                            if relay is None and not files:  # the usual turn, without a hop
                                reply = await responder.respond(history, message, group=group)
                            else:
                                reply = await self._respond(
                                    responder, history, message, group, relay
                                )
                        sent = await self.store_files(produced) if produced else ()
                    except ModelError as exc:
                        if stats is not None:
                            stats.model_seconds = time.perf_counter() - asked
                            stats.model_failed = True
                        log.error(
                            "model failed for %s (%s): %s", masked(platform, key), platform, exc
                        )
                        if not "".join(written).strip():
                            await self.store.append(key, [message])
                            return APOLOGY
                        reply, sent, stopped = (
                            _cut_short(written, MODEL_STOPPED),
                            (),
                            {"stopped": "model"},
                        )
                    except ReplyStopped:
                        log.info("reply for %s stopped by the reader", masked(platform, key))
                        reply, sent = _cut_short(written, READER_STOPPED), ()
                        stopped = {"stopped": "reader"}
                    if stats is not None:
                        stats.model_seconds = time.perf_counter() - asked
                    stamp = max(time.time(), message.timestamp)
                    undelivered: BaseException | None = None
                    outcome: Mapping[str, Any] | None = None
                    if deliver is not None and reply:
                        # Sent before the turn is stored, under the turn lock: the reply is
                        # stored once, in the turn's one transaction, with how delivery went.
                        try:
                            if sent:
                                outcome = await deliver(reply, files=await self.file_bytes(sent))
                            else:
                                outcome = await deliver(reply)
                        except BaseException as exc:  # re-raised below, once the turn is stored
                            undelivered = exc
                    answer = HistoryEntry(
                        role="assistant",
                        content=reply,
                        timestamp=stamp,
                        platform=platform,
                        chat_id=chat_id,
                        metadata={
                            **stopped,
                            **(delivery_failed(undelivered) if undelivered is not None else {}),
                            **(outcome or {}),
                        },
                        attachments=sent,
                    )
                    await self.store.append(key, [message, answer])
                    fold_due = due
                    if undelivered is not None:
                        raise undelivered
                    return reply
                finally:
                    clear_session_context(token)
        finally:
            if fold_due:  # after the turn, never in front of its reply
                self.compaction.schedule(key, responder)

    async def _reset_if_due(self, key: str) -> None:
        """Archive ``key`` (the turn lock is held) when the reset policy says it is stale."""
        newest = await self.store.load(key, 1)
        if newest and self.reset_policy.due(newest[-1].timestamp, time.time()):
            moved = await self.store.merge(key, archive_key(key))
            await self.store.merge(summary_key(key), archive_key(key))
            log.info("session reset (%s): archived %d entries", self.reset_policy.reset, moved)

    # -- mirror ----------------------------------------------------------------

    def mirror_key(self, user_id: str) -> str:
        """The DM key a mirrored message for ``user_id`` lands in.

        ``user_id`` is a unified id (``"alice"``) or an unlinked account in the
        resolver's form (``"telegram:12345"``).
        """
        platform, sep, account = user_id.partition(":")
        if not sep:
            return unified_key(user_id)
        # An account given by platform id may be linked by now: its DM lives with the person.
        unified = self.resolve(platform, account)
        if unified is not None and unified != user_id:
            return unified_key(unified)
        return legacy_key(platform, account)

    async def mirror(
        self,
        user_id: str,
        text: str,
        *,
        source: str = "delivery",
        metadata: Mapping[str, Any] | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> None:
        """Append text the bot sent on its own to ``user_id``'s history, under the turn lock.

        ``attachments`` (already in :attr:`blobs`) are the files sent with it;
        the text may then be empty. Lone surrogates in the text, ids and
        metadata become U+FFFD (``onethread.session.text``).
        """
        if not isinstance(text, str) or not (text or attachments):
            raise ValueError("mirror text must be a non-empty string")
        user_id, text, source = clean_text(user_id), clean_text(text), clean_text(source)
        meta = clean_value(dict(metadata or {}))
        key = self.mirror_key(user_id)
        async with self.locks.hold(key):
            # Stamped under the lock: a mirror that waited for a turn sorts after it.
            entry = HistoryEntry(
                role="assistant",
                content=text,
                timestamp=time.time(),
                platform=str(meta.get("platform", "")),
                chat_id=str(meta.get("chat_id", "")),
                mirror=True,
                source=source,
                metadata=meta,
                attachments=tuple(attachments),
            )
            await self.store.append(key, [entry])

    # -- reading and managing sessions ----------------------------------------

    async def history(
        self,
        user_id: str,
        *,
        platform: str,
        chat_id: str = "",
        chat_type: str = DM,
        thread_id: str = "",
        limit: int | None = None,
    ) -> list[HistoryEntry]:
        """The stored entries of this sender's session in this chat, oldest first."""
        key = self.key_for(
            user_id, platform=platform, chat_id=chat_id, chat_type=chat_type, thread_id=thread_id
        )
        return await self.store.load(key, limit)

    async def reset(
        self,
        user_id: str,
        *,
        platform: str,
        chat_id: str = "",
        chat_type: str = DM,
        thread_id: str = "",
    ) -> int:
        """Start this session afresh (a linked person: everywhere). Returns entries archived.

        Nothing is deleted: the entries and their summaries move to
        ``archive_key(key)`` (kept, not loaded into the model; ``history show
        --archived``, ``export`` and ``forget`` include them).
        """
        key = self.key_for(
            user_id, platform=platform, chat_id=chat_id, chat_type=chat_type, thread_id=thread_id
        )
        return await self.archive(key)

    async def archive(self, key: str) -> int:
        """Move session ``key`` (entries and summaries) to its archive; return entries moved."""
        async with self.locks.hold(key):
            moved = await self.store.merge(key, archive_key(key))
            await self.store.merge(summary_key(key), archive_key(key))
        if moved:
            log.info("archived %d entries of %s", moved, key.split(":", 1)[0])
        return moved

    async def compact(
        self,
        agent: Responder | object,
        user_id: str,
        *,
        platform: str,
        chat_id: str = "",
        chat_type: str = DM,
        thread_id: str = "",
    ) -> int:
        """Fold this session's older entries into its summary now (``/compact``).

        Everything but the last exchange is folded, by ``agent``'s model (or
        ``summary_model``). Returns how many entries were folded; raises
        ``ModelError`` or ``TimeoutError`` when the summariser fails.
        """
        key = self.key_for(
            user_id, platform=platform, chat_id=chat_id, chat_type=chat_type, thread_id=thread_id
        )
        return await self.compaction.fold(key, self._responder(agent), force=True)

    def _person_keys(self, unified_user_id: str) -> list[str]:
        keys = [self.mirror_key(unified_user_id)]
        links_for = getattr(self.identity_resolver, "links_for", None)
        if links_for is not None and ":" not in unified_user_id:
            links: list[IdentityLink] = links_for(unified_user_id)
            keys += [legacy_key(link.platform, link.platform_user_id) for link in links]
        return [k for key in keys for k in (key, summary_key(key), archive_key(key))]

    async def export(self, unified_user_id: str) -> dict[str, Any]:
        """Everything stored of one person, as JSON-able data.

        ``links``: the person's linked accounts (``platform``,
        ``platform_user_id``, ``linked_at``; empty for an unlinked
        ``platform:id`` or a resolver without ``links_for``). ``sessions``: the
        unified session and the legacy sessions of each linked account
        (normally empty once merged), each with its summaries under
        ``{key}#summary`` (``role="summary"``) and what ``/new`` archived under
        ``{key}#archived``. Group chats belong to the group and are not
        included.
        """
        links_for = getattr(self.identity_resolver, "links_for", None)
        links: list[IdentityLink] = []
        if links_for is not None and ":" not in unified_user_id:
            links = await asyncio.to_thread(links_for, unified_user_id)
        sessions = {}
        for key in self._person_keys(unified_user_id):
            entries = await self.store.load(key)
            if entries:
                sessions[key] = [e.to_dict() for e in entries]
        return {
            "user": unified_user_id,
            "exported_at": time.time(),
            "links": [
                {
                    "platform": x.platform,
                    "platform_user_id": x.platform_user_id,
                    "linked_at": x.linked_at,
                }
                for x in sorted(links, key=lambda x: (x.platform, x.platform_user_id))
            ],
            "sessions": sessions,
        }

    async def forget(self, unified_user_id: str) -> int:
        """Delete every DM session of this person (all linked accounts), with its summaries
        and archives. Returns entries removed.

        Identity links are kept; unlink them separately if wanted.
        """
        removed = 0
        for key in self._person_keys(unified_user_id):
            async with self.locks.hold(key):
                removed += await self.store.clear(key)
        return removed

    async def last_seen(
        self, unified_user_id: str, platform: str | None = None
    ) -> HistoryEntry | None:
        """The person's most recent own message (where they last talked to the bot);
        with ``platform``, their most recent one on that platform (of the last 500)."""
        depth = 50 if platform is None else 500
        for entry in reversed(await self.store.load(self.mirror_key(unified_user_id), depth)):
            if entry.role == "user" and entry.platform and platform in (None, entry.platform):
                return entry
        return None

    # -- scheduled prompts ---------------------------------------------------------

    async def scheduled_turn(
        self,
        agent: Responder,
        unified_user_id: str,
        prompt: str,
        *,
        platform: str,
        chat_id: str,
        user_id: str = "",
        source: str = "cron",
    ) -> str:
        """Ask ``agent`` for the reply to a scheduled ``prompt`` in the person's session.

        Runs under the person's turn lock with a ``SessionContext`` naming the
        delivery ``platform``/``chat_id`` and ``source``. Stores nothing (the
        caller records the turn once it knows whether the reply was
        delivered: :meth:`record_scheduled_turn`). ``ModelError`` propagates.
        """
        key = self.mirror_key(unified_user_id)
        ctx = SessionContext(
            platform=platform,
            chat_id=chat_id,
            user_id=user_id,
            unified_user_id=unified_user_id,
            chat_type=DM,
            source=source,
        )
        async with self.locks.hold(key):
            token = set_session_context(ctx)
            try:
                message = HistoryEntry(
                    role="user", content=prompt, timestamp=time.time(), source=source
                )
                history, _due = await self.compaction.load(key, agent, message)
                return await agent.respond(history, message, group=False)
            finally:
                clear_session_context(token)

    async def record_scheduled_turn(
        self,
        unified_user_id: str,
        prompt: str,
        reply: str,
        *,
        source: str,
        metadata: Mapping[str, Any],
    ) -> None:
        """Append a scheduled prompt and its reply (both with ``source`` and ``metadata``)."""
        meta = dict(metadata)
        key = self.mirror_key(unified_user_id)
        async with self.locks.hold(key):
            now = time.time()
            entries = [
                HistoryEntry(role="user", content=prompt, timestamp=now, source=source,
                             metadata=meta),
                HistoryEntry(role="assistant", content=reply, timestamp=now,
                             platform=str(meta.get("platform", "")),
                             chat_id=str(meta.get("chat_id", "")), source=source, metadata=meta),
            ]  # fmt: skip
            await self.store.append(key, entries)

    async def close(self) -> None:
        """Finish pending mirrors and folds (up to 10 s each), then close the stores it opened."""
        await self.compaction.close()
        if self.pending_mirrors:
            await asyncio.wait(set(self.pending_mirrors), timeout=10.0)
        if self._store is not None:
            await self._store.close()
        if self._blobs is not None and self._blobs is not self._blobs_arg:
            await self._blobs.close()
        if self.transcriber is not None:
            await self.transcriber.aclose()


def _all_ascii(texts: tuple[str, ...]) -> bool:
    """Whether every one of ``texts`` is an ASCII ``str`` (then ``clean_text`` keeps each)."""
    try:
        return "".join(texts).isascii()
    except TypeError:  # not all str: clean_text says what is wrong
        return False


def _in_memory(store_arg: object, store: object) -> bool:
    if isinstance(store_arg, str):
        return store_arg.startswith("memory:")
    from ..session.history.memory import MemoryHistoryStore

    return isinstance(store, MemoryHistoryStore)


def _cut_short(written: Sequence[str], note: str) -> str:
    """What a stopped stream wrote, then ``note`` on its own paragraph."""
    text = "".join(written).rstrip()
    return f"{text}\n\n{note}" if text else note
