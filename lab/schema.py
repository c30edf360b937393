"""The results JSON schema (``results/<phase>/<exercise>/<profile>/result.json``), versioned.

JSON is the source of truth; ``result.md``, the phase README sections and ``results/README.md``
are rendered from it by ``lab report`` and never edited by hand.

Schema 1.3 (one ``ResultDoc`` per run)::

    schema_version  "1.3"
    exercise        {id, version, title}
    run_id          "<UTC yyyymmddThhmmssffffff>-<6 hex>", unique per run, sorts by time
    profile         "cpu" | "a100" | ...
    status          "ok" | "failed" | "skipped";  reason: why (failed / skipped), else null
    method          how this run's method relates to the seed's experiment: "same" (the seed's method
                    and scale), "scaled" (the seed's method at a smaller scale: smaller model, fewer
                    items), "substitute: <what>" (a different method in its place, e.g.
                    "substitute: fp32 LoRA in place of QLoRA") or "own" (this repo's own measurement,
                    with no seed experiment behind it: a benchmark). Declared per profile by the exercise
                    (``Exercise.methods``) or set by the run (``RunContext.set_method``) when it
                    depends on config; null = not declared. Reference rows of a substitute carry no delta.
    method_note     str | null: what the method cannot show here (e.g. "the cpu profile cannot move
                    the policy"), written by the run
    started_at / ended_at   ISO-8601 UTC ("2026-11-25T13:10:08Z");  duration_s: float seconds
    git             {sha, branch, dirty}: the commit the code ran from; dirty = uncommitted changes
    config          resolved config (profile defaults + overrides); config_sha256 over its canonical JSON
    overrides       the --set / --config values applied on top of the profile ({} for a canonical run)
    seed            the seed the run was given
    models          [{id, revision, sha256, dtype, n_params, quantization, adapter, ...}]
    data            [{id, n, sha256, ...}]
    env             {python, platform, packages: {name: version}}
    hardware        {cpu, cores, ram_gb, gpus: [{name, memory_gb}], cuda}
    metrics         {name: {value, unit, higher_is_better (true/false/null), description}}
    tables          {name: {title, columns: [...], rows: [[...], ...]}}
    findings        [str]: what the numbers mean, written by the exercise from the numbers
    failure_modes   [str]: what went wrong or is known to be wrong (first-class results)
    reference       [{metric, seed, ours, unit, delta, note}]: the seed's published figure next to
                    ours (ours/delta are null when this run did not produce that metric)
    artifacts       [file names next to result.json, e.g. PNG plots]
    stored_artifacts  [{id, recipe_sha256, role}]: trained artifacts from the lab's artifact store
                    (lab/artifacts.py), named by store-relative id and recipe hash, never by a local
                    path. role: "used" (read by this run), "built" (missing, so this run trained it
                    first), "published" (this run trained and stored it), "kept" (this run trained
                    the same recipe again; the stored copy was kept)
    error           {type, message, traceback} when status == "failed", else null
    smoke           true for a smoke run (``lab run --smoke``): the profile's code path with tiny
                    random-initialised stand-in models, tiny data and a few steps — its numbers
                    measure nothing about the real models. Smoke results go to runs/ (or --out),
                    never to results/; ``lab report`` refuses one it finds there. false otherwise

Older files stay readable: 1.0 has neither ``stored_artifacts`` nor ``method``/``method_note``, and
1.1 files were written with one or the other (two branches added them side by side); 1.2 has no
``smoke``; ``upgrade`` reads whatever a file lacks as null (``stored_artifacts`` as [], ``smoke`` as
false: no smoke run was ever written before 1.3).

Secrets (API keys, tokens, passwords in URLs) are redacted before anything is written.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

SCHEMA_VERSION = "1.3"
# fields newer than 1.0 (required from 1.2 on) and what an older file that lacks them reads as
DEFAULTS: dict[str, Any] = {"stored_artifacts": [], "method": None, "method_note": None, "smoke": False}
METHOD_KINDS = ("same", "scaled", "substitute: <what>", "own")

Status = Literal["ok", "failed", "skipped"]


class Metric(TypedDict):
    value: float | int | str | None
    unit: str
    higher_is_better: bool | None
    description: str


class Table(TypedDict):
    title: str
    columns: list[str]
    rows: list[list[Any]]


class ReferenceRow(TypedDict):
    metric: str
    seed: float | str
    ours: float | int | str | None
    unit: str
    delta: float | None
    note: str


class ResultDoc(TypedDict):
    schema_version: str
    exercise: dict[str, str]
    run_id: str
    profile: str
    status: Status
    reason: str | None
    method: str | None
    method_note: str | None
    started_at: str
    ended_at: str
    duration_s: float
    git: dict[str, Any]
    config: dict[str, Any]
    config_sha256: str
    overrides: dict[str, Any]
    seed: int
    models: list[dict[str, Any]]
    data: list[dict[str, Any]]
    env: dict[str, Any]
    hardware: dict[str, Any]
    metrics: dict[str, Metric]
    tables: dict[str, Table]
    findings: list[str]
    failure_modes: list[str]
    reference: list[ReferenceRow]
    artifacts: list[str]
    stored_artifacts: list[dict[str, str]]
    error: dict[str, str] | None
    smoke: bool


READABLE_VERSIONS = ("1.0", "1.1", "1.2", SCHEMA_VERSION)
REQUIRED_KEYS = tuple(ResultDoc.__annotations__)


def check_method(method: Any, where: str) -> str:
    """``method`` as stored; raises ValueError naming ``where`` unless it is one of METHOD_KINDS."""
    if method in ("same", "scaled", "own"):
        return method
    if isinstance(method, str) and method.startswith("substitute: ") and method[len("substitute: ") :].strip():
        return method
    raise ValueError(f"{where}: method {method!r} must be 'same', 'scaled', 'substitute: <what>' or 'own'")


def is_substitute(method: str | None) -> bool:
    return method is not None and method.startswith("substitute")


def validate(doc: dict[str, Any], source: str = "result") -> None:
    """Raise ValueError naming the file and the first missing/invalid field."""
    version = doc.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{source}: schema_version {version!r}, this lab reads {', '.join(READABLE_VERSIONS)}")
    missing = [k for k in REQUIRED_KEYS if k not in doc and (version == SCHEMA_VERSION or k not in DEFAULTS)]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    if doc.get("method") is not None:
        check_method(doc["method"], source)
    if not isinstance(doc.get("smoke", False), bool):
        raise ValueError(f"{source}: smoke {doc['smoke']!r} is not true/false")
    if doc["status"] not in ("ok", "failed", "skipped"):
        raise ValueError(f"{source}: status {doc['status']!r} is not ok/failed/skipped")
    for name, metric in doc["metrics"].items():
        for key in ("value", "unit", "higher_is_better"):
            if key not in metric:
                raise ValueError(f"{source}: metrics.{name} lacks {key!r}")


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A validated doc of any readable version as the current shape (what older files lack reads as null)."""
    for key, default in DEFAULTS.items():
        doc.setdefault(key, list(default) if isinstance(default, list) else default)
    return doc
