"""``/admin``: a small operator page on the web chat's server.

Security, in the order a request meets it:

- A token is always needed, on loopback too: ``ONETHREAD_ADMIN_TOKEN`` if set,
  else the web chat's access token. With neither, every admin path answers 403
  saying which variable to set.
- Logging in (``POST /admin/login``) trades the token for a random session
  cookie (HttpOnly, SameSite=Strict, path ``/admin``; 12 hours). Failed tokens
  are counted per client address and in all: after :data:`MAX_FAILURES` from
  one address (or :data:`MAX_FAILURES_TOTAL` from all) within
  :data:`FAILURE_WINDOW`, logins are refused with 429, even with the right
  token, until the window has passed.
- Every form carries the session's CSRF token; a POST without it, or with an
  ``Origin`` of another site, is refused with 403 before anything happens.
- Every action writes an audit line (who, what, when) to the log and to the
  audit store (:class:`onethread.ops.audit.AuditLog`).

The data is the CLI's: people and sessions from the history store and the
identity resolver (``onethread sessions``, ``identity list``), one person's
history from ``BotSessionManager.export`` (``history show``), approvals from
the pairing store (``onethread access``), so both always agree.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.resources
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import OnethreadError
from ..session.identity.base import unlinked_id
from . import admin_pages as pages
from .audit import AuditLog, RecentErrors
from .health import platform_states, readiness

if TYPE_CHECKING:
    from ..bots.botos import BotOS

__all__ = [
    "ADMIN_TOKEN_ENV",
    "APPROVED_TEXT",
    "FAILURE_WINDOW",
    "MAX_FAILURES",
    "MAX_FAILURES_TOTAL",
    "Admin",
    "Throttle",
]

log = logging.getLogger("onethread.admin")

ADMIN_TOKEN_ENV = "ONETHREAD_ADMIN_TOKEN"
COOKIE = "onethread_admin"
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 100
MAX_FAILURES = 5
MAX_FAILURES_TOTAL = 50
FAILURE_WINDOW = 900.0
MAX_PEOPLE = 200  # rows on the overview, most recent first (the CLI lists them all)
MAX_ENTRIES = 1000  # history entries on a person's page, the latest
APPROVED_TEXT = "You have been approved: write again and I will answer."

# Admin pages are never cached, and send their Origin on same-origin POSTs (the web
# chat's "no-referrer" would make Chromium send "Origin: null").
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "same-origin"}


class Throttle:
    """Failed logins per client address and in all, within a sliding window.

    Touched on the event loop thread only.
    """

    def __init__(
        self,
        per_client: int = MAX_FAILURES,
        total: int = MAX_FAILURES_TOTAL,
        window: float = FAILURE_WINDOW,
    ) -> None:
        self.per_client = per_client
        self.total = total
        self.window = window
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def _prune(self, now: float) -> None:
        cutoff = now - self.window
        while self._all and self._all[0] <= cutoff:
            self._all.popleft()
        for client in list(self._clients):
            times = self._clients[client]
            while times and times[0] <= cutoff:
                times.popleft()
            if not times:
                del self._clients[client]

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic()
        self._prune(now)
        waits = []
        times = self._clients.get(client)
        if times is not None and len(times) >= self.per_client:
            waits.append(times[0] + self.window - now)
        if len(self._all) >= self.total:
            waits.append(self._all[0] + self.window - now)
        return max(waits, default=0.0)

    def fail(self, client: str) -> None:
        """Count one failed login of ``client``."""
        now = time.monotonic()
        self._clients.setdefault(client, deque()).append(now)
        self._all.append(now)


@dataclass
class _Session:
    csrf: str
    expires: float
    tag: str  # names the session in audit lines (a hash prefix, not the cookie)
    remote: str
    flash: str = ""


class Admin:
    """The admin routes of one BotOS (see the module docstring).

    ``token`` is the admin token (None: the page is refused). ``_sessions``
    (cookie hash -> session) and the throttle are touched on the loop thread only.
    """

    def __init__(
        self, botos: BotOS, *, token: str | None, audit: AuditLog, errors: RecentErrors
    ) -> None:
        self.botos = botos
        self.token = token
        self.audit = audit
        self.errors = errors
        self.throttle = Throttle()
        self._sessions: dict[str, _Session] = {}
        self._css: bytes | None = None

    def mount(self, app: web.Application) -> None:
        """Add the admin routes to ``app``."""
        app.router.add_get("/admin", self._dashboard)
        app.router.add_get("/admin/", self._dashboard)
        app.router.add_get("/admin/admin.css", self._stylesheet)
        app.router.add_get("/admin/person", self._person)
        app.router.add_post("/admin/login", self._login)
        actions: dict[str, Callable[[Any], Awaitable[tuple[str, str]]]] = {
            "logout": self._do_logout,
            "approve": self._do_approve,
            "deny": self._do_deny,
            "unlink": self._do_unlink,
            "link": self._do_link,
            "cancel": self._do_cancel,
        }
        for name, action in actions.items():
            app.router.add_post(f"/admin/{name}", self._action_handler(name, action))

    # -- sessions ----------------------------------------------------------------

    def _refuse_unconfigured(self) -> None:
        if self.token is None:
            raise web.HTTPForbidden(
                text=pages.message_page(
                    "Admin page off",
                    f"The admin page needs a token: set {ADMIN_TOKEN_ENV} (or the web chat's "
                    "ONETHREAD_WEB_TOKEN) and restart.",
                ),
                content_type="text/html",
            )

    @staticmethod
    def _sid_hash(cookie: str) -> str:
        return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()

    def _session(self, request: web.Request) -> _Session | None:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        key = self._sid_hash(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires < time.time():
            del self._sessions[key]
            return None
        return session

    @staticmethod
    def _client(request: web.Request) -> str:
        return request.remote or "unknown"

    def _same_origin(self, request: web.Request) -> bool:
        """False for a browser request sent by another site's page.

        ``Sec-Fetch-Site``, which pages cannot set, says it directly when the
        browser sends it (behind a reverse proxy too). Else the ``Origin`` (a
        browser's POST carries one) must be this server or one of the web
        chat's ``allowed_origins``. A request with neither is not a browser's
        form (a script holding the cookie, which the CSRF token still checks).
        """
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None:
            return fetch_site in ("same-origin", "none")
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        allowed: frozenset[str] = getattr(self.botos.http_adapter(), "allowed_origins", frozenset())
        if origin in allowed:
            return True
        _, sep, authority = origin.partition("://")  # "null" (a hidden origin) has none
        return bool(sep) and authority == request.host.lower()

    async def _login(self, request: web.Request) -> web.StreamResponse:
        self._refuse_unconfigured()
        assert self.token is not None
        client = self._client(request)
        wait = self.throttle.retry_after(client)
        if wait > 0:
            log.warning("admin login refused: too many failed tokens (retry in %.0fs)", wait)
            raise web.HTTPTooManyRequests(
                text=pages.message_page(
                    "Too many attempts",
                    f"Too many wrong tokens. Try again in {int(wait) + 1} seconds.",
                ),
                content_type="text/html",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site login refused")
        form = await request.post()
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self.token.encode()):
            self.throttle.fail(client)
            log.warning("admin login failed from %s", client)
            return web.Response(
                status=401,
                text=pages.login_page("Wrong token."),
                content_type="text/html",
                headers=_NO_STORE,
            )
        cookie = secrets.token_urlsafe(32)
        key = self._sid_hash(cookie)
        if len(self._sessions) >= MAX_SESSIONS:  # drop the oldest
            self._sessions.pop(min(self._sessions, key=lambda k: self._sessions[k].expires))
        session = _Session(secrets.token_urlsafe(32), time.time() + SESSION_SECONDS,
                           key[:8], client)  # fmt: skip
        self._sessions[key] = session
        await self._record(session, "login", "admin page", "ok")
        response = _redirect("/admin")
        response.set_cookie(
            COOKIE, cookie, httponly=True, samesite="Strict", path="/admin",
            max_age=int(SESSION_SECONDS),
        )  # fmt: skip
        return response

    def _who(self, session: _Session) -> str:
        return f"admin#{session.tag}@{session.remote}"

    async def _record(self, session: _Session, action: str, target: str, detail: str) -> None:
        await asyncio.to_thread(self.audit.record, self._who(session), action, target, detail)

    def _require(self, request: web.Request) -> _Session:
        self._refuse_unconfigured()
        session = self._session(request)
        if session is None:
            raise web.HTTPUnauthorized(
                text=pages.login_page(), content_type="text/html", headers=_NO_STORE
            )
        return session

    # -- pages -------------------------------------------------------------------

    async def _stylesheet(self, request: web.Request) -> web.Response:
        if self._css is None:
            resource = importlib.resources.files("onethread.web").joinpath("static", "admin.css")
            self._css = resource.read_bytes()
        return web.Response(body=self._css, content_type="text/css", charset="utf-8")

    async def _dashboard(self, request: web.Request) -> web.Response:
        session = self._require(request)
        flash, session.flash = session.flash, ""
        _, health = await readiness(self.botos)
        pairing = self.botos.pairing_store()
        requests = None
        if pairing is not None:
            from ..bots.policy import APPROVAL_PURPOSE

            requests = await asyncio.to_thread(pairing.requests, APPROVAL_PURPOSE)
        html = pages.dashboard_page(
            csrf=session.csrf,
            flash=flash,
            platforms=platform_states(self.botos),
            stores=health["stores"],
            requests=requests,
            people=await self._people(),
            linking=self._resolver_can("link"),
            jobs=await self._jobs(),
            errors=self.errors.latest(30),
            audit=await asyncio.to_thread(self.audit.recent, 20),
        )
        return web.Response(text=html, content_type="text/html", headers=_NO_STORE)

    def _scheduler(self) -> tuple[Any, Any] | None:
        """``(jobs, cancel)`` of the BotOS when it has a scheduler (``BotOS.jobs`` and
        ``BotOS.cancel``, DESIGN.md "Scheduled messages"), else None."""
        jobs = getattr(self.botos, "jobs", None)
        cancel = getattr(self.botos, "cancel", None)
        return (jobs, cancel) if callable(jobs) and callable(cancel) else None

    async def _jobs(self) -> list[Any] | None:
        scheduler = self._scheduler()
        if scheduler is None:
            return None
        jobs: list[Any] = await scheduler[0]()
        return jobs[:MAX_PEOPLE]

    def _resolver_can(self, method: str) -> bool:
        return callable(getattr(self.botos.session.identity_resolver, method, None))

    async def _people(self) -> list[pages.Person]:
        from ..cli.history import who

        people: dict[str, pages.Person] = {}
        for row in await self.botos.session.store.sessions(100):
            if row.key.startswith("chat:"):  # a group's session belongs to the group
                continue
            name = who(row.key)
            person = people.setdefault(name, pages.Person(name))
            person.last_seen = max(person.last_seen, row.last_timestamp)
            person.messages += row.count
        resolver = self.botos.session.identity_resolver
        all_links = getattr(resolver, "all_links", None)
        if callable(all_links):
            for link in await asyncio.to_thread(all_links):
                person = people.setdefault(link.unified_user_id, pages.Person(link.unified_user_id))
                person.accounts.append((link.platform, link.platform_user_id))
        for person in people.values():
            person.accounts.sort()
        ordered = sorted(people.values(), key=lambda p: (-p.last_seen, p.who))
        return ordered[:MAX_PEOPLE]

    async def _person(self, request: web.Request) -> web.Response:
        session = self._require(request)
        flash, session.flash = session.flash, ""
        user = request.query.get("u", "").strip()
        if not user:
            return _redirect("/admin")
        data = await self.botos.session.export(user)
        entries = sorted(
            ((key, e) for key, rows in data["sessions"].items() for e in rows),
            key=lambda item: float(item[1]["timestamp"]),
        )
        accounts: list[tuple[str, str]] = []
        links_for = getattr(self.botos.session.identity_resolver, "links_for", None)
        if callable(links_for) and ":" not in user:
            links = await asyncio.to_thread(links_for, user)
            accounts = sorted((x.platform, x.platform_user_id) for x in links)
        html = pages.person_page(
            csrf=session.csrf, flash=flash, who=user, accounts=accounts,
            entries=entries[-MAX_ENTRIES:], total=len(entries),
        )  # fmt: skip
        return web.Response(text=html, content_type="text/html", headers=_NO_STORE)

    # -- actions -----------------------------------------------------------------

    def _action_handler(
        self, name: str, action: Callable[[Any], Awaitable[tuple[str, str]]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            session = self._require(request)
            form = await request.post()
            given = str(form.get("csrf", ""))
            if not self._same_origin(request) or not hmac.compare_digest(
                given.encode("utf-8", "surrogatepass"), session.csrf.encode()
            ):
                log.warning("admin %s refused: missing or wrong CSRF token", name)
                raise web.HTTPForbidden(text="refused: this form did not come from the admin page")
            back = str(form.get("back", "")) or "/admin"
            if not back.startswith("/admin") or back.startswith("//"):
                back = "/admin"
            try:
                target, outcome = await action(form)
            except (OnethreadError, ValueError) as exc:
                target, outcome = _target(form), f"refused: {exc}"
            except Exception as exc:  # a bug or an outage: audited, then a 500 as usual
                await self._record(session, name, _target(form), f"failed: {type(exc).__name__}")
                raise
            await self._record(session, name, target, outcome)
            if name == "logout":
                key = next((k for k, s in self._sessions.items() if s is session), None)
                if key is not None:
                    del self._sessions[key]
                response = _redirect("/admin")
                response.del_cookie(COOKIE, path="/admin")
                return response
            session.flash = f"{name} {target}: {outcome}"
            return _redirect(back)

        return handler

    def _account(self, form: Any) -> tuple[str, str]:
        from ..cli.identity import known_platform
        from ..errors import ConfigError

        platform = str(form.get("platform", "")).strip()
        user_id = str(form.get("user_id", "")).strip()
        if not platform or not user_id:
            raise ConfigError("platform and account id are both needed")
        return known_platform(platform), user_id

    async def _do_logout(self, form: Any) -> tuple[str, str]:
        return "admin page", "ok"

    async def _do_approve(self, form: Any) -> tuple[str, str]:
        from ..bots.policy import APPROVAL_PURPOSE
        from ..errors import ConfigError

        platform, user_id = self._account(form)
        pairing = self.botos.pairing_store()
        if pairing is None:
            raise ConfigError("no platform uses the approval access policy")
        settled = await asyncio.to_thread(pairing.settle, APPROVAL_PURPOSE, platform, user_id)
        await asyncio.to_thread(pairing.approve, platform, user_id)
        told = ""
        latest = max(settled, key=lambda r: r.created, default=None)  # where they last asked
        if latest is not None and latest.chat_id:
            try:
                if await self.botos.send_to(platform, latest.chat_id, APPROVED_TEXT):
                    told = "; told them"
                else:  # another host serves that platform
                    told = f"; not told ({platform} is not served here)"
            except Exception as exc:  # approved all the same; their next message is answered
                log.warning("could not tell %s they were approved: %s", platform, exc)
                told = f"; could not tell them ({type(exc).__name__})"
        return f"{platform}:{user_id}", "approved" + told

    async def _do_deny(self, form: Any) -> tuple[str, str]:
        from ..bots.policy import APPROVAL_PURPOSE
        from ..errors import ConfigError

        platform, user_id = self._account(form)
        pairing = self.botos.pairing_store()
        if pairing is None:
            raise ConfigError("no platform uses the approval access policy")
        settled = await asyncio.to_thread(pairing.settle, APPROVAL_PURPOSE, platform, user_id)
        if not settled:
            raise ConfigError(f"{platform}:{user_id} has no pending request")
        return f"{platform}:{user_id}", "denied"

    async def _do_unlink(self, form: Any) -> tuple[str, str]:
        from ..errors import ConfigError

        platform, user_id = self._account(form)
        session = self.botos.session
        resolver = session.identity_resolver
        unlink = getattr(resolver, "unlink", None)
        if resolver is None or not callable(unlink):
            raise ConfigError("the identity store cannot unlink")
        before = resolver.resolve(platform, user_id)
        if before == unlinked_id(platform, user_id) or not await asyncio.to_thread(
            unlink, platform, user_id
        ):
            raise ConfigError(f"{platform}:{user_id} is not linked")
        session.forget_merge(platform, user_id)
        return f"{platform}:{user_id}", f"unlinked from {before}"

    async def _do_cancel(self, form: Any) -> tuple[str, str]:
        from ..errors import ConfigError

        job_id = str(form.get("job_id", "")).strip()
        scheduler = self._scheduler()
        if scheduler is None:
            raise ConfigError("this deployment has no scheduler")
        if not job_id:
            raise ConfigError("which job? (job_id is empty)")
        if not await scheduler[1](job_id):
            raise ConfigError(f"job {job_id} is not active (already done or cancelled)")
        return f"job {job_id}", "cancelled"

    async def _do_link(self, form: Any) -> tuple[str, str]:
        from ..errors import ConfigError

        platform, user_id = self._account(form)
        unified = str(form.get("unified", "")).strip()
        resolver = self.botos.session.identity_resolver
        if resolver is None:
            raise ConfigError("linking is not enabled (no identity resolver)")
        before = resolver.resolve(platform, user_id)
        await asyncio.to_thread(resolver.link, platform, user_id, unified)  # validates
        moved = "" if before in (unified, unlinked_id(platform, user_id)) else f" (was {before})"
        return f"{platform}:{user_id}", f"linked to {unified}{moved}"  # as `identity link` says


def _redirect(location: str) -> web.Response:
    """303 to ``location`` (a path of ours): the browser GETs it after a POST."""
    return web.Response(status=303, headers={"Location": location, **_NO_STORE})


def _target(form: Any) -> str:
    job_id = str(form.get("job_id", "")).strip()
    if job_id:
        return f"job {job_id}"
    platform = str(form.get("platform", "")).strip()
    user_id = str(form.get("user_id", "")).strip()
    return f"{platform}:{user_id}" if platform or user_id else "-"
