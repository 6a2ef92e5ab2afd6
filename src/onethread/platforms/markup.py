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
- :func:`to_matrix_html`: a Matrix ``formatted_body`` (``org.matrix.custom.html``,
  the tags and link schemes the spec allows; images become links);
- :func:`to_web_html`: HTML for the web chat (no raw HTML, unsafe link
  schemes refused by markdown-it's link validation);
- :func:`to_email_html`: the HTML part of an email (as the web chat's, but
  tables keep inline ``text-align`` styles, which mail clients understand);
- :func:`to_plain`: the text with the markup taken away (the fallback when a
  platform rejects the markup);
- :func:`to_styled_plain`: that plain text plus where it is bold, italic,
  struck through or code, as UTF-16 ranges (Signal's text styles).

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
    "to_discord",
    "to_email_html",
    "to_matrix_html",
    "to_plain",
    "to_slack_mrkdwn",
    "to_styled_plain",
    "to_telegram_html",
    "to_web_html",
    "to_whatsapp",
]

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


# Private-use characters marking where a style opens and closes in the rendered text
# (taken out of the model's text first, so they can only be ours).
_MARKS = {"bold": "\ue000\ue001", "italic": "\ue002\ue003", "strike": "\ue004\ue005",
          "code": "\ue006\ue007"}  # fmt: skip
_MARK_OF = {ch: (style, i == 0) for style, pair in _MARKS.items() for i, ch in enumerate(pair)}


class _Styled(_Target):
    """Plain text with each style's start and end marked (see ``to_styled_plain``)."""

    bold = (_MARKS["bold"][0], _MARKS["bold"][1])
    italic = (_MARKS["italic"][0], _MARKS["italic"][1])
    strike = (_MARKS["strike"][0], _MARKS["strike"][1])

    def code(self, text: str) -> str:
        return f"{_MARKS['code'][0]}{text}{_MARKS['code'][1]}"

    def pre(self, text: str, lang: str) -> str:
        return self.code(text.rstrip("\n"))


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
_STYLED = _Styled()


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


# Text in which the parser would find nothing to render: no markup character (``\`*_~[]<>&#|``,
# control characters but the newline, our private-use marks), no line that begins or
# ends with white space (indented code, hard breaks), that begins a list, quote, heading
# or setext underline (``-+=>``, ``1.``/``1)``), and no run of blank lines. Such text
# renders to itself (paragraphs of soft-broken lines), on every target.
_NEEDS_PARSER = re.compile(
    r"[\\`*_~\[\]<>&#|\x00-\x09\x0b-\x1f\x7f\ue000-\ue007]"
    r"|\n\n\n|^[^\S\n]|[^\S\n]$|^[-+=>]|^\d+[.)]",
    re.MULTILINE,
)


def _render(markdown: str, t: _Target) -> str:
    if _NEEDS_PARSER.search(markdown) is None:  # most chat replies: no parse at all
        return markdown.strip("\n")
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


# Link schemes a Matrix client keeps in an <a href> (the spec's list for
# org.matrix.custom.html); anything else is shown as its text.
_MATRIX_SCHEMES = ("https:", "http:", "ftp:", "mailto:", "magnet:")


def _matrix_href(href: str) -> bool:
    return href.strip().lower().startswith(_MATRIX_SCHEMES)


def _matrix_inline(children: list[Token]) -> list[Token]:
    """Inline tokens fit for Matrix: links with other schemes become their text, and
    images (an ``<img>`` must point at ``mxc://`` there) become links to their source."""
    out: list[Token] = []
    dropped = False  # the open link was dropped: drop its close too (links never nest)
    for tok in children:
        if tok.type == "link_open":
            dropped = not _matrix_href(str(tok.attrGet("href") or ""))
            if not dropped:
                out.append(tok)
        elif tok.type == "link_close":
            if not dropped:
                out.append(tok)
            dropped = False
        elif tok.type == "image":
            src = str(tok.attrGet("src") or "")
            alt = Token("text", "", 0, content=_inline(tok.children, _PLAIN) or src)
            if _matrix_href(src):
                out += [Token("link_open", "a", 1, attrs={"href": src}), alt,
                        Token("link_close", "a", -1)]  # fmt: skip
            else:
                out.append(alt)
        else:
            out.append(tok)
    return out


def to_matrix_html(markdown: str) -> str:
    """``markdown`` as a Matrix ``formatted_body`` (``format: org.matrix.custom.html``).

    Raw HTML in it is shown as text, never interpreted; a single newline is a
    line break; tables stay tables (without the ``style`` attribute the spec
    does not allow); code blocks keep their ``language-*`` class; links only
    with the schemes Matrix clients keep (http(s), ftp, mailto, magnet);
    images become links, as a Matrix ``<img>`` takes only ``mxc://`` sources.
    """
    md = _parser(breaks=True)
    env: dict[str, object] = {}
    tokens = md.parse(markdown, env)
    for tok in tokens:
        if tok.type in ("th_open", "td_open"):
            tok.attrs.pop("style", None)
        elif tok.type == "inline" and tok.children:
            tok.children = _matrix_inline(tok.children)
    return str(md.renderer.render(tokens, md.options, env)).rstrip("\n")


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


def to_styled_plain(markdown: str) -> tuple[str, list[tuple[int, int, str]]]:
    """``markdown`` as :func:`to_plain`'s text plus its styles: ``(start, length, style)``
    with ``style`` one of ``"bold"``, ``"italic"``, ``"strike"``, ``"code"``.

    ``start`` and ``length`` count UTF-16 code units (as Signal's text styles
    do), not Python characters. Headings are bold; code spans, code blocks and
    tables are ``"code"``.
    """
    clean = markdown.translate({ord(ch): None for ch in _MARK_OF})
    rendered = _render(clean, _STYLED)
    text: list[str] = []
    styles: list[tuple[int, int, str]] = []
    opened: dict[str, list[int]] = {}
    units = 0
    for ch in rendered:
        mark = _MARK_OF.get(ch)
        if mark is None:
            text.append(ch)
            units += 2 if ord(ch) > 0xFFFF else 1
            continue
        style, opening = mark
        if opening:
            opened.setdefault(style, []).append(units)
        elif opened.get(style):
            start = opened[style].pop()
            if units > start:
                styles.append((start, units - start, style))
    return "".join(text), sorted(styles)


def to_email_html(markdown: str) -> str:
    """``markdown`` as the body of an email's HTML part: raw HTML in it shown as text.

    As :func:`to_web_html` (a single newline is a line break; unsafe link
    schemes stay text), but a table column's alignment stays an inline
    ``style``: mail clients have no style sheet to hold a class.
    """
    return str(_parser(breaks=True).render(markdown))
