"""Where onethread keeps its files: ``$ONETHREAD_HOME`` (default ``~/.onethread``).

A module of its own so that the stores and resolvers that default to a file
under it need not import :mod:`.urls` (which opens them): no import cycle.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["onethread_home"]


def onethread_home() -> Path:
    """``$ONETHREAD_HOME`` or ``~/.onethread``, read now (not at import)."""
    return Path(os.environ.get("ONETHREAD_HOME") or "~/.onethread").expanduser()
