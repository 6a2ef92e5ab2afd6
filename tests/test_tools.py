"""Tools: schemas from signatures, and running calls safely with the session context."""

from __future__ import annotations

import enum
import json
import threading
from typing import Annotated, Any, Literal, Optional

import pytest

from onethread import Agent
from onethread.agent.models import ToolCall
from onethread.agent.tools import Tool, run_tool_call, tool_from_function
from onethread.session import clear_session_context, get_session_context, set_session_context
from onethread.testing import EchoModel


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def params(func: Any) -> dict[str, Any]:
    return tool_from_function(func).parameters


def test_scalars_and_required() -> None:
    def f(s: str, i: int, x: float, b: bool, opt: str = "a", n: int = 3) -> None:
        """Do f."""

    assert tool_from_function(f).schema() == {
        "type": "function",
        "function": {
            "name": "f",
            "description": "Do f.",
            "parameters": {
                "type": "object",
                "properties": {
                    "s": {"type": "string"},
                    "i": {"type": "integer"},
                    "x": {"type": "number"},
                    "b": {"type": "boolean"},
                    "opt": {"type": "string", "default": "a"},
                    "n": {"type": "integer", "default": 3},
                },
                "required": ["s", "i", "x", "b"],
            },
        },
    }


def test_no_parameters_and_no_docstring() -> None:
    def ping() -> str:
        return "pong"

    tool = tool_from_function(ping)
    assert tool.parameters == {"type": "object", "properties": {}}
    assert "description" not in tool.schema()["function"]


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (list[str], {"type": "array", "items": {"type": "string"}}),
        (
            list[list[int]],
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        ),
        (list, {"type": "array"}),
        (dict, {"type": "object"}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (str | None, {"type": ["string", "null"]}),
        (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045 - the old spelling works too
        (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (
            list[int] | None,
            {"type": ["array", "null"], "items": {"type": "integer"}},
        ),
        (
            dict[str, int] | None,
            {
                "anyOf": [
                    {"type": "object", "additionalProperties": {"type": "integer"}},
                    {"type": "null"},
                ]
            },
        ),
        (Literal["c", "f"], {"type": "string", "enum": ["c", "f"]}),
        (Literal[1, "a"], {"type": ["integer", "string"], "enum": [1, "a"]}),
        (Literal["a"] | None, {"type": ["string", "null"], "enum": ["a", None]}),
        (Color, {"type": "string", "enum": ["red", "green"]}),
        (Level, {"type": "integer", "enum": [1, 2]}),
        (Annotated[str, "The city"], {"type": "string", "description": "The city"}),
        (Any, {}),
    ],
)
def test_type_mapping(hint: Any, schema: dict[str, Any]) -> None:
    def f(x):  # type: ignore[no-untyped-def]
        pass

    f.__annotations__ = {"x": hint}
    assert params(f)["properties"]["x"] == schema


def test_google_docstring() -> None:
    def weather(city: str, units: Literal["c", "f"] = "c", days: int = 1) -> str:
        """Get the weather
        for a city.

        Longer text that is not part of the description.

        Args:
            city: The city name,
                e.g. Paris.
            units (str): Temperature units.
            days: How many days.

        Returns:
            A forecast.
        """
        return ""

    tool = tool_from_function(weather)
    assert tool.description == "Get the weather for a city."
    props = tool.parameters["properties"]
    assert props["city"]["description"] == "The city name, e.g. Paris."
    assert props["units"]["description"] == "Temperature units."
    assert props["days"]["description"] == "How many days."
    assert tool.parameters["required"] == ["city"]


def test_numpy_docstring() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers.

        Parameters
        ----------
        a : int
            The first.
        b : int
            The second,
            on two lines.

        Returns
        -------
        int
            The sum.
        """
        return a + b

    props = params(add)["properties"]
    assert props["a"]["description"] == "The first."
    assert props["b"]["description"] == "The second, on two lines."


def test_annotated_description_wins_over_docstring() -> None:
    def f(x: Annotated[int, "from Annotated"]) -> None:
        """F.

        Args:
            x: from docstring
        """

    assert params(f)["properties"]["x"]["description"] == "from Annotated"


def missing_hint(city, days: int) -> None:  # type: ignore[no-untyped-def]
    """No hint on city."""


def bad_type(when: object) -> None:
    """object is not a JSON type."""


def star_args(*names: str) -> None:
    """Varargs."""


def int_keys(m: dict[int, str]) -> None:
    """JSON keys are strings."""


@pytest.mark.parametrize(
    ("func", "words"),
    [
        (missing_hint, ["missing_hint", "'city'", "no type hint"]),
        (bad_type, ["bad_type", "'when'", "unsupported type"]),
        (star_args, ["star_args", "'names'", "*args"]),
        (int_keys, ["int_keys", "'m'", "dict[str, X]"]),
    ],
)
def test_bad_definitions_raise_type_error_at_agent_construction(
    func: Any, words: list[str]
) -> None:
    with pytest.raises(TypeError) as info:
        Agent("a", tools=[func], model=EchoModel())
    for word in words:
        assert word in str(info.value)


def test_duplicate_tool_names_are_refused() -> None:
    def f() -> None:
        """F."""

    with pytest.raises(TypeError, match="two tools are named 'f'"):
        Agent("a", tools=[f, Tool("f", "", {}, f, False)], model=EchoModel())


def test_tools_must_be_a_list() -> None:
    def f() -> None:
        """F."""

    with pytest.raises(TypeError, match="tools must be a list"):
        Agent("a", tools=f, model=EchoModel())  # type: ignore[arg-type]


def test_async_callable_object_is_an_async_tool() -> None:
    class Lookup:
        __name__ = "lookup"

        async def __call__(self, key: str) -> str:
            return key

    assert tool_from_function(Lookup()).is_async


async def test_calls_convert_enums_and_serialise_results() -> None:
    def paint(color: Color, times: int = 1) -> dict[str, Any]:
        """Paint."""
        assert isinstance(color, Color)
        return {"color": color.value, "times": times}

    tools = {"paint": tool_from_function(paint)}
    result = await run_tool_call(tools, ToolCall("1", "paint", '{"color": "red", "times": 2}'))
    assert json.loads(result) == {"color": "red", "times": 2}


async def test_failures_come_back_as_error_text() -> None:
    def boom(x: int) -> int:
        """Explode."""
        raise ValueError(f"bad {x}")

    tools = {"boom": tool_from_function(boom)}
    assert (
        await run_tool_call(tools, ToolCall("1", "boom", '{"x": 3}')) == "error: ValueError: bad 3"
    )
    unknown = await run_tool_call(tools, ToolCall("1", "nope", "{}"))
    assert unknown.startswith("error: unknown tool 'nope'") and "boom" in unknown
    assert "not valid JSON" in await run_tool_call(tools, ToolCall("1", "boom", "{x: 3"))
    assert "JSON object" in await run_tool_call(tools, ToolCall("1", "boom", "[3]"))
    assert "bad arguments" in await run_tool_call(tools, ToolCall("1", "boom", '{"y": 3}'))
    assert "bad arguments" in await run_tool_call(tools, ToolCall("1", "boom", ""))
    bad_enum = {"paint": tool_from_function(_paint)}
    assert "bad arguments" in await run_tool_call(bad_enum, ToolCall("1", "paint", '{"c": "blue"}'))


def _paint(c: Color) -> str:
    """Paint."""
    return c.value


async def test_sync_tools_run_in_a_worker_thread_with_the_context_copied() -> None:
    seen: dict[str, Any] = {}

    def whoami() -> str:
        """Who is talking."""
        seen["thread"] = threading.current_thread()
        return get_session_context().user_id

    async def whoami_async() -> str:
        """Who is talking (async)."""
        seen["async_thread"] = threading.current_thread()
        return get_session_context().user_id

    tools = {t.name: t for t in map(tool_from_function, [whoami, whoami_async])}
    token = set_session_context(platform="telegram", user_id="42")
    try:
        assert await run_tool_call(tools, ToolCall("1", "whoami", "{}")) == "42"
        assert await run_tool_call(tools, ToolCall("2", "whoami_async", "{}")) == "42"
    finally:
        clear_session_context(token)
    assert seen["thread"] is not threading.main_thread()
    assert seen["async_thread"] is threading.current_thread()
    assert await run_tool_call(tools, ToolCall("3", "whoami", "{}")) == ""
