"""Render the Markdown a model writes into each platform's markup, with a real parser.

markdown-it-py (CommonMark, plus GitHub tables and strikethrough; raw HTML
off, so HTML in the model's text is shown as text, never interpreted) parses
once; small renderers walk its tokens:

- :func:`to_telegram_html`: Telegram's HTML ``parse_mode`` (``<b>``, ``<i>``,
  ``<s>``, ``<code>``, ``<pre>``, ``<a>``, ``<blockquote>``);
- :func:`to_slack_mrkdwn`: Slack's mrkdwn (``*b*``, ``_i_``, ``~s~``,
  ``<url|text>``, ``&amp;``-escaped);
- :func:`to_whatsapp`: WhatsApp's own markup (``*b*``, ``_i_``, ``~s~``,
  ``` ``code`` ```, code blocks; links as ``text (url)``);
- :func:`to_discord`: Discord renders Markdown itself; only tables (which it
  lacks) become aligned text in a code block, found by the parser's line map;
- :func:`to_web_html`: HTML for the web chat (no raw HTML, unsafe link
  schemes refused by markdown-it's link validation);
- :func:`to_plain`: the text with the markup taken away (the fallback when a
  platform rejects the markup).

Lists become ``•``/``1.`` lines, headings bold, tables aligned text in a code
block where the platform has no tables. Every renderer closes what it opens,
so any chunk of Markdown renders to well-formed markup on its own.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = [
    "to_discord", "to_plain", "to_slack_mrkdwn", "to_telegram_html", "to_web_html", "to_whatsapp",
]  # fmt: skip

_LANG = re.compile(r"[^\w+#.-]")


@lru_cache(maxsize=2)
def _parser(breaks: bool = False) -> MarkdownIt:
    # breaks: a single newline is a line break (<br>), as a chat reply means it.
    options = {"html": False, "breaks": breaks}
    return MarkdownIt("commonmark", options).enable(["table", "strikethrough"])


class _Target:
    """How one markup writes each construct (the plain-text one)."""

    bold = ("", "")
    italic = ("", "")
    strike = ("", "")
    hr = "———"

    def esc(self, text: str) -> str:
        return text

    def code(self, text: str) -> str:
        return text

    def pre(self, text: str, lang: str) -> str:
        return text.rstrip("\n")

    def link(self, href: str, inner: str) -> str:
        return inner if inner == href else f"{inner} ({href})"

    def heading(self, inner: str) -> str:
        return f"{self.bold[0]}{inner}{self.bold[1]}"

    def quote(self, inner: str) -> str:
        return "\n".join(f"> {line}" for line in inner.split("\n"))


class _Telegram(_Target):
    bold = ("<b>", "</b>")
    italic = ("<i>", "</i>")
    strike = ("<s>", "</s>")

    def esc(self, text: str) -> str:
        return html.escape(text, quote=False)

    def code(self, text: str) -> str:
        return f"<code>{self.esc(text)}</code>"

    def pre(self, text: str, lang: str) -> str:
        body = self.esc(text.rstrip("\n"))
        if lang:
            return f'<pre><code class="language-{lang}">{body}</code></pre>'
        return f"<pre>{body}</pre>"

    def link(self, href: str, inner: str) -> str:
        return f'<a href="{html.escape(href, quote=True)}">{inner}</a>'

    def quote(self, inner: str) -> str:
        return f"<blockquote>{inner}</blockquote>"


class _Slack(_Target):
    bold = ("*", "*")
    italic = ("_", "_")
    strike = ("~", "~")

    def esc(self, text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def code(self, text: str) -> str:
        return f"`{self.esc(text)}`"

    def pre(self, text: str, lang: str) -> str:
        return f"```\n{self.esc(text.rstrip(chr(10)))}\n```"

    def link(self, href: str, inner: str) -> str:
        url = href.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
        return (
            f"<{url}|{inner.replace('|', '¦')}>"
            if inner and inner != self.esc(href)
            else f"<{url}>"
        )


class _WhatsApp(_Target):
    bold = ("*", "*")
    italic = ("_", "_")
    strike = ("~", "~")

    def code(self, text: str) -> str:
        return f"`{text}`"

    def pre(self, text: str, lang: str) -> str:
        return f"```\n{text.rstrip(chr(10))}\n```"


_PLAIN = _Target()
_WHATSAPP = _WhatsApp()
_TELEGRAM = _Telegram()
_SLACK = _Slack()


def _close(tokens: Sequence[Token], start: int) -> int:
    """Index of the token closing ``tokens[start]`` (an opening token)."""
    level = tokens[start].level
    for j in range(start + 1, len(tokens)):
        if tokens[j].level == level and tokens[j].nesting == -1:
            return j
    return len(tokens) - 1


def _inline(children: Sequence[Token] | None, t: _Target) -> str:
    out: list[str] = []
    links: list[tuple[str, int]] = []  # (href, where its text starts in out)
    for tok in children or ():
        kind = tok.type
        if kind == "text":
            out.append(t.esc(tok.content))
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "code_inline":
            out.append(t.code(tok.content))
        elif kind in ("strong_open", "strong_close"):
            out.append(t.bold[tok.nesting < 0])
        elif kind in ("em_open", "em_close"):
            out.append(t.italic[tok.nesting < 0])
        elif kind in ("s_open", "s_close"):
            out.append(t.strike[tok.nesting < 0])
        elif kind == "link_open":
            links.append((str(tok.attrGet("href") or ""), len(out)))
        elif kind == "link_close" and links:
            href, at = links.pop()
            inner = "".join(out[at:])
            del out[at:]
            out.append(t.link(href, inner) if href else inner)
        elif kind == "image":
            alt = _inline(tok.children, _PLAIN) or str(tok.attrGet("src") or "")
            out.append(t.link(str(tok.attrGet("src") or ""), t.esc(alt)))
        else:  # html_inline cannot occur (html off); anything else new: its text
            out.append(t.esc(tok.content))
    return "".join(out)


def _table(tokens: Sequence[Token]) -> str:
    """A table's cells as aligned plain text, a rule under the header."""
    rows: list[list[str]] = []
    header = 0
    for tok in tokens:
        if tok.type == "tr_open":
            rows.append([])
        elif tok.type == "inline" and rows:
            rows[-1].append(_inline(tok.children, _PLAIN).replace("\n", " "))
        elif tok.type == "thead_close":
            header = len(rows)
    if not rows:
        return ""
    cols = max(len(r) for r in rows)
    widths = [max((len(r[c]) if c < len(r) else 0) for r in rows) for c in range(cols)]
    lines = []
    for index, row in enumerate(rows):
        cells = [(row[c] if c < len(row) else "").ljust(widths[c]) for c in range(cols)]
        lines.append(" | ".join(cells).rstrip())
        if index + 1 == header:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _blocks(tokens: Sequence[Token], t: _Target) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.nesting == 1:
            j = _close(tokens, i)
            inner = tokens[i + 1 : j]
            if tok.type == "paragraph_open" and inner:
                out.append(_inline(inner[0].children, t))
            elif tok.type == "heading_open" and inner:
                out.append(t.heading(_inline(inner[0].children, t)))
            elif tok.type in ("bullet_list_open", "ordered_list_open"):
                out.append(_list(tok, inner, t))
            elif tok.type == "blockquote_open":
                out.append(t.quote("\n\n".join(_blocks(inner, t))))
            elif tok.type == "table_open":
                out.append(t.pre(_table(inner), ""))
            else:
                out.extend(_blocks(inner, t))
            i = j + 1
            continue
        if tok.type in ("fence", "code_block"):
            lang = _LANG.sub("", tok.info.split()[0]) if tok.info.strip() else ""
            out.append(t.pre(tok.content, lang))
        elif tok.type == "hr":
            out.append(t.hr)
        elif tok.type == "inline":
            out.append(_inline(tok.children, t))
        i += 1
    return out


def _list(opening: Token, tokens: Sequence[Token], t: _Target) -> str:
    ordered = opening.type == "ordered_list_open"
    start = opening.attrGet("start")
    number = int(start) if start is not None else 1  # a list may start at 0
    items: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i].type != "list_item_open":
            i += 1
            continue
        j = _close(tokens, i)
        marker = f"{number}. " if ordered else "• "
        number += 1
        body = "\n".join(_blocks(tokens[i + 1 : j], t))
        pad = " " * len(marker)
        items.append(marker + body.replace("\n", "\n" + pad))
        i = j + 1
    return "\n".join(items)


def _render(markdown: str, t: _Target) -> str:
    return "\n\n".join(b for b in _blocks(_parser().parse(markdown), t) if b).strip("\n")


def to_telegram_html(markdown: str) -> str:
    """``markdown`` as Telegram HTML (``parse_mode="HTML"``); always well-formed."""
    return _render(markdown, _TELEGRAM)


def to_slack_mrkdwn(markdown: str) -> str:
    """``markdown`` as Slack mrkdwn (``&``, ``<``, ``>`` escaped; links as ``<url|text>``)."""
    return _render(markdown, _SLACK)


def to_whatsapp(markdown: str) -> str:
    """``markdown`` in WhatsApp's markup (``*bold*``, ``_italic_``, ``~strike~``,
    code); links as ``text (url)``, which WhatsApp makes clickable."""
    return _render(markdown, _WHATSAPP)


def to_plain(markdown: str) -> str:
    """``markdown`` with the markup taken away: what a platform shows as plain text."""
    return _render(markdown, _PLAIN)


def to_discord(markdown: str) -> str:
    """``markdown`` for Discord: as written, each table turned into aligned text in a code block.

    Discord renders Markdown itself (bold, italic, code, links, lists,
    headings) but has no tables; the parser's line map says which source
    lines a top-level table spans.
    """
    tokens = _parser().parse(markdown)
    spans = [
        (i, tok.map, _close(tokens, i))
        for i, tok in enumerate(tokens)
        if tok.type == "table_open" and tok.level == 0 and tok.map
    ]
    if not spans:
        return markdown
    lines = markdown.split("\n")
    for opening, line_map, close in reversed(spans):
        start, end = line_map
        text = _table(tokens[opening + 1 : close])
        lines[start:end] = ["```", *text.split("\n"), "```"]
    return "\n".join(lines)


def to_web_html(markdown: str) -> str:
    """``markdown`` as HTML for the web chat: raw HTML in it shown as text, never run.

    Links with a scheme other than http(s), mailto, tel or a relative path
    (``javascript:``, ``vbscript:``, ``data:`` but images) stay text; a
    single newline is a line break, as a chat reply means it
    (markdown-it's link validation); tables stay tables, a column's alignment
    as ``class="align-right"`` (the page's Content-Security-Policy refuses
    inline styles).
    """
    md = _parser(breaks=True)
    env: dict[str, object] = {}
    tokens = md.parse(markdown, env)
    for tok in tokens:
        if tok.type in ("th_open", "td_open") and tok.attrs.get("style"):
            align = str(tok.attrs.pop("style")).removeprefix("text-align:")
            tok.attrSet("class", f"align-{align}")
    return str(md.renderer.render(tokens, md.options, env))
