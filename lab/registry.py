"""Exercise registry: each phase package lists its exercise modules in ``EXERCISES``.

A phase package's ``__init__.py`` declares::

    TITLE = "Modern LLM architecture for agentic workloads"
    EXERCISES = ("phase08_architecture.architecture", "phase08_architecture.kv_cache")

The ``benchmarks`` package declares its result-writing benchmarks the same way (ids
``benchmarks.<name>``); they run on demand (``lab run benchmarks``), not as part of ``all``.

Exercise modules keep heavy imports inside functions, so importing them here is cheap. An exercise
module is named as its id: ``phase15.tracing`` is ``phase15_production/tracing.py``.

A phase package also says what it exports: ``PUBLIC = {"phase13_react.tools": "Toolbox, @tool: ..."}``
(module -> one line on why a later phase needs it). Later phases (and ``benchmarks``) import only
modules an earlier phase lists there, never a later phase; ``lab/`` imports no phase. Everything else
in a phase is its own: the lessons (``EXERCISES``) and the helpers they share. tests/test_contract.py
holds every import to this, including imports made inside functions.

A phase package may also publish artifacts no exercise trains on its canonical run (a model too slow to
train inside the demo, committed instead): ``ARTIFACTS = ("phase13_react.tool_adapter:TOOL_ADAPTER",)``
lists them for ``lab artifacts`` (list, build).

A phase package may also add a ``lab`` subcommand: ``COMMANDS = {"traces": "phase15_production.trace_view:cli"}``
(name -> "module:function"; the function takes the arguments after the name and returns an exit code).
The CLI imports only the package ``__init__`` to list them; the module loads when the command runs.

A phase package may also render a generated section of a file that ``lab report`` keeps:
``REPORT_SECTIONS = {"a100-sizing": ("README.md", "phase08_architecture.sizing:render")}`` (name ->
(file relative to the repo, "module:function"); the function takes the phases and returns markdown,
written between ``<!-- lab:NAME:begin ... -->`` and ``<!-- lab:NAME:end -->`` in that file).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache

from lab.artifacts import ArtifactKind
from lab.errors import ConfigError
from lab.exercise import Exercise
from lab.paths import REPO_ROOT


@dataclass(frozen=True)
class Phase:
    key: str  # "phase08"
    package: str  # "phase08_architecture"
    title: str
    exercises: tuple[Exercise, ...]
    # generated sections it renders: (name, file relative to the repo, "module:function")
    report_sections: tuple[tuple[str, str, str], ...] = ()
    # artifact kinds it publishes that no exercise trains on its canonical run (``ARTIFACTS``)
    artifacts: tuple[ArtifactKind, ...] = ()


BENCHMARKS = "benchmarks"


def _phase_packages() -> list[str]:
    found = sorted(p.name for p in REPO_ROOT.glob("phase[0-9][0-9]_*") if (p / "__init__.py").exists())
    return found + ([BENCHMARKS] if (REPO_ROOT / BENCHMARKS / "__init__.py").exists() else [])


@lru_cache(maxsize=1)
def phases() -> tuple[Phase, ...]:
    found = []
    for package in _phase_packages():
        mod = importlib.import_module(package)
        exercises = tuple(_load_exercise(package, m) for m in getattr(mod, "EXERCISES", ()))
        sections = tuple((name, path, target) for name, (path, target) in getattr(mod, "REPORT_SECTIONS", {}).items())
        for name, _, target in sections:
            if ":" not in str(target):
                raise ConfigError(
                    f"{package}/__init__.py REPORT_SECTIONS[{name!r}]: {target!r} is not 'module:function'"
                )
        found.append(
            Phase(
                package.split("_", 1)[0],
                package,
                getattr(mod, "TITLE", package),
                exercises,
                sections,
                _published_kinds(package, getattr(mod, "ARTIFACTS", ())),
            )
        )
    return tuple(found)


def _load_exercise(package: str, module: str) -> Exercise:
    try:
        exercise = importlib.import_module(module).EXERCISE
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ConfigError(f"{package}/__init__.py lists {module!r}, but that module does not exist") from None
        raise
    except AttributeError:
        raise ConfigError(f"{module} defines no EXERCISE") from None
    if not isinstance(exercise, Exercise):
        raise ConfigError(f"{module}.EXERCISE is {type(exercise).__name__}, not lab.Exercise")
    return exercise


def phase_commands() -> dict[str, str]:
    """Subcommand name -> "module:function" over every phase package's ``COMMANDS``."""
    found: dict[str, str] = {}
    for package in _phase_packages():
        for name, target in getattr(importlib.import_module(package), "COMMANDS", {}).items():
            module, sep, func = str(target).partition(":")
            if not sep or not module or not func:
                raise ConfigError(f"{package}/__init__.py COMMANDS[{name!r}] = {target!r}: expected 'module:function'")
            if name in found:
                raise ConfigError(f"{package}/__init__.py COMMANDS: {name!r} is already declared as {found[name]!r}")
            found[name] = target
    return found


def all_exercises() -> list[Exercise]:
    return [ex for phase in phases() for ex in phase.exercises]


def resolve(target: str) -> list[Exercise]:
    """'all' (every phase, benchmarks aside); 'phase08' (or 'phase08_architecture') -> its exercises;
    'phase08.kv_cache' -> that one; 'benchmarks' / 'benchmarks.tool_calls' likewise."""
    if target == "all":
        return [ex for ex in all_exercises() if ex.phase != BENCHMARKS]
    for phase in phases():
        if target in (phase.key, phase.package):
            if not phase.exercises:
                raise ConfigError(f"{target}: this phase has no exercises yet")
            return list(phase.exercises)
    for ex in all_exercises():
        if ex.id == target:
            return [ex]
    known = ", ".join([p.key for p in phases()] + [e.id for e in all_exercises()])
    raise ConfigError(f"unknown phase or exercise {target!r}; known: {known}")


def phase_of(exercise: Exercise) -> Phase:
    for phase in phases():
        if exercise in phase.exercises:
            return phase
    raise KeyError(exercise.id)


def artifact_kinds() -> list[ArtifactKind]:
    """Every artifact kind an exercise needs or produces (and what those need), once each, by name."""
    found: dict[str, ArtifactKind] = {}

    def add(kind: ArtifactKind) -> None:
        if kind.name not in found:
            found[kind.name] = kind
            for need in kind.needs:
                add(need)

    for ex in all_exercises():
        for kind in (*ex.needs, *ex.produces):
            add(kind)
    for phase in phases():
        for kind in phase.artifacts:
            add(kind)
    return sorted(found.values(), key=lambda k: k.name)


def _published_kinds(package: str, targets) -> tuple[ArtifactKind, ...]:
    """The artifact kinds a phase package declares in ``ARTIFACTS`` ("module:NAME")."""
    kinds = []
    for target in targets:
        module, sep, name = str(target).partition(":")
        kind = getattr(importlib.import_module(module), name, None) if sep else None
        if not isinstance(kind, ArtifactKind):
            raise ConfigError(f"{package}/__init__.py ARTIFACTS: {target!r} is not 'module:NAME' of an ArtifactKind")
        kinds.append(kind)
    return tuple(kinds)


def artifact_users() -> dict[str, tuple[list[str], list[str]]]:
    """Artifact name -> (ids of the exercises that need it, ids of those that produce it)."""
    users: dict[str, tuple[list[str], list[str]]] = {k.name: ([], []) for k in artifact_kinds()}
    for ex in all_exercises():
        for kind in ex.needs:
            users[kind.name][0].append(ex.id)
        for kind in ex.produces:
            users[kind.name][1].append(ex.id)
    return users


def render_sections(repo) -> list[tuple]:
    """``(path, name, markdown)`` for every section the phases declare, each rendered from ``phases()``."""
    out = []
    for phase in phases():
        for name, path, target in phase.report_sections:
            module, _, func = target.partition(":")
            out.append((repo / path, name, getattr(importlib.import_module(module), func)(phases())))
    return out
