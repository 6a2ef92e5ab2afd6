"""The YAML config file (``onethread.yaml``), validated with pydantic, with clear errors.

Example::

    agent:
      name: assistant
      instructions: Be helpful.
      model: null                    # null: ONETHREAD_MODEL, else the offline model
      tools: ["mypkg.tools:whoami"]  # module:function import paths
    http:                            # the one HTTP server: web chat, /healthz, webhooks
      host: 127.0.0.1                # (web: {host, port} still works when http: has none)
      port: 8080
      public_url: https://bot.example.com   # webhooks are registered here; omit: none
    platforms:                       # exactly these platforms (omit: web + tokens in env)
      web: {}
      telegram:
        token: ${TELEGRAM_BOT_TOKEN}
    identity: file:~/.onethread/identity.json
    history: sqlite:///~/.onethread/history.db
    access:
      default: approval              # open | allowlist | approval
      platforms: {telegram: allowlist}
      allowlist: {telegram: ["12345"]}
      max_codes: 10000               # pairing codes kept at once, all accounts
    owners: {telegram: "12345"}
    max_history: 100
    context_tokens: 8000             # the prompt budget (default: from the model)
    session: {reset: idle, idle_minutes: 240, daily_at: "04:00"}   # never | idle | daily
    timezone: Europe/Berlin          # for schedules of people with no /tz (default UTC)

Loading is two steps. :func:`load_config` reads the file, substitutes
``${VAR}`` (and ``${VAR:-default}``; ``$${`` is a literal ``${``) in string
values, and validates the structure; it imports nothing.
``onethread.config_check.check_config`` then checks what needs imports or the
environment: platform SDKs and option names, tokens, tools, store drivers.
Every problem is reported as ``FILE: KEY: what is wrong; how to fix it``, all
of them in one :class:`ConfigFileError`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml  # type: ignore[import-untyped, unused-ignore]
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from .errors import ConfigError
from .platforms.registry import PLATFORMS, credentials
from .session.urls import ACCEPTED_FORMS, REDIS_SCHEMES

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "PLATFORM_TOKENS",
    "AccessConfig",
    "AgentConfig",
    "Config",
    "ConfigFileError",
    "HttpConfig",
    "Problem",
    "did_you_mean",
    "load_config",
    "parse_config",
    "store_url_problem",
    "without_repeats",
]

DEFAULT_CONFIG_NAME = "onethread.yaml"

#: The environment variables holding each platform's credentials, by option name
#: (from each platform's ``PlatformSpec.credentials`` and ``one_of``: Matrix lists
#: both ``token`` and ``password``, of which one is enough).
PLATFORM_TOKENS: dict[str, dict[str, str]] = credentials()

_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TOOL_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")

#: One mistake: (dotted key such as ``platforms.telegram.token``, message with the fix).
Problem = tuple[str, str]


class ConfigFileError(ConfigError):
    """One or more mistakes in a config file.

    ``path`` is the file (``None`` for settings that came from elsewhere);
    ``problems`` lists ``(key, message)`` pairs. ``str()`` gives one line per
    problem: ``FILE: KEY: message``. ``config`` (when loading got that far) is
    the file with the faulty keys left out, so the checks that need imports
    can still run and report their mistakes in the same listing.
    """

    def __init__(
        self, path: str | None, problems: Sequence[Problem], *, config: Config | None = None
    ) -> None:
        self.path = path
        self.problems = list(problems)
        self.config = config
        where = f"{path}: " if path else ""
        super().__init__(
            "\n".join(f"{where}{key}: {msg}" if key else f"{where}{msg}" for key, msg in problems)
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)


def _tool_path(value: str) -> str:
    if not _TOOL_RE.fullmatch(value):
        raise ValueError("not an import path; write module:function, e.g. mypkg.tools:whoami")
    return value


class AgentConfig(_Strict):
    """``agent:``: the agent every platform shares."""

    name: str = "assistant"
    instructions: str = ""
    model: str | None = None
    tools: list[Annotated[str, AfterValidator(_tool_path)]] = Field(default_factory=list)
    summary_model: str | None = None


#: An access policy name (see ``onethread.bots.policy``).
Mode = Literal["open", "allowlist", "approval"]


class SessionConfig(_Strict):
    """``session:``: when a conversation starts afresh on its own (``onethread.session.reset``).

    ``reset``: ``never`` (default), ``idle`` (after ``idle_minutes`` without a
    message) or ``daily`` (at ``daily_at``, ``HH:MM`` UTC). A reset archives,
    like ``/new``.
    """

    reset: Literal["never", "idle", "daily"] = "never"
    idle_minutes: float = Field(default=240.0, gt=0)
    daily_at: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "04:00"


class AccessConfig(_Strict):
    """``access:``: who may talk to the bot.

    ``default`` applies to every platform not named in ``platforms``; unset,
    each platform gets the built-in default (web and console open; others
    ``approval`` when the platform has owners, else open with a warning).
    ``allowlist`` mode serves the ids in ``allowlist[platform]`` and the
    platform's owners; ``approval`` gives unknown senders a code that an owner
    approves with ``onethread access approve PLATFORM CODE``. ``max_codes``
    caps the pairing codes (``/link`` and approval) kept at once across every
    account; past it, new codes are refused with a message (see
    ``onethread.session.pairing``).
    """

    default: Mode | None = None
    platforms: dict[str, Mode] = Field(default_factory=dict)
    allowlist: dict[str, list[str]] = Field(default_factory=dict)
    max_codes: int = Field(default=10_000, ge=1)

    def mode(self, platform: str) -> Mode | None:
        """The access mode of ``platform`` (``None``: the built-in default)."""
        return self.platforms.get(platform, self.default)


class HttpConfig(_Strict):
    """``http:``: the one HTTP server (``onethread.platforms.ingress.Ingress``).

    ``host``/``port`` default to the web platform's, else ``127.0.0.1:8080``.
    ``public_url`` is where platforms reach it (``https://bot.example.com``);
    webhook platforms register ``public_url + /webhooks/<platform>``; without
    it nothing is registered with a platform.
    """

    host: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.match(r"https?://[^/?#]+(/[^?#]*)?$", value.strip()):
            raise ValueError(
                "must be an absolute http(s) URL without ?query, e.g. https://bot.example.com"
            )
        return value.strip().rstrip("/")


_HTTP_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 8080}


class Config(_Strict):
    """The whole config file. Build it with :func:`load_config`."""

    agent: AgentConfig = Field(default_factory=AgentConfig)
    http: HttpConfig = Field(default_factory=lambda: HttpConfig())
    platforms: dict[str, dict[str, Any] | None] | None = None
    identity: str | None = None
    history: str | None = None
    access: AccessConfig = Field(default_factory=AccessConfig)
    owners: dict[str, list[str]] = Field(default_factory=dict)
    max_history: int = Field(default=100, ge=0)
    context_tokens: int | None = Field(default=None, ge=256)
    session: SessionConfig = Field(default_factory=lambda: SessionConfig())
    timezone: str = "UTC"
    _source: str | None = PrivateAttr(default=None)

    @field_validator("platforms", mode="before")
    @classmethod
    def _platform_list(cls, value: Any) -> Any:
        # `platforms: [web, telegram]` is short for a mapping with no options.
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return dict.fromkeys(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from .session.jobs.timing import zone

        return zone(value).key

    @field_validator("owners", mode="before")
    @classmethod
    def _owner_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value

    @property
    def source(self) -> str | None:
        """The file this config was read from (``None``: built-in defaults)."""
        return self._source

    def owner_ids(self, platform: str) -> list[str]:
        """The owners' account ids on ``platform``."""
        return list(self.owners.get(platform, []))

    def platform_options(
        self, env: Mapping[str, str] | None = None, *, web: Mapping[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The platforms to serve, name -> adapter options.

        With a ``platforms:`` section: exactly those. Without: ``web`` plus
        every platform whose credentials are set in ``env`` (default
        ``os.environ``; see ``PlatformSpec.served_from``). ``web`` options
        (``--host``/``--port``) are merged into the web platform, adding it if
        needed.
        """
        env = os.environ if env is None else env
        if self.platforms is not None:
            chosen = {name: dict(opts or {}) for name, opts in self.platforms.items()}
        else:
            chosen = {"web": {}}
            for name, entry in PLATFORMS.items():
                if entry.served_from(env):
                    chosen[name] = {}
        if web:
            chosen["web"] = {**chosen.get("web", {}), **web}
        if "web" in chosen:
            # The chat is served on the one HTTP server: its address is the server's.
            chosen["web"] = {**chosen["web"], **self.http_address(web=web)}
        return chosen

    def http_address(self, *, web: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``{"host", "port"}`` of the one HTTP server: ``web`` (``--host``/``--port``),
        else ``http:``, else the web platform's options, else ``127.0.0.1:8080``."""
        raw_web = dict((self.platforms or {}).get("web") or {})
        address: dict[str, Any] = {}
        for key, default in _HTTP_DEFAULTS.items():
            value = getattr(self.http, key)
            if web and web.get(key) is not None:
                value = web[key]
            elif value is None:
                value = raw_web.get(key, default)
            if key == "port" and isinstance(value, str) and value.strip().isdigit():
                value = int(value)  # port: ${PORT}
            address[key] = value
        return address

    def http_options(self, *, web: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The options of ``BotOS(http=...)``: :meth:`http_address` and ``public_url``."""
        return {**self.http_address(web=web), "public_url": self.http.public_url}


# -- loading ----------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate the config file at ``path``.

    Raises :class:`ConfigFileError` naming the file, the key and the fix for
    every problem found (a missing file, YAML syntax with its line, unknown
    keys with a did-you-mean, unset ``${VAR}``, wrong types, bad store URLs,
    unknown platform names).
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(
            name, [("", "no such file; create one with: onethread init")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(name, [("", f"cannot read the file ({exc})")]) from exc
    return parse_config(text, name, env)


def parse_config(text: str, source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate config ``text``; ``source`` names it in errors. See :func:`load_config`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(source, [("", _yaml_problem(exc))]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(
            source, [("", "the top level must be a mapping of keys (agent:, platforms:, ...)")]
        )
    # Every mistake in one listing: an unset ${VAR} or a wrong type does not hide
    # the mistakes of the other keys, nor of the keys nested beside it.
    problems: list[Problem] = []
    data = _substitute(data, (), os.environ if env is None else env, problems)
    config = _validate(data, problems)
    config._source = source
    problems += without_repeats(_semantic_problems(config), problems)
    if problems:
        raise ConfigFileError(source, problems, config=config)
    return config


def without_repeats(found: Iterable[Problem], known: Sequence[Problem]) -> list[Problem]:
    """``found`` minus the problems at or under a key that a ``known`` problem names.

    One mistake is reported once: an unset ``${VAR}`` is not also a bad URL or
    a missing token.
    """

    def under(key: str, other: str) -> bool:
        return bool(other) and (key == other or key.startswith((other + ".", other + "[")))

    return [(k, m) for k, m in found if not any(under(k, other) for other, _ in known)]


def _validate(data: dict[str, Any], problems: list[Problem]) -> Config:
    """The config ``data`` describes, leaving out (and reporting) every faulty key."""
    for _ in range(8):  # each round removes at least one key; a handful always suffice
        try:
            return Config.model_validate(data)
        except ValidationError as exc:
            for problem in _pydantic_problems(exc):
                if problem not in problems:
                    problems.append(problem)
            pruned = _without(data, [tuple(err["loc"]) for err in exc.errors()])
            if pruned == data:
                break
            data = pruned
    return Config()


def _without(data: Any, locs: Sequence[tuple[str | int, ...]]) -> Any:
    """A copy of ``data`` with the deepest existing key of each ``loc`` removed.

    Pydantic's locations can end in names that are not keys of the data (the
    member of a union that was tried); those parts are ignored.
    """
    drop: set[tuple[str | int, ...]] = set()
    for loc in locs:
        node: Any = data
        path: tuple[str | int, ...] = ()
        for part in loc:
            if isinstance(node, dict) and part in node:
                node, path = node[part], (*path, part)
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node, path = node[part], (*path, part)
            else:
                break
        if path:
            drop.add(path)

    def copy(value: Any, at: tuple[str | int, ...]) -> Any:
        if isinstance(value, dict):
            return {k: copy(v, (*at, k)) for k, v in value.items() if (*at, k) not in drop}
        if isinstance(value, list):
            return [copy(v, (*at, i)) for i, v in enumerate(value) if (*at, i) not in drop]
        return value

    return copy(data, ())


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return (
            f"line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {problem}; "
            "check the indentation and quote values that contain ': ', '#', '{' or '}'"
        )
    return f"YAML syntax error: {problem}"


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _substitute(
    value: Any, loc: tuple[str | int, ...], env: Mapping[str, str], problems: list[Problem]
) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, str(k)), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        var, default = match.group(1), match.group(2)
        found = env.get(var)
        if found:
            return found
        if default is not None:
            return default
        problems.append((_dotted(loc), _unset_message(var, loc)))
        return ""

    return _ENV_RE.sub(replace, value)


def _unset_message(var: str, loc: tuple[str | int, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "platforms":
        return f"${{{var}}} is not set; export {var}=... or remove the {loc[1]} platform"
    return f"${{{var}}} is not set; export {var}=... or write the value in the file"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'?"`` for the closest choice, else the list of choices."""
    options = sorted(choices)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"expected one of: {', '.join(options)}" if options else "remove it"


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = _dotted(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            known = list(model.model_fields) if model else []
            problems.append((key, f"unknown key; {did_you_mean(str(loc[-1]), known)}"))
        elif kind == "missing":
            problems.append((key, "required; add it"))
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            got = repr(err.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            problems.append((key, f"{msg} (got {got})"))
    return problems


def store_url_problem(url: str, what: Literal["history", "identity"]) -> str | None:
    """Why ``url`` is not a valid ``what`` store URL (``None`` when it is). Imports nothing."""
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep:
        return f"bad store URL {url!r}; accepted forms: {ACCEPTED_FORMS}"
    if scheme == "memory" or scheme in (*REDIS_SCHEMES, "postgresql", "postgres"):
        return None
    if scheme == "sqlite":
        if not rest.startswith("///") or len(rest) <= 3:
            return f"bad SQLite URL {url!r}; write sqlite:///relative.db or sqlite:////abs/path.db"
        return None
    if scheme == "file":
        if what == "history":
            return f"{url!r}: file: URLs are for identity only; use sqlite:///PATH for history"
        if not rest.removeprefix("//"):
            return f"bad file URL {url!r}; write file:/path/to/identity.json"
        return None
    return f"bad store URL {url!r}; accepted forms: {ACCEPTED_FORMS}"


def _semantic_problems(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    known = list(PLATFORMS)
    if config.platforms == {}:
        msg = "no platforms listed; add web: (the built-in chat) or another platform"
        problems.append(("platforms", msg))
    for name in config.platforms or {}:
        if name not in PLATFORMS:
            problems.append((f"platforms.{name}", f"unknown platform; {did_you_mean(name, known)}"))
    for section, names in (
        ("access.platforms", config.access.platforms),
        ("access.allowlist", config.access.allowlist),
        ("owners", config.owners),
    ):
        for name in names:
            if name not in PLATFORMS:
                msg = f"unknown platform; {did_you_mean(name, known)}"
                problems.append((f"{section}.{name}", msg))
    web = (config.platforms or {}).get("web") or {}
    for key in ("host", "port"):
        mine, theirs = getattr(config.http, key), web.get(key)
        if mine is not None and theirs is not None and str(mine) != str(theirs):
            problems.append((
                f"platforms.web.{key}",
                f"{theirs!r} differs from http.{key} ({mine!r}); the web chat is served on "
                f"the one HTTP server: remove {key} from platforms.web",
            ))  # fmt: skip
    for key, url, what in (
        ("history", config.history, "history"),
        ("identity", config.identity, "identity"),
    ):
        if url is not None:
            problem = store_url_problem(url, what)  # type: ignore[arg-type]
            if problem:
                problems.append((key, problem))
    return problems
