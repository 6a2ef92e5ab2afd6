"""The Markdown renderers (onethread.platforms.markup): one parser, each platform's markup."""

from __future__ import annotations

import re

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
