"""16.x — The published site, checked in a real browser.

The Publisher's job is not done when files are written: a reader opens them in a browser. This
exercise publishes a site (``publisher.publish`` into a folder), then loads every page in Debian's
headless Chromium and reads the DOM the browser built — not the HTML text — to check what a reader
gets: each page has a title, each post's ``[n]`` markers are links whose target page and anchor
exist, each post links to its audit page, and no page holds a script element, an event handler or
a ``javascript:`` URL, whatever the model wrote. A screenshot of a post is kept beside the result.

By default the site is a sample built from real repo text: posts whose sentences are copied from
chunks of the Phase 12 lesson notes (``corpus.load_corpus`` + ``chunking.structure_chunks``), each
citing the chunk it came from, with Editor passes decided by the Phase 11 ``editor_gate`` — no model
runs, so the check measures the site, not a model. One more post is an injection probe: hostile
markup and a planted API key in its title, body and cited chunk. The sample is published twice to
measure idempotency (the second publish must change no file). Point it at any site the engine
published with ``--set site=DIR`` (``python -m phase16_capstone run ... --site DIR``).

Chromium missing: the run skips and names the install command (``make setup`` installs it when it
runs as root or with sudo on a Debian-like machine).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from lab import Exercise, ExerciseConfig, RunContext
from phase11_evals.editor_gate import DIMENSIONS, decide
from phase12_rag_storage.chunking import structure_chunks
from phase12_rag_storage.corpus import load_corpus
from phase16_capstone.browser import INSTALL_HINT, Chromium, find_chromium, parse_dom, png_size
from phase16_capstone.publisher import DirectoryDeploy, publish
from phase16_capstone.site_builder import Citation, PostRecord, RevisionRecord, make_slug

# Sample fixture inputs (not measurements): when the sample posts were "created", and the Editor
# scores their two passes carry. The verdicts are decided by phase11 editor_gate from these.
SAMPLE_EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SAMPLE_SCORES = (
    {
        "technical_accuracy": 2.5,
        "calibration": 3.0,
        "mechanistic_depth": 3.0,
        "audience_calibration": 3.5,
        "confident_hallucination": False,
    },
    {
        "technical_accuracy": 4.0,
        "calibration": 3.5,
        "mechanistic_depth": 3.5,
        "audience_calibration": 4.0,
        "confident_hallucination": False,
    },
)
HOSTILE = "<script>document.title='PWNED'</script>"
HOSTILE_IMG = "<img src=x onerror=\"document.title='PWNED'\">"
PLANTED_KEY = "sk-ant-planted0000site0check0key"


class Config(ExerciseConfig):
    site: str | None = None  # an existing site folder to check; default: publish the sample built below
    corpus: str | None = None  # folder of .md/.txt the sample posts cite; default: phase12_rag_storage/notes
    n_posts: int = 3  # sample posts (one per corpus document)
    citations_per_post: int = 3
    probe: bool = True  # add the injection-probe post to the sample
    max_pages: int = 60  # crawl bound for a large --set site=DIR
    chromium: str | None = None  # binary or command; default: chromium, chromium-browser, google-chrome
    width: int = 1200
    height: int = 800


# --- the sample site, from real repo text ---------------------------------------------------------
def _sentences(text: str, n: int = 2) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    flat = re.sub(r"\[\d+\]", "", " ".join(" ".join(lines).split()))  # the notes' own [n] are not ours
    return " ".join(re.split(r"(?<=[.!?])\s+", flat)[:n]).strip()


def _heading(text: str) -> str | None:
    first = text.strip().splitlines()[0]
    return first.lstrip("#").strip() if first.startswith("#") else None


def _revisions() -> list[RevisionRecord]:

    out = []
    for number, scores in enumerate(SAMPLE_SCORES, start=1):
        gate = decide(scores, revisions_done=number - 1)
        out.append(RevisionRecord(number, gate.verdict, {d: gate.scores[d] for d in DIMENSIONS}, list(gate.reasons)))
    return out


def sample_posts(
    corpus: str | None = None, n_posts: int = 3, citations_per_post: int = 3, probe: bool = True
) -> list[PostRecord]:
    """Posts whose every sentence is copied from the chunk it cites (plus the injection probe)."""

    posts = []
    for i, doc in enumerate(load_corpus(corpus)[:n_posts]):
        chunks = [c for c in structure_chunks(doc, max_words=120) if len(_sentences(c.text).split()) >= 8]
        title = _heading(doc.text) or doc.source
        citations, paragraphs = [], []
        for n, chunk in enumerate(chunks[:citations_per_post], start=1):
            citations.append(Citation(n, chunk.id, chunk.source, chunk.text))
            heading = _heading(chunk.text)
            paragraphs += ([f"## {heading}"] if heading and heading != title else []) + [
                f"{_sentences(chunk.text)} [{n}]"
            ]
        if not citations:
            continue
        job_id = f"sample-{i + 1}"
        posts.append(
            PostRecord(
                job_id=job_id,
                slug=make_slug(title, job_id),
                title=title,
                topic=doc.source,
                body_markdown="\n\n".join(paragraphs),
                citations=citations,
                revisions=_revisions(),
                trace_id=None,
                tokens={},
                cost_usd=None,
                created_at=(SAMPLE_EPOCH + timedelta(hours=i)).isoformat().replace("+00:00", "Z"),
                model="none: extractive sample (sentences copied from the cited chunks)",
            )
        )
    if probe and posts:
        real = posts[0].citations[0]
        body = (
            f"Injection probe {HOSTILE} with an image {HOSTILE_IMG} and a planted key {PLANTED_KEY}. "
            f"It cites a real chunk [1] and one that does not exist [9]."
        )
        posts.append(
            PostRecord(
                job_id="probe",
                slug="injection-probe",
                title=f"Injection probe {HOSTILE}",
                topic=f"probe {HOSTILE_IMG}",
                body_markdown=body,
                citations=[Citation(1, real.chunk_id, real.source, f"{real.text}\n{HOSTILE} {PLANTED_KEY}")],
                revisions=_revisions(),
                trace_id=f"trace-{HOSTILE}",
                tokens={"prompt": 0, "completion": 0},
                cost_usd=0.0,
                created_at=(SAMPLE_EPOCH + timedelta(hours=len(posts))).isoformat().replace("+00:00", "Z"),
                model=f"probe model {PLANTED_KEY}",
            )
        )
    return posts


def publish_sample(posts: list[PostRecord], site_dir: Path) -> tuple[list[str], int]:
    """Publish every post in turn (as the engine does, one job at a time), then the first one again.

    Returns (every file written, files the repeated publish changed)."""

    deploy, done, written = DirectoryDeploy(site_dir), [], set()
    for post in posts:
        publish(post, done, deploy)
        done.append(post)
        written.update(deploy.changed)
    publish(posts[0], done, deploy)  # a retry of job 1: must rewrite nothing
    return sorted(written), len(deploy.changed)


# --- the browser check ----------------------------------------------------------------------------
def _target(page: str, href: str) -> tuple[str, str] | None:
    """(site-relative path, fragment) of a link on ``page``; None for a link off the site."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None
    path = posixpath.normpath(posixpath.join(posixpath.dirname(page), parts.path)) if parts.path else page
    return path, parts.fragment


def crawl(site: Path, load, max_pages: int) -> dict:
    """Every page reachable from index.html (breadth first, at most ``max_pages``), as parsed DOMs."""

    doms, queue = {}, ["index.html"]
    while queue and len(doms) < max_pages:
        page = queue.pop(0)
        doms[page] = parse_dom(load(site / page))
        for _, href in doms[page].links:
            target = _target(page, href)
            if target and target[0] not in doms and target[0] not in queue and (site / target[0]).is_file():
                queue.append(target[0])
    return doms


def check_pages(site: Path, doms: dict) -> tuple[list[tuple[str, str, bool, str]], list[tuple[str, str]], int]:
    """(checks as (page, check, passed, detail), broken links as (page, href), citation links)."""

    def resolves(page: str, href: str) -> bool:
        target = _target(page, href)
        if target is None:
            return True  # off-site links are not ours to check (the renderer emits none)
        path, fragment = target
        if path.startswith("..") or not (site / path).is_file():
            return False
        if fragment:
            dom = doms.get(path) or parse_dom((site / path).read_text(encoding="utf-8"))
            return fragment in dom.ids
        return True

    checks, broken, n_cite = [], [], 0
    for page, dom in doms.items():
        kind = page.split("/")[0] if "/" in page else page
        broken += [(page, href) for _, href in dom.links if not resolves(page, href)]
        checks += [
            (page, "has a title", bool(dom.title), dom.title[:80]),
            (page, "no script element", dom.scripts == 0, f"{dom.scripts} <script>"),
            (page, "no event handler attribute", dom.handlers == 0, f"{dom.handlers} on*="),
            (page, "no javascript: URL", dom.js_urls == 0, f"{dom.js_urls} javascript:"),
        ]
        if kind == "index.html":
            checks.append(
                (page, "lists posts", bool(dom.hrefs("post-link")), f"{len(dom.hrefs('post-link'))} post links")
            )
        elif kind == "posts":
            cites, audits = dom.hrefs("cite"), dom.hrefs("audit-link")
            n_cite += len(cites)
            checks += [
                (page, "h1 is the title", dom.h1 == dom.title, dom.h1[:80]),
                (
                    page,
                    "citation links",
                    bool(cites) and all(resolves(page, h) for h in cites),
                    f"{len(cites)} [n] links",
                ),
                (
                    page,
                    "audit link resolves",
                    bool(audits) and all(resolves(page, h) for h in audits),
                    audits[0] if audits else "no audit link",
                ),
            ]
        elif kind == "audit":
            anchors = [i for i in dom.ids if i.startswith("cite-")]
            checks += [
                (page, "citation anchors", bool(anchors), f"{len(anchors)} #cite-n sections"),
                (page, "links back to the post", bool(dom.hrefs("post-link")), ""),
            ]
    return checks, broken, n_cite


def _code(text: str) -> str:
    """Page text as a markdown code span: result.md shows hostile markup literally, never as HTML."""
    return f"`{text.replace('`', '')}`"


def run(cfg: Config, ctx: RunContext) -> None:
    with tempfile.TemporaryDirectory(prefix="site-check-") as scratch:
        check_site(cfg, ctx, Path(scratch))


def check_site(cfg: Config, ctx: RunContext, scratch: Path) -> None:

    posts: list[PostRecord] = []
    if cfg.site:
        site = Path(cfg.site).expanduser().resolve()
        if not (site / "index.html").is_file():
            raise FileNotFoundError(f"--set site={cfg.site}: {site / 'index.html'} does not exist")
    else:
        site = scratch / "site"
        posts = sample_posts(cfg.corpus, cfg.n_posts, cfg.citations_per_post, cfg.probe)
        written, rewritten = publish_sample(posts, site)
        ctx.metric("posts_published", len(posts), "posts")
        ctx.metric("pages_published", len(written), "files")
        ctx.metric(
            "republish_files_changed", rewritten, "files", False, "files a second publish of job 1 rewrote (must be 0)"
        )
    files = sorted(p for p in site.rglob("*.html") if p.is_file())
    digest = hashlib.sha256(b"".join(p.relative_to(site).as_posix().encode() + b"\0" + p.read_bytes() for p in files))
    ctx.dataset(
        cfg.site or f"sample posts from {cfg.corpus or 'phase12_rag_storage/notes'}",
        n=len(files),
        sha256=digest.hexdigest(),
    )
    index_entries = len(crawl(site, lambda p: p.read_text(encoding="utf-8"), 1)["index.html"].hrefs("post-link"))
    ctx.metric("index_entries", index_entries, "posts", None, "post links on index.html")
    if posts:
        ctx.finding(
            f"Publishing {len(posts)} posts one job at a time, then job 1 again: the index lists "
            f"{index_entries} entries and the repeated publish rewrote {rewritten} file(s)."
        )

    binary = find_chromium(cfg.chromium)
    if binary is None:
        ctx.skip(f"no Chromium found ({cfg.chromium or 'chromium, chromium-browser, google-chrome'}): {INSTALL_HINT}")
    browser = Chromium(binary)
    try:
        ctx.model("chromium", revision=browser.version())
        start = time.perf_counter()
        doms = crawl(site, browser.dump_dom, cfg.max_pages)
        seconds = time.perf_counter() - start
        checks, broken, n_cite = check_pages(site, doms)

        post_pages = [p for p in doms if p.startswith("posts/")]
        shot_page = next(
            (p for p in post_pages if "injection-probe" not in p), post_pages[0] if post_pages else "index.html"
        )
        png = ctx.artifact("post.png")
        shot_bytes = browser.screenshot(site / shot_page, png, cfg.width, cfg.height)
        width, height = png_size(png)
        audit_page = shot_page.replace("posts/", "audit/", 1)
        if shot_page.startswith("posts/") and audit_page in doms:
            browser.screenshot(site / audit_page, ctx.artifact("audit.png"), cfg.width, cfg.height)
    finally:
        browser.close()

    failed = [c for c in checks if not c[2]]
    ctx.metric("pages_checked", len(doms), "pages")
    ctx.metric("citation_links", n_cite, "links", None, "[n] links on post pages, read from the browser's DOM")
    ctx.metric("broken_links", len(broken), "links", False, "links whose page or #anchor does not exist (must be 0)")
    ctx.metric("dom_checks_passed", len(checks) - len(failed), "checks", True)
    ctx.metric("dom_checks_failed", len(failed), "checks", False)
    ctx.metric("script_elements", sum(d.scripts for d in doms.values()), "elements", False)
    ctx.metric("event_handlers", sum(d.handlers for d in doms.values()), "attributes", False)
    ctx.metric("screenshot_bytes", shot_bytes, "bytes")
    ctx.metric(
        "browser_seconds_per_page",
        seconds / max(len(doms), 1),
        "s",
        False,
        "one headless Chromium start + load + DOM dump",
    )
    ctx.table(
        "pages",
        [
            [
                page,
                _code(d.title[:70]),
                len(d.hrefs("cite")),
                len(d.hrefs("audit-link")),
                d.scripts,
                sum(1 for c in checks if c[0] == page and c[2]),
                sum(1 for c in checks if c[0] == page and not c[2]),
            ]
            for page, d in doms.items()
        ],
        ["page", "title (DOM)", "citation links", "audit links", "script elements", "checks passed", "checks failed"],
        title="Every page as headless Chromium built it",
    )
    if failed or broken:
        ctx.table(
            "failures",
            [[p, c, d] for p, c, _, d in failed] + [[p, "broken link", h] for p, h in broken],
            ["page", "check", "detail"],
            title="Failed DOM checks and broken links",
        )
    ctx.finding(
        f"Chromium loaded {len(doms)} pages ({seconds / max(len(doms), 1):.2f} s each): {len(checks) - len(failed)}/"
        f"{len(checks)} DOM checks passed, {n_cite} citation links, {len(broken)} broken link(s); screenshot of "
        f"{shot_page} is {width}x{height} px, {shot_bytes} bytes (post.png; its audit page: audit.png)."
    )

    probe = next((p for p in doms if p.endswith("/injection-probe.html")), None)
    if probe:
        dom = doms[probe]
        shown = HOSTILE in dom.title and HOSTILE in dom.h1
        leaks = sum(PLANTED_KEY in (site / p).read_text(encoding="utf-8") for p in doms)
        ctx.metric(
            "hostile_markup_shown_as_text",
            int(shown),
            "bool",
            True,
            "the probe's <script> title reached the DOM as text (escaped), not as an element",
        )
        ctx.metric("planted_key_leaks", leaks, "pages", False, "pages whose HTML holds the planted API key (must be 0)")
        ctx.finding(
            f"Injection probe: title {_code(dom.title)} in the browser's DOM (text, not markup); the site holds "
            f"{sum(d.scripts for d in doms.values())} script element(s) and {sum(d.handlers for d in doms.values())} "
            f"event handler(s) in total; the planted key appears on {leaks} page(s)."
        )
    ctx.failure_mode(
        "A citation number the Writer invented (no chunk behind it) renders as a red, unlinked [n] and is "
        "listed on the audit page: visible to the reader, never a dead link."
    )
    ctx.failure_mode(
        "Secrets are blanked with lab.results.redact patterns (sk-/hf_ keys, URL passwords); a secret in "
        "another shape (e.g. a Telegram bot token) is not recognised and must never reach the draft."
    )


EXERCISE = Exercise(
    id="phase16.site",
    title="The published site in a real browser: DOM checks and a screenshot in headless Chromium",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}},
    tiny={"n_posts": 1, "citations_per_post": 2},
    summary_metrics=("posts_published", "index_entries", "republish_files_changed"),
    methods={"cpu": "own"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
