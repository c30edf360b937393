"""SFT with LoRA or QLoRA through trl + peft: the one training function Phases 9 and 10 share.

SFT, LoRA and QLoRA stack rather than compete: SFT is the objective (next-token loss on the
answer), LoRA freezes the base and trains low-rank adapters A·B on chosen projections, QLoRA also
stores the frozen base in 4-bit NF4 while the adapters (and the matmul compute) stay in bf16.
``train_sft`` does all three; ``qlora=False`` is plain LoRA on a full-precision base.

Adapters are written with ``save_pretrained`` on the PEFT model only (adapter_config.json +
adapter_model.safetensors): no optimizer state, no trainer checkpoints (``save_strategy="no"``).
The profile's published adapter lives in the lab's artifact store (``SFT_ADAPTER``), keyed by its
recipe: every setting that changes the weights is in ``sft_params``, so a changed recipe is a new
adapter and never a stale one.
"""

from __future__ import annotations

import copy
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import models
from lab.artifacts import ArtifactKind, Reporter
from lab.device import current, smoke_active
from lab.errors import ConfigError
from lab.models import DEFAULT_LLM
from lab.repeatable import repeatable
from phase09_finetuning.dataset import dataset_sha256, load_training_set

# All attention and FFN projections of a Llama-style block (the seed's choice for Llama 3.1 8B).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"

# The adapter each profile publishes for later phases (Phase 10 DPO starts from it). The qlora
# exercise's canonical run trains exactly this recipe; `lab artifacts build phase09.sft_adapter` too.
SFT_RECIPES: dict[str, dict[str, Any]] = {
    # cpu: one full epoch over the training rows (69 steps of 4 rows), so the adapter has seen every
    # answer once and a held-out loss measures what it learned, not a few batches of it. 256 tokens
    # hold every training row but one whole (chat template included: median 159, max 273). One fp32
    # step of 4 x ~160 tokens takes ~10 s on one shared core, so the epoch is ~10-15 minutes.
    # lr 5e-4 (not the 2e-4 of the 8B recipe) so the embedded chat model (135M) moves visibly within one epoch.
    "cpu": dict(model_id=DEFAULT_LLM, lora_r=16, qlora=False, epochs=1.0, lr=5e-4, batch_size=4, max_length=256),
    # The seed's run: Llama 3.1 8B Instruct, NF4 base + bf16 LoRA r=16 on q,k,v,o,gate,up,down,
    # 3 epochs at an effective batch of 16 (the seed's 102 steps over ~550 pairs = ~34 steps/epoch).
    "a100": dict(
        model_id=LLAMA_8B, lora_r=16, qlora=True, epochs=3, lr=2e-4, batch_size=4, grad_accum=4, max_length=1024
    ),
}


# A smoke (lab.device.smoke_active) trains the a100 recipe at toy size on the tiny stand-in model: NF4,
# rank, targets and learning rate stay the recipe's; only data, steps and lengths shrink.
SMOKE_SIZES: dict[str, Any] = dict(max_steps=2, subset=8, batch_size=2, grad_accum=2, max_length=128)

# Bump when train_sft changes what it trains from the same settings: stored adapters then stop matching.
TRAINER_VERSION = "train_sft/1"


def sft_params(
    *,
    model_id: str,
    lora_r: int,
    qlora: bool,
    lr: float,
    batch_size: int,
    max_length: int,
    max_steps: int | None = None,
    epochs: float | None = None,
    grad_accum: int = 1,
    seed: int = 0,
    subset: int = 0,
) -> dict[str, Any]:
    """The recipe of an SFT adapter: everything that determines its weights, normalised so that the
    same training written two ways (epochs ignored when steps are set, 3 vs 3.0) hashes the same."""

    return dict(
        base_model=model_id,
        data_sha256=dataset_sha256(),
        subset=subset or None,
        lora_r=lora_r,
        lora_targets=list(LORA_TARGETS),
        qlora=bool(qlora),
        max_steps=max_steps or None,
        epochs=None if max_steps else float(epochs or 1.0),
        lr=float(lr),
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        trainer=TRAINER_VERSION,
    )


def profile_recipe(profile: str) -> dict[str, Any]:
    """SFT_RECIPES[profile] (with SMOKE_SIZES in a smoke of the a100 profile), or a ConfigError naming
    the profiles that have one."""

    if profile not in SFT_RECIPES:
        raise ConfigError(f"no SFT recipe for profile {profile!r}; choose one of {sorted(SFT_RECIPES)}")
    if profile == "a100" and smoke_active():
        return {**SFT_RECIPES[profile], **SMOKE_SIZES}
    return SFT_RECIPES[profile]


def adapter_metrics(res: dict[str, Any]) -> dict[str, Any]:
    """What a stored SFT adapter records about its training (read by Phase 10/11 provenance)."""
    return dict(
        steps=res["steps"],
        epochs=res["epochs"],
        final_loss=res["losses"][-1] if res["losses"] else None,
        train_time_s=round(res["train_time_s"], 1),
        adapter_bytes=res["adapter_bytes"],
    )


def _build_profile_adapter(profile: str, folder: Path, reporter: Reporter) -> dict[str, Any]:

    recipe = dict(profile_recipe(profile))
    subset = recipe.pop("subset", 0)
    rows = load_training_set("train")
    res = train_sft(recipe.pop("model_id"), rows[:subset] if subset else rows, folder, ctx=reporter, **recipe)
    return {"metrics": adapter_metrics(res)}


SFT_ADAPTER = ArtifactKind(
    name="phase09.sft_adapter",
    params=lambda profile: sft_params(**profile_recipe(profile)),
    build=_build_profile_adapter,
    description="the profile's SFT LoRA adapter (SFT_RECIPES); Phase 10 DPO starts from it",
)


def model_path(model_id: str) -> str:
    """Local folder or hub id to load: an embedded GGUF model as a trainable folder, else the HF cache/hub."""

    return str(models.transformers_folder(model_id) or models.resolve(model_id))


def load_tokenizer(model_id: str):
    """The tokenizer alone (cheap): for data filtering before any model is loaded."""
    from transformers import AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

    tok = AutoTokenizer.from_pretrained(model_path(model_id))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def lora_config(r: int, alpha: int | None = None, dropout: float = 0.05):
    """LoRA on every attention and FFN projection; alpha = 2r keeps the update scale (alpha/r) fixed
    across ranks, so the rank sweep changes capacity, not the effective learning rate."""
    from peft import LoraConfig  # noqa: PLC0415 (heavy: peft loads on first use)

    return LoraConfig(
        r=r,
        lora_alpha=alpha or 2 * r,
        lora_dropout=dropout,
        bias="none",
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )


def nf4_config(compute_dtype=None):
    """QLoRA's base-weight storage: 4-bit NormalFloat, double-quantized constants, bf16 compute.

    Off the a100 path the compute dtype falls back to fp32 (bf16 matmuls are emulated on a CPU
    and were several times slower on this project's build machine); storage stays NF4.
    """
    from transformers import BitsAndBytesConfig  # noqa: PLC0415 (heavy: transformers loads on first use)

    if compute_dtype is None:
        compute_dtype = current().compute_dtype()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_base(model_id: str, *, qlora: bool = False):
    """(model, tokenizer) for training: the embedded chat model's folder or a hub id, NF4 if qlora.

    A 4-bit model must be loaded fresh for training: on CPU, any eval-mode forward of a bitsandbytes
    Linear4bit first repacks its weights for inference and later training is silently wrong.
    """
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 (heavy: transformers loads on first use)

    device = current()
    path = model_path(model_id)
    tok = load_tokenizer(model_id)
    kwargs: dict[str, Any] = {}
    if qlora:
        kwargs.update(quantization_config=nf4_config(), dtype=device.weights_dtype(), device_map=device.device_map())
    elif device.gpu_path:
        kwargs.update(dtype=device.weights_dtype(), device_map=device.device_map())
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if qlora and not device.cuda:
        keep_cpu_training_layout(model)
    return model, tok, path


# SmolLM2's ChatML template, and the same template with trl's {% generation %} markers around each assistant
# reply and its <|im_end|> (so the model learns to stop): the text it renders is identical, character for
# character, so training on every assistant turn sees exactly the prompts inference builds.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou "
    "are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou "
    "are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LOSS_ON = ("completion", "assistant")


def training_template(tok) -> str:
    """The tokenizer's chat template with generation markers (loss on every assistant turn); a ConfigError
    for a template this project has no marked twin of (trl's own list covers other model families)."""
    if tok.chat_template == CHATML_TEMPLATE:
        return CHATML_TRAINING_TEMPLATE
    if "{% generation %}" in (tok.chat_template or ""):
        return tok.chat_template
    raise ConfigError(
        "loss_on='assistant' needs a chat template with {% generation %} markers; this tokenizer's "
        "template has none and no marked twin is known here (use loss_on='completion')"
    )


def keep_cpu_training_layout(model) -> int:
    """Stop bitsandbytes' CPU backend from repacking NF4 weights for inference (returns the layers set).

    On a CPU with AVX512-BF16, the first no-grad forward of a ``Linear4bit`` repacks its weights into
    an inference layout, after which training is silently wrong (flat loss). A smoke generates a
    sample from the 4-bit policy before DPO trains it, so every 4-bit layer keeps its training layout.
    """
    import bitsandbytes as bnb  # noqa: PLC0415 (heavy: bitsandbytes loads on first use)

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    """Chat rows {"messages": [..., assistant]} -> trl's conversational prompt/completion form, so
    the loss covers only the answer tokens (completion_only_loss) and not the question."""
    out = []
    for i, row in enumerate(rows):
        msgs = row.get("messages")
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"training row {i}: expected 'messages' ending with an assistant turn")
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return out


def peak_memory_bytes() -> tuple[int, str]:
    """(bytes, what was measured): CUDA peak allocation, else the process's peak resident set."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda max_memory_allocated"
    # ru_maxrss is KiB on Linux: the whole process's peak resident set, base weights included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


# What a result records of the trainer it ran (a smoke checks these are the a100 recipe's).
RECORDED_ARGS = (
    "optim",
    "bf16",
    "gradient_checkpointing",
    "lr_scheduler_type",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
)


def train_sft(
    model_id: str,
    rows: list[dict],
    out_dir: str | Path | None,
    *,
    lora_r: int = 16,
    qlora: bool = False,
    max_steps: int | None = None,
    epochs: float | None = None,
    lr: float = 2e-4,
    batch_size: int = 4,
    grad_accum: int = 1,
    max_length: int = 256,
    seed: int = 0,
    gradient_checkpointing: bool | None = None,
    eval_rows: list[dict] | None = None,
    eval_before: bool = False,
    loss_on: str = "completion",
    ctx=None,
) -> dict[str, Any]:
    """Train a LoRA (or QLoRA) SFT adapter on chat rows and save only the adapter into out_dir
    (an empty folder: a store staging folder for an adapter that is kept, else a scratch one).

    Returns losses per step, steps and epochs trained, train_time_s, trainable/total params,
    adapter_bytes and peak memory.
    ``max_steps`` wins over ``epochs`` when both are given (tests and comparison runs are step-budgeted).
    ``eval_rows``: held-out rows scored after training (answer-token loss -> "eval_loss") and, with
    ``eval_before``, also before it ("eval_loss_before"; not for QLoRA on CPU, see load_base).
    ``loss_on``: "completion" trains on each row's last assistant turn; "assistant" on every assistant turn
    of the conversation (an agent trajectory teaches each of its decisions, its prompt computed once).
    """
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from datasets import Dataset  # noqa: PLC0415 (heavy: datasets loads on first use)
    from peft import get_peft_model, prepare_model_for_kbit_training  # noqa: PLC0415 (heavy: peft loads on first use)
    from trl import SFTConfig, SFTTrainer  # noqa: PLC0415 (heavy: trl loads on first use)

    if not rows:
        raise ValueError("train_sft: no training rows")
    if loss_on not in LOSS_ON:
        raise ConfigError(f"train_sft: loss_on {loss_on!r}: expected one of {', '.join(LOSS_ON)}")
    device = current()
    train_args = device.trainer_args(quantized=qlora)
    if gradient_checkpointing is not None:
        train_args["gradient_checkpointing"] = gradient_checkpointing
    if device.cuda:
        torch.cuda.reset_peak_memory_stats()
    model, tok, _ = load_base(model_id, qlora=qlora)
    if loss_on == "assistant":
        tok.chat_template = training_template(tok)
    base_bytes = model.get_memory_footprint()  # weights (+buffers) as stored: NF4 vs fp32/bf16
    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train_args["gradient_checkpointing"])
    repeatable(seed)  # LoRA's A matrices are drawn next: from the seed, not from what the process drew before
    model = get_peft_model(model, lora_config(lora_r))
    trainable, total = model.get_nb_trainable_parameters()

    scratch = Path(tempfile.mkdtemp(prefix="phase09-sft-"))
    args = SFTConfig(
        output_dir=str(scratch),
        max_length=max_length,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        lr_scheduler_type="cosine" if device.gpu_path else "linear",
        warmup_steps=0.03 if device.gpu_path else 0,
        max_steps=max_steps if max_steps else -1,
        num_train_epochs=epochs if epochs else 1.0,
        logging_steps=1,
        save_strategy="no",  # no optimizer checkpoints: only the adapter is kept
        report_to="none",
        # use_cpu, bf16 (CPU runs: fp32, emulated bf16 was slower there), gradient_checkpointing, optim
        **train_args,
        seed=seed,
        data_seed=seed,
        completion_only_loss=loss_on == "completion",
        assistant_only_loss=loss_on == "assistant",
        dataloader_num_workers=0,
        disable_tqdm=bool(ctx is None or getattr(ctx, "quiet", True)),
    )
    shape = to_prompt_completion if loss_on == "completion" else (lambda rs: [{"messages": r["messages"]} for r in rs])
    dataset = Dataset.from_list(shape(rows))
    eval_dataset = Dataset.from_list(shape(eval_rows)) if eval_rows else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tok)
    if ctx is not None:
        ctx.log(
            f"SFT {model_id} r={lora_r} qlora={qlora}: {trainable:,} trainable params, "
            f"{len(rows)} rows, steps={trainer.state.max_steps or max_steps}"
        )
    eval_before_loss = None
    if eval_before and eval_dataset is not None:
        if qlora and not device.cuda:
            raise ValueError("eval_before with qlora on CPU corrupts training (Linear4bit inference repack)")
        eval_before_loss = trainer.evaluate()["eval_loss"]
    started = time.perf_counter()
    out = trainer.train()
    train_time = time.perf_counter() - started
    peak, peak_kind = peak_memory_bytes()
    eval_loss = trainer.evaluate()["eval_loss"] if eval_dataset is not None else None
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]

    adapter_bytes = None
    if out_dir is not None:
        trainer.model.save_pretrained(str(out_dir))
        adapter_bytes = sum(f.stat().st_size for f in Path(out_dir).glob("adapter_model.*"))
    shutil.rmtree(scratch, ignore_errors=True)
    return dict(
        losses=[loss for _, loss in losses],
        loss_steps=[s for s, _ in losses],
        steps=out.global_step,
        epochs=round(float(trainer.state.epoch or 0.0), 4),
        rows=len(rows),
        train_time_s=train_time,
        s_per_step=train_time / max(out.global_step, 1),
        trainable_params=int(trainable),
        total_params=int(total),
        adapter_bytes=adapter_bytes,
        peak_memory_bytes=peak,
        peak_memory_kind=peak_kind,
        eval_loss=eval_loss,
        eval_loss_before=eval_before_loss,
        base_memory_bytes=base_bytes,
        trainer_args={k: getattr(getattr(args, k), "value", getattr(args, k)) for k in RECORDED_ARGS},
    )


def llama31_8b_config():
    """Llama 3.1 8B's published architecture (its config.json), for exact counts without weights."""
    from transformers import LlamaConfig  # noqa: PLC0415 (heavy: transformers loads on first use)

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def meta_model(config):
    """The architecture on the meta device: shapes without weights (an 8B model in seconds, no GPU)."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 (heavy: transformers loads on first use)

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def lora_param_count(model, r: int) -> int:
    """Exact LoRA trainable params from the targeted Linear shapes: r·(in + out) per matrix."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS
    )


def peft_trainable_count(model, r: int) -> int:
    """What peft actually creates on (a copy of) the model: the cross-check of lora_param_count."""

    from peft import get_peft_model  # noqa: PLC0415 (heavy: peft loads on first use)

    peft_model = get_peft_model(copy.deepcopy(model), lora_config(r))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
