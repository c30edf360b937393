"""The published site: what a post, its audit trail and the index look like as static HTML.

A post is only as trustworthy as the evidence behind it, so every post page comes with an audit
page a reader can check: each ``[n]`` marker in the body is a link to the chunk of text it cites
(a ``[n?]`` marker, which the engine added where the model cited nothing, is a link too, styled
apart and titled as such)
(source, chunk id, an excerpt of the chunk), and the audit page also shows every Editor pass (gate
scores, verdict, reasons), the trace id, tokens, cost and model. The chunks are untrusted text, so
the page never republishes one whole: it shows ``untrusted.excerpt`` — bounded, with every sentence
the Phase 15 defence reads as an instruction removed and marked in its place. The Publisher
(``publisher.py``) deploys the files this module renders; the engine builds the ``PostRecord`` from
its job store. A post whose Editor approval did not count as a review (the judge had not passed
calibration: ``reviewed`` is not True) is marked UNREVIEWED on its page, its audit page and the index,
with the reason (``review_note``).

Everything that reaches the HTML came from a model or an untrusted corpus, so it is treated as
text: Jinja2 with autoescape on, the body's markdown-ish markup rendered by this module from
escaped pieces (never passed through as HTML), a Content-Security-Policy that forbids scripts, and
``lab.results.redact`` over every string so a key that leaked into a draft never reaches the site.
Output is a pure function of the records (no build timestamps), so re-publishing changes nothing.

Layout (relative paths, so the site works from ``file://`` and any static host)::

    index.html              every post, newest first
    posts/<slug>.html       the post
    audit/<slug>.html       its audit page: citations at ``#cite-<n>``, revisions, trace, cost
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import markupsafe
from markupsafe import Markup, escape

from lab.results import redact
from phase16_capstone.untrusted import excerpt

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,78}[a-z0-9])?$")
DECISIONS = ("APPROVE", "REJECT", "ESCALATE")


@dataclass(frozen=True)
class Citation:
    """One ``[n]`` marker in the post body and the evidence chunk behind it."""

    n: int
    chunk_id: str
    source: str
    text: str


@dataclass(frozen=True)
class RevisionRecord:
    """One Editor pass over a draft (``editor_gate.decide``'s verdict and the scores it saw)."""

    number: int
    decision: str  # APPROVE | REJECT | ESCALATE
    scores: dict[str, float] = field(hash=False)
    reasons: list[str] = field(hash=False)


@dataclass(frozen=True)
class PostRecord:
    job_id: str
    slug: str  # a safe file name: lowercase letters, digits and inner hyphens (``make_slug``)
    title: str
    topic: str
    body_markdown: str  # paragraphs separated by blank lines, with [n] citation markers
    citations: list[Citation] = field(hash=False)
    revisions: list[RevisionRecord] = field(hash=False)
    trace_id: str | None
    tokens: dict[str, int] = field(hash=False)
    cost_usd: float | None
    created_at: str  # ISO-8601 UTC
    model: str
    reviewed: bool | None = None  # True: a calibrated judge approved it; False: it did not count; None: not recorded
    review_note: str = ""  # why an approval did not count as a review

    def __post_init__(self) -> None:
        where = f"post {self.job_id!r}"
        if not isinstance(self.job_id, str) or not self.job_id.strip():
            raise ValueError(f"post field 'job_id' must be a non-empty string, got {self.job_id!r}")
        if not isinstance(self.slug, str) or not SLUG.match(self.slug):
            raise ValueError(
                f"{where}: field 'slug' {self.slug!r} is not a safe file name "
                "(lowercase a-z, 0-9 and inner '-', at most 80 characters; use make_slug)"
            )
        numbers = [c.n for c in self.citations]
        if len(set(numbers)) != len(numbers) or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in numbers
        ):
            raise ValueError(f"{where}: field 'citations' needs distinct positive integers n, got {numbers}")
        for rev in self.revisions:
            if rev.decision not in DECISIONS:
                raise ValueError(
                    f"{where}: revision {rev.number} field 'decision' is {rev.decision!r}, "
                    f"expected one of {', '.join(DECISIONS)}"
                )
        created(self)  # raises naming the field when it is not ISO-8601

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what a job store keeps to re-render the index later)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostRecord:

        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if missing:
            raise ValueError(f"post record is missing field(s) {', '.join(missing)}")
        return cls(
            **{
                **data,
                "citations": [Citation(**c) for c in data["citations"]],
                "revisions": [RevisionRecord(**r) for r in data["revisions"]],
            }
        )


def make_slug(title: str, job_id: str) -> str:
    """A readable, unique file name: the title's words plus the job id, so two posts never collide."""
    words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48].strip("-")
    tail = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")[:24].strip("-")
    return "-".join(p for p in (words, tail) if p) or "post"


def created(post: PostRecord) -> datetime:
    try:
        moment = datetime.fromisoformat(post.created_at.replace("Z", "+00:00"))
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"post {post.job_id!r}: field 'created_at' {post.created_at!r} is not ISO-8601") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def post_path(post: PostRecord) -> str:
    return f"posts/{post.slug}.html"


def check_site_url(url: str) -> str:
    """``url`` when it can be the site's public base URL: http(s), a host, no credentials, query or fragment."""

    parts = urlsplit(url.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.password
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"site URL {url!r} must be an http(s) URL with a host and no credentials, query or "
            "fragment, e.g. https://example.github.io/site/"
        )
    return url.strip()


def public_url(site_url: str | None, relpath: str) -> str:
    """Where a reader finds ``relpath`` of the site: ``site_url`` + the path, or the site-relative path
    when no public URL is configured (never a path on the publishing machine)."""
    return f"{site_url.rstrip('/')}/{relpath}" if site_url else relpath


def audit_path(post: PostRecord) -> str:
    return f"audit/{post.slug}.html"


# --- the body: a small, safe subset of markdown ---------------------------------------------------
# Blocks split on blank lines: "# " / "## " headings, "- " lists, paragraphs. Inline: [n] and
# [n, m] citations, **bold**, `code`. Every piece of text is escaped before it is wrapped in a tag.
_INLINE = re.compile(
    r"\[(?P<cite>\d+(?:\s*,\s*\d+)*)\]|\[(?P<added>\d+)\?\]|\*\*(?P<bold>[^*\n]+)\*\*|`(?P<code>[^`\n]+)`"
)
ADDED_TITLE = "added by the engine: the model cited no source here; this is the chunk the paragraph was written from"
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_ITEM = re.compile(r"^\s*[-*]\s+(.*)$")


def _inline(text: str, cite_href: dict[int, str]):

    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(escape(text[pos : m.start()]))
        if m["cite"]:
            for n in (int(x) for x in m["cite"].split(",")):
                if n in cite_href:
                    out.append(
                        Markup('<a class="cite" href="{}" title="source [{}]">[{}]</a>').format(cite_href[n], n, n)
                    )
                else:  # the Writer cited a chunk it was never given: visible, never a dead link
                    out.append(Markup('<span class="cite-missing" title="no such citation">[{}]</span>').format(n))
        elif m["added"]:
            n = int(m["added"])
            target = cite_href.get(n)
            out.append(
                Markup('<a class="cite cite-added" href="{}" title="{}">[{}?]</a>').format(target, ADDED_TITLE, n)
                if target
                else Markup('<span class="cite-missing" title="no such citation">[{}?]</span>').format(n)
            )
        elif m["bold"]:
            out.append(Markup("<strong>{}</strong>").format(m["bold"]))
        else:
            out.append(Markup("<code>{}</code>").format(m["code"]))
        pos = m.end()
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def render_body(markdown: str, cite_href: dict[int, str]):
    """Markdown-ish text -> safe HTML (``markupsafe.Markup``); ``cite_href`` maps n -> link target."""

    blocks = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        if not lines:
            continue
        heading = _HEADING.match(lines[0])
        if heading and len(lines) == 1:
            tag = "h2" if len(heading[1]) <= 2 else "h3"
            blocks.append(Markup(f"<{tag}>{{}}</{tag}>").format(_inline(heading[2], cite_href)))
        elif all(_ITEM.match(ln) for ln in lines):
            items = Markup("").join(
                Markup("<li>{}</li>").format(_inline(_ITEM.match(ln)[1], cite_href)) for ln in lines
            )
            blocks.append(Markup("<ul>{}</ul>").format(items))
        else:
            blocks.append(Markup("<p>{}</p>").format(_inline(" ".join(lines), cite_href)))
    return Markup("\n").join(blocks)


def cited_numbers(markdown: str) -> list[int]:
    """Every citation number the body uses, in order of first use."""
    seen: list[int] = []
    for m in _INLINE.finditer(markdown):
        for n in (int(x) for x in (m["cite"] or m["added"] or "").split(",") if x.strip()):
            if n not in seen:
                seen.append(n)
    return seen


# --- templates ------------------------------------------------------------------------------------
CSS = """
body{font-family:"DejaVu Sans",system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;line-height:1.55;color:#1d1d1f}
a{color:#0b57d0}nav{font-size:.9rem;margin-bottom:1rem}h1{line-height:1.2}
.meta{color:#555;font-size:.9rem}.cite{font-size:.8em;vertical-align:super;text-decoration:none}
.cite-missing{font-size:.8em;vertical-align:super;color:#b00020}.cite-added{color:#777;font-style:italic}
.UNREVIEWED{background:#ffd8a8}.unreviewed{border:2px solid #e8590c;padding:.4rem .6rem;background:#fff4e6}.redacted{background:#eee;color:#b00020}
.verdict{font-weight:bold;padding:0 .3em;border-radius:3px}.APPROVE{background:#d7f5dd}.REJECT{background:#fde2e1}.ESCALATE{background:#fff1c2}
blockquote{margin:.4rem 0 1rem;padding:.5rem .8rem;border-left:3px solid #999;background:#f6f6f6;white-space:pre-wrap;font-size:.9rem}
table{border-collapse:collapse;font-size:.9rem;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
td ul{margin:0;padding-left:1rem}body{overflow-wrap:anywhere}
ol.posts li{margin-bottom:.8rem}
""".strip()

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src 'self'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title><style>{{ css }}</style></head>
<body data-page="{% block page %}{% endblock %}">
{% block content %}{% endblock %}
</body></html>
"""

INDEX = """{% extends "base" %}{% block title %}Content engine — posts{% endblock %}{% block page %}index{% endblock %}
{% block content %}<h1>Content engine — posts</h1>
{% if posts %}<ol class="posts">
{% for p in posts %}<li><a class="post-link" href="{{ p.href }}">{{ p.title }}</a>
<div class="meta">{{ p.created_at }} · topic: {{ p.topic }} · {{ p.n_citations }} citation(s) ·
<span class="verdict {{ p.verdict }}">{{ p.verdict }}</span> · <a class="audit-link" href="{{ p.audit_href }}">audit</a></div></li>
{% endfor %}</ol>{% else %}<p>No posts yet.</p>{% endif %}
{% endblock %}"""

POST = """{% extends "base" %}{% block title %}{{ title }}{% endblock %}{% block page %}post{% endblock %}
{% block content %}<nav><a class="home-link" href="../index.html">← all posts</a></nav>
<article><h1>{{ title }}</h1>
{% if review_note %}<p class="unreviewed"><strong>Unreviewed.</strong> {{ review_note }}</p>{% endif %}
<p class="meta">{{ created_at }} · topic: {{ topic }} · <a class="audit-link" href="{{ audit_href }}">Audit</a>: sources, Editor scores, trace</p>
{{ body }}
</article>
<p class="meta"><a class="audit-link" href="{{ audit_href }}">Audit this post</a> — {{ n_citations }} citation(s), Editor verdict
<span class="verdict {{ verdict }}">{{ verdict }}</span>.</p>
{% endblock %}"""

AUDIT = """{% extends "base" %}{% block title %}Audit: {{ title }}{% endblock %}{% block page %}audit{% endblock %}
{% block content %}<nav><a class="home-link" href="../index.html">← all posts</a> · <a class="post-link" href="{{ post_href }}">the post</a></nav>
<h1>Audit: {{ title }}</h1>
<table class="run">
<tr><th>job id</th><td>{{ job_id }}</td></tr>
<tr><th>topic</th><td>{{ topic }}</td></tr>
<tr><th>created</th><td>{{ created_at }}</td></tr>
<tr><th>model</th><td>{{ model }}</td></tr>
<tr><th>trace id</th><td class="trace-id">{{ trace_id or "not traced" }}</td></tr>
<tr><th>tokens</th><td class="tokens">{% for k, v in tokens %}{{ k }} {{ v }}{% if not loop.last %} · {% endif %}{% else %}not recorded{% endfor %}</td></tr>
<tr><th>cost</th><td class="cost">{{ cost }}</td></tr>
<tr><th>final verdict</th><td><span class="verdict {{ verdict }}">{{ verdict }}</span>{% if review_note %} <span class="unreviewed-note">{{ review_note }}</span>{% endif %}</td></tr>
</table>

<h2>Sources</h2>
<ul class="sources">{% for s in sources %}<li>{{ s.source }}: {% for n in s.numbers %}<a href="#cite-{{ n }}">[{{ n }}]</a> {% endfor %}</li>
{% else %}<li>none</li>{% endfor %}</ul>

<h2>Citations</h2>
<p class="meta">Excerpts of untrusted sources: sentences that read as instructions to a model are removed, and marked where they were.</p>
{% for c in citations %}<section class="citation" id="cite-{{ c.n }}">
<h3>[{{ c.n }}] {{ c.source }}</h3><p class="meta">chunk <code>{{ c.chunk_id }}</code>{% if not c.used %} · not cited in the body{% endif %}</p>
<blockquote>{% for text, redacted in c.excerpt %}{% if redacted %}<mark class="redacted">[instruction removed]</mark>{% else %}{{ text }}{% endif %}{% endfor %}</blockquote></section>
{% else %}<p>No citations.</p>{% endfor %}
{% if missing %}<p class="cite-missing">Markers in the body with no citation behind them: {% for n in missing %}[{{ n }}] {% endfor %}</p>{% endif %}

<h2>Editor passes</h2>
{% if revisions %}<table class="revisions"><tr><th>pass</th><th>verdict</th>{% for d in dims %}<th>{{ d }}</th>{% endfor %}<th>reasons</th></tr>
{% for r in revisions %}<tr class="revision"><td>{{ r.number }}</td><td><span class="verdict {{ r.decision }}">{{ r.decision }}</span></td>
{% for d in dims %}<td>{{ r.scores[d] if d in r.scores else "—" }}</td>{% endfor %}
<td><ul>{% for reason in r.reasons %}<li>{{ reason }}</li>{% endfor %}</ul></td></tr>
{% endfor %}</table>{% else %}<p>No Editor pass recorded.</p>{% endif %}
{% endblock %}"""


def _env():
    import jinja2  # noqa: PLC0415 (jinja2 loads only on the path that uses it)

    env = jinja2.Environment(
        loader=jinja2.DictLoader({"base": BASE, "index": INDEX, "post": POST, "audit": AUDIT}),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.globals["css"] = markupsafe.Markup(CSS)  # our constant; escaping it would break the quotes in <style>
    return env


def _redacted(post: PostRecord) -> PostRecord:
    """The same post with secrets blanked in every displayed string (keys, URL passwords, tokens).

    The slug and job id are identifiers, not prose: left alone so a redaction never moves a page."""
    return PostRecord.from_dict({**redact(post.to_dict()), "slug": post.slug, "job_id": post.job_id})


def _verdict(post: PostRecord) -> str:
    """The last Editor decision, or UNREVIEWED when no pass counted as a review (an approval by a judge
    that had not passed calibration is not one)."""
    if not post.revisions or post.reviewed is False:
        return "UNREVIEWED"
    return post.revisions[-1].decision


def _review_note(post: PostRecord) -> str:
    if post.reviewed is False:
        return post.review_note or "the Editor's approval did not count as a review"
    return "" if post.reviewed else "whether a calibrated judge reviewed this post was not recorded"


def _fmt_score(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def merge_posts(post: PostRecord, all_posts: Iterable[PostRecord]) -> list[PostRecord]:
    """One record per job id (``post`` replaces an earlier record of its job), newest first.

    This is what makes publishing idempotent: a job published twice is still one index entry.
    Two different jobs on one slug would overwrite each other's page, so that is an error.
    """
    by_job = {p.job_id: p for p in all_posts}
    by_job[post.job_id] = post
    slugs: dict[str, str] = {}
    for p in by_job.values():
        if slugs.setdefault(p.slug, p.job_id) != p.job_id:
            raise ValueError(
                f"slug {p.slug!r} is used by jobs {slugs[p.slug]!r} and {p.job_id!r}; slugs must be unique"
            )
    return sorted(by_job.values(), key=lambda p: (created(p), p.job_id), reverse=True)


def render_index(posts: list[PostRecord]) -> str:
    rows = [
        {
            "href": post_path(p),
            "audit_href": audit_path(p),
            "title": p.title,
            "created_at": p.created_at,
            "topic": p.topic,
            "n_citations": len(p.citations),
            "verdict": _verdict(p),
        }
        for p in map(_redacted, posts)
    ]
    return _env().get_template("index").render(posts=rows)


def render_post(post: PostRecord) -> str:
    post = _redacted(post)
    audit = f"../{audit_path(post)}"
    hrefs = {c.n: f"{audit}#cite-{c.n}" for c in post.citations}
    return (
        _env()
        .get_template("post")
        .render(
            title=post.title,
            created_at=post.created_at,
            topic=post.topic,
            audit_href=audit,
            body=render_body(post.body_markdown, hrefs),
            n_citations=len(post.citations),
            verdict=_verdict(post),
            review_note=_review_note(post),
        )
    )


def render_audit(post: PostRecord) -> str:
    post = _redacted(post)
    used = set(cited_numbers(post.body_markdown))
    citations = sorted(post.citations, key=lambda c: c.n)
    sources: dict[str, list[int]] = {}
    for c in citations:
        sources.setdefault(c.source, []).append(c.n)
    dims: list[str] = []
    for rev in post.revisions:
        dims += [d for d in rev.scores if d not in dims]
    revisions = [
        {
            "number": r.number,
            "decision": r.decision,
            "reasons": r.reasons,
            "scores": {k: _fmt_score(v) for k, v in r.scores.items()},
        }
        for r in post.revisions
    ]
    return (
        _env()
        .get_template("audit")
        .render(
            title=post.title,
            job_id=post.job_id,
            topic=post.topic,
            created_at=post.created_at,
            model=post.model,
            trace_id=post.trace_id,
            tokens=sorted(post.tokens.items()),
            verdict=_verdict(post),
            review_note=_review_note(post),
            cost="not recorded" if post.cost_usd is None else f"${post.cost_usd:.6f}",
            post_href=f"../{post_path(post)}",
            sources=[{"source": s, "numbers": ns} for s, ns in sources.items()],
            citations=[
                {"n": c.n, "chunk_id": c.chunk_id, "source": c.source, "used": c.n in used, "excerpt": excerpt(c.text)}
                for c in citations
            ],
            missing=sorted(used - {c.n for c in citations}),
            dims=dims,
            revisions=revisions,
        )
    )


def render_post_files(post: PostRecord, all_posts: Iterable[PostRecord]) -> dict[str, str]:
    """Relative path -> HTML for what publishing ``post`` changes: its page, its audit page, the index."""
    posts = merge_posts(post, all_posts)
    return {post_path(post): render_post(post), audit_path(post): render_audit(post), "index.html": render_index(posts)}
