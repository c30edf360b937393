"""12.5 — RAG evaluation with RAGAS: scores that look past hit rate, judged by a local model.

The 12.2 pipeline (fixed 400/50 chunks, top-k, the same answer prompt) answers each query; RAGAS 0.4.3
then scores every (question, retrieved contexts, answer, reference answer) sample with four metrics:
faithfulness (are the answer's claims supported by the contexts), answer relevancy (does the answer
address the question: questions generated back from the answer, compared by embedding), context
precision (are the useful chunks ranked first) and context recall (do the contexts cover the
reference). Run twice: the judge samples at temperature 0.3 for answer relevancy, so that metric
moves between runs; the others decode greedily here.

Adapters: ``LabRagasLLM`` puts ``lab.llm`` behind ragas' ``BaseRagasLLM`` (the legacy ``evaluate()``
path); ``SentenceTransformerEmbeddings`` puts the local MiniLM behind ``BaseRagasEmbeddings``. A 135M
judge often cannot emit the JSON ragas' prompts demand: those samples score NaN, and this exercise
reports per metric how many samples were scored vs failed instead of averaging over the survivors
silently. The seed's judge was GPT-4o-mini: use ``--llm`` with a hosted model for comparable numbers.
"""

from __future__ import annotations

import math
import os
from statistics import mean

from lab import Exercise, ExerciseConfig, Reference, RunContext
from phase12_rag_storage.corpus import corpus_sha256, load_corpus, load_queries

FIX_FORMAT_INSTRUCTION = "The output string did not satisfy the constraints given in the prompt."
METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")


class Config(ExerciseConfig):
    corpus: str | None = None
    queries: str | None = None
    query_ids: list[str] = []  # [] = every query that has a gold_answer
    embedder: str = "all-minilm-l6-v2"
    chunking: str = "fixed"
    k: int = 5  # contexts per sample
    answer_max_tokens: int = 80
    judge_max_tokens: int = 256  # per ragas prompt; JSON cut off here fails to parse (counted)
    judge_fix_format: bool = True  # let ragas ask the judge to repair malformed JSON (up to 3 extra calls)
    strictness: int = 3  # questions generated per answer for answer relevancy
    runs: int = 2
    timeout_s: int = 600  # per ragas job
    llm: str | None = None  # generator AND judge (the seed used Claude Haiku / GPT-4o-mini)


def ragas_adapters(llm, embedder, max_tokens: int, fix_format: bool = True):
    """(ragas LLM, ragas embeddings) around lab.llm and a sentence-transformers model.

    ``fix_format=False`` answers ragas' "fix your malformed JSON" retry prompt with an empty reply
    instead of calling the judge: for a 135M judge those retries (up to 3 per prompt) only cost time.
    """
    from langchain_core.outputs import Generation, LLMResult
    from ragas.embeddings.base import BaseRagasEmbeddings
    from ragas.llms.base import BaseRagasLLM

    class LabRagasLLM(BaseRagasLLM):
        calls = 0
        skipped_fixes = 0
        replies: list[tuple[str, str]] = []  # (prompt's first line, reply) for the report

        def generate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None):
            text = prompt.to_string()
            if not fix_format and text.lstrip().startswith(FIX_FORMAT_INSTRUCTION):
                LabRagasLLM.skipped_fixes += 1  # an empty reply fails to parse: the score becomes NaN
                return LLMResult(generations=[[Generation(text="") for _ in range(n)]])
            gens = []
            for _ in range(n):
                LabRagasLLM.calls += 1
                reply = llm.chat([{"role": "user", "content": text}], max_tokens=max_tokens,
                                 temperature=temperature if temperature and temperature > 0.05 else 0.0)
                LabRagasLLM.replies.append((text.strip().splitlines()[0][:90], reply.text))
                gens.append(Generation(text=reply.text))
            return LLMResult(generations=[gens])

        async def agenerate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None):
            return self.generate_text(prompt, n, temperature or 0.01, stop, callbacks)  # one local model: serial

        def is_finished(self, response) -> bool:
            return True  # a truncated reply fails JSON parsing and is counted as a failed score

    class SentenceTransformerEmbeddings(BaseRagasEmbeddings):
        def embed_query(self, text: str) -> list[float]:
            return embedder.encode([text])[0].tolist()

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.encode(texts).tolist()

        async def aembed_query(self, text: str) -> list[float]:
            return self.embed_query(text)

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.embed_documents(texts)

    return LabRagasLLM(), SentenceTransformerEmbeddings()


def score_once(samples: list[dict], ragas_llm, ragas_emb, cfg: Config) -> list[dict[str, float | None]]:
    """One ragas evaluate() pass; per-sample scores with None where ragas produced NaN."""
    from ragas import EvaluationDataset, evaluate
    from ragas.metrics import (AnswerRelevancy, Faithfulness, LLMContextPrecisionWithReference,
                               LLMContextRecall)
    from ragas.run_config import RunConfig

    metrics = [Faithfulness(), AnswerRelevancy(strictness=cfg.strictness), LLMContextPrecisionWithReference(),
               LLMContextRecall()]
    result = evaluate(EvaluationDataset.from_list(samples), metrics=metrics, llm=ragas_llm, embeddings=ragas_emb,
                      run_config=RunConfig(timeout=cfg.timeout_s, max_retries=1, max_workers=1, seed=cfg.seed),
                      raise_exceptions=False, show_progress=False)
    frame = result.to_pandas()
    names = {"faithfulness": "faithfulness", "answer_relevancy": "answer_relevancy",
             "context_precision": "llm_context_precision_with_reference", "context_recall": "context_recall"}
    out = []
    for _, row in frame.iterrows():
        values = {}
        for ours, col in names.items():
            v = row.get(col)
            values[ours] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        out.append(values)
    return out


def run(cfg: Config, ctx: RunContext) -> None:
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    import logging

    logging.getLogger("ragas").setLevel(logging.CRITICAL)  # parse failures are counted, not printed
    from lab.llm import from_spec
    from phase12_rag_storage.rag_from_scratch import answer, build_retriever
    from phase12_rag_storage.retrieval_eval import score
    from phase12_rag_storage.retriever import Embedder

    docs = load_corpus(cfg.corpus)
    queries = [q for q in load_queries(cfg.queries, {d.source for d in docs})
               if q.gold_answer and (not cfg.query_ids or q.id in cfg.query_ids)]
    if not queries:
        raise ValueError("no query with a gold_answer matched query_ids: RAGAS context recall needs reference answers")
    ctx.dataset(cfg.corpus or "phase12_rag_storage/notes", n=len(docs), sha256=corpus_sha256(docs))
    embedder = Embedder(cfg.embedder)
    ctx.model(cfg.embedder, dim=embedder.dim)
    llm = from_spec(cfg.llm)
    ctx.model(**llm.describe())
    retriever = build_retriever(cfg.chunking, embedder, docs)  # the 12.2 baseline: 400/50

    samples, retrieval = [], []
    for q in ctx.progress(queries, "answering"):
        hits = retriever.retrieve(q.query, k=cfg.k)
        retrieval.append(score(q, hits))
        samples.append({"user_input": q.query, "retrieved_contexts": [h.text for h in hits],
                        "response": answer(llm, q.query, hits, cfg.answer_max_tokens), "reference": q.gold_answer})

    ragas_llm, ragas_emb = ragas_adapters(llm, embedder, cfg.judge_max_tokens, cfg.judge_fix_format)
    runs = []
    for i in range(cfg.runs):
        ctx.log(f"ragas run {i + 1}/{cfg.runs}")
        runs.append(score_once(samples, ragas_llm, ragas_emb, cfg))
    judge = type(ragas_llm)
    ctx.metric("judge_llm_calls", judge.calls, "calls", None, "ragas prompts sent to the judge, all runs")
    ctx.metric("judge_replies_with_json", sum(_has_json(r) for _, r in judge.replies), "replies", True,
               f"of {judge.calls}: replies holding a parseable JSON value (ragas also checks its schema)")
    if not cfg.judge_fix_format:
        ctx.finding(f"judge_fix_format=false: {judge.skipped_fixes} ragas 'fix the output format' retries were "
                    "answered empty instead of costing a judge call each.")
    ctx.table("judge_replies", [[p, " ".join(r.split())[:300]] for p, r in judge.replies[:12]],
              ["ragas prompt (first line)", "judge reply (first 300 chars)"],
              title="What the judge actually wrote (first 12 calls)")

    # --- per metric: mean over scored samples, how many scored vs failed, run-to-run change -------
    rows = []
    for m in METRICS:
        means = []
        for i, run_scores in enumerate(runs):
            got = [s[m] for s in run_scores if s[m] is not None]
            means.append(mean(got) if got else None)
            ctx.metric(f"{m}_run{i + 1}", means[-1], "score", True)
            ctx.metric(f"{m}_run{i + 1}_scored", len(got), "samples", True, f"of {len(samples)}; the rest were NaN")
        both = [v for v in means if v is not None]
        spread = max(both) - min(both) if len(both) > 1 else None
        ctx.metric(f"{m}_run_spread", spread, "score", False, "max - min of the run means")
        rows.append([m] + means + [f"{sum(s[m] is not None for s in r)}/{len(samples)}" for r in runs] + [spread])
    ctx.table("ragas", rows, ["metric"] + [f"run {i + 1}" for i in range(cfg.runs)]
              + [f"scored run {i + 1}" for i in range(cfg.runs)] + ["run spread"],
              title=f"RAGAS 0.4.3 metrics, judge {llm.spec}, {len(samples)} samples (mean over scored samples)")

    per_sample = []
    for j, (q, r, s) in enumerate(zip(queries, retrieval, samples)):
        per_sample.append([q.id, r["hit"], r["evidence_complete"]] + [runs[0][j][m] for m in METRICS]
                          + [" ".join(s["response"].split())[:200]])
        f, a = runs[0][j]["faithfulness"], runs[0][j]["answer_relevancy"]
        if r["hit"] == 1 and a is not None and a < 0.2 and (f is None or f >= 0.8):
            ctx.finding(f"{q.id}: hit rate 1.0, faithfulness {f if f is None else round(f, 3)}, answer relevancy "
                        f"{a:.3f} — the chunking-failure signature (right source, useless answer); evidence in one "
                        f"chunk: {r['evidence_complete']}.")
    ctx.table("per_sample", per_sample, ["id", "hit", "evidence in one chunk"] + list(METRICS) + ["answer (first 200 chars)"],
              title="Run 1 per sample (— = ragas could not parse the judge's reply)")
    scored = sum(s[m] is not None for r in runs for s in r for m in METRICS)
    total = len(runs) * len(samples) * len(METRICS)
    ctx.metric("scored_fraction", scored / total, "fraction", True, "sample x metric x run cells that got a score")
    ctx.finding(f"{scored} of {total} (sample, metric, run) cells produced a score with judge {llm.spec}; the rest "
                f"failed ragas' structured-output parsing (NaN) and are excluded from the means above.")
    if scored == 0:
        ctx.failure_mode(f"{llm.spec} never produced output ragas could parse: no RAGAS score is meaningful here")
        ctx.skip(f"RAGAS ran ({judge.calls} judge calls, {cfg.runs} run(s)) but judge {llm.spec} produced no reply "
                 f"ragas could parse: 0/{total} scores; rerun with --llm naming a capable judge")


def _has_json(text: str) -> bool:
    import json

    from ragas.prompt.utils import extract_json

    try:
        json.loads(extract_json(text))
        return True
    except (ValueError, TypeError):
        return False


REFS = [("faithfulness_run1", 0.979), ("faithfulness_run2", 0.958), ("answer_relevancy_run1", 0.552),
        ("answer_relevancy_run2", 0.722), ("context_precision_run1", 0.911), ("context_precision_run2", 0.911),
        ("context_recall_run1", 0.950), ("context_recall_run2", 0.950), ("answer_relevancy_run_spread", 0.170)]

_RAGAS_METHOD = ("substitute: ragas' non-LLM context metrics and a constrained judge's faithfulness/relevancy in place of "
                 "RAGAS's LLM metrics judged by GPT-4o-mini")
EXERCISE = Exercise(
    id="phase12.ragas_eval",
    title="RAG evaluation with RAGAS, run twice",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"query_ids": ["q04"], "k": 2, "strictness": 1, "judge_max_tokens": 160,
                "judge_fix_format": False},
        "a100": {"embedder": "sentence-transformers/all-mpnet-base-v2", "llm": "local:meta-llama/Llama-3.1-8B-Instruct",
                 "answer_max_tokens": 256, "judge_max_tokens": 1024},
    },
    tiny={"query_ids": ["q04"], "k": 1, "strictness": 1, "judge_max_tokens": 16, "answer_max_tokens": 8, "runs": 1,
          "judge_fix_format": False},
    references=tuple(Reference(m, v, "score", "seed: GPT-4o-mini judge, 10 queries") for m, v in REFS),
    summary_metrics=("faithfulness_run1", "answer_relevancy_run1", "scored_fraction"),
    methods={"cpu": _RAGAS_METHOD, "a100": _RAGAS_METHOD},
)

if __name__ == "__main__":
    EXERCISE.main()
