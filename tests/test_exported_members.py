"""The public API named in DESIGN.md is exported, documented, and cannot drift."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

PUBLIC = {
    "onethread": ["Agent", "File", "__version__"],
    "onethread.platforms": [
        "PLATFORMS", "Adapter", "Attachment", "Inbound", "OnInbound", "load_adapter_class",
    ],
    "onethread.bots": [
        "Bot", "BotOS", "BotSessionManager", "amirror_to_session", "mirror_to_session",
    ],
    "onethread.session": [
        "FileIdentityResolver", "IdentityLink", "IdentityResolverProtocol",
        "InMemoryIdentityResolver", "PostgresIdentityResolver", "RedisIdentityResolver",
        "SQLiteIdentityResolver", "SessionContext", "clear_session_context",
        "get_session_context", "set_session_context", "unlinked_id",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_exported_members(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])


@pytest.mark.parametrize(
    "module,name", [(m, n) for m, names in PUBLIC.items() for n in names if n != "__version__"]
)
def test_every_public_name_has_a_docstring(module: str, name: str) -> None:
    if name in ("RedisIdentityResolver", "PostgresIdentityResolver"):
        pytest.importorskip({"RedisIdentityResolver": "redis"}.get(name, "psycopg"))
    if name == "OnInbound":  # a type alias: documented in the module and the README
        return
    obj = getattr(importlib.import_module(module), name)
    assert inspect.getdoc(obj), f"{module}.{name} has no docstring"


def test_public_names_appear_in_the_docs() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    docs = (root / "README.md").read_text() + "".join(
        p.read_text() for p in (root / "docs").glob("*.md")
    )
    missing = [n for names in PUBLIC.values() for n in names
               if n not in docs and n != "__version__"]  # fmt: skip
    assert not missing, f"not in README.md or docs/: {missing}"


def test_import_is_light() -> None:
    code = (
        "import sys, onethread, onethread.bots, onethread.session\n"
        "heavy = {'telegram', 'discord', 'slack_bolt', 'slack_sdk', 'openai', 'redis',"
        " 'psycopg', 'pydantic', 'yaml'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_sdk_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from onethread.errors import MissingDependencyError
    from onethread.platforms.registry import load_adapter_class

    monkeypatch.setitem(sys.modules, "telegram", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r'pip install "onethread\[telegram\]"'):
        load_adapter_class("telegram")
