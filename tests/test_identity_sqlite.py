"""SQLiteIdentityResolver: location, schema, corruption, other processes."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest

from _identity_worker import bulk_ids, run_bulk, run_link
from onethread.errors import CorruptStoreError, StoreError
from onethread.session.identity.sqlite import SQLiteIdentityResolver


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "identity.db"


def test_default_path_is_under_onethread_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))
    monkeypatch.delenv("ONETHREAD_HOME", raising=False)
    with SQLiteIdentityResolver() as r:
        assert r.path == tmp_path / "userhome" / ".onethread" / "identity.db"
    monkeypatch.setenv("ONETHREAD_HOME", str(tmp_path / "ot"))
    with SQLiteIdentityResolver() as r:
        assert r.path == tmp_path / "ot" / "identity.db"
    assert stat.S_IMODE((tmp_path / "ot").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "ot" / "identity.db").stat().st_mode) == 0o600


def test_schema_wal_and_index(path: Path) -> None:
    with SQLiteIdentityResolver(path) as r:
        r.link("telegram", "1", "alice")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(links)")}
        assert "links_unified" in indexes
        rows = conn.execute("SELECT platform, platform_user_id, unified_user_id FROM links")
        assert rows.fetchall() == [("telegram", "1", "alice")]
    finally:
        conn.close()


def test_not_a_database_is_corrupt(path: Path) -> None:
    path.parent.mkdir()
    data = b"this is not a sqlite database, just text " * 10
    path.write_bytes(data)
    with pytest.raises(CorruptStoreError) as info:
        SQLiteIdentityResolver(path)
    assert info.value.path == str(path)
    assert path.read_bytes() == data


def test_close(path: Path) -> None:
    r = SQLiteIdentityResolver(path)
    r.link("telegram", "1", "alice")
    r.close()
    r.close()
    assert r.resolve("telegram", "1") == "alice"  # served from the last copy
    assert [x.unified_user_id for x in r.all_links()] == ["alice"]
    with pytest.raises(StoreError, match="closed"):
        r.link("telegram", "2", "bob")
    with pytest.raises(StoreError, match="closed"):
        r.unlink("telegram", "1")


@pytest.mark.multiprocess
def test_eight_processes_link_into_one_database(path: Path, tmp_path: Path) -> None:
    SQLiteIdentityResolver(path).close()  # create it first, as a deployment would
    run_bulk("sqlite", path, workers=8, count=50, scratch=tmp_path)
    with SQLiteIdentityResolver(path) as r:
        assert len(r.all_links()) == 400
        for worker in range(8):
            for platform, user_id, unified in bulk_ids(worker, 50):
                assert r.resolve(platform, user_id) == unified


@pytest.mark.multiprocess
def test_eight_processes_create_the_database_at_once(path: Path, tmp_path: Path) -> None:
    run_bulk("sqlite", path, workers=8, count=5, scratch=tmp_path)
    with SQLiteIdentityResolver(path) as r:
        assert len(r.all_links()) == 40


@pytest.mark.multiprocess
def test_live_instance_sees_another_process_change(path: Path) -> None:
    with SQLiteIdentityResolver(path, check_interval=0.05) as r:
        r.link("discord", "2", "bob")
        assert r.resolve("telegram", "1") == "telegram:1"
        run_link("sqlite", path, "telegram", "1", "alice")
        time.sleep(0.06)  # the documented staleness bound
        assert r.resolve("telegram", "1") == "alice"
        assert [x.platform for x in r.links_for("alice")] == ["telegram"]
        run_link("sqlite", path, "discord", "2", "alice")  # moved by another process
        time.sleep(0.06)
        assert r.resolve("discord", "2") == "alice"
        assert r.links_for("bob") == []


@pytest.mark.multiprocess
def test_resolve_is_throttled_but_links_for_is_not(path: Path) -> None:
    with SQLiteIdentityResolver(path, check_interval=3600) as r:
        r.resolve("telegram", "1")
        run_link("sqlite", path, "telegram", "1", "alice")
        assert r.resolve("telegram", "1") == "telegram:1"  # within the window: stale
        assert [x.platform_user_id for x in r.links_for("alice")] == ["1"]
        assert r.resolve("telegram", "1") == "alice"
