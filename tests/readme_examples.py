"""Extract the README's Python blocks (``<!-- example: NAME -->`` + a python block) and
the output shown for them (``<!-- output: NAME -->`` + a text block)."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
_PYTHON = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_NAME = re.compile(r"<!-- example: ([\w-]+) -->\n\Z")
_OUTPUT = re.compile(r"<!-- output: ([\w-]+) -->\n```text\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str | None, str]]:
    """``(name or None, source)`` of EVERY python block in the README, in order."""
    text = README.read_text()
    out = []
    for match in _PYTHON.finditer(text):
        before = text[max(0, match.start() - 80) : match.start()]
        name = _NAME.search(before)
        out.append((name.group(1) if name else None, match.group(1)))
    return out


def examples() -> dict[str, str]:
    """NAME -> source of every named python block in the README."""
    return {name: source for name, source in python_blocks() if name is not None}


def outputs() -> dict[str, str]:
    """NAME -> the output the README shows for that example."""
    return dict(_OUTPUT.findall(README.read_text()))


SEED_AGENT_IMPORT = "from onethread import Agent\n"


def with_seed_agent(name: str) -> str:
    """The example with the seed's agent import, ``from praisonaiagents import Agent``."""
    source = examples()[name]
    assert SEED_AGENT_IMPORT in source, f"example {name} does not import onethread's Agent"
    return source.replace(SEED_AGENT_IMPORT, "from praisonaiagents import Agent\n")


def compile_example(name: str, source: str | None = None) -> Any:
    """Compile an example (or ``source`` under its name); top-level ``await`` is allowed."""
    return compile(
        examples()[name] if source is None else source,
        f"README.md:{name}",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
    )


async def run_example(name: str, namespace: dict[str, Any], source: str | None = None) -> None:
    """Run an example (or ``source`` given for it) in ``namespace``, awaiting it if it awaits."""
    result = eval(compile_example(name, source), namespace)  # noqa: S307 - our own README
    if asyncio.iscoroutine(result):
        await result


def run_plain_example(name: str, namespace: dict[str, Any]) -> None:
    """Run an example that does not await, as a plain script would (no event loop)."""
    result = eval(compile_example(name), namespace)  # noqa: S307 - our own README
    assert result is None, f"example {name} awaits; use run_example"
