"""Where the email watcher left off, kept in a small JSON file across restarts.

The folder's ``UIDVALIDITY`` and the last UID processed (so a restart neither
answers a mail twice nor misses one), and the latest mail of recent threads
(so a reply sent after a restart still carries the right ``In-Reply-To``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from pathlib import Path

from ..errors import ConfigError
from .email_mime import ReplyTo

__all__ = ["MAX_THREADS", "MailState"]

#: Threads whose latest mail is remembered (the oldest are forgotten first).
MAX_THREADS = 500


class MailState:
    """``UIDVALIDITY``, the last UID processed and the latest mail of recent threads.

    Touched on the event loop thread only; :meth:`save` writes a snapshot
    from a worker thread (temp file, then rename: a crash leaves the old one).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.uidvalidity = 0
        self.last_uid = 0
        self.threads: OrderedDict[str, ReplyTo] = OrderedDict()
        self.loaded = False

    def load(self) -> None:
        """Read the file (none yet: a first start). ``ConfigError`` naming it when unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            uidvalidity, last_uid = int(data["uidvalidity"]), int(data["last_uid"])
            threads = {
                key: ReplyTo(str(v["message_id"]), tuple(map(str, v.get("references", ()))),
                             str(v.get("subject", "")))
                for key, v in data.get("threads", {}).items()
            }  # fmt: skip
        except FileNotFoundError:
            self.loaded = True
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"cannot read the email state file {self.path} ({exc!r}); fix or delete it "
                "(deleting it makes the next start skip mail already in the folder)"
            ) from exc
        self.uidvalidity, self.last_uid = uidvalidity, last_uid
        self.threads = OrderedDict(threads)
        self.loaded = True

    def remember(self, chat_id: str, thread_id: str, reply: ReplyTo) -> None:
        """Keep ``reply`` as the mail a reply in that thread answers (the newest first kept)."""
        key = f"{chat_id}\n{thread_id}"
        self.threads.pop(key, None)
        self.threads[key] = reply
        while len(self.threads) > MAX_THREADS:
            self.threads.popitem(last=False)

    def reply_to(self, chat_id: str, thread_id: str) -> ReplyTo | None:
        """The mail a reply in that thread answers (``None``: not known)."""
        return self.threads.get(f"{chat_id}\n{thread_id}")

    async def save(self) -> None:
        """Write the state (a snapshot taken now, written from a worker thread)."""
        snapshot = {
            "uidvalidity": self.uidvalidity,
            "last_uid": self.last_uid,
            "threads": {
                key: {"message_id": r.message_id, "references": list(r.references),
                      "subject": r.subject}
                for key, r in self.threads.items()
            },
        }  # fmt: skip
        await asyncio.to_thread(_write_json, self.path, snapshot)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
