"""Extract the README's runnable examples (``<!-- example: NAME -->`` + a python block)."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
_EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    """NAME -> source of every marked example in the README."""
    return dict(_EXAMPLE.findall(README.read_text()))


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
