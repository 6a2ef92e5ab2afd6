"""Platform adapters by name. Adding a platform is one module plus one entry here."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import ConfigError, MissingDependencyError
from .base import Adapter

__all__ = ["PLATFORMS", "PlatformSpec", "load_adapter_class"]


@dataclass(frozen=True, slots=True)
class PlatformSpec:
    """Where an adapter lives and which install extra brings its SDK."""

    module: str
    cls: str
    extra: str | None  # None: no optional dependency
    sdk_module: str | None = None  # imported to tell "SDK missing" from a bug


PLATFORMS: dict[str, PlatformSpec] = {
    "telegram": PlatformSpec(
        "onethread.platforms.telegram", "TelegramAdapter", "telegram", "telegram"
    ),
    "discord": PlatformSpec("onethread.platforms.discord", "DiscordAdapter", "discord", "discord"),
    "slack": PlatformSpec("onethread.platforms.slack", "SlackAdapter", "slack", "slack_bolt"),
    "web": PlatformSpec("onethread.platforms.web", "WebAdapter", None),
    "console": PlatformSpec("onethread.platforms.console", "ConsoleAdapter", None),
}


def load_adapter_class(name: str) -> type[Adapter]:
    """Import the adapter class for platform ``name``.

    Raises ``ConfigError`` for an unknown name (listing the known ones) and
    ``MissingDependencyError`` (with the ``pip install`` line) when the
    platform's SDK is not installed.
    """
    spec = PLATFORMS.get(name)
    if spec is None:
        raise ConfigError(
            f"unknown platform {name!r}; known platforms: {', '.join(sorted(PLATFORMS))}"
        )
    if spec.sdk_module is not None and spec.extra is not None:
        try:
            importlib.import_module(spec.sdk_module)
        except ImportError as exc:
            raise MissingDependencyError(f"the {name} platform", spec.extra) from exc
    module = importlib.import_module(spec.module)
    cls = getattr(module, spec.cls)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"{spec.module}.{spec.cls} is not an Adapter subclass")
    return cls
