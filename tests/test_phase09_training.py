"""Phase 9.2-9.4: a tiny SFT run whose loss falls, exact LoRA counts, and each exercise end to end."""

import json

import pytest

from lab.models import DEFAULT_LLM
from lab.runner import execute
from phase09_finetuning import generation, sft
from phase09_finetuning.answer_loss import answer_ids, answer_losses
from phase09_finetuning.dataset import load_training_set


def test_llama8b_lora_counts_are_exact_on_the_meta_device():
    model = sft.meta_model(sft.llama31_8b_config())
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248
    assert {r: sft.lora_param_count(model, r) for r in (4, 16, 64)} == {4: 10_485_760, 16: 41_943_040, 64: 167_772_160}


def test_answers_with_question_detector():
    assert generation.answers_with_question("Good question. What do you think limits decoding speed?")
    assert generation.answers_with_question("Is it memory? Is it compute? It is memory.")
    assert not generation.answers_with_question("Decoding is memory-bound. Batching raises intensity.")
    assert not generation.answers_with_question("")


def test_eval_prompts_are_ten_with_key_terms():
    prompts = generation.load_eval_prompts()
    assert len(prompts) == 10 and len({p["id"] for p in prompts}) == 10
    assert all(generation.answer_terms(p["prompt"], p["key_terms"]) for p in prompts)  # each leaves terms to earn
    assert generation.key_term_coverage("Arithmetic intensity vs bandwidth", prompts[0]["key_terms"]) == 0.4


def test_key_terms_match_whole_words_only():
    assert not generation.mentions("It stalls during the all-reduce", "ring")  # the substring bug
    assert generation.mentions("A ring all-reduce", "ring") and generation.mentions("Two rings", "ring")
    assert generation.mentions("a RISC-V core", "risc-v") and generation.mentions("128 KiB per token", "128 kib")
    assert not generation.mentions("memory-bounded", "memory-bound") and not generation.mentions(
        "compute-bound", "bound"
    )


def test_key_terms_in_the_prompt_earn_nothing():
    terms = ["ring", "reduce-scatter", "all-gather"]
    prompt = "Explain ring all-reduce."
    assert generation.answer_terms(prompt, terms) == ["reduce-scatter", "all-gather"]
    # echoing the question scores 0; the terms the prompt did not give away score
    assert generation.key_term_coverage("Ring all-reduce is a ring.", terms, prompt) == 0.0
    assert generation.key_term_coverage("A reduce-scatter then an all-gather.", terms, prompt) == 1.0
    assert generation.key_term_coverage("anything", ["ring"], prompt) is None  # nothing left to measure
    assert generation.mean_coverage([None, 0.5, 1.0]) == 0.75 and generation.mean_coverage([None]) is None


def test_chat_rows_become_prompt_completion_and_bad_rows_are_named():
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert sft.to_prompt_completion(rows) == [
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    ]
    with pytest.raises(ValueError, match="training row 0"):
        sft.to_prompt_completion([{"messages": [{"role": "user", "content": "q"}]}])


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """Six steps on one repeated batch at a high lr: the loss must fall. The adapter is reused below."""

    rows = load_training_set("train")[:2]
    out = tmp_path_factory.mktemp("sft")
    res = sft.train_sft(DEFAULT_LLM, rows, out, lora_r=8, max_steps=6, batch_size=2, max_length=64, lr=2e-3)
    return out, res


@pytest.mark.slow
def test_tiny_sft_run_loss_decreases_and_saves_only_the_adapter(tiny_adapter):
    out, res = tiny_adapter
    assert len(res["losses"]) == 6 and res["steps"] == 6
    assert min(res["losses"][-2:]) < res["losses"][0] - 0.2, res["losses"]
    assert res["trainable_params"] == 305_280 * 8  # SmolLM2-135M: 305,280 x r
    files = sorted(p.name for p in out.iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert res["adapter_bytes"] == (out / "adapter_model.safetensors").stat().st_size


@pytest.mark.slow
def test_training_repeats_bit_for_bit_whatever_the_process_drew_before(tiny_adapter, tmp_path):
    """The same recipe trained again in this process, after other code drew from torch's generator and
    allocated odd-sized buffers: the same losses and adapter bytes (lab.repeatable seeds LoRA's draw; without
    it the second run's losses differed from step 2 on, measured on this machine)."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    out, first = tiny_adapter
    torch.rand(12345)
    scratch = [torch.empty(n) for n in (7, 1031, 65537)]
    res = sft.train_sft(
        DEFAULT_LLM,
        load_training_set("train")[:2],
        tmp_path,
        lora_r=8,
        max_steps=6,
        batch_size=2,
        max_length=64,
        lr=2e-3,
    )
    del scratch
    assert res["losses"] == first["losses"]  # bitwise: floats compared exactly
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()


@pytest.mark.slow
def test_held_out_answer_loss_is_lower_where_the_adapter_trained(tiny_adapter):
    """answer_losses scores the reference answer's tokens only: the adapter that trained on these two
    rows expects their answers more than the base does, and the prompt tokens are not counted."""
    from peft import PeftModel  # noqa: PLC0415 (heavy: peft loads on first use)

    out, _ = tiny_adapter
    rows = sft.to_prompt_completion(load_training_set("train")[:2])
    model, tok, _ = sft.load_base(DEFAULT_LLM)
    ids, n_prompt = answer_ids(tok, rows[0]["prompt"], rows[0]["completion"])
    head = tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids[:n_prompt] == head["input_ids"] and len(ids) > n_prompt
    assert len(answer_ids(tok, rows[0]["prompt"], rows[0]["completion"], 5)[0]) == n_prompt + 5
    model = PeftModel.from_pretrained(model, str(out))
    with model.disable_adapter():
        base = answer_losses(model, tok, rows, max_answer_tokens=48)
    tuned = answer_losses(model, tok, rows, max_answer_tokens=48)
    assert all(t < b for b, t in zip(base, tuned)), (base, tuned)


@pytest.mark.slow
def test_qlora_exercise_tiny(tmp_path):
    from phase09_finetuning.qlora import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["llama8b_lora_params"] == 41_943_040 and abs(m["llama8b_lora_pct"] - 0.52) < 0.01
    assert m["trainable_params"] == 305_280 * 16 and m["adapter_mb"] > 0
    runs = {r[0]: r for r in doc["tables"]["runs"]["rows"]}
    assert set(runs) == {"lora", "qlora"} and runs["qlora"][7] == runs["lora"][7]  # same trainable params
    assert runs["qlora"][9] < runs["lora"][9]  # NF4 base weights are smaller
    assert m["eval_loss_before"] > 0 and m["eval_loss_after"] > 0
    assert m["steps"] == 2 and m["epochs"] == 1.0  # 2 steps of 2 rows over the 4-row subset
    assert any(f"Llama 3.1 8B at r=16 gives {41_943_040:,} (0.52%)" in f for f in doc["findings"])
    assert (tmp_path / "phase09" / "qlora" / "cpu" / "loss_curve.png").stat().st_size > 1000
    assert not list(tmp_path.rglob("optimizer.pt")) and not list(tmp_path.rglob("*.safetensors"))


@pytest.mark.slow
def test_rank_sweep_exercise_tiny(tmp_path):
    from phase09_finetuning.rank_sweep import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["trainable_params_r64"] == 16 * m["trainable_params_r4"]
    assert m["llama8b_params_r4"] == 10_485_760 and m["llama8b_params_r64"] == 167_772_160
    assert m["eval_loss_r4"] > 0 and m["final_loss_r64"] > 0
    assert [row[0] for row in doc["tables"]["sweep"]["rows"]] == [4, 64]


@pytest.mark.slow
def test_before_after_exercise_tiny(tmp_path):
    from phase09_finetuning.before_after import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["tokens_per_s_base"] > 0 and m["tokens_per_s_unmerged"] > 0 and m["tokens_per_s_merged"] > 0
    assert m["merged_matches_unmerged"] == 1.0  # merge_and_unload is numerically the same model
    assert len(doc["tables"]["prompts"]["rows"]) == 2
    # the main number: answer loss of held-out reference answers, per row, base vs fine-tuned
    heldout = doc["tables"]["heldout_loss"]["rows"]
    assert len(heldout) == 2 and all(
        r[2] > 0 and r[3] > 0 and r[4] == pytest.approx(r[3] - r[2], abs=2e-3) for r in heldout
    )
    assert m["heldout_loss_base"] == pytest.approx(sum(r[2] for r in heldout) / 2, abs=2e-3)
    assert 0 <= m["heldout_rows_improved"] <= 2 and doc["metrics"]["heldout_rows_improved"]["unit"] == "of 2"
    assert "single stream" in doc["metrics"]["unmerged_penalty_pct"]["description"]
    md = (tmp_path / "phase09" / "before_after" / "cpu" / "before_after.md").read_text()
    assert "p01-roofline" in md and "| answer |" in md
    # its small adapter is a stored artifact named by id, trained by this run or an earlier one
    (adapter,) = doc["stored_artifacts"]
    assert adapter["id"].startswith("phase09.sft_adapter/") and adapter["role"] in ("built", "used")
    assert adapter["id"] in doc["models"][1]["adapter"] and str(tmp_path) not in json.dumps(doc["models"])
