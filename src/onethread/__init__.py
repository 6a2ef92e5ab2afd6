"""onethread: one AI agent on every messaging platform, one conversation per person.

``import onethread`` stays light: it imports no platform SDK and no model client
until a name that needs one is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Agent", "File", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .agent import Agent
    from .agent.files import File


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from .agent import Agent

        return Agent
    if name == "File":
        from .agent.files import File

        return File
    raise AttributeError(f"module 'onethread' has no attribute {name!r}")
