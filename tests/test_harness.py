"""The harness contract: config validation, results with provenance, atomic writes, report."""

import json
import subprocess

import pytest

from lab import ConfigError, Exercise, ExerciseConfig, Reference, RunContext, paths, report, results, runner
from lab.provenance import git_info
from lab.registry import Phase, phases
from lab.runner import execute
from lab.schema import REQUIRED_KEYS, SCHEMA_VERSION, validate


class FakeConfig(ExerciseConfig):
    n: int = 3
    fail: bool = False
    api_key: str = ""


def fake_run(cfg: FakeConfig, ctx: RunContext) -> None:
    if cfg.fail:
        raise RuntimeError("boom on purpose")
    ctx.metric("total", sum(range(cfg.n)), "items", higher_is_better=True)
    ctx.metric("ratio", 0.5, "", higher_is_better=None)
    ctx.table("rows", [[i, i * i] for i in range(cfg.n)], ["i", "i²"], title="Squares")
    ctx.finding(f"summed {cfg.n} numbers")
    ctx.model("fake/model", dtype="fp32", n_params=10)
    ctx.dataset("fake-data", n=cfg.n, sha256="ab" * 32)
    ctx.artifact("note.txt").write_text("artifact\n")


FAKE = Exercise(
    id="phase99.fake",
    title="Fake exercise",
    run=fake_run,
    config_cls=FakeConfig,
    profiles={"cpu": {"n": 4}, "a100": {"n": 8}},
    tiny={"n": 2},
    references=(Reference("total", 6, "items", "seed figure"), Reference("missing", 1.0)),
    summary_metrics=("total",),
)


def _run(tmp_path, **overrides):
    return execute(FAKE, "cpu", overrides, out=tmp_path, quiet=True)


def test_result_round_trip_has_provenance(tmp_path):
    doc = _run(tmp_path)
    path = tmp_path / "phase99" / "fake" / "cpu" / "result.json"
    loaded = results.load_result(path)
    assert set(REQUIRED_KEYS) <= set(loaded)
    assert loaded["schema_version"] == SCHEMA_VERSION
    assert loaded["status"] == "ok" and loaded["reason"] is None
    assert loaded["metrics"]["total"] == {"value": 6, "unit": "items", "higher_is_better": True, "description": ""}
    assert loaded["config"]["n"] == 4 and len(loaded["config_sha256"]) == 64
    assert loaded["exercise"] == {"id": "phase99.fake", "version": "1", "title": "Fake exercise"}
    assert loaded["hardware"]["cores"] >= 1 and loaded["env"]["python"]
    assert "sha" in loaded["git"] and "dirty" in loaded["git"]
    assert loaded["reference"][0] == {
        "metric": "total",
        "seed": 6,
        "ours": 6,
        "unit": "items",
        "delta": 0,
        "note": "seed figure",
    }
    assert loaded["reference"][1]["ours"] is None and loaded["reference"][1]["delta"] is None
    assert loaded["artifacts"] == ["note.txt"]
    assert (path.parent / "note.txt").read_text() == "artifact\n"
    assert (path.parent / "result.md").read_text().startswith("## `phase99.fake`")
    assert doc["run_id"] == loaded["run_id"]


def test_failed_run_keeps_last_good_result(tmp_path):
    good = _run(tmp_path)
    path = tmp_path / "phase99" / "fake" / "cpu" / "result.json"
    bad = _run(tmp_path, fail=True)
    assert bad["status"] == "failed" and "boom on purpose" in bad["reason"]
    assert bad["error"]["type"] == "RuntimeError" and "Traceback" in bad["error"]["traceback"]
    assert bad["_path"] is None
    assert json.loads(path.read_text())["run_id"] == good["run_id"]
    history = sorted((tmp_path / "phase99" / "fake" / ".history").glob("cpu-*.json"))
    assert [json.loads(h.read_text())["status"] for h in history] == ["ok", "failed"]
    assert not list((tmp_path / "phase99" / "fake").glob(".staging-*"))


def test_first_failed_run_is_written_so_the_failure_is_visible(tmp_path):
    bad = _run(tmp_path, fail=True)
    assert bad["_path"] is not None
    assert results.load_result(tmp_path / "phase99" / "fake" / "cpu" / "result.json")["status"] == "failed"


def test_history_is_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "HISTORY_KEEP", 2)
    for _ in range(4):
        _run(tmp_path)
    assert len(list((tmp_path / "phase99" / "fake" / ".history").glob("cpu-*.json"))) == 2


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key.*nn"):
        FAKE.config("cpu", {"nn": 3})
    with pytest.raises(ConfigError, match="n: Input should be a valid integer"):
        FAKE.config("cpu", {"n": "many"})
    with pytest.raises(ConfigError, match="unknown profile 'h100'"):
        FAKE.config("h100")
    assert FAKE.config("a100").n == 8
    assert FAKE.config("cpu", FAKE.tiny).n == 2


def test_secrets_are_redacted(tmp_path):
    doc = _run(tmp_path, api_key="sk-ant-abcdefghijklmnop")
    text = (tmp_path / "phase99" / "fake" / "cpu" / "result.json").read_text()
    assert "abcdefghijklmnop" not in text and doc["config"]["api_key"] == "***"
    assert (
        results.redact("bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0 said; Bearer abc.DEF-123_xyz")
        == "bot *** said; Bearer ***"
    )
    red = results.redact(
        {
            "url": "postgresql://bob:hunter2@db:5432/x",
            "note": "token hf_abcdefghijkl used",
            "HF_TOKEN": "x",
            "nested": [{"password": "p"}],
        }
    )
    assert red == {
        "url": "postgresql://bob:***@db:5432/x",
        "note": "token *** used",
        "HF_TOKEN": "***",
        "nested": [{"password": "***"}],
    }


def test_schema_validation_names_the_field(tmp_path):
    _run(tmp_path)
    path = tmp_path / "phase99" / "fake" / "cpu" / "result.json"
    doc = json.loads(path.read_text())
    del doc["metrics"]["total"]["unit"]
    with pytest.raises(ValueError, match="metrics.total lacks 'unit'"):
        validate(doc, "x.json")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"result.json: not valid JSON \(line 1"):
        results.load_result(path)


def _fake_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "phase99_fake").mkdir(parents=True)
    (repo / "phase99_fake" / "README.md").write_text(f"# Fake\n\nlesson\n\n{report.BEGIN}\nold\n{report.END}\n\ntail\n")
    (repo / "README.md").write_text(f"# Top\n{report.BEGIN}\n{report.END}\n")
    return repo, (Phase("phase99", "phase99_fake", "Fake phase", (FAKE,)),)


def test_report_is_idempotent_and_check_catches_stale(tmp_path):
    root = tmp_path / "results"
    execute(FAKE, "cpu", {}, out=root, quiet=True)
    repo, phases = _fake_repo(tmp_path)
    changed = report.write_all(root, repo, phases)
    assert repo / "phase99_fake" / "README.md" in changed
    assert report.stale(root, repo, phases) == []
    assert report.write_all(root, repo, phases) == []  # idempotent
    readme = (repo / "phase99_fake" / "README.md").read_text()
    assert "lesson" in readme and "tail" in readme and "old" not in readme
    assert "../results/phase99/fake/cpu/note.txt" in readme
    assert "total = 6 items" in (root / "README.md").read_text()
    assert "1/1 cpu ok" in (repo / "README.md").read_text()
    # a new result makes the tables stale until regenerated
    execute(FAKE, "cpu", {}, out=root, quiet=True)
    assert repo / "phase99_fake" / "README.md" in report.stale(root, repo, phases)
    (repo / "phase99_fake" / "README.md").write_text("no markers")
    with pytest.raises(ValueError, match="missing the generated-results markers"):
        report.render_all(root, repo, phases)


def test_report_fills_figures_in_prose_and_names_a_missing_one(tmp_path):
    root = tmp_path / "results"
    execute(FAKE, "cpu", {}, out=root, quiet=True)
    repo, phases = _fake_repo(tmp_path)
    readme = repo / "phase99_fake" / "README.md"
    readme.write_text(readme.read_text() + "It counted <!--fig:phase99.fake/cpu:total-->42<!--/fig--> in all.\n")
    report.write_all(root, repo, phases)
    assert "It counted <!--fig:phase99.fake/cpu:total-->6 items<!--/fig--> in all." in readme.read_text()
    assert report.stale(root, repo, phases) == []
    readme.write_text(readme.read_text().replace(">6 items<", ">7 items<"))  # a hand edit is stale
    assert readme in report.stale(root, repo, phases)
    readme.write_text(readme.read_text() + "<!--fig:phase99.fake/cpu:nope-->?<!--/fig-->\n")
    with pytest.raises(ValueError, match="figure phase99.fake/cpu:nope: the result has no metric 'nope'"):
        report.render_all(root, repo, phases)


def test_overridden_run_never_replaces_the_canonical_result(tmp_path, monkeypatch):

    monkeypatch.setattr(runner, "SCRATCH_ROOT", tmp_path / "scratch")
    root = tmp_path / "results"
    good = execute(FAKE, "cpu", {}, results_root=root, quiet=True)
    custom = execute(FAKE, "cpu", {"n": 5}, results_root=root, quiet=True)
    assert json.loads((root / "phase99/fake/cpu/result.json").read_text())["run_id"] == good["run_id"]
    assert custom["_path"].startswith(str(tmp_path / "scratch"))


def test_git_dirty_flag_ignores_written_results(tmp_path):

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "results" / "r.json").write_text('{"new": 1}\n')  # a run rewrote its result
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    info = git_info(tmp_path)
    assert info["dirty"] is True and len(info["sha"]) == 40


def _method_run(tmp_path, method):
    def run(cfg, ctx):
        ctx.metric("total", 7, "items")
        if cfg.n == 5:
            ctx.set_method("scaled", note="n=5 is a smaller run")

    ex = Exercise(
        id="phase99.m",
        title="m",
        run=run,
        config_cls=FakeConfig,
        profiles={"cpu": {}},
        references=(Reference("total", 6, "items"),),
        methods={"cpu": method},
    )
    return ex


def test_method_is_recorded_and_a_substitute_reference_carries_no_delta(tmp_path):
    doc = execute(
        _method_run(tmp_path, "substitute: a fake in place of the real thing"), "cpu", {}, out=tmp_path, quiet=True
    )
    assert doc["method"] == "substitute: a fake in place of the real thing" and doc["method_note"] is None
    assert doc["reference"][0]["ours"] == 7 and doc["reference"][0]["delta"] is None
    md = (tmp_path / "phase99" / "m" / "cpu" / "result.md").read_text()
    assert "method **substitute: a fake in place of the real thing**" in md and "no row carries a delta" in md
    scaled = execute(_method_run(tmp_path, "same"), "cpu", {}, out=tmp_path, quiet=True)
    assert scaled["method"] == "same" and scaled["reference"][0]["delta"] == 1
    by_run = execute(_method_run(tmp_path, "same"), "cpu", {"n": 5}, out=tmp_path, quiet=True)
    assert by_run["method"] == "scaled" and by_run["method_note"] == "n=5 is a smaller run"


def test_method_must_be_same_scaled_a_named_substitute_or_own():
    for bad in ("exact", "substitute:", "substitute: ", ""):
        with pytest.raises(ValueError, match="must be 'same', 'scaled', 'substitute: <what>' or 'own'"):
            _method_run(None, bad)
    assert _method_run(None, "own").methods == {"cpu": "own"}  # a benchmark: no seed experiment behind it
    with pytest.raises(ValueError, match="unknown profile 'h100'"):
        Exercise(
            id="phase99.m",
            title="m",
            run=fake_run,
            config_cls=FakeConfig,
            profiles={"cpu": {}},
            methods={"h100": "same"},
        )


def test_schema_1_0_results_stay_readable_with_method_not_recorded(tmp_path):
    _run(tmp_path)
    path = tmp_path / "phase99" / "fake" / "cpu" / "result.json"
    doc = json.loads(path.read_text())
    doc["schema_version"] = "1.0"
    del doc["method"], doc["method_note"]
    path.write_text(json.dumps(doc))
    loaded = results.load_result(path)
    assert loaded["method"] is None and loaded["method_note"] is None
    assert "method **not recorded**" in report.render_result_md(loaded)
    doc["schema_version"] = "0.9"
    with pytest.raises(ValueError, match="schema_version '0.9'"):
        validate(doc, "x.json")


def test_every_registered_exercise_declares_a_method_per_profile():

    undeclared = [
        f"{ex.id}:{p}" for phase in phases() for ex in phase.exercises for p in ex.profiles if p not in ex.methods
    ]
    assert undeclared == []


def test_results_name_files_by_repo_path_never_by_machine_path():
    """A path inside this checkout (an agent's reply quoting its workspace) is made repo-relative in every
    string a result keeps; a secret beside it is still blanked."""
    doc = {"reply": f"ran {paths.REPO_ROOT}/explicit/abc with sk-abcdefghijkl", "nested": [f"{paths.REPO_ROOT}/x.md"]}
    assert results.redact(doc) == {"reply": "ran explicit/abc with ***", "nested": ["x.md"]}
