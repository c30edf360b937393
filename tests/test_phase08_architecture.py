"""phase08.architecture: shape extraction from the module tree, on meta and on loaded weights."""

import pytest

from lab.runner import execute
from phase08_architecture.architecture import EXERCISE, comparison_rows, inventory, role_of, shape_mismatches
from phase08_architecture.model_configs import SHIPPED, hf_config, load_config, meta_model


@pytest.fixture(scope="module")
def llama():
    return inventory(meta_model(load_config("llama-3.1-8b")))


@pytest.fixture(scope="module")
def gpt2():
    return inventory(meta_model(load_config("gpt2-124m")))


def test_shipped_configs_carry_their_source():
    for name in SHIPPED:
        cfg = load_config(name)
        assert cfg["_source"].startswith("https://huggingface.co/") and cfg["_source"].endswith("/config.json")
        hf_config(cfg)  # transformers accepts every one


def test_llama_31_8b_counts_exactly(llama):
    assert llama.total_params == 8_030_261_248
    assert llama.non_embedding_params == 7_504_924_672
    assert round(llama.bytes_at(2) / 1e9, 1) == 16.1
    assert (llama.n_heads, llama.n_kv_heads, llama.head_dim, llama.attention_kind) == (32, 8, 128, "GQA")
    assert llama.shapes["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    assert llama.shapes["model.layers.31.mlp.down_proj.weight"] == (4096, 14336)
    assert llama.norm_params == ["weight"] and llama.rotary_params == 0 and llama.position_table is None
    assert llama.by_role["lm_head"] == llama.by_role["token_embedding"] == 128_256 * 4096


def test_gpt2_counts_exactly(gpt2):
    assert gpt2.total_params == 124_439_808 and gpt2.tied_embeddings
    assert gpt2.position_table == (1024, 768) and gpt2.by_role["position_embedding"] == 786_432
    assert gpt2.norm_params == ["weight", "bias"]
    assert (gpt2.attention_kind, gpt2.fused_qkv, gpt2.ffn_hidden / gpt2.hidden) == ("MHA", True, 4.0)


def test_other_sizes_and_roles():
    assert inventory(meta_model(load_config("llama-3.1-70b"))).total_params == 70_553_706_496
    assert sum(p.numel() for p in meta_model(load_config("mixtral-8x7b")).parameters()) == 46_702_792_704
    assert role_of("model.layers.3.self_attn.q_proj.weight") == "attention"
    assert role_of("transformer.h.0.attn.c_attn.bias") == "attention"
    assert role_of("transformer.ln_f.weight") == role_of("model.layers.0.input_layernorm.weight") == "norm"


def test_comparison_table_is_generated_from_the_inventories(gpt2, llama):
    rows = {r[0]: r[1:3] for r in comparison_rows(gpt2, llama)}
    assert "786,432 params" in rows["Position encoding"][0] and "0 learned params" in rows["Position encoding"][1]
    assert rows["Attention"][1] == "GQA — q_proj [4096, 4096], k_proj [1024, 4096], v_proj [1024, 4096]"
    assert rows["Total params"][1] == "8,030,261,248" and rows["Memory (bf16)"][1] == "16.06 GB"
    assert rows["FFN structure"][1].startswith("3 matrices (3.5× expansion): gate_proj [14336, 4096]")


def test_shape_mismatch_detection():
    small = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
    }
    a = inventory(meta_model(small))
    b = inventory(meta_model({**small, "num_key_value_heads": 4}))
    assert shape_mismatches(a, a) == []
    assert shape_mismatches(a, b) == [
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
    ]


@pytest.mark.slow
def test_exercise_end_to_end_reads_loaded_weights(tmp_path):
    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    refs = {r["metric"]: r for r in doc["reference"]}
    for exact in (
        "llama31_8b_total_params",
        "llama31_8b_non_embedding_params",
        "llama31_8b_bf16_gb",
        "gpt2_position_table_params",
        "llama31_8b_q_to_kv_ratio",
    ):
        assert refs[exact]["delta"] == 0, exact
    assert refs["llama31_8b_k_proj_shape"]["ours"] == refs["llama31_8b_k_proj_shape"]["seed"] == "[1024, 4096]"
    # SmolLM2 loaded with real weights: the same code reads its tensors, identical to its meta model
    row = doc["tables"]["meta_vs_loaded"]["rows"][0]
    assert row[1] == 272 and row[2] == 0 and row[3] == row[4] == 134_515_008 and row[5:] == ["GQA", "9:3"]
    assert len(doc["tables"]["comparison"]["rows"]) == 11
