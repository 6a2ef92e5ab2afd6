"""Wrappers that serve a framework's agent as a :class:`~onethread.agent.Responder`.

One module per framework, each imported only when an agent of that framework
is given (``onethread.agent.as_responder`` detects it by class name):

- :mod:`.praisonai`: a praisonaiagents ``Agent`` (install ``onethread[praisonaiagents]``)
- :mod:`.openai_agents`: an OpenAI Agents SDK ``Agent`` (``onethread[openai-agents]``)
- :mod:`.pydantic_ai`: a pydantic-ai ``Agent`` (``onethread[pydantic-ai]``)
- :mod:`.langgraph`: a compiled LangGraph graph (``onethread[langgraph]``)

Every wrapper hands the framework the person's history, in the framework's
own message format, on every turn, so the framework object holds no
conversation between people. Nothing here is imported by ``import onethread``.
"""

from __future__ import annotations

__all__: list[str] = []
