"""A separate OS process that writes to an identity store, for the multiprocess tests.

Usage::

    python _identity_worker.py KIND PATH link PLATFORM USER_ID UNIFIED
    python _identity_worker.py KIND PATH bulk WORKER COUNT GO_FILE
    python _identity_worker.py file PATH stuck PLATFORM USER_ID UNIFIED

KIND is ``file`` or ``sqlite``. ``bulk`` prints ``ready``, waits until GO_FILE
exists (a start barrier, so every worker writes at the same time), then links
``telegram``/``w{WORKER}-{i}`` to ``user{WORKER}x{i}`` for i in range(COUNT).

``stuck`` links one account but stops for good between writing (and
fsyncing) the temp file and renaming it over PATH, after printing
``writing TEMP_PATH``: the moment a SIGKILL leaves the temp file behind.

The tests call :func:`run_link`, :func:`run_bulk` and :func:`start_stuck`
rather than this script's CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from onethread.session.identity.file import FileIdentityResolver
from onethread.session.identity.sqlite import SQLiteIdentityResolver


def bulk_ids(worker: int, count: int) -> list[tuple[str, str, str]]:
    """The (platform, platform_user_id, unified_user_id) triples worker ``worker`` links."""
    return [("telegram", f"w{worker}-{i}", f"user{worker}x{i}") for i in range(count)]


def _command(*args: object) -> list[str]:
    return [sys.executable, __file__, *map(str, args)]


def run_link(kind: str, path: Path, platform: str, user_id: str, unified: str) -> None:
    """Link one account from a fresh OS process; raise if the process fails."""
    done = subprocess.run(
        _command(kind, path, "link", platform, user_id, unified),
        timeout=30,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def run_bulk(kind: str, path: Path, workers: int, count: int, scratch: Path) -> None:
    """Run ``workers`` processes that each link ``count`` accounts at the same moment."""
    go_file = scratch / "go"
    procs = [
        subprocess.Popen(
            _command(kind, path, "bulk", worker, count, go_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.communicate(timeout=30)
        go_file.touch()
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def start_stuck(path: Path, platform: str, user_id: str, unified: str) -> subprocess.Popen[str]:
    """A writer process stopped mid-write (see ``stuck``); its first line names the temp file."""
    return subprocess.Popen(
        _command("file", path, "stuck", platform, user_id, unified),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_before_rename() -> None:
    """Make the next atomic write stop after its temp file is complete, before the rename."""

    def stuck(src: str, dst: str) -> None:
        print("writing", src, flush=True)
        time.sleep(3600)

    os.replace = stuck  # type: ignore[assignment]  # this process only


def main(argv: list[str]) -> int:
    kind, path, mode, *rest = argv
    resolver: FileIdentityResolver | SQLiteIdentityResolver
    if kind == "file":
        resolver = FileIdentityResolver(path)
    elif kind == "sqlite":
        resolver = SQLiteIdentityResolver(path)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    with resolver:
        if mode in ("link", "stuck"):
            platform, user_id, unified = rest
            if mode == "stuck":
                _stop_before_rename()
            resolver.link(platform, user_id, unified)
        elif mode == "bulk":
            worker, count, go_file = int(rest[0]), int(rest[1]), rest[2]
            print("ready", flush=True)
            deadline = time.monotonic() + 30
            while not os.path.exists(go_file):
                if time.monotonic() > deadline:
                    raise SystemExit("start barrier timed out")
                time.sleep(0.002)
            for platform, user_id, unified in bulk_ids(worker, count):
                resolver.link(platform, user_id, unified)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
