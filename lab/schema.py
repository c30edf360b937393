"""The results JSON schema (``results/<phase>/<exercise>/<profile>/result.json``), versioned.

JSON is the source of truth; ``result.md``, the phase README sections and ``results/README.md``
are rendered from it by ``lab report`` and never edited by hand.

Schema 1.0 (one ``ResultDoc`` per run)::

    schema_version  "1.0"
    exercise        {id, version, title}
    run_id          "<UTC yyyymmddThhmmssffffff>-<6 hex>", unique per run, sorts by time
    profile         "cpu" | "a100" | ...
    status          "ok" | "failed" | "skipped";  reason: why (failed / skipped), else null
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
    error           {type, message, traceback} when status == "failed", else null

Secrets (API keys, tokens, passwords in URLs) are redacted before anything is written.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

SCHEMA_VERSION = "1.0"

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
    error: dict[str, str] | None


REQUIRED_KEYS = tuple(ResultDoc.__annotations__)


def validate(doc: dict[str, Any], source: str = "result") -> None:
    """Raise ValueError naming the file and the first missing/invalid field."""
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"{source}: schema_version {doc['schema_version']!r}, this lab reads {SCHEMA_VERSION!r}"
        )
    if doc["status"] not in ("ok", "failed", "skipped"):
        raise ValueError(f"{source}: status {doc['status']!r} is not ok/failed/skipped")
    for name, metric in doc["metrics"].items():
        for key in ("value", "unit", "higher_is_better"):
            if key not in metric:
                raise ValueError(f"{source}: metrics.{name} lacks {key!r}")
