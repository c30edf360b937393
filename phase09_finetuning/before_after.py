"""9.4 Before/after: the same 10 domain prompts through the base model and the SFT adapter.

Side by side in ``before_after.md``, plus mechanical checks instead of impressions: key-term
coverage per prompt (does the answer talk about the right things), red-flag terms for the seed's
two hallucinations (roofline as a Kahneman psychology framework, Tenstorrent as a Chinese chip
designer), and "answers with a question" (the seed's new failure mode from Socratic training pairs).

Then throughput in one process, at a forced equal output length: base vs base+adapter unmerged
(LoRA matmuls on every projection) vs merged (B·A folded into W), timed in interleaved rounds so
load drift on a shared machine hits all three alike, and finally ``merge_and_unload()`` (the
deployment form). The seed saw a 39% penalty for the unmerged adapter.
"""

from __future__ import annotations

import statistics

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.artifacts import Artifact, Recipe
from phase09_finetuning import generation, sft


class Config(ExerciseConfig):
    max_new_tokens: int = 96
    batch_size: int = 10
    tput_prompts: int = 4  # prompts per throughput measurement (one batch)
    tput_tokens: int = 32  # forced output length when timing
    tput_repeats: int = 2  # interleaved timing rounds per variant (the median is reported)
    n_prompts: int = 10  # the first N eval prompts (tests use fewer)
    adapter_steps: int = 0  # 0: the profile's SFT adapter; >0: a small one of this many steps on 4 rows (tests)


def _tps(model, tok, prompts, cfg: Config) -> tuple[float, list[str]]:
    texts, n, s = generation.timed_generate(model, tok, prompts, cfg.tput_tokens, batch_size=len(prompts),
                                            min_new_tokens=cfg.tput_tokens)
    return n / s, texts


def _interleaved_throughput(model, tok, prompts, cfg: Config) -> tuple[dict[str, list[float]], list[str]]:
    """Rounds of base / unmerged / merged timed back to back on one PeftModel, so load drift on a
    shared machine hits every variant alike. Base = adapter disabled; merged = merge_adapter()
    (B·A folded into W, the LoRA branch skipped), then unmerge_adapter() for the next round."""
    rates: dict[str, list[float]] = {"base": [], "unmerged": [], "merged": []}
    unmerged_texts: list[str] = []
    for _ in range(cfg.tput_repeats):
        with model.disable_adapter():
            rates["base"].append(_tps(model, tok, prompts, cfg)[0])
        rate, unmerged_texts = _tps(model, tok, prompts, cfg)
        rates["unmerged"].append(rate)
        model.merge_adapter()
        rates["merged"].append(_tps(model, tok, prompts, cfg)[0])
        model.unmerge_adapter()
    return rates, unmerged_texts


def _adapter(cfg: Config, ctx: RunContext) -> Artifact:
    """The profile's stored SFT adapter (trained first if missing, and the run says so), or with
    ``adapter_steps`` a small adapter of its own recipe (stored too, so a rerun reuses it)."""
    if not cfg.adapter_steps:
        return ctx.require_artifact(sft.SFT_ADAPTER)
    from phase09_finetuning.dataset import load_training_set

    model_id, lr, lora_r = (sft.profile_recipe(ctx.profile)[k] for k in ("model_id", "lr", "lora_r"))
    shape = dict(batch_size=2, max_length=64, subset=4)
    recipe = Recipe(sft.SFT_ADAPTER.name, sft.sft_params(model_id=model_id, lora_r=lora_r, qlora=False, lr=lr,
                                                         max_steps=cfg.adapter_steps, **shape))

    def train(folder):
        res = sft.train_sft(model_id, load_training_set("train")[:shape["subset"]], folder, lora_r=lora_r,
                            max_steps=cfg.adapter_steps, batch_size=shape["batch_size"],
                            max_length=shape["max_length"], lr=lr, ctx=ctx)
        return {"metrics": sft.adapter_metrics(res)}

    return ctx.build_artifact(recipe, train)


def run(cfg: Config, ctx: RunContext) -> None:
    import torch
    from peft import PeftModel

    if ctx.profile == "a100" and not torch.cuda.is_available():
        ctx.skip("the a100 profile compares Llama 3.1 8B with its QLoRA adapter on a CUDA GPU; no CUDA device here.")
    adapter = _adapter(cfg, ctx)
    base_id, lora_r, steps = adapter.params["base_model"], adapter.params["lora_r"], adapter.metrics.get("steps")
    prompts = generation.load_eval_prompts()[:cfg.n_prompts]
    texts = [p["prompt"] for p in prompts]
    tput_texts = texts[:cfg.tput_prompts]

    # The adapter is applied to a full-precision base (bf16 on GPU): merging into an NF4 base is lossy.
    model, tok, _ = sft.load_base(base_id, qlora=False)
    model.eval()
    ctx.model(base_id, dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
              n_params=sum(p.numel() for p in model.parameters()))
    ctx.log("generating with the base model")
    base_answers = generation.generate(model, tok, texts, cfg.max_new_tokens, batch_size=cfg.batch_size)

    model = PeftModel.from_pretrained(model, str(adapter.path))
    model.eval()
    ctx.model(base_id, adapter=f"{adapter.id} (r={lora_r}, {steps} steps)")
    ctx.log("generating with the adapter (unmerged)")
    tuned_answers = generation.generate(model, tok, texts, cfg.max_new_tokens, batch_size=cfg.batch_size)
    ctx.log("timing base / unmerged / merged, interleaved")
    rates, unmerged_texts = _interleaved_throughput(model, tok, tput_texts, cfg)
    model = model.merge_and_unload()  # the deployment form: plain Linear layers again
    rate, merged_texts = _tps(model, tok, tput_texts, cfg)
    rates["merge_and_unload"] = [rate]
    tput = {k: statistics.median(v) for k, v in rates.items()}

    # --- mechanical checks --------------------------------------------------------------------
    rows, md = [], ["# Before/after: base vs SFT adapter", "",
                    f"Base `{base_id}`; adapter `{adapter.id}`, r={lora_r} after {steps} steps "
                    f"on {adapter.params['subset'] or 'all'} training rows. Greedy decoding, repetition penalty "
                    f"{generation.GEN_KWARGS['repetition_penalty']}, max {cfg.max_new_tokens} new tokens.", ""]
    cov = {"base": [], "tuned": []}
    asks = {"base": 0, "tuned": 0}
    flags = {"base": 0, "tuned": 0}
    for p, b, t in zip(prompts, base_answers, tuned_answers):
        row = [p["id"]]
        for name, ans in (("base", b), ("tuned", t)):
            c = generation.key_term_coverage(ans, p["key_terms"])
            q = generation.answers_with_question(ans)
            f = [w for w in p.get("red_flags", []) if w in ans.lower()]
            cov[name].append(c)
            asks[name] += q
            flags[name] += bool(f)
            row += [round(c, 2), "yes" if q else "", ", ".join(f), len(ans.split())]
        rows.append(row)
        md += [f"## {p['id']}: {p['prompt']}", "", f"key terms: {', '.join(p['key_terms'])}", "",
               "| | base | fine-tuned |", "|---|---|---|",
               f"| answer | {_cell(b)} | {_cell(t)} |",
               f"| key-term coverage | {row[1]:.2f} | {row[5]:.2f} |",
               f"| answers with a question | {row[2] or 'no'} | {row[6] or 'no'} |",
               f"| red flags | {row[3] or '-'} | {row[7] or '-'} |", ""]
    ctx.artifact("before_after.md").write_text("\n".join(md))
    ctx.table("prompts", rows, ["prompt", "base coverage", "base asks?", "base red flags", "base words",
                                "tuned coverage", "tuned asks?", "tuned red flags", "tuned words"],
              title=f"{len(prompts)} domain prompts, base vs fine-tuned (full text in before_after.md)")

    n = len(prompts)
    ctx.metric("base_key_term_coverage", round(sum(cov["base"]) / n, 3), "", higher_is_better=True)
    ctx.metric("tuned_key_term_coverage", round(sum(cov["tuned"]) / n, 3), "", higher_is_better=True)
    ctx.metric("base_answers_with_question", asks["base"], f"of {n}", higher_is_better=False)
    ctx.metric("tuned_answers_with_question", asks["tuned"], f"of {n}", higher_is_better=False)
    ctx.metric("base_red_flags", flags["base"], "answers", higher_is_better=False)
    ctx.metric("tuned_red_flags", flags["tuned"], "answers", higher_is_better=False)
    for k, v in tput.items():
        ctx.metric(f"tokens_per_s_{k}", round(v, 2), "tok/s", higher_is_better=True)
    base_tput = tput["base"]
    noise = (max(rates["base"]) - min(rates["base"])) / base_tput
    penalty = 100 * (1 - tput["unmerged"] / base_tput)
    ctx.metric("unmerged_penalty_pct", round(penalty, 1), "%", higher_is_better=False,
               description="1 - unmerged/base throughput, medians of interleaved rounds")
    ctx.metric("merged_vs_base_ratio", round(tput["merged"] / base_tput, 3), "")
    ctx.metric("base_timing_spread_pct", round(100 * noise, 1), "%",
               description="(max - min) / median of the base rounds: the noise floor of this comparison")
    same = sum(a == b for a, b in zip(unmerged_texts, merged_texts)) / len(merged_texts)
    ctx.metric("merged_matches_unmerged", round(same, 2), "share",
               description="greedy outputs identical after merge_and_unload (numerics check)")
    ctx.table("throughput", [[k, round(v, 2), round(v / base_tput, 3), ", ".join(f"{r:.1f}" for r in rates[k])]
                             for k, v in tput.items()], ["variant", "tokens/s (median)", "vs base", "rounds"],
              title=f"Generation throughput, batch {len(tput_texts)}, {cfg.tput_tokens} forced tokens, "
                    f"{cfg.tput_repeats} interleaved rounds")

    better = [p["id"] for p, b, t in zip(prompts, cov["base"], cov["tuned"]) if t > b]
    worse = [p["id"] for p, b, t in zip(prompts, cov["base"], cov["tuned"]) if t < b]
    ctx.finding(f"Key-term coverage {sum(cov['base']) / n:.2f} (base) -> {sum(cov['tuned']) / n:.2f} (fine-tuned); "
                f"up on {len(better)} prompts ({', '.join(better) or 'none'}), down on {len(worse)} "
                f"({', '.join(worse) or 'none'}). A vocabulary proxy, not a correctness score: read before_after.md.")
    ctx.finding(f"Seed's hallucinations checked by red-flag terms (roofline as psychology, Tenstorrent as Chinese, "
                f"Chinchilla as an animal): base {flags['base']}, fine-tuned {flags['tuned']} answers flagged. "
                "Red flags only catch those specific errors: an answer can be free of them and still invented "
                "(read before_after.md).")
    if sum(cov["tuned"]) <= sum(cov["base"]):
        ctx.finding("The fine-tuned model did not gain key-term coverage: a short SFT run on a small model shifts "
                    "tone and length toward the data but does not add the facts, so it still invents details "
                    "(the seed's point that fine-tuning does not conjure knowledge; Phase 12 uses retrieval).")
    ctx.finding(f"'Answers with a question' (ends on '?' or half its sentences are questions): base "
                f"{asks['base']}/{n}, fine-tuned {asks['tuned']}/{n}. The seed's adapter learned it from Socratic "
                "pairs; this dataset has none, so a rise here would come from the base model, not the data.")
    ratio = tput["merged"] / base_tput
    verdict = ("back to base speed: merging removes the LoRA cost" if abs(1 - ratio) <= max(noise, 0.1) else
               f"not back to base speed, a gap larger than the {100 * noise:.0f}% between the two base timings; "
               "the merged model has the base's shapes and FLOPs, so this run cannot attribute the gap")
    measured = ("beyond the noise" if penalty / 100 > noise else
                f"within this run's noise ({100 * noise:.0f}% spread between base rounds), so not conclusive")
    ctx.finding(f"Throughput: unmerged adapter {penalty:.0f}% slower than the base, {measured} (seed: 39%); "
                f"merged {ratio:.2f}x base, {verdict}. Greedy outputs after merge_and_unload match the "
                f"unmerged ones on {same:.0%} of the timed prompts.")
    if not torch.cuda.is_available():
        ctx.finding("On a CPU the unmerged penalty is the extra skinny matmuls per projection with no launch "
                    "overhead; on a GPU at batch 1 kernel launches dominate and the penalty is larger.")
    ctx.failure_mode("Loading a second adapter onto a PeftModel stacks it on the first: load every variant "
                     "fresh from the base (the seed's Phase 10 lesson).")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


EXERCISE = Exercise(
    id="phase09.before_after",
    title="Before/after: base vs fine-tuned on 10 domain prompts, and the unmerged-adapter cost",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": dict(max_new_tokens=96, batch_size=10, tput_prompts=4, tput_tokens=32, tput_repeats=3),
        "a100": dict(max_new_tokens=256, batch_size=10, tput_prompts=1, tput_tokens=128, tput_repeats=3),
    },
    tiny=dict(n_prompts=2, max_new_tokens=8, tput_prompts=2, tput_tokens=4, tput_repeats=1, adapter_steps=1),
    references=(
        Reference("unmerged_penalty_pct", 39, "%", "seed: PEFT adapter unmerged vs base"),
        Reference("tuned_red_flags", 0, "answers", "seed: both hallucinations corrected"),
    ),
    summary_metrics=("base_key_term_coverage", "tuned_key_term_coverage", "unmerged_penalty_pct"),
    needs=(sft.SFT_ADAPTER,),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
