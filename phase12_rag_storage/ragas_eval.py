"""12.5 — RAG evaluation with RAGAS: scores that look past hit rate, on every query, offline.

The 12.2 pipeline (fixed 400/50 chunks, top-k, the same answer prompt) answers every query that has
a gold answer. Each sample is then scored five ways:

- **context precision / recall** (RAGAS ``IDBasedContextPrecision`` / ``IDBasedContextRecall``): the
  reference contexts are the chunks of the query's gold sources that hold one of its evidence phrases
  (the passages the gold answer is written from). Precision = retrieved chunks that are reference
  chunks / retrieved; recall = reference chunks retrieved / reference chunks. No LLM is involved. (RAGAS's
  string-similarity variants compare the same chunk texts but need rapidfuzz, not installed here;
  retrieved and reference contexts come from one chunker, so comparing their ids is the exact form.)
- **semantic similarity** (RAGAS ``SemanticSimilarity``) of the answer to the gold answer, cosine
  on the embedded MiniLM;
- **faithfulness** and **answer relevancy** from ``rag_judge.YesNoJudge``: RAGAS's definitions asked as
  yes/no questions with constrained replies (choice probabilities for a local model, a strict JSON
  verdict for a hosted one). A reply that cannot be parsed fails that question and is counted per
  metric; the metric is averaged over what was judged, with the failure count beside it.

Controls keep the judge honest: faithfulness of the same sentences against another query's contexts,
and relevancy of another query's answer to this question. The gap between metric and control is
what the judge can tell apart.

The seed's judge was GPT-4o-mini with RAGAS's LLM metrics, run twice to show sampling variance.
This judge decodes deterministically, so a second run would reproduce the first exactly: one run.
"""

from __future__ import annotations

import math
import os
import warnings
from statistics import mean

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.llm import from_spec
from lab.models import DEFAULT_EMBEDDER
from phase12_rag_storage.corpus import corpus_sha256, load_corpus, load_queries
from phase12_rag_storage.rag_from_scratch import answer, build_retriever
from phase12_rag_storage.rag_judge import YesNoJudge
from phase12_rag_storage.retrieval_eval import contains_all, score
from phase12_rag_storage.retriever import Embedder

METRICS = ("context_precision", "context_recall", "semantic_similarity", "faithfulness", "answer_relevancy")
JUDGED = ("faithfulness", "answer_relevancy")


class Config(ExerciseConfig):
    corpus: str | None = None
    queries: str | None = None
    query_ids: list[str] = []  # [] = every query that has a gold_answer
    embedder: str = DEFAULT_EMBEDDER
    chunking: str = "fixed"
    k: int = 5  # contexts per sample (the seed's top-5)
    answer_max_tokens: int = 80
    judge_max_tokens: int = 24  # JSON judges: {"verdict": ...} fits; a cut-off reply fails (counted)
    llm: str | None = None  # generator; default --llm / LAB_LLM / the embedded SmolLM2
    judge_llm: str | None = None  # judge; default: the generator's spec


def ragas_embeddings(embedder):
    """The local MiniLM behind RAGAS's modern embedding interface (``BaseRagasEmbedding``)."""
    from ragas.embeddings.base import BaseRagasEmbedding  # noqa: PLC0415 (heavy: ragas loads on first use)

    class LocalEmbedding(BaseRagasEmbedding):
        def embed_text(self, text: str, **kwargs) -> list[float]:
            return embedder.encode([text])[0].tolist()

        async def aembed_text(self, text: str, **kwargs) -> list[float]:
            return self.embed_text(text)

    return LocalEmbedding()


def reference_chunk_ids(query, chunks) -> list[str]:
    """Chunks of the query's gold sources holding at least one of its evidence phrases."""

    return [
        c.id
        for c in chunks
        if c.source in query.gold_sources and any(contains_all(c.text, [phrase]) for phrase in query.evidence)
    ]


def ragas_scores(sample: dict, similarity) -> dict[str, float | None]:
    """The three RAGAS metrics that need no LLM, for one sample (None where RAGAS returns NaN)."""
    from ragas.dataset_schema import SingleTurnSample  # noqa: PLC0415 (heavy: ragas loads on first use)
    from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall  # noqa: PLC0415 (heavy: ragas loads on first use)

    ids = SingleTurnSample(retrieved_context_ids=sample["retrieved_ids"], reference_context_ids=sample["reference_ids"])
    values = {
        "context_precision": IDBasedContextPrecision().single_turn_score(ids),
        "context_recall": IDBasedContextRecall().single_turn_score(ids),
        "semantic_similarity": similarity.score(reference=sample["reference"], response=sample["response"]).value,
    }
    return {k: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for k, v in values.items()}


def run(cfg: Config, ctx: RunContext) -> None:
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ragas")
    from ragas.metrics.collections import SemanticSimilarity  # noqa: PLC0415 (heavy: ragas loads on first use)

    docs = load_corpus(cfg.corpus)
    queries = [
        q
        for q in load_queries(cfg.queries, {d.source for d in docs})
        if q.gold_answer and (not cfg.query_ids or q.id in cfg.query_ids)
    ]
    if not queries:
        raise ValueError("no query with a gold_answer matched query_ids: the reference metrics need gold answers")
    ctx.dataset(cfg.corpus or "phase12_rag_storage/notes", n=len(docs), sha256=corpus_sha256(docs))
    ctx.dataset(
        cfg.queries or "phase12_rag_storage/data/queries.jsonl",
        n=len(queries),
        sha256=None,
        selection="every query with a gold answer" if not cfg.query_ids else f"ids {cfg.query_ids}",
    )
    embedder = Embedder(cfg.embedder)
    ctx.model(cfg.embedder, dim=embedder.dim, role="retrieval + semantic similarity")
    llm = from_spec(cfg.llm)
    ctx.model(**llm.describe(), role="generator")
    judge_llm = llm if cfg.judge_llm in (None, cfg.llm) else from_spec(cfg.judge_llm)
    if judge_llm is not llm:
        ctx.model(**judge_llm.describe(), role="judge")
    judge = YesNoJudge(judge_llm, cfg.judge_max_tokens)
    retriever = build_retriever(cfg.chunking, embedder, docs)  # the 12.2 baseline: 400/50

    samples, retrieval = [], []
    for q in ctx.progress(queries, "answering"):
        hits = retriever.retrieve(q.query, k=cfg.k)
        retrieval.append(score(q, hits))
        samples.append(
            {
                "id": q.id,
                "question": q.query,
                "contexts": [h.text for h in hits],
                "retrieved_ids": [h.id for h in hits],
                "reference_ids": reference_chunk_ids(q, retriever.chunks),
                "response": answer(llm, q.query, hits, cfg.answer_max_tokens),
                "reference": q.gold_answer,
            }
        )

    similarity = SemanticSimilarity(embeddings=ragas_embeddings(embedder))
    scores = [ragas_scores(s, similarity) for s in samples]
    judged, controls = [], []
    for i, s in enumerate(ctx.progress(samples, f"judging ({judge.method})")):
        other = samples[(i + 1) % len(samples)]  # a different query: what the judge must reject
        judged.append(
            {
                "faithfulness": judge.faithfulness(s["response"], s["contexts"]),
                "answer_relevancy": judge.relevancy(s["question"], s["response"]),
            }
        )
        controls.append(
            {
                "faithfulness": judge.faithfulness(s["response"], other["contexts"]),
                "answer_relevancy": judge.relevancy(s["question"], other["response"]),
            }
        )
    for sc, j in zip(scores, judged):
        sc.update({m: j[m].value for m in JUDGED})
    report(cfg, ctx, queries, samples, retrieval, scores, judged, controls, judge)


def report(cfg, ctx, queries, samples, retrieval, scores, judged, controls, judge) -> None:
    n = len(samples)
    rows = []
    for m in METRICS:
        got = [s[m] for s in scores if s[m] is not None]
        value = mean(got) if got else None
        ctx.metric(m, value, "score", True, f"mean over the {len(got)} of {n} samples that got a score")
        ctx.metric(f"{m}_scored", len(got), "samples", True, f"of {n}")
        control, failed = None, None
        if m in JUDGED:
            ctl = [c[m].value for c in controls if c[m].value is not None]
            control = mean(ctl) if ctl else None
            failed = sum(j[m].failed for j in judged)
            asked = failed + sum(j[m].judged for j in judged)
            ctx.metric(f"{m}_control", control, "score", None, "the same judge on a mismatched pair (must be lower)")
            ctx.metric(
                f"{m}_unparsed",
                failed,
                "questions",
                False,
                f"of {asked} judge questions: replies that could not be parsed (failures, excluded from the mean)",
            )
        rows.append(
            [
                m,
                value,
                f"{len(got)}/{n}",
                failed,
                control,
                None if value is None or control is None else value - control,
            ]
        )
    ctx.table(
        "scores",
        rows,
        ["metric", "mean", "samples scored", "judge replies unparsed", "control (mismatched)", "metric - control"],
        title=f"RAGAS metrics over {n} queries (top-{cfg.k} {cfg.chunking} chunks; judge {judge.llm.spec}, "
        f"{judge.method})",
    )

    per_sample = []
    for q, r, s, sc, j in zip(queries, retrieval, samples, scores, judged):
        per_sample.append(
            [
                q.id,
                q.category,
                r["hit"],
                r["evidence_complete"],
                len(s["reference_ids"]),
                *[sc[m] for m in METRICS],
                j["faithfulness"].detail["statements"],
                " ".join(s["response"].split())[:200],
            ]
        )
    ctx.table(
        "per_sample",
        per_sample,
        [
            "id",
            "category",
            "hit",
            "evidence in one chunk",
            "reference chunks",
            *METRICS,
            "statements",
            "answer (first 200 chars)",
        ],
        title="Per query (— = no score: nothing to judge or the judge's reply did not parse)",
    )
    findings(cfg, ctx, queries, retrieval, scores, judged, controls, judge)


def findings(cfg, ctx, queries, retrieval, scores, judged, controls, judge) -> None:
    m = ctx.metrics
    ctx.finding(
        f"Every one of {len(queries)} queries was scored offline: context precision {_f(m['context_precision'])}, "
        f"context recall {_f(m['context_recall'])}, semantic similarity to the gold answer "
        f"{_f(m['semantic_similarity'])} (RAGAS, no LLM); faithfulness {_f(m['faithfulness'])} and answer relevancy "
        f"{_f(m['answer_relevancy'])} from {judge.llm.spec} ({judge.method})."
    )
    for metric in JUDGED:
        value, control = m[metric]["value"], m[f"{metric}_control"]["value"]
        if value is not None and control is not None:
            verdict = (
                "it separates real from mismatched pairs"
                if value - control >= 0.2
                else "it barely separates real from mismatched pairs: read the score as the judge's limit"
            )
            ctx.finding(
                f"{metric}: {value:.3f} on the real pairs vs {control:.3f} on mismatched ones "
                f"(gap {value - control:+.3f}): {verdict}. Unparsed replies: {m[f'{metric}_unparsed']['value']}."
            )
    for q, r, sc in zip(queries, retrieval, scores):
        f, a = sc["faithfulness"], sc["answer_relevancy"]
        if r["hit"] == 1 and a is not None and a < 0.2 and (f is None or f >= 0.8):
            ctx.finding(
                f"{q.id}: hit rate 1.0, faithfulness {_n(f)}, answer relevancy {a:.3f} — the chunking-failure "
                f"signature (right source, useless answer); evidence in one chunk: {r['evidence_complete']}."
            )
    seed_run1, seed_run2 = EXERCISE.seed("answer_relevancy"), SEED_RUN2["answer_relevancy"]
    ctx.finding(
        f"The seed ran RAGAS twice and saw answer relevancy move {seed_run1} -> {seed_run2} from its judge's "
        "sampling; this judge decodes deterministically, so run-to-run spread is zero by construction and is "
        "not reported."
    )


def _f(metric: dict) -> str:
    return "n/a" if metric["value"] is None else f"{metric['value']:.3f}"


def _n(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# the seed's two RAGAS runs (GPT-4o-mini judge, 10 queries); run 1 is the reference row
SEED_RUN2 = {"faithfulness": 0.958, "answer_relevancy": 0.722, "context_precision": 0.911, "context_recall": 0.950}
REFS = [("faithfulness", 0.979), ("answer_relevancy", 0.552), ("context_precision", 0.911), ("context_recall", 0.950)]
_RAGAS_METHOD = (
    "substitute: RAGAS's id-based context metrics and a constrained yes/no judge in place of RAGAS's LLM "
    "metrics judged by GPT-4o-mini"
)

EXERCISE = Exercise(
    id="phase12.ragas_eval",
    title="RAG evaluation with RAGAS, offline, every query",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},
        "a100": {
            "embedder": "sentence-transformers/all-mpnet-base-v2",
            "llm": "local:meta-llama/Llama-3.1-8B-Instruct",
            "answer_max_tokens": 256,
        },
    },
    tiny={"query_ids": ["q04", "q01"], "k": 1, "answer_max_tokens": 8},
    smoke={"embedder": DEFAULT_EMBEDDER, "query_ids": ["q04"], "k": 1, "answer_max_tokens": 8},
    references=tuple(
        Reference(m, v, "score", f"seed run 1 of 2 (run 2: {SEED_RUN2[m]}), GPT-4o-mini RAGAS LLM metric, 10 queries")
        for m, v in REFS
    ),
    summary_metrics=("context_recall", "semantic_similarity", "faithfulness", "answer_relevancy"),
    methods={"cpu": _RAGAS_METHOD, "a100": _RAGAS_METHOD},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
