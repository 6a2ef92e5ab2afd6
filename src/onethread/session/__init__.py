"""The platform-free core: session context, identity, session keys, history, turn locks.

Nothing here imports ``onethread.bots`` or ``onethread.platforms``. Resolvers
and stores that need an optional driver (Redis, PostgreSQL) are imported only
when their name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .context import (
    SessionContext,
    clear_session_context,
    get_session_context,
    set_session_context,
)
from .identity.base import IdentityLink, IdentityResolverProtocol, unlinked_id

__all__ = [
    "FileIdentityResolver",
    "IdentityLink",
    "IdentityResolverProtocol",
    "InMemoryIdentityResolver",
    "PostgresIdentityResolver",
    "RedisIdentityResolver",
    "SQLiteIdentityResolver",
    "SessionContext",
    "clear_session_context",
    "get_session_context",
    "set_session_context",
    "unlinked_id",
]

_LAZY = {
    "InMemoryIdentityResolver": ".identity.memory",
    "FileIdentityResolver": ".identity.file",
    "SQLiteIdentityResolver": ".identity.sqlite",
    "RedisIdentityResolver": ".identity.redis",
    "PostgresIdentityResolver": ".identity.postgres",
}

if TYPE_CHECKING:
    from .identity.file import FileIdentityResolver
    from .identity.memory import InMemoryIdentityResolver
    from .identity.postgres import PostgresIdentityResolver
    from .identity.redis import RedisIdentityResolver
    from .identity.sqlite import SQLiteIdentityResolver


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onethread.session' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
