"""Logging the Matrix bot in, and whose invites it takes: for ``onethread.platforms.matrix``.

A given access token is checked with ``whoami``. A password logs in once; the
device id and token are kept (``matrix_state``), so a restart reuses the
device instead of adding one to the account's device list each time, and a
kept token the server no longer takes is replaced by a new login on the same
device.
"""

from __future__ import annotations

from collections.abc import Iterable

from nio import AsyncClient, LoginResponse, WhoamiResponse

from ..errors import ConfigError, PlatformAuthError
from .matrix_events import PLATFORM, check, map_matrix_errors
from .matrix_state import MatrixState, state_path

__all__ = ["ENV", "invite_allowed", "invite_allowlist", "is_user_id", "log_in"]

ENV = {"homeserver": "MATRIX_HOMESERVER", "user_id": "MATRIX_USER_ID",
       "token": "MATRIX_ACCESS_TOKEN", "password": "MATRIX_PASSWORD"}  # fmt: skip


async def log_in(
    client: AsyncClient, homeserver: str, user_id: str, *, token: str, password: str,
    device_name: str,
) -> MatrixState:  # fmt: skip
    """Log ``client`` in: with ``token`` (checked), else the kept login, else ``password``.

    Returns the account's state (saved, with the device id). Raises
    ``PlatformAuthError`` for a refused token or password (naming the
    variable to fix), ``ConfigError`` for a token of another account.
    """
    state = MatrixState.load(state_path(user_id))
    if state.homeserver and state.homeserver != homeserver:
        state = MatrixState(state.path)  # another server's login: start afresh
    state.homeserver, state.user_id = homeserver, user_id
    given = token
    token = token or state.access_token
    if token:
        client.access_token, client.user_id = token, user_id
        with map_matrix_errors("whoami"):
            resp = await client.whoami()
        try:
            who = check(resp, "whoami")
        except PlatformAuthError:
            if given or not password:
                raise PlatformAuthError(
                    f"the access token was refused; check {ENV['token']}", platform=PLATFORM
                ) from None
            state.forget_login()  # the kept token expired: log in again on the same device
        else:
            assert isinstance(who, WhoamiResponse)
            if who.user_id != user_id:
                raise ConfigError(f"the access token belongs to {who.user_id}, not "
                                  f"{user_id}; fix {ENV['user_id']}")  # fmt: skip
            client.device_id = who.device_id or state.device_id
            state.device_id = client.device_id
            state.save()
            return state
    client.device_id = state.device_id  # reused: no new device in the account's list
    with map_matrix_errors("login"):
        resp = await client.login(password, device_name=device_name)
    if not isinstance(resp, LoginResponse):
        if getattr(resp, "status_code", "") == "M_FORBIDDEN":
            raise PlatformAuthError(f"the password was refused; check {ENV['password']} "
                                    f"and {ENV['user_id']}", platform=PLATFORM)  # fmt: skip
        check(resp, "login")
    state.device_id, state.access_token = client.device_id, client.access_token
    state.save()
    return state


def is_user_id(value: str) -> bool:
    """``@local:server`` (the shape, not whether the account exists)."""
    local, sep, server = value.removeprefix("@").partition(":")
    return value.startswith("@") and bool(local) and bool(sep) and bool(server)


def invite_allowlist(value: Iterable[str] | str | None) -> frozenset[str] | None:
    """``invite_from`` as a set of user ids and server names (``None``: anyone).

    Raises ``ConfigError`` naming an entry that is neither.
    """
    if value is None:
        return None
    found: set[str] = set()
    for item in [value] if isinstance(value, str) else list(value):
        entry = str(item).strip()
        server_name = (
            bool(entry) and "@" not in entry and not any(c.isspace() or c in "/?#" for c in entry)
        )
        if not (is_user_id(entry) or server_name):
            raise ConfigError(
                f"matrix invite_from entry {entry!r} is neither a user id "
                "(@alice:example.org) nor a homeserver name (example.org)"
            )
        found.add(entry)
    return frozenset(found)


def invite_allowed(allowlist: frozenset[str] | None, inviter: str) -> bool:
    """Whether an invite from ``inviter`` is taken: anyone's without a list, else the
    listed user ids' and those of users on the listed homeservers."""
    if allowlist is None:
        return True
    return bool({inviter, inviter.partition(":")[2]} & allowlist)
