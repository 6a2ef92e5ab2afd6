"""Store URLs, one syntax everywhere.

==========================  ==========================  =========================
URL                         history                     identity
==========================  ==========================  =========================
``memory://``               MemoryHistoryStore          InMemoryIdentityResolver
``file:PATH``               (not a history store)       FileIdentityResolver
``sqlite:///PATH``          SQLiteHistoryStore          SQLiteIdentityResolver
``redis://HOST:PORT/DB``    RedisHistoryStore           RedisIdentityResolver
``redis+cluster://H:P,...`` RedisHistoryStore           RedisIdentityResolver
``postgresql://...``        PostgresHistoryStore        PostgresIdentityResolver
==========================  ==========================  =========================

``redis+cluster://HOST:PORT[,HOST:PORT...]/`` (``rediss+cluster://`` for TLS)
is a Redis Cluster: the same classes, with hash-tagged keys (see
``onethread.session._conn.redis``).

``sqlite:///relative.db`` is relative to the working directory,
``sqlite:////abs/path.db`` absolute, and ``~`` is expanded. The defaults live
under ``ONETHREAD_HOME`` (default ``~/.onethread``), read when called.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingDependencyError
from ._conn.shared import redact
from .home import onethread_home
from .locks import DuplicateFilter, LocalDuplicateFilter, LocalTurnLocks, TurnLocks

__all__ = [
    "ACCEPTED_FORMS",
    "REDIS_SCHEMES",
    "Coordination",
    "open_coordination",
    "default_history_url",
    "default_identity_url",
    "onethread_home",
    "open_history_store",
    "open_identity_resolver",
    "open_job_store",
]

ACCEPTED_FORMS = (
    "memory://, file:PATH (identity only), sqlite:///PATH, redis://HOST:PORT/DB (rediss:// "
    "for TLS), redis+cluster://HOST:PORT,HOST:PORT/ (Redis Cluster), "
    "postgresql://USER@HOST:PORT/DB"
)
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def default_history_url() -> str:
    """``sqlite:///$ONETHREAD_HOME/history.db``."""
    return f"sqlite:///{onethread_home() / 'history.db'}"


def default_identity_url() -> str:
    """``file:$ONETHREAD_HOME/identity.json`` (or ``ONETHREAD_IDENTITY_PATH``)."""
    explicit = os.environ.get("ONETHREAD_IDENTITY_PATH")
    return f"file:{explicit}" if explicit else f"file:{onethread_home() / 'identity.json'}"


def _scheme(url: str, what: str) -> tuple[str, str]:
    if not isinstance(url, str) or ":" not in url:
        raise ConfigError(f"bad {what} store URL {url!r}; accepted forms: {ACCEPTED_FORMS}")
    scheme, _, rest = url.partition(":")
    return scheme.lower(), rest


def _sqlite_path(rest: str, url: str) -> Path:
    if not rest.startswith("///") or len(rest) <= 3:
        raise ConfigError(
            f"bad SQLite URL {url!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    return Path(rest[3:]).expanduser()


def _optional(module: str, name: str, extra: str, what: str) -> Any:
    try:
        return getattr(importlib.import_module(module, __package__), name)
    except ImportError as exc:
        if exc.name and exc.name.startswith("onethread"):
            raise
        raise MissingDependencyError(what, extra) from exc


def open_history_store(url: str | None = None, **options: Any) -> Any:
    """Open the history store for ``url`` (default: SQLite under ``ONETHREAD_HOME``).

    Raises ``ConfigError`` naming the accepted forms for a bad URL, and
    ``MissingDependencyError`` when the driver is not installed.
    """
    url = url or default_history_url()
    scheme, rest = _scheme(url, "history")
    if scheme == "memory":
        from .history.memory import MemoryHistoryStore

        return MemoryHistoryStore()
    if scheme == "sqlite":
        from .history.sqlite import SQLiteHistoryStore

        return SQLiteHistoryStore(_sqlite_path(rest, url))
    if scheme in REDIS_SCHEMES:
        cls = _optional(".history.redis", "RedisHistoryStore", "redis", "the Redis store")
        return cls(url, **options)
    if scheme in ("postgresql", "postgres"):
        cls = _optional(".history.postgres", "PostgresHistoryStore", "postgres", "PostgreSQL")
        return cls(url, **options)
    if scheme == "file":
        raise ConfigError(
            f"{url!r}: file: URLs are for identity only; use sqlite:///PATH for history"
        )
    raise ConfigError(f"bad history store URL {redact(url)!r}; accepted forms: {ACCEPTED_FORMS}")


def open_identity_resolver(url: str | None = None, **options: Any) -> Any:
    """Open the identity resolver for ``url`` (default: the JSON file under ``ONETHREAD_HOME``)."""
    url = url or default_identity_url()
    scheme, rest = _scheme(url, "identity")
    if scheme == "memory":
        from .identity.memory import InMemoryIdentityResolver

        return InMemoryIdentityResolver()
    if scheme == "file":
        from .identity.file import FileIdentityResolver

        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ConfigError(f"bad identity URL {url!r}: write file:/path/to/identity.json")
        return FileIdentityResolver(Path(path).expanduser())
    if scheme == "sqlite":
        from .identity.sqlite import SQLiteIdentityResolver

        return SQLiteIdentityResolver(_sqlite_path(rest, url))
    if scheme in REDIS_SCHEMES:
        cls = _optional(".identity.redis", "RedisIdentityResolver", "redis", "the Redis resolver")
        return cls(url, **options)
    if scheme in ("postgresql", "postgres"):
        cls = _optional(
            ".identity.postgres", "PostgresIdentityResolver", "postgres", "the PostgreSQL resolver"
        )
        return cls(url, **options)
    raise ConfigError(f"bad identity store URL {redact(url)!r}; accepted forms: {ACCEPTED_FORMS}")


def open_job_store(url: str | None = None, **options: Any) -> Any:
    """Open the scheduled-job store that goes with the history store ``url``.

    ``memory://`` keeps jobs in memory; ``sqlite:///DIR/NAME.db`` keeps them
    in ``DIR/NAME.jobs.db`` next to the history; a Redis or PostgreSQL URL
    keeps them on the same server (prefix / schema from ``options``), so every
    host sees one schedule. Errors as :func:`open_history_store`.
    """
    url = url or default_history_url()
    scheme, rest = _scheme(url, "job")
    if scheme == "memory":
        from .jobs.memory import MemoryJobStore

        return MemoryJobStore()
    if scheme == "sqlite":
        from .jobs.sqlite import SQLiteJobStore

        path = _sqlite_path(rest, url)
        return SQLiteJobStore(path.with_name(f"{path.stem}.jobs.db"), **options)
    if scheme in REDIS_SCHEMES:
        cls = _optional(".jobs.redis", "RedisJobStore", "redis", "the Redis job store")
        return cls(url, **options)
    if scheme in ("postgresql", "postgres"):
        cls = _optional(".jobs.postgres", "PostgresJobStore", "postgres", "PostgreSQL jobs")
        return cls(url, **options)
    raise ConfigError(f"bad job store URL {redact(url)!r}; accepted forms: {ACCEPTED_FORMS}")


@dataclass(frozen=True, slots=True)
class Coordination:
    """What several hosts must share besides history: turn locks, the duplicate
    filter and (for cross-host delivery) the outbox. ``shared`` is False for
    the in-process defaults (``memory://``, ``sqlite:///``), whose ``outbox``
    is None."""

    locks: TurnLocks
    duplicates: DuplicateFilter
    outbox: Any  # onethread.session.outbox.Outbox | None
    shared: bool

    async def close(self) -> None:
        """Release the connections of the shared parts."""
        for part in (self.locks, self.duplicates, self.outbox):
            close = getattr(part, "close", None)
            if close is not None:
                await close()


def open_coordination(url: str | None, **options: Any) -> Coordination:
    """Turn locks, duplicate filter and outbox for a history store URL.

    A Redis or PostgreSQL URL gets the shared versions on the same server (so
    several hosts serve one set of users); anything else the in-process ones.
    ``options`` (e.g. ``prefix=`` on Redis, ``schema=`` on PostgreSQL) go to
    each shared part, as they go to the history store of the same URL.
    """
    scheme = url.partition(":")[0].lower() if url else ""
    if scheme in REDIS_SCHEMES:
        locks_mod = _optional(".locks.redis", "RedisTurnLocks", "redis", "Redis turn locks")
        filt = _optional(".locks.redis", "RedisDuplicateFilter", "redis", "Redis")
        outbox = _optional(".outbox.redis", "RedisOutbox", "redis", "the Redis outbox")
        assert url is not None
        return Coordination(
            locks_mod(url, **options), filt(url, **options), outbox(url, **options), True
        )
    if scheme in ("postgresql", "postgres"):
        locks_mod = _optional(".locks.postgres", "PostgresTurnLocks", "postgres", "PostgreSQL")
        filt = _optional(".locks.postgres", "PostgresDuplicateFilter", "postgres", "PostgreSQL")
        outbox = _optional(".outbox.postgres", "PostgresOutbox", "postgres", "PostgreSQL")
        assert url is not None
        return Coordination(
            locks_mod(url, **options), filt(url, **options), outbox(url, **options), True
        )
    return Coordination(LocalTurnLocks(), LocalDuplicateFilter(), None, False)
