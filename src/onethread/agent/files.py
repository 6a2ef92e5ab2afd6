"""Files the bot sends: ``onethread.File``, and the files a turn's tools produced.

A tool returns ``File(...)`` (or a list mixing text and files) to send a file
or an image with the reply. The agent takes the files out of the tool's
result (the model is told a file will be sent, by name, type and size), and
the session manager, which opened :func:`turn_files` around the turn, stores
them in the blob store and hands them to the platform with the reply.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..session.blobs.base import sniff_mime

__all__ = ["File", "split_result", "turn_files"]


@dataclass(frozen=True, slots=True, init=False)
class File:
    """A file to send: ``File("report.pdf")``, ``File(png_bytes, name="chart.png")``.

    ``data`` are read at construction (a path is read now, so a temporary file
    may be deleted once the tool returns). ``name`` defaults to the path's
    file name (``"file"`` for bytes); ``mime`` to the type the bytes show.
    Images are sent as photos where the platform has photos, the rest as
    documents. Raises ``FileNotFoundError``/``OSError`` for an unreadable
    path and ``TypeError`` for anything but a path or bytes.
    """

    data: bytes
    name: str
    mime: str

    def __init__(
        self, source: str | os.PathLike[str] | bytes, *, name: str = "", mime: str = ""
    ) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            default_name = "file"
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            data = path.read_bytes()
            default_name = path.name
        else:
            raise TypeError(f"File takes a path or bytes, not {type(source).__name__}")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "name", name or default_name)
        object.__setattr__(self, "mime", mime or sniff_mime(data))

    @property
    def kind(self) -> str:
        """``"image"`` for images (sent as photos), else ``"file"``."""
        return "image" if self.mime.startswith("image/") else "file"

    def describe(self) -> str:
        """What the model is told: ``(file chart.png, image/png, 12 KB, sent with your reply)``."""
        size = len(self.data)
        shown = f"{size / 1_000_000:.1f} MB" if size >= 1_000_000 else f"{size / 1000:.0f} KB"
        return f"(file {self.name}, {self.mime}, {shown}, will be sent with your reply)"


# The files produced during the current turn; a list owned by the task that runs
# the turn (set by turn_files(), read by the agent's tool loop in the same task
# or a copied context: the list object is shared, appends are atomic).
_files: ContextVar[list[File] | None] = ContextVar("onethread_turn_files", default=None)


class turn_files:  # noqa: N801 - used as a function: ``with turn_files() as produced``
    """Collect the files tools return during the ``with`` block (this task and its tools).

    A plain class rather than a generator context manager: it runs on every turn.
    """

    __slots__ = ("_collected", "_token")

    def __enter__(self) -> list[File]:
        self._collected: list[File] = []
        self._token = _files.set(self._collected)
        return self._collected

    def __exit__(self, *exc_info: object) -> None:
        _files.reset(self._token)


def split_result(result: Any) -> Any:
    """A tool result with its files taken out and described.

    ``File`` -> its description; a list/tuple -> the same with each file
    described. The files go to the collector of :func:`turn_files`; outside
    one (an agent called directly) they cannot be sent, and the model is told so.
    """
    items = result if isinstance(result, list | tuple) else [result]
    if not any(isinstance(item, File) for item in items):
        return result
    collected = _files.get()
    out: list[Any] = []
    for item in items:
        if isinstance(item, File):
            if collected is None:
                out.append(f"(file {item.name} could not be sent: no conversation to send it in)")
            else:
                collected.append(item)
                out.append(item.describe())
        else:
            out.append(item)
    if not isinstance(result, list | tuple):
        return out[0]
    return "\n".join(x if isinstance(x, str) else str(x) for x in out)
