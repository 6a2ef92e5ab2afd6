"""Bring your own agent: what onethread's wrapper adds to a turn, per framework.

For each framework (praisonaiagents, OpenAI Agents SDK, pydantic-ai, LangGraph),
one agent on tests/fake_openai.py at zero model latency (the real openai SDK over
HTTP on 127.0.0.1), and the same history of ``--history`` entries:

- direct: the framework called as its own docs show, with that history in its
  own format, built once beforehand (praisonaiagents: ``chat_history`` set on
  the agent, then ``achat``; Agents SDK: ``Runner.run`` with input items;
  pydantic-ai: ``run`` with ``message_history``; LangGraph: ``ainvoke`` with
  ``messages``);
- wrapper: ``responder.respond(history, message)`` as onethread calls it each
  turn: converting our entries to the framework's format, and for
  praisonaiagents a private copy of the agent (``clone_for_channel``).

Direct and wrapper turns alternate, one at a time, so both see the same machine
state. Printed side by side, in one run: the elapsed time per turn, and the
process's CPU time per turn, whose difference (wrapper - direct) is the
wrapper's per-turn overhead; on a shared, loaded machine the elapsed times
swing by more than that overhead, the CPU times much less:

    .venv/bin/python benchmarks/bench_byo_agent.py [--turns 60] [--history 20]
                                                   [--frameworks praisonaiagents,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from common import ROOT, summary, write

sys.path.insert(0, str(ROOT / "tests"))

from byo_frameworks import FRAMEWORKS, build, content_text, env_for, quiet  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402
from onethread.agent import as_responder  # noqa: E402
from onethread.session import clear_session_context, set_session_context  # noqa: E402
from onethread.session.history.base import HistoryEntry  # noqa: E402


def history_of(n: int) -> list[HistoryEntry]:
    now = time.time() - n
    return [
        HistoryEntry(
            role="user" if i % 2 == 0 else "assistant",
            content=f"message {i} of the conversation so far, a sentence of some length",
            timestamp=now + i,
            platform="telegram",
            user_id="u1",
        )
        for i in range(n)
    ]


def direct_call(framework: str, agent: Any, history: list[HistoryEntry]) -> Callable[[str], Any]:
    """The framework called directly with ``history`` in its own format (built once, here)."""
    pairs = [("user" if e.role == "user" else "assistant", e.content) for e in history]
    dicts = [{"role": role, "content": text} for role, text in pairs]
    if framework == "praisonaiagents":

        async def praison(text: str) -> Any:
            agent.chat_history = list(dicts)  # one user at a time: the library's own way
            return await agent.achat(text, stream=False)

        return praison
    if framework == "openai-agents":
        from agents import Runner

        async def sdk(text: str) -> Any:
            result = await Runner.run(agent, [*dicts, {"role": "user", "content": text}])
            return result.final_output

        return sdk
    if framework == "pydantic-ai":
        from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

        messages = [
            ModelRequest(parts=[UserPromptPart(t)]) if r == "user" else ModelResponse([TextPart(t)])
            for r, t in pairs
        ]

        async def pydantic(text: str) -> Any:
            return (await agent.run(text, message_history=messages)).output

        return pydantic

    async def graph(text: str) -> Any:
        state = await agent.ainvoke({"messages": [*dicts, {"role": "user", "content": text}]})
        return state["messages"][-1].content

    return graph


async def measure(framework: str, server: FakeOpenAI, turns: int, n: int) -> dict[str, Any]:
    agent = build(framework, server.base_url)
    responder = as_responder(agent)
    history = history_of(n)
    direct = direct_call(framework, agent, history)

    async def wrapped(text: str) -> Any:
        message = HistoryEntry(role="user", content=text, timestamp=time.time())
        return await responder.respond(history, message)

    calls: dict[str, Callable[[str], Awaitable[Any]]] = {"direct": direct, "wrapper": wrapped}
    for call in calls.values():  # warm up: imports, clients, connections
        for _ in range(3):
            await call("warm up")
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    before = len(server.requests)
    for i in range(turns):
        for name, call in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            reply = await call(f"turn {i}")
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
            assert reply == f"ack: turn {i}", reply
    assert len(server.requests) - before == 2 * turns  # one model request per call
    result: dict[str, Any] = {}
    for name in calls:
        result[name] = summary(wall[name])
        result[name]["cpu_mean_ms"] = summary(cpu[name])["mean_ms"]
    result["overhead_wall_mean_ms"] = round(
        result["wrapper"]["mean_ms"] - result["direct"]["mean_ms"], 3
    )
    result["overhead_cpu_mean_ms"] = round(
        result["wrapper"]["cpu_mean_ms"] - result["direct"]["cpu_mean_ms"], 3
    )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=60, help="turns of each kind per framework")
    parser.add_argument("--history", type=int, default=20, help="entries before each turn")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    async with FakeOpenAI(lambda body: f"ack: {content_text(body['messages'][-1])}") as server:
        os.environ.update(env_for(server.base_url))
        quiet()
        token = set_session_context(platform="telegram", user_id="u1", chat_type="dm")
        try:
            for framework in args.frameworks.split(","):
                results[framework] = await measure(framework, server, args.turns, args.history)
        finally:
            clear_session_context(token)
    print(f"\n{args.turns} turns each, {args.history} history entries, model at zero latency")
    print("wall = elapsed per turn (the machine's load shows here); cpu = this process's CPU")
    print("time per turn (client, framework and fake server, all in this one process)\n")
    print(f"{'':<16} {'-- wall p50 (ms) --':>20} {'----- cpu mean (ms) -----':>32}")
    print(f"{'framework':<16} {'direct':>9} {'wrapper':>9}   {'direct':>9} {'wrapper':>9} "
          f"{'overhead':>9}")  # fmt: skip
    for name, r in results.items():
        d, w = r["direct"], r["wrapper"]
        print(f"{name:<16} {d['p50_ms']:>9.2f} {w['p50_ms']:>9.2f}   {d['cpu_mean_ms']:>9.2f} "
              f"{w['cpu_mean_ms']:>9.2f} {r['overhead_cpu_mean_ms']:>+9.2f}")  # fmt: skip
    path = write("byo_agent", {"turns": args.turns, "history": args.history, "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
