"""Access policy: who may talk to the agent at all."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..platforms.base import Inbound

__all__ = ["AccessPolicy"]


@runtime_checkable
class AccessPolicy(Protocol):
    """Decides, before commands and the agent, whether a sender is served.

    ``check`` returns ``None`` to serve the message, ``""`` to drop it silently,
    or a short text to send back instead of the agent's answer.
    """

    async def check(self, msg: Inbound) -> str | None:
        """``None``: serve; ``""``: drop; text: refuse with that reply."""
        ...
