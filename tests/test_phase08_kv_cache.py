"""phase08.kv_cache: the KV-cache formula, its config reading, and the seed's table."""

import json

import pytest

from lab import ConfigError
from lab.runner import execute
from phase08_architecture.kv_cache import EXERCISE, K, kv_cache_bytes, kv_shape, variants
from phase08_architecture.model_configs import load_config


def test_llama_8b_bytes_per_token_by_hand():
    # 2 (K,V) x 32 layers x 8 kv heads x 128 head_dim x 2 bytes
    assert kv_cache_bytes(load_config("llama-3.1-8b"), 1, 1, "bfloat16") == 2 * 32 * 8 * 128 * 2 == 131_072
    assert kv_cache_bytes(load_config("llama-3.1-70b"), 1, 1, "bfloat16") == 2 * 80 * 8 * 128 * 2


@pytest.mark.parametrize(
    "config,variant,context,batch,seed_gb",
    [
        ("llama-3.1-8b", None, 8 * K, 1, 1.1),
        ("llama-3.1-8b", None, 128 * K, 1, 17.2),
        ("llama-3.1-8b", None, 128 * K, 10, 171.8),
        ("llama-3.1-8b", None, 128 * K, 50, 859.0),
        ("llama-3.1-8b", "MHA", 128 * K, 10, 687.2),
        ("llama-3.1-8b", "MHA", 128 * K, 50, 3436.0),
        ("llama-3.1-70b", None, 128 * K, 1, 42.9),
        ("llama-3.1-70b", None, 128 * K, 50, 2147.5),
    ],
)
def test_seed_table_cells(config, variant, context, batch, seed_gb):
    shape = kv_shape(load_config(config))
    if variant:
        shape = next(v for v in variants(shape) if variant in v.name)
    assert round(kv_cache_bytes(shape, context, batch) / 1e9, 1) == seed_gb


def test_scaling_is_linear_and_variants_keep_depth():
    shape = kv_shape(load_config("llama-3.1-8b"))
    gqa, mha, mqa = variants(shape)
    assert (mha.kv_heads, mqa.kv_heads, gqa.kv_heads) == (32, 1, 8)
    assert kv_cache_bytes(mha, 1000, 3) == 4 * kv_cache_bytes(gqa, 1000, 3) == 32 * kv_cache_bytes(mqa, 1000, 3)
    assert kv_cache_bytes(gqa, 2000, 3) == 2 * kv_cache_bytes(gqa, 1000, 3)
    assert kv_cache_bytes(gqa, 1000, 1, "float32") == 2 * kv_cache_bytes(gqa, 1000, 1, "bfloat16")
    assert kv_cache_bytes(gqa, 0, 5) == 0


def test_reads_gpt2_names_head_dim_and_sliding_window(tmp_path):
    gpt2 = kv_shape(load_config("gpt2-124m"))
    assert (gpt2.layers, gpt2.q_heads, gpt2.kv_heads, gpt2.head_dim, gpt2.kind) == (12, 12, 12, 64, "MHA")
    # explicit head_dim wins over hidden/heads; a sliding window caps the tokens of those layers
    cfg = {
        "model_type": "mistral",
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_size": 512,
        "head_dim": 128,
        "sliding_window": 100,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    loaded = load_config(str(tmp_path))  # a model folder works as well as a file
    assert kv_cache_bytes(loaded, 50, 1, "float32") == 2 * 4 * 2 * 128 * 4 * 50
    assert kv_cache_bytes(loaded, 1000, 1, "float32") == 2 * 4 * 2 * 128 * 4 * 100
    mixed = {**cfg, "layer_types": ["sliding_attention", "full_attention"] * 2}
    assert kv_cache_bytes(mixed, 1000, 1, "float32") == 2 * 2 * 128 * 4 * (2 * 1000 + 2 * 100)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="no num_hidden_layers"):
        kv_shape({"_name": "broken", "num_attention_heads": 8})
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        kv_shape({"_name": "mla", "kv_lora_rank": 512})
    with pytest.raises(ConfigError, match="dtype"):
        kv_cache_bytes(load_config("llama-3.1-8b"), 10, 1, "int3")
    with pytest.raises(ConfigError, match="no such config.json"):
        load_config(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(str(tmp_path / "bad.json"))


@pytest.mark.slow
def test_exercise_end_to_end_tiny(tmp_path):
    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    refs = {r["metric"]: r for r in doc["reference"]}
    assert len(refs) == 16
    mismatched = {m: r for m, r in refs.items() if r["delta"] != 0}
    assert set(mismatched) == {"kv_8b_gqa_32k_b50_gb"}  # the seed's 214.4 is its own arithmetic slip
    assert refs["kv_8b_gqa_32k_b50_gb"]["ours"] == 214.7
    measured = doc["tables"]["measured"]["rows"]
    assert measured and all(row[3] == row[4] > 0 for row in measured)  # formula == bytes the cache holds
    assert doc["metrics"]["measured_vs_formula_max_abs_diff_bytes"]["value"] == 0
    assert any(r[0].startswith("Llama 3.1 8B MQA") for r in doc["tables"]["seed_grid"]["rows"])
    assert (tmp_path / "phase08" / "kv_cache" / "cpu" / "kv_cache_vs_context.png").stat().st_size > 10_000


@pytest.mark.slow
def test_sizing_any_config_from_the_cli_keys(tmp_path):
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 100, "n_positions": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    doc = execute(
        EXERCISE,
        "cpu",
        {
            "config": str(tmp_path / "config.json"),
            "context": 1000,
            "batch": 3,
            "dtype": "float32",
            "measure_tokens": [],
        },
        out=tmp_path / "out",
    )
    assert doc["status"] == "ok", doc["reason"]
    assert doc["metrics"]["kv_bytes_per_token"]["value"] == 2 * 2 * 64 * 4
    assert doc["metrics"]["kv_cache_gb"]["value"] == round(2 * 2 * 64 * 4 * 1000 * 3 / 1e9, 2)
    assert doc["tables"]["sizing"]["rows"][0][1] == "MHA"
    assert "measured" not in doc["tables"]  # sizing only: no model loaded
    assert any("trained for at most 64 positions" in f for f in doc["findings"])
