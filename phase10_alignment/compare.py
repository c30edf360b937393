"""10.3 Three-way comparison: the same 10 domain prompts through BASE, SFT and SFT+DPO.

Reading generations side by side is how the seed found its most useful results: which topics SFT
fixed, which ones every variant hallucinates identically (training-data gaps that no alignment step
can fill), and how little a weak DPO signal changes. Each variant is loaded fresh from the base
(``variants.load_variant``); the run proves it by checking the module tree of every load and by
reloading SFT after DPO and comparing its logits with the first load.

Speed is timed the way the seed quoted it (BASE vs adapter tokens/s, Phase 11 of the seed): one request at
a time, a forced number of new tokens, the adapter unmerged (as ``load_variant`` leaves it), after a
warm-up, median of a few rounds. The batched rate of the generation run is reported beside it but is
a different quantity (a batch hides per-step overheads such as the LoRA matmuls).

Generations are greedy (repeatable) and stored in the lab's artifact store (``phase10.generations``)
keyed by prompts, settings and the adapters' recipes, so ``phase10.judge`` scores exactly these
answers without generating them again. An SFT+DPO adapter flagged ``noop`` (a DPO run that left the
policy where it started) is refused when it is loaded: its column would be the SFT model twice.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.artifacts import Artifact, Recipe
from lab.device import current
from lab.errors import MissingResource
from lab.hashing import json_sha256
from lab.models import EMBEDDED_LLM
from phase09_finetuning.generation import (
    answers_with_question,
    key_term_coverage,
    load_eval_prompts,
    mean_coverage,
    single_stream_tokens_per_s,
    timed_generate,
)
from phase09_finetuning.sft import SFT_ADAPTER
from phase10_alignment.dpo import DPO_ADAPTER
from phase10_alignment.variants import VARIANT_ADAPTERS, VARIANTS, base_model_id, load_variant, lora_layers

PROBE = "Explain what a KV cache stores."  # fixed input whose logits fingerprint a loaded variant
GENERATIONS_FORMAT = 2  # bump when _generate records something new: stored generations then stop matching

REFERENCES = (
    Reference(
        "base_single_stream_tokens_per_s",
        18.1,
        "tokens/s",
        "seed: Llama 3.1 8B BASE, one request at a time (its load precision is not stated)",
    ),
    Reference("sft_single_stream_tokens_per_s", 11.0, "tokens/s", "seed: the same with a PEFT adapter, unmerged"),
    Reference("adapter_overhead_pct", 39, "%", "seed: 1 − 11.0/18.1, 'PEFT overhead'"),
)


class Config(ExerciseConfig):
    max_new_tokens: int = 48
    n_prompts: int | None = None  # None: all 10 Phase 9 eval prompts
    batch_size: int = 10
    tput_tokens: int = 32  # forced new tokens per single-stream timing
    tput_rounds: int = 3  # timed rounds per variant (median reported), after one warm-up
    require_cuda: bool = False


def probe_logits(model, tok):
    """Last-position logits on a fixed prompt: equal fingerprints mean equal weights in effect."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    enc = tok.apply_chat_template(
        [{"role": "user", "content": PROBE}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        return model(**{k: v.to(model.device) for k, v in enc.items()}).logits[0, -1].float().cpu()


def generations(cfg: Config, ctx: RunContext) -> tuple[dict[str, Any], bool]:
    """(answers of every variant to the eval prompts with per-load checks, whether they were stored
    before this run). The adapters come from the store (trained first if missing, and the run says
    so); the answers are a stored artifact of their own, keyed by prompts, settings and adapters."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    prompts = load_eval_prompts()[: cfg.n_prompts]
    adapters = {"base": None, **{v: ctx.require_artifact(kind) for v, kind in VARIANT_ADAPTERS.items()}}
    recipe = Recipe(
        "phase10.generations",
        dict(
            base_model=base_model_id(ctx.profile),
            prompts_sha256=json_sha256([p["prompt"] for p in prompts]),
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            device="cuda" if torch.cuda.is_available() else "cpu",
            tput_tokens=cfg.tput_tokens,
            tput_rounds=cfg.tput_rounds,
            format=GENERATIONS_FORMAT,
            adapters={v: a.recipe.sha256 if a else None for v, a in adapters.items()},
        ),
    )
    stored = ctx.build_artifact(recipe, lambda folder: _generate(cfg, ctx.profile, prompts, adapters, folder))
    doc = json.loads((stored.path / "generations.json").read_text())
    return doc, stored.meta.get("producer", {}).get("run_id") != ctx.run_id


def _generate(
    cfg: Config, profile: str, prompts: list[dict], adapters: dict[str, Artifact | None], folder: Path
) -> None:
    """Load each variant fresh, fingerprint it, generate; reload SFT last to prove loads do not leak."""

    doc: dict[str, Any] = {
        "prompts": prompts,
        "max_new_tokens": cfg.max_new_tokens,
        "answers": {},
        "loads": {},
        "adapters": {v: a.id if a else None for v, a in adapters.items()},
    }
    fingerprints = {}
    for name in VARIANTS:
        began = time.perf_counter()
        model, tok = load_variant(name, profile, adapter=adapters[name])
        load_s = time.perf_counter() - began
        fingerprints[name] = probe_logits(model, tok)
        answers, n_tokens, seconds = timed_generate(
            model, tok, [p["prompt"] for p in prompts], cfg.max_new_tokens, batch_size=cfg.batch_size
        )
        single = single_stream_tokens_per_s(model, tok, PROBE, cfg.tput_tokens, cfg.tput_rounds)
        layers = lora_layers(model)
        doc["answers"][name] = answers
        doc["loads"][name] = {
            "load_s": load_s,
            "gen_s": seconds,
            "new_tokens": n_tokens,
            "single_stream": single,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "lora_layers": len(layers),
            "adapters_per_layer": sorted({len(a) for a in layers.values()}),
            "nested_peft": any("base_model.model.base_model" in n for n, _ in model.named_modules()),
        }
        del model
    # fresh-load isolation: SFT loaded again after DPO must compute exactly what it did the first time
    model, tok = load_variant("sft", profile, adapter=adapters["sft"])
    doc["sft_reload_max_abs_diff"] = (probe_logits(model, tok) - fingerprints["sft"]).abs().max().item()
    doc["sft_vs_base_max_abs_diff"] = (fingerprints["sft"] - fingerprints["base"]).abs().max().item()
    doc["dpo_vs_sft_max_abs_diff"] = (fingerprints["dpo"] - fingerprints["sft"]).abs().max().item()
    del model
    doc["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (folder / "generations.json").write_text(json.dumps(doc, indent=1))


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def side_by_side_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# BASE vs SFT vs SFT+DPO — full generations",
        "",
        f"Greedy decoding, {doc['max_new_tokens']} new tokens at most; answers cut there are unfinished.",
        "",
    ]
    for i, p in enumerate(doc["prompts"]):
        lines += [f"## {i + 1}. {p.get('id', '')} ({p.get('topic', '')})", "", f"> {p['prompt']}", ""]
        for name in ("base", "sft", "dpo"):
            lines += [f"**{name.upper()}**", "", doc["answers"][name][i] or "_(empty)_", ""]
    return "\n".join(lines)


def run(cfg: Config, ctx: RunContext) -> None:

    if cfg.require_cuda and (
        why := current().gpu_only_reason("the a100 profile generates with Llama 3.1 8B + adapters")
    ):
        ctx.skip(why)
    try:
        doc, from_store = generations(cfg, ctx)
    except MissingResource as err:
        ctx.skip(str(err))
    for name, adapter_id in doc["adapters"].items():
        ctx.model(base_model_id(ctx.profile), adapter=f"{name}: {adapter_id or 'none'}")
    prompts, answers = doc["prompts"], doc["answers"]
    ctx.dataset("phase09_finetuning/data/eval_prompts.jsonl", n=len(prompts), sha256=json_sha256(prompts))

    ctx.table(
        "generations",
        [
            [p.get("id") or str(i + 1)] + [_short(answers[v][i]) for v in ("base", "sft", "dpo")]
            for i, p in enumerate(prompts)
        ],
        ["prompt", "BASE", "SFT", "SFT+DPO"],
        title="Generations side by side (first 160 characters)",
    )
    ctx.artifact("generations.md").write_text(side_by_side_markdown(doc))
    loads = doc["loads"]
    single = {v: statistics.median(loads[v]["single_stream"]) for v in ("base", "sft", "dpo")}
    ctx.table(
        "loads",
        [
            [
                v,
                loads[v]["lora_layers"],
                str(loads[v]["adapters_per_layer"]),
                loads[v]["nested_peft"],
                round(loads[v]["load_s"], 1),
                loads[v]["new_tokens"],
                round(loads[v]["new_tokens"] / max(loads[v]["gen_s"], 1e-9), 1),
                round(single[v], 1),
                ", ".join(f"{r:.1f}" for r in loads[v]["single_stream"]),
            ]
            for v in ("base", "sft", "dpo")
        ],
        [
            "variant",
            "LoRA layers",
            "adapters per layer",
            "nested PeftModel",
            "load s",
            "new tokens",
            "tokens/s (batched)",
            "tokens/s (single stream, median)",
            "single-stream rounds",
        ],
        title="Each variant loaded fresh: module-tree checks and generation speed (adapters unmerged)",
    )
    n_batch = min(cfg.batch_size, len(prompts))
    for v in ("base", "sft", "dpo"):
        ctx.metric(
            f"{v}_batched_tokens_per_s",
            loads[v]["new_tokens"] / max(loads[v]["gen_s"], 1e-9),
            "tokens/s",
            higher_is_better=True,
            description=f"the generation run: batches of {n_batch} prompts, greedy",
        )
        ctx.metric(
            f"{v}_single_stream_tokens_per_s",
            single[v],
            "tokens/s",
            higher_is_better=True,
            description=f"one request, {cfg.tput_tokens} forced new tokens, {loads[v]['dtype']}, adapter unmerged, "
            f"median of {len(loads[v]['single_stream'])} rounds after a warm-up",
        )
    overhead = 100 * (1 - single["sft"] / single["base"])
    ctx.metric(
        "adapter_overhead_pct",
        overhead,
        "%",
        higher_is_better=False,
        description="1 − SFT/BASE single-stream tokens/s: the cost of an unmerged LoRA adapter",
    )
    ctx.metric(
        "sft_reload_max_abs_diff",
        doc["sft_reload_max_abs_diff"],
        "logit",
        higher_is_better=False,
        description="SFT loaded again after DPO vs its first load (0 = no leakage between loads)",
    )
    rows = []
    for v in ("base", "sft", "dpo"):
        coverage = mean_coverage(
            [key_term_coverage(a, p.get("key_terms", []), p["prompt"]) for a, p in zip(answers[v], prompts)]
        )
        questions = sum(answers_with_question(a) for a in answers[v])
        ctx.metric(
            f"{v}_key_term_coverage",
            coverage,
            "",
            higher_is_better=True,
            description="whole-word key terms not already in the prompt, mean over prompts (Phase 9 check)",
        )
        rows.append([v, None if coverage is None else round(coverage, 3), questions, sum(not a for a in answers[v])])
    ctx.table(
        "mechanical_checks",
        rows,
        ["variant", "key-term coverage", "replies ending in a question", "empty"],
        title="Phase 9's mechanical checks on each variant's answers",
    )
    n = len(prompts)
    changed_dpo = sum(a != b for a, b in zip(answers["sft"], answers["dpo"]))
    changed_sft = sum(a != b for a, b in zip(answers["base"], answers["sft"]))
    ctx.metric(
        "dpo_answers_changed",
        changed_dpo,
        f"of {n} prompts",
        higher_is_better=None,
        description="greedy SFT+DPO answers that differ from the SFT model's",
    )
    ctx.metric(
        "sft_answers_changed", changed_sft, f"of {n} prompts", description="greedy SFT answers that differ from BASE's"
    )

    if from_store:
        ctx.finding(
            f"Generations (and the load checks and timings below) come from the artifact store, made at "
            f"{doc.get('generated_at', '?')} from the same prompts, settings and adapter recipes (see Stored "
            "artifacts); a change to any of them generates anew."
        )
    ctx.finding(
        f"Fresh loads: every adapter variant carries exactly one adapter per LoRA layer "
        f"({loads['sft']['lora_layers']} layers) and no PeftModel inside a PeftModel; SFT reloaded after DPO "
        f"differs from its first load by {doc['sft_reload_max_abs_diff']:.1e} in the probe logits. The probe logits "
        f"differ SFT vs BASE by {doc['sft_vs_base_max_abs_diff']:.3g} and SFT+DPO vs SFT by "
        f"{doc['dpo_vs_sft_max_abs_diff']:.3g}."
    )
    dpo = ctx.load_artifact(DPO_ADAPTER)  # the adapter these answers came from (stored, never trained here)
    ctx.finding(
        f"DPO changed {changed_dpo} of {n} greedy answers (SFT changed {changed_sft} of BASE's). "
        + _dpo_training(dpo.metrics)
        + " Greedy decoding only changes where an update moves the top token, so the count shows how far "
        "the preference update reached the domain prompts, not whether the answers got better (phase10.judge)."
    )
    spread = {v: (max(r) - min(r)) / statistics.median(r) for v in single for r in [loads[v]["single_stream"]]}
    seed = EXERCISE.seed
    ctx.finding(
        f"Single-stream speed, adapters unmerged: BASE {single['base']:.1f}, SFT {single['sft']:.1f}, SFT+DPO "
        f"{single['dpo']:.1f} tokens/s (rounds of a variant spread up to {max(spread.values()):.0%}; each "
        "variant is timed after its own load, not interleaved as in phase09.before_after, so load drift on a "
        f"shared machine enters the comparison); the unmerged adapter costs {overhead:.0f}% (seed: "
        f"{seed('base_single_stream_tokens_per_s')} vs {seed('sft_single_stream_tokens_per_s')} tok/s, "
        f"{seed('adapter_overhead_pct')}%). merge_and_unload() removes it (phase09.before_after measures that)."
    )
    if ctx.profile == "cpu":
        ctx.finding(
            f"cpu profile: {EMBEDDED_LLM.label} answers cut at {cfg.max_new_tokens} tokens. A {EMBEDDED_LLM.size_label} "
            "model has little domain knowledge to expose, so read these for the mechanics (what changes between "
            f"variants), not for quality; its tokens/s are a {EMBEDDED_LLM.size_label} model on a shared CPU core, "
            "not comparable in size with the seed's 8B on an A100 "
            "(compare the adapter overhead, not the rates)."
        )


def _dpo_training(metrics) -> str:
    """The DPO adapter's own training record, as stored with it (absent for an adapter made elsewhere)."""
    if "train_pairs_margin" not in metrics:
        return "The DPO adapter carries no training record (it was not made by phase10.dpo)."
    return (
        f"Its adapter: lr {metrics['lr']:g}, {metrics['steps']} steps, reward margin "
        f"{metrics['train_pairs_margin']:+.3f} on its trained pairs and {metrics['heldout_pairs_margin']:+.3f} held "
        f"out, KL to the SFT reference {metrics['kl_per_token']:.2e} nats/token."
    )


EXERCISE = Exercise(
    id="phase10.compare",
    title="BASE vs SFT vs SFT+DPO on 10 domain prompts, each loaded fresh",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": dict(max_new_tokens=300, tput_tokens=128, require_cuda=True)},
    tiny=dict(max_new_tokens=4, n_prompts=2, tput_tokens=4, tput_rounds=1),
    smoke=dict(max_new_tokens=4, n_prompts=2, tput_tokens=4, tput_rounds=1),
    references=REFERENCES,
    summary_metrics=("dpo_answers_changed", "adapter_overhead_pct", "sft_reload_max_abs_diff"),
    needs=(SFT_ADAPTER, DPO_ADAPTER),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
