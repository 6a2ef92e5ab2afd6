"""Stored history entries -> the chat messages a model gets, in an order strict providers accept."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..session.history.base import DELIVERY_CUT, HistoryEntry
from .attachments import with_attachments

__all__ = [
    "CUT_SHORT",
    "EARLIER_CONVERSATION",
    "SUMMARY_LABEL",
    "UNDELIVERED",
    "build_messages",
    "entry_text",
]

EARLIER_CONVERSATION = "(earlier conversation)"
"""The user message put first when the kept history starts with the assistant."""

UNDELIVERED = "NOT DELIVERED: sending this to the person failed"
"""The label of an entry whose send failed for good (``HistoryEntry.undelivered``)."""

CUT_SHORT = "SENT CUT SHORT: too long, the person got only the first part of this"
"""The label of a reply that was sent only in part (``metadata["delivery"] == "cut"``)."""

SUMMARY_LABEL = "SUMMARY of the earlier conversation"
"""The label of a folded summary (``role="summary"``, see ``onethread.agent.summary``)."""

_EMPTY_MESSAGE = "(empty message)"


def entry_text(entry: HistoryEntry, *, group: bool = False) -> str:
    """The text one entry contributes to the model's view.

    Mirrored entries (sent by the bot on its own) are labelled with their
    source, e.g. ``[sent by the bot on its own via cron] Reminder: ...``; in a
    group, user text is attributed ``[user_name] text`` (user id if no name).
    Attachments follow, one line each (``[voice note] what was said``).
    Text whose delivery failed is labelled ``[NOT DELIVERED: ...]``, and a
    reply sent only in part ``[SENT CUT SHORT: ...]``, so the model does not
    assume the person read it all. A summary (``role="summary"``) is
    labelled ``[SUMMARY of the earlier conversation, <first> to <last>]``.
    """
    if entry.role == "summary":
        covers = entry.metadata.get("covers") or [entry.timestamp, entry.timestamp]
        span = " to ".join(time.strftime("%Y-%m-%d", time.gmtime(float(t))) for t in covers[:2])
        return f"[{SUMMARY_LABEL}, {span}]\n{entry.content}"
    if entry.undelivered:
        error = entry.metadata.get("delivery_error") or "error"
        inner = replace(entry, metadata={})
        return f"[{UNDELIVERED} ({error})] {entry_text(inner, group=group)}"
    if entry.metadata and entry.metadata.get("delivery") == DELIVERY_CUT:
        inner = replace(entry, metadata={})
        return f"[{CUT_SHORT}] {entry_text(inner, group=group)}"
    content = (
        with_attachments(entry.content, entry.attachments) if entry.attachments else entry.content
    )
    if entry.mirror:
        via = f" via {entry.source}" if entry.source else ""
        return f"[sent by the bot on its own{via}] {content}"
    if group and entry.role == "user":
        who = entry.user_name or entry.user_id
        if who:
            return f"[{who}] {content}"
    return content


def build_messages(
    instructions: str,
    history: Sequence[HistoryEntry],
    message: HistoryEntry,
    *,
    group: bool = False,
) -> list[dict[str, Any]]:
    """Build the model's messages: system, the history, then the new user ``message``.

    Guarantees, so strict providers accept the list: a system message only if
    ``instructions`` is non-blank, then messages alternating ``user`` /
    ``assistant``, the first and the last being ``user``. Entries whose role is
    not ``"user"`` and every mirrored entry become assistant messages; blank
    entries are dropped; neighbours of one role are merged with a blank line.
    ``message`` is always the user's, whatever its ``role`` field says.
    """
    # The hot path of every turn: plain entries are handled inline, without a
    # function call or a copied entry each (a 20-entry history took 8 us).
    roles: list[str] = []
    texts: list[str] = []
    last = ""
    for entry in history:
        content = entry.content
        if entry.attachments:
            content = with_attachments(content, entry.attachments)
        elif not content or content.isspace():  # the same test as `not content.strip()`
            continue
        if (
            entry.mirror
            or entry.role == "summary"
            or (entry.metadata and "delivery" in entry.metadata)
        ):
            role = "user" if entry.role == "user" and not entry.mirror else "assistant"
            text = entry_text(entry, group=group)
        elif entry.role == "user":
            role, text = "user", entry_text(entry, group=True) if group else content
        else:
            role, text = "assistant", content
        if role == last:
            texts[-1] = f"{texts[-1]}\n\n{text}"
        else:
            roles.append(role)
            texts.append(text)
            last = role
    content = message.content
    if message.attachments:
        content = with_attachments(content, message.attachments)
    elif not content or content.isspace():
        content = _EMPTY_MESSAGE
    if group:  # as entry_text() of the message with role "user" and mirror False
        who = message.user_name or message.user_id
        if who:
            content = f"[{who}] {content}"
    if last == "user":
        texts[-1] = f"{texts[-1]}\n\n{content}"
    else:
        roles.append("user")
        texts.append(content)
    if roles[0] != "user":
        roles.insert(0, "user")
        texts.insert(0, EARLIER_CONVERSATION)
    result: list[dict[str, Any]] = []
    if instructions.strip():
        result.append({"role": "system", "content": instructions})
    result += [{"role": role, "content": text} for role, text in zip(roles, texts, strict=True)]
    return result
