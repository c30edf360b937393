"""12.1 — Embeddings from first principles: what "similar" means to a model, measured on probes.

Four probes over curriculum vocabulary:
- within-group similarity: sentences about one concept (e.g. FlashAttention) should be close;
- cross-group separation ratio: within-group similarity / cross-group similarity (the seed found
  ~2x: retrieval works but admits noise; ~5x would be clean);
- paraphrase pairs: different words, same meaning — should be HIGH (the seed's decisive probe:
  "HBM round trips" vs "memory access overhead");
- adversarial pairs: the same term in a different meaning — should be LOW.

Dense models are compared with a lexical baseline: BM25 (rank-bm25), with the pair similarity
symmetrised and self-normalised, s(a,b) = ½(bm25(a→b)/bm25(b→b) + bm25(b→a)/bm25(a→a)). It sees only
shared words: a paraphrase scores ~0, an adversarial pair sharing its term scores high. The same
comparison is repeated as retrieval on the 12.2 query set. A model that cannot be loaded here
(MPNet offline) is recorded as skipped with the reason.
"""

from __future__ import annotations

import itertools
import re
from statistics import mean

import numpy as np
from rank_bm25 import BM25Okapi

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.models import DEFAULT_EMBEDDER
from phase12_rag_storage.chunking import fixed_size_chunks
from phase12_rag_storage.corpus import load_corpus, load_queries
from phase12_rag_storage.optional_models import load_or_reason
from phase12_rag_storage.retrieval_eval import evaluate, summarise
from phase12_rag_storage.retriever import Embedder
from phase12_rag_storage.stores import Hit, NumpyStore

GROUPS = {
    "flash_attention": [
        "FlashAttention tiles the attention computation so the score matrix never makes a round trip through HBM.",
        "Fusing softmax and the matmuls into one kernel keeps attention blocks in on-chip SRAM.",
        "IO-aware attention is faster because it reads and writes far fewer bytes of GPU memory.",
        "The attention kernel recomputes scores in the backward pass instead of storing the full matrix.",
    ],
    "distributed_training": [
        "Data parallelism gives every GPU a full copy of the model and splits the batch between them.",
        "Tensor parallelism shards each weight matrix across devices and all-reduces the partial results.",
        "Pipeline parallelism places consecutive layers on different GPUs and streams micro-batches through them.",
        "ZeRO partitions optimiser states and gradients across workers to cut per-GPU memory.",
    ],
    "kv_cache": [
        "The KV cache stores keys and values of earlier tokens so they are not recomputed at each step.",
        "Cache size is two times layers times KV heads times head dimension times tokens times bytes.",
        "Grouped-query attention shrinks the cache because several query heads share one key/value head.",
        "At a 128K context the cache of one sequence can exceed the memory of the weights.",
    ],
    "preference_tuning": [
        "DPO trains the policy directly on chosen and rejected responses without a reward model.",
        "The reward model is trained with a Bradley-Terry loss on pairs of preferred and dispreferred answers.",
        "PPO-based RLHF optimises the policy against a learned reward with a KL penalty to a reference model.",
        "Preference data records which of two responses annotators liked better.",
    ],
}
SEPARATION_PAIR = ("flash_attention", "distributed_training")  # the seed's ratio
PARAPHRASES = {
    "hbm": ("HBM round trips", "memory access overhead"),
    "lora": (
        "LoRA trains a low-rank update while the base weights stay frozen",
        "only two thin matrices are learned and the pretrained model is left untouched",
    ),
    "memory_bound": (
        "decoding is memory-bandwidth bound",
        "generating each token waits on reading the weights from GPU memory",
    ),
    "judge": ("calibrate the LLM judge against human scores", "check that the grading model agrees with people"),
    "chunking": ("split documents at headings and paragraphs", "cut the text where the sections naturally end"),
}
ADVERSARIAL = {
    "paper_title": (
        "Attention Is All You Need",
        "FlashAttention tiles the attention computation so the score matrix never makes a round trip through HBM.",
    ),
    "attention_everyday": (
        "multi-head attention projects queries, keys and values per head",
        "please pay attention to the safety instructions at the head of the queue",
    ),
    "adapter": ("attach a LoRA adapter to the attention projections", "plug the power adapter into the wall socket"),
    "token": ("the tokenizer splits text into subword tokens", "the API token expired so the request was rejected"),
    "reward": (
        "the reward model scores responses for the policy",
        "the loyalty programme reward gives customers a discount",
    ),
}
LEXICAL = "bm25"


class Config(ExerciseConfig):
    models: list[str] = [DEFAULT_EMBEDDER, LEXICAL]  # embedder ids and/or "bm25"
    retrieval: bool = True  # also compare the models as retrievers on the 12.2 query set
    corpus: str | None = None
    queries: str | None = None
    k: int = 5


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25Similarity:
    """Lexical pair similarity; idf from the probe sentences themselves (rank-bm25's Okapi)."""

    def __init__(self, corpus: list[str]):

        self.texts = list(dict.fromkeys(corpus))
        self.bm25 = BM25Okapi([tokens(t) for t in self.texts])

    def _score(self, query: str, doc: str) -> float:
        return float(self.bm25.get_scores(tokens(query))[self.texts.index(doc)])

    def __call__(self, a: str, b: str) -> float:
        parts = []
        for q, d in ((a, b), (b, a)):
            self_score = self._score(d, d)
            parts.append(self._score(q, d) / self_score if self_score > 0 else 0.0)
        return mean(parts)


def similarity_fn(model_id: str, probe_texts: list[str], ctx: RunContext):
    """A pair-similarity function for the model, or (None, reason) when it cannot be loaded."""
    if model_id == LEXICAL:
        return BM25Similarity(probe_texts), None

    embedder, reason = load_or_reason(model_id, Embedder)
    if embedder is None:
        return None, reason
    ctx.model(model_id, dim=embedder.dim, n_params=sum(p.numel() for p in embedder.model.parameters()))
    vectors = dict(zip(probe_texts, embedder.encode(probe_texts)))
    return (lambda a, b: float(vectors[a] @ vectors[b])), embedder


def probe(sim) -> dict:
    within = {g: mean(sim(a, b) for a, b in itertools.combinations(s, 2)) for g, s in GROUPS.items()}
    cross = {
        (g, h): mean(sim(a, b) for a in GROUPS[g] for b in GROUPS[h]) for g, h in itertools.combinations(GROUPS, 2)
    }
    fa, dt = SEPARATION_PAIR
    return {
        "within": within,
        "cross_mean": mean(cross.values()),
        "separation_overall": mean(within.values()) / mean(cross.values()),
        "separation_fa_vs_dist": mean([within[fa], within[dt]]) / cross[(fa, dt)],
        "paraphrase": {k: sim(a, b) for k, (a, b) in PARAPHRASES.items()},
        "adversarial": {k: sim(a, b) for k, (a, b) in ADVERSARIAL.items()},
    }


def short(model_id: str) -> str:
    name = model_id.split("/")[-1].lower()
    return "minilm" if "minilm" in name else "mpnet" if "mpnet" in name else re.sub(r"[^a-z0-9]+", "_", name)


def bm25_search(chunks):
    """Lexical retrieval over chunks, returning stores.Hit like the vector stores do."""

    bm25 = BM25Okapi([tokens(c.text) for c in chunks])

    def search(query: str, k: int):
        scores = bm25.get_scores(tokens(query))
        top = np.argsort(-scores, kind="stable")[:k]
        return [Hit(chunks[i].id, float(scores[i]), chunks[i].text, {"source": chunks[i].source}) for i in top]

    return search


def run(cfg: Config, ctx: RunContext) -> None:
    probe_texts = list(
        dict.fromkeys(
            [t for s in GROUPS.values() for t in s]
            + [t for p in (*PARAPHRASES.values(), *ADVERSARIAL.values()) for t in p]
        )
    )
    results, embedders = {}, {}
    for model_id in cfg.models:
        sim, loaded = similarity_fn(model_id, probe_texts, ctx)
        if sim is None:
            ctx.finding(f"{model_id}: skipped — {loaded}")
            ctx.failure_mode(f"{model_id} could not be loaded here: {loaded}")
            continue
        if model_id != LEXICAL:
            embedders[model_id] = loaded
        results[model_id] = r = probe(sim)
        key = short(model_id)
        ctx.metric(f"{key}_within_flash_attention", r["within"]["flash_attention"], "cosine", True)
        ctx.metric(f"{key}_paraphrase_hbm", r["paraphrase"]["hbm"], "cosine", True)
        ctx.metric(f"{key}_adversarial_paper_title", r["adversarial"]["paper_title"], "cosine", False)
        ctx.metric(f"{key}_separation_fa_vs_dist", r["separation_fa_vs_dist"], "x", True)
        ctx.metric(f"{key}_separation_overall", r["separation_overall"], "x", True)
        ctx.metric(f"{key}_paraphrase_mean", mean(r["paraphrase"].values()), "cosine", True)
        ctx.metric(f"{key}_adversarial_mean", mean(r["adversarial"].values()), "cosine", False)
    if not results:
        ctx.skip("no model in `models` could be loaded here")

    names = list(results)
    cols = ["probe"] + names
    rows = [[f"within: {g}"] + [results[m]["within"][g] for m in names] for g in GROUPS]
    rows += [["cross-group mean"] + [results[m]["cross_mean"] for m in names]]
    rows += [["separation ratio, all groups"] + [results[m]["separation_overall"] for m in names]]
    rows += [["separation ratio, FA vs distributed"] + [results[m]["separation_fa_vs_dist"] for m in names]]
    rows += [[f"paraphrase: {k}"] + [results[m]["paraphrase"][k] for m in names] for k in PARAPHRASES]
    rows += [[f"adversarial: {k}"] + [results[m]["adversarial"][k] for m in names] for k in ADVERSARIAL]
    ctx.table("probes", rows, cols, title="Similarity probes (BM25: symmetrised, self-normalised score)")
    ctx.table(
        "pairs",
        [[k, "paraphrase", a, b] for k, (a, b) in PARAPHRASES.items()]
        + [[k, "adversarial", a, b] for k, (a, b) in ADVERSARIAL.items()],
        ["pair", "kind", "a", "b"],
        title="The probe pairs",
    )
    for m in names:
        r = results[m]
        gap = mean(r["paraphrase"].values()) - mean(r["adversarial"].values())
        ctx.finding(
            f"{m} on the probe pairs: separation ratio {r['separation_overall']:.2f}x over {len(GROUPS)} groups "
            f"({r['separation_fa_vs_dist']:.2f}x FA vs distributed training); paraphrase mean "
            f"{mean(r['paraphrase'].values()):.3f} vs adversarial mean {mean(r['adversarial'].values()):.3f} "
            f"(gap {gap:+.3f}: it scores paraphrases {'above' if gap > 0 else 'below'} same-word pairs of "
            "different meaning). A pair probe is not retrieval: see the retrieval table for that."
        )

    if cfg.retrieval:
        retrieval_comparison(cfg, ctx, embedders, LEXICAL in results)


def retrieval_comparison(cfg: Config, ctx: RunContext, embedders: dict, with_bm25: bool) -> None:
    """The same models as retrievers over 12.2's fixed-size chunks and query set."""

    docs = load_corpus(cfg.corpus)
    queries = load_queries(cfg.queries, {d.source for d in docs})
    chunks = [c for d in docs for c in fixed_size_chunks(d)]
    searchers = {}
    if with_bm25:
        bm25 = bm25_search(chunks)
        searchers[LEXICAL] = lambda q: bm25(q.query, cfg.k)
    for model_id, emb in embedders.items():
        store = NumpyStore(emb.dim)
        store.insert(
            [c.id for c in chunks],
            emb.encode([c.text for c in chunks]),
            [c.text for c in chunks],
            [{"source": c.source} for c in chunks],
        )
        searchers[model_id] = lambda q, s=store, e=emb: s.search(e.encode([q.query])[0], k=cfg.k)
    summaries = {m: summarise(evaluate(queries, fn)) for m, fn in searchers.items()}
    cats = list(next(iter(summaries.values())))
    rows = [
        [cat] + [v for m in summaries for v in (summaries[m][cat]["hit_rate"], summaries[m][cat]["top1"])]
        for cat in cats
    ]
    cols = ["category"] + [f"{h} ({m})" for m in summaries for h in ("hit rate", "top-1")]
    ctx.table(
        "retrieval",
        rows,
        cols,
        title=f"As retrievers: {len(chunks)} fixed 400/50 chunks, {len(queries)} queries, top-{cfg.k}",
    )
    for m, s in summaries.items():
        ctx.metric(f"{short(m)}_retrieval_top1_paraphrase", s.get("paraphrase", s["overall"])["top1"], "fraction", True)
        ctx.metric(f"{short(m)}_retrieval_top1", s["overall"]["top1"], "fraction", True)
        ctx.metric(f"{short(m)}_retrieval_hit_rate", s["overall"]["hit_rate"], "fraction", True)
    ctx.finding(retrieval_finding(summaries, len(queries), cfg.k))


def retrieval_finding(summaries: dict[str, dict], n_queries: int, k: int) -> str:
    """What the retrieval table shows, overall and per category: who leads on hit rate and top-1."""

    def leader(key: str, cat: str) -> str:
        values = {m: s[cat][key] for m, s in summaries.items() if cat in s}
        best = max(values.values())
        top = [m for m, v in values.items() if v == best]
        return "tie" if len(top) == len(values) > 1 else ", ".join(top)

    overall = "; ".join(
        f"{m}: hit rate {s['overall']['hit_rate']:.2f}, top-1 {s['overall']['top1']:.2f}" for m, s in summaries.items()
    )
    cats = [c for c in next(iter(summaries.values())) if c != "overall"]
    per_cat = "; ".join(f"{c} top-1 leader: {leader('top1', c)}" for c in cats)
    text = (
        f"As retrievers over {n_queries} queries (top-{k}) — {overall}. Overall hit-rate leader: "
        f"{leader('hit_rate', 'overall')}; top-1 leader: {leader('top1', 'overall')}. By category: {per_cat}."
    )
    dense = {m: s["overall"] for m, s in summaries.items() if m != LEXICAL}
    if LEXICAL in summaries and dense:
        lex = summaries[LEXICAL]["overall"]
        behind = [m for m, d in dense.items() if (d["hit_rate"], d["top1"]) > (lex["hit_rate"], lex["top1"])]
        text += (
            f" BM25 is not behind {', '.join(m for m in dense if m not in behind)} on this query set: its low "
            "paraphrase-probe scores did not make it a weak retriever here."
            if len(behind) < len(dense)
            else f" BM25 trails {', '.join(behind)} on this query set."
        )
    return text


REFS = [
    ("minilm_within_flash_attention", 0.430),
    ("mpnet_within_flash_attention", 0.420),
    ("minilm_paraphrase_hbm", 0.510),
    ("mpnet_paraphrase_hbm", 0.653),
    ("minilm_adversarial_paper_title", 0.124),
    ("mpnet_adversarial_paper_title", 0.374),
    ("minilm_separation_fa_vs_dist", 2.0),
    ("mpnet_separation_fa_vs_dist", 1.9),
]

EXERCISE = Exercise(
    id="phase12.embeddings",
    title="Embeddings from first principles: similarity probes, dense vs lexical",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"models": [DEFAULT_EMBEDDER, LEXICAL, "sentence-transformers/all-mpnet-base-v2"]},
        "a100": {"models": [DEFAULT_EMBEDDER, "sentence-transformers/all-mpnet-base-v2", LEXICAL]},
    },
    tiny={"models": [DEFAULT_EMBEDDER, LEXICAL, "sentence-transformers/all-mpnet-base-v2"]},
    smoke={},  # MPNet is reported missing offline, as on the cpu profile
    references=tuple(
        Reference(
            m,
            v,
            "x" if "separation" in m else "cosine",
            "seed: own Phase 1-11 sentences; ours: this file's probe sentences",
        )
        for m, v in REFS
    ),
    summary_metrics=("minilm_paraphrase_hbm", "minilm_separation_fa_vs_dist", "bm25_paraphrase_mean"),
    methods={"cpu": "scaled", "a100": "same"},  # cpu: MPNet is not available offline
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
