"""The artifact store: recipes name artifacts, loading never trains, writes are atomic, one build per
recipe across processes, flags are refused, and runs record what they used or built."""

import json
import multiprocessing
import time

import pytest

from lab import Exercise, ExerciseConfig, RunContext
from lab.artifacts import ArtifactKind, ArtifactStore, Recipe, ensure
from lab.errors import MissingArtifact, UnusableArtifact
from lab.runner import execute
from phase09_finetuning import qlora, sft
from phase10_alignment import dpo


def write_weights(value: str):
    def make(folder):
        (folder / "weights.txt").write_text(value)
        return {"metrics": {"steps": 3}}

    return make


def never(folder):
    raise AssertionError("a stored recipe must not be built again")


def test_a_recipe_change_is_a_new_artifact_id():
    base = Recipe("phase99.adapter", {"base_model": "m", "data_sha256": "ab" * 32, "max_steps": 12, "lr": 5e-4})
    assert base.id == Recipe("phase99.adapter", dict(reversed(list(base.params.items())))).id  # order-free
    assert base.id.startswith("phase99.adapter/") and len(base.id.split("/")[1]) == 16
    changed = [
        Recipe(base.name, {**base.params, key: value})
        for key, value in (("max_steps", 13), ("lr", 2e-4), ("data_sha256", "cd" * 32), ("seed", 1))
    ]
    assert len({base.id, *(r.id for r in changed)}) == 5
    assert Recipe("phase99.other", dict(base.params)).id != base.id
    with pytest.raises(ValueError, match="artifact name 'Bad/Name'"):
        Recipe("Bad/Name", {})


def test_build_stores_files_and_metadata_once_and_load_never_builds(tmp_path):
    store = ArtifactStore(tmp_path)
    recipe = Recipe("phase99.adapter", {"steps": 3}, command="lab artifacts build phase99.adapter --profile cpu")
    assert store.find(recipe) is None
    with pytest.raises(
        MissingArtifact,
        match=r"phase99.adapter/\w{16} is not in the artifact store: build it with "
        r"`lab artifacts build phase99.adapter --profile cpu`",
    ):
        store.load(recipe)
    art, built = store.build(recipe, write_weights("w1"), producer={"exercise": "phase99.x", "run_id": "r1"})
    assert built and (art.path / "weights.txt").read_text() == "w1"
    meta = json.loads((store.path(recipe) / "artifact.json").read_text())
    assert meta["id"] == recipe.id and meta["recipe"] == {"steps": 3} and meta["recipe_sha256"] == recipe.sha256
    assert meta["producer"] == {"exercise": "phase99.x", "run_id": "r1"} and meta["metrics"] == {"steps": 3}
    assert meta["created_at"].endswith("Z") and meta["flags"] == {}
    again, built = store.build(recipe, never)
    assert not built and again.path == art.path
    assert store.load(recipe).metrics == {"steps": 3}
    assert art.describe() == {"id": recipe.id, "recipe_sha256": recipe.sha256}  # no local path in results
    assert [a.id for a in store.list()] == [recipe.id]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    store = ArtifactStore(tmp_path)
    recipe = Recipe("phase99.adapter", {"steps": 1})

    def crash(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="training diverged"):
        store.build(recipe, crash)
    assert store.find(recipe) is None
    assert [p.name for p in (tmp_path / "phase99.adapter").iterdir()] == [f".{recipe.sha256[:16]}.lock"]


def test_publish_keeps_the_stored_copy_of_the_same_recipe(tmp_path):
    store = ArtifactStore(tmp_path)
    recipe = Recipe("phase99.adapter", {"steps": 2})
    with store.staging(recipe) as folder:
        (folder / "weights.txt").write_text("first")
        first, stored = store.publish(recipe, folder, metrics={"loss": 1.0})
    assert stored and not folder.exists()
    with store.staging(recipe) as folder:
        (folder / "weights.txt").write_text("second")
        kept, stored = store.publish(recipe, folder)
    assert not stored and (kept.path / "weights.txt").read_text() == "first"
    assert len(list((tmp_path / "phase99.adapter").iterdir())) == 2  # the artifact and its lock file


def _slow_build(root: str, counter: str) -> None:
    def make(folder):
        with open(counter, "a") as fh:
            fh.write("built\n")
        time.sleep(0.5)  # long enough for the other process to arrive while this one builds
        (folder / "weights.txt").write_text("w")

    ArtifactStore(root).build(Recipe("phase99.adapter", {"steps": 9}), make)


def test_two_processes_asking_for_one_recipe_train_it_once(tmp_path):
    counter = tmp_path / "builds.txt"
    procs = [
        multiprocessing.get_context("spawn").Process(target=_slow_build, args=(str(tmp_path / "store"), str(counter)))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text() == "built\n"
    assert ArtifactStore(tmp_path / "store").find(Recipe("phase99.adapter", {"steps": 9})) is not None


def _kind(name, steps, needs=(), reject=(), flags=None, calls=None):
    def build(profile, folder, reporter):
        calls.append(name)
        (folder / "weights.txt").write_text(f"{name} {steps[profile]}")
        return {"flags": flags or {}}

    return ArtifactKind(
        name, params=lambda profile: {"steps": steps[profile]}, build=build, needs=needs, reject_flags=reject
    )


class Quiet:
    quiet = True

    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)


def test_ensure_builds_needs_first_and_says_so(tmp_path):
    store, calls, reporter = ArtifactStore(tmp_path), [], Quiet()
    sft = _kind("phase99.sft", {"cpu": 12}, calls=calls)
    dpo = _kind("phase99.dpo", {"cpu": 4}, needs=(sft,), calls=calls)
    built = []
    art = ensure(dpo, "cpu", reporter, store=store, on_built=lambda a: built.append(a.id))
    assert calls == ["phase99.sft", "phase99.dpo"] and built == [sft.recipe("cpu").id, art.id]
    assert any("is not in the artifact store: training it now" in line for line in reporter.lines)
    assert art.recipe.command == "lab artifacts build phase99.dpo --profile cpu"
    ensure(dpo, "cpu", reporter, store=store)
    assert calls == ["phase99.sft", "phase99.dpo"]  # stored: nothing trains twice


def test_a_flagged_artifact_is_refused_by_its_loaders(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    noop = _kind("phase99.dpo", {"cpu": 1}, reject=("noop",), flags={"noop": "weights did not move"}, calls=calls)
    with pytest.raises(UnusableArtifact, match="flagged noop .noop: weights did not move."):
        ensure(noop, "cpu", Quiet(), store=store)
    with pytest.raises(UnusableArtifact, match="change its recipe"):
        store.load(noop.recipe("cpu"), reject_flags=noop.reject_flags)
    assert store.load(noop.recipe("cpu")).flags == {"noop": "weights did not move"}  # readable when not refused


class NeedConfig(ExerciseConfig):
    pass


def test_a_run_records_the_artifact_it_trained_then_the_one_it_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_ARTIFACTS", str(tmp_path / "store"))
    calls = []
    kind = _kind("phase99.sft", {"cpu": 5}, calls=calls)

    def run(cfg, ctx: RunContext):
        art = ctx.require_artifact(kind)
        ctx.metric("weights", (art.path / "weights.txt").read_text(), "")

    ex = Exercise(
        id="phase99.needy",
        title="Needs an adapter",
        run=run,
        config_cls=NeedConfig,
        profiles={"cpu": {}},
        needs=(kind,),
    )
    first = execute(ex, "cpu", {}, out=tmp_path / "out", quiet=True)
    assert first["status"] == "ok" and first["metrics"]["weights"]["value"] == "phase99.sft 5"
    recipe = kind.recipe("cpu")
    assert first["stored_artifacts"] == [{"id": recipe.id, "recipe_sha256": recipe.sha256, "role": "built"}]
    assert any(
        f.startswith(f"{recipe.id} was not in the artifact store, so this run made it first") for f in first["findings"]
    )
    second = execute(ex, "cpu", {}, out=tmp_path / "out", quiet=True)
    assert second["stored_artifacts"][0]["role"] == "used" and calls == ["phase99.sft"]
    assert str(tmp_path) not in json.dumps(second["stored_artifacts"])


def test_sft_and_dpo_recipes_follow_their_settings(monkeypatch):
    """The two bugs this store fixes: SFT ignored max_steps, DPO ignored its own config."""

    cpu = sft.SFT_ADAPTER.recipe("cpu")
    cfg = qlora.EXERCISE.config("cpu")  # the canonical qlora run publishes exactly the profile's recipe
    assert sft.sft_params(
        model_id=cfg.model,
        lora_r=cfg.lora_r,
        qlora=False,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        max_steps=cfg.max_steps,
        epochs=cfg.epochs,
    ) == dict(cpu.params)
    monkeypatch.setitem(sft.SFT_RECIPES, "cpu", {**sft.SFT_RECIPES["cpu"], "max_steps": 13})
    more_steps = sft.SFT_ADAPTER.recipe("cpu")
    assert more_steps.id != cpu.id
    dpo_cfg = dpo.EXERCISE.config("cpu")
    default = dpo.dpo_params(dpo_cfg, cpu)
    assert dpo.dpo_params(dpo.EXERCISE.config("cpu", {"learning_rate": 1e-6}), cpu) != default
    assert dpo.dpo_params(dpo.EXERCISE.config("cpu", {"max_steps": 8}), cpu) != default
    assert dpo.dpo_params(dpo_cfg, more_steps)["sft_recipe_sha256"] == more_steps.sha256  # a new SFT, a new DPO
    assert dpo.dpo_params(dpo.EXERCISE.config("cpu", {"n_drift": 2, "sample_tokens": 5}), cpu) == default  # probes only
