"""10.2 DPO: preference-tune the Phase 9 SFT adapter without a reward model or sampling.

DPO turns the reward-model + RL pipeline into one classification loss on the policy itself:
with r(x, y) = β·log(π(y|x) / π_ref(y|x)), the Bradley-Terry loss of 10.1 becomes
−log σ(r(x, y_chosen) − r(x, y_rejected)). The policy is pushed up on chosen answers and down on
rejected ones *relative to a reference*, and β sets how far it may drift from that reference.

Setup, as in the seed: the Phase 9 SFT LoRA adapter is loaded trainable and trl's DPOTrainer
continues training it, ``ref_model=None`` so no second model copy is loaded. What the reference is
then depends on the trl version — a trap worth knowing:

- trl 0.9.6 (the seed): the reference is the policy with its adapter *disabled*, i.e. the base model.
  The SFT adapter's own difference from the base then shows up as "reward" before any DPO step.
- trl 1.16 (this repo): when the PEFT model already has a trained adapter, the trainer copies it
  into a frozen ``ref`` adapter, so the reference is the SFT model — the textbook DPO setup. The run
  records which reference was used.

**Did it move?** A DPO run is judged after training, by an eval pass (no update, no dropout) over
its own trained pairs and over held-out pairs: reward accuracy and margin, and the per-token KL from
the reference on the held-out answers. The last *logged* training step is not that: it is computed
before that step's update, on one batch. A run whose margin on its own pairs is ≤ ``NOOP_MIN_MARGIN``
or whose KL is < ``NOOP_MIN_KL`` left the policy where it started: its adapter is stored flagged
``noop``, every loader of ``DPO_ADAPTER`` refuses it (so no "SFT+DPO" column is the SFT model counted
twice), and the run fails with the reason.

**The learning rate** decides that. The seed used 5e-7 for an 8B model over ~490 steps; the cpu
profile's 135M LoRA policy, 32 pairs and 16 steps need a rate two orders larger to move at all,
and the ablation trains the same adapter at the seed's rate on the same pairs and steps to show
what that does here. Both runs also measure the drift on Phase 9's held-out domain answers (the
behaviour SFT taught, which DPO on general HH-RLHF pairs should leave mostly alone).

The trained adapter (SFT+DPO in one LoRA, loaded on a fresh base by ``variants.load_variant``) is
stored in the lab's artifact store as ``phase10.dpo_adapter``, keyed by its recipe (the SFT
adapter's recipe, the pair selection, β, learning rate and schedule, steps, seed) — never into git.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.artifacts import Artifact, ArtifactKind, Recipe, Reporter, default_store, load
from lab.device import current, quantization_label
from lab.errors import MissingResource
from lab.hashing import sha256_file
from lab.models import EMBEDDED_LLM
from lab.repeatable import repeatable
from phase09_finetuning.answer_loss import answer_ids
from phase09_finetuning.dataset import dataset_sha256, load_training_set
from phase09_finetuning.generation import generate, load_eval_prompts
from phase09_finetuning.sft import (
    RECORDED_ARGS,
    SFT_ADAPTER,
    load_base,
    load_tokenizer,
    nf4_config,
    peak_memory_bytes,
    to_prompt_completion,
)
from phase10_alignment.data import HUB_ID, LOCAL_FILE, load_pairs

# A run below either bar did not move the policy: its adapter is flagged "noop" and refused downstream.
NOOP_MIN_MARGIN = 0.1  # reward margin (β·Δ log-ratio) on its own trained pairs, after training
NOOP_MIN_KL = 1e-4  # nats/token, KL(reference ‖ policy) on the held-out pairs' answers
# ... and a run whose optimizer changed fewer than this share of the trainable (LoRA) weights at all: its
# updates were rounded away (bf16 LoRA weights at lr 5e-7, see upcast_trainable). The one bar a smoke
# (a few steps on a tiny model) can be held to, whatever the scale. Measured on the a100 recipe's smoke
# (3 steps at 5e-7): fp32 LoRA 99.997%, bf16 50.0% (its lora_B moves, its lora_A rounds away).
NOOP_MIN_CHANGED = 0.9


class Config(ExerciseConfig):
    data_source: Literal["local", "hub"] = "local"
    split: str = "train"
    data_start: int = 192  # after the reward model's 128 train + 64 held-out records of the local slice
    n_candidates: int = 408  # records read; pairs longer than max_length are dropped
    n_train: int | None = 32  # None: every candidate that fits, minus the held-out pairs
    n_eval: int = Field(16, ge=1)  # held-out pairs: accuracy, margin and KL after training
    max_length: int = 96  # tokens of chat-formatted prompt + answer
    beta: float = 0.1
    learning_rate: float = 1e-4  # cpu: moves a 135M LoRA policy in 16 steps (see the module docstring)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup: float = Field(0.1, ge=0, lt=1)  # share of the steps spent warming up
    ablation_learning_rate: float | None = 5e-7  # the seed's rate, on the same pairs and steps
    max_steps: int | None = None  # None: train for `epochs`
    epochs: float = 2.0
    batch_size: int = 4
    grad_accum: int = 1
    n_drift: int = 4  # Phase 9 held-out domain answers on which behaviour drift is measured
    drift_tokens: int = 48  # answer tokens read per drift answer
    sample_tokens: int = 24  # greedy tokens of one domain prompt per model, to read the drift
    save_adapter: bool = True  # store the main run's adapter (phase10.dpo_adapter, keyed by its recipe)
    require_cuda: bool = False
    # False: leave trl's bf16 cast of a 4-bit policy's LoRA weights (kept to show the no-op it causes)
    upcast_lora: bool = True


# Bump when train_dpo changes what it trains from the same settings: stored adapters then stop matching.
TRAINER_VERSION = "train_dpo/3"  # 3: LoRA weights kept fp32 on a 4-bit base (upcast_trainable)


class NoOpRun(RuntimeError):
    """A DPO run that left the policy where it started (see NOOP_MIN_MARGIN / NOOP_MIN_KL)."""


def dpo_params(cfg: Config, sft: Recipe) -> dict[str, Any]:
    """The recipe of the main-run DPO adapter: the SFT adapter it starts from, the pairs, the training."""

    data = dict(
        source=cfg.data_source,
        split=cfg.split,
        start=cfg.data_start,
        candidates=cfg.n_candidates,
        n_train=cfg.n_train,
        n_eval=cfg.n_eval,
        sha256=sha256_file(LOCAL_FILE) if cfg.data_source == "local" else None,
        hub_id=HUB_ID if cfg.data_source == "hub" else None,
    )
    return dict(
        base_model=sft.params["base_model"],
        qlora=sft.params["qlora"],
        sft_recipe_sha256=sft.sha256,
        data=data,
        max_length=cfg.max_length,
        beta=cfg.beta,
        lr=cfg.learning_rate,
        lr_scheduler=cfg.lr_scheduler,
        warmup=cfg.warmup,
        max_steps=cfg.max_steps,
        epochs=None if cfg.max_steps else cfg.epochs,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        seed=cfg.seed,
        upcast_lora=cfg.upcast_lora,
        trainer=TRAINER_VERSION,
    )


def noop_reason(result: dict[str, Any]) -> str | None:
    """Why a finished run counts as a no-op (None if it moved the policy), formatted from its numbers."""
    margin, kl = result["train_pairs"]["margin"], result["kl"]["kl_per_token"]
    changed = result.get("trainable_changed_share")
    problems = []
    if not result.get("smoke"):  # a smoke's few steps cannot reach these bars; its weights still must move
        if margin <= NOOP_MIN_MARGIN:
            problems.append(
                f"reward margin on its own {result['train_pairs']['n']} trained pairs {margin:+.3g} "
                f"≤ {NOOP_MIN_MARGIN:g}"
            )
        if kl < NOOP_MIN_KL:
            problems.append(f"KL to the reference {kl:.2e} nats/token < {NOOP_MIN_KL:g}")
    if changed is not None and changed < NOOP_MIN_CHANGED:
        problems.append(
            f"only {changed:.1%} of the trainable weights changed (< {NOOP_MIN_CHANGED:.0%}: "
            f"updates rounded away in {result.get('trainable_dtype')})"
        )
    if not problems:
        return None
    return (
        f"DPO at lr {result['lr']:g} for {result['steps']} steps left the policy where it started ("
        + "; ".join(problems)
        + "): not a usable SFT+DPO variant, its answers would be the SFT model's"
    )


def adapter_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What a stored DPO adapter records about its training (read by later phases' provenance)."""
    hist = result["history"]
    return dict(
        steps=result["steps"],
        epochs=result["epochs"],
        lr=result["lr"],
        final_loss=hist[-1]["loss"] if hist else None,
        train_pairs_accuracy=result["train_pairs"]["accuracy"],
        train_pairs_margin=result["train_pairs"]["margin"],
        heldout_pairs_accuracy=result["heldout_pairs"]["accuracy"],
        heldout_pairs_margin=result["heldout_pairs"]["margin"],
        kl_per_token=result["kl"]["kl_per_token"],
        train_time_s=round(result["train_time_s"], 1),
        reference=result["reference"],
    )


def adapter_flags(result: dict[str, Any]) -> dict[str, str]:
    """The flags a stored adapter carries: ``noop`` with the reason when training did not move it."""
    reason = noop_reason(result)
    return {"noop": reason} if reason else {}


def _build_profile_adapter(profile: str, folder: Path, reporter: Reporter) -> dict[str, Any]:

    cfg = EXERCISE.canonical_config(profile)
    sft = load(SFT_ADAPTER, profile)
    train_rows, eval_rows, _, _ = prepare_data(cfg, load_tokenizer(sft.params["base_model"]))
    result = train_dpo(cfg, sft, train_rows, eval_rows, cfg.learning_rate, save_to=folder, ctx=reporter)
    return {"metrics": adapter_metrics(result), "flags": adapter_flags(result)}


DPO_ADAPTER = ArtifactKind(
    name="phase10.dpo_adapter",
    params=lambda profile: dpo_params(EXERCISE.canonical_config(profile), SFT_ADAPTER.recipe(profile)),
    build=_build_profile_adapter,
    needs=(SFT_ADAPTER,),
    reject_flags=("noop",),
    description="the profile's SFT+DPO LoRA adapter (phase10.dpo's main run: the SFT adapter trained on with DPO); "
    "refused when flagged noop",
)


def select_pairs(pairs, tok, max_length: int):
    """Pairs whose chat-formatted prompt + each answer fit in max_length tokens, with a non-empty chosen.

    trl 1.16 truncates only from the end (``keep_start``): a long dialogue would lose the answers the
    loss is about, so such pairs are dropped rather than truncated (the seed's "after filtering").
    """

    def n_tokens(messages) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    kept = []
    for p in pairs:
        row = p.dpo_row()
        if (
            p.chosen.strip()
            and max(n_tokens(row["prompt"] + row["chosen"]), n_tokens(row["prompt"] + row["rejected"])) <= max_length
        ):
            kept.append(p)
    return kept


def load_policy(sft: Artifact, *, trainable: bool):
    """(peft model, tokenizer): a fresh base (NF4 when the SFT run was QLoRA) + the stored SFT adapter."""
    from peft import PeftModel, prepare_model_for_kbit_training  # noqa: PLC0415 (heavy: peft loads on first use)

    qlora = bool(sft.params.get("qlora"))
    model, tok, _ = load_base(sft.params["base_model"], qlora=qlora and trainable)
    if qlora and trainable:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = PeftModel.from_pretrained(model, str(sft.path), is_trainable=trainable)
    return model, tok


def upcast_trainable(model) -> int:
    """Trainable (LoRA) weights back to fp32 after trl's DPOTrainer cast them to bf16; returns how many.

    trl 1.16 casts every trainable weight of a 4-bit (QLoRA) policy to bf16 (following the QLoRA
    paper). An AdamW step moves a weight by about the learning rate; at the a100 recipe's 5e-7 that is
    far below half the bf16 spacing of a LoRA weight (|w|·2⁻⁸), so most updates round away: a 5-step
    CPU replica changed 2.1% of the LoRA weights (100% in fp32) and the run was refused as a no-op.
    Keeping the weights (the optimizer's master copy) in fp32 while bf16 autocast does the matmuls
    fixes it without touching the seed's learning rate — the alternative fix, a rate the no-op bars
    accept, would change the recipe being reproduced. The LoRA weights are ~0.5% of the model, so fp32
    costs ~2x of a few hundred MB on an 8B base. The optimizer is created in ``train()``, after this.
    """
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    n = 0
    for _, param in model.named_parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            n += 1
    return n


def trainable_snapshot(model) -> dict[str, Any]:
    """A CPU copy of every trainable weight, to measure afterwards which ones training changed."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def changed_share(before: dict[str, Any], model) -> float:
    """Share of the weights in ``before`` whose value differs now (exactly: a rounded-away update is 0)."""
    now = dict(model.named_parameters())
    changed = sum(int((now[n].detach().cpu() != w).sum()) for n, w in before.items())
    return changed / max(sum(w.numel() for w in before.values()), 1)


def build_trainer(model, tok, train_rows, cfg: Config, lr: float, output_dir: str):
    """trl's DPOTrainer on the PEFT policy, ``ref_model=None``; the schedule comes from the config (not
    the device), so one recipe trains the same way everywhere; the device switches (bf16, paged 8-bit
    AdamW, gradient checkpointing) come from lab.device. With ``upcast_lora`` the trainable weights are
    fp32 again after trl's bf16 cast (see upcast_trainable)."""
    from datasets import Dataset  # noqa: PLC0415 (heavy: datasets loads on first use)
    from trl import DPOConfig, DPOTrainer  # noqa: PLC0415 (heavy: trl loads on first use)

    args = DPOConfig(
        output_dir=output_dir,
        beta=cfg.beta,
        learning_rate=lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup,  # < 1: a share of the total steps
        max_steps=cfg.max_steps or -1,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        logging_steps=1,
        save_strategy="no",  # only the adapter is kept (no optimizer checkpoints)
        report_to="none",
        # use_cpu, bf16 (a plain CPU run: fp32, bf16 matmuls were ~4x slower on this CPU), checkpointing, optim
        **current().trainer_args(quantized=True),
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model, ref_model=None, args=args, processing_class=tok, train_dataset=Dataset.from_list(train_rows)
    )
    if cfg.upcast_lora:
        upcast_trainable(trainer.model)
    return trainer


def reference_kind(model) -> str:
    """Which reference the trainer uses with ref_model=None (see the module docstring)."""
    return (
        "frozen copy of the SFT adapter ('ref')"
        if "ref" in getattr(model, "peft_config", {})
        else "adapter disabled (the base model)"
    )


# --- after training: did the policy move? ------------------------------------------------------------


def pair_eval(trainer, rows: list[dict], name: str) -> dict[str, Any]:
    """DPO loss, reward accuracy and margin over ``rows`` in one eval pass (no update, no dropout)."""
    from datasets import Dataset  # noqa: PLC0415 (heavy: datasets loads on first use)

    out = trainer.evaluate(eval_dataset=Dataset.from_list(rows), metric_key_prefix=name)
    # trl logs its reward metrics as "eval_rewards/..." whatever the prefix; the loss takes the prefix
    return {
        "n": len(rows),
        "loss": out[f"{name}_loss"],
        "accuracy": out["eval_rewards/accuracies"],
        "margin": out["eval_rewards/margins"],
    }


def pair_answers(rows: list[dict]) -> list[dict]:
    """Preference rows -> prompt/completion rows, the chosen and the rejected answer of each pair."""
    return [{"prompt": r["prompt"], "completion": r[side]} for r in rows for side in ("chosen", "rejected")]


def kl_to_reference(model, tok, rows: list[dict], max_answer_tokens: int | None = None) -> dict[str, float]:
    """Mean per-token KL(reference ‖ policy) over the answer tokens of prompt/completion ``rows``, and
    the change in those tokens' log-probability; the reference is what the trainer used (the frozen
    'ref' adapter, else the adapter disabled), read from the same model one forward apart."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from trl.trainer.utils import use_adapter  # noqa: PLC0415 (heavy: trl loads on first use)

    ref_name = "ref" if "ref" in model.peft_config else None
    kl, d_logp, n = 0.0, 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            ids, n_prompt = answer_ids(tok, row["prompt"], row["completion"], max_answer_tokens)
            x = torch.tensor([ids], device=model.device)
            with use_adapter(model, ref_name):
                ref_logits = model(input_ids=x).logits[0, n_prompt - 1 : -1]
            # float64: a barely-moved policy differs from its reference below float32 rounding
            ref = torch.log_softmax(ref_logits.double(), -1)
            pol = torch.log_softmax(model(input_ids=x).logits[0, n_prompt - 1 : -1].double(), -1)
            target = x[0, n_prompt:, None]
            kl += torch.sum(ref.exp() * (ref - pol)).item()
            d_logp += (pol.gather(1, target) - ref.gather(1, target)).sum().item()
            n += target.shape[0]
    return {"kl_per_token": kl / n, "delta_logp_per_token": d_logp / n, "tokens": n}


def domain_answers(n: int) -> list[dict]:
    """Phase 9's held-out domain Q&A (prompt/completion rows): the behaviour SFT taught, which DPO on
    general HH-RLHF pairs should leave alone."""

    return to_prompt_completion(load_training_set("eval")[:n])


# --- training -----------------------------------------------------------------------------------------------


def prepare_data(cfg: Config, tok) -> tuple[list[dict], list[dict], dict[str, Any], dict[str, int]]:
    """(train, held-out) preference rows (disjoint), provenance and counts."""

    pairs, prov, dropped = load_pairs(cfg.data_source, cfg.split, cfg.data_start, cfg.n_candidates)
    kept = select_pairs(pairs, tok, cfg.max_length)
    n_train = cfg.n_train if cfg.n_train is not None else len(kept) - cfg.n_eval
    need = n_train + cfg.n_eval
    if n_train <= 0 or len(kept) < need:
        raise ValueError(
            f"{prov['id']}: {len(kept)} of {len(pairs)} pairs fit max_length={cfg.max_length}; "
            f"need {need} (train {n_train} + held out {cfg.n_eval}): raise n_candidates"
        )
    rows = [p.dpo_row() for p in kept]
    counts = dict(candidates=cfg.n_candidates, invalid=dropped, fit=len(kept), train=n_train, eval=cfg.n_eval)
    return rows[:n_train], rows[n_train:need], prov, counts


def train_dpo(
    cfg: Config,
    sft: Artifact,
    train_rows,
    eval_rows,
    lr: float,
    drift_rows=(),
    sample_prompt=None,
    save_to: Path | None = None,
    ctx=None,
) -> dict[str, Any]:
    """One DPO run from the stored SFT adapter, then the checks of whether it moved: an eval pass on
    the trained and the held-out pairs, KL to the reference on the held-out answers, drift on
    ``drift_rows`` and a greedy sample before/after.

    ``save_to``: an empty folder that receives only the trained 'default' adapter (not trl's frozen
    'ref' copy), e.g. a store staging folder."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model, tok = load_policy(sft, trainable=True)
    sample_before = generate(model, tok, [sample_prompt], cfg.sample_tokens)[0] if sample_prompt else None
    scratch = tempfile.mkdtemp(prefix="phase10-dpo-")
    repeatable(cfg.seed)  # deterministic kernels on CPU; dropout and data order are seeded by the trainer
    try:
        trainer = build_trainer(model, tok, train_rows, cfg, lr, scratch)
        reference = reference_kind(trainer.model)
        before = trainable_snapshot(trainer.model)
        trainable_dtype = str(next(iter(before.values())).dtype).replace("torch.", "")
        if ctx is not None:
            ctx.log(
                f"DPO lr={lr:g} beta={cfg.beta}: {len(train_rows)} pairs, {trainer.args.num_train_epochs:g} epochs, "
                f"reference = {reference}"
            )
        started = time.perf_counter()
        out = trainer.train()
        train_time = time.perf_counter() - started
        peak_bytes, peak_kind = peak_memory_bytes()
        history = [h for h in trainer.state.log_history if "loss" in h and "rewards/margins" in h]
        result = dict(
            lr=lr,
            steps=out.global_step,
            epochs=round(float(trainer.state.epoch or 0.0), 3),
            train_time_s=train_time,
            s_per_step=train_time / max(out.global_step, 1),
            history=history,
            reference=reference,
            peak_gb=peak_bytes / 1e9,
            peak_kind=peak_kind,
            sample_before=sample_before,
            trainable_changed_share=changed_share(before, trainer.model),
            trainable_dtype=trainable_dtype,
            smoke=current().smoke,
            trainer_args={
                k: getattr(getattr(trainer.args, k), "value", getattr(trainer.args, k)) for k in RECORDED_ARGS
            },
        )
        if ctx is not None:
            ctx.log(f"lr={lr:g}: eval pass over the trained and the held-out pairs, KL to the reference")
        result["train_pairs"] = pair_eval(trainer, train_rows, "train_pairs")
        result["heldout_pairs"] = pair_eval(trainer, eval_rows, "heldout_pairs")
        policy = trainer.model
        result["kl"] = kl_to_reference(policy, tok, pair_answers(eval_rows))
        if drift_rows:
            result["drift"] = kl_to_reference(policy, tok, list(drift_rows), cfg.drift_tokens)
        if sample_prompt:
            result["sample_after"] = generate(policy, tok, [sample_prompt], cfg.sample_tokens)[0]
        if save_to is not None:
            policy.save_pretrained(str(save_to), selected_adapters=["default"])
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the exercise ---------------------------------------------------------------------------------------------

REFERENCES = (
    Reference("final_train_loss", 0.90, "", "seed: final train loss (last logged step; Llama 3.1 8B, 1,948 pairs)"),
    Reference(
        "last_step_reward_accuracy",
        0.58,
        "",
        "seed: 'final accuracy' = the last logged training step's batch, not an eval pass",
    ),
    Reference(
        "last_step_reward_margin",
        0.44,
        "",
        "seed: 'final reward margin', last logged step; its reference was the base model (trl 0.9.6)",
    ),
    Reference("peak_memory_gb", 51.0, "GB", "seed: VRAM on an A100 80GB"),
)


def _final(history: list[dict], key: str) -> float | None:
    return history[-1][key] if history else None


def run(cfg: Config, ctx: RunContext) -> None:

    if cfg.require_cuda and (
        why := current().gpu_only_reason("the a100 profile trains DPO on Llama 3.1 8B (NF4) + the Phase 9 adapter")
    ):
        ctx.skip(why)
    try:
        sft = ctx.require_artifact(SFT_ADAPTER)  # trained first (and said so) if the store lacks it
        tok = load_tokenizer(sft.params["base_model"])
    except MissingResource as err:
        ctx.skip(str(err))
    train_rows, eval_rows, prov, counts = prepare_data(cfg, tok)
    ctx.dataset(prov["id"], n=counts["train"] + counts["eval"], sha256=prov["sha256"], **counts)
    drift_rows = domain_answers(cfg.n_drift)
    ctx.dataset("phase09 domain Q&A, eval split (drift probe)", n=len(drift_rows), sha256=dataset_sha256())
    quantization = None
    if sft.params.get("qlora"):
        quantization = quantization_label(nf4_config())
    sample_prompt = load_eval_prompts()[0]["prompt"]

    main = _main_run(cfg, ctx, sft, train_rows, eval_rows, drift_rows, sample_prompt)
    ctx.model(
        sft.params["base_model"],
        adapter=f"{sft.id}: Phase 9 SFT LoRA r={sft.params['lora_r']}, trained on with DPO",
        quantization=quantization,
        trainable_dtype=main["trainable_dtype"],
        trainer_args=main["trainer_args"],
    )
    runs = [main]
    if cfg.ablation_learning_rate:
        runs.append(
            train_dpo(
                cfg,
                sft,
                train_rows,
                eval_rows,
                cfg.ablation_learning_rate,
                drift_rows=drift_rows,
                sample_prompt=sample_prompt,
                ctx=ctx,
            )
        )
    _report(cfg, ctx, runs, len(drift_rows), sample_prompt)
    reason = noop_reason(main)
    if reason:
        ctx.failure_mode(
            f"No-op run: {reason}. Its adapter is stored flagged 'noop' and every loader of "
            f"{DPO_ADAPTER.name} refuses it."
        )
        raise NoOpRun(reason)


def _main_run(cfg: Config, ctx: RunContext, sft: Artifact, train_rows, eval_rows, drift_rows, sample_prompt):
    """The run at ``learning_rate``; with ``save_adapter`` its adapter is stored under its recipe, flagged
    ``noop`` when it did not move the policy."""
    if not cfg.save_adapter:
        return train_dpo(
            cfg,
            sft,
            train_rows,
            eval_rows,
            cfg.learning_rate,
            drift_rows=drift_rows,
            sample_prompt=sample_prompt,
            ctx=ctx,
        )
    store, recipe = default_store(), Recipe(DPO_ADAPTER.name, dpo_params(cfg, sft.recipe))
    with store.staging(recipe) as folder:
        result = train_dpo(
            cfg,
            sft,
            train_rows,
            eval_rows,
            cfg.learning_rate,
            drift_rows=drift_rows,
            sample_prompt=sample_prompt,
            save_to=folder,
            ctx=ctx,
        )
        ctx.publish_artifact(
            recipe, folder, metrics=adapter_metrics(result), flags=adapter_flags(result), build_s=result["train_time_s"]
        )
    return result


def _report(cfg: Config, ctx: RunContext, runs: list[dict], n_drift: int, sample_prompt: str) -> None:
    """Metrics of the main run, the learning-rate table, the plot and the findings."""
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    main = runs[0]
    hist, tp, hp = main["history"], main["train_pairs"], main["heldout_pairs"]
    ctx.metric(
        "train_pairs_accuracy",
        tp["accuracy"],
        "",
        higher_is_better=True,
        description=f"eval pass after training over its own {tp['n']} trained pairs: reward(chosen) > reward(rejected)",
    )
    ctx.metric(
        "train_pairs_margin",
        tp["margin"],
        "",
        higher_is_better=True,
        description=f"same pass: mean β·(log-ratio chosen − log-ratio rejected); ≤ {NOOP_MIN_MARGIN:g} is a no-op",
    )
    ctx.metric(
        "heldout_pairs_accuracy",
        hp["accuracy"],
        "",
        higher_is_better=True,
        description=f"{hp['n']} held-out pairs after training",
    )
    ctx.metric("heldout_pairs_margin", hp["margin"], "", higher_is_better=True)
    ctx.metric(
        "kl_per_token",
        main["kl"]["kl_per_token"],
        "nats",
        higher_is_better=False,
        description=f"KL(reference ‖ policy) per answer token of the held-out pairs ({main['kl']['tokens']} "
        f"tokens); < {NOOP_MIN_KL:g} is a no-op",
    )
    if "drift" in main:
        ctx.metric(
            "domain_kl_per_token",
            main["drift"]["kl_per_token"],
            "nats",
            higher_is_better=False,
            description=f"the same KL on {n_drift} Phase 9 held-out domain answers (what DPO should leave alone)",
        )
    ctx.metric(
        "final_train_loss",
        _final(hist, "loss"),
        "",
        higher_is_better=False,
        description="DPO loss at the last logged step (log 2 = 0.693 means no preference yet)",
    )
    ctx.metric(
        "last_step_reward_accuracy",
        _final(hist, "rewards/accuracies"),
        "",
        description=f"the last logged training step's batch of {cfg.batch_size} pairs, before its update (noisy)",
    )
    ctx.metric(
        "last_step_reward_margin",
        _final(hist, "rewards/margins"),
        "",
        description="the same batch's mean margin, before its update",
    )
    ctx.metric(
        "trainable_changed_share",
        main["trainable_changed_share"],
        "share",
        higher_is_better=True,
        description=f"trainable ({main['trainable_dtype']}) weights that training changed at all; "
        f"< {NOOP_MIN_CHANGED:g} is a no-op (updates rounded away)",
    )
    ctx.metric("steps", main["steps"], "steps")
    ctx.metric("epochs", main["epochs"], "epochs", description=f"passes over the {tp['n']} trained pairs")
    ctx.metric("peak_memory_gb", main["peak_gb"], "GB", higher_is_better=False, description=main["peak_kind"])
    ctx.metric("train_time_s", main["train_time_s"], "s", higher_is_better=False)
    ctx.metric("s_per_step", main["s_per_step"], "s", higher_is_better=False)

    rows = []
    for r in runs:
        d = r.get("drift", {})
        rows.append(
            [
                f"{r['lr']:g}",
                r["steps"],
                _round(_final(r["history"], "loss")),
                _round(r["train_pairs"]["accuracy"]),
                _round(r["train_pairs"]["margin"]),
                _round(r["heldout_pairs"]["accuracy"]),
                _round(r["heldout_pairs"]["margin"]),
                _sci(r["kl"]["kl_per_token"]),
                _sci(d.get("kl_per_token")),
                _sci(d.get("delta_logp_per_token")),
                _round(r["trainable_changed_share"], 3),
                "NO-OP" if noop_reason(r) else "moved",
            ]
        )
    ctx.table(
        "learning_rate_ablation",
        rows,
        [
            "lr",
            "steps",
            "last logged loss",
            "trained pairs acc",
            "trained pairs margin",
            "held-out acc",
            "held-out margin",
            "KL/token (held-out pairs)",
            "KL/token (domain answers)",
            "Δ log p/token (domain)",
            "LoRA weights changed",
            "verdict",
        ],
        title="DPO at the profile's rate vs the ablation rate (same pairs, same steps; accuracy, margin and KL "
        "from an eval pass after training)",
    )
    ctx.table(
        "samples",
        [["SFT (start)", main["sample_before"]]] + [[f"after DPO lr={r['lr']:g}", r.get("sample_after")] for r in runs],
        ["model", f"greedy answer to {sample_prompt!r} ({cfg.sample_tokens} tokens)"],
        title="What the learning rate does to a domain answer",
    )

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in runs:
        steps = [h["step"] for h in r["history"]]
        axes[0].plot(steps, [h["loss"] for h in r["history"]], "o-", ms=3, label=f"lr {r['lr']:g}")
        axes[1].plot(steps, [h["rewards/margins"] for h in r["history"]], "o-", ms=3, label=f"lr {r['lr']:g} (batch)")
        axes[1].plot(
            [r["steps"]],
            [r["train_pairs"]["margin"]],
            "s",
            ms=7,
            color=axes[1].lines[-1].get_color(),
            label=f"lr {r['lr']:g}: all trained pairs, after",
        )
    axes[0].axhline(0.6931, color="grey", ls="--", lw=0.8)
    axes[1].axhline(NOOP_MIN_MARGIN, color="grey", ls=":", lw=0.8)
    axes[0].set_title("DPO loss (per logged step)"), axes[1].set_title("reward margin (β·Δ log-ratio)")
    for ax in axes:
        ax.set_xlabel("step"), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.artifact("dpo_training.png"), dpi=110)
    plt.close(fig)

    ctx.finding(
        f"Reference with ref_model=None in trl 1.16: {main['reference']}. The seed's trl 0.9.6 disabled "
        "the adapter instead (reference = base model), so its reward margins also contain the SFT adapter's "
        "distance from the base; here the margin starts at exactly 0 and measures DPO alone."
    )
    verdict = noop_reason(main) or (
        f"it moved: margin {tp['margin']:+.3f} on its own pairs (> {NOOP_MIN_MARGIN:g}) and KL "
        f"{main['kl']['kl_per_token']:.2e} nats/token (≥ {NOOP_MIN_KL:g})"
    )
    ctx.finding(
        f"After {main['steps']} steps ({main['epochs']:g} epochs over {tp['n']} pairs, lr {main['lr']:g} "
        f"{cfg.lr_scheduler}, β {cfg.beta:g}), an eval pass gives reward accuracy {tp['accuracy']:.2f} and margin "
        f"{tp['margin']:+.3f} on the trained pairs, {hp['accuracy']:.2f} and {hp['margin']:+.3f} on {hp['n']} held-out "
        f"pairs; {verdict}. The last logged step ({_fmt(_final(hist, 'rewards/accuracies'), '.2f')} / "
        f"{_fmt(_final(hist, 'rewards/margins'), '+.3f')}) is one batch before its update: the seed's "
        f"{EXERCISE.seed('last_step_reward_accuracy')} / {EXERCISE.seed('last_step_reward_margin')} are that quantity."
    )
    if tp["accuracy"] > hp["accuracy"] + 0.1:
        ctx.finding(
            f"The gap between trained ({tp['accuracy']:.2f}) and held-out ({hp['accuracy']:.2f}) accuracy says "
            f"the run fitted its {tp['n']} pairs over {main['epochs']:g} epochs more than it learned a "
            "preference that carries to new pairs."
        )
    if len(runs) > 1:
        lo, hi = sorted(runs[:2], key=lambda r: r["lr"])
        changed = {r["lr"]: r.get("sample_after") != r.get("sample_before") for r in runs}
        dom = (
            f"; on {n_drift} Phase 9 domain answers {_sci(lo.get('drift', {}).get('kl_per_token'))} vs "
            f"{_sci(hi.get('drift', {}).get('kl_per_token'))}"
            if "drift" in lo
            else ""
        )
        ctx.finding(
            f"Learning rate, same pairs and steps: lr {lo['lr']:g} ends at margin "
            f"{lo['train_pairs']['margin']:+.3g} on its "
            f"trained pairs and KL {lo['kl']['kl_per_token']:.2e} nats/token ({'NO-OP' if noop_reason(lo) else 'moved'}), "
            f"lr {hi['lr']:g} at {hi['train_pairs']['margin']:+.3g} and {hi['kl']['kl_per_token']:.2e} "
            f"({'NO-OP' if noop_reason(hi) else 'moved'}){dom}. The greedy domain answer "
            f"{'changed' if changed[lo['lr']] else 'did not change'} at {lo['lr']:g} and "
            f"{'changed' if changed[hi['lr']] else 'did not change'} at {hi['lr']:g} (samples table). Both runs saw "
            "the same pairs and steps; only how far each step may move the policy differs, and it compounds with "
            "steps (the seed paired its rate with an 8B policy and hundreds of steps)."
        )
    if ctx.profile == "cpu":
        ctx.finding(
            f"cpu profile: {EMBEDDED_LLM.label} + the Phase 9 cpu adapter, {tp['n']} HH-RLHF pairs short enough for "
            f"{cfg.max_length} tokens, {main['steps']} steps of batch {cfg.batch_size} ({main['s_per_step']:.1f} s/step "
            "on a shared core); the seed trained an 8B policy on its whole filtered HH-RLHF selection (reference rows). "
            "Peak memory here is the whole process's resident set."
        )


def _round(value, digits: int = 4):
    return None if value is None else round(value, digits)


def _sci(value):
    return None if value is None else f"{value:.2e}"


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


EXERCISE = Exercise(
    id="phase10.dpo",
    title="DPO on the SFT adapter: does it move the policy, and what the learning rate decides",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},
        # The seed: Llama 3.1 8B NF4 + Phase 9 adapter, 1,948 HH-RLHF pairs after filtering, beta 0.1, lr 5e-7.
        "a100": dict(
            data_source="hub",
            split="train",
            data_start=0,
            n_candidates=2000,
            n_train=None,
            n_eval=32,
            n_drift=16,
            drift_tokens=128,
            max_length=512,
            max_steps=None,
            epochs=1.0,
            batch_size=2,
            grad_accum=2,
            learning_rate=5e-7,
            ablation_learning_rate=2e-4,
            sample_tokens=120,
            require_cuda=True,
        ),
    },
    # a real rate on 2 pairs for 3 steps: the margin moves in seconds (a no-op is tested with the seed's rate)
    tiny=dict(
        n_candidates=300,
        n_train=2,
        n_eval=2,
        n_drift=1,
        drift_tokens=8,
        max_length=64,
        max_steps=3,
        batch_size=2,
        learning_rate=1e-3,
        lr_scheduler="constant",
        warmup=0.0,
        ablation_learning_rate=None,
        sample_tokens=2,
        save_adapter=False,
    ),
    # the a100 recipe (NF4 base, lr 5e-7, paged 8-bit AdamW, bf16) on a few local pairs for a few steps
    smoke=dict(
        data_source="local",
        n_candidates=300,
        n_train=4,
        n_eval=2,
        n_drift=1,
        drift_tokens=8,
        max_length=128,
        max_steps=3,
        sample_tokens=2,
    ),
    references=REFERENCES,
    summary_metrics=("train_pairs_margin", "heldout_pairs_accuracy", "kl_per_token"),
    needs=(SFT_ADAPTER,),
    produces=(DPO_ADAPTER,),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
