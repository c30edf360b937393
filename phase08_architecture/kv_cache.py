"""8.2 KV-cache arithmetic: MHA vs GQA vs MQA at scale — and a sizing tool for any config.json.

Every token in context keeps one key and one value vector per layer per K/V head:

    bytes = 2 (K and V) × layers × kv_heads × head_dim × tokens × batch × bytes_per_element

Weights are paid once; the cache is paid per token per concurrent sequence. At long context and
real concurrency the cache, not the weights, fills the GPU — and the number of K/V heads (MHA:
one per query head, GQA: a group, MQA: one) is the architectural knob that sets its size.

The function is written out here (it is the lesson) and checked against the bytes a real model
actually holds: run a forward pass, sum the ``nbytes`` of the returned cache tensors, compare.
Size your own model with::

    lab run phase08.kv_cache --set config=path/to/config.json --set context=65536 --set batch=8

(add ``--set measure_tokens=[]`` to skip the measured cache of the embedded model and get the sizing in seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from lab import ConfigError, Exercise, ExerciseConfig, MissingResource, Reference, RunContext, models
from lab.device import current
from lab.models import DEFAULT_LLM, explain_load_failure
from phase08_architecture.model_configs import load_config, meta_model

DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "float8": 1,
    "fp8": 1,
    "int8": 1,
}
K = 1024  # "8K" context = 8,192 tokens; GB below are decimal (1e9 bytes), as in the seed
CAPSTONE_AGENTS, CAPSTONE_CONTEXT = 4, 32 * K  # Phase 16's four agents at 32K each


@dataclass(frozen=True)
class KVShape:
    """What the cache size depends on, read from a config.json."""

    name: str
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int | None = None  # layers with a window keep at most this many tokens
    sliding_layers: int = 0  # how many of `layers` use the window

    def bytes_per_token(self, dtype: str = "bfloat16") -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes(dtype)

    @property
    def kind(self) -> str:
        if self.kv_heads == self.q_heads:
            return "MHA"
        return "MQA" if self.kv_heads == 1 else "GQA"


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _field(cfg: dict, name: str, *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    raise ConfigError(f"config {name}: no {' / '.join(keys)} field, cannot size its KV cache")


def kv_shape(config: dict[str, Any]) -> KVShape:
    """Layers, heads and head_dim from any HF config.json dict (GPT-2, Llama, Mistral, Qwen...)."""
    name = config.get("_name", "config")
    cfg = config.get("text_config") or config  # multimodal configs nest the language model
    if cfg.get("kv_lora_rank") is not None:
        raise ConfigError(
            f"config {name}: multi-head latent attention (kv_lora_rank) caches a latent, "
            "not per-head K/V; this formula does not apply"
        )
    layers = int(_field(cfg, name, "num_hidden_layers", "n_layer", "num_layers"))
    q_heads = int(_field(cfg, name, "num_attention_heads", "n_head"))
    kv_heads = cfg.get("num_key_value_heads") or (1 if cfg.get("multi_query") else q_heads)
    head_dim = cfg.get("head_dim") or int(_field(cfg, name, "hidden_size", "n_embd")) // q_heads
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    layer_types = cfg.get("layer_types")
    if window and layer_types:
        sliding = sum(t == "sliding_attention" for t in layer_types)
    else:
        sliding = layers if window else 0
    return KVShape(name, layers, q_heads, int(kv_heads), int(head_dim), window or None, sliding)


def kv_cache_bytes(config: dict[str, Any] | KVShape, context: int, batch: int = 1, dtype: str = "bfloat16") -> int:
    """Bytes of K and V held for `batch` sequences of `context` tokens (the lesson's formula)."""
    if context < 0 or batch < 0:
        raise ConfigError(f"context ({context}) and batch ({batch}) must be >= 0")
    shape = config if isinstance(config, KVShape) else kv_shape(config)
    per_layer_token = 2 * shape.kv_heads * shape.head_dim * dtype_bytes(dtype)
    full = shape.layers - shape.sliding_layers
    windowed = min(context, shape.sliding_window) if shape.sliding_window else 0
    return per_layer_token * batch * (full * context + shape.sliding_layers * windowed)


def variants(shape: KVShape) -> list[KVShape]:
    """The model as shipped plus its hypothetical MHA and MQA twins (same layers and head_dim)."""
    out = [shape]
    for kv, label in ((shape.q_heads, "MHA"), (1, "MQA")):
        if kv != shape.kv_heads:
            out.append(replace(shape, name=f"{shape.name} {label} (hypothetical)", kv_heads=kv))
    return out


def gb(n_bytes: int) -> float:
    return n_bytes / 1e9


def ctx_label(tokens: int) -> str:
    return f"{tokens // K}K" if tokens % K == 0 else str(tokens)


# --- measuring a real cache -------------------------------------------------------------------
def cache_nbytes(cache) -> int:
    """Bytes actually held by a transformers cache (every K and V tensor of every layer)."""
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


def prefill(model, n_tokens: int, chunk: int, seed: int = 0):
    """Run `n_tokens` random token ids through the model in chunks; returns the filled cache.

    Chunked prefill keeps activations (and logits: only the last position is computed) small,
    so that what stays allocated afterwards is the cache itself.
    """
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from transformers import DynamicCache  # noqa: PLC0415 (heavy: transformers loads on first use)

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=gen).to(model.device)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        for start in range(0, n_tokens, chunk):
            out = model(input_ids=ids[:, start : start + chunk], cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            del out
    return cache


def measure(cfg: Config, ctx: RunContext) -> list[list[Any]]:
    """Formula vs the bytes a real model's cache holds (and, on CUDA, the allocator's delta)."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    rows = []
    for dtype in cfg.measure_dtypes:
        try:
            model, _ = models.load_causal_lm(
                cfg.measure_model, dtype=getattr(torch, dtype), device_map=current().place(cfg.device)
            )
        except MissingResource as exc:
            ctx.skip(str(exc))
        except OSError as exc:
            ctx.skip(explain_load_failure(cfg.measure_model, exc))
        model.eval()
        shape = kv_shape({**model.config.to_dict(), "_name": cfg.measure_model})
        ctx.model(cfg.measure_model, dtype=dtype, n_params=sum(p.numel() for p in model.parameters()))
        for n in cfg.measure_tokens:
            cuda = current().place(cfg.device).startswith("cuda")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                before = torch.cuda.memory_allocated()
            cache = prefill(model, n, cfg.measure_chunk, seed=cfg.seed)
            held = cache_nbytes(cache)
            allocated = None
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                allocated = torch.cuda.memory_allocated() - before
            formula = kv_cache_bytes(shape, n, 1, dtype)
            rows.append(
                [
                    cfg.measure_model,
                    dtype,
                    n,
                    formula,
                    held,
                    held - formula,
                    allocated,
                    None if allocated is None else round(allocated / formula, 4),
                ]
            )
            del cache
        del model
    return rows


# --- the exercise -----------------------------------------------------------------------------
class Config(ExerciseConfig):
    config: str = "llama-3.1-8b"  # the model to size: a shipped config name or any config.json path
    context: int = 32768  # the point to size it at (headline metric kv_cache_gb)
    batch: int = 1
    dtype: str = "bfloat16"
    contexts: list[int] = [8 * K, 32 * K, 128 * K]
    batches: list[int] = [1, 10, 50]
    gpu_memory_gb: float = 80.0  # the card drawn on the plot and used for "fits?" (A100 80GB)
    measure_model: str = DEFAULT_LLM
    measure_tokens: list[int] = [40, 200]  # 200 > chunk: the cache grows across calls
    measure_dtypes: list[str] = ["float32", "bfloat16"]
    measure_chunk: int = 128
    device: str = "cpu"


SEED_GRID = (  # (metric prefix, shipped config, kv-head variant) — the seed's table rows
    ("kv_8b_gqa", "llama-3.1-8b", None),
    ("kv_8b_mha", "llama-3.1-8b", "MHA"),
    ("kv_8b_mqa", "llama-3.1-8b", "MQA"),
    ("kv_70b_gqa", "llama-3.1-70b", None),
)


def _grid_shape(config_name: str, variant: str | None) -> KVShape:
    shape = kv_shape(load_config(config_name))
    if variant is None:
        return replace(shape, name=f"{shape.name} {shape.kind} (actual)")
    return next(v for v in variants(shape) if v.name.endswith(f"{variant} (hypothetical)"))


def _weights_bytes(config: dict, dtype: str) -> int | None:
    """Parameter bytes from the meta model of the config (None if transformers cannot build it)."""

    try:
        return sum(p.numel() for p in meta_model(config).parameters()) * dtype_bytes(dtype)
    except Exception:  # an architecture transformers does not know: size the cache only
        return None


def plot(shapes: list[KVShape], dtype: str, gpu_gb: float, path) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    contexts = [2**p for p in range(10, 18)]  # 1K .. 128K
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, batch in zip(axes, (1, 10)):
        for s in shapes:
            ax.plot(
                contexts, [gb(kv_cache_bytes(s, c, batch, dtype)) for c in contexts], marker="o", ms=3, label=s.name
            )
        ax.axhline(gpu_gb, color="red", ls="--", lw=1)
        ax.text(contexts[0], gpu_gb * 1.15, f"one A100 {gpu_gb:g} GB", color="red", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(contexts, [ctx_label(c) for c in contexts])
        ax.set_xlabel("context (tokens)")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"KV cache, GB ({dtype})")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("KV cache vs context: MHA / GQA / MQA")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: Config, ctx: RunContext) -> None:

    if current().place(cfg.device) is None:
        ctx.skip(f"the measured cache runs on CUDA (device={cfg.device}); none here")

    # 1. the seed's table, from the shipped official configs
    grid_rows, grid_shapes = [], []
    for prefix, name, variant in SEED_GRID:
        shape = _grid_shape(name, variant)
        grid_shapes.append(shape)
        for c in cfg.contexts:
            cells = []
            for b in cfg.batches:
                value = round(gb(kv_cache_bytes(shape, c, b, cfg.dtype)), 1)
                ctx.metric(f"{prefix}_{ctx_label(c).lower()}_b{b}_gb", value, "GB", higher_is_better=False)
                cells.append(value)
            grid_rows.append([shape.name, ctx_label(c), *cells, shape.bytes_per_token(cfg.dtype)])
    ctx.table(
        "seed_grid",
        grid_rows,
        ["config", "context", *[f"batch={b} (GB)" for b in cfg.batches], "bytes/token"],
        title=f"KV cache, decimal GB, {cfg.dtype} — the seed's table (+ MQA) from the shipped configs",
    )

    capstone = kv_cache_bytes(_grid_shape("llama-3.1-8b", None), CAPSTONE_CONTEXT, CAPSTONE_AGENTS, cfg.dtype)
    ctx.metric(
        "capstone_4_agents_32k_gb",
        round(gb(capstone), 1),
        "GB",
        higher_is_better=False,
        description="four Llama 3.1 8B agents, 32K context each",
    )

    # 2. the model being sized: as shipped, and its MHA / MQA twins
    config = load_config(cfg.config)
    shape = kv_shape(config)
    weights = _weights_bytes(config, cfg.dtype)
    size_rows = []
    for v in variants(shape):
        per_seq = kv_cache_bytes(v, cfg.context, 1, cfg.dtype)
        total = per_seq * cfg.batch
        fit = (
            None
            if weights is None
            else max(0, math.floor((cfg.gpu_memory_gb * 1e9 - weights) / per_seq))
            if per_seq
            else None
        )
        size_rows.append(
            [
                v.name,
                v.kind,
                f"{v.q_heads}:{v.kv_heads}",
                v.bytes_per_token(cfg.dtype),
                ctx_label(cfg.context),
                cfg.batch,
                round(gb(total), 2),
                None if weights is None else round(gb(weights), 2),
                fit,
            ]
        )
    ctx.table(
        "sizing",
        size_rows,
        [
            "config",
            "attention",
            "Q:KV heads",
            "bytes/token",
            "context",
            "batch",
            "KV cache (GB)",
            "weights (GB)",
            f"max sequences on {cfg.gpu_memory_gb:g} GB",
        ],
        title=f"Sizing {shape.name} ({config['_source']}) at {ctx_label(cfg.context)} × batch {cfg.batch}, {cfg.dtype}",
    )
    ctx.metric(
        "kv_cache_gb",
        round(gb(kv_cache_bytes(shape, cfg.context, cfg.batch, cfg.dtype)), 2),
        "GB",
        higher_is_better=False,
        description=f"{shape.name} at context {cfg.context}, batch {cfg.batch}",
    )
    ctx.metric("kv_bytes_per_token", shape.bytes_per_token(cfg.dtype), "bytes", higher_is_better=False)
    max_pos = config.get("max_position_embeddings") or config.get("n_positions")
    if max_pos and cfg.context > max_pos:
        ctx.finding(
            f"{shape.name} was trained for at most {max_pos:,} positions; {cfg.context:,} is beyond that "
            "(the arithmetic holds, the model may not)."
        )
    if shape.sliding_window:
        ctx.finding(
            f"{shape.name}: {shape.sliding_layers} of {shape.layers} layers use a {shape.sliding_window:,}-token "
            "sliding window and are counted at min(context, window) tokens."
        )

    # 3. the formula against a real cache (measure_tokens=[] skips it: sizing only)
    rows = measure(cfg, ctx) if cfg.measure_tokens else []
    if rows:
        ctx.table(
            "measured",
            rows,
            [
                "model",
                "dtype",
                "tokens",
                "formula (bytes)",
                "cache tensors (bytes)",
                "difference",
                "CUDA allocated delta (bytes)",
                "allocated / formula",
            ],
            title="Formula vs the bytes held by a real DynamicCache after a forward pass",
        )
        ctx.metric(
            "measured_vs_formula_max_abs_diff_bytes", max(abs(r[5]) for r in rows), "bytes", higher_is_better=False
        )

    # 4. plot and what it means
    plot_shapes = grid_shapes + (
        [s for s in variants(shape)[:1]] if cfg.config not in ("llama-3.1-8b", "llama-3.1-70b") else []
    )
    plot(plot_shapes, cfg.dtype, cfg.gpu_memory_gb, ctx.artifact("kv_cache_vs_context.png"))

    gqa, mha, mqa, big = grid_shapes
    long_ctx, batch = 128 * K, 10  # the seed's headline cell
    b10_gqa, b10_mha = (kv_cache_bytes(s, long_ctx, batch, cfg.dtype) for s in (gqa, mha))
    ctx.finding(
        f"Llama 3.1 8B keeps {gqa.bytes_per_token(cfg.dtype):,} bytes per token ({gqa.layers} layers × {gqa.kv_heads} K/V heads × "
        f"{gqa.head_dim} dims × K,V × {dtype_bytes(cfg.dtype)} B); with one K/V head per query head it would be "
        f"{mha.bytes_per_token(cfg.dtype):,} (×{mha.kv_heads // gqa.kv_heads}), with a single shared head {mqa.bytes_per_token(cfg.dtype):,}."
    )
    ctx.finding(
        f"At {long_ctx // K}K × batch {batch}: GQA {gb(b10_gqa):.1f} GB vs MHA {gb(b10_mha):.1f} GB — the MHA cache alone needs "
        f"{math.ceil(gb(b10_mha) / cfg.gpu_memory_gb)} cards of {cfg.gpu_memory_gb:g} GB; the 8B weights are "
        f"{gb(_weights_bytes(load_config('llama-3.1-8b'), cfg.dtype)):.1f} GB."
    )
    ctx.finding(
        f"70B keeps {big.bytes_per_token(cfg.dtype):,} bytes/token, only {big.layers / gqa.layers:g}× the 8B "
        f"({big.layers} vs {gqa.layers} layers, {big.kv_heads} vs {gqa.kv_heads} K/V heads): "
        "GQA makes the cache grow with depth, not with width."
    )
    ctx.finding(
        f"Capstone: {CAPSTONE_AGENTS} 8B agents at {CAPSTONE_CONTEXT // K}K each hold {gb(capstone):.1f} GB of "
        "KV cache in total."
    )
    exact = all(r[5] == 0 for r in rows)
    if rows:
        ctx.finding(
            f"Measured: {len(rows)} forward passes of {cfg.measure_model} ({', '.join(cfg.measure_dtypes)}; "
            f"{', '.join(str(n) for n in cfg.measure_tokens)} tokens) left caches whose tensors hold "
            + (
                "exactly the bytes the formula predicts."
                if exact
                else "bytes that differ from the formula (see the measured table)."
            )
        )
    if not exact:
        ctx.failure_mode("the formula and a real cache disagree; see the measured table")
    if dtype_bytes(cfg.dtype) == 2:  # the seed's table is bf16
        b1, b10, b50 = SEED_TABLE["kv_8b_gqa_32k"]
        ctx.finding(
            f"The seed prints {b50} GB for 8B GQA at 32K × batch 50; its own 32K × batch 1 ({b1} GB) and × 10 ({b10} GB) "
            f"give {gb(kv_cache_bytes(gqa, 32 * K, 50, cfg.dtype)):.1f} GB, which is what the formula gives: "
            "a slip in the seed's table."
        )


SEED_TABLE = {  # the seed's published table (decimal GB), batch 1, 10, 50
    "kv_8b_gqa_8k": (1.1, 10.7, 53.7),
    "kv_8b_gqa_32k": (4.3, 42.9, 214.4),
    "kv_8b_gqa_128k": (17.2, 171.8, 859.0),
    "kv_8b_mha_128k": (68.7, 687.2, 3436.0),
    "kv_70b_gqa_128k": (42.9, 429.5, 2147.5),
}


def _seed_refs() -> tuple[Reference, ...]:
    refs = [
        Reference(f"{row}_b{b}_gb", v, "GB", f"seed table, batch {b}")
        for row, vals in SEED_TABLE.items()
        for b, v in zip((1, 10, 50), vals)
    ]
    refs.append(Reference("capstone_4_agents_32k_gb", 17.2, "GB", "seed: four agents at 32K"))
    return tuple(refs)


EXERCISE = Exercise(
    id="phase08.kv_cache",
    title="KV-cache arithmetic: MHA vs GQA vs MQA at scale",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},
        # the seed's model: measure a real Llama 3.1 8B cache in GPU memory at 8K and 32K
        "a100": {
            "measure_model": "meta-llama/Llama-3.1-8B-Instruct",
            "measure_tokens": [8 * K, 32 * K],
            "measure_dtypes": ["bfloat16"],
            "measure_chunk": 2048,
            "device": "cuda",
        },
    },
    tiny={"measure_tokens": [64], "measure_dtypes": ["float32"], "measure_chunk": 32},
    smoke={"measure_tokens": [256, 512], "measure_chunk": 128},  # bf16 on the tiny Llama stand-in
    references=_seed_refs(),
    summary_metrics=("kv_8b_gqa_128k_b1_gb", "kv_8b_mha_128k_b10_gb", "measured_vs_formula_max_abs_diff_bytes"),
    methods={
        "cpu": "same",
        "a100": "same",
    },  # the arithmetic is the method; cpu measures the cache on the embedded chat model
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
