"""The agent layer: instructions + tools + a model client, stateless per turn.

Platform-free: nothing here imports ``onethread.bots`` or ``onethread.platforms``,
and the ``openai`` SDK is imported only when a model is first called.

``Responder`` is what a bot needs of an agent; ``as_responder`` accepts an
``Agent``, any Responder, or a framework's agent (praisonaiagents, the OpenAI
Agents SDK, pydantic-ai, LangGraph), which it wraps (``agent.frameworks``).
"""

from __future__ import annotations

from .agent import Agent
from .files import File
from .messages import build_messages
from .models import ModelClient, ModelReply, ToolCall, TurnModel
from .models_offline import OfflineModel
from .models_openai import OpenAIModel
from .responder import Responder, as_responder
from .tools import Tool, tool_from_function
from .transcribe import Transcriber

__all__ = [
    "Agent",
    "File",
    "ModelClient",
    "ModelReply",
    "OfflineModel",
    "OpenAIModel",
    "Responder",
    "Tool",
    "ToolCall",
    "Transcriber",
    "TurnModel",
    "as_responder",
    "build_messages",
    "tool_from_function",
]
