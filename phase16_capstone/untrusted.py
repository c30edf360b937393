"""The one door untrusted text comes in through: corpus chunks and Telegram/API input.

Anything the engine did not write itself — a chunk of a corpus folder someone else controls, the
text of a Telegram message, a topic POSTed to the API — passes through ``admit`` before a model
reads it. Keeping this a single function is the point: the Phase 15 prompt-injection defence
(spotlighting, the instruction hierarchy, output checks) is wired in HERE, once, and every stage
inherits it. ``TOPIC`` and ``EVIDENCE`` name the two kinds of untrusted text the stages pass.

``admit`` refuses non-strings and text that is not valid Unicode (a lone UTF-16 surrogate: JSON's
``"\\ud800"`` parses, but no UTF-8 database, log or page can hold it), drops control characters (a NUL
or an escape sequence in a chunk has no business in a prompt or a page), collapses runs of whitespace
and caps the length. What it returns is what the store keeps and the stages read. The Phase 15 defence
(``phase15_production.defence``) then acts at the two places where untrusted text meets the model
and the world:

- ``spotlight`` — the prompt-time view of admitted evidence: delimited by a block with a random id
  and datamarked (Hines et al. 2024), read under a system prompt carrying the instruction hierarchy
  and a leak canary (``system_prompt``). This only *asks* the model to treat it as data.
- ``check_output`` — before a post is published and before a chat reply is sent: no link, image or
  address the topic did not hold, no encoded payload, no system-prompt canary, no text copied from an
  instruction found in the evidence. This does not depend on the model at all, so it also holds
  against Phase 15's ``ObedientAdversary`` (a worst case that obeys every instruction it reads).
  A post passes ``check_post``: first the allow-list of markup a post may hold (``post_markup``),
  which catches what a deny-list of known-bad tags misses (``<svg onload=...>``), then this check.

What leaves for the public site goes out through this module too: ``excerpt`` is all of a chunk an
audit page shows — a bounded excerpt in which every sentence the Phase 15 defence reads as an
instruction is replaced by a visible marker, so the audit page never republishes the instructions an
attacker planted (the post itself cannot repeat them: the output check refuses that).

The capabilities-by-stage and provenance layers have nothing to act on here: no engine stage gives
the model a tool — publishing and replying are the engine's code, run after the output check.
One ``Defence`` per job, seeded by the job id, so every worker that touches the job (a resumed one
too) plants and checks the same canary.
"""

from __future__ import annotations

import hashlib
import re

from phase15_production.defence import Defence, Verdict, instruction_sentences, quoted, sentences
from phase16_capstone.post_markup import disallowed

TOPIC = "topic"  # a user's request: Telegram message text, POST /jobs, the CLI
EVIDENCE = "evidence"  # a corpus chunk the Researcher retrieved
MAX_CHARS = {TOPIC: 300, EVIDENCE: 2000}

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
EXCERPT_CHARS = 480  # of a chunk, on an audit page
_SPACES = re.compile(r"[ \t]+")


# the layers that apply to an engine without model-held tools (see the module docstring)
ENGINE_LAYERS = ("spotlight", "hierarchy", "output")


class UntrustedInputError(ValueError):
    """The text cannot be admitted at all (not a string, not valid Unicode, empty once cleaned); names the source."""


def valid_unicode(text: str) -> bool:
    """False when ``text`` holds a lone UTF-16 surrogate (JSON's ``"\\ud800"`` parses to one; no UTF-8
    database, log or page can hold it)."""
    return not _SURROGATE.search(text)


def admit(text: object, kind: str, source: str) -> str:
    """Clean ``text`` of kind TOPIC or EVIDENCE coming from ``source`` (e.g. ``telegram:chat:42``,
    ``corpus:notes.md#3``) and return what the stages may put in a prompt."""
    if kind not in MAX_CHARS:
        raise ValueError(f"unknown kind of untrusted text {kind!r}: expected {TOPIC!r} or {EVIDENCE!r}")
    if not isinstance(text, str):
        raise UntrustedInputError(f"{source}: {kind} must be text, got {type(text).__name__}")
    if not valid_unicode(text):
        raise UntrustedInputError(f"{source}: {kind} is not valid Unicode (it holds a lone UTF-16 surrogate)")
    cleaned = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    if not cleaned:
        raise UntrustedInputError(f"{source}: {kind} is empty")
    return cleaned[: MAX_CHARS[kind]].rstrip()


def defence_for(job_id: str):
    """The job's ``Defence`` (same marks, block ids and canary in every worker that runs the job)."""

    return Defence(ENGINE_LAYERS, seed=int(hashlib.sha256(job_id.encode()).hexdigest()[:16], 16))


def spotlight(text: str, source: str, defence) -> str:
    """Admitted evidence as a prompt shows it: delimited and datamarked."""
    return defence.wrap_untrusted(text, source=source)


def unmark(text: str, defence) -> str:
    """A model's reply with any datamark it copied from a spotlighted block turned back into spaces."""
    return text.replace(defence.mark, " ")


def check_output(text: str, topic: str, evidence: list[str], defence, trusted=()):
    """The Phase 15 output check on text about to leave the engine (a post, a chat reply):
    a ``Verdict`` whose ``reason`` says what was refused. ``trusted``: text the engine wrote itself."""
    return defence.check_output(text, topic, trusted=list(trusted), untrusted=evidence)


def check_post(text: str, topic: str, evidence: list[str], defence):
    """A post about to be published: only allowed markup (``post_markup``), then ``check_output``."""

    found = disallowed(text)
    if found:
        return Verdict(False, "output", f"the post holds {found}; a post may hold only the markup the site allows")
    return check_output(text, topic, evidence, defence)


def instruction_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every sentence of ``text`` that the Phase 15 defence reads as an instruction:
    one with a directive verb in imperative position or a cue ("ignore previous..."), looked for
    through every encoding (``instruction_sentences``), or one with a directive verb anywhere and a
    quoted payload — exactly the text the output check refuses to see repeated."""

    spans, cursor = [], 0
    for sentence in sentences(text):
        start = text.index(sentence, cursor)
        cursor = start + len(sentence)
        loose = instruction_sentences(sentence, strict=False)
        if instruction_sentences(sentence) or any(quoted(s) for s in loose):
            spans.append((start, cursor))
    return spans


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> list[tuple[str, bool]]:
    """What an audit page may show of an untrusted chunk: ``(piece, redacted)`` pairs in order, each
    sentence ``instruction_spans`` finds as ``("", True)`` (the page marks the place), the text
    around them cut after ``limit`` characters at a word boundary, with "…"."""
    pieces: list[tuple[str, bool]] = []
    budget, pos = limit, 0
    for start, end in [*instruction_spans(text), (len(text), len(text))]:
        plain = text[pos:start]
        if len(plain) > budget:
            pieces.append((plain[:budget].rsplit(" ", 1)[0] + " …", False))
            return pieces
        if plain.strip():
            pieces.append((plain, False))
            budget -= len(plain)
        if start < end:
            pieces.append(("", True))
        pos = end
    return pieces
