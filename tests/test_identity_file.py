"""FileIdentityResolver: location, permissions, format, corruption, other processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from _identity_worker import bulk_ids, run_bulk, run_link, start_stuck
from onethread.errors import CorruptStoreError, SchemaVersionError, StoreError
from onethread.session.identity.file import STALE_TEMP_AGE, FileIdentityResolver


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "identity.json"


# -- location ------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "userhome"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ONETHREAD_IDENTITY_PATH", raising=False)
    monkeypatch.delenv("ONETHREAD_HOME", raising=False)
    return home


def test_default_path_is_under_home(clean_env: Path) -> None:
    assert FileIdentityResolver().path == clean_env / ".onethread" / "identity.json"


def test_path_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONETHREAD_HOME", str(tmp_path / "ot-home"))
    assert FileIdentityResolver().path == tmp_path / "ot-home" / "identity.json"
    monkeypatch.setenv("ONETHREAD_IDENTITY_PATH", str(tmp_path / "explicit.json"))
    assert FileIdentityResolver().path == tmp_path / "explicit.json"
    assert FileIdentityResolver(tmp_path / "arg.json").path == tmp_path / "arg.json"
    assert FileIdentityResolver(str(tmp_path / "arg.json")).path == tmp_path / "arg.json"


def test_env_var_is_read_at_construction_not_import(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The module is imported already (at the top of this file); the env changes after.
    monkeypatch.setenv("ONETHREAD_IDENTITY_PATH", str(tmp_path / "one.json"))
    first = FileIdentityResolver()
    monkeypatch.setenv("ONETHREAD_IDENTITY_PATH", str(tmp_path / "two.json"))
    second = FileIdentityResolver()
    first.link("telegram", "1", "alice")
    second.link("telegram", "1", "bob")
    assert json.loads((tmp_path / "one.json").read_text())["links"]["telegram::1"]["unified"] == (
        "alice"
    )
    assert json.loads((tmp_path / "two.json").read_text())["links"]["telegram::1"]["unified"] == (
        "bob"
    )


# -- files on disk -------------------------------------------------------------


def test_file_0600_and_created_folder_0700(path: Path) -> None:
    r = FileIdentityResolver(path)
    assert not path.parent.exists(), "constructing must not create anything"
    r.link("telegram", "1", "alice")
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(path.with_name("identity.json.lock")) == 0o600


def test_written_format_and_no_temp_files_left(path: Path) -> None:
    r = FileIdentityResolver(path)
    r.link("telegram", "12345", "alice")
    r.link("slack", "U1:x", "bob")
    r.unlink("slack", "U1:x")
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert list(doc["links"]) == ["telegram::12345"]
    entry = doc["links"]["telegram::12345"]
    assert entry["unified"] == "alice"
    assert abs(entry["linked_at"] - time.time()) < 60
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.json", "identity.json.lock"]


def test_relink_same_id_does_not_rewrite(path: Path) -> None:
    r = FileIdentityResolver(path)
    r.link("telegram", "1", "alice")
    before = path.stat()
    r.link("telegram", "1", "alice")
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_missing_or_empty_file_is_empty(path: Path) -> None:
    assert FileIdentityResolver(path).all_links() == []
    path.parent.mkdir()
    path.write_bytes(b"")
    r = FileIdentityResolver(path)
    assert r.resolve("telegram", "1") == "telegram:1"
    r.link("telegram", "1", "alice")
    assert FileIdentityResolver(path).resolve("telegram", "1") == "alice"


def test_reads_praisonai_format_and_upgrades_on_write(path: Path) -> None:
    path.parent.mkdir()
    path.write_text(json.dumps({"links": {"telegram::12345": "alice"}, "note": "keep me"}))
    r = FileIdentityResolver(path)
    assert r.resolve("telegram", "12345") == "alice"
    (link,) = r.links_for("alice")
    assert link.linked_at == 0.0
    r.link("discord", "9", "alice")
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert doc["note"] == "keep me"
    assert doc["links"]["telegram::12345"] == {"unified": "alice", "linked_at": 0.0}
    assert doc["links"]["discord::9"]["unified"] == "alice"


# -- corruption ----------------------------------------------------------------

CORRUPT = [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"[]",
    b'{"links": []}',
    b'{"version": "1", "links": {}}',
    b'{"links": {"telegram::1": 5}}',
    b'{"links": {"telegram::1": {"linked_at": 1.0}}}',
    b'{"links": {"telegram::1": {"unified": "alice", "linked_at": "noon"}}}',
    b'{"links": {"telegram-1": "alice"}}',
    b'{"links": {"telegram::1": "a:b"}}',
    b'{"links": {"Telegram::1": "alice"}}',
]


@pytest.mark.parametrize("data", CORRUPT)
def test_corrupt_file_raises_naming_path_and_is_never_overwritten(path: Path, data: bytes) -> None:
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(CorruptStoreError) as info:
        FileIdentityResolver(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == data


def test_change_refuses_a_file_corrupted_after_construction(path: Path) -> None:
    r = FileIdentityResolver(path)
    r.link("telegram", "1", "alice")
    path.write_bytes(b"{oops")
    with pytest.raises(CorruptStoreError, match=str(path)):
        r.link("telegram", "2", "bob")
    with pytest.raises(CorruptStoreError):
        r.unlink("telegram", "1")
    assert path.read_bytes() == b"{oops"


def test_live_instance_raises_on_reload_until_fixed(path: Path) -> None:
    r = FileIdentityResolver(path, check_interval=0.01)
    r.link("telegram", "1", "alice")
    good = path.read_bytes()
    time.sleep(0.02)
    path.write_bytes(b"{oops")
    time.sleep(0.02)
    for _ in range(3):  # every call, not just the first after the throttle window
        with pytest.raises(CorruptStoreError):
            r.resolve("telegram", "1")
    with pytest.raises(CorruptStoreError):
        r.links_for("alice")
    path.write_bytes(good)
    time.sleep(0.02)
    assert r.resolve("telegram", "1") == "alice"


def test_newer_version_is_refused(path: Path) -> None:
    path.parent.mkdir()
    path.write_text('{"version": 2, "links": {}}')
    with pytest.raises(SchemaVersionError) as info:
        FileIdentityResolver(path)
    assert isinstance(info.value, StoreError)


def test_unwritable_folder_is_a_store_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(StoreError):
        FileIdentityResolver(folder / "identity.json").link("telegram", "1", "alice")


# -- other processes and threads -------------------------------------------------


@pytest.mark.multiprocess
def test_eight_processes_link_into_one_file(path: Path, tmp_path: Path) -> None:
    run_bulk("file", path, workers=8, count=50, scratch=tmp_path)
    r = FileIdentityResolver(path)
    assert len(r.all_links()) == 400
    for worker in range(8):
        for platform, user_id, unified in bulk_ids(worker, 50):
            assert r.resolve(platform, user_id) == unified
    assert _mode(path) == 0o600


@pytest.mark.multiprocess
def test_live_instance_sees_another_process_link(path: Path) -> None:
    r = FileIdentityResolver(path, check_interval=0.05)
    r.link("discord", "2", "bob")
    assert r.resolve("telegram", "1") == "telegram:1"
    run_link("file", path, "telegram", "1", "alice")
    time.sleep(0.06)  # the documented staleness bound
    assert r.resolve("telegram", "1") == "alice"
    r.link("slack", "3", "carol")  # and this write keeps the other process's link
    assert FileIdentityResolver(path).resolve("telegram", "1") == "alice"


@pytest.mark.multiprocess
def test_resolve_is_throttled_but_links_for_is_not(path: Path) -> None:
    r = FileIdentityResolver(path, check_interval=3600)
    r.resolve("telegram", "1")
    run_link("file", path, "telegram", "1", "alice")
    assert r.resolve("telegram", "1") == "telegram:1"  # within the window: stale
    assert [x.platform_user_id for x in r.links_for("alice")] == ["1"]
    assert r.resolve("telegram", "1") == "alice"  # links_for reloaded the table


def test_hammer_one_instance_from_many_threads(path: Path) -> None:
    r = FileIdentityResolver(path)
    threads, per_thread = 16, 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                r.link("telegram", f"{n}-{i}", f"u{n}x{i}")
                if i % 5 == 0:
                    r.unlink("telegram", f"{n}-{i}")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    expected = {f"{n}-{i}": f"u{n}x{i}" for n in range(threads) for i in range(per_thread) if i % 5}
    on_disk = json.loads(path.read_text())["links"]
    assert {k.removeprefix("telegram::"): v["unified"] for k, v in on_disk.items()} == expected
    assert {x.platform_user_id: x.unified_user_id for x in r.all_links()} == expected


# -- temp files left by killed writers -------------------------------------------


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.multiprocess
def test_writer_killed_mid_write_leaves_a_temp_file_a_later_open_removes(path: Path) -> None:
    FileIdentityResolver(path).link("telegram", "1", "alice")
    proc = start_stuck(path, "telegram", "2", "bob")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("writing "), proc.communicate(timeout=10)
        tmp = Path(line.split(" ", 1)[1].strip())
        assert tmp.parent == path.parent and b'"bob"' in tmp.read_bytes()  # a full copy
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert tmp.exists()  # what the kill leaves behind
    r = FileIdentityResolver(path)
    assert tmp.exists()  # younger than STALE_TEMP_AGE: it could be a live writer's
    assert r.resolve("telegram", "2") == "telegram:2" and r.resolve("telegram", "1") == "alice"
    _age(tmp, STALE_TEMP_AGE + 60)
    r = FileIdentityResolver(path)
    assert not tmp.exists()
    assert r.resolve("telegram", "1") == "alice"
    r.link("telegram", "2", "bob")  # the lock the killed writer held is free again
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.json", "identity.json.lock"]


def test_open_removes_stale_temp_files_only_when_unlocked(path: Path) -> None:
    import fcntl

    FileIdentityResolver(path).link("telegram", "1", "alice")
    folder = path.parent
    stale = folder / ".identity.json.stale_01.tmp"
    fresh = folder / ".identity.json.fresh_01.tmp"
    not_ours = [folder / ".identity.json.notes.tmp", folder / ".other.json.stale_02.tmp",
                folder / "identity.json.stale_03.tmp"]  # fmt: skip
    for p in (stale, fresh, *not_ours):
        p.write_text("{}")
    for p in (stale, *not_ours):
        _age(p, STALE_TEMP_AGE + 5)

    fd = os.open(folder / "identity.json.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer at work (another open file description)
        FileIdentityResolver(path)
        assert stale.exists()  # locked: left for a later open
    finally:
        os.close(fd)

    r = FileIdentityResolver(path)
    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in not_ours)
    assert r.resolve("telegram", "1") == "alice"


def test_open_creates_nothing_in_a_folder_without_temp_files(tmp_path: Path) -> None:
    FileIdentityResolver(tmp_path / "missing" / "identity.json")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    FileIdentityResolver(tmp_path / "empty" / "identity.json")
    assert list((tmp_path / "empty").iterdir()) == []
