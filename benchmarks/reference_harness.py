"""The reference implementation (praisonai-bot) on bench_turns.py's closed loop.

Runs in the reference's OWN interpreter (``.reference-venv/bin/python``), never
in onethread's: it imports ``praisonai_bot`` and the standard library only, and
is driven by ``bench_reference.py`` over stdin/stdout, one JSON line per
command, so both implementations are measured in the same run, alternating:

    {"store": "memory" | "json", "users": 100, "seconds": 2.0,
     "agent": "stub" | "praisonaiagents"}                        -> one result line
    {"quit": true}                                              -> exits

The path measured is the reference's own session path,
``BotSessionManager.chat(agent, user_id, prompt, chat_id=..., message_id=...)``:
identity resolve, per-person turn lock (one ``LockMap`` shared by the two
platforms' managers, as the reference's BotOS wires it), the per-agent lock,
history load in the default executor, the ``chat_history`` swap, the agent
call in the executor, the save (trim to ``max_history``) in the executor, the
restore. Stores: ``memory`` is ``BotSessionManager()``'s default (no store:
history in a dict); ``json`` is the store its adapters get by default
(``build_session_manager`` -> ``get_default_session_store()``, a
``DefaultSessionStore``: one JSON file per session, file-locked, atomically
replaced), here in a temporary directory. Agents: ``stub`` (``EchoAgent``,
the least the manager needs: its session machinery alone) or
``praisonaiagents`` (its real ``Agent`` with the provider answered in process,
see ``praisonai_agent``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tempfile
import time
from typing import Any

PLATFORMS = ("telegram", "discord")


class EchoAgent:
    """The least a praisonaiagents ``Agent`` must offer ``BotSessionManager.chat``.

    ``chat_history`` (swapped in and out by the manager around each turn) and
    a synchronous ``chat(prompt)`` that, like ``Agent.chat``, appends the user
    message and the reply to ``chat_history`` and returns the reply. Zero
    latency, like onethread's ``EchoModel``: the reply is ``echo: <prompt>``.
    """

    def __init__(self) -> None:
        self.name = "bench"
        self.chat_history: list[dict[str, Any]] = []

    def chat(self, prompt: str) -> str:
        reply = f"echo: {prompt}"
        self.chat_history.append({"role": "user", "content": prompt})
        self.chat_history.append({"role": "assistant", "content": reply})
        return reply


def echo_of(messages: Any) -> str:
    """``echo: <last user message>`` for an OpenAI chat or Responses API input."""
    if isinstance(messages, str):
        return f"echo: {messages}"
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # Responses API content parts
                content = "".join(part.get("text", "") for part in content)
            return f"echo: {content}"
    return "echo: "


def praisonai_agent() -> Any:
    """A real praisonaiagents ``Agent`` whose model answers at once, in process.

    ``Agent(llm="gpt-4o-mini")`` as the reference's docs build it; its OpenAI
    clients get an ``httpx2.MockTransport`` that answers every request (the
    Responses API it tries first, and Chat Completions) with
    ``echo: <last user message>`` without a socket. Everything from
    ``Agent.chat`` down to the openai SDK's request building and response
    parsing is the reference's own code; only the provider is gone.
    """
    import os

    import httpx2
    from openai import AsyncOpenAI, OpenAI
    from praisonaiagents import Agent

    os.environ.setdefault("OPENAI_API_KEY", "not-used")

    def answer(request: Any) -> Any:
        body = json.loads(request.content)
        text = echo_of(body.get("input", body.get("messages", [])))
        if request.url.path.endswith("/responses"):
            return httpx2.Response(
                200,
                json={
                    "id": "r",
                    "object": "response",
                    "created_at": 0,
                    "model": body["model"],
                    "status": "completed",
                    "output": [
                        {
                            "type": "message",
                            "id": "m",
                            "status": "completed",
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}],
                        }
                    ],
                    "parallel_tool_calls": False,
                    "tool_choice": "auto",
                    "tools": [],
                    "usage": {
                        "input_tokens": 1,
                        "output_tokens": 1,
                        "total_tokens": 2,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens_details": {"reasoning_tokens": 0},
                    },
                },
            )
        return httpx2.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    async def answer_async(request: Any) -> Any:
        return answer(request)

    agent = Agent(name="bench", instructions="Echo.", llm="gpt-4o-mini", output="silent")
    client = agent._openai_client  # noqa: SLF001 - the seam: its lazily made SDK clients
    client._sync_client = OpenAI(  # noqa: SLF001
        api_key="not-used", http_client=httpx2.Client(transport=httpx2.MockTransport(answer))
    )
    client._async_client = AsyncOpenAI(  # noqa: SLF001
        api_key="not-used",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer_async)),
    )
    return agent


class World:
    """Two platforms' session managers, ``users`` people linked across both."""

    def __init__(
        self, store: str, users: int, max_history: int, tmp: str, agent: str = "stub"
    ) -> None:
        from praisonai_bot._lockmap import LockMap
        from praisonai_bot.bots._session import BotSessionManager
        from praisonaiagents.session.identity import InMemoryIdentityResolver

        resolver = InMemoryIdentityResolver()
        for i in range(users):
            resolver.link("telegram", f"t{i}", f"user{i}")
            resolver.link("discord", f"d{i}", f"user{i}")
        backing: Any = None
        if store == "json":
            from praisonaiagents.session.store import DefaultSessionStore

            backing = DefaultSessionStore(session_dir=tmp)
        elif store != "memory":
            raise SystemExit(f"reference_harness: unknown store {store!r} (memory or json)")
        locks = LockMap()
        self.managers = {
            name: BotSessionManager(
                max_history=max_history,
                store=backing,
                platform=name,
                identity_resolver=resolver,
                turn_lock_map=locks,
            )
            for name in PLATFORMS
        }
        if agent not in ("stub", "praisonaiagents"):
            raise SystemExit(
                f"reference_harness: unknown agent {agent!r} (stub or praisonaiagents)"
            )
        self.agent = EchoAgent() if agent == "stub" else praisonai_agent()
        self.users = users
        self.counter = 0
        self.turn_of = [0] * users
        self.turns = 0
        self.wrong = 0

    async def closed_loop(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def user(i: int) -> None:
            while loop.time() < deadline:
                turn = self.turn_of[i]
                self.turn_of[i] = turn + 1
                name = PLATFORMS[turn % 2]
                self.counter += 1
                text = f"m{self.counter}"
                reply = await self.managers[name].chat(
                    self.agent,
                    f"{name[0]}{i}",
                    text,
                    chat_id=f"{name}-{i}",
                    message_id=text,
                )
                if reply == f"echo: {text}":
                    self.turns += 1
                else:
                    self.wrong += 1

        await asyncio.gather(*(user(i) for i in range(self.users)))


async def closed(
    store: str, users: int, seconds: float, max_history: int, agent: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(store, users, max_history, tmp, agent)
        await world.closed_loop(0.3)  # warm-up, like bench_turns.closed
        world.turns = 0
        gc.collect()
        t0, cpu0 = time.perf_counter(), time.process_time()
        await world.closed_loop(seconds)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        session = world.managers["telegram"]._load_history("t0")  # noqa: SLF001
    return {
        "store": store,
        "agent": agent,
        "users": users,
        "turns": world.turns,
        "wrong_replies": world.wrong,
        "wall_s": elapsed,
        "cpu_s": cpu,
        "turns_per_s": world.turns / elapsed,
        "history_len_user0": len(session),
    }


def main() -> None:
    from importlib.metadata import version

    print(json.dumps({"ready": True, "version": version("praisonai-bot")}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            return
        result = asyncio.run(
            closed(
                command["store"],
                int(command["users"]),
                float(command["seconds"]),
                int(command.get("max_history", 20)),
                str(command.get("agent", "stub")),
            )
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
