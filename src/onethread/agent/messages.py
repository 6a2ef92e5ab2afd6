"""Stored history entries -> the chat messages a model gets, in an order strict providers accept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..session.history.base import HistoryEntry

__all__ = ["EARLIER_CONVERSATION", "build_messages", "entry_text"]

EARLIER_CONVERSATION = "(earlier conversation)"
"""The user message put first when the kept history starts with the assistant."""

_EMPTY_MESSAGE = "(empty message)"


def entry_text(entry: HistoryEntry, *, group: bool = False) -> str:
    """The text one entry contributes to the model's view.

    Mirrored entries (sent by the bot on its own) are labelled with their
    source, e.g. ``[sent by the bot on its own via cron] Reminder: ...``; in a
    group, user text is attributed ``[user_name] text`` (user id if no name).
    """
    if entry.mirror:
        via = f" via {entry.source}" if entry.source else ""
        return f"[sent by the bot on its own{via}] {entry.content}"
    if group and entry.role == "user":
        who = entry.user_name or entry.user_id
        if who:
            return f"[{who}] {entry.content}"
    return entry.content


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
    turns: list[tuple[str, str]] = []
    for entry in history:
        if not entry.content.strip():
            continue
        role = "user" if entry.role == "user" and not entry.mirror else "assistant"
        _add(turns, role, entry_text(entry, group=group))
    content = message.content if message.content.strip() else _EMPTY_MESSAGE
    new = replace(message, role="user", mirror=False, content=content)
    _add(turns, "user", entry_text(new, group=group))
    if turns[0][0] != "user":
        turns.insert(0, ("user", EARLIER_CONVERSATION))
    result: list[dict[str, Any]] = []
    if instructions.strip():
        result.append({"role": "system", "content": instructions})
    result.extend({"role": role, "content": text} for role, text in turns)
    return result


def _add(turns: list[tuple[str, str]], role: str, text: str) -> None:
    if turns and turns[-1][0] == role:
        turns[-1] = (role, f"{turns[-1][1]}\n\n{text}")
    else:
        turns.append((role, text))
