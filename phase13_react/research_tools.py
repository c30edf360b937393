"""The research agent's tools: search this repo's notes and results, read a chunk, size a KV cache,
read a committed metric, do arithmetic. Each is a plain typed function made a tool with ``@tool``.

    from phase13_react.research_tools import RESEARCH_TOOLS
    box = Toolbox(RESEARCH_TOOLS)       # search_notes, read_chunk, kv_cache_gb, read_result_metric, calculator

Nothing here is new machinery: ``search_notes`` is the Phase 12 retriever (structure chunking +
all-MiniLM-L6-v2 + exact numpy search) over the Phase 12 lesson notes, every phase README (minus its
generated section) and the committed ``results/**/result.md`` of the phases before this one;
``kv_cache_gb`` is Phase 8's formula. The index is built once per process; chunk embeddings are
cached on disk by text hash, so a second process only embeds what changed.

Every tool fails with a message the model can act on (an unknown chunk id lists real ones, an
unknown metric lists the exercise's metrics): ``Toolbox.execute`` turns it into a ``tool_error``
observation, the run goes on.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import json
import math
import operator
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lab.paths import REPO_ROOT, RESULTS_ROOT, cache_dir
from phase08_architecture.kv_cache import gb, kv_cache_bytes
from phase08_architecture.model_configs import load_config
from phase12_rag_storage.chunking import make_chunker
from phase12_rag_storage.corpus import Document, load_corpus
from phase12_rag_storage.retriever import Embedder, Retriever
from phase12_rag_storage.stores import NumpyStore
from phase13_react.tools import tool

# Results of this phase and later ones are not research material for it (they would cite themselves).
LATER_PHASES = ("phase13", "phase14", "phase15", "phase16")
CHUNK_WORDS = 400


# --- the notes index (Phase 12 retriever) ----------------------------------------------------------
def research_documents(results_root: Path = RESULTS_ROOT):
    """Phase 12's corpus (notes + phase READMEs) plus every committed result.md of earlier phases."""

    docs = [
        d
        for d in load_corpus(include_readmes=True)
        if not d.source.startswith(tuple(f"readme:{p}" for p in LATER_PHASES))
    ]
    for path in sorted(results_root.glob("*/*/*/result.md")):
        rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        if rel.parts[-4] not in LATER_PHASES:
            docs.append(Document(str(rel), path.read_text(encoding="utf-8")))
    return docs


class CachedEmbedder:
    """An ``Embedder`` whose vectors are kept on disk by sha256 of the text (same model, same vector)."""

    def __init__(self, embedder, path: Path):

        self.inner, self.path, self.id, self.dim = embedder, path, embedder.id, embedder.dim
        self._cache: dict[str, Any] = {}
        if path.exists():
            with np.load(path) as data:
                self._cache = {k: data[k] for k in data.files}

    def encode(self, texts):

        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in self._cache}.items())
        if missing:
            vectors = self.inner.encode([t for _, t in missing])
            self._cache.update({k: v for (k, _), v in zip(missing, vectors)})
            tmp = self.path.with_suffix(f".{threading.get_ident()}.tmp.npz")
            np.savez(tmp, **self._cache)
            tmp.replace(self.path)  # atomic: a parallel process sees the old file or the new one
        return np.stack([self._cache[k] for k in keys]).astype(np.float32)


@dataclass
class NotesIndex:
    """Chunks by id plus the retriever that searches them."""

    retriever: Any
    chunks: dict[str, Any]

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        return [
            {"chunk_id": h.id, "source": h.metadata.get("source"), "score": round(h.score, 3), "text": h.text[:300]}
            for h in self.retriever.retrieve(query, k=k)
        ]

    def read(self, chunk_id: str) -> str:
        chunk = self.chunks.get(chunk_id)
        if chunk is None:
            close = difflib.get_close_matches(chunk_id, list(self.chunks), n=3, cutoff=0.5)
            raise KeyError(
                f"no chunk {chunk_id!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "; use an id that search_notes returned")
            )
        return chunk.text


def build_index(docs=None) -> NotesIndex:
    """Chunk, embed and store ``docs`` (default: ``research_documents()``)."""

    embedder = Embedder()
    folder = cache_dir() / "phase13"
    folder.mkdir(parents=True, exist_ok=True)
    cached = CachedEmbedder(embedder, folder / f"chunk-embeddings-{embedder.id}.npz")
    retriever = Retriever(make_chunker("structure", size=CHUNK_WORDS), cached, NumpyStore(embedder.dim))
    chunks = retriever.add_documents(docs if docs is not None else research_documents())
    return NotesIndex(retriever, {c.id: c for c in chunks})


_INDEX_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _default_index() -> NotesIndex:
    return build_index()


def notes_index() -> NotesIndex:
    """The default index, built on first use and kept for the life of the process."""
    with _INDEX_LOCK:
        return _default_index()


# --- the tools --------------------------------------------------------------------------------------
@tool(timeout_s=120)
def search_notes(query: str, k: int = 3) -> list[dict]:
    """Search this repo's lesson notes, phase READMEs and committed result reports; returns chunk ids,
    their source file and the start of their text (read the whole chunk with read_chunk)."""
    if not 1 <= k <= 10:
        raise ValueError(f"k must be between 1 and 10, got {k}")
    return notes_index().search(query, k)


@tool(timeout_s=120)
def read_chunk(chunk_id: str) -> str:
    """The full text of one chunk, by the id search_notes returned (e.g. results/phase08/kv_cache/cpu/result.md#2)."""
    return notes_index().read(chunk_id)


@tool
def kv_cache_gb(context: int, batch: int = 1, model: str = "llama-3.1-8b", dtype: str = "bfloat16") -> float:
    """KV-cache size in decimal GB for a model (llama-3.1-8b, llama-3.1-70b, gpt2-124m, mixtral-8x7b)
    holding `batch` sequences of `context` tokens each."""

    return round(gb(kv_cache_bytes(load_config(model), context, batch, dtype)), 4)


def result_path(exercise: str, profile: str = "cpu", results_root: Path = RESULTS_ROOT) -> Path:
    """``phase08.kv_cache`` → ``results/phase08/kv_cache/<profile>/result.json``."""
    group, _, name = exercise.partition(".")
    path = results_root / group / name / profile / "result.json"
    if not name or not path.is_file():
        known = sorted(f"{p.parts[-4]}.{p.parts[-3]}" for p in results_root.glob(f"*/*/{profile}/result.json"))
        close = difflib.get_close_matches(exercise, known, n=3, cutoff=0.4)
        raise ValueError(
            f"no committed {profile} result for exercise {exercise!r}"
            + (f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}")
        )
    return path


def metric_value(exercise: str, metric: str, profile: str = "cpu", results_root: Path = RESULTS_ROOT) -> dict:
    """One metric of a committed result: value, unit, and the file it was read from."""
    path = result_path(exercise, profile, results_root)
    metrics = json.loads(path.read_text())["metrics"]
    if metric not in metrics:
        close = difflib.get_close_matches(metric, list(metrics), n=5, cutoff=0.3)
        raise ValueError(
            f"{exercise} ({profile}) has no metric {metric!r}; "
            f"{'closest' if close else 'some'}: {', '.join(close or list(metrics)[:8])}"
        )
    entry = metrics[metric]
    rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return {
        "exercise": exercise,
        "metric": metric,
        "value": entry["value"],
        "unit": entry.get("unit", ""),
        "source": str(rel),
    }


@tool
def read_result_metric(exercise: str, metric: str, profile: str = "cpu") -> dict:
    """Read one metric from this repo's committed results (results/<phase>/<name>/<profile>/result.json),
    e.g. exercise phase08.kv_cache, metric kv_cache_gb."""
    return metric_value(exercise, metric, profile)


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "sqrt": math.sqrt,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "exp": math.exp,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000


def safe_eval(expression: str) -> float:
    """Arithmetic over numbers, + - * / // % **, parentheses and a few math functions — walked node by
    node over the parsed tree (no ``eval``: a model's text never runs as code)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right} is too large (limit {MAX_EXPONENT})")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return _FUNCTIONS[node.func.id](*(walk(a) for a in node.args))
        raise ValueError(
            f"{ast.unparse(node)!r} is not allowed: use numbers, + - * / // % ** ( ) and {', '.join(_FUNCTIONS)}"
        )

    try:
        value = walk(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"the result is not a finite real number ({value})")
    return value


@tool
def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression such as (17.2 - 4.3) / 4.3 * 100 (numbers, + - * / ** and sqrt, log, min, max, round)."""
    return safe_eval(expression)


RESEARCH_TOOLS = (search_notes, read_chunk, kv_cache_gb, read_result_metric, calculator)
