"""``EngineSettings`` is the one definition of the engine's settings: the command line's flags and the
Phase 16 exercise configs are made from it, so a name, default or bound is written once. Fast: nothing
here starts a database or a model."""

import argparse

import pytest

from lab.errors import ConfigError
from lab.exercise import ExerciseConfig
from phase11_evals.editor_gate import DEFAULT_THRESHOLDS
from phase16_capstone import engine_run, injection, load
from phase16_capstone.__main__ import _parser, main
from phase16_capstone.engine import EngineSettings, setting
from phase16_capstone.load import EXERCISE

# the flags scripts and tests pass (phase16.load's workers, the hostile test's server): names never change
FLAGS = {
    "llm": "--llm",
    "fallback": "--fallback",
    "corpus": "--corpus",
    "site": "--site",
    "site_url": "--site-url",
    "namespace": "--namespace",
    "lease_s": "--lease-s",
    "k": "--k",
    "hyde_max_tokens": "--hyde-max-tokens",
    "writer_max_tokens": "--writer-max-tokens",
    "max_revisions": "--max-revisions",
    "editor": "--editor",
    "calibration_items": "--calibration-items",
}


@pytest.fixture(autouse=True)
def no_site_url_env(monkeypatch):
    monkeypatch.delenv("ENGINE_SITE_URL", raising=False)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_every_flag_with_the_fields_default_and_description():
    assert EngineSettings.flags() == FLAGS
    for command, parser in _subparsers().items():
        options = {option: action for action in parser._actions for option in action.option_strings}
        for name, flag in FLAGS.items():
            info = EngineSettings.model_fields[name]
            assert options[flag].default == info.get_default(call_default_factory=True), (command, flag)
            assert options[flag].help == info.description, (command, flag)
    assert EngineSettings.from_args(_parser().parse_args(["worker"])) == EngineSettings()


def test_the_defaults_are_the_engines_as_it_shipped():
    args = _parser().parse_args(["run", "a topic"])
    assert (
        args.k,
        args.hyde_max_tokens,
        args.writer_max_tokens,
        args.max_revisions,
        args.calibration_items,
        args.lease_s,
        args.namespace,
        args.fallback,
        args.llm,
        args.corpus,
        args.site_url,
    ) == (3, 60, 80, 3, None, 30.0, "p16", [], None, None, None)
    assert args.site.endswith("runs/site")
    settings = EngineSettings()
    assert (settings.rubric, settings.pass_r, settings.trace, settings.traces, settings.defence, settings.poll_s) == (
        "1.1",
        0.75,
        True,
        None,
        True,
        0.5,
    )


def test_flags_parse_into_typed_settings():
    args = _parser().parse_args(
        [
            "worker",
            "--k",
            "2",
            "--lease-s",
            "2.5",
            "--calibration-items",
            "0",
            "--fallback",
            "openai:a@http://127.0.0.1:9/v1",
            "--fallback",
            "openai:b@http://h/v1",
        ]
    )
    settings = EngineSettings.from_args(args)
    assert (settings.k, settings.lease_s, settings.calibration_items) == (2, 2.5, 0)
    assert settings.fallback == ["openai:a@http://127.0.0.1:9/v1", "openai:b@http://h/v1"]


def test_site_url_defaults_to_its_variable_and_is_checked(monkeypatch):
    monkeypatch.setenv("ENGINE_SITE_URL", "https://blog.example/engine/")
    assert _parser().parse_args(["serve"]).site_url == "https://blog.example/engine/"
    with pytest.raises(ConfigError, match="--site-url: .*must be an http"):
        EngineSettings.from_args(_parser().parse_args(["worker", "--site-url", "ftp://blog.example/"]))
    with pytest.raises(ValueError, match="no credentials"):
        EngineSettings(site_url="https://user:secret@blog.example/")
    assert EngineSettings(site_url=" https://blog.example/x/ ").site_url == "https://blog.example/x/"
    assert main(["worker", "--site-url", "https://blog.example/?q=1"]) == 2  # refused before any database


def test_a_bad_value_names_its_flag():
    with pytest.raises(ConfigError, match="--k: "):
        EngineSettings.from_args(_parser().parse_args(["worker", "--k", "0"]))
    with pytest.raises(ConfigError, match="--lease-s: "):
        EngineSettings.from_args(_parser().parse_args(["worker", "--lease-s", "0"]))
    with pytest.raises(ConfigError, match="--editor: .*unknown Editor mode 'rubber-stamp'; choose from gate, shadow"):
        EngineSettings.from_args(_parser().parse_args(["worker", "--editor", "rubber-stamp"]))


def test_phase16_exercise_configs_take_the_engine_fields_from_the_settings():

    for module in (engine_run, load, injection):
        fields = module.Config.model_fields
        taken = [n for n, f in fields.items() if (f.json_schema_extra or {}).get("engine_setting") == n]
        assert {"k", "writer_max_tokens", "max_revisions"} <= set(taken), module.__name__
        for name in taken:
            assert fields[name].description == EngineSettings.model_fields[name].description
        for name in set(fields) & set(EngineSettings.model_fields) - set(taken):
            assert name in ("llm", "site"), f"{module.__name__}.{name} is an engine setting: declare it with setting()"
    # engine_run runs the engine as it ships; the injection exercise's a100 profile too, for k and max_revisions
    assert EngineSettings.from_config(engine_run.EXERCISE.config("cpu")) == EngineSettings()
    a100 = injection.EXERCISE.config("a100")
    assert (a100.k, a100.max_revisions) == (EngineSettings().k, EngineSettings().max_revisions)


def test_a_load_worker_process_gets_the_exercises_settings_through_its_flags():

    for overrides in ({}, {"corpus": "phase12_rag_storage/notes", "lease_s": 2.0, "k": 1}):
        cfg = EXERCISE.config("cpu", overrides)
        settings = EngineSettings.from_config(
            cfg, llm="openai:scripted@http://127.0.0.1:9/v1", site="/tmp/site", namespace="p16load_abc"
        )
        argv = settings.argv()
        assert ("--corpus" in argv) == bool(cfg.corpus)  # None: the flag's own default
        worker = _parser().parse_args(["worker", "--exit-when-idle", *argv])
        assert EngineSettings.from_args(worker) == settings
        assert (worker.k, worker.lease_s, worker.calibration_items) == (cfg.k, cfg.lease_s, cfg.calibration_items)


def test_argv_refuses_a_setting_no_flag_carries():
    assert EngineSettings(defence=True).argv() == []  # the default: nothing to carry
    with pytest.raises(ValueError, match="defence"):
        EngineSettings(defence=False).argv()


def test_setting_carries_bounds_and_takes_an_exercise_default():

    class Smaller(ExerciseConfig):
        k: int = setting("k", 2)
        max_revisions: int = setting("max_revisions")

    assert (Smaller().k, Smaller().max_revisions) == (2, EngineSettings().max_revisions)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Smaller(k=0)


def test_max_revisions_is_the_editor_gates_own_limit():

    assert EngineSettings().max_revisions == DEFAULT_THRESHOLDS.max_revisions
