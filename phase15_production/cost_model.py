"""15.2 — What an agent run costs: measured tokens from traces × a price, per agent, per run, per 1,000 runs.

A content run here is three Phase 13 agents in a row, each traced (``phase15_production.telemetry``):
a **researcher** that searches the course notes with Phase 12's retriever, a **writer** that turns its
notes into a short post, an **editor** that checks and tightens the draft. Their ``chat`` spans carry
the measured token counts; ``phase15_production.cost`` prices the same spans several ways:

- hosted list prices (``lab.llm.prices``, dated ``PRICES_AS_OF``) for several models — as if each had
  served these exact calls. The token counts are those of the model that ran (the embedded SmolLM2's
  tokenizer by default); a hosted model's tokenizer would count the same text somewhat differently.
- self-hosted: ``$/GPU-hour ÷ tokens/s``, the seed's A100 at $1.50/h. The tokens/s are measured by
  this run against the model it runs (a prefill rate and a decode rate, single stream): in-process on
  the cpu profile, through the served model on the a100 profile (vLLM or ``lab serve`` on this
  machine's GPU, found or started by ``phase13_react.served``) — or given in the config
  (``decode_tokens_per_s`` / ``prefill_tokens_per_s``) — and the method label says which. Only the
  seed's model measured on a GPU is "same"; a CPU's rate priced at an A100's hourly rate is not an
  A100 cost: it is the lesson's arithmetic on numbers measured here, labelled as such.

Then: cost per run and per 1,000 runs for each price, and which agent dominates and *why* (more
calls, longer prompts or longer replies — computed from its share against the others).
``--set traces=PATH`` prices any span store instead (e.g. the capstone's runs) without running agents.
"""

from __future__ import annotations

import re
import secrets
from contextlib import ExitStack
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from rank_bm25 import BM25Okapi

from lab import Exercise, ExerciseConfig, RunContext
from lab.errors import ConfigError
from lab.llm.server import LOOPBACK
from lab.models import DEFAULT_EMBEDDER, DEFAULT_LLM
from phase12_rag_storage.chunking import make_chunker
from phase12_rag_storage.corpus import load_corpus
from phase12_rag_storage.embeddings import tokens
from phase12_rag_storage.rag_from_scratch import build_retriever
from phase12_rag_storage.retriever import Embedder
from phase13_react.served import A100_LLM, A100_MODEL, agent_llm
from phase13_react.tools import Toolbox, tool
from phase15_production.cost import PRICES_AS_OF, SelfHosted, cost_by_agent, hosted_price, hosted_pricer, run_cost
from phase15_production.telemetry import RUN_ID, SpanStore, configure_tracing, run_span, traced_agent

TOPICS = [
    "why retrieval chunking matters",
    "what the KV cache costs at long context",
    "when LoRA is enough for fine-tuning",
]
DEFAULT_MODELS = ["claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o-mini", "gpt-4o"]
AGENTS = ("researcher", "writer", "editor")


class Config(ExerciseConfig):
    runs: int = 2  # content runs performed (topics taken in turn)
    topics: list[str] = TOPICS
    max_steps: int = 3
    max_tokens: int = 96
    traces: str | None = None  # price this span store (JSONL) instead of running agents
    hosted_models: list[str] = DEFAULT_MODELS
    gpu_usd_per_hour: float = 1.50  # the seed's A100 rate
    decode_tokens_per_s: float | None = None  # None: measure the model this run uses, where it runs
    prefill_tokens_per_s: float | None = None  # None: measured with the decode rate
    retrieval: Literal["dense", "bm25"] = "dense"  # the researcher's notes search (phase 12)
    embedder: str = DEFAULT_EMBEDDER
    llm: str | None = None  # lab.llm spec; default $LAB_LLM or the embedded chat model


def make_search(retrieval: str, embedder_name: str):
    """The researcher's search over the course notes with Phase 12's pieces: the dense retriever
    (structure-aware chunks, ``embedder``) or, with ``retrieval=bm25``, Okapi BM25 over the same chunks
    (no model to load)."""

    docs = load_corpus()
    if retrieval == "dense":
        retriever = build_retriever("structure", Embedder(embedder_name), docs)
        return lambda query: [h.text for h in retriever.retrieve(query, k=3)]

    chunks = [c.text for d in docs for c in make_chunker("structure")(d)]
    bm25 = BM25Okapi([tokens(c) for c in chunks])
    return lambda query: [chunks[i] for i in bm25.get_scores(tokens(query)).argsort()[::-1][:3]]


def make_toolboxes(retrieval: str, embedder_name: str):
    """The three agents' tools: a notes search for the researcher; text checks for writer and editor."""

    search = make_search(retrieval, embedder_name)

    @tool(timeout_s=30)
    def search_notes(query: str) -> list[str]:
        """Search the course notes; returns the three most relevant passages."""
        return [" ".join(text.split())[:300] for text in search(query)]

    @tool(timeout_s=5)
    def word_count(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    @tool(timeout_s=5)
    def find_jargon(text: str) -> list[str]:
        """List the acronyms and jargon in a text that a general reader may not know."""
        return sorted(
            {w.strip(".,;:()") for w in text.split() if re.fullmatch(r"[A-Z]{2,}[a-z]?s?", w.strip(".,;:()"))}
        )

    return {
        "researcher": Toolbox([search_notes]),
        "writer": Toolbox([word_count]),
        "editor": Toolbox([word_count, find_jargon]),
    }


def _result_text(run) -> str:
    """An agent's answer, or what it gathered when it stopped without one (so the next agent has input)."""
    if run.answer:
        return run.answer
    seen = [o["content"] for s in run.steps for o in s.observations if o["outcome"] == "ok"]
    return "\n".join(seen[-2:]) or (run.steps[-1].model_text if run.steps else "")


def content_run(llm, topic: str, toolboxes, run_id: str, max_steps: int, max_tokens: int) -> dict:
    """researcher → writer → editor on one topic, one traced run; returns each agent's AgentRun."""

    loop = dict(tool_choice="required", max_steps=max_steps, max_tokens=max_tokens)
    with run_span("content-engine", run_id):
        research = traced_agent(
            llm,
            f"Research the topic: {topic}. Search the notes, then give three key facts as the final answer.",
            toolboxes["researcher"],
            agent="researcher",
            **loop,
        )
        draft = traced_agent(
            llm,
            f"Write a short post (about 100 words) on: {topic}. Use these notes:\n"
            f"{_result_text(research)}\nGive the post as the final answer.",
            toolboxes["writer"],
            agent="writer",
            **loop,
        )
        edited = traced_agent(
            llm,
            f"Edit this draft for a general reader: explain jargon, keep it short. Draft:\n"
            f"{_result_text(draft)}\nGive the edited post as the final answer.",
            toolboxes["editor"],
            agent="editor",
            **loop,
        )
    return {"researcher": research, "writer": draft, "editor": edited}


def measure_rates(llm) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of ``llm`` as this run reaches it (in-process, or through
    its server), single stream: the rates of the model and machine being priced."""
    llm.chat([{"role": "user", "content": "Hi"}], max_tokens=2)  # load and warm up
    long_prompt = " ".join(f"Fact {i}: the cache grows with context." for i in range(40))
    prefill = llm.chat([{"role": "user", "content": long_prompt}], max_tokens=1)
    prefill_rate = prefill.usage.input_tokens / prefill.latency_s
    decode = llm.chat([{"role": "user", "content": "Count from 1 to 60, separated by spaces."}], max_tokens=48)
    decode_s = max(decode.latency_s - decode.usage.input_tokens / prefill_rate, 1e-6)
    return prefill_rate, decode.usage.output_tokens / decode_s


def device_of(served) -> str:
    """Where the measured model runs: this machine's GPU or CPU for an in-process model or a loopback
    server, else the remote server (its hardware is not known from here)."""

    if served.base_url and urlsplit(served.base_url).hostname not in LOOPBACK:
        return f"the server at {served.base_url}"
    try:
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "this CPU"
    except ImportError:
        return "this CPU"


def rates_method(served, device: str) -> str:
    """ "same" only for the seed's kind of model measured on a GPU; otherwise what was measured instead."""

    if served.runs(A100_MODEL) and device != "this CPU" and not device.startswith("the server at"):
        return "same"
    return f"substitute: tokens/s measured on {device} ({served.model}) priced at the A100 $/h"


def metric_name(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")


def run(cfg: Config, ctx: RunContext) -> None:
    """Agents run (or spans are read) and rates are measured against one model: its server, found or
    started, lives for the whole run; with spans and rates both given, no model is needed."""

    for model in cfg.hosted_models:
        hosted_pricer(model)  # an unlisted model fails before any model loads or server starts, naming the table
    with ExitStack() as stack:
        llm_served = None
        if not cfg.traces or cfg.decode_tokens_per_s is None:
            llm_served = stack.enter_context(agent_llm(ctx, cfg.llm, labels_method=False))
        price_runs(cfg, ctx, llm_served)


def price_runs(cfg: Config, ctx: RunContext, llm_served) -> None:

    # --- 1. spans: from a run of our own, or any span store ------------------------------------------------
    if cfg.traces:
        path = Path(cfg.traces)
        if not path.is_file():
            raise ConfigError(
                f"traces={cfg.traces}: no such span store (a JSONL file from phase15_production.telemetry)"
            )
        spans = SpanStore(path).records()
        ctx.dataset(str(path), n=len(spans), sha256=None, kind="span store")
    else:
        llm = llm_served[0]
        if cfg.retrieval == "dense":
            ctx.model(cfg.embedder, role="researcher's retrieval (phase 12)")
        path = ctx.artifact("spans.jsonl")
        toolboxes = make_toolboxes(cfg.retrieval, cfg.embedder)
        with configure_tracing(store=path):
            for i in ctx.progress(range(cfg.runs), "content runs"):
                content_run(
                    llm,
                    cfg.topics[i % len(cfg.topics)],
                    toolboxes,
                    f"content-{secrets.token_hex(4)}-{i}",
                    cfg.max_steps,
                    cfg.max_tokens,
                )
        spans = SpanStore(path).records()
    run_ids = sorted({s["attributes"][RUN_ID] for s in spans if s["attributes"].get(RUN_ID)})
    if not run_ids:
        raise ConfigError(f"{path}: no traced runs in it (spans need a lab.run.id; see phase15_production.telemetry)")
    n_runs = len(run_ids)
    ctx.metric("runs_traced", n_runs, "runs")

    # --- 2. the price schemes -------------------------------------------------------------------------------
    if cfg.decode_tokens_per_s is None:
        llm, served = llm_served
        prefill_rate, decode_rate = measure_rates(llm)
        device = device_of(served)
        basis = f"measured on {device}, {served.model} via {served.server}, single stream"
        ctx.set_method(rates_method(served, device), f"self-hosted rates {basis}")
    else:
        prefill_rate, decode_rate = cfg.prefill_tokens_per_s, cfg.decode_tokens_per_s
        basis = "given in the config, not measured by this run"
        ctx.set_method("substitute: self-hosted tokens/s given in the config", f"self-hosted rates {basis}")
    ctx.metric("decode_tokens_per_s", decode_rate, "tokens/s", True, basis)
    if prefill_rate:
        ctx.metric("prefill_tokens_per_s", prefill_rate, "tokens/s", True, basis)
    gpu = SelfHosted("self_hosted", cfg.gpu_usd_per_hour, decode_rate, prefill_rate, basis)
    schemes = {m: hosted_pricer(m) for m in cfg.hosted_models}
    schemes["self_hosted"] = gpu.pricer()
    descriptions = {
        m: "${:.2f} / ${:.2f} per Mtok (list, {})".format(*hosted_price(m), PRICES_AS_OF) for m in cfg.hosted_models
    }
    descriptions["self_hosted"] = (
        f"${cfg.gpu_usd_per_hour:.2f}/GPU-h ÷ {decode_rate:,.1f} tok/s decode"
        + (f", {prefill_rate:,.0f} tok/s prefill" if prefill_rate else "")
        + f" ({basis})"
    )

    # --- 3. per agent and per run -----------------------------------------------------------------------------
    by_scheme = {name: cost_by_agent(spans, pricer) for name, pricer in schemes.items()}
    tokens = next(iter(by_scheme.values()))
    agents = [a for a in AGENTS if a in tokens] + sorted(a for a in tokens if a not in AGENTS)
    calls = sum(r["calls"] for r in tokens.values())
    ctx.metric("llm_calls_per_run", calls / n_runs, "calls")
    ctx.metric("input_tokens_per_run", sum(r["input"] for r in tokens.values()) / n_runs, "tokens")
    ctx.metric("output_tokens_per_run", sum(r["output"] for r in tokens.values()) / n_runs, "tokens")
    projection = []
    for name, pricer in schemes.items():
        per_run = run_cost(spans, pricer)
        total = sum(per_run.values())
        ctx.metric(f"cost_per_run_usd_{metric_name(name)}", total / n_runs, "USD", False)
        ctx.metric(f"cost_per_1000_runs_usd_{metric_name(name)}", 1000 * total / n_runs, "USD", False)
        projection.append(
            [
                name,
                total / n_runs,
                1000 * total / n_runs,
                min(per_run.values()),
                max(per_run.values()),
                descriptions[name],
            ]
        )
    ctx.table(
        "projection",
        projection,
        ["price", "USD per run (mean)", "USD per 1,000 runs", "cheapest run", "dearest run", "basis"],
        title=f"Cost per content run and per 1,000 runs ({n_runs} traced run(s))",
    )
    rows = []
    for agent in agents:
        t = tokens[agent]
        rows.append(
            [agent, t["calls"] / n_runs, t["input"] / n_runs, t["output"] / n_runs]
            + [by_scheme[name][agent]["cost"] / n_runs for name in schemes]
        )
    ctx.table(
        "by_agent",
        rows,
        ["agent", "calls/run", "input tok/run", "output tok/run"] + [f"USD/run {name}" for name in schemes],
        title="Cost per agent per run, by price",
    )

    # --- 4. which agent dominates, and why (computed) ---------------------------------------------------------
    tops = {}
    for name in schemes:
        costs = {a: by_scheme[name][a]["cost"] for a in agents}
        total = sum(costs.values())
        top = max(costs, key=costs.get)
        tops[name] = (top, costs[top] / total if total else 0.0)
    reference = cfg.hosted_models[0] if cfg.hosted_models else "self_hosted"
    top, share = tops[reference]
    ctx.metric("dominant_agent_cost_share", share, "fraction", None, f"{top}'s share of run cost at {reference} prices")
    t, n_agents = tokens[top], len(agents)
    mean_in = sum(r["input"] for r in tokens.values()) / calls
    mean_out = sum(r["output"] for r in tokens.values()) / calls
    drivers = {
        "more model calls (steps) than the others": (t["calls"] / calls) * n_agents,
        "longer prompts per call": (t["input"] / t["calls"]) / mean_in if mean_in else 0.0,
        "longer replies per call": (t["output"] / t["calls"]) / mean_out if mean_out else 0.0,
    }
    driver = max(drivers, key=drivers.get)
    in_price, out_price = hosted_price(reference) if reference in cfg.hosted_models else (None, None)
    input_share = (
        t["input"] * in_price / (t["input"] * in_price + t["output"] * out_price)
        if in_price is not None and t["input"] + t["output"]
        else None
    )
    ctx.finding(
        f"{top} dominates at {reference} prices with {share:.0%} of run cost: {t['calls'] / n_runs:.1f} calls/run "
        f"({t['calls'] / calls:.0%} of calls), {t['input'] / t['calls']:,.0f} input and {t['output'] / t['calls']:,.0f} "
        f"output tokens per call vs {mean_in:,.0f} / {mean_out:,.0f} on average — mostly {driver} "
        f"({drivers[driver]:.2f}× the average)"
        + (f"; input tokens are {input_share:.0%} of its cost" if input_share is not None else "")
        + "."
    )
    same = [n for n, (a, _) in tops.items() if a == top]
    ctx.finding(
        f"The same agent dominates under {len(same)} of {len(tops)} prices"
        + (
            ""
            if len(same) == len(tops)
            else f"; elsewhere: {', '.join(f'{n} → {a} ({s:.0%})' for n, (a, s) in tops.items() if a != top)}"
        )
        + "."
    )
    cheapest = min(projection, key=lambda r: r[1])
    dearest = max(projection, key=lambda r: r[1])
    ctx.finding(
        f"Per 1,000 runs: {dearest[0]} ${dearest[2]:,.2f} vs {cheapest[0]} ${cheapest[2]:,.2f} "
        f"({dearest[1] / cheapest[1]:,.1f}× apart)."
        if cheapest[1]
        else f"Per 1,000 runs: {dearest[0]} ${dearest[2]:,.2f}; {cheapest[0]} costs nothing at these prices."
    )
    ctx.finding(
        f"Self-hosted at ${cfg.gpu_usd_per_hour:.2f}/h uses {decode_rate:,.1f} tok/s decode "
        f"({basis}): a single-stream rate, so this is the cost of a GPU serving one request at a time; a "
        "batching server's aggregate throughput divides it."
    )


EXERCISE = Exercise(
    id="phase15.cost_model",
    title="Cost per agent and per run from traced tokens: hosted price table vs self-hosted $/GPU-h ÷ tokens/s",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {"runs": 3, "max_steps": 4, "max_tokens": 160, "llm": A100_LLM}},
    tiny={
        "runs": 1,
        "max_steps": 2,
        "retrieval": "bm25",
        "max_tokens": 48,
        "decode_tokens_per_s": 20.0,
        "prefill_tokens_per_s": 200.0,
    },
    smoke={"runs": 1, "max_steps": 2, "retrieval": "bm25", "max_tokens": 48},  # tokens/s measured on the server
    summary_metrics=(
        "cost_per_1000_runs_usd_claude_haiku_4_5",
        "cost_per_1000_runs_usd_gpt_4o",
        "cost_per_1000_runs_usd_self_hosted",
        "dominant_agent_cost_share",
    ),
    methods={
        "cpu": f"substitute: tokens/s measured on this CPU ({DEFAULT_LLM}) priced at the A100 $/h",
        "a100": "same",
    },
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
