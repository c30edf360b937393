"""8.1 Architecture inspection: nanoGPT's GPT-2 124M against Llama 3.1 8B, read from the module tree.

The lesson: every difference between GPT-2 (2019) and Llama 3.1 (2024) is an answer to a serving
problem — long agent contexts (RoPE instead of a learned position table), KV-cache memory (GQA),
throughput (RMSNorm), quality per parameter (SwiGLU). We do not copy the numbers from papers:

1. Build each architecture from its official config.json with transformers on the *meta*
   device — every parameter has its real shape and zero bytes — and read every weight shape
   and parameter count from the module tree.
2. Load a real model with real weights (the embedded chat model here, a Llama-architecture model with GQA;
   Llama 3.1 8B itself in the a100 profile), run the *same* inventory on the loaded tensors,
   and check that the meta model of its config has identical shapes: the meta numbers are the
   numbers of the real checkpoint.
3. Generate the side-by-side table from those measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab import Exercise, ExerciseConfig, MissingResource, Reference, RunContext, models
from lab.device import current
from lab.models import DEFAULT_LLM, explain_load_failure
from phase08_architecture.model_configs import load_config, meta_model

A100_GB = 80.0
# Why each feature changed. This is the lesson's prose; every cell beside it is measured.
WHY = {
    "Position encoding": "Agents pile up long tool-call histories; a learned table is a hard wall and costs params per position",
    "Normalization": "No mean subtraction and no bias: cheaper per call, and it runs 2× per layer in every forward",
    "Activation": "The gate can switch features off entirely; better loss at equal parameter count",
    "Attention": "Fewer K/V heads than Q heads shrinks the KV cache by the ratio (see phase08.kv_cache)",
    "FFN structure": "SwiGLU needs a parallel gate path; a smaller expansion keeps 3 matrices near the cost of 2",
    "Context length": "Agentic workflows accumulate tool results over many turns",
    "KV heads": "The KV cache, not the weights, dominates memory at long context and high concurrency",
    "Vocab size": "More tokens per concept covered = shorter sequences for the same text (and a bigger embedding)",
    "Total params": "Scale",
    "Non-embedding params": "The compute per token; the input embedding table is a lookup",
    "Memory (bf16)": "Weights alone; the KV cache comes on top",
}


class Config(ExerciseConfig):
    baseline: str = "gpt2-124m"  # shipped config name or path to a config.json
    modern: str = "llama-3.1-8b"
    loaded_model: str = DEFAULT_LLM  # a model loaded WITH weights, inspected the same way
    loaded_dtype: str = "float32"
    device: str = "cpu"


# --- reading the module tree ----------------------------------------------------------------
ROLES = (  # first match wins: "self_attn" must be tested before "attn"
    ("token_embedding", ("wte.", "embed_tokens.")),
    ("position_embedding", ("wpe.",)),
    ("attention", ("self_attn.", "attn.")),
    ("mlp", ("mlp.", "block_sparse_moe.")),
    ("norm", ("ln_", "norm.", "layernorm.")),
    ("lm_head", ("lm_head.",)),
)


def role_of(param_name: str) -> str:
    for role, needles in ROLES:
        if any(n in param_name for n in needles):
            return role
    return "other"


@dataclass
class Inventory:
    """Everything we report about one model, read from its parameters and modules."""

    total_params: int
    by_role: dict[str, int]
    shapes: dict[str, tuple[int, ...]]  # every parameter (tied ones once), name -> shape
    n_layers: int
    n_heads: int
    head_dim: int
    n_kv_heads: int
    fused_qkv: bool
    ffn_matrices: list[str]  # layer-0 FFN weight names
    ffn_hidden: int
    hidden: int
    norm_class: str
    norm_params: list[str]
    position_table: tuple[int, ...] | None  # learned position table shape, None when absent
    rotary_params: int | None  # learned params of a rotary module (None when there is none)
    tied_embeddings: bool
    activation: str
    max_positions: int
    vocab: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def non_embedding_params(self) -> int:
        """Total minus the input token-embedding table (the seed's convention for Llama)."""
        return self.total_params - self.by_role.get("token_embedding", 0)

    @property
    def attention_kind(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.n_kv_heads == 1 else "GQA"

    def bytes_at(self, bytes_per_param: int) -> int:
        return self.total_params * bytes_per_param


def _layer0(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Parameters of the first transformer block, keyed by their name inside the block."""
    out = {}
    for name, shape in shapes.items():
        for marker in (".h.0.", ".layers.0."):
            if marker in name:
                out[name.split(marker, 1)[1]] = shape
    if not out:
        raise ValueError("no first transformer block found (expected '.h.0.' or '.layers.0.' in parameter names)")
    return out


def inventory(model) -> Inventory:
    """Read the architecture from a model's module tree: works on meta and on loaded weights."""
    cfg = model.config
    named = dict(model.named_parameters())  # tied tensors appear once
    shapes = {n: tuple(p.shape) for n, p in named.items()}
    by_role: dict[str, int] = {}
    for name, p in named.items():
        by_role[role_of(name)] = by_role.get(role_of(name), 0) + p.numel()
    layer0 = _layer0(shapes)
    n_heads = cfg.num_attention_heads
    if "attn.c_attn.weight" in layer0:  # GPT-2: one fused Conv1D, stored [in, 3 * out]
        hidden, qkv = layer0["attn.c_attn.weight"]
        head_dim, n_kv, fused = hidden // n_heads, n_heads, True
    else:  # Llama family: separate Linear layers, stored [out, in]
        q_out, hidden = layer0["self_attn.q_proj.weight"]
        head_dim = q_out // n_heads
        n_kv, fused = layer0["self_attn.k_proj.weight"][0] // head_dim, False
    ffn = [k for k in layer0 if k.startswith("mlp.") and k.endswith("weight") and k != "mlp.gate.weight"]
    ffn_hidden = max(max(layer0[k]) for k in ffn)
    norms = [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("Norm")]
    norm_name, norm_mod = norms[0]
    rotary = [m for n, m in model.named_modules() if n.endswith("rotary_emb")]
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    return Inventory(
        total_params=sum(p.numel() for p in named.values()),
        by_role=by_role,
        shapes=shapes,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        head_dim=head_dim,
        n_kv_heads=n_kv,
        fused_qkv=fused,
        ffn_matrices=ffn,
        ffn_hidden=ffn_hidden,
        hidden=hidden,
        norm_class=type(norm_mod).__name__,
        norm_params=[n for n, _ in norm_mod.named_parameters()],
        position_table=next((s for n, s in shapes.items() if role_of(n) == "position_embedding"), None),
        rotary_params=sum(p.numel() for p in rotary[0].parameters()) if rotary else None,
        tied_embeddings=out_emb is not None and out_emb.weight is in_emb.weight,
        activation=getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", "?"),
        max_positions=cfg.max_position_embeddings,
        vocab=cfg.vocab_size,
        extra={"rope": dict(getattr(cfg, "rope_parameters", None) or {})},
    )


def shape_mismatches(a: Inventory, b: Inventory) -> list[str]:
    """Parameter names whose shape differs (or that exist in only one of the two models)."""
    names = sorted(set(a.shapes) | set(b.shapes))
    return [n for n in names if a.shapes.get(n) != b.shapes.get(n)]


# --- the table, generated from two inventories ------------------------------------------------
def _shape(s) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]"


def _position(inv: Inventory) -> str:
    if inv.position_table is not None:
        n = inv.by_role["position_embedding"]
        return (
            f"Learned table {_shape(inv.position_table)} — {n:,} params, hard wall at {inv.position_table[0]:,} tokens"
        )
    rope = inv.extra.get("rope") or {}
    return (
        f"RoPE ({rope.get('rope_type', 'default')}, theta {rope.get('rope_theta', '?'):g}) — "
        f"{inv.rotary_params} learned params, a rotation of Q and K computed at runtime"
    )


def _attention(inv: Inventory) -> str:
    l0 = _layer0(inv.shapes)
    if inv.fused_qkv:
        return f"{inv.attention_kind} — fused c_attn {_shape(l0['attn.c_attn.weight'])} (Q, K, V all {inv.hidden} wide)"
    parts = ", ".join(f"{p} {_shape(l0[f'self_attn.{p}.weight'])}" for p in ("q_proj", "k_proj", "v_proj"))
    return f"{inv.attention_kind} — {parts}"


def _ffn(inv: Inventory) -> str:
    l0 = _layer0(inv.shapes)
    mats = ", ".join(f"{k[4:].removesuffix('.weight')} {_shape(l0[k])}" for k in inv.ffn_matrices)
    return f"{len(inv.ffn_matrices)} matrices ({inv.ffn_hidden / inv.hidden:g}× expansion): {mats}"


def _norm(inv: Inventory) -> str:
    return f"{inv.norm_class} — {' + '.join(inv.norm_params)}" + ("" if "bias" in inv.norm_params else " only, no bias")


def comparison_rows(base: Inventory, modern: Inventory) -> list[list[str]]:
    def both(fn):
        return [fn(base), fn(modern)]

    rows = {
        "Position encoding": both(_position),
        "Normalization": both(_norm),
        "Activation": both(lambda i: i.activation),
        "Attention": both(_attention),
        "FFN structure": both(_ffn),
        "Context length": both(lambda i: f"{i.max_positions:,} tokens"),
        "KV heads": both(
            lambda i: (
                f"{i.n_kv_heads} K/V heads for {i.n_heads} Q heads ({i.attention_kind}, {i.n_heads // i.n_kv_heads}:1)"
            )
        ),
        "Vocab size": both(lambda i: f"{i.vocab:,}"),
        "Total params": both(lambda i: f"{i.total_params:,}" + (" (lm_head tied to wte)" if i.tied_embeddings else "")),
        "Non-embedding params": both(lambda i: f"{i.non_embedding_params:,}"),
        "Memory (bf16)": both(lambda i: f"{i.bytes_at(2) / 1e9:.2f} GB"),
    }
    return [[feature, *cells, WHY[feature]] for feature, cells in rows.items()]


def layer0_rows(label: str, inv: Inventory) -> list[list[Any]]:
    rows = []
    for name, shape in _layer0(inv.shapes).items():
        n = 1
        for d in shape:
            n *= d
        rows.append([label, name, _shape(shape), n])
    return rows


# --- the exercise ---------------------------------------------------------------------------
def _load_real(cfg: Config, ctx: RunContext):
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    where = current().place(cfg.device)
    if where is None:
        ctx.skip(f"loading {cfg.loaded_model} needs CUDA (device={cfg.device}); none here")
    try:
        model, _ = models.load_causal_lm(cfg.loaded_model, dtype=getattr(torch, cfg.loaded_dtype), device_map=where)
    except MissingResource as exc:
        ctx.skip(str(exc))
    except OSError as exc:  # no access to the gated repo, no hub, an incomplete download: say which
        ctx.skip(explain_load_failure(cfg.loaded_model, exc))
    return model


def run(cfg: Config, ctx: RunContext) -> None:
    base_cfg, modern_cfg = load_config(cfg.baseline), load_config(cfg.modern)
    base, modern = inventory(meta_model(base_cfg)), inventory(meta_model(modern_cfg))
    for c, inv in ((base_cfg, base), (modern_cfg, modern)):
        ctx.model(c["_name"], dtype="meta (no weights)", n_params=inv.total_params, source=c["_source"])

    loaded_model = _load_real(cfg, ctx)
    loaded = inventory(loaded_model)
    loaded_meta = inventory(meta_model({**loaded_model.config.to_dict(), "_name": cfg.loaded_model}))
    mismatches = shape_mismatches(loaded, loaded_meta)
    ctx.model(
        cfg.loaded_model,
        dtype=cfg.loaded_dtype,
        n_params=loaded.total_params,
        source="weights loaded via lab.models.load_causal_lm",
    )
    del loaded_model

    ctx.table(
        "comparison",
        comparison_rows(base, modern),
        ["Feature", base_cfg["_name"], modern_cfg["_name"], "Why it changed"],
        title=f"{base_cfg['_name']} vs {modern_cfg['_name']} — every cell measured from the module tree (meta device)",
    )
    ctx.table(
        "layer0_shapes",
        layer0_rows(base_cfg["_name"] + " (meta)", base)
        + layer0_rows(modern_cfg["_name"] + " (meta)", modern)
        + layer0_rows(f"{cfg.loaded_model} (loaded weights)", loaded),
        ["model", "layer-0 tensor", "stored shape", "params"],
        title="Weight shapes of the first block (GPT-2 Conv1D stores [in, out]; nn.Linear stores [out, in])",
    )
    roles = ["token_embedding", "position_embedding", "attention", "mlp", "norm", "lm_head", "other"]
    ctx.table(
        "param_budget",
        [[r, base.by_role.get(r, 0), modern.by_role.get(r, 0), loaded.by_role.get(r, 0)] for r in roles]
        + [["total", base.total_params, modern.total_params, loaded.total_params]],
        ["role", base_cfg["_name"], modern_cfg["_name"], cfg.loaded_model],
        title="Where the parameters are (tied lm_head counted once, under token_embedding)",
    )
    ctx.table(
        "meta_vs_loaded",
        [
            [
                cfg.loaded_model,
                len(loaded.shapes),
                len(mismatches),
                loaded.total_params,
                loaded_meta.total_params,
                loaded.attention_kind,
                f"{loaded.n_heads}:{loaded.n_kv_heads}",
            ]
        ],
        [
            "model",
            "tensors compared",
            "shape mismatches",
            "params (loaded)",
            "params (meta)",
            "attention",
            "Q:KV heads",
        ],
        title="Same inventory code on loaded weights vs the meta model of the same config",
    )

    # metrics: the seed's figures are matched by these names (see references below)
    l0 = _layer0(modern.shapes)
    ctx.metric("llama31_8b_total_params", modern.total_params, "params")
    ctx.metric("llama31_8b_non_embedding_params", modern.non_embedding_params, "params")
    ctx.metric(
        "llama31_8b_bf16_gb",
        round(modern.bytes_at(2) / 1e9, 1),
        "GB",
        description="decimal GB, rounded to the seed's precision",
    )
    ctx.metric("llama31_8b_bf16_bytes", modern.bytes_at(2), "bytes")
    ctx.metric("a100_headroom_after_weights_gb", round(A100_GB - modern.bytes_at(2) / 1e9, 1), "GB")
    for proj in ("q_proj", "k_proj", "v_proj"):
        ctx.metric(f"llama31_8b_{proj}_shape", _shape(l0[f"self_attn.{proj}.weight"]), "")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        ctx.metric(f"llama31_8b_{proj}_shape", _shape(l0[f"mlp.{proj}.weight"]), "")
    ctx.metric("llama31_8b_q_to_kv_ratio", modern.n_heads // modern.n_kv_heads, ":1")
    ctx.metric("llama31_8b_rope_learned_params", modern.rotary_params, "params")
    ctx.metric("llama31_8b_rmsnorm_params", "[" + ", ".join(modern.norm_params) + "]", "")
    ctx.metric("gpt2_position_table_params", base.by_role.get("position_embedding", 0), "params")
    ctx.metric("gpt2_total_params", base.total_params, "params")
    ctx.metric("gpt2_total_params_m", round(base.total_params / 1e6), "M params")
    ctx.metric(
        "gpt2_non_embedding_params_m",
        round(base.non_embedding_params / 1e6),
        "M params",
        description="total minus the token-embedding table wte (wpe kept), the same rule as for Llama",
    )
    ctx.metric("gpt2_bf16_gb", round(base.bytes_at(2) / 1e9, 2), "GB")
    ctx.metric("loaded_total_params", loaded.total_params, "params")
    ctx.metric("loaded_vs_meta_shape_mismatches", len(mismatches), "tensors", higher_is_better=False)

    ratio = modern.n_heads // modern.n_kv_heads
    ctx.finding(
        f"{modern_cfg['_name']} built on the meta device has {modern.total_params:,} parameters "
        f"({modern.non_embedding_params:,} without the input embedding; the untied lm_head, "
        f"{modern.by_role.get('lm_head', 0):,} params, counts as non-embedding), {modern.bytes_at(2) / 1e9:.2f} GB in bf16."
    )
    ctx.finding(
        f"GQA: k_proj/v_proj are {_shape(l0['self_attn.k_proj.weight'])} against q_proj {_shape(l0['self_attn.q_proj.weight'])} — "
        f"{modern.n_kv_heads} K/V heads serve {modern.n_heads} query heads ({ratio}:1), so the KV cache is {ratio}× smaller than MHA's."
    )
    ctx.finding(
        f"GPT-2's learned position table holds {base.by_role.get('position_embedding', 0):,} parameters and stops at "
        f"{base.max_positions:,} tokens; RoPE holds {modern.rotary_params} and the config allows {modern.max_positions:,}."
    )
    ctx.finding(
        f"Shape extraction on loaded weights: {cfg.loaded_model} ({loaded.total_params:,} params, {loaded.attention_kind} "
        f"{loaded.n_heads}:{loaded.n_kv_heads}) has {len(loaded.shapes)} tensors and {len(mismatches)} differ in shape from "
        "the meta model of its own config — the meta device gives the checkpoint's real shapes."
    )
    seed_m = EXERCISE.seed("gpt2_non_embedding_params_m")
    ctx.finding(
        f"GPT-2's non-embedding count is {base.non_embedding_params:,} by the rule used for Llama (total minus wte), "
        f"not the seed's ~{seed_m}M: {seed_m}M is the size the GPT-2 paper first reported for its smallest model; the same "
        f"checkpoint counts {base.total_params:,} (nanoGPT subtracts only wpe: {base.total_params - base.by_role.get('position_embedding', 0):,})."
    )
    if mismatches:
        ctx.failure_mode(f"loaded vs meta shapes differ for: {', '.join(mismatches[:10])}")


EXERCISE = Exercise(
    id="phase08.architecture",
    title="Architecture inspection: nanoGPT (GPT-2 124M) vs Llama 3.1 8B",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},
        # the seed's setup: the real Llama 3.1 8B weights (gated repo, needs HF_TOKEN), bf16 on the GPU
        "a100": {"loaded_model": "meta-llama/Llama-3.1-8B-Instruct", "loaded_dtype": "bfloat16", "device": "cuda"},
    },
    tiny={},
    references=(
        Reference("llama31_8b_total_params", 8_030_261_248, "params", "seed: Llama 3.1 8B total"),
        Reference("llama31_8b_non_embedding_params", 7_504_924_672, "params", "seed: non-embedding"),
        Reference("llama31_8b_bf16_gb", 16.1, "GB", "seed: weights in bf16"),
        Reference("a100_headroom_after_weights_gb", 63.9, "GB", "seed: 'fits on one A100 80GB with 63.9GB to spare'"),
        Reference("llama31_8b_q_proj_shape", "[4096, 4096]", "", "seed: 32 query heads × 128"),
        Reference("llama31_8b_k_proj_shape", "[1024, 4096]", "", "seed: 8 KV heads × 128"),
        Reference("llama31_8b_v_proj_shape", "[1024, 4096]", "", "seed: 8 KV heads × 128"),
        Reference("llama31_8b_gate_proj_shape", "[14336, 4096]", "", "seed"),
        Reference("llama31_8b_up_proj_shape", "[14336, 4096]", "", "seed"),
        Reference("llama31_8b_down_proj_shape", "[4096, 14336]", "", "seed"),
        Reference("llama31_8b_q_to_kv_ratio", 4, ":1", "seed: GQA ratio 32:8"),
        Reference("llama31_8b_rope_learned_params", 0, "params", "seed: RoPE has no learned parameters"),
        Reference("llama31_8b_rmsnorm_params", "[weight]", "", "seed: RMSNorm ['weight'], no bias"),
        Reference("gpt2_position_table_params", 786_432, "params", "seed: wpe [1024, 768]"),
        Reference("gpt2_total_params_m", 124, "M params", "seed: ~124M"),
        Reference(
            "gpt2_non_embedding_params_m",
            117,
            "M params",
            "seed: ~117M (the GPT-2 paper's first-reported size; see findings)",
        ),
        Reference("gpt2_bf16_gb", 0.25, "GB", "seed: ~0.25GB"),
    ),
    summary_metrics=("llama31_8b_total_params", "loaded_vs_meta_shape_mismatches"),
    # cpu: the 8B shapes come from its config on the meta device; the loaded-tensor check runs on the embedded chat model
    methods={"cpu": "scaled", "a100": "same"},
    smoke={},  # the loaded model becomes the tiny Llama stand-in (lab.tiny_models); the meta inventory is real
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
