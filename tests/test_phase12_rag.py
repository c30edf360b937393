"""Phase 12 RAG: corpus/query loading, chunking, the split-answer query, Retriever, scoring.

Fast tests use a deterministic fake embedder; the exercises run end to end in test_phase12_rag_exercises.py.
"""

import json

import numpy as np
import pytest

from lab.errors import ConfigError
from phase12_rag_storage.chunking import fixed_size_chunks, make_chunker, structure_chunks
from phase12_rag_storage.corpus import Document, Query, load_corpus, load_queries, strip_generated
from phase12_rag_storage.embeddings import ADVERSARIAL, PARAPHRASES, BM25Similarity
from phase12_rag_storage.retrieval_eval import contains_all, score, summarise
from phase12_rag_storage.retriever import Retriever
from phase12_rag_storage.stores import Hit, NumpyStore


class FakeEmbedder:
    """Bag-of-words hashed into 64 dims, normalised: enough for retrieval by shared words."""

    id, dim = "fake", 64

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_shipped_queries_cover_four_categories_with_existing_gold_sources():
    docs = load_corpus()
    queries = load_queries(sources={d.source for d in docs})
    assert len(queries) >= 20
    assert {q.category for q in queries} == {"direct", "paraphrase", "cross-document", "abstract"}
    assert len(docs) == 5 and all(d.source.endswith(".md") for d in docs)


def test_split_answer_query_really_straddles_a_fixed_chunk_boundary():
    """The DPO-vs-PPO answer is cut by 400/50 fixed chunking and whole in a structure chunk."""
    docs = {d.source: d for d in load_corpus()}
    query = next(q for q in load_queries() if q.query.startswith("Why did DPO replace PPO"))
    doc = docs[query.gold_sources[0]]
    fixed = fixed_size_chunks(doc, 400, 50)
    assert len(fixed) >= 2
    assert not any(contains_all(c.text, query.evidence) for c in fixed)
    # each half of the evidence is in some fixed chunk: the source IS retrievable, the answer is split
    for phrase in query.evidence:
        assert any(contains_all(c.text, [phrase]) for c in fixed)
    assert any(contains_all(c.text, query.evidence) for c in structure_chunks(doc, 400))


def test_fixed_chunks_have_the_requested_size_and_overlap():
    doc = Document("d.md", " ".join(f"w{i}" for i in range(1000)))
    chunks = fixed_size_chunks(doc, 400, 50)
    words = [c.text.split() for c in chunks]
    assert [len(w) for w in words] == [400, 400, 300]
    assert words[0][-50:] == words[1][:50]
    assert chunks[1].id == "d.md#1" and chunks[1].source == "d.md"
    with pytest.raises(ValueError, match="overlap"):
        fixed_size_chunks(doc, 50, 50)


def test_structure_chunks_cut_at_headings_and_pack_long_sections_by_paragraph():
    long_section = "\n\n".join(" ".join([f"para{i}"] * 30) for i in range(5))  # 150 words
    doc = Document("d.md", "# Title\nintro line\n\n## A\nalpha text\n\n## B\n" + long_section)
    chunks = structure_chunks(doc, max_words=70)
    assert chunks[0].text.startswith("# Title") and chunks[1].text.startswith("## A")
    assert all(len(c.text.split()) <= 70 for c in chunks)
    assert "para0" in chunks[2].text and "para4" in chunks[-1].text
    with pytest.raises(ValueError, match="unknown chunking"):
        make_chunker("semantic")


def test_corpus_accepts_any_folder_and_rejects_empty_ones(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A\nalpha")
    (tmp_path / "sub" / "b.txt").write_text("beta")
    (tmp_path / "skip.py").write_text("print()")
    (tmp_path / "empty.md").write_text("  \n")
    assert [d.source for d in load_corpus(tmp_path)] == ["a.md", "sub/b.txt"]
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no non-empty"):
        load_corpus(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        load_corpus(tmp_path / "missing")


def test_readme_results_section_is_not_corpus_text():
    text = "lesson\n<!-- lab:results:begin (generated) -->\n| 0.95 |\n<!-- lab:results:end -->\nmore"
    assert strip_generated(text) == "lesson\n\nmore"


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", r"q\.jsonl:2: not valid JSON"),
        (json.dumps({"category": "direct", "gold_sources": ["a.md"]}), r"q\.jsonl:2: field 'query': Field required"),
        (
            json.dumps({"query": "x", "category": "direct", "gold_sources": []}),
            r"q\.jsonl:2: field 'gold_sources': Input should be a non-empty list",
        ),
        (
            json.dumps({"query": "x", "category": "", "gold_sources": ["a.md"]}),
            r"q\.jsonl:2: field 'category': Input should be a non-empty string",
        ),
        (
            json.dumps({"query": "x", "category": "direct", "gold_sources": ["nope.md"]}),
            r"q\.jsonl:2: field 'gold_sources': names \['nope.md'\]",
        ),
        (
            json.dumps({"query": "x", "category": "direct", "gold_sources": ["a.md"], "evidence": "one"}),
            r"q\.jsonl:2: field 'evidence': Input should be a valid list",
        ),
    ],
)
def test_bad_queries_file_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    good = json.dumps({"query": "ok", "category": "direct", "gold_sources": ["a.md"]})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_queries(path, sources={"a.md"})


def test_score_counts_the_share_of_gold_sources_and_evidence_in_one_chunk():
    q = Query("q", "?", "cross-document", ("a.md", "b.md"), evidence=("alpha", "beta"))
    hits = [Hit("a#0", 0.9, "alpha only", {"source": "a.md"}), Hit("c#0", 0.5, "beta", {"source": "c.md"})]
    row = score(q, hits)
    assert row["hit"] == 0.5 and row["top1"] is True and row["evidence_complete"] is False
    row2 = score(q, [Hit("c#0", 0.9, "Alpha\n and beta", {"source": "c.md"})])
    assert row2["top1"] is False and row2["evidence_complete"] is True
    summary = summarise([row, row2])
    assert summary["overall"] == {"n": 2, "hit_rate": 0.25, "top1": 0.5, "evidence_complete": 0.5}


def test_retriever_ingests_retrieves_filters_and_rejects_bad_input():
    emb = FakeEmbedder()
    r = Retriever(make_chunker("structure"), emb, NumpyStore(emb.dim))
    chunks = r.add_documents(
        [
            Document("kv.md", "## KV\nthe kv cache stores keys and values"),
            Document("lora.md", "## LoRA\nlow rank adapters train thin matrices"),
        ]
    )
    assert len(chunks) == 2 and r.store.count() == 2
    assert r.retrieve("which adapters train thin matrices", k=1)[0].metadata["source"] == "lora.md"
    assert r.retrieve("keys and values", k=5, where={"source": "lora.md"})[0].id == "lora.md#0"
    with pytest.raises(ValueError, match="no documents"):
        r.add_documents([])
    with pytest.raises(ValueError, match="'e.md' is empty"):
        r.add_documents([Document("e.md", "  ")])
    with pytest.raises(ValueError, match="64-d vectors but the store NumpyStore was created with dim 384"):
        Retriever(make_chunker("fixed"), emb, NumpyStore(384))
    with pytest.raises(ValueError, match="HyDE needs an LLM"):
        r.retrieve("x", hyde=True)


def test_retriever_hyde_embeds_the_hypothesis_not_the_question():
    class FakeLLM:
        def chat(self, messages, system=None, max_tokens=0, temperature=0.0):
            return type("R", (), {"text": "low rank adapters train thin matrices"})()

    emb = FakeEmbedder()
    r = Retriever(make_chunker("fixed"), emb, NumpyStore(emb.dim), hyde_llm=FakeLLM())
    r.add_documents(["the kv cache stores keys and values", "low rank adapters train thin matrices"])
    assert r.retrieve("kv cache keys values")[0].id == "doc1#0"  # the hypothesis decided
    assert r.retrieve("kv cache keys values", hyde=False)[0].id == "doc0#0"


def test_bm25_pair_similarity_sees_words_not_meaning():

    texts = [t for pair in (*PARAPHRASES.values(), *ADVERSARIAL.values()) for t in pair]
    sim = BM25Similarity(texts)
    assert sim(*PARAPHRASES["hbm"]) == 0.0  # no shared word
    assert sim(*ADVERSARIAL["adapter"]) > 0.1  # shares "adapter"
    assert sim(*PARAPHRASES["lora"]) == pytest.approx(sim(*reversed(PARAPHRASES["lora"])))  # symmetric
    assert sim(texts[0], texts[0]) == pytest.approx(1.0)
