"""10.2-10.4 with real SmolLM2 loads: fresh-load isolation, DPO, comparison and judge end to end.

The SFT and DPO adapters here are small random LoRAs (r=4, non-zero B) stored once per module as the
cpu profile's adapters in a private artifact store, so the tests do not depend on Phase 9's training
run and every variant really differs from the base.
"""

import json

import pytest

from lab.runner import execute

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A private artifact store for this module, holding two random r=4 adapters as the cpu profile's
    SFT and DPO adapters (made on one base load)."""
    from peft import get_peft_model

    from lab.artifacts import ArtifactStore
    from phase09_finetuning.sft import SFT_ADAPTER, SMOLLM, load_base, lora_config
    from phase10_alignment.dpo import DPO_ADAPTER

    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_ARTIFACTS", str(root))
        store = ArtifactStore(root)
        model, _, _ = load_base(SMOLLM)
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
    from phase10_alignment.variants import VARIANT_ADAPTERS

    return {name: store.load(kind.recipe("cpu")) for name, kind in VARIANT_ADAPTERS.items()}


def test_variants_load_fresh_one_adapter_each_and_reload_identically(adapters):
    from peft import PeftModel

    from phase09_finetuning.sft import SMOLLM, load_base
    from phase10_alignment.compare import probe_logits
    from phase10_alignment.variants import adapter_stacking_problems, load_variant, lora_layers

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
    ref, _, _ = load_base(SMOLLM)
    ref = PeftModel.from_pretrained(ref, str(adapters["sft"].path)).eval()
    assert torch.equal(probe_logits(ref, tok), sft_logits)
    del ref
    base_again, _ = load_variant("base", "cpu")
    assert torch.equal(probe_logits(base_again, tok), base_logits)
    assert not torch.allclose(sft_logits, base_logits) and not torch.allclose(dpo_logits, sft_logits)


@pytest.mark.filterwarnings("ignore::UserWarning")  # peft's own (very long) "missing adapter keys" warning
def test_stacking_an_adapter_on_a_live_peft_model_is_detected(adapters):
    from peft import PeftModel

    from phase10_alignment.variants import adapter_stacking_problems, load_variant

    sft, _ = load_variant("sft", "cpu", adapter=adapters["sft"])
    stacked = PeftModel.from_pretrained(sft, str(adapters["dpo"].path))  # the seed's failure mode
    problems = adapter_stacking_problems(stacked)
    assert problems and any("PEFT model inside a PEFT model" in p or "nested" in p for p in problems)


def test_load_variant_rejects_unknown_names_missing_and_foreign_adapters(adapters):
    from lab.artifacts import Artifact, Recipe
    from phase10_alignment.variants import load_variant

    with pytest.raises(ValueError, match="unknown variant 'rlhf'"):
        load_variant("rlhf", "cpu")
    with pytest.raises(ValueError, match="variant 'sft': pass its stored adapter"):
        load_variant("sft", "cpu")
    foreign = Artifact(Recipe("phase09.sft_adapter", {"base_model": "meta-llama/Llama-3.1-8B-Instruct"}),
                       adapters["sft"].path)
    with pytest.raises(ValueError, match="trained on 'meta-llama/Llama-3.1-8B-Instruct'"):
        load_variant("sft", "cpu", adapter=foreign)


def test_dpo_tiny_end_to_end_with_ablation_and_stored_adapter(store, adapters, tmp_path):
    from lab.artifacts import Recipe
    from phase10_alignment import dpo
    from phase10_alignment.variants import adapter_stacking_problems, load_variant, lora_layers

    overrides = {**dpo.EXERCISE.tiny, "save_adapter": True}
    doc = execute(dpo.EXERCISE, "cpu", overrides, out=tmp_path / "out")
    assert doc["status"] == "ok", doc["error"]
    rows = doc["tables"]["learning_rate_ablation"]["rows"]
    assert [r[0] for r in rows] == ["5e-07", "0.0002"] and all(r[1] == 1 for r in rows)
    kl_low, kl_high = float(rows[0][8]), float(rows[1][8])
    assert 0 <= kl_low < kl_high  # the SFT-scale rate moves the model further from its start
    assert doc["metrics"]["final_train_loss"]["value"] == pytest.approx(0.6931, abs=1e-3)  # step 1: policy == ref
    assert any("frozen copy of the SFT adapter" in f for f in doc["findings"])
    assert doc["metrics"]["peak_memory_gb"]["value"] > 0
    # the main run's adapter is stored under the recipe of this (tiny) config, next to the SFT it started from
    recipe = Recipe(dpo.DPO_ADAPTER.name, dpo.dpo_params(dpo.EXERCISE.config("cpu", overrides), adapters["sft"].recipe))
    saved = store.load(recipe)
    assert saved.params["lr"] == 5e-7 and saved.params["beta"] == 0.1
    assert saved.params["sft_recipe_sha256"] == adapters["sft"].recipe.sha256 and saved.metrics["steps"] == 1
    assert {(a["id"], a["role"]) for a in doc["stored_artifacts"]} == {(adapters["sft"].id, "used"), (saved.id, "published")}
    assert not (saved.path / "ref").exists()  # only the trained adapter, not trl's frozen 'ref' copy
    model, _ = load_variant("dpo", "cpu", adapter=saved)
    assert adapter_stacking_problems(model) == [] and len(lora_layers(model)) == 30 * 7


def test_compare_tiny_end_to_end(store, adapters, tmp_path):
    from phase10_alignment import compare

    doc = execute(compare.EXERCISE, "cpu", compare.EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["error"]
    gens = doc["tables"]["generations"]["rows"]
    assert len(gens) == 2 and all(len(r) == 4 for r in gens)
    loads = {r[0]: r for r in doc["tables"]["loads"]["rows"]}
    assert loads["base"][1] == 0 and loads["sft"][1] == loads["dpo"][1] == 210
    assert loads["sft"][2] == loads["dpo"][2] == "[1]" and not any(r[3] for r in loads.values())
    assert doc["metrics"]["sft_reload_max_abs_diff"]["value"] == 0
    md = (tmp_path / "phase10" / "compare" / "cpu" / "generations.md").read_text()
    assert "roofline" in md and "**SFT**" in md
    roles = {a["id"].split("/")[0]: a["role"] for a in doc["stored_artifacts"]}
    assert roles == {"phase09.sft_adapter": "used", "phase10.dpo_adapter": "used", "phase10.generations": "built"}
    assert [m["adapter"] for m in doc["models"]] == ["base: none", f"sft: {adapters['sft'].id}",
                                                     f"dpo: {adapters['dpo'].id}"]


def test_judge_tiny_end_to_end(store, adapters, tmp_path):
    from phase10_alignment import llm_judge

    doc = execute(llm_judge.EXERCISE, "cpu", llm_judge.EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["error"]
    m = doc["metrics"]
    assert m["judge_method"]["value"] == "choice_probs"
    assert m["rubric_sha256"]["value"] == llm_judge.RUBRIC.sha256() and len(m["prompt_sha256"]["value"]) == 64
    assert m["judge_failures"]["value"] == 0
    for v in ("base", "sft", "dpo"):
        assert 1.0 <= m[f"{v}_mean"]["value"] <= 5.0
    assert [r[0] for r in doc["tables"]["scores"]["rows"]] == ["BASE", "SFT", "SFT+DPO"]
    assert doc["models"][0]["id"] == "local:smollm2-135m-instruct"
    # it scores the generations phase10.compare stored (same prompts, settings and adapters)
    assert any(a["id"].startswith("phase10.generations/") for a in doc["stored_artifacts"])
