"""9.3 Rank sensitivity: LoRA r = 4, 8, 16, 32, 64 on the same data and hyperparameters.

What changes with rank: trainable parameters (exactly linear in r: r·Σ(in+out) over the targeted
projections), adapter size, and capacity (final loss). What barely changes: step time, because the
frozen base's forward and backward dominate every step. alpha = 2r at every rank keeps alpha/r
fixed, so the sweep varies capacity rather than the effective learning rate.

Besides the final training loss (mean of the last steps, less noisy than the last one), each rank
is scored on the same held-out rows from the eval split after training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.device import current, quantization_label
from lab.models import DEFAULT_LLM, EMBEDDED_LLM
from phase09_finetuning import sft
from phase09_finetuning.dataset import dataset_sha256, load_training_set

SEED_SWEEP = {
    4: (10_485_760, 1.8055, 312),
    8: (20_971_520, 1.6771, 308),
    16: (41_943_040, 1.5330, 310),
    32: (83_886_080, 1.3784, 309),
    64: (167_772_160, 1.1982, 312),
}  # r: params, loss, s


class Config(ExerciseConfig):
    model: str = DEFAULT_LLM
    ranks: list[int] = [4, 8, 16, 32, 64]
    qlora: bool = False
    max_steps: int = 0  # 0 = train for `epochs`
    epochs: float = 3.0
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    lr: float = 2e-4
    subset: int = 0  # first N training rows (0 = all)
    eval_rows: int = 8  # held-out rows scored after training (0 = skip)
    last_k: int = 3  # final loss = mean of the last k logged steps


def run(cfg: Config, ctx: RunContext) -> None:

    if ctx.profile == "a100" and (
        why := current().gpu_only_reason("the a100 profile sweeps Llama 3.1 8B QLoRA adapters")
    ):
        ctx.skip(why)

    llama = sft.meta_model(sft.llama31_8b_config())
    exact = {r: sft.lora_param_count(llama, r) for r in cfg.ranks}
    for r in cfg.ranks:
        ctx.metric(f"llama8b_params_r{r}", exact[r], "params", description="exact, meta device")

    rows = load_training_set("train")
    rows = rows[: cfg.subset] if cfg.subset else rows
    held_out = load_training_set("eval")[: cfg.eval_rows] if cfg.eval_rows else None
    ctx.dataset("phase09-ai-infra-qa/train", n=len(rows), sha256=dataset_sha256())

    results = {}
    for r in ctx.progress(cfg.ranks, "rank sweep"):
        with tempfile.TemporaryDirectory(prefix=f"phase09-r{r}-") as tmp:  # sized, then discarded
            results[r] = sft.train_sft(
                cfg.model,
                rows,
                Path(tmp) / "adapter",
                lora_r=r,
                qlora=cfg.qlora,
                max_steps=cfg.max_steps or None,
                epochs=None if cfg.max_steps else cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                grad_accum=cfg.grad_accum,
                max_length=cfg.max_length,
                seed=cfg.seed,
                eval_rows=held_out,
                ctx=ctx,
            )
    ctx.model(
        cfg.model,
        dtype="nf4 base" if cfg.qlora else "fp32 base",
        n_params=results[cfg.ranks[0]]["total_params"],
        adapter=f"lora r in {cfg.ranks}",
        quantization=quantization_label(sft.nf4_config()) if cfg.qlora else None,
        lora_targets=list(sft.LORA_TARGETS),
        trainer_args=results[cfg.ranks[0]]["trainer_args"],
    )

    table = []
    for r in cfg.ranks:
        res = results[r]
        final = sum(res["losses"][-cfg.last_k :]) / len(res["losses"][-cfg.last_k :])
        ctx.metric(f"final_loss_r{r}", round(final, 4), "", higher_is_better=False)
        ctx.metric(f"train_time_s_r{r}", round(res["train_time_s"], 1), "s", higher_is_better=False)
        ctx.metric(f"trainable_params_r{r}", res["trainable_params"], "params")
        if res["eval_loss"] is not None:
            ctx.metric(f"eval_loss_r{r}", round(res["eval_loss"], 4), "", higher_is_better=False)
        seed = SEED_SWEEP.get(r, (None, None, None))
        table.append(
            [
                r,
                res["trainable_params"],
                exact[r],
                seed[0],
                round(final, 4),
                None if res["eval_loss"] is None else round(res["eval_loss"], 4),
                seed[1],
                round(res["train_time_s"], 1),
                seed[2],
                round(res["adapter_bytes"] / 1e6, 2),
            ]
        )
    ctx.table(
        "sweep",
        table,
        [
            "rank",
            f"trainable ({cfg.model})",
            "Llama 8B (exact)",
            "Llama 8B (seed)",
            f"final loss (mean last {cfg.last_k})",
            "held-out loss",
            "seed final loss",
            "train s",
            "seed train s",
            "adapter MB",
        ],
        title="LoRA rank sweep",
    )

    times = [results[r]["train_time_s"] for r in cfg.ranks]
    finals = [row[4] for row in table]
    evals = [row[5] for row in table]
    spread = (max(times) - min(times)) / (sum(times) / len(times))
    ctx.metric(
        "time_spread_pct",
        round(100 * spread, 1),
        "%",
        higher_is_better=False,
        description="(max - min) / mean training time across ranks",
    )
    monotone = all(b <= a for a, b in zip(finals, finals[1:]))
    ctx.metric(
        "loss_monotone_in_rank", int(monotone), "bool", description="1 if final loss never rises as rank doubles"
    )

    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(cfg.ranks, finals, "o-", label=f"train (mean last {cfg.last_k})")
    if all(e is not None for e in evals):
        ax1.plot(cfg.ranks, evals, "s--", label="held-out")
    seed_r = [r for r in cfg.ranks if r in SEED_SWEEP]
    ax1.plot(seed_r, [SEED_SWEEP[r][1] for r in seed_r], "x:", color="grey", label="seed (Llama 8B, A100)")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("LoRA rank r")
    ax1.set_ylabel("loss")
    ax1.legend(fontsize=8)
    ax2.bar([str(r) for r in cfg.ranks], times)
    ax2.set_xlabel("LoRA rank r")
    ax2.set_ylabel("training time (s)")
    fig.suptitle(f"Rank sensitivity, {cfg.model}")
    fig.tight_layout()
    fig.savefig(ctx.artifact("rank_sweep.png"), dpi=110)
    plt.close(fig)

    lo, hi = cfg.ranks[0], cfg.ranks[-1]
    ctx.finding(
        f"Trainable parameters are exactly linear in r ({results[lo]['trainable_params']:,} at r={lo} -> "
        f"{results[hi]['trainable_params']:,} at r={hi}); for Llama 3.1 8B the meta-device counts reproduce "
        "the seed's column (10,485,760 ... 167,772,160)."
    )
    ctx.finding(
        f"Training time spread across ranks: {100 * spread:.0f}% of the mean (seed: 308-312 s, ~1%). "
        "Rank only adds two thin matmuls per projection; the frozen base's forward/backward dominates. "
        "On a shared CPU the spread is mostly contention noise (see hardware.load_avg_1m)."
    )
    trend = "never rises" if monotone else "is not monotone"
    ctx.finding(
        f"Final training loss {trend} with rank here ({', '.join(f'r{r}: {f:.3f}' for r, f in zip(cfg.ranks, finals))}); "
        "the seed saw a steady fall with no plateau (1.81 -> 1.20). With a step budget this small, the "
        "difference between ranks is how fast the adapter can move, not a capacity ceiling, so this "
        "run cannot confirm or refute a plateau; the held-out column is the fairer comparison."
    )


EXERCISE = Exercise(
    id="phase09.rank_sweep",
    title="LoRA rank sensitivity: r = 4, 8, 16, 32, 64",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": dict(
            model=DEFAULT_LLM, ranks=[4, 8, 16, 32, 64], max_steps=5, batch_size=2, max_length=96, lr=5e-4, eval_rows=6
        ),
        "a100": dict(
            model=sft.LLAMA_8B,
            ranks=[4, 8, 16, 32, 64],
            qlora=True,
            epochs=3.0,
            max_steps=0,
            batch_size=4,
            grad_accum=4,
            max_length=1024,
            lr=2e-4,
            eval_rows=30,
        ),
    },
    tiny=dict(ranks=[4, 64], max_steps=2, batch_size=2, max_length=64, subset=4, eval_rows=2, last_k=1),
    smoke=dict(max_steps=1, subset=4, batch_size=2, grad_accum=2, max_length=96, eval_rows=2, last_k=1),
    references=(
        Reference("llama8b_params_r4", 10_485_760, "params", "seed"),
        Reference("llama8b_params_r64", 167_772_160, "params", "seed"),
        Reference("final_loss_r4", 1.8055, "", "seed, Llama 8B"),
        Reference("final_loss_r16", 1.5330, "", "seed, Llama 8B"),
        Reference("final_loss_r64", 1.1982, "", "seed, Llama 8B"),
        Reference("train_time_s_r16", 310, "s", "seed, A100"),
        Reference("time_spread_pct", 1.3, "%", "seed: 308-312 s"),
        Reference("loss_monotone_in_rank", 1, "bool", "seed: no plateau"),
    ),
    summary_metrics=("final_loss_r4", "final_loss_r64", "time_spread_pct"),
    methods={
        "cpu": f"substitute: fp32-base LoRA on {EMBEDDED_LLM.label} in place of NF4 QLoRA on Llama 3.1 8B",
        "a100": "same",
    },
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
