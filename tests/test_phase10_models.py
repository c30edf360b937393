"""10.2-10.4 with real SmolLM2 loads: fresh-load isolation, DPO, comparison and judge end to end.

The SFT and DPO adapters here are small random LoRAs (r=4, non-zero B) stored once per module as the
cpu profile's adapters in a private artifact store, so the tests do not depend on Phase 9's training
run and every variant really differs from the base.
"""

import shutil

import pytest

from lab.artifacts import Artifact, ArtifactStore, Recipe
from lab.errors import UnusableArtifact
from lab.models import DEFAULT_LLM
from lab.runner import execute
from phase09_finetuning.sft import SFT_ADAPTER, load_base, lora_config
from phase10_alignment import compare, dpo, judge
from phase10_alignment.compare import probe_logits
from phase10_alignment.dpo import DPO_ADAPTER, noop_reason
from phase10_alignment.variants import VARIANT_ADAPTERS, adapter_stacking_problems, load_variant, lora_layers
from phase11_evals import model_comparison, responders

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A private artifact store for this module, holding two random r=4 adapters as the cpu profile's
    SFT and DPO adapters (made on one base load)."""
    from peft import get_peft_model  # noqa: PLC0415 (heavy: peft loads on first use)

    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_ARTIFACTS", str(root))
        store = ArtifactStore(root)
        model, _, _ = load_base(DEFAULT_LLM)
        for seed, kind in ((1, SFT_ADAPTER), (2, DPO_ADAPTER)):
            torch.manual_seed(seed)
            cfg = lora_config(4)
            cfg.init_lora_weights = False
            peft_model = get_peft_model(model, cfg)
            recipe = kind.recipe("cpu")
            with store.staging(recipe) as folder:
                peft_model.save_pretrained(str(folder))
                store.publish(recipe, folder, metrics={"note": "random r=4 LoRA for tests"})
            model = peft_model.unload()  # the plain base again, for the next adapter
        yield store


@pytest.fixture(scope="module")
def adapters(store):

    return {name: store.load(kind.recipe("cpu")) for name, kind in VARIANT_ADAPTERS.items()}


def test_variants_load_fresh_one_adapter_each_and_reload_identically(adapters):
    from peft import PeftModel  # noqa: PLC0415 (heavy: peft loads on first use)

    base, tok = load_variant("base", "cpu")
    base_logits = probe_logits(base, tok)
    assert lora_layers(base) == {}
    del base

    sft, _ = load_variant("sft", "cpu", adapter=adapters["sft"])
    layers = lora_layers(sft)
    assert len(layers) == 30 * 7  # SmolLM2: 30 blocks x q,k,v,o,gate,up,down
    assert all(names == ["default"] for names in layers.values())
    assert not any("base_model.model.base_model" in n for n, _ in sft.named_modules())
    assert adapter_stacking_problems(sft) == []
    sft_logits = probe_logits(sft, tok)
    del sft

    dpo, _ = load_variant("dpo", "cpu", adapter=adapters["dpo"])
    dpo_logits = probe_logits(dpo, tok)
    del dpo
    sft_again, _ = load_variant("sft", "cpu", adapter=adapters["sft"])
    assert torch.equal(probe_logits(sft_again, tok), sft_logits)  # nothing leaked from the DPO load
    del sft_again

    # the reference: peft's own load of the same adapter on a fresh base
    ref, _, _ = load_base(DEFAULT_LLM)
    ref = PeftModel.from_pretrained(ref, str(adapters["sft"].path)).eval()
    assert torch.equal(probe_logits(ref, tok), sft_logits)
    del ref
    base_again, _ = load_variant("base", "cpu")
    assert torch.equal(probe_logits(base_again, tok), base_logits)
    assert not torch.allclose(sft_logits, base_logits) and not torch.allclose(dpo_logits, sft_logits)


@pytest.mark.filterwarnings("ignore::UserWarning")  # peft's own (very long) "missing adapter keys" warning
def test_stacking_an_adapter_on_a_live_peft_model_is_detected(adapters):
    from peft import PeftModel  # noqa: PLC0415 (heavy: peft loads on first use)

    sft, _ = load_variant("sft", "cpu", adapter=adapters["sft"])
    stacked = PeftModel.from_pretrained(sft, str(adapters["dpo"].path))  # the seed's failure mode
    problems = adapter_stacking_problems(stacked)
    assert problems and any("PEFT model inside a PEFT model" in p or "nested" in p for p in problems)


def test_load_variant_rejects_unknown_names_missing_and_foreign_adapters(adapters):

    with pytest.raises(ValueError, match="unknown variant 'rlhf'"):
        load_variant("rlhf", "cpu")
    with pytest.raises(ValueError, match="variant 'sft': pass its stored adapter"):
        load_variant("sft", "cpu")
    foreign = Artifact(
        Recipe("phase09.sft_adapter", {"base_model": "meta-llama/Llama-3.1-8B-Instruct"}), adapters["sft"].path
    )
    with pytest.raises(ValueError, match="trained on 'meta-llama/Llama-3.1-8B-Instruct'"):
        load_variant("sft", "cpu", adapter=foreign)


def test_dpo_tiny_run_with_a_real_rate_moves_the_policy_and_stores_its_adapter(store, adapters, tmp_path):

    overrides = {**dpo.EXERCISE.tiny, "save_adapter": True}
    doc = execute(dpo.EXERCISE, "cpu", overrides, out=tmp_path / "out")
    assert doc["status"] == "ok", doc["error"]
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    # measured by an eval pass after training, not read off the last logged (pre-update) step
    assert m["train_pairs_margin"] > dpo.NOOP_MIN_MARGIN and m["kl_per_token"] >= dpo.NOOP_MIN_KL
    assert m["train_pairs_accuracy"] == 1.0 and m["steps"] == 3
    assert m["last_step_reward_margin"] != m["train_pairs_margin"]
    (row,) = doc["tables"]["learning_rate_ablation"]["rows"]
    assert row[0] == "0.001" and row[-1] == "moved"
    assert any("frozen copy of the SFT adapter" in f for f in doc["findings"])
    assert doc["metrics"]["peak_memory_gb"]["value"] > 0
    # the main run's adapter is stored under the recipe of this (tiny) config, next to the SFT it started from
    recipe = Recipe(dpo.DPO_ADAPTER.name, dpo.dpo_params(dpo.EXERCISE.config("cpu", overrides), adapters["sft"].recipe))
    saved = store.load(recipe, dpo.DPO_ADAPTER.reject_flags)
    assert saved.flags == {} and saved.params["lr"] == 1e-3 and saved.params["beta"] == 0.1
    assert saved.params["sft_recipe_sha256"] == adapters["sft"].recipe.sha256 and saved.metrics["steps"] == 3
    assert saved.metrics["train_pairs_margin"] == pytest.approx(m["train_pairs_margin"])
    assert {(a["id"], a["role"]) for a in doc["stored_artifacts"]} == {
        (adapters["sft"].id, "used"),
        (saved.id, "published"),
    }
    assert not (saved.path / "ref").exists()  # only the trained adapter, not trl's frozen 'ref' copy
    model, _ = load_variant("dpo", "cpu", adapter=saved)
    assert adapter_stacking_problems(model) == [] and len(lora_layers(model)) == 30 * 7


def test_a_noop_dpo_run_fails_and_its_adapter_is_refused(store, adapters, tmp_path):

    overrides = {**dpo.EXERCISE.tiny, "save_adapter": True, "learning_rate": 5e-7, "max_steps": 1}
    doc = execute(dpo.EXERCISE, "cpu", overrides, out=tmp_path / "out")
    assert doc["status"] == "failed" and doc["reason"].startswith("NoOpRun: DPO at lr 5e-07 for 1 steps")
    assert "left the policy where it started" in doc["reason"] and doc["failure_modes"]
    assert doc["metrics"]["train_pairs_margin"]["value"] <= dpo.NOOP_MIN_MARGIN  # the numbers are still recorded
    assert doc["tables"]["learning_rate_ablation"]["rows"][0][-1] == "NO-OP"
    recipe = Recipe(dpo.DPO_ADAPTER.name, dpo.dpo_params(dpo.EXERCISE.config("cpu", overrides), adapters["sft"].recipe))
    assert "left the policy where it started" in store.load(recipe).flags["noop"]
    with pytest.raises(UnusableArtifact, match="flagged noop"):
        store.load(recipe, dpo.DPO_ADAPTER.reject_flags)


def test_noop_reason_names_each_bar_it_misses():

    def result(margin, kl):
        return {"lr": 5e-7, "steps": 4, "train_pairs": {"n": 32, "margin": margin}, "kl": {"kl_per_token": kl}}

    assert noop_reason(result(0.5, 1e-3)) is None
    assert "margin on its own 32 trained pairs +0.1 ≤ 0.1" in noop_reason(result(0.1, 1e-3))
    assert "KL to the reference 5.00e-05" in noop_reason(result(0.5, 5e-5))
    both = noop_reason(result(-0.0003, 1.4e-8))
    assert "margin" in both and "KL" in both and both.startswith("DPO at lr 5e-07 for 4 steps")


def test_downstream_exercises_refuse_a_noop_dpo_adapter(adapters, tmp_path, monkeypatch):
    """compare (and judge, which reads compare's generations) and Phase 11's responders load the
    profile's DPO adapter; flagged noop, each refuses it with the reason instead of scoring SFT twice."""

    noop_store = ArtifactStore(tmp_path / "store")
    monkeypatch.setenv("LAB_ARTIFACTS", str(noop_store.root))
    noop = {"noop": "DPO at lr 5e-07 left the policy where it started"}
    for kind, flags in ((dpo.SFT_ADAPTER, {}), (dpo.DPO_ADAPTER, noop)):
        recipe = kind.recipe("cpu")
        with noop_store.staging(recipe) as folder:
            shutil.copytree(adapters["sft" if not flags else "dpo"].path, folder, dirs_exist_ok=True)
            (folder / "artifact.json").unlink()
            noop_store.publish(recipe, folder, flags=flags)

    doc = execute(compare.EXERCISE, "cpu", compare.EXERCISE.tiny, out=tmp_path / "out")
    assert doc["status"] == "failed" and "flagged noop" in doc["reason"] and "left the policy" in doc["reason"]
    assert "flagged noop" in responders.missing_reason("dpo", "cpu")
    assert responders.missing_reason("sft", "cpu") is None
    doc = execute(
        model_comparison.EXERCISE, "cpu", {**model_comparison.EXERCISE.tiny, "variants": ["dpo"]}, out=tmp_path / "out"
    )
    assert doc["status"] == "failed" and "flagged noop" in doc["reason"]


def test_compare_tiny_end_to_end(store, adapters, tmp_path):

    doc = execute(compare.EXERCISE, "cpu", compare.EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["error"]
    gens = doc["tables"]["generations"]["rows"]
    assert len(gens) == 2 and all(len(r) == 4 for r in gens)
    loads = {r[0]: r for r in doc["tables"]["loads"]["rows"]}
    assert loads["base"][1] == 0 and loads["sft"][1] == loads["dpo"][1] == 210
    assert loads["sft"][2] == loads["dpo"][2] == "[1]" and not any(r[3] for r in loads.values())
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["sft_reload_max_abs_diff"] == 0
    assert all(
        m[f"{v}_single_stream_tokens_per_s"] > 0 and m[f"{v}_batched_tokens_per_s"] > 0 for v in ("base", "sft", "dpo")
    )
    assert m["adapter_overhead_pct"] == pytest.approx(
        100 * (1 - m["sft_single_stream_tokens_per_s"] / m["base_single_stream_tokens_per_s"])
    )
    refs = {r["metric"]: r for r in doc["reference"]}
    assert (
        refs["base_single_stream_tokens_per_s"]["seed"] == 18.1
        and "one request at a time" in refs["base_single_stream_tokens_per_s"]["note"]
    )
    # the finding counts what changed, from the values (never a hand-typed claim about the seed)
    changed = m["dpo_answers_changed"]
    assert 0 <= changed <= 2 and any(
        f.startswith(f"DPO changed {changed} of 2 greedy answers") for f in doc["findings"]
    )
    assert not any("seed saw the same" in f for f in doc["findings"])
    md = (tmp_path / "phase10" / "compare" / "cpu" / "generations.md").read_text()
    assert "roofline" in md and "**SFT**" in md
    roles = {a["id"].split("/")[0]: a["role"] for a in doc["stored_artifacts"]}
    assert roles == {"phase09.sft_adapter": "used", "phase10.dpo_adapter": "used", "phase10.generations": "built"}
    assert [m["adapter"] for m in doc["models"]] == [
        "base: none",
        f"sft: {adapters['sft'].id}",
        f"dpo: {adapters['dpo'].id}",
    ]


def test_judge_tiny_end_to_end(store, adapters, tmp_path):

    doc = execute(judge.EXERCISE, "cpu", judge.EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["error"]
    m = doc["metrics"]
    assert m["judge_method"]["value"] == "choice_probs"
    assert m["rubric_sha256"]["value"] == judge.RUBRIC.sha256() and len(m["prompt_sha256"]["value"]) == 64
    assert m["judge_failures"]["value"] == 0
    for v in ("base", "sft", "dpo"):
        assert 1.0 <= m[f"{v}_mean"]["value"] <= 5.0
    assert [r[0] for r in doc["tables"]["scores"]["rows"]] == ["BASE", "SFT", "SFT+DPO"]
    assert doc["models"][0]["id"] == "local:smollm2-135m-instruct"
    # it scores the generations phase10.compare stored (same prompts, settings and adapters)
    assert any(a["id"].startswith("phase10.generations/") for a in doc["stored_artifacts"])
