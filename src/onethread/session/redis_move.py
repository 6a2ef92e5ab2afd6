"""Copy a deployment from one Redis server into a Redis Cluster (``onethread redis-to-cluster``).

A single server keeps the untagged key layout; a cluster needs the
hash-tagged one (see :mod:`onethread.session._conn.redis`). Copying keys as
they are (``redis-cli --cluster import``) would give the cluster data its
scripts cannot run, which the stores refuse to open. :func:`copy_to_cluster`
copies every key under one prefix, renaming it into the cluster layout:

=====================================  ============================================
single server (``P`` = prefix)         cluster
=====================================  ============================================
``P history:entries:KEY``              ``P history:entries:{KEY}`` (``{KEY}#archived``
                                       for ``KEY#archived``: the tag is the part
                                       before ``#``), members unchanged
``P history:platforms:KEY``            ``P history:platforms:{KEY}``
``P history:seq`` (global)             ``P history:seq:{KEY}`` per session, each set
                                       to the global value, so a later entry with
                                       an equal timestamp still sorts after them
``P history:sessions``                 the same name
``P identity:links`` / ``:version``    ``P {identity}:links`` / ``P {identity}:version``
``P jobs:*``                           ``P {jobs}:*``
``P outbox:*`` (streams, groups,       ``P {outbox}:*`` (pending entries are delivered
pending entries, attempts, dead)       again by the cluster's hosts: drain first)
``P lock:KEY:fence``                   ``P lock:{KEY}:fence`` (fencing tokens keep
                                       increasing)
``P seen:ID``                          the same name, with its remaining TTL
``P history:layout`` ...               ``cluster:N``, written last
=====================================  ============================================

Values are copied whole with ``DUMP``/``RESTORE`` (a stream keeps its
consumer group and pending list), so nothing is re-encoded or reinterpreted.

Rules that keep it safe:

* every host must be stopped: a live turn lock (``P lock:KEY`` with a TTL)
  is refused with the key named;
* the cluster prefix must be fresh: if it already has a layout marker (a host
  opened it), nothing is copied;
* the layout markers are written last, so a copy cut short is not mistaken
  for a finished one; running it again finishes it (``RESTORE ... REPLACE``
  writes the same values again);
* keys under the prefix that belong to no onethread component are not
  copied and are listed in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError
from ._conn.redis import (
    RedisError,
    is_cluster,
    redact,
    redis,
    session_tag,
    store_error,
    sync_client,
    validate_prefix,
)
from .history.redis import LAYOUT_VERSION as HISTORY_LAYOUT
from .identity.redis import LAYOUT_VERSION as IDENTITY_LAYOUT
from .jobs.redis import LAYOUT as JOBS_LAYOUT

__all__ = ["MoveReport", "copy_to_cluster"]

_LAYOUTS = {"history": HISTORY_LAYOUT, "identity": IDENTITY_LAYOUT, "jobs": JOBS_LAYOUT}


@dataclass
class MoveReport:
    """What :func:`copy_to_cluster` did: keys copied per component, and the
    keys under the prefix it left alone (not onethread's)."""

    copied: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    skipped: list[str] = field(default_factory=list)

    def count(self, component: str) -> None:
        self.copied[component] = self.copied.get(component, 0) + 1


def _target(prefix: str, name: str, ttl_ms: int) -> tuple[str, str | None]:
    """(component, cluster key name or None to not copy) of source key ``prefix + name``."""
    comp, _, rest = name.partition(":")
    if comp == "history":
        if rest in ("layout", "seq"):
            return comp, None  # written afterwards
        if rest == "sessions":
            return comp, prefix + name
        kind, _, key = rest.partition(":")
        if kind in ("entries", "platforms") and key:
            return comp, f"{prefix}history:{kind}:{session_tag(key, True)}"
    elif comp in ("identity", "jobs", "outbox") and rest:
        if rest == "layout":
            return comp, None
        return comp, f"{prefix}{{{comp}}}:{rest}"
    elif comp == "lock" and rest:
        key, sep, last = rest.rpartition(":")
        if ttl_ms > 0:  # a held lock (fences never expire): a host is running
            raise StoreError(
                f"turn lock {prefix + name!r} is held: stop every host (or wait for its lease "
                "to end) before moving the data"
            )
        if sep and last == "fence" and key:
            return comp, f"{prefix}lock:{session_tag(key, True)}:fence"
    elif comp == "seen" and rest:
        return comp, prefix + name
    return "", None


def copy_to_cluster(source_url: str, cluster_url: str, prefix: str = "onethread:") -> MoveReport:
    """Copy every onethread key under ``prefix`` from ``source_url`` (one Redis
    server) into the cluster at ``cluster_url``, in the cluster layout (see
    the module docstring). Blocking; run it with every host stopped.

    Errors: ``ValueError`` for URLs of the wrong kind or a bad prefix;
    ``StoreError`` for a held lock, a target that already holds this prefix,
    a source layout newer than this code, or a server failure (password
    hidden). Idempotent: running it again after a failure finishes the copy.
    """
    if is_cluster(source_url):
        raise ValueError(f"the source {redact(source_url)} is a cluster; give one Redis server")
    if not is_cluster(cluster_url):
        raise ValueError(
            f"the target {redact(cluster_url)} is not a cluster URL; write "
            "redis+cluster://HOST:PORT[,HOST:PORT...]/"
        )
    validate_prefix(prefix, cluster_url)
    if any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"prefix {prefix!r} has glob characters; this tool cannot scan it")
    src: Any = redis.Redis.from_url(source_url)
    dst: Any = sync_client(cluster_url, {"encoding_errors": "surrogatepass"})
    try:
        return _copy(src, dst, prefix, source_url, cluster_url)
    except RedisError as exc:
        raise store_error(cluster_url, exc) from exc
    finally:
        src.close()
        dst.close()


def _copy(src: Any, dst: Any, prefix: str, source_url: str, cluster_url: str) -> MoveReport:
    layouts: dict[str, int] = {}
    for comp, known in _LAYOUTS.items():
        marker = f"{prefix}{comp}:layout" if comp == "history" else f"{prefix}{{{comp}}}:layout"
        if dst.exists(marker):
            raise StoreError(
                f"the cluster at {redact(cluster_url)} already holds {comp} data under prefix "
                f"{prefix!r} (key {marker!r}); move into a fresh prefix"
            )
        found = src.get(f"{prefix}{comp}:layout")
        if found is None:
            continue
        try:
            version = int(found)
        except ValueError:
            raise StoreError(
                f"Redis at {redact(source_url)}: {prefix}{comp}:layout is {found!r}, not a "
                "single-server layout"
            ) from None
        if version > known:
            raise StoreError(
                f"Redis at {redact(source_url)}: {comp} layout {version} is newer than this "
                f"onethread knows ({known}); upgrade onethread first"
            )
        layouts[comp] = known
    plan: list[tuple[bytes, str, str, int]] = []
    report = MoveReport()
    # Plan first (a held lock anywhere stops everything before anything is written).
    for raw in src.scan_iter(match=prefix.encode() + b"*", count=1000):
        name = raw.decode("utf-8", "surrogatepass")[len(prefix) :]
        ttl = int(src.pttl(raw))
        comp, target = _target(prefix, name, ttl)
        if target is None:
            if not comp:
                report.skipped.append(prefix + name)
            continue
        plan.append((raw, comp, target, ttl))
    seq = int(src.get(f"{prefix}history:seq") or 0)
    for raw, comp, target, ttl in plan:
        payload = src.dump(raw)
        if payload is None:  # expired or deleted since the scan
            continue
        dst.restore(target, max(ttl, 0), payload, replace=True)
        report.count(comp)
        if target.startswith(f"{prefix}history:entries:"):
            tagged = target[len(f"{prefix}history:entries:") :]
            dst.set(f"{prefix}history:seq:{tagged}", seq)
            report.sessions += 1
    for comp, known in layouts.items():
        marker = f"{prefix}{comp}:layout" if comp == "history" else f"{prefix}{{{comp}}}:layout"
        dst.set(marker, f"cluster:{known}")
    return report
