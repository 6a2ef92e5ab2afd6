"""The Markdown renderers (onethread.platforms.markup): one parser, each platform's markup."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onethread.platforms.markup import (
    to_discord,
    to_matrix_html,
    to_plain,
    to_slack_mrkdwn,
    to_telegram_html,
    to_web_html,
)

TABLE = "| name | qty |\n|---|---:|\n| apple | 3 |\n| kiwi | 12 |"
ALIGNED = "name  | qty\n------+----\napple | 3\nkiwi  | 12"

MARKDOWN = st.text(alphabet=st.sampled_from(list("ab *_`~#[]()<>&|-!\n\\:/hx1.😀")), max_size=120)


def test_each_platform_keeps_code_links_lists_emphasis_and_tables() -> None:
    md = f"**b** *i* ~~s~~ `c<d>` [l](https://e.org/?a=1&b=2)\n\n- one\n- two\n\n{TABLE}"
    assert to_telegram_html(md) == (
        "<b>b</b> <i>i</i> <s>s</s> <code>c&lt;d&gt;</code> "
        '<a href="https://e.org/?a=1&amp;b=2">l</a>\n\n• one\n• two\n\n'
        f"<pre>{ALIGNED}</pre>"
    )
    assert to_slack_mrkdwn(md) == (
        "*b* _i_ ~s~ `c&lt;d&gt;` <https://e.org/?a=1&b=2|l>\n\n• one\n• two\n\n"
        f"```\n{ALIGNED}\n```"
    )
    assert to_discord(md) == md.replace(TABLE, f"```\n{ALIGNED}\n```")
    assert to_plain(md) == f"b i s c<d> l (https://e.org/?a=1&b=2)\n\n• one\n• two\n\n{ALIGNED}"
    web = to_web_html(md)
    assert "<table>" in web and '<td class="align-right">12</td>' in web and "style" not in web


def test_raw_html_and_script_links_are_text_everywhere() -> None:
    md = '<script>alert(1)</script> <b onclick="x()">b</b> [x](javascript:alert(1))'
    assert "<script>" not in to_telegram_html(md) and "<b onclick" not in to_telegram_html(md)
    assert "<script>" not in to_slack_mrkdwn(md)
    web = to_web_html(md)
    assert "<script>" not in web and "<b " not in web and 'href="javascript' not in web


def test_nested_lists_and_quotes() -> None:
    assert to_plain("0. zero\n1. one") == "0. zero\n1. one"  # numbering as written
    md = "1. first\n   - inner\n2. second\n\n> quoted\n> more"
    assert to_plain(md) == "1. first\n   • inner\n2. second\n\n> quoted\n> more"
    assert to_telegram_html(md).endswith("<blockquote>quoted\nmore</blockquote>")


def test_matrix_html_keeps_what_the_spec_allows_and_no_more() -> None:
    md = (
        f"**b** *i* ~~s~~ `c<d>` [l](https://e.org/?a=1&b=2)\nnext line\n\n"
        f"```python\nx = '<hi>'\n```\n\n{TABLE}\n\n"
        "[bad](javascript:alert(1)) [rel](/local) ![cat](https://e.org/cat.png) <b>raw</b>"
    )
    out = to_matrix_html(md)
    assert "<strong>b</strong> <em>i</em> <s>s</s> <code>c&lt;d&gt;</code>" in out
    assert '<a href="https://e.org/?a=1&amp;b=2">l</a><br />\nnext line' in out
    assert "<pre><code class=\"language-python\">x = '&lt;hi&gt;'\n</code></pre>" in out
    assert "<table>" in out and "<td>12</td>" in out and "style" not in out
    assert 'href="javascript' not in out and " rel " in out and "/local" not in out
    assert '<a href="https://e.org/cat.png">cat</a>' in out and "<img" not in out
    assert "&lt;b&gt;raw&lt;/b&gt;" in out and not out.endswith("\n")


@settings(max_examples=200, deadline=None)
@given(MARKDOWN)
def test_matrix_html_never_opens_what_it_does_not_close(markdown: str) -> None:
    out = to_matrix_html(markdown)
    for tag in ("strong", "em", "code", "pre", "a", "table", "ul", "ol", "p", "s"):
        assert out.count(f"<{tag}>") + out.count(f"<{tag} ") == out.count(f"</{tag}>"), tag


@settings(max_examples=200, deadline=None)
@given(MARKDOWN)
def test_slack_mrkdwn_has_no_stray_angle_brackets(markdown: str) -> None:
    """Slack reads <...> as a link or mention: only the renderer's links may use it."""
    out = to_slack_mrkdwn(markdown)
    assert "<" not in re.sub(r"<[^<>|]+(\|[^<>]*)?>", "", out)


@settings(max_examples=200, deadline=None)
@given(MARKDOWN)
def test_discord_and_web_never_open_what_they_do_not_close(markdown: str) -> None:
    web = to_web_html(markdown)
    for tag in ("strong", "em", "code", "pre", "a", "table", "ul", "ol", "p"):
        assert web.count(f"<{tag}>") + web.count(f"<{tag} ") == web.count(f"</{tag}>"), tag
    if markdown.count("```") == 0:  # a table became a fenced block: fences come in pairs
        assert to_discord(markdown).count("```") % 2 == 0


def test_styled_plain_text_counts_utf16_and_matches_to_plain() -> None:
    from onethread.platforms.markup import to_plain, to_styled_plain

    md = "# Title\n\n`code` 🎉 **b*i*b** ~~gone~~ \ue000"
    text, styles = to_styled_plain(md)
    assert text == to_plain(md.replace("\ue000", "")) == "Title\n\ncode 🎉 bib gone"
    # "🎉" is two UTF-16 code units, so what follows it starts one unit later.
    assert styles == [(0, 5, "bold"), (7, 4, "code"), (15, 3, "bold"), (16, 1, "italic"),
                      (19, 4, "strike")]  # fmt: skip
    assert to_styled_plain("```\nx = 1\n```") == ("x = 1", [(0, 5, "code")])
    assert to_styled_plain("plain") == ("plain", [])


# Text the fast path may take: words, spaces, newlines, the punctuation of chat replies,
# and the characters that start lists, quotes and headings, so both paths are drawn.
PLAIN_ISH = st.text(
    alphabet=st.sampled_from(list("ab Zé …\xa0\u2028\t\n.,:;!?\"'()/-+=>1290😀")), max_size=80
)


@settings(max_examples=2000, deadline=None)
@given(PLAIN_ISH)
def test_plain_text_fast_path_renders_as_the_parser_does(text: str) -> None:
    """Issue 14: text with nothing to render skips the parser; the result is the parser's."""
    from onethread.platforms import markup

    for target in (markup._WHATSAPP, markup._TELEGRAM, markup._SLACK, markup._PLAIN,
                   markup._STYLED):  # fmt: skip
        parsed = "\n\n".join(
            b for b in markup._blocks(markup._parser().parse(text), target) if b
        ).strip("\n")
        assert markup._render(text, target) == parsed, (text, target)


def test_a_plain_reply_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: a chat reply without markup costs no Markdown parse (it was most of
    a WhatsApp turn's CPU); one with markup still is parsed."""
    from onethread.platforms import markup

    def no_parser(breaks: bool = False) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(markup, "_parser", no_parser)
    reply = 'You said: "hello 12"\nI remember this conversation: 3 earlier messages.'
    assert markup.to_whatsapp(reply) == reply
    assert markup.to_telegram_html("Fine, thanks!\n\nAnd you?") == "Fine, thanks!\n\nAnd you?"
    for marked in ("*yes*", "1. one", "- a", "  code", "a  \nb", "x & y", "a\n\n\nb"):
        with pytest.raises(AssertionError, match="parsed"):
            markup.to_whatsapp(marked)
