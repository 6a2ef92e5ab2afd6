"""What the Matrix adapter keeps between runs, in one small JSON file per account.

``$ONETHREAD_HOME/matrix/<user id>.json`` (file 0600, folder 0700) holds:

- ``device_id`` and, after a password login, ``access_token``: a restart
  reuses the device instead of logging in again (each login would add a
  device to the account's list);
- ``next_batch``: the sync token after the last batch handed to the bot, so a
  restart neither replays old messages nor misses new ones;
- ``direct_rooms``: rooms that were invited to as direct chats (``is_direct``);
- ``told_encrypted``: encrypted rooms already told that the bot cannot read them.

Written atomically (a temporary file, fsync, rename), so a crash leaves the
old file or the new one. A file that cannot be parsed is an error naming it
(``CorruptStoreError``), never overwritten. Only the adapter's task touches
it (one writer per account: the event loop thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptStoreError
from ..session.home import onethread_home

__all__ = ["MatrixState", "state_path"]

_MAX_ROOMS = 10_000  # bounds each room list (a long-lived bot in very many rooms)


def state_path(user_id: str, home: Path | None = None) -> Path:
    """Where the state of ``user_id`` is kept (``@bot:example.org`` -> ``bot_example.org.json``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", user_id.lstrip("@")) or "account"
    return (home or onethread_home()) / "matrix" / f"{name}.json"


@dataclass
class MatrixState:
    """The adapter's saved state for one account (see the module docstring)."""

    path: Path
    homeserver: str = ""
    user_id: str = ""
    device_id: str = ""
    access_token: str = ""  # only after a password login (a given token is never written)
    next_batch: str = ""
    direct_rooms: list[str] = field(default_factory=list)
    told_encrypted: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> MatrixState:
        """The state at ``path`` (an empty one when there is no file yet).

        Raises ``CorruptStoreError`` when the file exists but is not this state.
        """
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise CorruptStoreError(str(path), f"cannot be read ({exc})") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CorruptStoreError(str(path), f"is not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise CorruptStoreError(str(path), "is not a JSON object")
        state = cls(path)
        for name in ("homeserver", "user_id", "device_id", "access_token", "next_batch"):
            value = data.get(name, "")
            if not isinstance(value, str):
                raise CorruptStoreError(str(path), f"{name} is not a string")
            setattr(state, name, value)
        for name in ("direct_rooms", "told_encrypted"):
            rooms = data.get(name, [])
            if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
                raise CorruptStoreError(str(path), f"{name} is not a list of room ids")
            setattr(state, name, rooms)
        return state

    def forget_login(self) -> None:
        """Drop the saved token (it was refused); the device id stays, to be reused."""
        self.access_token = ""

    def add_room(self, which: str, room_id: str) -> bool:
        """Add ``room_id`` to ``direct_rooms`` or ``told_encrypted``; False if already there."""
        rooms: list[str] = getattr(self, which)
        if room_id in rooms:
            return False
        rooms.append(room_id)
        del rooms[:-_MAX_ROOMS]
        return True

    def save(self) -> None:
        """Write the file atomically, 0600 in a 0700 folder."""
        data: dict[str, Any] = {
            "homeserver": self.homeserver,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "access_token": self.access_token,
            "next_batch": self.next_batch,
            "direct_rooms": self.direct_rooms,
            "told_encrypted": self.told_encrypted,
        }
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
