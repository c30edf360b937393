"""The results JSON schema (``results/<phase>/<exercise>/<profile>/result.json``), versioned.

JSON is the source of truth; ``result.md``, the phase README sections and ``results/README.md``
are rendered from it by ``lab report`` and never edited by hand.

Schema 1.1 (one ``ResultDoc`` per run; 1.0 is 1.1 without ``stored_artifacts`` and still reads)::

    schema_version  "1.1"
    exercise        {id, version, title}
    run_id          "<UTC yyyymmddThhmmssffffff>-<6 hex>", unique per run, sorts by time
    profile         "cpu" | "a100" | ...
    status          "ok" | "failed" | "skipped";  reason: why (failed / skipped), else null
    started_at / ended_at   ISO-8601 UTC ("2026-11-25T13:10:08Z");  duration_s: float seconds
    git             {sha, branch, dirty}: the commit the code ran from; dirty = uncommitted changes
    config          resolved config (profile defaults + overrides); config_sha256 over its canonical JSON
    overrides       the --set / --config values applied on top of the profile ({} for a canonical run);
                    "--llm": the LLM spec when --llm (or $LAB_LLM) picked the model, which also
                    enters config_sha256 (a run with any override never fills the committed slot)
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

Secrets (API keys, tokens, passwords in URLs) are redacted before anything is written.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

SCHEMA_VERSION = "1.1"
ADDED_IN = {"stored_artifacts": "1.1"}  # fields newer than 1.0, so older results stay readable

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
    stored_artifacts: list[dict[str, str]]
    error: dict[str, str] | None


def required_keys(version: str = SCHEMA_VERSION) -> tuple[str, ...]:
    """The fields a result of schema ``version`` must have."""
    def as_tuple(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    return tuple(k for k in ResultDoc.__annotations__ if as_tuple(ADDED_IN.get(k, "1.0")) <= as_tuple(version))


READABLE_VERSIONS = ("1.0", SCHEMA_VERSION)
REQUIRED_KEYS = required_keys()


def validate(doc: dict[str, Any], source: str = "result") -> None:
    """Raise ValueError naming the file and the first missing/invalid field."""
    version = doc.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{source}: schema_version {version!r}, this lab reads {', '.join(READABLE_VERSIONS)}")
    missing = [k for k in required_keys(version) if k not in doc]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    if doc["status"] not in ("ok", "failed", "skipped"):
        raise ValueError(f"{source}: status {doc['status']!r} is not ok/failed/skipped")
    for name, metric in doc["metrics"].items():
        for key in ("value", "unit", "higher_is_better"):
            if key not in metric:
                raise ValueError(f"{source}: metrics.{name} lacks {key!r}")
