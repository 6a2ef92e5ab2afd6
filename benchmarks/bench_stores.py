"""Stores side by side: the same full turn on memory, SQLite, Redis, Redis Cluster and PostgreSQL.

The harness of bench_turns.py (``BotSessionManager.chat`` behind BotOS, a
zero-latency EchoModel, every person linked on two platforms and alternating
between them), run for a fixed number of turns: ``--people`` people each send
``--turns / --people`` messages one after the other (closed loop), all people
at once. Redis and PostgreSQL use the shared turn locks and duplicate filter
of a multi-host deployment (``open_coordination``), in a key prefix / schema
of their own that is removed afterwards.

For each store: turns/s, p50/p99 latency, and what the server did per turn
(Redis: ``INFO commandstats`` deltas; PostgreSQL: ``pg_stat_database``
transactions and rows). With ``--ceiling``, the server's own ceiling for that
command mix (``redis-benchmark`` on each command of the mix, combined by the
mix's counts; ``pgbench`` with the turn's statements as a custom script) and
the ratio the turn reaches. ``--processes 1,2,3`` also runs 2 and 3 worker
processes against one Redis / Redis Cluster / PostgreSQL at once (aggregate
turns/s). Every row also gives turns per CPU second of the client processes
(the steady figure on a shared machine).

``redis-cluster`` runs on ``BENCH_REDIS_CLUSTER_URL`` (``redis+cluster://...``)
or, when that is unset, on a 3-master Redis Cluster the benchmark starts on
free ports of 127.0.0.1 (``redis-server --cluster-enabled yes`` x3 and
``redis-cli --cluster create``) and stops at the end.

    python benchmarks/bench_stores.py [--turns 10000] [--people 1000]
        [--stores memory,sqlite,redis,redis-cluster,postgres] [--processes 1,2,3] [--ceiling]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench_turns import World
from common import summary, write

from onethread.session.urls import Coordination, open_coordination, open_history_store

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER = os.environ.get("BENCH_REDIS_CLUSTER_URL", "")  # started on demand when empty
POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
HERE = Path(__file__).resolve().parent


@asynccontextmanager
async def world(store: str, people: int, ns: str, tmp: str, first: int = 0) -> AsyncIterator[World]:
    """A World on ``store`` whose data lives under namespace ``ns``."""
    coordination = None
    if store == "memory":
        history: Any = "memory://"
    elif store == "sqlite":
        history = f"sqlite:///{tmp}/{ns}.db"
    elif store in ("redis", "redis-cluster"):
        from onethread.session.locks.redis import RedisDuplicateFilter, RedisTurnLocks
        from onethread.session.outbox.redis import RedisOutbox

        url = redis_url(store)
        o = {"prefix": ns + ":"}
        history = open_history_store(url, **o)
        coordination = Coordination(RedisTurnLocks(url, **o), RedisDuplicateFilter(url, **o),
                                    RedisOutbox(url, **o), True)  # fmt: skip
    elif store == "postgres":
        from onethread.session.locks.postgres import PostgresDuplicateFilter, PostgresTurnLocks
        from onethread.session.outbox.postgres import PostgresOutbox

        history = open_history_store(POSTGRES, schema=ns)
        coordination = Coordination(PostgresTurnLocks(POSTGRES, schema=ns),
                                    PostgresDuplicateFilter(POSTGRES, schema=ns),
                                    PostgresOutbox(POSTGRES, schema=ns), True)  # fmt: skip
    else:
        raise SystemExit(
            f"unknown store {store!r}: memory, sqlite, redis, redis-cluster or postgres"
        )
    w = World(history, people, metrics=True, coordination=coordination, first=first)
    async with w:
        yield w
    if coordination is not None:
        await coordination.close()
    close = getattr(history, "close", None)
    if close is not None:
        await close()


def redis_url(store: str) -> str:
    """The URL of ``redis`` or ``redis-cluster``."""
    return CLUSTER if store == "redis-cluster" else REDIS


def node_urls(store: str) -> list[str]:
    """``redis://`` URLs of every server of ``store`` (each node of a cluster)."""
    if store != "redis-cluster":
        return [REDIS]
    from onethread.session._conn.redis import cluster_nodes

    return [f"redis://{host}:{port}/0" for host, port in cluster_nodes(CLUSTER)[0]]


def drop(store: str, ns: str) -> None:
    """Remove namespace ``ns`` from the shared server."""
    if store in ("redis", "redis-cluster"):
        import redis

        for url in node_urls(store):
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=ns + ":*", count=1000))
            pipe = client.pipeline(transaction=False)
            for key in keys:  # one key per command: a cluster refuses multi-slot DEL
                pipe.delete(key)
            pipe.execute()
            client.close()
    elif store == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{ns}" CASCADE')


def server_counters(store: str) -> dict[str, float]:
    """Cumulative server counters (Redis commands by name; PostgreSQL xacts and rows)."""
    if store in ("redis", "redis-cluster"):
        import redis

        total: dict[str, float] = {}
        for url in node_urls(store):  # a cluster: the sum over its nodes
            client = redis.Redis.from_url(url, decode_responses=True)
            stats = client.info("commandstats")
            client.close()
            for k, v in stats.items():
                name = k.removeprefix("cmdstat_")
                total[name] = total.get(name, 0.0) + float(v["calls"])
        return total
    if store == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, "
                "tup_updated, tup_deleted FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        names = ("commits", "rollbacks", "returned", "fetched", "inserted", "updated", "deleted")
        return dict(zip(names, map(float, row), strict=True))
    return {}


def per_turn(before: dict[str, float], after: dict[str, float], turns: int) -> dict[str, float]:
    """Counter deltas per turn (zero deltas left out)."""
    out = {}
    for name, value in after.items():
        delta = value - before.get(name, 0.0)
        if delta > 0 and name not in ("info", "ping"):
            out[name] = round(delta / turns, 2)
    return out


async def run_turns(w: World, people: int, each: int) -> tuple[float, Any]:
    """Each of ``people`` sends ``each`` messages back to back; wall seconds and latencies."""
    loop = asyncio.get_running_loop()

    async def person(i: int) -> None:
        for _ in range(each):
            fut = loop.create_future()
            await w.send(i, fut)
            await fut

    t0 = time.perf_counter()
    await asyncio.gather(*(person(i) for i in range(people)))
    return time.perf_counter() - t0, w.tracker.latencies


async def measure(store: str, turns: int, people: int, ns: str, tmp: str) -> dict[str, Any]:
    """One process, one store: warm up (one turn each), then ``turns`` turns."""
    each = max(1, turns // people)
    async with world(store, people, ns, tmp) as w:
        await run_turns(w, people, 1)  # warm-up: pools, scripts, merges, caches
        del w.tracker.latencies[:]
        gc.collect()
        before = await asyncio.to_thread(server_counters, store)
        cpu0 = time.process_time()
        wall, lat = await run_turns(w, people, each)
        cpu = time.process_time() - cpu0
        after = await asyncio.to_thread(server_counters, store)
    done = len(lat)
    return {
        "store": store,
        "processes": 1,
        "people": people,
        "turns": done,
        "turns_per_s": round(done / wall),
        "turns_per_cpu_s": round(done / cpu) if cpu else 0,
        **summary(lat),
        "server_per_turn": per_turn(before, after, done),
    }


def worker(args: argparse.Namespace) -> None:
    """A worker process: warm up, say ``ready``, wait for ``go``, run, print JSON."""

    async def main() -> None:
        each = max(1, args.turns // args.people)
        with tempfile.TemporaryDirectory() as tmp:
            async with world(args.worker, args.people, args.ns, tmp, args.first) as w:
                w.counter = args.offset  # distinct message ids across workers
                await run_turns(w, args.people, 1)
                del w.tracker.latencies[:]
                print("ready", flush=True)
                await asyncio.to_thread(sys.stdin.readline)
                start = time.time()
                cpu0 = time.process_time()
                wall, lat = await run_turns(w, args.people, each)
                cpu = time.process_time() - cpu0
                print(json.dumps({"start": start, "end": start + wall, "cpu": cpu,
                                  "lat": list(lat)}))  # fmt: skip

    asyncio.run(main())


def multi(store: str, n: int, turns: int, people: int, ns: str) -> dict[str, Any]:
    """``n`` worker processes, each with its own ``people`` people, on one server."""
    procs = []
    for k in range(n):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", store, "--ns", ns,
               "--turns", str(turns // n), "--people", str(max(1, people // n)),
               "--offset", str(10_000_000 * (k + 1))]  # fmt: skip
        cmd += ["--first", str(k * people)]
        pipe = subprocess.PIPE
        procs.append(subprocess.Popen(cmd, stdin=pipe, stdout=pipe, text=True))
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"worker failed to start ({line!r})")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]))
    lat = [x for r in results for x in r["lat"]]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    return {
        "store": store,
        "processes": n,
        "people": people,
        "turns": len(lat),
        "turns_per_s": round(len(lat) / wall),
        "turns_per_cpu_s": round(len(lat) / cpu) if cpu else 0,
        **summary(lat),
    }


# -- server ceilings -------------------------------------------------------------------

# What one turn sends to Redis (steady state, after the person's first turns):
# the duplicate filter's SET, the lock script, the load, the append script and
# the release script. Commands run inside scripts are not sent by the client;
# ``INFO commandstats`` counts them too (see ``server_per_turn``).
TURN_COMMANDS = ("dedupe", "acquire", "load", "append", "release")


def _redis_stand_ins(ns: str) -> dict[str, list[str]]:
    """redis-benchmark command lines standing for each command of a turn."""
    import redis

    from onethread.session.history import redis as hist
    from onethread.session.locks import redis as locks

    client = redis.Redis.from_url(REDIS)
    sha = {name: client.script_load(script.source) for name, script in (
        ("append", hist._APPEND), ("acquire", locks._ACQUIRE), ("release", locks._RELEASE)
    )}  # fmt: skip
    entry = '{"role":"user","content":"m12345678","timestamp":1765000000.0,"platform":"telegram"}'
    history = f"{ns}:hist"  # a session tail of 20 entries, as the turn loads
    client.zadd(history, {f"{i:016d}|{entry}": float(i) for i in range(20)})
    client.close()
    k = f"{ns}:k:__rand_int__"
    return {
        "dedupe": ["SET", f"{k}:seen", "1", "NX", "PX", "60000"],
        "acquire": ["EVALSHA", sha["acquire"], "2", f"{k}:lock", f"{k}:fence", "tok", "60000"],
        "load": ["ZRANGE", history, "-20", "-1"],
        "append": ["EVALSHA", sha["append"], "4", f"{k}:e", f"{ns}:seq", f"{k}:p",
                   f"{ns}:sessions", "s", "2", "2.0", "1.0", entry, "2.0", entry, "telegram"],
        "release": ["EVALSHA", sha["release"], "1", f"{k}:lock", "tok"],
    }  # fmt: skip


def redis_rate(argv: list[str], requests: int) -> float:
    """Requests/s redis-benchmark reaches for one command (50 clients, 16 pipelined)."""
    host, port = re.match(r"redis://([^:/]+):(\d+)", REDIS).groups()  # type: ignore[union-attr]
    out = subprocess.run(
        ["redis-benchmark", "-h", host, "-p", port, "-q", "-n", str(requests),
         "-c", "50", "-P", "16", "-r", "1000000", *argv],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(re.findall(r"([\d.]+) requests per second", out)[-1])


def redis_ceiling(requests: int) -> dict[str, Any]:
    """Turns/s one Redis serves doing nothing but the turn's commands (redis-benchmark)."""
    ns = f"bench_ceil_{uuid.uuid4().hex[:8]}"
    rates = {}
    try:
        for name, argv in _redis_stand_ins(ns).items():
            rates[name] = round(redis_rate(argv, requests))
    finally:
        drop("redis", ns)
    seconds = sum(1 / rates[name] for name in TURN_COMMANDS)
    return {"rates": rates, "turns_per_s": round(1 / seconds)}


_PGBENCH_SCRIPT = """\\set p random(1, 1000)
\\set m random(1, 1000000000)
INSERT INTO {s}.onethread_seen (key, seen_at) VALUES ('m' || :m, 0) ON CONFLICT DO NOTHING;
SELECT CASE WHEN pg_try_advisory_lock(:p) THEN nextval('{s}.onethread_lock_fence') END;
SELECT role, content, ts FROM {s}.onethread_history WHERE key = 'user:' || :p
  ORDER BY ts DESC, id DESC LIMIT 20;
BEGIN;
INSERT INTO {s}.onethread_history (key, role, content, ts)
  VALUES ('user:' || :p, 'user', 'm', 1), ('user:' || :p, 'assistant', 'echo: m', 2);
COMMIT;
SELECT pg_advisory_unlock(:p);
"""


# What the process sends now: the calls of concurrent turns share statements
# (session/_conn/postgres.py Batch), so one pgbench transaction stands for a
# batch of _BATCH turns: their dedupe inserts, locks+fences, two loads each
# (summary and page), their appends (2 rows each) and unlocks, one statement
# per kind, each its own autocommit transaction.
_BATCH = 100
_PGBENCH_BATCHED = """\\set p random(1, 1000)
\\set m random(1, 1000000000)
INSERT INTO {s}.onethread_seen (key, seen_at) SELECT 'm' || (:m + g), 0
  FROM generate_series(1, {b}) g ON CONFLICT DO NOTHING;
SELECT CASE WHEN pg_try_advisory_lock(k) THEN nextval('{s}.onethread_lock_fence') END
  FROM generate_series(:p, :p + {b} - 1) k;
SELECT t.k, h.* FROM generate_series(:p, :p + {b} - 1) t(k) CROSS JOIN LATERAL
  (SELECT role, content, ts FROM {s}.onethread_history WHERE key = 'user:' || t.k || '#summary'
   ORDER BY ts DESC, id DESC LIMIT 1) h;
SELECT t.k, h.* FROM generate_series(:p, :p + {b} - 1) t(k) CROSS JOIN LATERAL
  (SELECT role, content, ts FROM {s}.onethread_history WHERE key = 'user:' || t.k
   ORDER BY ts DESC, id DESC LIMIT 20) h;
INSERT INTO {s}.onethread_history (key, role, content, ts)
  SELECT 'user:' || (:p + g % {b}), 'user', 'm', g FROM generate_series(1, 2 * {b}) g;
SELECT pg_advisory_unlock(k) FROM generate_series(:p, :p + {b} - 1) k;
"""


def _pgbench(script: str, seconds: float) -> float:
    """Transactions/s of ``script`` under pgbench (16 clients, prepared statements)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["pgbench", "-n", "-c", "16", "-j", "2", "-T", str(seconds), "-M", "prepared",
             "-f", f.name, POSTGRES],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(f.name)
    return float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]


def pg_ceiling(seconds: float) -> dict[str, Any]:
    """Turns/s ``pgbench`` reaches with the turn's statements (16 clients): one turn
    per transaction (``turns_per_s``), and batches of ``_BATCH`` turns sharing
    statements as the process sends them (``batched_turns_per_s``)."""
    ns = f"bench_ceil_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        store = open_history_store(POSTGRES, schema=ns)
        await store.count("x")
        await store.close()
        c = open_coordination(POSTGRES, schema=ns)
        await c.duplicates.first_time("x")
        await c.close()

    asyncio.run(create())
    try:
        tps = _pgbench(_PGBENCH_SCRIPT.format(s=f'"{ns}"'), seconds)
        batched = _pgbench(_PGBENCH_BATCHED.format(s=f'"{ns}"', b=_BATCH), seconds) * _BATCH
    finally:
        drop("postgres", ns)
    return {
        "turns_per_s": round(tps),
        "script": "dedupe, lock+fence, load 20, insert 2, unlock",
        "batched_turns_per_s": round(batched),
        "batched_script": f"per {_BATCH} turns: dedupe, lock+fence, load 1, load 20, "
        "insert 2 each, unlock; one statement per kind",
    }


def reachable(store: str) -> bool:
    """True if ``store`` needs no server or its server answers."""
    try:
        if store in ("redis", "redis-cluster"):
            import redis

            for url in node_urls(store):
                redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        elif store == "postgres":
            import psycopg

            psycopg.connect(POSTGRES, connect_timeout=2).close()
    except Exception as exc:  # any failure to reach it: say so and measure the rest
        print(f"{store:8} skipped: server not reachable ({exc})", flush=True)
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=10_000)
    parser.add_argument("--people", type=int, default=1_000)
    parser.add_argument("--stores", default="memory,sqlite,redis,redis-cluster,postgres")
    parser.add_argument("--processes", default="1", help="e.g. 1,2,3 (Redis and PostgreSQL)")
    parser.add_argument("--ceiling", action="store_true", help="also measure the servers alone")
    parser.add_argument("--ceiling-requests", type=int, default=50_000)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ns", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    global CLUSTER
    started: list[subprocess.Popen[bytes]] = []
    if "redis-cluster" in args.stores.split(",") and not CLUSTER:
        CLUSTER = start_cluster(started)
        os.environ["BENCH_REDIS_CLUSTER_URL"] = CLUSTER  # for the worker processes
    try:
        run(args)
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def start_cluster(procs: list[subprocess.Popen[bytes]]) -> str:
    """Start a 3-master Redis Cluster on free ports (appended to ``procs``); its URL."""
    import shutil
    import socket

    folder = tempfile.mkdtemp(prefix="bench-cluster-")
    ports = []
    while len(ports) < 3:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 <= 65535 and port not in ports:  # the cluster bus: port + 10000
            ports.append(port)
    for port in ports:
        procs.append(subprocess.Popen(
            ["redis-server", "--cluster-enabled", "yes", "--port", str(port), "--bind",
             "127.0.0.1", "--cluster-config-file", f"{folder}/nodes-{port}.conf", "--dir",
             folder, "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    for port in ports:
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":  # fmt: skip
            time.sleep(0.05)
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
         "--cluster-replicas", "0", "--cluster-yes"],
        check=True, capture_output=True,
    )  # fmt: skip
    for port in ports:
        while (
            "cluster_state:ok"
            not in subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True
            ).stdout
        ):
            time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)  # the servers keep their open files
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/"


def run(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    ceilings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            if not reachable(store):
                continue
            for n in [int(x) for x in args.processes.split(",")]:
                if n > 1 and store not in ("redis", "redis-cluster", "postgres"):
                    continue
                ns = f"bench_{uuid.uuid4().hex[:10]}"
                try:
                    if n == 1:
                        row = asyncio.run(measure(store, args.turns, args.people, ns, tmp))
                    else:
                        row = multi(store, n, args.turns, args.people, ns)
                finally:
                    drop(store, ns)
                rows.append(row)
                print(
                    f"{store:8} procs={n} people={args.people} turns={row['turns']} "
                    f"turns/s={row['turns_per_s']:>6} "
                    + (f"turns/CPU-s={row['turns_per_cpu_s']} " if "turns_per_cpu_s" in row else "")
                    + f"p50={row['p50_ms']}ms p99={row['p99_ms']}ms"
                    + (f" per turn: {row['server_per_turn']}" if "server_per_turn" in row else ""),
                    flush=True,
                )
            if args.ceiling and store in ("redis", "postgres"):
                if store == "redis":
                    ceil = redis_ceiling(args.ceiling_requests)
                else:
                    ceil = pg_ceiling(5)
                best = max(r["turns_per_s"] for r in rows if r["store"] == store)
                ceil["ratio_best"] = round(best / ceil["turns_per_s"], 3)
                if "batched_turns_per_s" in ceil:
                    ceil["ratio_best_batched"] = round(best / ceil["batched_turns_per_s"], 3)
                ceilings[store] = ceil
                print(f"{store:8} server ceiling {ceil}", flush=True)
    print("wrote", write("stores", {"args": vars(args), "rows": rows, "ceilings": ceilings}))


if __name__ == "__main__":
    main()
