"""The a100 code path of every phase, run on CPU at toy size (`lab run all --profile a100 --smoke`).

Every a100 profile runs with tiny random-initialised stand-ins of its models (lab.tiny_models) and
the exercise's smoke sizes, through the same modules, quantization config and trainer arguments as
on an A100; lab.device switches the GPU-only settings on. The checks below read the results: every
run ok and labelled smoke, every recipe setting the smoke does not resize equal to the a100
profile's, and the a100-only choices (NF4, paged 8-bit AdamW, bf16, LoRA targets, fp32 DPO LoRA
weights, the Mixtral offload) really taken. A regression that would make a real a100 result
unusable (a no-op DPO, a silently offloaded Mixtral) fails here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import Exercise, ExerciseConfig, RunContext, report
from lab.device import Device
from lab.gpu_smoke import main
from lab.paths import REPO_ROOT, SMOKE_ROOT
from lab.registry import all_exercises, phases
from lab.runner import SMOKE_METHOD, execute, target_root
from phase08_architecture.device_plan import plan
from phase09_finetuning.sft import LORA_TARGETS
from phase10_alignment.dpo import NOOP_MIN_CHANGED

PHASES = ("phase08", "phase09", "phase10", "phase11", "phase12", "phase13", "phase14", "phase15", "phase16")
SMOKED = [ex for ex in all_exercises() if ex.phase in PHASES and "a100" in ex.profiles]


def _lab(args: list[str], artifacts: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "LAB_ARTIFACTS": str(artifacts),
        "PYTHONPATH": str(REPO_ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke of every phase (a few minutes on 2 cores; Phases 13-16 talk to `lab serve` started on the a100
    profile's port with the tiny Llama stand-in): (results folder, artifact store root)."""
    root = tmp_path_factory.mktemp("a100-smoke")
    out, artifacts = root / "out", root / "artifacts"
    res = _lab(["run", *PHASES, "--profile", "a100", "--smoke", "--jobs", "1", "--out", str(out)], artifacts)
    assert res.returncode == 0, res.stderr[-4000:]
    return out, artifacts


def _result(out: Path, exercise_id: str) -> dict:
    phase, name = exercise_id.split(".", 1)
    return json.loads((out / phase / name / "a100" / "result.json").read_text())


def _model(doc: dict, key: str):
    return next(m[key] for m in doc["models"] if m.get(key) is not None)


@pytest.mark.parametrize("exercise", SMOKED, ids=lambda ex: ex.id)
def test_every_a100_profile_runs_ok_as_a_labelled_smoke_with_its_recipe(smoke, exercise):
    doc = _result(smoke[0], exercise.id)
    assert doc["status"] == "ok", doc["reason"]
    assert doc["smoke"] is True and doc["method"] == SMOKE_METHOD
    assert all(row["delta"] is None for row in doc["reference"])  # a smoke is never compared with the seed
    recipe = exercise.config("a100").model_dump(mode="json")
    for key, value in recipe.items():
        if key not in exercise.smoke:
            assert doc["config"][key] == value, f"{exercise.id}: smoke changed the a100 recipe's {key}"


def test_qlora_smoke_trains_nf4_with_the_a100_trainer(smoke):

    for exercise_id in ("phase09.qlora", "phase09.rank_sweep"):
        doc = _result(smoke[0], exercise_id)
        assert _model(doc, "quantization") == "bnb nf4 4-bit double-quant, bfloat16 compute"
        assert _model(doc, "lora_targets") == list(LORA_TARGETS)
        args = _model(doc, "trainer_args")
        assert args["optim"] == "paged_adamw_8bit" and args["bf16"] and args["gradient_checkpointing"]
        assert args["learning_rate"] == 2e-4 and args["lr_scheduler_type"] == "cosine"


def test_dpo_smoke_moves_fp32_lora_weights_at_the_seed_rate(smoke):

    doc = _result(smoke[0], "phase10.dpo")
    assert _model(doc, "quantization").startswith("bnb nf4 4-bit")
    assert _model(doc, "trainable_dtype") == "float32"
    args = _model(doc, "trainer_args")
    assert args["learning_rate"] == 5e-7 and args["optim"] == "paged_adamw_8bit" and args["bf16"]
    assert doc["metrics"]["trainable_changed_share"]["value"] > NOOP_MIN_CHANGED


def test_dpo_smoke_refuses_bf16_lora_at_the_seed_rate(smoke, tmp_path):
    """trl's own bf16 cast of a 4-bit policy's LoRA weights: at lr 5e-7 the updates round away."""
    res = _lab(
        [
            "run",
            "phase10.dpo",
            "--profile",
            "a100",
            "--smoke",
            "--set",
            "upcast_lora=false",
            "--set",
            "ablation_learning_rate=null",
            "--out",
            str(tmp_path),
        ],
        smoke[1],
    )
    assert res.returncode == 1
    doc = _result(tmp_path, "phase10.dpo")
    assert doc["status"] == "failed" and doc["error"]["type"] == "NoOpRun"
    assert "rounded away in bfloat16" in doc["reason"]


def test_mixtral_smoke_states_the_a100_offload(smoke):
    doc = _result(smoke[0], "phase08.moe_routing")
    assert _model(doc, "quantization_config").startswith("bnb nf4 4-bit")
    offload = doc["metrics"]["planned_offload_gb"]["value"]
    assert offload > 17  # fused bf16 experts: ~91 GB against a 90% x 76 GiB budget
    assert any(f"{offload:.1f} GB" in text and "offloaded to CPU" in text for text in doc["failure_modes"])


def test_mixtral_device_plan_follows_the_gpu_budget():

    tight, roomy = plan("mixtral-8x7b", 76), plan("mixtral-8x7b", 110)
    assert tight.total_bytes == roomy.total_bytes and 90e9 < tight.total_bytes < 93e9
    assert tight.gpu_budget_bytes == int(0.9 * 76 * 1024**3)
    assert tight.offload_bytes == tight.total_bytes - tight.gpu_bytes > 17e9
    assert "lm_head" in tight.offloaded
    assert roomy.offload_bytes == 0 and roomy.offloaded == []
    with pytest.raises(ValueError, match="gpu_max_memory_gib"):
        plan("mixtral-8x7b", 0)


def test_device_switches_take_the_gpu_path_in_a_smoke_on_cpu():
    smoke, plain, gpu = Device(cuda=False, smoke=True), Device(cuda=False, smoke=False), Device(cuda=True, smoke=False)
    assert smoke.trainer_args(quantized=True) == dict(
        use_cpu=True, bf16=True, gradient_checkpointing=True, optim="paged_adamw_8bit"
    )
    assert plain.trainer_args(quantized=True) == dict(
        use_cpu=True, bf16=False, gradient_checkpointing=False, optim="adamw_torch"
    )
    assert gpu.trainer_args(quantized=False)["optim"] == "adamw_torch" and not gpu.trainer_args(True)["use_cpu"]
    assert (smoke.device_map(), gpu.device_map()) == ({"": "cpu"}, {"": 0})
    assert (smoke.place("cuda"), plain.place("cuda"), gpu.place("cuda"), plain.place("cpu")) == (
        "cpu",
        None,
        "cuda",
        "cpu",
    )
    assert plain.gpu_only_reason("x").startswith("x: it needs a CUDA GPU") and smoke.gpu_only_reason("x") is None


class _Cfg(ExerciseConfig):
    n: int = 1


def _declared(ids: list[str]):
    def run(cfg: _Cfg, ctx: RunContext) -> None:
        ids.append(f"smoke={ctx.smoke} n={cfg.n}")
        ctx.metric("n", cfg.n)

    return run


def test_smoke_applies_declared_sizes_and_skips_an_undeclared_exercise(tmp_path):
    seen: list[str] = []
    declared = Exercise(
        id="phase99.declared",
        title="t",
        run=_declared(seen),
        config_cls=_Cfg,
        profiles={"cpu": {}, "a100": {"n": 100}},
        smoke={"n": 2},
    )
    undeclared = Exercise(
        id="phase99.undeclared",
        title="t",
        run=_declared(seen),
        config_cls=_Cfg,
        profiles={"cpu": {}, "a100": {"n": 100}},
    )
    doc = execute(declared, "a100", {}, out=tmp_path, quiet=True, smoke=True)
    assert doc["status"] == "ok" and doc["smoke"] is True and seen == ["smoke=True n=2"]
    skipped = execute(undeclared, "a100", {}, out=tmp_path, quiet=True, smoke=True)
    assert skipped["status"] == "skipped" and "declares no smoke" in skipped["reason"] and len(seen) == 1
    assert target_root({}, None, None, smoke=True) == SMOKE_ROOT  # never results/


def test_report_refuses_a_smoke_result_among_the_real_ones(tmp_path):

    seen: list[str] = []
    ex = Exercise(
        id="phase99.declared",
        title="t",
        run=_declared(seen),
        config_cls=_Cfg,
        profiles={"cpu": {}, "a100": {}},
        smoke={},
    )
    execute(ex, "a100", {}, out=tmp_path, quiet=True, smoke=True)
    fake_phase = type(phases()[0])("phase99", "phase99_x", "t", (ex,))
    with pytest.raises(ValueError, match="a smoke result"):
        report.render_all(tmp_path, tmp_path, [fake_phase])


def test_gpu_smoke_fails_clearly_without_cuda(capsys):
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: make gpu-smoke would run")
    assert main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
