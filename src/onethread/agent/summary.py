"""Folding older history into a summary entry: the prompt, the call, the offline extract.

A summary is a ``HistoryEntry`` with ``role="summary"`` and metadata:

- ``covers``: ``[first, last]`` timestamps of everything it replaces (all the
  folds so far: a summary is updated, never summarised again);
- ``folded``: ``[first, last, count]`` of the entries this fold added;
- ``platforms``: the platforms those entries came from;
- ``kind``: ``"summary"`` (written by a model, ``model`` names it) or
  ``"extract"`` (no model: the person's own messages verbatim, newest first).

Its ``timestamp`` is ``covers[1]``: entries after it are the unsummarised part.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..errors import ModelError
from ..session.history.base import HistoryEntry
from .messages import entry_text
from .models import ModelClient
from .tokens import estimate

__all__ = [
    "EXTRACT_HEADER",
    "SUMMARY_ROLE",
    "SUMMARY_SYSTEM",
    "extract",
    "provenance_line",
    "summarise",
    "summary_entry",
]

SUMMARY_ROLE = "summary"
"""``HistoryEntry.role`` of a summary."""

SUMMARY_SYSTEM = (
    "You keep the running summary of one person's conversation with an assistant. "
    "You get the PREVIOUS SUMMARY (possibly empty) and NEW MESSAGES that follow it. "
    "Write the UPDATED SUMMARY: keep everything in the previous summary that is still true, "
    "change what the new messages changed, and add what they add. Do not summarise the "
    "summary: update it. Copy verbatim, never paraphrase: names, numbers, amounts, dates, "
    "times, addresses, commitments and promises (who will do what, by when), the person's "
    "preferences, and open questions not yet answered. Keep where things came from: the "
    "platform and date, and for text the bot sent on its own its source, e.g. 'reminder "
    "sent by cron on telegram, 3 May'; for files, what they were. Write plain lines, newest "
    "facts last, at most {words} words. Answer with the summary only."
)
"""The system prompt of a fold (``{words}``: the summary's length limit)."""

EXTRACT_HEADER = (
    "(Extract, not a summary: no language model was available to summarise, so these are "
    "the person's own earlier messages, verbatim, newest first.)"
)
"""The first line of an offline extract."""


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def provenance_line(entry: HistoryEntry) -> str:
    """One entry as a line for the summariser, with when, where and who it came from."""
    where = entry.platform or "unknown platform"
    if entry.mirror:
        who = f"{entry.source or 'message'} sent by the bot on its own on {where}"
    elif entry.role == "user":
        who = f"person{f' ({entry.user_name})' if entry.user_name else ''} on {where}"
    elif entry.role == SUMMARY_ROLE:
        who = "earlier summary"
    else:
        who = f"assistant on {where}"
    return f"[{_day(entry.timestamp)} UTC, {who}] {entry_text(entry)}"


def summary_entry(
    text: str,
    folded: Sequence[HistoryEntry],
    previous: HistoryEntry | None,
    *,
    kind: str,
    model: str = "",
) -> HistoryEntry:
    """The summary entry replacing ``previous`` (if any) and the ``folded`` entries."""
    first, last = folded[0].timestamp, folded[-1].timestamp
    covers_from = first
    if previous is not None:
        covers_from = float(previous.metadata.get("covers", [first])[0])
    meta: dict[str, Any] = {
        "covers": [covers_from, last],
        "folded": [first, last, len(folded)],
        "platforms": sorted({e.platform for e in folded if e.platform}),
        "kind": kind,
    }
    if model:
        meta["model"] = model
    return HistoryEntry(role=SUMMARY_ROLE, content=text, timestamp=last, metadata=meta)


async def summarise(
    model: ModelClient, previous: HistoryEntry | None, entries: Sequence[HistoryEntry], words: int
) -> str:
    """Ask ``model`` for the updated summary; ``ModelError`` when it fails or says nothing."""
    before = previous.content if previous is not None else "(none yet)"
    lines = "\n".join(provenance_line(e) for e in entries)
    messages = [
        {"role": "system", "content": SUMMARY_SYSTEM.format(words=words)},
        {
            "role": "user",
            "content": f"PREVIOUS SUMMARY:\n{before}\n\nNEW MESSAGES:\n{lines}\n\nUPDATED SUMMARY:",
        },
    ]
    reply = await model.complete(messages, [])
    text = reply.content.strip()
    if not text:
        raise ModelError("the model returned an empty summary")
    return text


def extract(previous: HistoryEntry | None, entries: Sequence[HistoryEntry], tokens: int) -> str:
    """The offline fold: the person's own messages, newest first, verbatim, up to ``tokens``.

    Earlier extract lines follow the new ones; whole lines are dropped (oldest
    first) once ``tokens`` is reached, never cut.
    """
    new = [provenance_line(e) for e in reversed(entries) if e.role == "user" and not e.mirror]
    old: list[str] = []
    if previous is not None:
        old = [line for line in previous.content.splitlines()[1:] if line.strip()]
    kept = [EXTRACT_HEADER]
    used = estimate(EXTRACT_HEADER)
    for line in new + old:
        cost = estimate(line) + 1
        if used + cost > tokens:
            break
        kept.append(line)
        used += cost
    return "\n".join(kept)
