"""Tools: plain Python functions the model may call, described by their signature.

A tool is a sync or async function with type-hinted parameters. Its JSON schema
comes from the hints (``str``, ``int``, ``float``, ``bool``, ``list[X]``,
``dict[str, X]``, ``X | None``, ``Literal[...]``, enums, ``Annotated[X, "doc"]``
and ``Any``), its description from the docstring's first paragraph, and each
parameter's description from an ``Args:`` (Google) or ``Parameters`` (numpy)
section. A definition the schema cannot describe is a ``TypeError`` when the
tool is built, naming the function and the parameter.

Async tools are awaited in the task running the turn, so they see the session
context; sync tools run in a worker thread with the context copied
(``asyncio.to_thread`` copies it). A tool that raises, an unknown tool name or
bad JSON arguments never crash the turn: the model gets ``error: ...`` back.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import json
import logging
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .files import split_result
from .models import ToolCall

__all__ = ["Tool", "run_tool_call", "tool_from_function"]

logger = logging.getLogger("onethread.agent")

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SCALARS: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True, slots=True)
class Tool:
    """A callable the model may invoke, with its name, description and JSON schema.

    Build one with :func:`tool_from_function`; construct it directly only to
    override the name or description. ``converters`` turn JSON values back into
    the parameter's declared type (enums) before the call.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]
    is_async: bool
    converters: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {...}}``."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


def tool_from_function(func: Callable[..., Any], *, name: str | None = None) -> Tool:
    """Describe ``func`` as a :class:`Tool` from its signature and docstring.

    Raises ``TypeError`` naming the function and parameter when a parameter has
    no type hint, an unsupported type, or is ``*args``/``**kwargs``/positional-only.
    """
    if not callable(func):
        raise TypeError(f"tool {func!r} is not callable")
    qualname = getattr(func, "__qualname__", repr(func))
    tool_name = str(name or getattr(func, "__name__", ""))
    if not _NAME_RE.match(tool_name):
        raise TypeError(
            f"tool {qualname}: name {tool_name!r} must be 1-64 letters, digits, '_' or '-'"
        )
    try:
        hints = typing.get_type_hints(_hint_source(func), include_extras=True)
    except Exception as exc:  # a NameError from an unresolvable forward reference, mostly
        raise TypeError(f"tool {qualname}: cannot resolve its type hints: {exc}") from exc
    summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    converters: dict[str, Callable[[Any], Any]] = {}
    for param in inspect.signature(func).parameters.values():
        where = f"tool {qualname}: parameter {param.name!r}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"{where}: *args, **kwargs and positional-only are not supported")
        if param.name not in hints:
            raise TypeError(f"{where} has no type hint; tools need one on every parameter")
        schema = _schema_for(hints[param.name], where)
        if param.name in arg_docs and "description" not in schema:
            schema["description"] = arg_docs[param.name]
        if param.default is param.empty:
            required.append(param.name)
        else:
            default = param.default.value if isinstance(param.default, enum.Enum) else param.default
            if isinstance(default, str | int | float | bool):
                schema["default"] = default
        properties[param.name] = schema
        converter = _converter_for(hints[param.name])
        if converter is not None:
            converters[param.name] = converter
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return Tool(
        name=tool_name,
        description=summary,
        parameters=parameters,
        func=func,
        # An instance with an ``async def __call__`` is an async tool too.
        is_async=inspect.iscoroutinefunction(func)
        or inspect.iscoroutinefunction(type(func).__call__),
        converters=converters,
    )


def _hint_source(func: Any) -> Any:
    """The object whose annotations describe ``func``'s parameters."""
    if isinstance(func, functools.partial):
        return _hint_source(func.func)
    if inspect.isclass(func):
        return func.__init__
    if inspect.isroutine(func):
        return func
    return type(func).__call__  # an instance with __call__


def _schema_for(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one type hint; ``TypeError`` (naming ``where``) if unsupported."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = _schema_for(args[0], where)
        docs = [a for a in args[1:] if isinstance(a, str)]
        if docs:
            schema["description"] = docs[0]
        return schema
    if hint is Any:
        return {}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint], where)
    if isinstance(hint, type) and hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is list or origin is list:
        if len(args) > 1:
            raise TypeError(f"{where}: list takes one item type, got {hint!r}")
        return (
            {"type": "array", "items": _schema_for(args[0], where)} if args else {"type": "array"}
        )
    if hint is dict or origin is dict:
        if args and args[0] is not str:
            raise TypeError(
                f"{where}: JSON object keys are strings; use dict[str, X], not {hint!r}"
            )
        if args:
            return {"type": "object", "additionalProperties": _schema_for(args[1], where)}
        return {"type": "object"}
    if origin is typing.Literal:
        return _enum_schema(list(args), where)
    if origin is typing.Union or origin is types.UnionType:
        return _union_schema(args, where)
    raise TypeError(f"{where}: unsupported type {hint!r} for a tool parameter")


def _enum_schema(values: list[Any], where: str) -> dict[str, Any]:
    kinds: list[str] = []
    for value in values:
        if value is None:
            kind = "null"
        elif type(value) in _SCALARS:
            kind = _SCALARS[type(value)]
        else:
            raise TypeError(f"{where}: choice {value!r} is not a JSON string, number or bool")
        if kind not in kinds:
            kinds.append(kind)
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


def _union_schema(args: tuple[Any, ...], where: str) -> dict[str, Any]:
    members = [a for a in args if a is not type(None)]
    nullable = len(members) < len(args)
    if len(members) == 1:
        schema = _schema_for(members[0], where)
        if not nullable:
            return schema
        kind = schema.get("type")
        if isinstance(kind, str) and set(schema) <= {"type", "enum", "items", "description"}:
            schema["type"] = [kind, "null"]
            if "enum" in schema and None not in schema["enum"]:
                schema["enum"] = [*schema["enum"], None]
            return schema
        return {"anyOf": [schema, {"type": "null"}]}
    options = [_schema_for(m, where) for m in members]
    if nullable:
        options.append({"type": "null"})
    return {"anyOf": options}


def _converter_for(hint: Any) -> Callable[[Any], Any] | None:
    """A function turning the JSON value back into an enum member, when the hint is an enum."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = members[0] if len(members) == 1 else None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        enum_type = hint
        return lambda value: value if value is None else enum_type(value)
    return None


_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:?\s*$")
_ANY_SECTION_RE = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_GOOGLE_ARG_RE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ARG_RE = re.compile(r"^(\w+)\s*(:.*)?$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into its summary paragraph and per-parameter descriptions."""
    lines = doc.expandtabs().splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line.strip()):
            break
        summary.append(line.strip())
    args: dict[str, str] = {}
    for index, line in enumerate(lines):
        if not _SECTION_RE.match(line.strip()):
            continue
        numpy = index + 1 < len(lines) and set(lines[index + 1].strip()) == {"-"}
        body = lines[index + (2 if numpy else 1) :]
        args.update(_parse_arg_block(body, numpy=numpy))
        break
    return " ".join(summary), args


def _parse_arg_block(body: list[str], *, numpy: bool) -> dict[str, str]:
    """Parse the entries of an ``Args:`` or numpy ``Parameters`` block, up to the next section."""
    result: dict[str, str] = {}
    base_indent: int | None = None
    current: str | None = None
    for index, line in enumerate(body):
        text = line.strip()
        if not text:
            continue
        indent = len(line) - len(line.lstrip())
        if base_indent is None:
            base_indent = indent
        if indent < base_indent:
            break
        if indent == base_indent:
            underlined = index + 1 < len(body) and set(body[index + 1].strip()) == {"-"}
            if (numpy and underlined) or (not numpy and _ANY_SECTION_RE.match(text)):
                break
            match = (_NUMPY_ARG_RE if numpy else _GOOGLE_ARG_RE).match(text)
            if match is None:
                break
            current = match.group(1).lstrip("*")
            result[current] = "" if numpy else match.group(3).strip()
        elif current is not None:
            result[current] = f"{result[current]} {text}".strip()
    return {name: desc for name, desc in result.items() if desc}


async def run_tool_call(tools: Mapping[str, Tool], call: ToolCall) -> str:
    """Run one tool call and return the text the model gets back.

    Never raises for the tool's own failures: an unknown name, arguments that
    are not a JSON object, arguments that do not fit the signature and
    exceptions raised by the tool all come back as ``"error: ..."``.
    Cancellation propagates.
    """
    tool = tools.get(call.name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        return f"error: unknown tool {call.name!r}; available tools: {known}"
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError as exc:
        return f"error: arguments for {call.name!r} are not valid JSON ({exc})"
    if not isinstance(arguments, dict):
        return f"error: arguments for {call.name!r} must be a JSON object"
    try:
        for key, convert in tool.converters.items():
            if key in arguments:
                arguments[key] = convert(arguments[key])
        inspect.signature(tool.func).bind(**arguments)
    except (TypeError, ValueError) as exc:
        return f"error: bad arguments for {call.name!r}: {exc}"
    try:
        if tool.is_async:
            result = await tool.func(**arguments)
        else:
            result = await asyncio.to_thread(tool.func, **arguments)
            if inspect.isawaitable(result):  # a sync wrapper around a coroutine function
                result = await result
    except Exception as exc:
        # The model should see the failure and may recover; the developer sees the traceback.
        logger.warning("tool %s raised", call.name, exc_info=True)
        return f"error: {type(exc).__name__}: {exc}"
    return _result_text(split_result(result))


def _result_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if result is None:
        return "null"
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)
