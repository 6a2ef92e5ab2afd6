"""Resolver speed: ``resolve()`` calls per second with 10,000 links.

In-memory, file (JSON) and SQLite resolvers, each holding 10,000 linked
accounts (5,000 people on two platforms). Queries are random linked accounts
(hits) or accounts never linked (misses, which build the ``platform:id``
answer). The file and SQLite resolvers answer from their in-memory copy and
check the file for other processes' changes every 50 ms; those checks are
included in the figures.

    python benchmarks/bench_resolver.py [--links 10000] [--seconds 1]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import write

from onethread.session import (
    FileIdentityResolver,
    InMemoryIdentityResolver,
    SQLiteIdentityResolver,
)


def accounts(links: int) -> list[tuple[str, str, str]]:
    """``links`` (platform, account, person) triples: two platforms per person."""
    return [
        ("telegram" if i % 2 == 0 else "discord", f"{100000 + i // 2}", f"person{i // 2}")
        for i in range(links)
    ]


def write_file(path: Path, triples: list[tuple[str, str, str]]) -> None:
    """The resolver's documented JSON format, written at once (10,000 link() calls
    would each rewrite and fsync the file: that is the write path, not resolve)."""
    doc = {
        "version": 1,
        "links": {f"{p}::{u}": {"unified": who, "linked_at": 0.0} for p, u, who in triples},
    }
    path.write_text(json.dumps(doc))


def fill_sqlite(path: Path, triples: list[tuple[str, str, str]]) -> SQLiteIdentityResolver:
    """A SQLite resolver with ``triples``: the first 100 through link(), the rest in one
    transaction of the same rows (10,000 link() calls are 10,000 synced commits)."""
    resolver = SQLiteIdentityResolver(path)
    for platform, account, person in triples[:100]:
        resolver.link(platform, account, person)
    resolver.close()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO links (platform, platform_user_id, unified_user_id, linked_at) "
            "VALUES (?, ?, ?, ?)",
            [(p, u, who, time.time()) for p, u, who in triples[100:]],
        )
    conn.close()
    return SQLiteIdentityResolver(path)


def rate(resolve: Callable[[str, str], str], queries: list[tuple[str, str]], seconds: float) -> int:
    """resolve() calls per second over ``queries``, repeated for about ``seconds``."""
    done = 0
    start = time.perf_counter()
    while True:
        for platform, account in queries:
            resolve(platform, account)
        done += len(queries)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return round(done / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    triples = accounts(args.links)
    rng = random.Random(3)
    hits = [(p, u) for p, u, _ in rng.choices(triples, k=100_000)]
    misses = [
        (rng.choice(("telegram", "slack")), f"x{rng.randrange(10**9)}") for _ in range(100_000)
    ]

    # The loop itself, with a resolve() that does nothing: what the figures include.
    def noop(platform: str, account: str) -> str:
        return account

    rows = [{"resolver": "(empty function: loop overhead)", "hits_per_s": rate(noop, hits, 0.5)}]
    with tempfile.TemporaryDirectory() as tmp:
        memory = InMemoryIdentityResolver()
        for platform, account, person in triples:
            memory.link(platform, account, person)
        sqlite = fill_sqlite(Path(tmp) / "identity.db", triples)
        write_file(Path(tmp) / "identity.json", triples)
        file = FileIdentityResolver(Path(tmp) / "identity.json")
        for name, resolver in (("memory", memory), ("file", file), ("sqlite", sqlite)):
            assert resolver.resolve(*hits[0]) != f"{hits[0][0]}:{hits[0][1]}"
            row = {
                "resolver": name,
                "links": len(resolver.all_links()),
                "hits_per_s": rate(resolver.resolve, hits, args.seconds),
                "misses_per_s": rate(resolver.resolve, misses, args.seconds),
            }
            rows.append(row)
            print(
                f"{name:7} links={row['links']} hits={row['hits_per_s']:,}/s "
                f"misses={row['misses_per_s']:,}/s",
                flush=True,
            )
        sqlite.close()
    print("wrote", write("resolver", {"rows": rows}))


if __name__ == "__main__":
    main()
