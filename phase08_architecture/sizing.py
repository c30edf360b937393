"""What each ``a100`` exercise asks of the machine, computed: models, gated repos, download, VRAM, disk.

Why: "will it fit, and what must I accept and download first" is Phase 8's question asked of the
whole lab, and a rented GPU is billed while you find out. Every number is computed, never typed:
parameter counts from the published configs (``configs/*.json``) built on the meta device, bytes per
parameter of the dtype each exercise loads, the KV formula of ``kv_cache.kv_cache_bytes``, the LoRA
count of its targeted Linear shapes, and the context and batch read from the exercise's own a100
config. ``lab report`` renders the table into README.md (``REPORT_SECTIONS`` in this package);
the seed's wall time and cost are quoted from the curriculum text where it states them.

VRAM is what the weights, the KV cache, training state (LoRA or full weights: fp32 copy, gradient,
two Adam moments) and one batch of fp32 logits need; other activations (small under gradient
checkpointing) and the CUDA context come on top. NF4 puts every ``nn.Linear`` but ``lm_head`` in
4 bits (+ double-quantized absmax: 4.127 bits/param); everything else stays bf16 — including
Mixtral's fused expert tensors, which transformers 5.x does not quantize (hence its row).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from lab.report import md_table
from phase08_architecture.kv_cache import kv_cache_bytes
from phase08_architecture.model_configs import CONFIG_DIR, hf_config, load_config

GPU_GB = 80.0  # the seed's A100 80 GB
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 absmax blocks
SERVED_CONTEXT = 16384  # the vLLM / lab serve context the agentic phases are sized for (Makefile --max-model-len)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FULL_TRAIN_BYTES = 4 + 4 + 8  # fp32 weight, fp32 gradient, Adam's two fp32 moments
LORA_TRAIN_BYTES = 4 + 4 + 8  # the same per LoRA parameter (adapters train in fp32)


@dataclass(frozen=True)
class Hub:
    """A model on the Hugging Face Hub: its published config, stored bytes per parameter, licence gate."""

    config: str  # a shipped config name or a file in configs/
    stored_bytes: int  # safetensors dtype as published: 2 (bf16) or 4 (fp32)
    gated: bool
    causal: bool = True


MODELS = {
    "meta-llama/Llama-3.1-8B-Instruct": Hub("llama-3.1-8b", 2, gated=True),
    "meta-llama/Llama-3.2-1B-Instruct": Hub(str(CONFIG_DIR / "llama-3.2-1b.json"), 2, gated=True),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": Hub("mixtral-8x7b", 2, gated=True),
    "sentence-transformers/all-mpnet-base-v2": Hub(str(CONFIG_DIR / "all-mpnet-base-v2.json"), 4, False, causal=False),
    "cross-encoder/ms-marco-MiniLM-L-6-v2": Hub(
        str(CONFIG_DIR / "ms-marco-minilm-l-6-v2.json"), 4, False, causal=False
    ),
}
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(frozen=True)
class Workload:
    """How an exercise uses its main model on the GPU. ``kind``: none (no GPU model), infer (bf16),
    nf4 (4-bit inference), qlora (4-bit base + LoRA training), full (all weights trained in fp32),
    served (behind vLLM / lab serve). Context and batch name config keys, or give numbers."""

    kind: str
    model: str | None = None  # None: the model the a100 config names
    context: tuple[str | int, ...] = ()  # summed: config keys or token counts
    batch: str | int = 1
    sequences_per_row: int = 1  # DPO and reward models read chosen + rejected
    lora_r: str | int | None = None  # a config key (or number); a list of ranks trains one adapter each
    extra: tuple[str, ...] = ()  # models beside the main one (encoders, rerankers)


PROMPT = 512  # prompt tokens budgeted where a config names only the reply length
WORKLOADS: dict[str, Workload] = {
    "phase08.architecture": Workload("infer", LLAMA_8B, context=(PROMPT,)),
    "phase08.kv_cache": Workload("infer", LLAMA_8B, context=("measure_tokens",)),
    "phase08.moe_routing": Workload("nf4", context=(PROMPT,)),
    "phase09.dataset": Workload("none"),
    "phase09.qlora": Workload("qlora", context=("max_length",), batch="batch_size", lora_r="lora_r"),
    "phase09.rank_sweep": Workload("qlora", context=("max_length",), batch="batch_size", lora_r="ranks"),
    "phase09.before_after": Workload("infer", LLAMA_8B, context=(PROMPT, "max_new_tokens"), batch="batch_size"),
    "phase10.reward_model": Workload("full", context=("max_length",), batch="batch_size", sequences_per_row=2),
    "phase10.dpo": Workload(
        "qlora", LLAMA_8B, context=("max_length",), batch="batch_size", sequences_per_row=2, lora_r=16
    ),
    "phase10.compare": Workload("infer", LLAMA_8B, context=(PROMPT, "max_new_tokens")),
    "phase10.judge": Workload("infer", LLAMA_8B, context=(PROMPT, "max_new_tokens")),
    "phase11.eval_set": Workload("none"),
    "phase11.calibration": Workload("none"),
    "phase11.contamination": Workload("infer", LLAMA_8B, context=(PROMPT, "max_new_tokens")),
    "phase11.model_comparison": Workload("infer", LLAMA_8B, context=(PROMPT, "max_new_tokens")),
    "phase12.embeddings": Workload("none", extra=("sentence-transformers/all-mpnet-base-v2",)),
    "phase12.rag_from_scratch": Workload(
        "infer", context=(PROMPT * 4, "max_tokens"), extra=("sentence-transformers/all-mpnet-base-v2",)
    ),
    "phase12.storage_bench": Workload("none"),
    "phase12.hyde_rerank": Workload(
        "infer",
        context=(PROMPT, "hyde_max_tokens"),
        extra=("sentence-transformers/all-mpnet-base-v2", "cross-encoder/ms-marco-MiniLM-L-6-v2"),
    ),
    "phase12.ragas_eval": Workload(
        "infer", context=(PROMPT * 4, "answer_max_tokens"), extra=("sentence-transformers/all-mpnet-base-v2",)
    ),
    "phase13.failure_modes": Workload("none"),
    "phase15.contention": Workload("none"),
    "phase16.load": Workload("served", batch="workers"),
}
SERVED = Workload("served")  # every other exercise whose a100 config names an openai:<model>@<url> spec

# The seed's wall time and cost, quoted from the curriculum text (its summary table and exercise tables)
SEED_RUNS = {
    "phase08.moe_routing": ("not stated", "A100 SXM4 80GB on RunPod at $1.52/hr"),
    "phase09.qlora": ("5m10s", "~$0.15"),
    "phase09.rank_sweep": ("~310 s per rank (308–312 s)", "not stated"),
    "phase10.reward_model": ("~1 hour", "~$2"),
    "phase10.dpo": ("~16 minutes (VRAM 51GB / 80GB)", "~$0.50"),
    "phase11.model_comparison": ("not stated", "~$1.50 for Phase 11 (inference + 150 judge API calls)"),
    "phase12.hyde_rerank": ("not stated (M1 Pro, no GPU)", "~$0.50 for Phase 12 (HyDE + RAGAS API calls)"),
}


# --- arithmetic ---------------------------------------------------------------------------------
@cache
def counts(model: str) -> tuple[int, int, int]:
    """``(parameters, of which in nn.Linear layers a 4-bit load quantizes, LoRA params per rank)``."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from transformers import AutoModel, AutoModelForCausalLM  # noqa: PLC0415 (heavy: transformers loads on first use)

    hub = hub_of(model)
    with torch.device("meta"):
        built = (AutoModelForCausalLM if hub.causal else AutoModel).from_config(hf_config(load_config(hub.config)))
    linears = [(n, m) for n, m in built.named_modules() if isinstance(m, torch.nn.Linear)]
    quantized = sum(m.weight.numel() for n, m in linears if not n.endswith("lm_head"))
    per_rank = sum(m.in_features + m.out_features for n, m in linears if n.rsplit(".", 1)[-1] in LORA_TARGETS)
    return sum(p.numel() for p in built.parameters()), quantized, per_rank


def hub_of(model: str) -> Hub:
    if model not in MODELS:
        raise KeyError(f"{model}: no published config in phase08_architecture.sizing.MODELS; add its config.json")
    return MODELS[model]


def weights_bytes(model: str, load: str) -> int:
    """Bytes of the weights as loaded: bf16, fp32, or NF4 (quantized Linear layers, the rest bf16)."""
    total, quantized, _ = counts(model)
    if load == "nf4":
        return round(quantized * NF4_BITS / 8) + (total - quantized) * 2
    return total * {"bf16": 2, "fp32": 4}[load]


def download_bytes(model: str) -> int:
    return counts(model)[0] * hub_of(model).stored_bytes


def _value(cfg: dict[str, Any], key: str | int) -> int:
    value = cfg[key] if isinstance(key, str) else key
    return max(value) if isinstance(value, (list, tuple)) else int(value)


@dataclass(frozen=True)
class Row:
    exercise: str
    models: list[str]
    gated: list[str]
    download: int
    vram: int
    disk: int
    command: str


def size(exercise, workload: Workload) -> Row:
    """One exercise's row from its a100 config and workload."""
    cfg = exercise.config("a100").model_dump()
    model = workload.model or _configured_model(cfg)
    models = ([model] if model else []) + list(workload.extra)
    vram = sum(weights_bytes(m, "fp32") for m in workload.extra)
    disk = 0
    if model and workload.kind != "none":
        hub_cfg = load_config(hub_of(model).config)
        context = sum(_value(cfg, k) for k in workload.context) if workload.context else SERVED_CONTEXT
        seqs = _value(cfg, workload.batch) * workload.sequences_per_row
        total, _, per_rank = counts(model)
        logits = seqs * context * hub_cfg["vocab_size"] * 4
        if workload.kind == "full":  # a reward model: a scalar head, no vocabulary logits
            vram += total * FULL_TRAIN_BYTES
            disk += total * 4  # the trained model is saved in fp32
        elif workload.kind == "qlora":
            ranks = cfg[workload.lora_r] if isinstance(workload.lora_r, str) else workload.lora_r
            ranks = ranks if isinstance(ranks, list) else [ranks]
            vram += weights_bytes(model, "nf4") + per_rank * max(ranks) * LORA_TRAIN_BYTES + logits
            disk += per_rank * sum(ranks) * 4  # every adapter, saved in fp32
        else:
            load = "nf4" if workload.kind == "nf4" else "bf16"
            vram += weights_bytes(model, load) + kv_cache_bytes(hub_cfg, context, seqs)
    return Row(
        exercise.id,
        models,
        [m for m in models if hub_of(m).gated],
        sum(download_bytes(m) for m in models),
        vram,
        disk + sum(download_bytes(m) for m in models),
        f"lab run {exercise.id} --profile a100",
    )


def _configured_model(cfg: dict[str, Any]) -> str | None:
    """The hub model an a100 config names: a ``model`` key, or the model of an ``llm`` spec."""
    if isinstance(cfg.get("model"), str):
        return cfg["model"]
    spec = cfg.get("llm") or ""
    provider, _, rest = spec.partition(":")
    if provider in ("local", "openai"):
        return rest.rpartition("@")[0] or rest
    return None


def a100_exercises(phases) -> list:
    return [ex for phase in phases for ex in phase.exercises if "a100" in ex.profiles]


def rows(phases) -> list[Row]:
    """A row per exercise with an a100 profile; the workload of a served model unless one is declared."""
    return [size(ex, WORKLOADS.get(ex.id, SERVED)) for ex in a100_exercises(phases)]


# --- the table ------------------------------------------------------------------------------------
def gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes else "—"


def render(phases) -> str:
    """The README section: one row per a100 exercise, then how the numbers were computed."""

    table = []
    for r in rows(phases):
        wall, cost = SEED_RUNS.get(r.exercise, ("not stated", "not stated"))
        fits = "" if r.vram <= GPU_GB * 1e9 else f" (over {GPU_GB:.0f} GB)"
        table.append(
            [
                f"`{r.exercise}`",
                ", ".join(r.models) or "— (no GPU model)",
                ", ".join(r.gated) or "none",
                gb(r.download),
                gb(r.vram) + fits,
                gb(r.disk),
                wall,
                cost,
                f"`{r.command}`",
            ]
        )
    counted = {m: counts(m)[0] for m in MODELS}
    notes = "; ".join(f"{m} {n:,} params" for m, n in counted.items())
    return "\n".join(
        [
            md_table(
                [
                    "exercise",
                    "model(s)",
                    "gated: accept on HF",
                    "download",
                    "VRAM (computed)",
                    "disk",
                    "seed wall time",
                    "seed cost",
                    "command",
                ],
                table,
            ),
            "",
            f"Computed by [`phase08_architecture/sizing.py`](phase08_architecture/sizing.py) from the published configs "
            f"({notes}); download = parameters × the published dtype; VRAM = weights as loaded + KV cache at the "
            f"exercise's context × batch (served rows: {SERVED_CONTEXT:,} tokens, the server's --max-model-len) + "
            "training state + one batch of fp32 logits — activations and the CUDA context come on top, and vLLM "
            "reserves its --gpu-memory-utilization share of the card whatever the model needs. Hosted judges "
            "(anthropic:…) need a key, not a GPU.",
        ]
    )
