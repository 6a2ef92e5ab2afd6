"""Config checks that need imports or the environment (``onethread run --check``).

:func:`onethread.config.load_config` validates a file's structure and imports
nothing; :func:`check_config` then checks the platform SDKs and adapter
options, tokens, tools and store drivers, reporting every problem as
``FILE: KEY: what is wrong; how to fix it``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import Config, ConfigFileError, Problem, did_you_mean, without_repeats
from .errors import ConfigError, MissingDependencyError
from .platforms.registry import PLATFORMS, load_adapter_class, spec
from .session.urls import REDIS_SCHEMES

__all__ = ["check_config", "config_problems", "import_tool", "tool_functions"]

_NOT_ADAPTER_OPTIONS = frozenset({"self", "retry_policy"})
# Options every platform takes that the Bot keeps (not the adapter's): Bot(streaming=...).
_BOT_PLATFORM_OPTIONS = frozenset({"streaming"})


def import_tool(path: str, search: Sequence[Path] = ()) -> Callable[..., Any]:
    """Import ``module:function`` (folders in ``search`` are tried first).

    Raises ``ConfigError`` saying what could not be imported and why.
    """
    module_name, _, attr = path.partition(":")
    for folder in reversed([str(p) for p in search]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {path!r} ({exc}); check the module name and that it is on "
            "PYTHONPATH (the config's folder and the working directory are searched)"
        ) from exc
    except Exception as exc:  # the user's module raised while being imported
        raise ConfigError(
            f"importing {module_name!r} for {path!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{module_name!r} has no {attr!r}; check the name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{path!r} is not a function")
    return obj  # type: ignore[no-any-return]


def _adapter_options(name: str) -> set[str] | None:
    """Option names the adapter's constructor takes (``None``: it takes anything)."""
    cls = load_adapter_class(name)
    params = inspect.signature(cls).parameters.values()
    named = {
        p.name
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in _NOT_ADAPTER_OPTIONS
    }
    return named | _BOT_PLATFORM_OPTIONS if named else None


def _platform_problems(
    name: str, options: Mapping[str, Any], env: Mapping[str, str], from_file: bool
) -> list[Problem]:
    key = f"platforms.{name}"
    try:
        accepted = _adapter_options(name)
    except ConfigError as exc:  # an unknown platform or a missing SDK (with the pip line)
        return [(key, str(exc))]
    problems: list[Problem] = []
    if accepted is not None:
        for option in options:
            if option not in accepted:
                msg = f"unknown option; {did_you_mean(option, accepted)}"
                problems.append((f"{key}.{option}", msg))
    for option, var in spec(name).credentials_for(options).items():
        if options.get(option) or env.get(var):
            continue
        if from_file:
            fix = (
                f"export {var}=... (the file can say {option}: ${{{var}}}) "
                f"or remove the {name} platform"
            )
        else:
            fix = f"export {var}=... too, or unset the other {name} variable"
        problems.append((f"{key}.{option}", f"not set; {fix}"))
    either = spec(name).one_of
    if either and not any(options.get(option) or env.get(var) for option, var in either):
        exports = " or ".join(f"export {var}=..." for _, var in either)
        if from_file:
            fix = f"{exports} (the file can say {either[0][0]}: ${{{either[0][1]}}})"
        else:
            fix = exports
        problems.append((f"{key}.{either[0][0]}", f"not set; {fix}"))
    cls = load_adapter_class(name)
    problems.extend((f"{key}.{option}", msg) for option, msg in cls.check_options(options, env))
    return problems


def _driver_problem(url: str) -> str | None:
    scheme = url.partition(":")[0].lower()
    needs = {scheme: ("redis", "redis") for scheme in REDIS_SCHEMES}
    needs |= {"postgresql": ("psycopg", "postgres"), "postgres": ("psycopg", "postgres")}
    if scheme not in needs:
        return None
    module, extra = needs[scheme]
    if importlib.util.find_spec(module) is None:
        return str(MissingDependencyError(f"the {scheme} store", extra))
    return None


def check_config(
    config: Config,
    env: Mapping[str, str] | None = None,
    *,
    web: Mapping[str, Any] | None = None,
    known: Sequence[Problem] = (),
) -> dict[str, dict[str, Any]]:
    """Check what :func:`load_config` cannot: platform SDKs and options, tokens, tools, drivers.

    Returns the platform options to serve (see :meth:`Config.platform_options`).
    Raises :class:`ConfigFileError` listing every problem, ``known`` ones first
    (those :func:`load_config` found: pass ``ConfigFileError.problems`` with
    its ``.config`` to report everything in one listing).
    """
    platforms, problems = config_problems(config, env, web=web, known=known)
    if problems:
        raise ConfigFileError(config.source, problems, config=config)
    return platforms


def config_problems(
    config: Config,
    env: Mapping[str, str] | None = None,
    *,
    web: Mapping[str, Any] | None = None,
    known: Sequence[Problem] = (),
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """:func:`check_config` without raising: the platforms to serve and every problem.

    A problem under a key that a ``known`` problem already names is left out
    (an unset ``${VAR}`` is not also reported as a missing token).
    """
    found = _checks(config, os.environ if env is None else env, web, known)
    problems = [*known, *without_repeats(found, known)]
    platforms = {} if _section_dropped(config, known) else config.platform_options(env, web=web)
    return platforms, problems


def _listed(names: Sequence[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _export(missing: str) -> str:
    """``A=...`` for one variable, ``A=... (or B=...)`` for ``"A or B"`` (``missing_from``)."""
    first, *others = missing.split(" or ")
    return f"{first}=..." + "".join(f" (or {other}=...)" for other in others)


def _is(names: Sequence[str]) -> str:
    return "is" if len(names) == 1 else "are"


def _section_dropped(config: Config, known: Sequence[Problem]) -> bool:
    # `platforms:` itself was faulty and left out: checking the defaults instead
    # (web + tokens in the environment) would report on platforms nobody listed.
    return config.platforms is None and any(key == "platforms" for key, _ in known)


def _checks(
    config: Config,
    env: Mapping[str, str],
    web: Mapping[str, Any] | None,
    known: Sequence[Problem],
) -> list[Problem]:
    dropped = _section_dropped(config, known)
    platforms = {} if dropped else config.platform_options(env, web=web)
    from_file = dropped or config.platforms is not None
    problems: list[Problem] = []
    for name, options in platforms.items():
        problems += _platform_problems(name, options, env, from_file)
    if not from_file:
        for name, entry in PLATFORMS.items():
            set_vars = [var for var in entry.variables() if env.get(var)]
            if set_vars and name not in platforms:
                missing = entry.missing_from(env)
                exports = " ".join(_export(m) for m in missing)
                problems.append(
                    (
                        "",
                        f"{_listed(set_vars)} {_is(set_vars)} set but {_listed(missing)} "
                        f"{_is(missing)} not; export {exports} "
                        f"to serve {name}, or unset {' '.join(set_vars)}",
                    )
                )
    for name in platforms:
        mode = config.access.mode(name)
        forgeable = mode is None and name in PLATFORMS and PLATFORMS[name].forgeable_sender
        if (mode == "allowlist" or forgeable) and not (
            config.access.allowlist.get(name) or config.owners.get(name)
        ):
            why = (
                f"{name} answers only the senders listed (a sender can be forged there, so "
                "the allowlist is its default), and nobody is listed"
                if forgeable
                else f"{name} uses the allowlist but nobody is on it"
            )
            where = "" if config.source else " in onethread.yaml (`onethread init` writes one)"
            problems.append(
                (
                    f"access.allowlist.{name}",
                    f"{why}; add ids here, under owners.{name}, or set "
                    f"access.platforms.{name}: open{where}",
                )
            )
    model = config.agent.model
    if model and not (env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL")):
        problems.append(
            (
                "agent.model",
                f"{model!r} needs an OpenAI-compatible endpoint; export OPENAI_API_KEY=... "
                "(api.openai.com) or OPENAI_BASE_URL=... (another server), or set model: null",
            )
        )
    search = _search_path(config)
    for i, tool in enumerate(config.agent.tools):
        try:
            import_tool(tool, search)
        except ConfigError as exc:
            problems.append((f"agent.tools[{i}]", str(exc)))
    for key, url in (("history", config.history), ("identity", config.identity)):
        problem = _driver_problem(url) if url else None
        if problem:
            problems.append((key, problem))
    return problems


def _search_path(config: Config) -> list[Path]:
    folders = [Path.cwd()]
    if config.source:
        folders.insert(0, Path(config.source).resolve().parent)
    return folders


def tool_functions(config: Config) -> list[Callable[..., Any]]:
    """Import the agent's tools; ``ConfigFileError`` naming the failing entry."""
    out = []
    for i, tool in enumerate(config.agent.tools):
        try:
            out.append(import_tool(tool, _search_path(config)))
        except ConfigError as exc:
            raise ConfigFileError(config.source, [(f"agent.tools[{i}]", str(exc))]) from exc
    return out
