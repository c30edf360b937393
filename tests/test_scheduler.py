"""`lab run` over several exercises: jobs ordered by declared artifacts, built once, same metrics at any --jobs."""

import json

import pytest
import yaml

from lab import Exercise, ExerciseConfig
from lab.artifacts import ArtifactKind, ArtifactStore
from lab.registry import resolve
from lab.scheduler import Runner, critical_path, plan, run_all


class NoConfig(ExerciseConfig):
    steps: int = 1


def _kind(name, needs=()):
    return ArtifactKind(name, params=lambda profile: {"profile": profile}, build=lambda p, f, r: None, needs=needs)


SFT = _kind("phase99.sft")
DPO = _kind("phase99.dpo", needs=(SFT,))
INDEX = _kind("phase99.index")


def _ex(name, needs=(), produces=()):
    return Exercise(
        id=f"phase99.{name}",
        title=name,
        run=lambda cfg, ctx: None,
        config_cls=NoConfig,
        profiles={"cpu": {}},
        needs=needs,
        produces=produces,
    )


def test_consumers_wait_for_producers_and_a_missing_artifact_gets_one_build_job(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    store.build(INDEX.recipe("cpu"), lambda folder: None)  # already stored: nobody waits for it
    train, prefer, compare, search = (
        _ex("train", produces=(SFT,)),
        _ex("prefer", needs=(DPO,)),
        _ex("compare", needs=(SFT, DPO)),
        _ex("search", needs=(INDEX,)),
    )
    runs = [(search, {}), (compare, {"steps": 3}), (prefer, {}), (train, {})]
    jobs = {j.key: j for j in plan(runs, "cpu", store, config_dir=tmp_path)}
    assert set(jobs) == {"phase99.train", "phase99.prefer", "phase99.compare", "phase99.search", "build:phase99.dpo"}
    assert jobs["build:phase99.dpo"].deps == {"phase99.train"}  # DPO needs SFT, which `train` produces
    assert jobs["build:phase99.dpo"].argv == ["artifacts", "build", "phase99.dpo", "--profile", "cpu"]
    assert jobs["phase99.prefer"].deps == {"build:phase99.dpo"}
    assert jobs["phase99.compare"].deps == {"phase99.train", "build:phase99.dpo"}
    assert jobs["phase99.search"].deps == set() and jobs["phase99.train"].deps == set()
    argv = jobs["phase99.compare"].argv
    assert argv[:6] == ["run", "phase99.compare", "--profile", "cpu", "--jobs", "1"]
    assert yaml.safe_load(open(argv[argv.index("--config") + 1])) == {"steps": 3}
    priority = critical_path(list(jobs.values()))
    assert priority["phase99.train"] > priority["build:phase99.dpo"] > priority["phase99.prefer"]


def test_a_produced_artifact_already_in_the_store_adds_no_wait(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    store.build(SFT.recipe("cpu"), lambda folder: None)
    jobs = {
        j.key: j
        for j in plan(
            [(_ex("train", produces=(SFT,)), {}), (_ex("use", needs=(SFT,)), {})], "cpu", store, config_dir=tmp_path
        )
    }
    assert jobs["phase99.use"].deps == set()


def _comparable(root, exercise_id):
    """Metrics of the run under root, without wall-clock ones."""
    phase, name = exercise_id.split(".")
    doc = json.loads((root / phase / name / "cpu" / "result.json").read_text())
    assert doc["status"] == "ok", doc["reason"]
    return {k: m["value"] for k, m in doc["metrics"].items() if m["unit"] not in ("s", "ms", "tok/s", "tokens/s")}


@pytest.mark.slow
def test_two_jobs_at_a_time_give_the_same_metrics_as_one(tmp_path):

    runs = [(ex, dict(ex.tiny)) for ex in resolve("phase09.dataset") + resolve("phase11.eval_set")]
    metrics = {}
    for workers in (1, 2):
        out = tmp_path / f"jobs{workers}"
        finished = run_all(runs, "cpu", workers, out=out, log_root=tmp_path / "logs")
        assert [(j.key, j.status) for j in finished] == [("phase09.dataset", "ok"), ("phase11.eval_set", "ok")]
        metrics[workers] = {ex.id: _comparable(out, ex.id) for ex, _ in runs}
    assert metrics[1] == metrics[2] and metrics[1]["phase11.eval_set"]["n_prompts"] == 50


def _gpu_ex(name, profiles=("cpu", "a100"), cpu_only=()):
    return Exercise(
        id=f"phase99.{name}",
        title=name,
        run=lambda cfg, ctx: None,
        config_cls=NoConfig,
        profiles={p: {} for p in profiles},
        cpu_only=cpu_only,
    )


def test_in_a_gpu_profile_gpu_jobs_start_one_at_a_time_and_cpu_only_jobs_run_beside(tmp_path):

    store = ArtifactStore(tmp_path / "store")
    runs = [
        (_gpu_ex("llama8b"), {}),
        (_gpu_ex("mixtral"), {}),
        (_gpu_ex("data", cpu_only=("a100",)), {}),
        (_ex("consumer", needs=(INDEX,)), {}),
    ]
    jobs = plan(runs, "a100", store, config_dir=tmp_path)
    assert {j.key: j.gpu for j in jobs} == {
        "phase99.llama8b": True,
        "phase99.mixtral": True,
        "phase99.data": False,
        "phase99.consumer": True,
        "build:phase99.index": True,
    }
    runner = Runner(jobs, workers=16, profile="a100", log_dir=tmp_path, console=None)
    first = [j.key for j in runner.to_start()]
    assert len([k for k in first if runner.jobs[k].gpu]) == 1 and "phase99.data" in first
    for key in first:
        runner.jobs[key].status = "running"
    assert runner.to_start() == []  # the GPU is held; the CPU-only job already runs
    gpu_key = next(k for k in first if runner.jobs[k].gpu)
    runner.jobs[gpu_key].status = "ok"
    assert [j.gpu for j in runner.to_start()] == [True]  # the next GPU job, alone


def test_the_cpu_profile_keeps_every_worker_busy(tmp_path):

    runs = [(_gpu_ex(f"e{i}"), {}) for i in range(4)]
    jobs = plan(runs, "cpu", ArtifactStore(tmp_path / "store"), config_dir=tmp_path)
    assert not any(j.gpu for j in jobs)
    assert len(Runner(jobs, workers=3, profile="cpu", log_dir=tmp_path, console=None).to_start()) == 3


def test_cpu_only_must_name_a_profile_of_the_exercise():
    with pytest.raises(ValueError, match="cpu_only names unknown profile 'a100'"):
        _gpu_ex("x", profiles=("cpu",), cpu_only=("a100",))
