"""lab.llm.gguf_lora: a PEFT LoRA becomes a GGUF LoRA that llama.cpp applies as PEFT does.

The fast tests read the written file back with gguf's own reader on a tiny synthetic adapter; the
slow one converts a real adapter on the embedded SmolLM2 and compares llama.cpp's next-token
distributions with transformers + PEFT, against controls that must be far (adapter ignored, q/k rows
left unpermuted).
"""

import ctypes
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lab import models
from lab.errors import ConfigError
from lab.llm import gguf_lora

# tiny Llama: hidden 16, 2 heads and 1 KV head of size 8, MLP 24, 2 layers, rank 4
HIDDEN, N_HEAD, N_HEAD_KV, HEAD_DIM, FFN, N_LAYER, R = 16, 2, 1, 8, 24, 2, 4
SHAPES = {  # HF module -> (GGUF name, in, out)
    "self_attn.q_proj": ("attn_q", HIDDEN, N_HEAD * HEAD_DIM),
    "self_attn.k_proj": ("attn_k", HIDDEN, N_HEAD_KV * HEAD_DIM),
    "self_attn.v_proj": ("attn_v", HIDDEN, N_HEAD_KV * HEAD_DIM),
    "self_attn.o_proj": ("attn_output", N_HEAD * HEAD_DIM, HIDDEN),
    "mlp.gate_proj": ("ffn_gate", HIDDEN, FFN),
    "mlp.up_proj": ("ffn_up", HIDDEN, FFN),
    "mlp.down_proj": ("ffn_down", FFN, HIDDEN),
}
PREFIX = "base_model.model.model.layers"


def lora_pair(prefix: str, n_in: int, n_out: int, r: int = R) -> dict:
    """lora_A/lora_B under PEFT's saved names (``...q_proj.lora_A.weight``), small integers so that
    float16 holds them exactly."""
    return {
        f"{prefix}.lora_A.weight": torch.randint(-8, 8, (r, n_in)).float(),
        f"{prefix}.lora_B.weight": torch.randint(-8, 8, (n_out, r)).float(),
    }


def write_adapter(folder, tensors: dict | None = None, **config) -> dict:
    """An adapter folder as peft 0.21 saves it; returns its tensors."""
    if tensors is None:
        torch.manual_seed(0)
        tensors = {}
        for layer in range(N_LAYER):
            for module, (_, n_in, n_out) in SHAPES.items():
                tensors |= lora_pair(f"{PREFIX}.{layer}.{module}", n_in, n_out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "peft_version": "0.21.2",
                "r": R,
                "lora_alpha": 8,
                "use_rslora": False,
                "use_dora": False,
                "bias": "none",
                "lora_bias": False,
                "modules_to_save": None,
                "rank_pattern": {},
                "alpha_pattern": {},
                "target_modules": ["q_proj", "k_proj"],
                "lora_dropout": 0.05,
                "init_lora_weights": True,
                "loftq_config": {},
                "qalora_group_size": 16,
                "megatron_core": "megatron.core",
                "base_model_name_or_path": "tiny-llama",
                **config,
            }
        )
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    return tensors


def convert(folder, **heads):
    return gguf_lora.convert_peft_lora(
        folder, folder / "adapter.gguf", **{"n_head": N_HEAD, "n_head_kv": N_HEAD_KV, "n_layer": N_LAYER, **heads}
    )


def read(path) -> tuple[dict, dict]:
    from gguf import GGUFReader  # noqa: PLC0415 (heavy: gguf loads on first use)

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def test_writes_llama_cpp_names_shapes_and_float16(tmp_path):
    from gguf import GGMLQuantizationType  # noqa: PLC0415 (heavy: gguf loads on first use)

    tensors = write_adapter(tmp_path)
    summary = convert(tmp_path)
    fields, written = read(tmp_path / "adapter.gguf")

    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0)
    assert set(written) == {
        f"blk.{layer}.{name}.weight.lora_{ab}"
        for layer in range(N_LAYER)
        for name, _, _ in SHAPES.values()
        for ab in "ab"
    }
    for layer in range(N_LAYER):
        for module, (name, n_in, n_out) in SHAPES.items():
            a, b = written[f"blk.{layer}.{name}.weight.lora_a"], written[f"blk.{layer}.{name}.weight.lora_b"]
            assert a.tensor_type == b.tensor_type == GGMLQuantizationType.F16
            assert a.data.shape == (R, n_in) and b.data.shape == (n_out, R)
            np.testing.assert_array_equal(a.data, tensors[f"{PREFIX}.{layer}.{module}.lora_A.weight"].numpy())
    assert summary["rank"] == R and summary["scale"] == pytest.approx(2.0)
    assert summary["n_tensors"] == len(written) == 4 * 7
    assert summary["target_modules"] == sorted(m.split(".")[1] for m in SHAPES)
    assert summary["bytes"] == (tmp_path / "adapter.gguf").stat().st_size


def test_q_and_k_lora_b_rows_follow_the_base_ropes_permutation(tmp_path):
    """Within each head, llama.cpp's row 2j + i is HF's row i·d/2 + j (halves -> interleaved pairs)."""
    tensors = write_adapter(tmp_path)
    convert(tmp_path)
    _, written = read(tmp_path / "adapter.gguf")

    def hf_row(n_rows: int) -> np.ndarray:
        head, within = np.divmod(np.arange(n_rows), HEAD_DIM)
        return head * HEAD_DIM + (within % 2) * (HEAD_DIM // 2) + within // 2

    for module, name, n_heads in (
        ("q_proj", "attn_q", N_HEAD),
        ("k_proj", "attn_k", N_HEAD_KV),
        ("v_proj", "attn_v", None),
    ):
        b = tensors[f"{PREFIX}.0.self_attn.{module}.lora_B.weight"].numpy()
        expected = b[hf_row(len(b))] if n_heads else b
        if n_heads:
            assert not np.array_equal(expected, b)
        np.testing.assert_array_equal(written[f"blk.0.{name}.weight.lora_b"].data, expected)


def test_rslora_stores_the_alpha_that_gives_peft_scale(tmp_path):
    write_adapter(tmp_path, use_rslora=True, lora_alpha=8)
    summary = convert(tmp_path)
    fields, _ = read(tmp_path / "adapter.gguf")
    # PEFT: 8 / sqrt(4) = 4; llama.cpp computes alpha / r, so alpha must be 16
    assert summary["scale"] == pytest.approx(4.0)
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0)


def _embedding_lora():
    return {f"base_model.model.model.embed_tokens.lora_embedding_{ab}": torch.ones(4, 4) for ab in "AB"}


@pytest.mark.parametrize(
    "config, tensors, named",
    [
        ({"use_dora": True}, None, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
        ({"rank_pattern": {"q_proj": 8}}, None, "rank_pattern"),
        ({"alpha_pattern": {"q_proj": 32}}, None, "alpha_pattern"),
        ({"bias": "lora_only"}, None, "bias"),
        ({"init_lora_weights": "pissa"}, None, "init_lora_weights"),
        ({"peft_type": "IA3"}, None, "peft_type"),
        ({}, _embedding_lora(), "embed_tokens"),
        ({}, lora_pair("base_model.model.lm_head", HIDDEN, 100), "lm_head"),
        ({}, lora_pair(f"{PREFIX}.0.self_attn.qkv_proj", HIDDEN, 48), "qkv_proj"),
        ({}, lora_pair(f"{PREFIX}.{N_LAYER}.mlp.up_proj", HIDDEN, FFN), f"layers.{N_LAYER}.mlp.up_proj"),
        ({}, lora_pair(f"{PREFIX}.0.mlp.up_proj", HIDDEN, FFN, r=2), "rank"),
        ({}, {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": torch.ones(R, HIDDEN)}, "q_proj"),
        ({}, {f"{PREFIX}.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(16)}, "lora_magnitude_vector"),
    ],
)
def test_refuses_what_a_gguf_lora_cannot_express(tmp_path, config, tensors, named):
    write_adapter(tmp_path, tensors, **config)
    with pytest.raises(ConfigError, match=named) as refused:
        convert(tmp_path)
    assert str(tmp_path / "adapter_") in str(refused.value)  # names the config or the weights file
    assert not (tmp_path / "adapter.gguf").exists()


def test_refuses_head_counts_that_do_not_fit_the_rows(tmp_path):
    write_adapter(tmp_path)
    with pytest.raises(ConfigError, match="heads"):
        convert(tmp_path, n_head=3)  # 16 q rows are not 3 heads of an even size
    with pytest.raises(ConfigError, match="head size"):
        convert(tmp_path, n_head_kv=2)  # q says head size 8, k says 4


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2: HF folder, shipped Q4_1 GGUF and ~90 prompt tokens (HF tokenizer)."""
    from transformers import AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

    folder = models.hf_folder()
    text = (
        "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based ink and a wooden screw press. Within fifty years, printers "
        "in more than two hundred cities had produced millions of books, and the cost of copying a text "
        "fell so far that pamphlets, calendars and school primers reached ordinary households. Scholars "
        "argue about how quickly literacy rose, but few doubt that the press changed how ideas spread."
    )
    return folder, models.fetch("smollm2-135m-instruct"), AutoTokenizer.from_pretrained(folder)(text)["input_ids"]


def closeness(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(mean KL(reference || other), top-1 agreement) over positions, from log-probabilities."""
    kl = (reference.exp() * (reference - other)).sum(-1).mean().item()
    return kl, (reference.argmax(-1) == other.argmax(-1)).double().mean().item()


def llama_cpp_logprobs(gguf, ids: list[int], adapters: list) -> list[torch.Tensor]:
    """Next-token log-probabilities at every position, without an adapter (None) and with each one.

    Adapters are attached with the low-level API because llama-cpp-python 0.3.36's ``lora_path=``
    misses a refused adapter (it tests the returned NULL pointer against None) and then segfaults."""

    import llama_cpp  # noqa: PLC0415 (heavy: llama_cpp loads on first use)

    llm = llama_cpp.Llama(
        model_path=str(gguf), logits_all=True, n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False
    )
    out = []
    try:
        for adapter in adapters:
            if adapter is not None:
                handle = llama_cpp.llama_adapter_lora_init(llm._model.model, str(adapter).encode())
                assert handle, f"llama.cpp refused {adapter}"
                chosen = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
                assert llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, chosen, 1, (ctypes.c_float * 1)(1.0)) == 0
            llm.reset()
            llm.eval(ids)
            out.append(torch.log_softmax(torch.tensor(llm.scores[: len(ids)], dtype=torch.float64), -1))
    finally:
        llm.close()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("use_rslora", [False, True])
def test_llama_cpp_with_the_adapter_matches_transformers_with_peft(smollm2, tmp_path, monkeypatch, use_rslora):
    """Q4_1 weights with quantized activations can't match float32 exactly: base against base measures
    KL ≈ 0.004, top-1 ≈ 0.93. The adapter must stay that close, while the same llama.cpp run without it,
    or with q/k rows left in HF order, is far. rsLoRA gets alpha = 2·sqrt(8) so both cases scale by 2."""
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (heavy: peft loads on first use)
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 (heavy: transformers loads on first use)

    folder, base_gguf, ids = smollm2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = LoraConfig(
        r=8,
        lora_alpha=2 * math.sqrt(8) if use_rslora else 16,
        use_rslora=use_rslora,
        init_lora_weights=False,  # random B too, so the adapter changes the model
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    with torch.no_grad():
        base = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        peft_model = get_peft_model(model, config)
        lora = torch.log_softmax(peft_model(torch.tensor([ids])).logits[0].double(), -1)
    peft_model.save_pretrained(tmp_path / "adapter")

    summary = gguf_lora.convert_peft_lora(
        tmp_path / "adapter", tmp_path / "lora.gguf", n_head=9, n_head_kv=3, n_layer=30
    )
    assert summary["scale"] == pytest.approx(2.0) and summary["n_tensors"] == 30 * 7 * 2
    monkeypatch.setattr(gguf_lora, "_permute", lambda rows, n_head: rows)
    gguf_lora.convert_peft_lora(tmp_path / "adapter", tmp_path / "unpermuted.gguf", n_head=9, n_head_kv=3, n_layer=30)
    cpp_base, cpp_lora, cpp_unpermuted = llama_cpp_logprobs(
        base_gguf, ids, [None, tmp_path / "lora.gguf", tmp_path / "unpermuted.gguf"]
    )

    assert closeness(lora, base)[0] > 0.5  # the adapter matters
    base_kl, base_top1 = closeness(base, cpp_base)
    assert base_kl < 0.01 and base_top1 > 0.9  # the Q4_1 floor
    lora_kl, lora_top1 = closeness(lora, cpp_lora)
    assert lora_kl < 0.02 and lora_top1 > 0.9
    for control in (cpp_base, cpp_unpermuted):
        kl, top1 = closeness(lora, control)
        assert kl > 10 * lora_kl and kl > 0.1 and top1 < lora_top1 - 0.2
