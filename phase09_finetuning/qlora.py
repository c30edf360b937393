"""9.2 QLoRA end to end: NF4 base + bf16 LoRA adapters, trained with trl's SFTTrainer.

a100 profile = the seed's run: meta-llama/Llama-3.1-8B-Instruct loaded in 4-bit NF4 (double quant,
bf16 compute), LoRA r=16 (alpha 32, dropout 0.05) on q,k,v,o,gate,up,down, 3 epochs, lr 2e-4,
batch 4 x grad-accum 4, paged 8-bit AdamW, cosine schedule, gradient checkpointing. The seed
published r, epochs and step count only; the rest is the standard QLoRA recipe (see sft.SFT_RECIPES).

cpu profile: the embedded chat model (``lab.models.EMBEDDED_LLM``), the same code path twice: one full epoch as plain LoRA (fp32
base; this adapter is stored as ``phase09.sft_adapter`` for Phase 10), then a few steps as NF4 QLoRA
(bitsandbytes on CPU), so the two can be compared on loss, time and memory. The exact trainable-parameter count of
Llama 3.1 8B at r=16 is computed on the meta device either way (no weights needed).
"""

from __future__ import annotations

import tempfile

from lab import Exercise, ExerciseConfig, Reference, RunContext, tiny_models
from lab.artifacts import Recipe, default_store
from lab.device import current, quantization_label
from lab.models import DEFAULT_LLM, EMBEDDED_LLM
from phase09_finetuning import sft
from phase09_finetuning.dataset import dataset_sha256, load_training_set

REFERENCES = (
    Reference("llama8b_lora_params", 41_943_040, "params", "seed: Llama 3.1 8B r=16 trainable"),
    Reference("llama8b_lora_pct", 0.52, "%", "seed"),
    Reference("train_time_s", 310, "s", "seed: 5m10s on A100 80GB, 3 epochs"),
    Reference("steps", 102, "steps", "seed"),
    Reference("epochs", 3, "epochs", "seed"),
    Reference("loss_first", 2.51, "", "seed: step 1"),
    Reference("loss_final", 1.533, "", "seed"),
    Reference("adapter_mb", 161, "MB", "seed"),
    Reference("trainable_pct", 0.52, "%", "seed (of Llama 3.1 8B)"),
    Reference("peak_memory_gb", 19, "GB", "seed: 'base model VRAM (NF4)', ~23% of 80 GB total"),
)


class Config(ExerciseConfig):
    model: str = DEFAULT_LLM
    runs: list[str] = ["lora", "qlora"]  # the first one is the canonical run (publishes its adapter)
    lora_r: int = 16
    max_steps: int = 0  # 0 = train for `epochs`
    epochs: float = 3.0
    qlora_max_steps: int = 0  # cpu: a shorter budget for the NF4 comparison run (0 = same as max_steps)
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    lr: float = 2e-4
    subset: int = 0  # use only the first N training rows (0 = all)
    publish_adapter: bool = True  # store the canonical run's adapter (phase09.sft_adapter, keyed by its recipe)
    check_peft_count: bool = True  # cross-check the meta-device count with peft (slower)
    eval_rows: int = 8  # held-out rows scored after training (and before it, for the canonical LoRA run)
    last_k: int = 3  # final loss = mean of the last k logged steps (one batch of 2 is noisy)


def llama8b_reference(ctx: RunContext, r: int, check_with_peft: bool) -> None:
    """Exact LoRA params for Llama 3.1 8B at rank r, from its config on the meta device."""
    model = sft.meta_model(sft.llama31_8b_config())
    trainable = sft.lora_param_count(model, r)
    base = sum(p.numel() for p in model.parameters())
    if check_with_peft and sft.peft_trainable_count(model, r) != trainable:
        raise AssertionError("peft's LoRA parameter count differs from r·(in+out) over the targets")
    ctx.metric(
        "llama8b_lora_params",
        trainable,
        "params",
        description=f"Llama 3.1 8B, LoRA r={r} on q,k,v,o,gate,up,down (meta device, exact)",
    )
    ctx.metric(
        "llama8b_lora_pct", round(100 * trainable / base, 3), "%", description=f"of the {base:,} base parameters"
    )


def run(cfg: Config, ctx: RunContext) -> None:

    device = current()
    on_gpu = device.cuda
    if ctx.profile == "a100" and (why := device.gpu_only_reason("the a100 profile trains Llama 3.1 8B in NF4")):
        ctx.skip(why + ". Run it on an A100 with HF_TOKEN set for the gated weights.")
    llama_r = cfg.lora_r
    llama8b_reference(ctx, llama_r, cfg.check_peft_count)

    rows = load_training_set("train")
    if cfg.subset:
        rows = rows[: cfg.subset]
    held_out = load_training_set("eval")[: cfg.eval_rows] if cfg.eval_rows else None
    ctx.dataset("phase09-ai-infra-qa/train", n=len(rows), sha256=dataset_sha256())

    results = {}
    store = default_store()
    for i, kind in enumerate(cfg.runs):
        if kind not in ("lora", "qlora"):
            raise ValueError(f"runs: unknown run kind {kind!r} (use 'lora' or 'qlora')")
        canonical = i == 0
        steps = cfg.max_steps if (canonical or not cfg.qlora_max_steps) else cfg.qlora_max_steps
        ctx.log(
            f"training {kind} ({'canonical' if canonical else 'comparison'}) for "
            f"{steps or cfg.epochs} {'steps' if steps else 'epochs'}"
        )
        recipe = None
        if canonical and cfg.publish_adapter:  # stored under its recipe: --set changes give a new adapter
            recipe = Recipe(
                sft.SFT_ADAPTER.name,
                sft.sft_params(
                    model_id=cfg.model,
                    lora_r=cfg.lora_r,
                    qlora=kind == "qlora",
                    lr=cfg.lr,
                    batch_size=cfg.batch_size,
                    max_length=cfg.max_length,
                    max_steps=steps or None,
                    epochs=cfg.epochs,
                    grad_accum=cfg.grad_accum,
                    seed=cfg.seed,
                    subset=cfg.subset,
                ),
            )
        # the canonical adapter is built beside its place in the store; a comparison one is measured, then dropped
        with store.staging(recipe) if recipe else tempfile.TemporaryDirectory(prefix=f"phase09-{kind}-") as out:
            res = sft.train_sft(
                cfg.model,
                rows,
                out,
                lora_r=cfg.lora_r,
                qlora=kind == "qlora",
                max_steps=steps or None,
                epochs=None if steps else cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                grad_accum=cfg.grad_accum,
                max_length=cfg.max_length,
                seed=cfg.seed,
                eval_rows=held_out,
                eval_before=canonical and not (kind == "qlora" and not on_gpu),
                ctx=ctx,
            )
            if recipe is not None:
                ctx.publish_artifact(recipe, out, metrics=sft.adapter_metrics(res), build_s=res["train_time_s"])
        results[kind] = res
        ctx.model(
            cfg.model,
            dtype="nf4 base + lora" if kind == "qlora" else "fp32 base + lora",
            n_params=res["total_params"],
            quantization=quantization_label(sft.nf4_config()) if kind == "qlora" else None,
            adapter=f"lora r={cfg.lora_r} ({res['trainable_params']:,} trainable)",
            lora_targets=list(sft.LORA_TARGETS),
            trainer_args=res["trainer_args"],
            stand_in=tiny_models.describe(cfg.model) if ctx.smoke else None,
        )

    main_kind = cfg.runs[0]
    main = results[main_kind]
    ctx.metric("train_time_s", round(main["train_time_s"], 1), "s", higher_is_better=False)
    ctx.metric("steps", main["steps"], "steps")
    ctx.metric("epochs", main["epochs"], "epochs", description=f"passes over the {main['rows']} training rows")
    ctx.metric("s_per_step", round(main["s_per_step"], 2), "s", higher_is_better=False)
    tail = main["losses"][-cfg.last_k :]
    ctx.metric("loss_first", round(main["losses"][0], 4), "", description="training loss at step 1")
    ctx.metric(
        "loss_final",
        round(sum(tail) / len(tail), 4),
        "",
        higher_is_better=False,
        description=f"mean training loss of the last {len(tail)} steps",
    )
    if main["eval_loss"] is not None:
        ctx.metric(
            "eval_loss_after",
            round(main["eval_loss"], 4),
            "",
            higher_is_better=False,
            description=f"answer-token loss on {len(held_out)} held-out rows after training",
        )
    if main["eval_loss_before"] is not None:
        ctx.metric(
            "eval_loss_before",
            round(main["eval_loss_before"], 4),
            "",
            description="the same rows, base model before training",
        )
    ctx.metric("trainable_params", main["trainable_params"], "params")
    ctx.metric("trainable_pct", round(100 * main["trainable_params"] / main["total_params"], 3), "%")
    ctx.metric("adapter_mb", round(main["adapter_bytes"] / 1e6, 2), "MB", higher_is_better=False)
    ctx.metric(
        "peak_memory_gb",
        round(main["peak_memory_bytes"] / 1e9, 2),
        "GB",
        higher_is_better=False,
        description=main["peak_memory_kind"],
    )
    ctx.metric(
        "base_weights_gb",
        round(main["base_memory_bytes"] / 1e9, 3),
        "GB",
        higher_is_better=False,
        description="frozen base as stored (get_memory_footprint)",
    )

    rows_out = []
    for kind, res in results.items():
        ev = lambda v: None if v is None else round(v, 3)  # noqa: E731
        rows_out.append(
            [
                kind,
                res["steps"],
                round(res["losses"][0], 3),
                ev(res["eval_loss_before"]),
                ev(res["eval_loss"]),
                round(res["train_time_s"], 1),
                round(res["s_per_step"], 2),
                res["trainable_params"],
                round(res["adapter_bytes"] / 1e6, 2),
                round(res["base_memory_bytes"] / 1e9, 3),
            ]
        )
        if kind != main_kind:
            ctx.metric(f"{kind}_eval_loss_after", ev(res["eval_loss"]), "", higher_is_better=False)
            ctx.metric(f"{kind}_s_per_step", round(res["s_per_step"], 2), "s", higher_is_better=False)
            ctx.metric(
                f"{kind}_base_weights_gb", round(res["base_memory_bytes"] / 1e9, 3), "GB", higher_is_better=False
            )
    ctx.table(
        "runs",
        rows_out,
        [
            "run",
            "steps",
            "train loss step 1",
            "held-out loss before",
            "held-out loss after",
            "train s",
            "s/step",
            "trainable params",
            "adapter MB",
            "base weights GB",
        ],
        title=f"{cfg.model}: LoRA vs NF4 QLoRA, r={cfg.lora_r}",
    )

    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for kind, res in results.items():
        (line,) = ax.plot(res["loss_steps"], res["losses"], alpha=0.35, marker=".", label=f"{kind} (per step)")
        k = min(cfg.last_k, len(res["losses"]))
        smooth = [
            sum(res["losses"][max(0, i - k + 1) : i + 1]) / len(res["losses"][max(0, i - k + 1) : i + 1])
            for i in range(len(res["losses"]))
        ]
        ax.plot(res["loss_steps"], smooth, color=line.get_color(), label=f"{kind} (mean of {k})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(f"SFT loss, {cfg.model}, r={cfg.lora_r}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.artifact("loss_curve.png"), dpi=110)
    plt.close(fig)

    seed = EXERCISE.seed
    if main["eval_loss"] is not None and main["eval_loss_before"] is not None:
        ctx.finding(
            f"{main_kind}: held-out answer loss {main['eval_loss_before']:.3f} (base) -> "
            f"{main['eval_loss']:.3f} after {main['steps']} steps ({main['epochs']:.2f} epochs over "
            f"{main['rows']} rows); per-step training loss {main['losses'][0]:.3f} at step 1, "
            f"{sum(tail) / len(tail):.3f} over the last {len(tail)} (each step is one small batch, so it is "
            f"noisy). The seed's Llama 8B QLoRA went {seed('loss_first')} -> {seed('loss_final')} over "
            f"{seed('steps')} steps ({seed('epochs')} epochs): different model, data size and budget; "
            "compare the direction, not the numbers."
        )
    llama = ctx.metrics["llama8b_lora_params"]["value"], ctx.metrics["llama8b_lora_pct"]["value"]
    same = (
        "the seed's figure"
        if llama[0] == seed("llama8b_lora_params")
        else f"vs the seed's {seed('llama8b_lora_params'):,}"
    )
    ctx.finding(
        f"Trainable parameters are exact: {main['trainable_params']:,} for {cfg.model} at r={cfg.lora_r}; "
        f"Llama 3.1 8B at r={llama_r} gives {llama[0]:,} ({llama[1]:.2f}%) from its config on the meta "
        f"device, {same}."
    )
    if "qlora" in results and "lora" in results:
        q, lo = results["qlora"], results["lora"]
        speed = (
            "slower per step here, as expected: every forward dequantizes the base, so QLoRA buys memory, not speed"
            if q["s_per_step"] > lo["s_per_step"]
            else "not slower per step here, but the two runs were timed at different moments of a shared machine "
            f"({q['steps']} vs {lo['steps']} steps), so this run cannot rank their speed; every forward "
            "dequantizes the base, which costs time, not memory"
        )
        ctx.finding(
            f"NF4 QLoRA vs LoRA here: base weights {q['base_memory_bytes'] / 1e9:.3f} vs "
            f"{lo['base_memory_bytes'] / 1e9:.3f} GB, {q['s_per_step']:.2f} vs {lo['s_per_step']:.2f} s/step, "
            "same trainable params (only the frozen base is stored in 4 bit; embeddings and norms stay "
            f"unquantized, which is a large share of a {EMBEDDED_LLM.size_label} model). QLoRA was {speed}. On an A100 the 4-bit "
            "base is what lets an 8B model train on a fraction of the memory its bf16 weights need."
        )
    ctx.finding(
        f"Adapter file {main['adapter_bytes'] / 1e6:.1f} MB (fp32 LoRA matrices; no optimizer checkpoint "
        f"saved). The seed's {seed('adapter_mb')} MB is {llama[0] / 1e6:.1f}M params x 4 bytes = "
        f"{llama[0] * 4 / 2**20:.0f} MiB: also an fp32 adapter."
    )
    if not on_gpu:
        ctx.finding(
            "Timings are from a shared 2-core CPU (see hardware.load_avg_1m): they show the step "
            "budget, not what an A100 does."
        )
    ctx.failure_mode(
        "QLoRA on CPU: any eval-mode forward of a bitsandbytes Linear4bit (generate, an eval "
        "loop) repacks weights for inference and later training is silently wrong (flat loss). "
        "Train from a freshly loaded model and run no eval during QLoRA training."
    )
    ctx.failure_mode(
        "trl 1.x renamed arguments (SFTConfig(max_length=...), SFTTrainer(processing_class=...)) "
        "and defaults gradient_checkpointing/bf16 on: recipes written for trl 0.9 fail or slow down."
    )


_CPU = sft.SFT_RECIPES["cpu"]

EXERCISE = Exercise(
    id="phase09.qlora",
    title="QLoRA end to end: NF4 base + LoRA adapters with trl SFTTrainer",
    run=run,
    config_cls=Config,
    profiles={
        # the canonical (first) run is exactly sft.SFT_RECIPES["cpu"], the adapter Phase 10 starts from
        "cpu": dict(
            model=DEFAULT_LLM,
            runs=["lora", "qlora"],
            lora_r=_CPU["lora_r"],
            max_steps=0,
            epochs=_CPU["epochs"],
            qlora_max_steps=3,
            batch_size=_CPU["batch_size"],
            max_length=_CPU["max_length"],
            lr=_CPU["lr"],
            check_peft_count=False,
            eval_rows=8,
        ),
        "a100": dict(
            model=sft.LLAMA_8B,
            runs=["qlora"],
            lora_r=16,
            epochs=3.0,
            max_steps=0,
            batch_size=4,
            grad_accum=4,
            max_length=1024,
            lr=2e-4,
        ),
    },
    # the canonical run publishes exactly the smoke-sized a100 recipe (sft.SMOKE_SIZES) later phases load
    smoke=dict(sft.SMOKE_SIZES, eval_rows=2, last_k=1, check_peft_count=False),
    tiny=dict(
        max_steps=2,
        qlora_max_steps=2,
        batch_size=2,
        max_length=48,
        subset=4,
        publish_adapter=False,
        check_peft_count=False,
        eval_rows=2,
        last_k=1,
    ),
    references=REFERENCES,
    summary_metrics=("loss_first", "loss_final", "train_time_s", "trainable_params", "adapter_mb"),
    produces=(sft.SFT_ADAPTER,),
    methods={
        "cpu": f"substitute: fp32-base LoRA on {EMBEDDED_LLM.label} (headline run) in place of NF4 QLoRA on Llama "
        "3.1 8B; an NF4 run sits beside it",
        "a100": "same",
    },
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
