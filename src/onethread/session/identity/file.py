"""An identity resolver backed by one JSON file, safe across threads and processes.

File format (version 1)::

    {"version": 1,
     "links": {"telegram::12345": {"unified": "alice", "linked_at": 1700000000.0}}}

PraisonAI's format, ``{"links": {"telegram::12345": "alice"}}``, is read too
(``linked_at`` is then 0.0); the first change rewrites the file as version 1,
keeping every link and any other top-level key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import CorruptStoreError, SchemaVersionError, StoreError
from ..home import onethread_home
from ._common import LinkTable, ResolverContextManager, validate_link_args
from .base import IdentityLink

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_fd(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)

    def _try_lock_fd(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _try_lock_fd(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


__all__ = ["FORMAT_VERSION", "STALE_TEMP_AGE", "FileIdentityResolver"]

log = logging.getLogger("onethread.identity")

FORMAT_VERSION = 1
STALE_TEMP_AGE = 60.0  # seconds: an older temp file whose writer is gone is removed on open
_KEY_SEP = "::"
_monotonic = time.monotonic

# What identifies one version of the file: (device, inode, size, mtime_ns, ctime_ns).
# Every write is a rename of a fresh file, so the inode alone changes on each one;
# ``None`` means the file does not exist.
_Signature = tuple[int, int, int, int, int] | None


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _default_path() -> Path:
    explicit = os.environ.get("ONETHREAD_IDENTITY_PATH")
    if explicit:
        return Path(explicit).expanduser()
    return onethread_home() / "identity.json"


def _parse(path: str, data: bytes) -> tuple[list[IdentityLink], dict[str, Any]]:
    """Links and the top-level document; ``CorruptStoreError`` naming what is wrong."""
    if not data.strip():
        return [], {}
    try:
        doc = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptStoreError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise CorruptStoreError(path, "expected a JSON object at the top level")
    version = doc.get("version", FORMAT_VERSION)
    if type(version) is not int or version < 1:
        raise CorruptStoreError(path, f"'version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SchemaVersionError(path, version, FORMAT_VERSION)
    raw = doc.get("links", {})
    if not isinstance(raw, dict):
        raise CorruptStoreError(path, "'links' must be a JSON object")
    links: list[IdentityLink] = []
    for key, value in raw.items():
        platform, sep, platform_user_id = key.partition(_KEY_SEP)
        unified: object
        linked_at: object
        if isinstance(value, str):  # PraisonAI's format
            unified, linked_at = value, 0.0
        elif isinstance(value, dict):
            unified, linked_at = value.get("unified"), value.get("linked_at", 0.0)
        else:
            raise CorruptStoreError(path, f"link {key!r}: expected an object or a string")
        if not isinstance(unified, str):
            raise CorruptStoreError(path, f"link {key!r}: 'unified' must be a string")
        if not isinstance(linked_at, int | float) or isinstance(linked_at, bool):
            raise CorruptStoreError(path, f"link {key!r}: 'linked_at' must be a number")
        try:
            if not sep:
                raise ValueError("the key must be 'platform::platform_user_id'")
            validate_link_args(platform, platform_user_id, unified)
        except ValueError as exc:
            raise CorruptStoreError(path, f"link {key!r}: {exc}") from exc
        links.append(IdentityLink(platform, platform_user_id, unified, float(linked_at)))
    return links, doc


class FileIdentityResolver(ResolverContextManager):
    """Links kept in one JSON file (default ``~/.onethread/identity.json``).

    The path is, in order: the ``path`` argument, ``$ONETHREAD_IDENTITY_PATH``,
    ``$ONETHREAD_HOME/identity.json``, ``~/.onethread/identity.json``; the
    environment is read when the resolver is constructed, not at import.

    Writes are atomic (temp file in the same folder, fsync, rename, fsync of the
    folder); the file is created 0600 and its folder, if created, 0700. Every
    change takes an exclusive lock on ``<path>.lock`` (``flock``), re-reads the
    file and applies only that one change to what is on disk, so links made by
    other processes (``onethread identity link``) are never lost.

    Staleness: ``resolve`` answers from memory and checks the file's ``stat``
    at most once per ``check_interval`` seconds (default 0.05), reloading when
    it changed, so another process's change shows within that interval.
    ``links_for`` and ``all_links`` check on every call.

    Temp files: a writer killed between writing its temp file
    (``.identity.json.XXXXXXXX.tmp``, up to a full copy) and the rename leaves
    it behind. Opening a resolver removes those older than
    ``STALE_TEMP_AGE`` (a minute), and only while it holds the lock file, so
    no live writer's temp file is touched; a busy lock defers it to a later
    open.

    Errors: a file that cannot be read or parsed raises ``CorruptStoreError``
    (``.path`` names it) at construction, on reload (from ``resolve`` too,
    until it is fixed) and from every change, which never writes over it; a
    file from a newer onethread (``version`` > 1) raises ``SchemaVersionError``
    the same way. A missing or empty file is an empty store.

    Concurrency: ``self._lock`` (a ``threading.Lock``) guards the table swap,
    the file signature and every read-merge-write; the lock file serialises
    writers across processes and instances. ``resolve`` takes no lock on its
    fast path (an atomic attribute read and two ``dict.get``); its periodic
    check only tries the lock and skips when a change is under way, because
    that change leaves the table current.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, check_interval: float = 0.05
    ) -> None:
        """Open (not create) the file; ``CorruptStoreError`` if it exists and is unreadable."""
        self.path = Path(path).expanduser() if path is not None else _default_path()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._broken: StoreError | None = None
        self._broken_signature: _Signature = None
        signature, links, _ = self._load()
        self._install(LinkTable(links), signature)
        self._remove_stale_temps()

    def resolve(self, platform: str, platform_user_id: str) -> str:
        """Return the unified id, or ``f"{platform}:{platform_user_id}"`` when unlinked.

        Served from memory; may raise ``CorruptStoreError`` if the file turned corrupt.
        """
        if _monotonic() >= self._next_check:
            self._poll()
        accounts = self._resolved.get(platform)
        if accounts is not None:
            unified = accounts.get(platform_user_id)
            if unified is not None:
                return unified
        return f"{platform}:{platform_user_id}"

    def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
        """Bind the account to ``unified_user_id``; moves it if linked to someone else.

        Re-linking to the same id is a no-op (no write). Raises ``ValueError``
        for invalid arguments, ``CorruptStoreError`` if the file is corrupt,
        ``StoreError`` if it cannot be written. Thread- and process-safe.
        """
        validate_link_args(platform, platform_user_id, unified_user_id)

        def apply(table: LinkTable) -> bool:
            old = table.get(platform, platform_user_id)
            if old is not None and old.unified_user_id == unified_user_id:
                return False
            table.put(IdentityLink(platform, platform_user_id, unified_user_id, time.time()))
            return True

        self._change(apply)

    def claim(self, platform: str, platform_user_id: str, unified_user_id: str) -> bool:
        """Link the account to ``unified_user_id`` unless another account has that id.

        ``True`` if the account is now linked to it (also when it already
        was), ``False`` if the id is taken (no write). The check and the write
        happen under the lock file, on what is on disk: two processes claiming
        one id at once cannot both win. Errors as :meth:`link`.
        """
        validate_link_args(platform, platform_user_id, unified_user_id)
        claimed = False

        def apply(table: LinkTable) -> bool:
            nonlocal claimed
            if table.taken(unified_user_id, platform, platform_user_id):
                return False
            claimed = True
            old = table.get(platform, platform_user_id)
            if old is not None and old.unified_user_id == unified_user_id:
                return False
            table.put(IdentityLink(platform, platform_user_id, unified_user_id, time.time()))
            return True

        self._change(apply)
        return claimed

    def unlink(self, platform: str, platform_user_id: str) -> bool:
        """Remove the account's link; ``True`` if there was one.

        Errors and concurrency as :meth:`link`.
        """
        return self._change(lambda table: table.remove(platform, platform_user_id) is not None)

    def links_for(self, unified_user_id: str) -> list[IdentityLink]:
        """Every account linked to ``unified_user_id``, sorted by (platform, account).

        Checks the file first; ``CorruptStoreError`` if it is corrupt.
        """
        with self._lock:
            self._check()
            return self._table.links_for(unified_user_id)

    def all_links(self) -> list[IdentityLink]:
        """Every link, sorted by (platform, platform_user_id); errors as :meth:`links_for`."""
        with self._lock:
            self._check()
            return self._table.all_links()

    # -- internals -------------------------------------------------------------

    def _install(self, table: LinkTable, signature: _Signature) -> None:
        """Swap in a fresh table (caller holds the lock, or is ``__init__``)."""
        self._table = table
        self._resolved = table.resolved
        self._signature = signature
        self._broken = None
        self._next_check = _monotonic() + self._check_interval

    def _poll(self) -> None:
        """``resolve``'s periodic check: never waits for a change in progress."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._check()
        finally:
            self._lock.release()

    def _check(self) -> None:
        """Reload the file if it changed since last seen (caller holds the lock)."""
        self._next_check = _monotonic() + self._check_interval
        signature = self._stat()
        if self._broken is not None:
            if signature == self._broken_signature:
                self._next_check = 0.0
                raise self._broken.with_traceback(None)
        elif signature == self._signature:
            return
        try:
            signature, links, _ = self._load()
        except StoreError as exc:
            # Keep serving nothing stale: every resolve re-checks until the file is fixed.
            self._broken, self._broken_signature = exc, signature
            self._next_check = 0.0
            raise
        self._install(LinkTable(links), signature)

    def _stat(self) -> _Signature:
        try:
            return _signature(os.stat(self.path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptStoreError(str(self.path), f"cannot be read ({exc})") from exc

    def _load(self) -> tuple[_Signature, list[IdentityLink], dict[str, Any]]:
        # fstat of the open file: the signature belongs to exactly the bytes read,
        # which never change afterwards because every write renames a new file.
        try:
            with open(self.path, "rb") as f:
                signature = _signature(os.fstat(f.fileno()))
                data = f.read()
        except FileNotFoundError:
            return None, [], {}
        except OSError as exc:
            raise CorruptStoreError(str(self.path), f"cannot be read ({exc})") from exc
        links, doc = _parse(str(self.path), data)
        return signature, links, doc

    def _change(self, apply: Callable[[LinkTable], bool]) -> bool:
        """Read-merge-write one change under both locks; return what ``apply`` said."""
        with self._lock, self._file_lock():
            signature, links, doc = self._load()
            table = LinkTable(links)
            changed = apply(table)
            if changed:
                signature = self._write(table, doc)
            self._install(table, signature)
            return changed

    def _remove_stale_temps(self) -> int:
        """Remove temp files of killed writers (see the class doc); return how many.

        Never raises: a temp file that cannot be removed now costs disk space,
        not links, and is logged.
        """
        folder = self.path.parent
        pattern = re.compile(re.escape(f".{self.path.name}.") + r"[a-z0-9_]{8}\.tmp")
        cutoff = time.time() - STALE_TEMP_AGE
        try:
            names = [e.name for e in os.scandir(folder) if pattern.fullmatch(e.name)]
        except OSError:  # no folder yet (nothing to clean) or unreadable
            return 0
        stale = [folder / name for name in names if _mtime(folder / name) < cutoff]
        if not stale:
            return 0
        removed = 0
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("%s: cannot open the lock file to remove stale temp files (%s)",
                        self._lock_path, exc)  # fmt: skip
            return 0
        try:
            if not _try_lock_fd(fd):
                return 0  # a writer is at work: the next open cleans up
            for tmp in stale:
                try:
                    os.unlink(tmp)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("%s: cannot remove a stale temp file (%s)", tmp, exc)
        finally:
            os.close(fd)  # releases the lock
        if removed:
            log.info("%s: removed %d temp file(s) left by killed writers", folder, removed)
        return removed

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        try:
            self._ensure_folder()
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"{self._lock_path}: cannot open the lock file ({exc})") from exc
        try:
            _lock_fd(fd)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _ensure_folder(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)  # makedirs' mode is filtered by the umask

    def _write(self, table: LinkTable, doc: dict[str, Any]) -> _Signature:
        """Atomically replace the file with ``table``; return the new file's signature."""
        out = dict(doc)
        out["version"] = FORMAT_VERSION
        out["links"] = {
            f"{link.platform}{_KEY_SEP}{link.platform_user_id}": {
                "unified": link.unified_user_id,
                "linked_at": link.linked_at,
            }
            for link in table.all_links()
        }
        data = (json.dumps(out, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        folder = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:  # mkstemp creates it 0600
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            _fsync_folder(folder)
            return _signature(os.stat(self.path))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the identity file ({exc})") from exc


def _mtime(path: Path) -> float:
    """``path``'s modification time; +inf if it is gone (never counted as stale)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable. Not possible (nor needed) on Windows."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
