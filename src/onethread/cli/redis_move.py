"""onethread redis-to-cluster: copy a deployment from one Redis server into a Redis Cluster.

Stop every host first. Every onethread key under the prefix is copied into
the cluster's hash-tagged layout (history, identity links, scheduled jobs,
the outbox, fencing tokens, the duplicate filter's remembered ids); the
source is left as it was. Then point every host at the redis+cluster:// URL.
Running it again after a failure finishes the copy; a cluster prefix that
hosts already use is refused. See docs/scaling.md, "Moving to Redis Cluster".
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``redis-to-cluster`` to the subcommand parser ``sub``."""
    move = sub.add_parser(
        "redis-to-cluster",
        help="copy a deployment from one Redis server into a Redis Cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    move.add_argument("source", help="the Redis server, redis://HOST:PORT/DB")
    move.add_argument("cluster", help="the cluster, redis+cluster://HOST:PORT[,HOST:PORT...]/")
    move.add_argument(
        "--prefix", default="onethread:", help="the deployment's key prefix (default onethread:)"
    )
    move.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    move.set_defaults(func=_cmd_move)


def _cmd_move(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..session.redis_move import copy_to_cluster

    try:
        report = copy_to_cluster(args.source, args.cluster, args.prefix)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    parts = ", ".join(f"{n} {comp} keys" for comp, n in sorted(report.copied.items()))
    print(f"copied {parts or 'nothing'} ({report.sessions} sessions) into the cluster")
    for name in report.skipped:
        print(f"not copied (not a onethread key): {name!r}")
    return 0
