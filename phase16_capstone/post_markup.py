"""What a post may contain: the markup the site renders and a few harmless constructs — an allow-list.

Phase 15's output check refuses what it knows to be dangerous (images, ``<script>``, ``<iframe>``,
foreign links, encoded payloads) and so passes what it does not know: ``<svg onload=...>``,
``<details ontoggle=...>``, an HTML comment, a ``javascript:`` link behind a reference definition.
A post becomes HTML, so the question to ask is the opposite one: is every construct in it one we
allow? The post is parsed by markdown-it-py (CommonMark, raw HTML recognised as raw HTML), and
every token must be one of:

- blocks: paragraphs, ``#`` headings, bullet lists (the site renders these) and numbered lists;
- inline: text, line breaks, ``**strong**`` (rendered), ``*emphasis*``, ``code`` spans (rendered),
  backslash escapes of punctuation, and links whose target is ``http(s)://`` (the site shows those
  as typed; Phase 15's check still refuses a host the topic did not name). ``[n]`` citation markers
  are plain text to CommonMark.

Anything else refuses the post, named: raw HTML (tags, comments, processing instructions — inline or
as a block), an image, a link to any other scheme or a relative one, a link reference definition, an
HTML character reference (``&lt;svg&gt;`` is markup written the long way), a code block, a block
quote, a horizontal rule. The site would escape all of it, so nothing here is about the site being
injectable: a model writing it is confused or obeying someone, and a human should look.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from markdown_it import MarkdownIt

from phase16_capstone.http_guard import printable

BLOCKS = frozenset(
    {
        "paragraph_open",
        "paragraph_close",
        "heading_open",
        "heading_close",
        "bullet_list_open",
        "bullet_list_close",
        "ordered_list_open",
        "ordered_list_close",
        "list_item_open",
        "list_item_close",
        "inline",
    }
)
INLINE = frozenset(
    {
        "text",
        "softbreak",
        "hardbreak",
        "strong_open",
        "strong_close",
        "em_open",
        "em_close",
        "code_inline",
        "link_open",
        "link_close",
    }
)
NAMES = {
    "html_block": "raw HTML",
    "html_inline": "raw HTML",
    "image": "an image",
    "fence": "a code block",
    "code_block": "a code block",
    "blockquote_open": "a block quote",
    "hr": "a horizontal rule",
}
LINK_SCHEMES = ("http", "https")


def _parser():

    md = MarkdownIt("commonmark")  # html on: raw HTML becomes html_* tokens, not text
    md.disable("text_join")  # keep entities and escapes as their own tokens (text_special)
    md.validateLink = lambda url: True  # a javascript: link stays a link (refused below), not plain text
    return md


def _snippet(text: str) -> str:

    return printable(text.strip(), limit=40)


def _link_ok(href: str) -> bool:
    parts = urlsplit(href)
    return parts.scheme.lower() in LINK_SCHEMES and bool(parts.netloc)


def disallowed(markdown: str) -> str | None:
    """The first construct of ``markdown`` outside the allow-list, named (with a snippet); None when
    every construct is allowed."""
    env: dict = {}
    tokens = _parser().parse(markdown, env)
    if env.get("references"):
        label, ref = next(iter(env["references"].items()))
        return f"a link reference definition ({_snippet(label)} -> {_snippet(ref.get('href', ''))})"
    for token in tokens:
        if token.type not in BLOCKS:
            return f"{NAMES.get(token.type, token.type)} ({_snippet(token.content or token.markup)})"
        for child in token.children or ():
            if child.type == "text_special" and child.info == "escape":
                continue
            if child.type == "text_special":
                return f"an HTML character reference ({_snippet(child.markup)})"
            if child.type not in INLINE:
                return f"{NAMES.get(child.type, child.type)} ({_snippet(child.content or child.markup)})"
            if child.type == "link_open" and not _link_ok(child.attrs.get("href", "")):
                return f"a link to {_snippet(str(child.attrs.get('href', '')))}, not an http(s) URL"
    return None
