"""Local inference: the transformers engine vs the llama.cpp engine on the same prompts, in one run.

    .venv/bin/lab run benchmarks.llm_throughput                       # embedded SmolLM2-135M, both engines
    .venv/bin/lab run benchmarks.llm_throughput --set repeats=1 --out /tmp/bench

What every agentic exercise waits on is the local model's speed, so this measures it the way the
exercises use it. Each engine runs in a child process of its own, one after the other (so neither
competes with the other for the cores, and each peak RSS is that engine's alone) with ``threads``
CPU threads (1 by default: what each job of ``lab run all --jobs 2`` gets on 2 cores), on:

- **prompt**: tokens/s of one forward pass over a ``prompt_tokens`` prompt (no cache);
- **decode**: tokens/s after the first token of a greedy reply of ``decode_tokens`` tokens;
- **constrained**: tool calls under ``tool_choice="required"`` on the first ``constrained_prompts``
  requests of ``benchmarks/data/tool_call_prompts.jsonl``: output tokens/s and the share of replies
  that are schema-valid calls (the grammar's guarantee, checked with ``jsonschema``);
- **agent steps**: a ``agent_steps``-step tool-using conversation (a fixed script of calls and
  observations, so both engines see the same prompts) where each step resends the whole history:
  seconds per step with the prefix cache, and with the cache cleared before every step (what the
  transformers path did before prefix reuse);
- **greedy agreement**: the greedy continuations of ``agreement_prompts`` prompts, token by token,
  against transformers (the reference the committed results came from);
- **fidelity**: teacher-forced next-token distributions over ``fidelity_tokens`` tokens of this
  repository's README vs transformers float32: mean KL and top-1 agreement (greedy agreement alone
  overstates a difference: one near-tie flipped changes everything after it).

Headline metrics: ``decode_speedup_x`` (llama.cpp / transformers decode tok/s),
``agent_step_speedup_x`` (a step on transformers without reuse / on llama.cpp with reuse) and
``constrained_valid_rate`` (llama.cpp). A benchmark, not a test: figures depend on the machine and
its load, which the result records.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.tool_calls import TOOLS, judge, load_prompts
from lab import Exercise, ExerciseConfig, RunContext
from lab.llm.base import ToolCall
from lab.llm.engine import llama_cpp_unavailable
from lab.llm.local import LocalLLM
from lab.models import DEFAULT_LLM
from lab.paths import REPO_ROOT
from lab.stats import rate_note

ENGINES = ("transformers", "llama.cpp")
NEW, OLD = "llama.cpp", "transformers"
DECODE_PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
AGREEMENT_PROMPTS = (
    "Explain in detail why the KV cache dominates GPU memory at long context.",
    "What is LoRA fine-tuning and when should I use it?",
    "Write a short poem about databases.",
    "Give three tips for writing good unit tests.",
    "How does retrieval-augmented generation reduce hallucinations?",
    "Summarise the plot of a heist movie in two sentences.",
    "What is the difference between a process and a thread?",
    "Describe how a transformer's attention works to a ten-year-old.",
)


class Config(ExerciseConfig):
    model: str = DEFAULT_LLM
    prompt_tokens: int = 1500
    decode_tokens: int = 128
    repeats: int = 3
    constrained_prompts: int = 60  # every request in tool_call_prompts.jsonl: >= 30 cases for the headline rate
    constrained_max_tokens: int = 128
    agent_steps: int = 5
    agent_max_tokens: int = 48
    agreement_prompts: int = 8
    agreement_tokens: int = 64
    fidelity_tokens: int = 512
    threads: int = 1  # per engine: what each job of `lab run all --jobs 2` gets on 2 cores


# --- what runs in each engine's child process -----------------------------------------------------


def _agent_script(steps: int) -> list[list[dict]]:
    """The message list of each step of a scripted research conversation (it grows every step)."""

    history: list[dict] = [
        {
            "role": "user",
            "content": "How much KV cache does Llama 3.1 8B need at 32k context, "
            "and how does grouped-query attention change it?",
        }
    ]
    snapshots = [list(history)]
    for k in range(1, steps):
        call = ToolCall(f"call_{k}", "search_notes", {"query": f"KV cache grouped-query attention part {k}"})
        history += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": call.id,
                "name": call.name,
                "content": f"Note {k}: " + "Grouped-query attention shares each key/value head across "
                "several query heads, so the cache holds 8 KV heads instead of 32. " * 3,
            },
        ]
        snapshots.append(list(history))
    return snapshots


AGENT_TOOLS = [
    {
        "name": "search_notes",
        "description": "Search the course notes.",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
    {
        "name": "kv_cache_size",
        "description": "KV cache bytes of a model at a context length.",
        "input_schema": {
            "type": "object",
            "properties": {"model": {"type": "string"}, "context": {"type": "integer"}},
            "required": ["model", "context"],
            "additionalProperties": False,
        },
    },
]


def _timed_tokens(engine, ids: list[int], max_tokens: int) -> tuple[list[int], float, float]:
    """(greedy tokens, seconds to the first token, seconds from the first to the last token)."""
    start = time.perf_counter()
    tokens, first = [], 0.0
    for token in engine.generate(ids, max_tokens):
        tokens.append(token)
        if len(tokens) == 1:
            first = time.perf_counter()
    return tokens, first - start, time.perf_counter() - first


def measure(engine_name: str, cfg: dict, scratch: str) -> dict:
    """Every measurement of one engine (runs in a child process; returns plain data)."""
    os.environ["OMP_NUM_THREADS"] = str(cfg["threads"])  # read by the llama.cpp engine when it opens
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    torch.set_num_threads(cfg["threads"])

    out: dict = {"engine": engine_name}
    start = time.perf_counter()
    llm = LocalLLM(cfg["model"], engine=engine_name)
    engine, tok = llm.engine, llm.tokenizer
    out["load_s"] = time.perf_counter() - start
    out["describe"] = llm.describe()

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    text_ids = tok(readme * (1 + 4 * cfg["prompt_tokens"] // max(1, len(readme))), add_special_tokens=False).input_ids
    long_prompt = text_ids[: cfg["prompt_tokens"]]
    engine.next_logits(long_prompt[:16], use_cache=False)  # warm-up
    rates = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter()
        engine.next_logits(long_prompt, use_cache=False)
        rates.append(len(long_prompt) / (time.perf_counter() - t))
    out["prompt_tok_s"] = statistics.median(rates)

    decode_ids = llm._prompt([{"role": "user", "content": DECODE_PROMPT}])[0]
    rates = []
    for _ in range(cfg["repeats"]):
        engine.reset_prefix_cache()
        tokens, _, spent = _timed_tokens(engine, decode_ids, cfg["decode_tokens"])
        rates.append((len(tokens) - 1) / spent if len(tokens) > 1 else 0.0)
    out["decode_tok_s"] = statistics.median(rates)

    valid, n_out, seconds, rows = 0, 0, 0.0, []
    for item in load_prompts(cfg["constrained_prompts"]):
        reply = llm.chat(
            [{"role": "user", "content": item["prompt"]}],
            tools=TOOLS,
            tool_choice="required",
            max_tokens=cfg["constrained_max_tokens"],
        )
        ok, _, outcome = judge(reply, item["tool"])
        valid += ok
        n_out += reply.usage.output_tokens
        seconds += reply.latency_s
        rows.append([engine_name, item["prompt"], outcome])
    out["constrained_valid"], out["constrained_n"] = valid, cfg["constrained_prompts"]
    out["constrained_tok_s"] = n_out / seconds if seconds else 0.0
    out["constrained_rows"] = rows

    for mode in ("reuse", "no_reuse"):
        engine.reset_prefix_cache()
        step_s = []
        for messages in _agent_script(cfg["agent_steps"]):
            if mode == "no_reuse":
                engine.reset_prefix_cache()
            reply = llm.chat(messages, tools=AGENT_TOOLS, tool_choice="auto", max_tokens=cfg["agent_max_tokens"])
            step_s.append(reply.latency_s)
        out[f"agent_step_s_{mode}"] = step_s
        out[f"agent_prompt_tokens_{mode}"] = engine.prefix_stats.as_dict()

    out["greedy"] = []
    for prompt in AGREEMENT_PROMPTS[: cfg["agreement_prompts"]]:
        ids = llm._prompt([{"role": "user", "content": prompt}])[0]
        out["greedy"].append(_timed_tokens(engine, ids, cfg["agreement_tokens"])[0])

    forced = tok.apply_chat_template(
        [{"role": "user", "content": "Summarise this README."}, {"role": "assistant", "content": readme}],
        tokenize=True,
        return_dict=True,
    )["input_ids"][: cfg["fidelity_tokens"] + 1]
    logprobs = []
    seq, logits = engine._start(forced[:1], use_cache=False)
    try:
        for token in forced[1:]:
            logprobs.append(torch.log_softmax(logits.float(), -1).numpy().astype(np.float32))
            logits = engine._advance(seq, token)
    finally:
        engine._finish(seq)
    np.save(Path(scratch) / f"logprobs-{engine_name}.npy", np.stack(logprobs))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# --- the exercise -----------------------------------------------------------------------------------


def _first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run(cfg: Config, ctx: RunContext) -> None:

    if (why := llama_cpp_unavailable()) is not None:
        ctx.skip(f"the llama.cpp engine cannot run here: {why}")
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per engine: its own peak RSS
    found: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lab-llm-bench-") as scratch:
        for name in ENGINES:
            ctx.log(f"measuring the {name} engine in a child process")
            with spawn.Pool(1) as pool:
                found[name] = pool.apply(measure, (name, cfg.model_dump(), scratch))
        ref = np.load(Path(scratch) / f"logprobs-{OLD}.npy")
        new = np.load(Path(scratch) / f"logprobs-{NEW}.npy")
    kl = float((np.exp(ref) * (ref - new)).sum(-1).mean())
    top1 = float((ref.argmax(-1) == new.argmax(-1)).mean())
    old, fast = found[OLD], found[NEW]
    for m in found.values():
        ctx.model(**m["describe"])

    slug = {OLD: "transformers", NEW: "llamacpp"}
    for name, m in found.items():
        s = slug[name]
        ctx.metric(f"prompt_tok_s_{s}", m["prompt_tok_s"], "tok/s", True, f"{cfg.prompt_tokens}-token prompt, no cache")
        ctx.metric(f"decode_tok_s_{s}", m["decode_tok_s"], "tok/s", True, f"greedy, {cfg.decode_tokens} tokens")
        ctx.metric(f"constrained_tok_s_{s}", m["constrained_tok_s"], "tok/s", True, "tool calls, tool_choice=required")
        ctx.metric(
            f"constrained_valid_rate_{s}",
            m["constrained_valid"] / m["constrained_n"],
            "fraction",
            True,
            rate_note(m["constrained_valid"], m["constrained_n"]),
        )
        ctx.metric(f"agent_step_s_{s}", statistics.mean(m["agent_step_s_reuse"]), "s", False, "mean step, prefix reuse")
        ctx.metric(
            f"agent_step_s_no_reuse_{s}",
            statistics.mean(m["agent_step_s_no_reuse"]),
            "s",
            False,
            "mean step, cache cleared before each step",
        )
        ctx.metric(f"peak_rss_mb_{s}", m["peak_rss_mb"], "MB", False, "the engine's child process")
        ctx.metric(f"load_s_{s}", m["load_s"], "s", False)

    ctx.metric(
        "decode_speedup_x",
        fast["decode_tok_s"] / old["decode_tok_s"],
        "x",
        True,
        "llama.cpp / transformers decode tok/s",
    )
    ctx.metric("prompt_speedup_x", fast["prompt_tok_s"] / old["prompt_tok_s"], "x", True)
    today = statistics.mean(old["agent_step_s_no_reuse"])
    ctx.metric(
        "agent_step_speedup_x",
        today / statistics.mean(fast["agent_step_s_reuse"]),
        "x",
        True,
        "a step on transformers without reuse / on llama.cpp with prefix reuse",
    )
    ctx.metric(
        "prefix_reuse_speedup_x",
        statistics.mean(fast["agent_step_s_no_reuse"]) / statistics.mean(fast["agent_step_s_reuse"]),
        "x",
        True,
        "llama.cpp: no reuse / reuse",
    )
    ctx.metric(
        "constrained_valid_rate",
        fast["constrained_valid"] / fast["constrained_n"],
        "fraction",
        True,
        f"llama.cpp: {rate_note(fast['constrained_valid'], fast['constrained_n'])}",
    )
    divergence = [_first_divergence(a, b) for a, b in zip(old["greedy"], fast["greedy"])]
    identical = sum(a == b for a, b in zip(old["greedy"], fast["greedy"]))
    ctx.metric(
        "greedy_identical_rate",
        identical / len(divergence),
        "fraction",
        True,
        f"continuations of {cfg.agreement_tokens} tokens identical to transformers, n={len(divergence)}",
    )
    ctx.metric("greedy_first_divergence_median", statistics.median(divergence), "tokens", True)
    ctx.metric("kl_vs_transformers", kl, "nats", False, f"mean KL(transformers || llama.cpp), {len(ref)} tokens")
    ctx.metric("top1_agreement", top1, "fraction", True, "teacher-forced next-token argmax, vs transformers")

    ctx.table(
        "engines",
        [
            [
                name,
                m["describe"].get("engine"),
                m["describe"].get("dtype"),
                m["prompt_tok_s"],
                m["decode_tok_s"],
                m["constrained_tok_s"],
                f"{m['constrained_valid']}/{m['constrained_n']}",
                statistics.mean(m["agent_step_s_no_reuse"]),
                statistics.mean(m["agent_step_s_reuse"]),
                m["peak_rss_mb"],
                m["load_s"],
            ]
            for name, m in found.items()
        ],
        [
            "engine",
            "version",
            "weights",
            "prompt tok/s",
            "decode tok/s",
            "constrained tok/s",
            "valid calls",
            "agent step s (no reuse)",
            "agent step s (reuse)",
            "peak RSS MB",
            "load s",
        ],
        title=f"The two engines on the same prompts ({cfg.threads} thread(s) each, one after the other)",
    )
    ctx.table(
        "agent_steps",
        [
            [k + 1, *(found[n][f"agent_step_s_{mode}"][k] for n in ENGINES for mode in ("no_reuse", "reuse"))]
            for k in range(cfg.agent_steps)
        ],
        ["step", "transformers, no reuse s", "transformers, reuse s", "llama.cpp, no reuse s", "llama.cpp, reuse s"],
        title="Seconds per agent step as the conversation grows",
    )
    ctx.table(
        "greedy",
        [[p[:60], d, len(a)] for p, d, a in zip(AGREEMENT_PROMPTS, divergence, old["greedy"])],
        ["prompt", "first differing token", "transformers tokens"],
        title="Greedy continuations: where llama.cpp first differs from transformers",
    )
    bad = [r for r in fast["constrained_rows"] if r[2] != "valid"]
    if bad:
        ctx.table(
            "invalid_calls", bad, ["engine", "prompt", "outcome"], title="llama.cpp replies that were not valid calls"
        )
    _plot_steps(ctx, found, cfg.agent_steps)

    m = {k: v["value"] for k, v in ctx.metrics.items()}
    ctx.finding(
        f"Decode: {m['decode_tok_s_llamacpp']:.0f} tok/s on llama.cpp vs {m['decode_tok_s_transformers']:.0f} "
        f"on transformers ({m['decode_speedup_x']:.1f}x); prompts {m['prompt_tok_s_llamacpp']:.0f} vs "
        f"{m['prompt_tok_s_transformers']:.0f} tok/s ({m['prompt_speedup_x']:.1f}x)."
    )
    ctx.finding(
        f"A {cfg.agent_steps}-step agent conversation: {m['agent_step_s_llamacpp']:.2f} s per step on llama.cpp "
        f"with prefix reuse vs {m['agent_step_s_no_reuse_transformers']:.2f} s on transformers without it "
        f"({m['agent_step_speedup_x']:.1f}x); reuse alone is worth {m['prefix_reuse_speedup_x']:.1f}x on llama.cpp."
    )
    ctx.finding(
        f"Constrained tool calls on llama.cpp: {fast['constrained_valid']} of {fast['constrained_n']} valid "
        f"(the same grammars as on transformers: {old['constrained_valid']} of {old['constrained_n']})."
    )
    ctx.finding(
        f"Same model, not the same numbers: teacher-forced, llama.cpp's next-token argmax matches transformers "
        f"on {top1:.1%} of {len(ref)} tokens (mean KL {kl:.4f} nats); greedy continuations were identical for "
        f"{identical} of {len(divergence)} prompts, first differing at a median token "
        f"{statistics.median(divergence):.0f}. Results regenerated on llama.cpp differ from the transformers "
        "ones in their text for that reason."
    )
    if bad:
        ctx.failure_mode(
            f"{len(bad)} constrained replies on llama.cpp were not valid calls: "
            + "; ".join(sorted({r[2] for r in bad}))
        )


def _plot_steps(ctx: RunContext, found: dict, steps: int) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name in ENGINES:
        for mode, style in (("no_reuse", "--"), ("reuse", "-")):
            ax.plot(
                range(1, steps + 1),
                found[name][f"agent_step_s_{mode}"],
                style,
                marker="o",
                label=f"{name}, {'prefix reuse' if mode == 'reuse' else 'no reuse'}",
            )
    ax.set_xlabel("agent step (the conversation grows each step)")
    ax.set_ylabel("seconds per step")
    ax.set_title("Seconds per agent step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.artifact("agent_steps.png"), dpi=120)
    plt.close(fig)


EXERCISE = Exercise(
    id="benchmarks.llm_throughput",
    title="Local inference: transformers vs llama.cpp",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}},
    methods={"cpu": "own"},
    tiny={
        "prompt_tokens": 48,
        "decode_tokens": 6,
        "repeats": 1,
        "constrained_prompts": 1,
        "constrained_max_tokens": 48,
        "agent_steps": 2,
        "agent_max_tokens": 6,
        "agreement_prompts": 1,
        "agreement_tokens": 6,
        "fidelity_tokens": 16,
    },
    summary_metrics=("decode_speedup_x", "agent_step_speedup_x", "constrained_valid_rate", "top1_agreement"),
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
