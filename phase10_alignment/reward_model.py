"""10.1 Reward model: a scalar head trained with the Bradley-Terry loss on human preference pairs.

A reward model reads a whole dialogue and outputs one number. It is never told what a "good"
answer is; it only sees pairs where annotators preferred one final answer over the other, and the
Bradley-Terry model says P(chosen ≻ rejected) = σ(r_chosen − r_rejected). Maximising that
likelihood gives the loss written out below — the loss *is* the lesson, so this exercise uses a
plain torch loop rather than trl's RewardTrainer (which computes the same thing).

The model is a causal LM with its LM head replaced by a randomly initialised 1-output linear head
(``AutoModelForSequenceClassification``, num_labels=1), read at the last real token. That is why
loading prints ``score.weight | MISSING``: the checkpoint has no such tensor — expected, not an
error. The run records the missing keys it saw.

Profiles:
- a100 (the seed's): Llama 3.2 1B Instruct, full fine-tune, 5,000 HH-RLHF train pairs, held out on
  500 test pairs. Weights stay fp32 (the optimizer's master copy) and the forward runs under bf16
  autocast: plain AdamW at lr 1e-5 moves each weight by ~1e-5 per step, less than half the spacing
  between neighbouring bf16 numbers for most weights of a trained model, so bf16 weights would round
  most updates back to where they were (``surviving_update_share`` measures it on the model's own
  weights; a bf16-weight full fine-tune is refused as a config error).
- cpu: the embedded chat model (135M) with the backbone frozen. Forwarding 135M parameters runs at ~100 tokens/s on
  a shared core here, so the backbone's last-token features are computed once and only the scalar
  head (576 weights) trains, for several epochs — a linear reward probe. Same loss, same head, far
  less capacity: expect accuracy only a little above the 0.5 of a coin.

Like with like: the seed's "final accuracy 0.75" and "margin 1.46" are its last logged *training
step* (a batch of 4 pairs; "individual step accuracy bounced between 0.25 and 1.0"), not a held-out
score. The run reports that quantity at the same batch size (``last_step_*``) against the seed's
figures, and its held-out accuracy and margin separately (the seed published none).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import model_validator

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.device import current
from lab.errors import MissingResource
from lab.models import DEFAULT_LLM, EMBEDDED_LLM
from lab.repeatable import repeatable
from phase09_finetuning.sft import model_path
from phase10_alignment.data import load_pairs


class Config(ExerciseConfig):
    model: str = DEFAULT_LLM
    data_source: Literal["local", "hub"] = "local"
    train_split: str = "train"
    eval_split: str = "test"
    n_train: int = 128  # pairs
    n_eval: int = 64
    max_length: int = 32  # tokens per dialogue, truncated from the left (the final answers are at the end)
    train_backbone: bool = False  # False: frozen backbone, cached features, only the head trains
    epochs: int = 10
    batch_size: int = 4  # pairs per step (the seed's batch, so its last-step figures compare like with like)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    dtype: Literal["float32", "bfloat16"] = "float32"  # the weights (and so the optimizer's master copy)
    autocast: Literal["none", "bfloat16"] = "none"  # compute dtype of the forward pass
    require_cuda: bool = False
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _trained_weights_stay_fp32(self):
        if self.train_backbone and self.dtype != "float32":
            raise ValueError(
                f"train_backbone with dtype={self.dtype}: AdamW updates of ~learning_rate round away in "
                f"{self.dtype} weights; keep dtype=float32 and set autocast=bfloat16 for bf16 compute"
            )
        return self


REFERENCES = (
    Reference(
        "last_step_accuracy",
        0.75,
        "",
        "seed: 'final accuracy' = its last logged training step, a batch of 4 pairs (not held out); Llama 3.2 1B",
    ),
    Reference("last_step_margin", 1.4609, "", "seed: 'final reward margin', the same last training step"),
    Reference("last_step_loss", 0.6445, "", "seed: 'final loss', the same last training step"),
    Reference("train_pairs", 5000, "pairs", "seed: HH-RLHF train pairs"),
)


# --- the lesson: the loss and what it is judged by ----------------------------------------------------


def bradley_terry_loss(r_chosen, r_rejected):
    """Mean of −log σ(r_chosen − r_rejected): the negative log-likelihood that the annotator's pick wins.

    Equal rewards cost log 2 ≈ 0.693 (a coin); the loss only cares about the difference, so adding a
    constant to every reward changes nothing — rewards are meaningful only relative to each other.
    """
    import torch.nn.functional as F  # noqa: PLC0415 (heavy: torch loads on first use)

    return -F.logsigmoid(r_chosen - r_rejected).mean()


def surviving_update_share(weights, step: float, dtype) -> float:
    """Share of ``weights`` that change when ``step`` is added and the result is stored in ``dtype``.

    AdamW's first steps move every weight by about the learning rate (m/√v ≈ ±1), so with
    ``step = lr`` this is the share of an update that survives storage: near 1 in fp32, and in bf16
    (8 significant bits) only for weights within a few hundred times lr of zero.
    """
    stored = weights.detach().to(dtype)
    return (((weights.detach().float() + step).to(dtype)) != stored).float().mean().item()


def preference_stats(r_chosen, r_rejected) -> tuple[float, float]:
    """(accuracy, mean margin): how often r_chosen > r_rejected (a tie counts half) and by how much."""
    diff = (r_chosen - r_rejected).float()
    accuracy = ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()
    return accuracy, diff.mean().item()


# --- model and data ---------------------------------------------------------------------------------


def load_reward_model(model_id: str, dtype: str, device: str):
    """(model, tokenizer, missing_keys): a sequence classifier with one output and a fresh head."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

    path = model_path(model_id)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.truncation_side = "left"  # keep the end of the dialogue: that is where chosen and rejected differ
    tok.padding_side = "right"
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=getattr(torch, dtype), output_loading_info=True
    )
    model.config.pad_token_id = tok.pad_token_id
    return model.to(device), tok, sorted(info.get("missing_keys", []))


def _encode(tok, texts: list[str], max_length: int, device: str):
    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def last_token_features(model, tok, texts: list[str], max_length: int, device: str, batch_size: int = 16):
    """Backbone hidden state at each text's last real token: exactly what the score head reads."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    feats = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = _encode(tok, [texts[i] for i in idx], max_length, device)
            hidden = model.base_model(**enc).last_hidden_state
            last = enc["attention_mask"].sum(dim=1) - 1  # right padding: last real token
            feats.append((idx, hidden[torch.arange(len(idx)), last].float()))
    out = torch.empty(len(texts), feats[0][1].shape[-1])
    for idx, f in feats:
        out[idx] = f.cpu()
    return out


def full_rewards(model, tok, texts: list[str], max_length: int, device: str):
    """Rewards through the whole model (used when the backbone trains)."""
    return model(**_encode(tok, texts, max_length, device)).logits[:, 0].float()


# --- the run ------------------------------------------------------------------------------------------


def run(cfg: Config, ctx: RunContext) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    device = current().torch_device()
    if cfg.require_cuda and (
        why := current().gpu_only_reason("the a100 profile full-fine-tunes Llama 3.2 1B (fp32 weights, bf16 autocast)")
    ):
        ctx.skip(why)
    repeatable(
        cfg.seed
    )  # before the load: the new score head is drawn from torch's generator; CPU kernels deterministic
    try:
        model, tok, missing = load_reward_model(cfg.model, cfg.dtype, device)
    except MissingResource as err:
        ctx.skip(str(err))
    train, prov, dropped_train = load_pairs(cfg.data_source, cfg.train_split, 0, cfg.n_train)
    if cfg.data_source == "local":  # one file: the held-out pairs come after the training pairs
        held, _, dropped_eval = load_pairs("local", "", cfg.n_train, cfg.n_eval)
    else:
        held, _, dropped_eval = load_pairs("hub", cfg.eval_split, 0, cfg.n_eval)
    ctx.dataset(
        prov["id"],
        n=len(train) + len(held),
        sha256=prov["sha256"],
        train_pairs=len(train),
        eval_pairs=len(held),
        dropped=dropped_train + dropped_eval,
    )
    n_params = sum(p.numel() for p in model.parameters())
    compute = f"{cfg.dtype} weights" + (f", {cfg.autocast} autocast" if cfg.autocast != "none" else "")
    ctx.model(cfg.model, dtype=compute, n_params=n_params, adapter="1-output score head (new)")
    ctx.metric(
        "missing_keys_at_load",
        len(missing),
        "tensors",
        description="tensors absent from the checkpoint, initialised randomly: " + ", ".join(missing),
    )

    head = model.score
    # How much of one AdamW step survives in bf16 weights, on this model's embeddings: at this run's rate when the
    # whole model trains, else at the full fine-tune rate of the a100 profile (the head-only cpu run keeps fp32)
    step = cfg.learning_rate if cfg.train_backbone else EXERCISE.profiles["a100"]["learning_rate"]
    weights = model.get_input_embeddings().weight
    survive = {d: surviving_update_share(weights, step, getattr(torch, d)) for d in ("float32", "bfloat16")}
    ctx.metric(
        "bf16_update_survival",
        survive["bfloat16"],
        "share",
        description=f"embedding weights changed by a step of {step:g} (≈ one AdamW update at that rate) when "
        f"stored in bf16; in fp32: {survive['float32']:.3f}",
    )

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg.autocast == "bfloat16")

    splits = {"train": train, "eval": held}
    if cfg.train_backbone:
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        params = [p for p in model.parameters() if p.requires_grad]

        def score(split: str, idx: list[int], which: str):
            texts = [getattr(splits[split][i], which) for i in idx]
            with autocast():
                return full_rewards(model, tok, texts, cfg.max_length, device)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        head.weight.requires_grad_(True)
        params = list(head.parameters())
        started = time.perf_counter()
        keys = [(s, w) for s in splits for w in ("chosen_text", "rejected_text")]
        texts = [getattr(p, w) for s, w in keys for p in splits[s]]
        with autocast():
            feats = last_token_features(model, tok, texts, cfg.max_length, device)
        ctx.metric(
            "feature_time_s",
            time.perf_counter() - started,
            "s",
            higher_is_better=False,
            description=f"one frozen-backbone forward over {len(texts)} dialogues",
        )
        cached, offset = {}, 0
        for s, w in keys:
            cached[(s, w)] = feats[offset : offset + len(splits[s])]
            offset += len(splits[s])

        def score(split: str, idx: list[int], which: str):
            return head(cached[(split, which)][idx].to(device, head.weight.dtype))[:, 0].float()

    def evaluate() -> tuple[float, float, float]:
        model.eval()
        rc, rr = [], []
        with torch.no_grad():
            for start in range(0, len(held), cfg.batch_size):
                idx = list(range(start, min(start + cfg.batch_size, len(held))))
                rc.append(score("eval", idx, "chosen_text"))
                rr.append(score("eval", idx, "rejected_text"))
        rc, rr = torch.cat(rc), torch.cat(rr)
        acc, margin = preference_stats(rc, rr)
        return acc, margin, bradley_terry_loss(rc, rr).item()

    acc0, margin0, loss0 = evaluate()
    optim = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps, losses, accs, margins, evals = [], [], [], [], [(0, loss0, acc0)]
    gen = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    step = 0
    for epoch in ctx.progress(range(cfg.epochs), "reward model epochs"):
        model.train(cfg.train_backbone)
        order = torch.randperm(len(train), generator=gen).tolist()
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            r_c, r_r = score("train", idx, "chosen_text"), score("train", idx, "rejected_text")
            loss = bradley_terry_loss(r_c, r_r)
            optim.zero_grad()
            loss.backward()
            optim.step()
            step += 1
            acc, margin = preference_stats(r_c.detach(), r_r.detach())
            steps.append(step), losses.append(loss.item()), accs.append(acc), margins.append(margin)
        if (epoch + 1) % max(1, cfg.epochs // 4) == 0 or epoch + 1 == cfg.epochs:
            e_acc, _, e_loss = evaluate()
            evals.append((step, e_loss, e_acc))
    train_time = time.perf_counter() - started
    acc1, margin1, loss1 = evaluate()

    window = max(1, len(losses) // 10)
    final_train_loss = sum(losses[-window:]) / window
    ctx.metric(
        "train_loss_final",
        final_train_loss,
        "",
        higher_is_better=False,
        description=f"mean Bradley-Terry loss over the last {window} steps",
    )
    ctx.metric("eval_loss", loss1, "", higher_is_better=False)
    ctx.metric(
        "eval_accuracy",
        acc1,
        "",
        higher_is_better=True,
        description=f"held-out pairs where r_chosen > r_rejected ({len(held)} pairs)",
    )
    ctx.metric(
        "eval_reward_margin",
        margin1,
        "",
        higher_is_better=True,
        description="mean r_chosen − r_rejected on held-out pairs",
    )
    ctx.metric("eval_accuracy_untrained", acc0, "", description="same pairs, random head before training")
    ctx.metric(
        "last_step_accuracy",
        accs[-1],
        "",
        description=f"the last training step's batch of "
        f"{cfg.batch_size} pairs, scored before its update (the seed's 'final accuracy')",
    )
    ctx.metric("last_step_margin", margins[-1], "", description="the same batch's mean r_chosen − r_rejected")
    ctx.metric("last_step_loss", losses[-1], "", higher_is_better=False, description="the same batch's loss")
    ctx.metric(
        "train_accuracy_last_steps",
        sum(accs[-window:]) / window,
        "",
        description=f"mean training-batch accuracy over the last {window} steps (the trend, not one batch)",
    )
    ctx.metric("train_pairs", len(train), "pairs")
    ctx.metric("steps", step, "steps")
    ctx.metric("train_time_s", train_time, "s", higher_is_better=False)
    ctx.table(
        "before_after",
        [
            ["untrained head", round(loss0, 4), round(acc0, 4), round(margin0, 4)],
            ["trained", round(loss1, 4), round(acc1, 4), round(margin1, 4)],
        ],
        ["reward model", "eval BT loss", "eval accuracy", "eval margin"],
        title=f"Held-out preference pairs (n={len(held)})",
    )

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="train loss (per step)")
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    ax.plot(steps, smooth, lw=1.5, label=f"train loss ({window}-step mean)")
    ax.plot([s for s, _, _ in evals], [loss for _, loss, _ in evals], "o-", label="held-out loss")
    ax.axhline(0.6931, color="grey", ls="--", lw=0.8, label="log 2 (coin)")
    ax.set_xlabel("step"), ax.set_ylabel("Bradley-Terry loss"), ax.legend(fontsize=8)
    ax.set_title(f"Reward model {cfg.model} ({'full' if cfg.train_backbone else 'head only'})")
    fig.tight_layout()
    fig.savefig(ctx.artifact("reward_loss.png"), dpi=110)
    plt.close(fig)

    ctx.finding(
        f"Loading printed {', '.join(missing) or 'no'} as MISSING: the sequence-classification head is a new "
        "randomly initialised linear layer (the checkpoint only has the LM), so the warning is expected. "
        f"Before training that random head scores held-out accuracy {acc0:.2f}; after {step} steps "
        f"{acc1:.2f} with mean margin {margin1:+.2f} on {len(held)} held-out pairs."
    )
    seed, seed_batch = EXERCISE.seed, EXERCISE.profiles["a100"]["batch_size"]  # the a100 profile is the seed's setup
    ctx.finding(
        f"Like with like: the seed's {seed('last_step_accuracy')} accuracy and {seed('last_step_margin')} margin "
        f"(Llama 3.2 1B fully fine-tuned on {seed('train_pairs'):,} pairs) are its last logged training step, one "
        f"batch of {seed_batch} pairs, whose accuracy can only be a multiple of {1 / seed_batch:g}. The same quantity "
        f"here (batch {cfg.batch_size}): {accs[-1]:.2f} and {margins[-1]:+.2f}; over the last {window} steps the batch "
        f"accuracy averages {sum(accs[-window:]) / window:.2f}. The held-out figures above are the ones to trust; "
        "the seed published none."
    )
    ctx.finding(
        (f"Full fine-tune with {compute}: " if cfg.train_backbone else "The a100 profile's full fine-tune: ")
        + f"a step of {step:g} changes {survive['float32']:.0%} of this model's embedding weights when stored in "
        f"fp32 and {survive['bfloat16']:.0%} in bf16, so plain AdamW on bf16 weights would lose most updates; the "
        "master weights stay fp32 and only the forward runs in bf16 (autocast)."
    )
    if not cfg.train_backbone:
        se = (acc1 * (1 - acc1) / max(len(held), 1)) ** 0.5
        ctx.finding(
            f"cpu profile: frozen {EMBEDDED_LLM.size_label} backbone, only the {head.weight.numel()}-weight head trained, on "
            f"{len(train)} pairs with dialogues cut to their last {cfg.max_length} tokens. With {len(held)} held-out "
            f"pairs the accuracy's standard error is ±{se:.2f}, so anything within ~0.1 of 0.5 is noise; the gap to "
            f"the seed is capacity (a frozen {EMBEDDED_LLM.size_label} backbone vs a fully trained Llama 3.2 1B) and data "
            f"({len(train) / EXERCISE.seed('train_pairs'):.1%} of its pairs), not the loss."
        )
    ctx.finding(
        "Accuracy only says whether the sign of r_chosen − r_rejected is right; the margin says how "
        "confidently. A Bradley-Terry reward has no absolute scale (adding a constant changes nothing), so "
        "compare margins only between runs of the same model."
    )


EXERCISE = Exercise(
    id="phase10.reward_model",
    title="Reward model with the Bradley-Terry loss",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},
        "a100": dict(
            model="meta-llama/Llama-3.2-1B-Instruct",
            data_source="hub",
            n_train=5000,
            n_eval=500,
            max_length=512,
            train_backbone=True,
            epochs=1,
            batch_size=4,
            learning_rate=1e-5,
            weight_decay=0.01,
            dtype="float32",
            autocast="bfloat16",
            require_cuda=True,
            gradient_checkpointing=True,
        ),
    },
    tiny=dict(n_train=8, n_eval=8, max_length=16, epochs=3, batch_size=4),
    # the a100 recipe (full fine-tune, fp32 weights, bf16 autocast, checkpointing) on local pairs, one epoch
    smoke=dict(data_source="local", n_train=8, n_eval=8, max_length=32, epochs=1),
    references=REFERENCES,
    summary_metrics=("eval_accuracy", "eval_reward_margin"),
    methods={
        "cpu": f"substitute: a frozen-backbone linear reward probe on {EMBEDDED_LLM.label} features in place of a "
        "fully fine-tuned Llama 3.2 1B reward model",
        "a100": "same",
    },
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
