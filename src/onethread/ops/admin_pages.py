"""The admin page's HTML: plain server-rendered pages, every value escaped, no script.

Each function takes plain data (already read from the stores) and returns the
page as a string; :mod:`onethread.ops.admin` serves it. Forms carry the
session's CSRF token in a hidden field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

from ..session.history.base import DELIVERY_CUT, DELIVERY_FAILED
from .audit import AuditEntry, ErrorRecord

__all__ = ["Person", "dashboard_page", "login_page", "message_page", "person_page"]


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _page(title: str, body: str, *, flash: str = "", csrf: str = "") -> str:
    logout = ""
    if csrf:
        logout = (
            '<form method="post" action="/admin/logout" class="inline">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<button type="submit">Log out</button></form>'
        )
    note = f'<p class="flash" role="status">{_e(flash)}</p>' if flash else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · onethread admin</title>"
        '<link rel="stylesheet" href="/admin/admin.css"></head><body>'
        f'<header><a href="/admin"><strong>onethread</strong> admin</a>{logout}</header>'
        f"<main>{note}{body}</main></body></html>\n"
    )


def _form(action: str, csrf: str, fields: Mapping[str, str], label: str, cls: str = "") -> str:
    hidden = "".join(
        f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in fields.items()
    )
    return (
        f'<form method="post" action="{_e(action)}" class="inline">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">{hidden}'
        f'<button type="submit" class="{_e(cls)}">{_e(label)}</button></form>'
    )


def login_page(message: str = "") -> str:
    """The token form (the only thing shown without a session)."""
    error = f'<p class="error" role="alert">{_e(message)}</p>' if message else ""
    body = (
        "<h1>Log in</h1>"
        f"{error}"
        '<form method="post" action="/admin/login" class="login">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        '<button type="submit">Log in</button></form>'
        '<p class="hint">The token is <code>ONETHREAD_ADMIN_TOKEN</code> if set, else the '
        "web chat's access token (<code>ONETHREAD_WEB_TOKEN</code>).</p>"
    )
    return _page("Log in", body)


def message_page(title: str, text: str) -> str:
    """A page that only says ``text`` (refusals)."""
    return _page(title, f"<h1>{_e(title)}</h1><p>{_e(text)}</p>")


@dataclass
class Person:
    """One row of the people table: who (as the CLI names them) and their accounts."""

    who: str
    accounts: list[tuple[str, str]] = field(default_factory=list)  # (platform, account id)
    last_seen: float = 0.0
    messages: int = 0


def _platforms(platforms: Mapping[str, Mapping[str, Any]]) -> str:
    rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="state-{_e(p["state"])}">{_e(p["state"])}'
        f"{' (' + _e(p['error']) + ')' if p.get('error') else ''}</td></tr>"
        for name, p in platforms.items()
    )
    return (
        '<section id="platforms"><h2>Platforms</h2><table><thead><tr><th>platform</th>'
        f"<th>status</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _stores(stores: Mapping[str, Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(s['kind'])}</td>"
        f'<td class="{"ok" if s["ok"] else "bad"}">'
        f"{'answers' if s['ok'] else _e(s.get('error', 'down'))}</td></tr>"
        for name, s in stores.items()
    )
    return (
        '<section id="stores"><h2>Stores</h2><table><thead><tr><th>store</th><th>kind</th>'
        f"<th>status</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _approvals(requests: Sequence[Any] | None, csrf: str) -> str:
    if requests is None:
        return (
            '<section id="approvals"><h2>Pending approvals</h2><p class="hint">No platform '
            "uses the approval access policy.</p></section>"
        )
    if not requests:
        body = '<p class="hint">Nobody is waiting.</p>'
    else:
        rows = "".join(
            f"<tr><td>{_e(r.platform)}</td><td>{_e(r.user_name or '-')}</td>"
            f"<td><code>{_e(r.user_id)}</code></td><td>{_when(r.created)}</td><td>"
            + _form("/admin/approve", csrf, {"platform": r.platform, "user_id": r.user_id},
                    "Approve", "approve")
            + _form("/admin/deny", csrf, {"platform": r.platform, "user_id": r.user_id},
                    "Deny", "deny")
            + "</td></tr>"
            for r in requests
        )  # fmt: skip
        body = (
            "<table><thead><tr><th>platform</th><th>name</th><th>account</th><th>asked</th>"
            f"<th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return f'<section id="approvals"><h2>Pending approvals</h2>{body}</section>'


def _accounts(person: Person, csrf: str, back: str) -> str:
    if not person.accounts:
        return "-"
    return "<br>".join(
        f"<code>{_e(p)}:{_e(a)}</code> "
        + _form("/admin/unlink", csrf, {"platform": p, "user_id": a, "back": back}, "Unlink")
        for p, a in person.accounts
    )


def _people(people: Sequence[Person], csrf: str, linking: bool) -> str:
    rows = "".join(
        f'<tr><td><a href="/admin/person?u={quote(p.who, safe="")}">{_e(p.who)}</a></td>'
        f"<td>{_accounts(p, csrf, '/admin')}</td><td>{_when(p.last_seen)}</td>"
        f"<td>{p.messages}</td></tr>"
        for p in people
    )
    table = (
        "<table><thead><tr><th>person</th><th>linked accounts</th><th>last seen</th>"
        f"<th>session size</th></tr></thead><tbody>{rows}</tbody></table>"
        if people
        else '<p class="hint">Nobody has written yet.</p>'
    )
    link_form = ""
    if linking:
        link_form = (
            '<form method="post" action="/admin/link" class="link">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<label>platform <input name="platform" required size="10"></label>'
            '<label>account id <input name="user_id" required size="16"></label>'
            '<label>person <input name="unified" required size="12"></label>'
            '<button type="submit">Link</button></form>'
        )
    return f'<section id="people"><h2>People</h2>{table}{link_form}</section>'


def _repeat(job: Any) -> str:
    cron = getattr(job, "cron", None)
    every = getattr(job, "every", None)
    return f"cron {cron}" if cron else f"every {every}" if every else "once"


def _jobs(jobs: Sequence[Any], csrf: str) -> str:
    """Scheduled jobs (``onethread.bots.BotOS.jobs()``), each with a Cancel button."""
    rows = "".join(
        f"<tr><td><code>{_e(j.id)}</code></td><td>{_e(j.unified_user_id)}</td>"
        f"<td>{_e(_when(j.next_run.timestamp()))}</td><td>{_e(_repeat(j))}</td>"
        f"<td>{_e(getattr(j, 'platform', None) or 'last used')}</td>"
        f'<td class="content">{"prompt: " if getattr(j, "prompt", False) else ""}'
        f"{_e(j.text[:200])}</td><td>"
        + _form("/admin/cancel", csrf, {"job_id": j.id}, "Cancel", "deny")
        + "</td></tr>"
        for j in jobs
    )
    body = (
        "<table><thead><tr><th>job</th><th>person</th><th>next run</th><th>repeats</th>"
        f"<th>platform</th><th>text</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="hint">No scheduled jobs.</p>'
    )
    return f'<section id="jobs"><h2>Scheduled jobs</h2>{body}</section>'


def _errors(errors: Iterable[ErrorRecord]) -> str:
    rows = "".join(
        f"<tr><td>{_when(r.at)}</td><td>{_e(r.level)}</td><td>{_e(r.logger)}</td>"
        f"<td>{_e(r.message)}</td></tr>"
        for r in errors
    )
    body = (
        "<table><thead><tr><th>when</th><th>level</th><th>where</th><th>what</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="hint">No warnings or errors since start.</p>'
    )
    return f'<section id="errors"><h2>Recent errors</h2>{body}</section>'


def _audit(entries: Iterable[AuditEntry]) -> str:
    rows = "".join(
        f"<tr><td>{_when(a.at)}</td><td>{_e(a.who)}</td><td>{_e(a.action)}</td>"
        f"<td>{_e(a.target)}</td><td>{_e(a.detail)}</td></tr>"
        for a in entries
    )
    body = (
        "<table><thead><tr><th>when</th><th>who</th><th>action</th><th>on</th><th>result</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="hint">No admin actions yet.</p>'
    )
    return f'<section id="audit"><h2>Audit trail</h2>{body}</section>'


def dashboard_page(
    *,
    csrf: str,
    flash: str,
    platforms: Mapping[str, Mapping[str, Any]],
    stores: Mapping[str, Mapping[str, Any]],
    requests: Sequence[Any] | None,
    people: Sequence[Person],
    jobs: Sequence[Any] | None = None,
    linking: bool,
    errors: Iterable[ErrorRecord],
    audit: Iterable[AuditEntry],
) -> str:
    """The main page: platforms, stores, approvals, people, scheduled jobs (when
    there is a scheduler: ``jobs`` is None without one), errors, the audit trail."""
    body = (
        '<div class="grid">' + _platforms(platforms) + _stores(stores) + "</div>"
        + _approvals(requests, csrf) + _people(people, csrf, linking)
        + (_jobs(jobs, csrf) if jobs is not None else "") + _errors(errors) + _audit(audit)
    )  # fmt: skip
    return _page("Overview", body, flash=flash, csrf=csrf)


def _speaker(entry: Mapping[str, Any]) -> str:
    if entry.get("role") == "user":
        return str(entry.get("user_name") or entry.get("user_id") or "user")
    return str(entry.get("role") or "assistant")


def _marks(entry: Mapping[str, Any]) -> str:
    marks = []
    if entry.get("mirror"):
        marks.append(f'<span class="mark mirror">mirrored: {_e(entry.get("source") or "mirror")}'
                     "</span>")  # fmt: skip
    meta = entry.get("metadata") or {}
    if meta.get("delivery") == DELIVERY_FAILED:  # kept, but the person never got it
        why = meta.get("delivery_error") or "error"
        marks.append(f'<span class="mark undelivered">not delivered ({_e(why)})</span>')
    elif meta.get("delivery") == DELIVERY_CUT:  # too long: only the first part went out
        marks.append('<span class="mark undelivered">cut: only the first part was sent</span>')
    return " ".join(marks)


def _count(shown: int, total: int | None) -> str:
    if total is None or total == shown:
        return f"{shown} entries"
    return f"the latest {shown} of {total} entries; onethread history export has them all"


def person_page(
    *,
    csrf: str,
    flash: str,
    who: str,
    accounts: Sequence[tuple[str, str]],
    entries: Sequence[tuple[str, Mapping[str, Any]]],
    total: int | None = None,
) -> str:
    """One person's accounts (with unlink) and their history (the latest ``entries``
    of ``total``), read-only."""
    person = Person(who, list(accounts))
    back = f"/admin/person?u={quote(who, safe='')}"
    rows = "".join(
        f'<tr class="role-{_e(e.get("role", ""))}"><td>{_when(float(e.get("timestamp", 0)))}</td>'
        f"<td>{_e(e.get('platform') or '-')}</td><td>{_e(_speaker(e))}</td>"
        f'<td class="content">{_e(e.get("content", ""))}</td><td>{_marks(e)}'
        f"</td><td><code>{_e(key)}</code></td></tr>"
        for key, e in entries
    )
    history = (
        "<table><thead><tr><th>when</th><th>platform</th><th>who</th><th>text</th>"
        f"<th>marks</th><th>session</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="hint">No history stored for this person.</p>'
    )
    body = (
        f"<h1>{_e(who)}</h1>"
        f'<section id="accounts"><h2>Linked accounts</h2>{_accounts(person, csrf, back)}'
        "</section>"
        f'<section id="history"><h2>History ({_count(len(entries), total)}, read-only)</h2>'
        f"{history}</section>"
    )
    return _page(who, body, flash=flash, csrf=csrf)
