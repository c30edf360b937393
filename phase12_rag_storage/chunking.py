"""Two ways to cut documents into chunks, compared in 12.2.

- ``fixed_size_chunks``: every ``size`` words with ``overlap`` words repeated (the seed's 400/50).
  Blind to meaning: an explanation that straddles a boundary is split and neither half answers.
- ``structure_chunks``: cut at markdown headings, then pack whole paragraphs up to ``max_words``;
  one chunk ≈ one section ≈ one idea. A paragraph longer than ``max_words`` falls back to fixed size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from phase12_rag_storage.corpus import Document


@dataclass(frozen=True)
class Chunk:
    id: str
    source: str
    index: int
    text: str


Chunker = Callable[[Document], list[Chunk]]


def _chunks(doc: Document, texts: list[str]) -> list[Chunk]:
    return [Chunk(f"{doc.source}#{i}", doc.source, i, t) for i, t in enumerate(texts) if t.strip()]


def _windows(words: list[str], size: int, overlap: int) -> list[str]:
    step = size - overlap
    out = []
    for start in range(0, len(words), step):
        out.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
    return out


def fixed_size_chunks(doc: Document, size: int = 400, overlap: int = 50) -> list[Chunk]:
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"fixed-size chunking needs size >= 1 and 0 <= overlap < size, got {size}/{overlap}")
    return _chunks(doc, _windows(doc.text.split(), size, overlap))


_HEADING = re.compile(r"^#{1,6}\s", re.M)


def _sections(text: str) -> list[str]:
    starts = [m.start() for m in _HEADING.finditer(text)]
    bounds = [0] + [s for s in starts if s > 0] + [len(text)]
    return [text[a:b].strip() for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def structure_chunks(doc: Document, max_words: int = 400) -> list[Chunk]:
    if max_words < 1:
        raise ValueError(f"structure chunking needs max_words >= 1, got {max_words}")
    texts: list[str] = []
    for section in _sections(doc.text):
        if len(section.split()) <= max_words:
            texts.append(section)
            continue
        packed: list[str] = []
        for para in (p.strip() for p in re.split(r"\n\s*\n", section) if p.strip()):
            n = len(para.split())
            if n > max_words:  # one huge paragraph: no structure left to use
                texts.extend(filter(None, ["\n\n".join(packed)]))
                texts.extend(_windows(para.split(), max_words, max_words // 8))
                packed = []
            elif packed and len("\n\n".join(packed).split()) + n > max_words:
                texts.append("\n\n".join(packed))
                packed = [para]
            else:
                packed.append(para)
        texts.extend(filter(None, ["\n\n".join(packed)]))
    return _chunks(doc, texts)


def make_chunker(kind: str, size: int = 400, overlap: int = 50) -> Chunker:
    """``fixed`` (size/overlap words) or ``structure`` (headings + paragraphs, at most ``size`` words)."""
    if kind == "fixed":
        return lambda doc: fixed_size_chunks(doc, size, overlap)
    if kind == "structure":
        return lambda doc: structure_chunks(doc, size)
    raise ValueError(f"unknown chunking {kind!r}; choose 'fixed' or 'structure'")
