"""The one door untrusted text comes in through: corpus chunks and Telegram/API input.

Anything the engine did not write itself — a chunk of a corpus folder someone else controls, the
text of a Telegram message, a topic POSTed to the API — passes through ``admit`` before a model
reads it. Keeping this a single function is the point: the Phase 15 prompt-injection defence
(spotlighting, the instruction hierarchy, output checks) is wired in HERE, once, and every stage
inherits it. ``TOPIC`` and ``EVIDENCE`` name the two kinds of untrusted text the stages pass.

What it does today: refuses non-strings, drops control characters (a NUL or an escape sequence in a
chunk has no business in a prompt or a page), collapses runs of whitespace and caps the length.
"""

from __future__ import annotations

import re

TOPIC = "topic"  # a user's request: Telegram message text, POST /jobs, the CLI
EVIDENCE = "evidence"  # a corpus chunk the Researcher retrieved
MAX_CHARS = {TOPIC: 300, EVIDENCE: 2000}

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]+")


class UntrustedInputError(ValueError):
    """The text cannot be admitted at all (not a string, empty once cleaned); names the source."""


def admit(text: object, kind: str, source: str) -> str:
    """Clean ``text`` of kind TOPIC or EVIDENCE coming from ``source`` (e.g. ``telegram:chat:42``,
    ``corpus:notes.md#3``) and return what the stages may put in a prompt."""
    if kind not in MAX_CHARS:
        raise ValueError(f"unknown kind of untrusted text {kind!r}: expected {TOPIC!r} or {EVIDENCE!r}")
    if not isinstance(text, str):
        raise UntrustedInputError(f"{source}: {kind} must be text, got {type(text).__name__}")
    cleaned = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    if not cleaned:
        raise UntrustedInputError(f"{source}: {kind} is empty")
    return cleaned[:MAX_CHARS[kind]].rstrip()
