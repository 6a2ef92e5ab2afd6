"""Token counting without downloads: an estimate, corrected by what the endpoint reports.

tiktoken would fetch its encodings from the network on first use, so nothing
here tokenizes. :func:`estimate` counts about one token per 4 characters
(plus a few per message, as chat formats add); :func:`observe` records the
``usage.prompt_tokens`` an endpoint reported for a request whose estimate was
known, and later estimates for that model are scaled by the observed ratio
(kept in memory, per model name, never below 0.5 nor above 3).

:data:`CONTEXT_WINDOWS` maps model-name prefixes to their context windows in
tokens; :func:`context_window` looks a name up (longest prefix wins) and
:func:`default_budget` turns it into a prompt budget, keeping
:data:`REPLY_ROOM` free for the answer. Unknown models get
:data:`DEFAULT_CONTEXT` (16,000). Override an entry by assigning
``CONTEXT_WINDOWS["my-model"] = 32_000``, or pass ``context_tokens=``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CONTEXT_WINDOWS",
    "DEFAULT_CONTEXT",
    "REPLY_ROOM",
    "context_window",
    "correction",
    "default_budget",
    "estimate",
    "estimate_messages",
    "forget_corrections",
    "generation",
    "observe",
]

DEFAULT_CONTEXT = 16_000
"""The context window assumed for a model not in :data:`CONTEXT_WINDOWS`."""

REPLY_ROOM = 0.2
"""The share of the context window kept free for the reply (at most 8,192 tokens)."""


class _Windows(dict[str, int]):
    """:data:`CONTEXT_WINDOWS`: a dict that counts its changes in :func:`generation`."""

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(key, value)
        _changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        _changed()

    def __ior__(self, other: Any) -> _Windows:  # type: ignore[override,misc]
        super().__ior__(other)
        _changed()
        return self

    def update(self, *args: Any, **kwargs: int) -> None:
        super().update(*args, **kwargs)
        _changed()

    def pop(self, *args: Any) -> Any:
        try:
            return super().pop(*args)
        finally:
            _changed()

    def popitem(self) -> tuple[str, int]:
        try:
            return super().popitem()
        finally:
            _changed()

    def setdefault(self, key: str, default: int = 0) -> int:
        try:
            return super().setdefault(key, default)
        finally:
            _changed()

    def clear(self) -> None:
        super().clear()
        _changed()


CONTEXT_WINDOWS: dict[str, int] = _Windows(
    {
        "gpt-4.1": 1_047_576,
        "gpt-4o": 128_000,
        "gpt-4-turbo": 128_000,
        "gpt-4": 8_192,
        "gpt-3.5-turbo": 16_385,
        "gpt-5": 400_000,
        "o1": 200_000,
        "o3": 200_000,
        "o4-mini": 200_000,
        "claude": 200_000,
        "gemini": 1_000_000,
        "llama3": 8_192,
        "llama3.1": 128_000,
        "llama3.2": 128_000,
        "mistral": 32_000,
        "qwen2.5": 32_768,
        "deepseek": 64_000,
    }
)
"""Context windows in tokens by model-name prefix (the longest matching prefix wins)."""

_PER_MESSAGE = 4  # role and separators each chat message costs
_lock = threading.Lock()
_ratios: dict[str, float] = {}
_generation = [0]  # bumped (under _lock) when a correction or CONTEXT_WINDOWS changes


def _changed() -> None:
    with _lock:
        _generation[0] += 1


def generation() -> tuple[int, float, int]:
    """Changes whenever a budget or correction computed before may differ now: a
    correction learned or forgotten, :data:`CONTEXT_WINDOWS` changed, or
    :data:`REPLY_ROOM` / :data:`DEFAULT_CONTEXT` reassigned. Callers that keep a
    budget compare it (``Compaction``)."""
    return (_generation[0], REPLY_ROOM, DEFAULT_CONTEXT)


_budgets: dict[str, int] = {}  # default_budget's answers, valid for _budgets_for
_budgets_for: tuple[int, float, int] = (-1, -1.0, -1)


def estimate(text: str) -> int:
    """About how many tokens ``text`` is (1 per 4 characters, at least 1 when non-empty)."""
    return (len(text) + 3) // 4


def estimate_messages(messages: Iterable[Mapping[str, Any]], tools: Iterable[Any] = ()) -> int:
    """The uncorrected estimate of a chat request: each message's text, plus tool schemas."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts: count the text ones, images as 85
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    total += estimate(str(part.get("text") or ""))
                else:
                    total += 85
        elif content:
            total += estimate(str(content))
        if message.get("tool_calls"):
            total += estimate(json.dumps(message["tool_calls"]))
        total += _PER_MESSAGE
    tools = list(tools)
    if tools:
        total += estimate(json.dumps(tools))
    return total


def correction(model: str) -> float:
    """The factor estimates for ``model`` are scaled by (1.0 until the endpoint reported usage)."""
    with _lock:
        return _ratios.get(model, 1.0)


def observe(model: str, estimated: int, prompt_tokens: int | None) -> None:
    """Learn from one request: ``estimated`` (uncorrected) against the reported ``prompt_tokens``.

    A moving average of the ratio, so one odd request does not swing it.
    """
    if not model or not prompt_tokens or estimated <= 0:
        return
    ratio = min(max(prompt_tokens / estimated, 0.5), 3.0)
    with _lock:
        old = _ratios.get(model)
        _ratios[model] = ratio if old is None else old * 0.7 + ratio * 0.3
        _generation[0] += 1


def context_window(model: str) -> int | None:
    """``model``'s context window from :data:`CONTEXT_WINDOWS`, or ``None`` when unknown."""
    name = model.strip().lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" -> "gpt-4o"
    best = ""
    for prefix in CONTEXT_WINDOWS:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return CONTEXT_WINDOWS[best] if best else None


def default_budget(model: str | None) -> int:
    """The prompt budget for ``model``: its window (else 16,000) minus room for the reply."""
    global _budgets_for
    name = model or ""
    # Asked on every turn: answered from _budgets (under _lock) while generation() is
    # what it was when they were computed.
    now = generation()
    with _lock:
        if _budgets_for != now:
            _budgets.clear()
            _budgets_for = now
        budget = _budgets.get(name)
    if budget is None:
        window = context_window(name) or DEFAULT_CONTEXT
        budget = window - min(int(window * REPLY_ROOM), 8_192)
        with _lock:
            if _budgets_for == now and len(_budgets) < 256:  # a few names; never unbounded
                _budgets[name] = budget
    return budget


def forget_corrections() -> None:
    """Drop every learned correction (tests; a model whose tokenizer changed)."""
    with _lock:
        _ratios.clear()
        _generation[0] += 1
