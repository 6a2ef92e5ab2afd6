"""Blob store throughput: MB/s in and out, against the tools underneath, in one run.

``file:`` (atomic write + fsync, SHA-256 checked on read) against ``cp`` of
the same bytes (into the page cache, and then ``sync``-ed to disk like the
store) and ``cat`` to /dev/null; ``s3://`` (moto's S3 server on 127.0.0.1,
as tests/test_blobs.py starts it) against a bare boto3 ``put_object`` /
``get_object`` on the same server. Each figure is the best of ``--repeats``
rounds of ``--files`` distinct random files of ``--mb`` MB (distinct, so
content addressing never skips a write). Short by default (a shared machine).

    .venv/bin/python benchmarks/bench_blobs.py [--files 8] [--mb 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import write

from onethread.session.blobs import open_blob_store


def best_mb_s(total_bytes: int, repeats: int, run: Callable[[int], None]) -> float:
    """Best MB/s over ``repeats`` calls of ``run(round)``."""
    best = float("inf")
    for round_ in range(repeats):
        began = time.perf_counter()
        run(round_)
        best = min(best, time.perf_counter() - began)
    return round(total_bytes / 1e6 / best, 1)


def payloads(files: int, size: int, repeats: int) -> list[list[bytes]]:
    """Distinct random files for each round."""
    return [[os.urandom(size) for _ in range(files)] for _ in range(repeats)]


def bench_file(tmp: Path, data: list[list[bytes]], repeats: int) -> dict[str, float]:
    store = open_blob_store(f"file:{tmp}/blobs")
    refs: list[list[str]] = [[] for _ in data]
    total = sum(len(b) for b in data[0])

    def put(r: int) -> None:
        refs[r] = asyncio.run(_put_all(store, data[r]))

    def get(r: int) -> None:
        asyncio.run(_get_all(store, refs[r]))

    row = {"put_mb_s": best_mb_s(total, repeats, put), "get_mb_s": best_mb_s(total, repeats, get)}
    # cp of the same bytes: sources written once, then copied (page cache, then synced).
    src = tmp / "src"
    for r, files in enumerate(data):
        (src / str(r)).mkdir(parents=True)
        for i, b in enumerate(files):
            (src / str(r) / f"f{i}").write_bytes(b)
    subprocess.run(["sync"], check=True)

    def cp(r: int, *, sync: bool) -> None:
        dst = tmp / f"cp{r}{'s' if sync else ''}"
        dst.mkdir()
        names = sorted(str(p) for p in (src / str(r)).iterdir())
        subprocess.run(["cp", *names, str(dst)], check=True)
        if sync:
            subprocess.run(["sync", "-f", str(dst)], check=True)

    def cat(r: int) -> None:
        names = sorted(str(p) for p in (src / str(r)).iterdir())
        with open(os.devnull, "wb") as sink:
            subprocess.run(["cat", *names], stdout=sink, check=True)

    row["cp_mb_s"] = best_mb_s(total, repeats, lambda r: cp(r, sync=False))
    row["cp_sync_mb_s"] = best_mb_s(total, repeats, lambda r: cp(r, sync=True))
    row["cat_mb_s"] = best_mb_s(total, repeats, cat)
    return row


async def _put_all(store: Any, files: list[bytes]) -> list[str]:
    return [await store.put(b) for b in files]


async def _get_all(store: Any, refs: list[str]) -> None:
    for ref in refs:
        await store.get(ref)


def bench_s3(data: list[list[bytes]], repeats: int) -> dict[str, float]:
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        os.environ.setdefault(name, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        store = open_blob_store("s3://bench/blobs", endpoint_url=endpoint)
        total = sum(len(b) for b in data[0])
        refs: list[list[str]] = [[] for _ in data]

        def put(r: int) -> None:
            refs[r] = asyncio.run(_put_all(store, data[r]))

        def get(r: int) -> None:
            asyncio.run(_get_all(store, refs[r]))

        def bare_put(r: int) -> None:
            for i, b in enumerate(data[r]):
                client.put_object(Bucket="bench", Key=f"bare/{r}/{i}", Body=b)

        def bare_get(r: int) -> None:
            for i in range(len(data[r])):
                client.get_object(Bucket="bench", Key=f"bare/{r}/{i}")["Body"].read()

        return {
            "put_mb_s": best_mb_s(total, repeats, put),
            "get_mb_s": best_mb_s(total, repeats, get),
            "boto3_put_mb_s": best_mb_s(total, repeats, bare_put),
            "boto3_get_mb_s": best_mb_s(total, repeats, bare_get),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    data = payloads(args.files, size, args.repeats)
    tmp = Path(tempfile.mkdtemp(prefix="bench-blobs-"))
    try:
        file_row = bench_file(tmp, data, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s3_row = bench_s3(data, args.repeats)
    mb = args.files * size / 1e6
    file_row["put_vs_cp_sync"] = round(file_row["put_mb_s"] / file_row["cp_sync_mb_s"], 2)
    file_row["get_vs_cat"] = round(file_row["get_mb_s"] / file_row["cat_mb_s"], 2)
    s3_row["put_vs_boto3"] = round(s3_row["put_mb_s"] / s3_row["boto3_put_mb_s"], 2)
    s3_row["get_vs_boto3"] = round(s3_row["get_mb_s"] / s3_row["boto3_get_mb_s"], 2)
    print(f"{args.files} files of {args.mb:g} MB ({mb:g} MB a round), best of {args.repeats}")
    f = file_row
    print(f"file:  put {f['put_mb_s']} MB/s (cp {f['cp_mb_s']}, "
          f"cp+sync {f['cp_sync_mb_s']}; x{f['put_mb_s'] / f['cp_sync_mb_s']:.2f}"
          f" of cp+sync)   get {file_row['get_mb_s']} MB/s (cat {file_row['cat_mb_s']}; "
          f"x{file_row['get_mb_s'] / file_row['cat_mb_s']:.2f})")  # fmt: skip
    print(f"s3:    put {s3_row['put_mb_s']} MB/s (boto3 put_object {s3_row['boto3_put_mb_s']}; "
          f"x{s3_row['put_mb_s'] / s3_row['boto3_put_mb_s']:.2f})   get {s3_row['get_mb_s']} MB/s "
          f"(boto3 get_object {s3_row['boto3_get_mb_s']}; "
          f"x{s3_row['get_mb_s'] / s3_row['boto3_get_mb_s']:.2f})")  # fmt: skip
    path = write("blobs", {"files": args.files, "mb": args.mb,
                           "repeats": args.repeats, "file": file_row, "s3": s3_row})  # fmt: skip
    print(f"JSON in {path}")


if __name__ == "__main__":
    main()
