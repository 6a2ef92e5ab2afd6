"""Long conversations: loading history for a token budget, and folding the past into summaries.

The manager's turn calls :meth:`Compaction.load` (under the turn lock): the
session's latest summary (kept under ``summary_key(key)``) and, read from the
newest entry backwards in growing pages, the unsummarised entries that fit the
budget. Its cost depends on the budget, not on how many entries the session
holds. When the unsummarised part has grown past 85 % of what the
budget leaves for history, the turn asks for a fold: :meth:`schedule` starts
a task that, once the turn is done, reads what to fold under the person's turn
lock (shared by every host when the locks are), lets the summariser write the
updated summary with no turn lock held (one fold per session at a time, under
the lock ``summary_key(key)``), and appends it under the turn lock again: no
turn sees half a fold, and none waits for the model. A fold never runs in
front of a reply;
one that fails or times out is logged and tried again after the next turns
(``max_failures`` in a row, then once per ``cooldown`` seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..agent import tokens
from ..agent.attachments import inline_tokens
from ..agent.messages import entry_text
from ..agent.models import ModelClient
from ..agent.models_offline import OfflineModel
from ..agent.summary import extract, summarise, summary_entry
from ..errors import ModelError, StoreError
from ..session.history.base import HistoryEntry
from ..session.keys import archive_key, summary_key

if TYPE_CHECKING:
    from .manager import BotSessionManager

__all__ = ["Compaction"]

log = logging.getLogger("onethread.session")

_FIRST_PAGE = 32
_PROMPT_ROOM = 600  # the fold prompt's own text, in tokens
_TRIGGER = 0.85  # fold when the unsummarised part passes this share of the history room
_KEEP = 0.35  # and keep this share of it unfolded (the latest exchanges, verbatim)


def _first_size(cap: int | None) -> int:
    """How many entries the first page of a history scan reads. With a cap, one more
    than the cap: whether it exists says whether more were left out, without a
    count() of the whole session on every turn."""
    return _FIRST_PAGE if cap is None else min(_FIRST_PAGE, cap + 1)


class Compaction:
    """The budget and the summaries of one :class:`BotSessionManager` (its ``compaction``).

    ``context_tokens``: the prompt budget (``None``: the agent's
    ``context_tokens``, else ``onethread.agent.tokens.default_budget`` of its
    model). ``summary_model``: the model that writes summaries (``None``: the
    agent's ``summary_model``, else its own model; an agent without one, and
    the offline model, get the honest extract). ``enabled=False`` loads for the
    budget but never folds.
    """

    def __init__(
        self,
        manager: BotSessionManager,
        *,
        context_tokens: int | None = None,
        summary_model: ModelClient | str | None = None,
        summary_timeout: float = 120.0,
        enabled: bool = True,
        max_failures: int = 3,
        cooldown: float = 600.0,
    ) -> None:
        if context_tokens is not None and context_tokens < 256:
            raise ValueError(f"context_tokens must be at least 256, got {context_tokens}")
        self.manager = manager
        self.context_tokens = context_tokens
        self._summary_arg = summary_model
        self._summary_model: ModelClient | None = (
            summary_model if not isinstance(summary_model, str | None) else None
        )
        self.summary_timeout = summary_timeout
        self.enabled = enabled
        self.max_failures = max_failures
        self.cooldown = cooldown
        self.pending: dict[str, asyncio.Task[int]] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (in a row, when last)
        # Per responder (by id): what its room was computed from, and the room.
        self._rooms: dict[int, tuple[object, object, object, tuple[object, ...], int]] = {}
        self._last_summary: tuple[HistoryEntry, int] | None = None
        # Per session key: (summary end, newest entry counted, tokens of the unsummarised
        # part), for sessions longer than max_history (see _tallied_over). Loop thread only.
        self._tallies: dict[str, tuple[float, float, int]] = {}
        #: Folds done and failed by this process (for tests and metrics).
        self.folds = 0
        self.failures = 0

    # -- the budget ----------------------------------------------------------------

    def budget(self, responder: object) -> int:
        """The prompt budget for ``responder``'s requests, in tokens."""
        if self.context_tokens is not None:
            return self.context_tokens
        own = getattr(responder, "context_tokens", None)
        if isinstance(own, int) and own > 0:
            return own
        return tokens.default_budget(_model_name(responder) or None)

    def _history_room(self, responder: object, summary: HistoryEntry | None, message: str) -> int:
        """Uncorrected tokens left for history entries once the fixed parts are counted."""
        room = self._base_room(responder) - tokens.estimate(message) - 8
        if summary is not None:
            room -= self._summary_cost(summary)
        return room

    def _base_room(self, responder: object) -> int:
        """The budget, corrected, less the responder's instructions and tool schemas.

        Kept per responder (``_rooms``, touched on the loop thread only) while what it
        was computed from is the same: the very instruction, schema and model objects,
        the model's name, both ``context_tokens`` and ``tokens.generation()`` (the
        corrections and the context window table). A turn does not re-count them.
        """
        instructions = getattr(responder, "instructions", "")
        schemas = getattr(responder, "_schemas", None)
        model = getattr(responder, "model", None)
        facts = (
            getattr(model, "model", None),
            getattr(responder, "context_tokens", None),
            self.context_tokens,
            len(schemas) if isinstance(schemas, list) else -1,
            tokens.generation(),
        )
        known = self._rooms.get(id(responder))
        if (
            known is not None
            and known[0] is instructions
            and known[1] is schemas
            and known[2] is model
            and known[3] == facts
        ):
            return known[4]
        ratio = tokens.correction(_model_name(responder))
        usable = self.budget(responder) * 0.95 - 32  # the estimate's margin of error
        fixed = tokens.estimate(str(instructions or "")) + 8
        if schemas:
            fixed += tokens.estimate(json.dumps(schemas))
        room = int(usable / ratio) - fixed
        if isinstance(instructions, str):  # anything else may change in place: not kept
            if len(self._rooms) >= 64:  # a handful of responders in practice; never unbounded
                self._rooms.pop(next(iter(self._rooms)))
            self._rooms[id(responder)] = (instructions, schemas, model, facts, room)
        return room

    def _summary_cost(self, summary: HistoryEntry) -> int:
        """``_cost(summary)``, kept for the last summary object seen (it is loaded every turn)."""
        known = self._last_summary
        if known is not None and known[0] is summary:
            return known[1]
        cost = _cost(summary)
        self._last_summary = (summary, cost)
        return cost

    async def _summary(self, key: str) -> HistoryEntry | None:
        found = await self.manager.store.load(summary_key(key), 1)
        return found[-1] if found else None

    async def load(
        self, key: str, responder: object, message: HistoryEntry
    ) -> tuple[list[HistoryEntry], bool]:
        """The history the model sees (summary first) and whether a fold is due.

        Reads newest first in pages (32, then up to 4x larger, as many as the budget
        left seems to hold) and stops at the budget,
        at the summary's end, or at ``max_history`` entries.
        """
        # The hot path of every turn: _summary() and _history_room(), inline.
        cap = self.manager.max_history
        store = self.manager.store
        first: list[HistoryEntry] | None = None
        many = getattr(store, "load_many", None)  # a store reading both in one command
        if many is not None:
            found, first = await many([(summary_key(key), 1), (key, _first_size(cap))])
        else:
            found = await store.load(summary_key(key), 1)
        mine = tokens.estimate(message.content)
        plain = not (message.mirror or message.attachments or message.metadata)
        room = self._base_room(responder) - 8
        room -= mine if plain else tokens.estimate(entry_text(message))
        if message.attachments:  # small text files inline and image parts (content_parts)
            room -= inline_tokens(message.attachments)
        if found:
            summary: HistoryEntry | None = found[-1]
            room -= self._summary_cost(found[-1])
            after = found[-1].timestamp
        else:
            summary, after = None, float("-inf")
        picked, used, full = await self._scan(key, after, room, cap, first)
        due = False
        if self.enabled:
            if used + mine > room * _TRIGGER or (full and (cap is None or len(picked) < cap)):
                due = True  # what is shown is near the budget, or the budget left some out
            elif full:  # max_history left some out: the budget counts them too
                limit = room * _TRIGGER - mine
                over = self._tallied_over(key, after, picked, limit)
                if over is None:
                    newest = picked[-1].timestamp if picked else after
                    over = await self._count_hidden(key, after, newest, limit)
                due = over
        return ([summary] + picked if summary is not None else picked), due

    def _tallied_over(
        self, key: str, after: float, shown: list[HistoryEntry], limit: float
    ) -> bool | None:
        """Whether the whole unsummarised part of ``key`` (newer than ``after``, also what
        ``max_history`` left out) costs more than ``limit``; ``None`` when that must be
        counted again (:meth:`_count_hidden`).

        Counted once by reading back from the newest entry (up to ``limit``), then kept
        per key (``_tallies``) and brought up to date from the entries newer than the
        last ones counted, which are among ``shown``: entries written by other
        processes count too. A new summary (a new ``after``), a gap (more new
        entries than ``shown`` holds) or a merge (:meth:`forget`) means counting again.
        """
        tally = self._tallies.pop(key, None)
        if tally is None or not shown or tally[0] != after:
            return None
        _after, last, total = tally
        if shown[0].timestamp > last:
            return None
        for entry in reversed(shown):
            if entry.timestamp <= last:
                break
            total += _cost(entry)
        self._keep_tally(key, after, shown[-1].timestamp, total)
        return total > limit

    async def _count_hidden(self, key: str, after: float, newest: float, limit: float) -> bool:
        """:meth:`_tallied_over` by reading the session back (up to ``limit``);
        ``newest``: the timestamp of its newest entry, shown this turn."""
        _picked, total, over = await self._scan(key, after, limit, None)
        if over:  # past the limit: kept as such until a fold changes the summary
            total = int(limit) + 1
        self._keep_tally(key, after, newest, total)
        return total > limit

    def _keep_tally(self, key: str, after: float, newest: float, total: int) -> None:
        if len(self._tallies) >= 10_000:  # the least recently counted goes first
            self._tallies.pop(next(iter(self._tallies)))
        self._tallies[key] = (after, newest, total)

    async def _scan(
        self,
        key: str,
        after: float,
        room: float,
        cap: int | None,
        first: list[HistoryEntry] | None = None,
    ) -> tuple[list[HistoryEntry], int, bool]:
        """Entries newer than ``after`` fitting ``room`` (oldest first), their cost, and
        whether more were left out (by ``room`` or ``cap``). ``first``: the first page
        (``_first_size(cap)`` newest entries) when already loaded."""
        size = _first_size(cap)
        page = first if first is not None else await self.manager.store.load(key, size)
        if (
            page
            and page[0].timestamp > after
            and (len(page) < size or cap is not None and size > cap)
        ):
            # The usual turn: the first page is all unsummarised and holds all we may show.
            # If it fits, it is the answer (no entry-by-entry walk).
            full = cap is not None and len(page) > cap
            shown = page[len(page) - cap :] if full and cap is not None else page
            used = _costs(shown)
            if used <= room:
                return shown, used, full
        while True:
            picked: list[HistoryEntry] = []
            used = 0
            stop = full = False
            for entry in reversed(page):
                if entry.timestamp <= after:
                    stop = True
                    break
                cost = _cost(entry)
                if used + cost > room or (cap is not None and len(picked) >= cap):
                    stop = full = True
                    break
                picked.append(entry)
                used += cost
            if stop or len(page) < size or (cap is not None and size > cap):
                picked.reverse()
                return picked, used, full
            grow = size * 4
            if used > 0:
                # No more than the room left holds at this page's average cost, and a
                # quarter more: a long session is not read 4x past the budget.
                want = len(page) + int((room - used) * len(picked) / used * 1.25) + 1
                grow = min(grow, max(want, size + _FIRST_PAGE))
            size = grow if cap is None else min(grow, cap + 1)
            page = await self.manager.store.load(key, size)

    def forget(self, key: str) -> None:
        """Drop what is kept about ``key`` (its tally): entries older than the ones
        counted came in (a merge), so the next turn counts the session afresh."""
        self._tallies.pop(key, None)

    # -- folding -------------------------------------------------------------------

    def schedule(self, key: str, responder: object) -> None:
        """Fold ``key`` soon, under its turn lock, unless a fold is pending or paused."""
        if not self.enabled or key in self.pending:
            return
        failed, when = self._failures.get(key, (0, 0.0))
        if failed >= self.max_failures and time.monotonic() - when < self.cooldown:
            return
        task = asyncio.get_running_loop().create_task(self._background(key, responder))
        self.pending[key] = task
        task.add_done_callback(lambda _t: self.pending.pop(key, None))

    async def _background(self, key: str, responder: object) -> int:
        try:
            return await self.fold(key, responder)
        except (ModelError, StoreError, TimeoutError) as exc:
            failed = self._failures.get(key, (0, 0.0))[0] + 1
            self._failures[key] = (failed, time.monotonic())
            self.failures += 1
            log.warning(
                "summary of %s failed (%d in a row; %s): %s",
                key.split(":", 1)[0],
                failed,
                "tried again after the next turn"
                if failed < self.max_failures
                else f"paused {self.cooldown:g}s",
                exc,
            )
            return 0
        except Exception:  # a bug or a lost lock: logged, counted, retried like a failure
            failed = self._failures.get(key, (0, 0.0))[0] + 1
            self._failures[key] = (failed, time.monotonic())
            self.failures += 1
            log.exception("summary of %s failed unexpectedly", key.split(":", 1)[0])
            return 0

    async def fold(self, key: str, responder: object, *, force: bool = False) -> int:
        """Fold the older unsummarised entries of ``key`` now; return how many were folded.

        Without ``force``, only when the unsummarised part is past 85 % of the
        history room (keeping the newest 35 % verbatim); with it (``/compact``), everything but
        the last exchange. One fold per session at a time on every host (the
        lock ``summary_key(key)``); the turn lock is held only to read what to
        fold and to write the summary, never while the model writes it, so the
        person's next turn does not wait for a summary. A summary whose session
        was archived (``/new``) or folded elsewhere meanwhile is dropped.
        Raises ``ModelError`` (the summariser failed), ``TimeoutError`` (it
        took over ``summary_timeout``) or ``StoreError``; what was folded
        before the failure stays folded.
        """
        async with self.manager.locks.hold(summary_key(key)):
            folded = await self._fold(key, responder, force)
        self._failures.pop(key, None)
        if folded:
            self.folds += 1
        return folded

    async def _plan(
        self, key: str, responder: object, force: bool
    ) -> tuple[HistoryEntry | None, list[HistoryEntry], int]:
        """Under the turn lock: the latest summary, what to fold, and the archive's size."""
        summary = await self._summary(key)
        budget = self.budget(responder)
        room = self._history_room(responder, summary, "x" * 1024)  # room for a typical message
        after = summary.timestamp if summary is not None else float("-inf")
        # At most four budgets of the newest unsummarised entries: a long history that
        # predates compaction is summarised from its newest part (the rest stays stored).
        fresh, _used, _more = await self._scan(key, after, budget * 4, None)
        archived = await self.manager.store.count(archive_key(key))
        cap = self.manager.max_history
        total = sum(_cost(e) for e in fresh)
        if not fresh or (not force and total <= room * _TRIGGER):
            return summary, [], archived
        keep_room = 0 if force else room * _KEEP
        keep_count = 2 if force else (max(cap // 2, 1) if cap is not None else len(fresh))
        kept = 0
        used = 0
        for entry in reversed(fresh):
            cost = _cost(entry)
            if kept >= keep_count or (used + cost > keep_room and not (force and kept < 2)):
                break
            kept += 1
            used += cost
        cut = len(fresh) - kept
        # Entries sharing the boundary's timestamp go together: "after" is a timestamp.
        while 0 < cut < len(fresh) and fresh[cut].timestamp == fresh[cut - 1].timestamp:
            cut += 1
        return summary, fresh[:cut], archived

    async def _fold(self, key: str, responder: object, force: bool) -> int:
        async with self.manager.locks.hold(key):
            summary, to_fold, archived = await self._plan(key, responder, force)
        if not to_fold:
            return 0
        budget = self.budget(responder)
        summary_tokens = max(budget // 4, 64)
        model, name = self._summariser(responder)
        chunk_room = max(budget - summary_tokens - _PROMPT_ROOM, 256)
        done = 0
        for chunk in _chunks(to_fold, chunk_room):
            if model is None:
                text = extract(summary, chunk, summary_tokens)
                kind = "extract"
            else:
                words = summary_tokens * 3 // 4
                text = await asyncio.wait_for(
                    summarise(model, summary, chunk, words), self.summary_timeout
                )
                text = _fit(text, summary_tokens, key)
                kind = "summary"
            entry = summary_entry(text, chunk, summary, kind=kind, model=name)
            async with self.manager.locks.hold(key):
                latest = await self._summary(key)
                moved = await self.manager.store.count(archive_key(key)) != archived
                if moved or _ident(latest) != _ident(summary):
                    log.info("a fold of %s was dropped: the session changed", key.split(":")[0])
                    return done
                await self.manager.store.append(summary_key(key), [entry])
            summary = entry
            done += len(chunk)
        log.info("folded %d entries of %s into its summary", done, key.split(":", 1)[0])
        return done

    def _summariser(self, responder: object) -> tuple[ModelClient | None, str]:
        model: object = self._summary_model
        if model is None and isinstance(self._summary_arg, str):
            from ..agent.models_openai import OpenAIModel

            model = self._summary_model = OpenAIModel(self._summary_arg)
        if model is None:
            model = getattr(responder, "summary_model", None) or getattr(responder, "model", None)
        if model is None or isinstance(model, OfflineModel) or not isinstance(model, ModelClient):
            return None, ""
        return model, str(getattr(model, "model", "") or type(model).__name__)

    async def close(self) -> None:
        """Let pending folds finish (up to 10 s), then cancel what is left."""
        tasks = list(self.pending.values())
        if not tasks:
            return
        _done, left = await asyncio.wait(tasks, timeout=10.0)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)


def _ident(entry: HistoryEntry | None) -> tuple[float, str] | None:
    return None if entry is None else (entry.timestamp, entry.content)


def _cost(entry: HistoryEntry) -> int:
    if not (entry.mirror or entry.attachments or entry.metadata):
        # A plain entry's text is its content (entry_text adds nothing): the hot path of
        # every turn, without building the labelled text of each loaded entry.
        return tokens.estimate(entry.content) + 4
    return tokens.estimate(entry_text(entry)) + 4


def _costs(entries: Sequence[HistoryEntry]) -> int:
    """The summed ``_cost`` of ``entries`` (plain ones inline: a turn's hot path)."""
    return sum(
        [
            (len(e.content) + 3) // 4 + 4
            if not (e.mirror or e.attachments or e.metadata)
            else _cost(e)
            for e in entries
        ]
    )


def _chunks(entries: Sequence[HistoryEntry], room: int) -> list[list[HistoryEntry]]:
    """``entries`` in runs of at most ``room`` tokens each (one entry at least per run)."""
    out: list[list[HistoryEntry]] = []
    run: list[HistoryEntry] = []
    used = 0
    for entry in entries:
        cost = _cost(entry) + 16  # its provenance label
        if run and used + cost > room:
            out.append(run)
            run, used = [], 0
        run.append(entry)
        used += cost
    if run:
        out.append(run)
    return out


def _fit(text: str, limit: int, key: str) -> str:
    """``text`` cut to ``limit`` tokens at a line end (logged): the budget must hold."""
    if tokens.estimate(text) <= limit:
        return text
    log.warning("the summary of %s ran over %d tokens; its last lines were cut", key, limit)
    kept: list[str] = []
    used = 0
    for line in text.splitlines():
        cost = tokens.estimate(line) + 1
        if used + cost > limit:
            break
        kept.append(line)
        used += cost
    return "\n".join(kept) if kept else text[: limit * 4]


def _model_name(responder: object) -> str:
    model: Any = getattr(responder, "model", None)
    name = getattr(model, "model", None)
    return name if isinstance(name, str) else ""
