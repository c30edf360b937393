"""The a100 sizing table: regenerated identically, and its numbers are the parameter-count arithmetic."""

from __future__ import annotations

from lab import report
from lab.doctor_a100 import MODEL_DOWNLOAD_BYTES
from lab.paths import REPO_ROOT
from lab.registry import phases, render_sections
from phase08_architecture import sizing
from phase08_architecture.kv_cache import kv_cache_bytes
from phase08_architecture.model_configs import load_config
from phase08_architecture.model_configs import meta_model as mixtral_on_meta
from phase08_architecture.sizing import download_bytes
from phase09_finetuning.sft import llama31_8b_config, lora_param_count, meta_model


def test_the_readme_section_is_what_lab_report_renders():
    ((path, name, body),) = [s for s in render_sections(REPO_ROOT) if s[1] == "a100-sizing"]
    text = path.read_text(encoding="utf-8")
    assert report.replace_section(path, text, name, body) == text  # `lab report --check` agrees
    assert body == sizing.render(phases())  # and rendering twice gives the same table


def test_counts_match_the_published_configs_built_elsewhere():

    llama = meta_model(llama31_8b_config())
    total, quantized, per_rank = sizing.counts(sizing.LLAMA_8B)
    assert total == sum(p.numel() for p in llama.parameters()) == 8_030_261_248
    assert per_rank * 16 == lora_param_count(llama, 16)  # the seed's 161 MB adapter: ~42M fp32 params
    mixtral = mixtral_on_meta(load_config("mixtral-8x7b"))  # the Mixtral config built on the meta device
    assert sizing.counts("mistralai/Mixtral-8x7B-Instruct-v0.1")[0] == sum(p.numel() for p in mixtral.parameters())
    assert quantized < total


def test_rows_are_params_times_bytes_plus_kv_and_training_state():
    rows = {r.exercise: r for r in sizing.rows(phases())}
    a100 = {ex.id for p in phases() for ex in p.exercises if "a100" in ex.profiles}
    assert set(rows) == a100
    total, quantized, per_rank = sizing.counts(sizing.LLAMA_8B)
    vocab = load_config("llama-3.1-8b")["vocab_size"]

    qlora = rows["phase09.qlora"]  # batch 4 x 1024 tokens, r=16 (its a100 config)
    nf4 = round(quantized * sizing.NF4_BITS / 8) + (total - quantized) * 2
    assert qlora.download == total * 2
    assert qlora.vram == nf4 + per_rank * 16 * 16 + 4 * 1024 * vocab * 4
    assert qlora.gated == [sizing.LLAMA_8B]

    served = rows["phase16.load"]  # bf16 weights + KV for 4 workers at the served context
    assert served.vram == total * 2 + kv_cache_bytes(load_config("llama-3.1-8b"), sizing.SERVED_CONTEXT, 4)
    assert rows["phase13.react_loop"].models == [sizing.LLAMA_8B]
    assert rows["phase15.contention"].vram == 0 and rows["phase15.contention"].models == []
    assert "mistralai/Mixtral-8x7B-Instruct-v0.1" in rows["phase08.moe_routing"].gated


def test_lab_doctor_counts_the_downloads_the_sizing_table_computes():
    """`lab doctor` (a lab module, which cannot import a phase) keeps its own download table; it must agree
    with the parameter counts the README's sizing table computes from the published configs."""

    for model, stated in MODEL_DOWNLOAD_BYTES.items():
        assert stated == download_bytes(model), model
