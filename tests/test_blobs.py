"""One contract, every blob store: ``file:``, ``memory://`` and ``s3://`` (a real S3 server).

The S3 store runs against moto's server mode: an S3 protocol server on
127.0.0.1 that boto3 talks HTTP to, as it would to AWS or MinIO.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import stat
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from onethread.errors import BlobNotFound, ConfigError, CorruptStoreError
from onethread.session.blobs import BlobStore, blob_ref, open_blob_store, sniff_mime

STORES = ["file", "memory", "s3"]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto's server mode) on 127.0.0.1, one per session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("moto[server] is not installed (CI=true: a failure, not a skip)")
        pytest.skip('the S3 tests need moto\'s server: pip install "moto[server]"')
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


def _bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


@pytest.fixture(params=STORES)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str, s3_env: None
) -> AsyncIterator[BlobStore]:
    if request.param == "s3":
        bucket = f"b-{os.urandom(6).hex()}"
        _bucket(s3_endpoint, bucket)
        s = open_blob_store(f"s3://{bucket}/blobs", endpoint_url=s3_endpoint)
    elif request.param == "file":
        s = open_blob_store(f"file:{tmp_path}/blobs")
    else:
        s = open_blob_store("memory://")
    assert isinstance(s, BlobStore)
    yield s
    await s.close()


def png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


async def test_put_get_roundtrip_by_content_address(store: BlobStore) -> None:
    data = os.urandom(100_000)
    ref = await store.put(data)
    assert ref == blob_ref(data) and ref.startswith("sha256:") and len(ref) == 71
    assert await store.get(ref) == data
    assert await store.put(data) == ref  # idempotent
    assert await store.exists(ref)
    assert await store.delete(ref)
    assert not await store.exists(ref)
    assert not await store.delete(ref)
    with pytest.raises(BlobNotFound) as info:
        await store.get(ref)
    assert info.value.ref == ref


@pytest.mark.parametrize(
    "bad", ["sha256:../../etc/passwd", "../x", "sha256:" + "A" * 64, "md5:00", "", "sha256:"]
)
async def test_malformed_addresses_are_refused_never_used_as_paths(
    store: BlobStore, bad: str
) -> None:
    with pytest.raises(ValueError, match="not a blob address"):
        await store.get(bad)
    with pytest.raises(ValueError):
        await store.exists(bad)


async def test_many_tasks_storing_at_once_lose_nothing(store: BlobStore) -> None:
    blobs = [os.urandom(2000) for _ in range(20)] * 3  # each stored three times at once
    refs = await asyncio.gather(*(store.put(b) for b in blobs))
    for data, ref in zip(blobs, refs, strict=True):
        assert await store.get(ref) == data


async def test_file_store_is_private_and_atomic(tmp_path: Path) -> None:
    store = open_blob_store(f"file:{tmp_path}/blobs")
    ref = await store.put(b"secret photo")
    digest = ref.split(":")[1]
    path = tmp_path / "blobs" / digest[:2] / digest[2:4] / digest
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [digest]  # no temp file left


async def test_file_store_reports_damaged_bytes(tmp_path: Path) -> None:
    store = open_blob_store(f"file:{tmp_path}/blobs")
    ref = await store.put(b"original")
    digest = ref.split(":")[1]
    (tmp_path / "blobs" / digest[:2] / digest[2:4] / digest).write_bytes(b"tampered")
    with pytest.raises(CorruptStoreError):
        await store.get(ref)


def _put_many(root: str, seed: int) -> list[str]:
    async def run() -> list[str]:
        store = open_blob_store(f"file:{root}")
        shared = [await store.put(f"shared {i}".encode() * 1000) for i in range(20)]
        own = [await store.put(f"own {seed} {i}".encode()) for i in range(20)]
        return shared + own

    return asyncio.run(run())


@pytest.mark.multiprocess
def test_file_store_from_four_processes_at_once(tmp_path: Path) -> None:
    root = str(tmp_path / "blobs")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_put_many, [(root, seed) for seed in range(4)])
    assert len({tuple(r[:20]) for r in results}) == 1

    async def check() -> None:
        store = open_blob_store(f"file:{root}")
        for seed, refs in enumerate(results):
            for i, ref in enumerate(refs[20:]):
                assert await store.get(ref) == f"own {seed} {i}".encode()

    asyncio.run(check())
    assert not list(Path(root).rglob("*.tmp"))


def test_types_come_from_the_bytes_not_the_name() -> None:
    assert sniff_mime(png()) == "image/png"
    assert sniff_mime(b"%PDF-1.7\n...") == "application/pdf"
    assert sniff_mime("plain words, ünïcødé\n".encode()) == "text/plain"
    assert sniff_mime(b"\x00\x01\x02\xff binary") == "application/octet-stream"
    assert sniff_mime(b"OggS" + b"\x00" * 40) == "audio/ogg"


@pytest.mark.parametrize("url", ["s3://", "ftp://x", "blobs", "file:"])
def test_bad_urls_name_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigError, match="accepted forms"):
        open_blob_store(url)
