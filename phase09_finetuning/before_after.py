"""9.4 Before/after: what the SFT adapter changed, measured on held-out answers, then read on 10 prompts.

The main number is the **held-out answer loss**: for every row of the dataset's eval split (never
trained on), the mean negative log-likelihood of the reference answer's tokens given its question,
base vs fine-tuned, per row (``answer_loss.py``). It is what SFT optimises, on text it did not see.

Then the same 10 domain prompts through both models, side by side in ``before_after.md``, with
mechanical checks instead of impressions: key-term coverage (whole words, and only the key terms
the prompt does not already contain, so echoing the question earns nothing), red-flag terms for the
seed's two hallucinations (roofline as a Kahneman psychology framework, Tenstorrent as a Chinese
chip designer), and "answers with a question" (the seed's new failure mode from Socratic pairs).

Then throughput in one process, at a forced equal output length: base vs base+adapter unmerged
(LoRA matmuls on every projection) vs merged (B·A folded into W), timed in interleaved rounds so
load drift on a shared machine hits all three alike, and finally ``merge_and_unload()`` (the
deployment form). The seed measured its unmerged penalty single-stream (one request at a time).
"""

from __future__ import annotations

import statistics

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.artifacts import Artifact, Recipe
from lab.device import current
from phase09_finetuning import generation, sft
from phase09_finetuning.answer_loss import answer_losses
from phase09_finetuning.dataset import dataset_sha256, load_training_set

REFERENCES = (
    Reference(
        "unmerged_penalty_pct", 39, "%", "seed: PEFT adapter unmerged vs base, single stream (18.1 vs 11.0 tok/s)"
    ),
    Reference("tuned_red_flags", 0, "answers", "seed: both hallucinations corrected"),
)


class Config(ExerciseConfig):
    max_new_tokens: int = 96
    batch_size: int = 10
    tput_prompts: int = 1  # prompts per throughput measurement (one batch; 1 = single stream, as the seed)
    tput_tokens: int = 32  # forced output length when timing
    tput_repeats: int = 2  # interleaved timing rounds per variant (the median is reported)
    n_prompts: int = 10  # the first N eval prompts (tests use fewer)
    n_heldout: int = 0  # held-out answers scored for the loss (0 = the whole eval split)
    adapter_steps: int = 0  # 0: the profile's SFT adapter; >0: a small one of this many steps on 4 rows (tests)


def _tps(model, tok, prompts, cfg: Config) -> tuple[float, list[str]]:
    texts, n, s = generation.timed_generate(
        model, tok, prompts, cfg.tput_tokens, batch_size=len(prompts), min_new_tokens=cfg.tput_tokens
    )
    return n / s, texts


def _interleaved_throughput(model, tok, prompts, cfg: Config) -> tuple[dict[str, list[float]], list[str]]:
    """Rounds of base / unmerged / merged timed back to back on one PeftModel, so load drift on a
    shared machine hits every variant alike. Base = adapter disabled; merged = merge_adapter()
    (B·A folded into W, the LoRA branch skipped), then unmerge_adapter() for the next round."""
    rates: dict[str, list[float]] = {"base": [], "unmerged": [], "merged": []}
    unmerged_texts: list[str] = []
    generation.timed_generate(model, tok, prompts, 4, batch_size=len(prompts))  # warm-up, not timed
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

    model_id, lr, lora_r = (sft.profile_recipe(ctx.profile)[k] for k in ("model_id", "lr", "lora_r"))
    shape = dict(batch_size=2, max_length=64, subset=4)
    recipe = Recipe(
        sft.SFT_ADAPTER.name,
        sft.sft_params(model_id=model_id, lora_r=lora_r, qlora=False, lr=lr, max_steps=cfg.adapter_steps, **shape),
    )

    def train(folder):
        res = sft.train_sft(
            model_id,
            load_training_set("train")[: shape["subset"]],
            folder,
            lora_r=lora_r,
            max_steps=cfg.adapter_steps,
            batch_size=shape["batch_size"],
            max_length=shape["max_length"],
            lr=lr,
            ctx=ctx,
        )
        return {"metrics": sft.adapter_metrics(res)}

    return ctx.build_artifact(recipe, train)


def run(cfg: Config, ctx: RunContext) -> None:
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from peft import PeftModel  # noqa: PLC0415 (heavy: peft loads on first use)

    if ctx.profile == "a100" and (
        why := current().gpu_only_reason("the a100 profile compares Llama 3.1 8B with its QLoRA adapter")
    ):
        ctx.skip(why)
    adapter = _adapter(cfg, ctx)
    base_id, lora_r, steps = adapter.params["base_model"], adapter.params["lora_r"], adapter.metrics.get("steps")
    prompts = generation.load_eval_prompts()[: cfg.n_prompts]
    texts = [p["prompt"] for p in prompts]
    tput_texts = texts[: cfg.tput_prompts]
    held_out = load_training_set("eval")
    held_out = held_out[: cfg.n_heldout] if cfg.n_heldout else held_out
    ctx.dataset("phase09-ai-infra-qa/eval (held-out reference answers)", n=len(held_out), sha256=dataset_sha256())

    # The adapter is applied to a full-precision base (bf16 on GPU): merging into an NF4 base is lossy.
    model, tok, _ = sft.load_base(base_id, qlora=False)
    model.eval()
    ctx.model(
        base_id,
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        n_params=sum(p.numel() for p in model.parameters()),
    )
    ctx.log("generating with the base model")
    base_answers = generation.generate(model, tok, texts, cfg.max_new_tokens, batch_size=cfg.batch_size)

    model = PeftModel.from_pretrained(model, str(adapter.path))
    model.eval()
    trained = adapter.metrics.get("epochs")
    ctx.model(
        base_id,
        adapter=f"{adapter.id} (r={lora_r}, {steps} steps"
        + (f", {trained:.2f} epochs)" if trained is not None else ")"),
    )
    ctx.log(f"held-out answer loss on {len(held_out)} reference answers, base and fine-tuned")
    rows = sft.to_prompt_completion(held_out)
    with model.disable_adapter():
        loss_base = answer_losses(model, tok, rows)
    loss_tuned = answer_losses(model, tok, rows)
    ctx.log("generating with the adapter (unmerged)")
    tuned_answers = generation.generate(model, tok, texts, cfg.max_new_tokens, batch_size=cfg.batch_size)
    ctx.log("timing base / unmerged / merged, interleaved")
    rates, unmerged_texts = _interleaved_throughput(model, tok, tput_texts, cfg)
    model = model.merge_and_unload()  # the deployment form: plain Linear layers again
    rate, merged_texts = _tps(model, tok, tput_texts, cfg)
    rates["merge_and_unload"] = [rate]
    tput = {k: statistics.median(v) for k, v in rates.items()}

    # --- the main number: held-out answer loss, per row ------------------------------------------
    n_rows = len(rows)
    mean_base, mean_tuned = statistics.mean(loss_base), statistics.mean(loss_tuned)
    improved = sum(t < b for b, t in zip(loss_base, loss_tuned))
    ctx.metric(
        "heldout_loss_base",
        round(mean_base, 4),
        "nats/token",
        higher_is_better=False,
        description=f"base model: mean over {n_rows} held-out rows of the reference answer's mean token NLL",
    )
    ctx.metric(
        "heldout_loss_tuned",
        round(mean_tuned, 4),
        "nats/token",
        higher_is_better=False,
        description="the same rows through the fine-tuned model (adapter unmerged)",
    )
    ctx.metric(
        "heldout_loss_delta",
        round(mean_tuned - mean_base, 4),
        "nats/token",
        higher_is_better=False,
        description="tuned − base (negative: the fine-tune expects the held-out answers more)",
    )
    ctx.metric(
        "heldout_rows_improved",
        improved,
        f"of {n_rows}",
        higher_is_better=True,
        description="held-out rows whose answer loss is lower after fine-tuning",
    )
    ctx.table(
        "heldout_loss",
        [
            [r["id"], r["topic"], round(b, 3), round(t, 3), round(t - b, 3)]
            for r, b, t in zip(held_out, loss_base, loss_tuned)
        ],
        ["row", "topic", "base loss", "tuned loss", "Δ"],
        title=f"Answer-token loss on {n_rows} held-out reference answers (nats/token), base vs fine-tuned",
    )

    # --- mechanical checks on generated answers -----------------------------------------------
    epochs_text = f", {trained:.2f} epochs" if trained is not None else ""
    table, md = (
        [],
        [
            "# Before/after: base vs SFT adapter",
            "",
            f"Base `{base_id}`; adapter `{adapter.id}`, r={lora_r} after {steps} steps{epochs_text} "
            f"on {adapter.params['subset'] or 'all'} training rows. Greedy decoding, repetition penalty "
            f"{generation.GEN_KWARGS['repetition_penalty']}, max {cfg.max_new_tokens} new tokens. Key-term "
            "coverage counts whole words and leaves out the key terms the prompt already contains.",
            "",
        ],
    )
    cov = {"base": [], "tuned": []}
    asks = {"base": 0, "tuned": 0}
    flags = {"base": 0, "tuned": 0}
    for p, b, t in zip(prompts, base_answers, tuned_answers):
        terms = generation.answer_terms(p["prompt"], p["key_terms"])
        row = [p["id"], len(terms)]
        for name, ans in (("base", b), ("tuned", t)):
            c = generation.key_term_coverage(ans, p["key_terms"], p["prompt"])
            q = generation.answers_with_question(ans)
            f = [w for w in p.get("red_flags", []) if w in ans.lower()]
            cov[name].append(c)
            asks[name] += q
            flags[name] += bool(f)
            row += [_round(c), "yes" if q else "", ", ".join(f), len(ans.split())]
        table.append(row)
        md += [
            f"## {p['id']}: {p['prompt']}",
            "",
            f"key terms an answer can earn: {', '.join(terms) or 'none (all are in the prompt)'}",
            "",
            "| | base | fine-tuned |",
            "|---|---|---|",
            f"| answer | {_cell(b)} | {_cell(t)} |",
            f"| key-term coverage | {_pct(row[2])} | {_pct(row[6])} |",
            f"| answers with a question | {row[3] or 'no'} | {row[7] or 'no'} |",
            f"| red flags | {row[4] or '-'} | {row[8] or '-'} |",
            "",
        ]
    ctx.artifact("before_after.md").write_text("\n".join(md))
    ctx.table(
        "prompts",
        table,
        [
            "prompt",
            "key terms not in prompt",
            "base coverage",
            "base asks?",
            "base red flags",
            "base words",
            "tuned coverage",
            "tuned asks?",
            "tuned red flags",
            "tuned words",
        ],
        title=f"{len(prompts)} domain prompts, base vs fine-tuned (full text in before_after.md)",
    )

    n = len(prompts)
    cov_base, cov_tuned = generation.mean_coverage(cov["base"]), generation.mean_coverage(cov["tuned"])
    scored = sum(c is not None for c in cov["base"])
    for name, value in (("base", cov_base), ("tuned", cov_tuned)):
        ctx.metric(
            f"{name}_key_term_coverage",
            _round(value, 3),
            "",
            higher_is_better=True,
            description=f"whole-word key terms not in the prompt, mean over the {scored} prompts that have any",
        )
    ctx.metric("base_answers_with_question", asks["base"], f"of {n}", higher_is_better=False)
    ctx.metric("tuned_answers_with_question", asks["tuned"], f"of {n}", higher_is_better=False)
    ctx.metric("base_red_flags", flags["base"], "answers", higher_is_better=False)
    ctx.metric("tuned_red_flags", flags["tuned"], "answers", higher_is_better=False)
    for k, v in tput.items():
        ctx.metric(f"tokens_per_s_{k}", round(v, 2), "tok/s", higher_is_better=True)
    base_tput = tput["base"]
    noise = (max(rates["base"]) - min(rates["base"])) / base_tput
    penalty = 100 * (1 - tput["unmerged"] / base_tput)
    stream = "single stream" if len(tput_texts) == 1 else f"batch {len(tput_texts)}"
    ctx.metric(
        "unmerged_penalty_pct",
        round(penalty, 1),
        "%",
        higher_is_better=False,
        description=f"1 - unmerged/base throughput, {stream}, medians of interleaved rounds",
    )
    ctx.metric("merged_vs_base_ratio", round(tput["merged"] / base_tput, 3), "")
    ctx.metric(
        "base_timing_spread_pct",
        round(100 * noise, 1),
        "%",
        description="(max - min) / median of the base rounds: the noise floor of this comparison",
    )
    same = sum(a == b for a, b in zip(unmerged_texts, merged_texts)) / len(merged_texts)
    ctx.metric(
        "merged_matches_unmerged",
        round(same, 2),
        "share",
        description="greedy outputs identical after merge_and_unload (numerics check)",
    )
    ctx.table(
        "throughput",
        [[k, round(v, 2), round(v / base_tput, 3), ", ".join(f"{r:.1f}" for r in rates[k])] for k, v in tput.items()],
        ["variant", "tokens/s (median)", "vs base", "rounds"],
        title=f"Generation throughput, {stream}, {cfg.tput_tokens} forced tokens, "
        f"{cfg.tput_repeats} interleaved rounds",
    )

    direction = "lower" if mean_tuned < mean_base else "not lower"
    ctx.finding(
        f"Held-out answer loss (the before/after number): {mean_base:.3f} nats/token for the base model, "
        f"{mean_tuned:.3f} fine-tuned ({mean_tuned - mean_base:+.3f}), {direction}; lower on {improved} of "
        f"{n_rows} held-out reference answers (per-row table). Adapter: {steps} steps{epochs_text} over "
        f"{adapter.params['subset'] or 'all'} training rows. It says whether the model now expects the domain's "
        "answers; it does not say whether its own generations are right (read before_after.md)."
    )
    better = [p["id"] for p, b, t in zip(prompts, cov["base"], cov["tuned"]) if b is not None and t > b]
    worse = [p["id"] for p, b, t in zip(prompts, cov["base"], cov["tuned"]) if b is not None and t < b]
    ctx.finding(
        f"Key-term coverage of generated answers (whole words, key terms already in the prompt left out; "
        f"{scored} of {n} prompts have terms left): {_fmt(cov_base)} (base) -> {_fmt(cov_tuned)} (fine-tuned); "
        f"up on {len(better)} prompts ({', '.join(better) or 'none'}), down on {len(worse)} "
        f"({', '.join(worse) or 'none'}). A vocabulary proxy over a few greedy answers, not a correctness score."
    )
    if cov_base is not None and cov_tuned is not None and cov_tuned <= cov_base and mean_tuned < mean_base:
        ctx.finding(
            "The fine-tune lowered the held-out answer loss but its greedy answers did not gain key terms: "
            "it moved which tokens the model expects more than what the model says at this size; the "
            "seed's point that fine-tuning does not conjure knowledge holds here too (Phase 12 retrieves it)."
        )
    ctx.finding(
        f"Seed's hallucinations checked by red-flag terms (roofline as psychology, Tenstorrent as Chinese, "
        f"Chinchilla as an animal): base {flags['base']}, fine-tuned {flags['tuned']} answers flagged. "
        "Red flags only catch those specific errors: an answer can be free of them and still invented "
        "(read before_after.md)."
    )
    ctx.finding(
        f"'Answers with a question' (ends on '?' or half its sentences are questions): base "
        f"{asks['base']}/{n}, fine-tuned {asks['tuned']}/{n}. The seed's adapter learned it from Socratic "
        "pairs; this dataset has none, so a rise here would come from the base model, not the data."
    )
    ratio = tput["merged"] / base_tput
    verdict = (
        "back to base speed: merging removes the LoRA cost"
        if abs(1 - ratio) <= max(noise, 0.1)
        else f"not back to base speed, a gap larger than the {100 * noise:.0f}% between the two base timings; "
        "the merged model has the base's shapes and FLOPs, so this run cannot attribute the gap"
    )
    measured = (
        "beyond the noise"
        if penalty / 100 > noise
        else f"within this run's noise ({100 * noise:.0f}% spread between base rounds), so not conclusive"
    )
    seed = EXERCISE.seed("unmerged_penalty_pct")
    ctx.finding(
        f"Throughput ({stream}): unmerged adapter {penalty:.0f}% slower than the base, {measured} "
        f"(seed: {seed}%); merged {ratio:.2f}x base, {verdict}. Greedy outputs after "
        f"merge_and_unload match the unmerged ones on {same:.0%} of the timed prompts."
    )
    if not torch.cuda.is_available():
        ctx.finding(
            "On a CPU the unmerged penalty is the extra skinny matmuls per projection with no launch "
            "overhead; on a GPU at batch 1 kernel launches dominate and the penalty is larger."
        )
    ctx.failure_mode(
        "Loading a second adapter onto a PeftModel stacks it on the first: load every variant "
        "fresh from the base (the seed's Phase 10 lesson)."
    )


def _round(value, digits: int = 2):
    return None if value is None else round(value, digits)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pct(value) -> str:
    return "n/a (all key terms in the prompt)" if value is None else f"{value:.2f}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


EXERCISE = Exercise(
    id="phase09.before_after",
    title="Before/after: held-out answer loss, 10 domain prompts side by side, and the unmerged-adapter cost",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": dict(max_new_tokens=96, batch_size=10, tput_prompts=1, tput_tokens=48, tput_repeats=3),
        "a100": dict(max_new_tokens=256, batch_size=10, tput_prompts=1, tput_tokens=128, tput_repeats=3),
    },
    tiny=dict(
        n_prompts=2, max_new_tokens=8, tput_prompts=1, tput_tokens=4, tput_repeats=1, adapter_steps=1, n_heldout=2
    ),
    smoke=dict(n_prompts=2, max_new_tokens=8, tput_tokens=4, tput_repeats=1, n_heldout=2),
    references=REFERENCES,
    summary_metrics=(
        "heldout_loss_base",
        "heldout_loss_tuned",
        "heldout_rows_improved",
        "tuned_key_term_coverage",
        "unmerged_penalty_pct",
    ),
    needs=(sft.SFT_ADAPTER,),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
