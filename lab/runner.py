"""Run one exercise with provenance: resolve config, seed, time, catch failure, write result."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lab import provenance, results
from lab.context import RunContext
from lab.device import smoke_env
from lab.errors import ConfigError, SkipExercise
from lab.hashing import json_sha256
from lab.llm.engine import engine_runs, generation_note
from lab.paths import RESULTS_ROOT, SCRATCH_ROOT, SMOKE_ROOT
from lab.report import render_result_md
from lab.schema import SCHEMA_VERSION, is_substitute

LLM_OVERRIDE = "--llm"  # the key under which a run's LLM spec is recorded in its overrides
# What a smoke result measured: the code path, not the models (no reference row carries a delta).
SMOKE_METHOD = (
    "substitute: smoke run — tiny random-initialised stand-ins of the same architectures, "
    "toy data and a few steps; checks the code path, measures nothing about the real models"
)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f") + "-" + secrets.token_hex(3)


def config_sha256(config: dict, llm: str | None = None) -> str:
    """Hash of what the run was configured with; an --llm spec is part of it (a different model)."""
    return json_sha256({**config, LLM_OVERRIDE: llm} if llm else config)


def llm_override(llm: str | None) -> str | None:
    """The LLM spec this run overrides the default with: --llm, else a non-empty $LAB_LLM."""
    return llm or os.environ.get("LAB_LLM") or None


@contextlib.contextmanager
def llm_env(spec: str | None) -> Iterator[None]:
    """$LAB_LLM = spec while the exercise runs (lab.llm.from_spec() reads it), restored after."""
    previous = os.environ.get("LAB_LLM")
    if spec:
        os.environ["LAB_LLM"] = spec
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LAB_LLM", None)
        else:
            os.environ["LAB_LLM"] = previous


def with_llm(exercise, profile: str, overrides: dict[str, Any], spec: str | None) -> dict[str, Any]:
    """The config overrides with ``--llm`` in the profile's own ``llm`` key, when the profile names a
    model there: --llm overrides the profile's default (else it would be silently ignored: an
    exercise reads $LAB_LLM only when ``llm`` is unset), while ``--set llm=...`` still wins."""
    if spec and "llm" in exercise.profiles.get(profile, {}) and "llm" not in overrides:
        return {**overrides, "llm": spec}
    return overrides


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        np.random.seed(seed)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _reference_rows(exercise, metrics: dict, method: str | None = None) -> list[dict]:
    """The seed's figures beside ours; a substitute method measures something else: no delta."""
    rows = []
    for ref in exercise.references:
        ours = metrics.get(ref.metric, {}).get("value")
        delta = None
        if not is_substitute(method) and isinstance(ref.value, (int, float)) and isinstance(ours, (int, float)):
            delta = round(ours - ref.value, 6)
        rows.append(dict(metric=ref.metric, seed=ref.value, ours=ours, unit=ref.unit, delta=delta, note=ref.note))
    return rows


def recorded_overrides(overrides: dict[str, Any], llm: str | None) -> dict[str, Any]:
    """What a run records as its overrides: ``--set``/``--config`` keys plus the ``--llm`` spec, if any."""
    spec = llm_override(llm)
    return {**overrides, LLM_OVERRIDE: spec} if spec else dict(overrides)


def target_root(overrides: dict, out: Path | None, results_root: Path | None, smoke: bool = False) -> Path:
    """Where the result goes: --out, else runs/smoke for a smoke run, scratch for overridden runs
    (--set, --config, --llm), else the committed slot. A smoke never lands in results/."""
    if out is not None:
        return Path(out)
    if smoke:
        return SMOKE_ROOT
    if overrides:
        return SCRATCH_ROOT
    return results_root or RESULTS_ROOT


def smoke_overrides(exercise, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The exercise's declared smoke sizes under the caller's overrides; ConfigError unless the profile
    is a100 (a smoke runs the a100 code path; the cpu profile is already the small one)."""
    if profile != "a100":
        raise ConfigError(f"--smoke runs the a100 code path at toy size: use --profile a100 (got {profile!r})")
    return {**(exercise.smoke or {}), **overrides}


def _smoke_skip(exercise) -> str:
    return (
        f"{exercise.id} declares no smoke (Exercise.smoke is None): its a100 path needs what a smoke cannot "
        "stand in for here (e.g. a model server); declare smoke overrides in the exercise to include it"
    )


def execute(
    exercise,
    profile: str,
    overrides: dict[str, Any],
    out: Path | None = None,
    results_root: Path | None = None,
    quiet: bool = False,
    llm: str | None = None,
    smoke: bool = False,
) -> dict:
    """Run ``exercise`` once and write its result; returns the result dict (``_path``: where it went).

    ``llm``: the --llm spec (else $LAB_LLM). Like ``overrides`` it is recorded, hashed into
    config_sha256 and sends the result to runs/ unless ``out`` is given.
    ``smoke``: run the a100 profile with the exercise's smoke sizes and tiny stand-in models
    (``$LAB_SMOKE`` set while it runs, see lab.device); the result says ``smoke: true`` and goes to
    runs/smoke unless ``out`` is given.
    """
    if smoke:
        overrides = smoke_overrides(exercise, profile, overrides)
    spec = llm_override(llm)
    config = exercise.config(profile, with_llm(exercise, profile, overrides, spec))  # ConfigError before anything runs
    recorded = recorded_overrides(overrides, llm)
    root = target_root(recorded, out, results_root, smoke)
    run_id = new_run_id()
    target = results.result_dir(root, exercise.id, profile)
    if root == SCRATCH_ROOT:
        target = target / run_id
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".staging-{target.name}-{run_id}"
    staging.mkdir(parents=True)
    ctx = RunContext(exercise.id, profile, staging, quiet=quiet, run_id=run_id, smoke=smoke)

    seed_everything(config.seed)
    runs_before = engine_runs()
    started = time.time()
    status, reason, error = "ok", None, None
    try:
        if smoke and exercise.smoke is None:
            raise SkipExercise(_smoke_skip(exercise))
        with llm_env(spec), smoke_env(smoke):
            exercise.run(config, ctx)
    except SkipExercise as skip:
        status, reason = "skipped", str(skip)
    except KeyboardInterrupt:
        status, reason = "failed", "interrupted"
        error = {"type": "KeyboardInterrupt", "message": "interrupted", "traceback": ""}
    except Exception as exc:  # a failed run is a result too: record it, keep the last good one
        status, reason = "failed", f"{type(exc).__name__}: {exc}"
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
    ended = time.time()

    cfg = config.model_dump(mode="json")
    method = SMOKE_METHOD if smoke else ctx.method or exercise.methods.get(profile)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "exercise": {"id": exercise.id, "version": exercise.version, "title": exercise.title},
        "run_id": run_id,
        "profile": profile,
        "status": status,
        "reason": reason,
        "method": method,
        "method_note": " ".join(filter(None, [ctx.method_note, generation_note(ctx.models, runs_before)])) or None,
        "started_at": _utc(started),
        "ended_at": _utc(ended),
        "duration_s": round(ended - started, 3),
        "git": provenance.git_info(),
        "config": cfg,
        "config_sha256": config_sha256(cfg, spec),
        "overrides": recorded,
        "seed": config.seed,
        "models": ctx.models,
        "data": ctx.data,
        "env": provenance.env_info(),
        "hardware": provenance.hardware_info(),
        "metrics": ctx.metrics,
        "tables": ctx.tables,
        "findings": ctx.findings,
        "failure_modes": ctx.failure_modes,
        "reference": _reference_rows(exercise, ctx.metrics, method),
        "artifacts": [a for a in ctx.artifacts if (staging / a).exists()],
        "stored_artifacts": ctx.stored_artifacts,
        "error": error,
        "smoke": smoke,
    }
    doc = results.redact(doc)
    results.record_history(root, doc)
    published = results.publish(staging, target, doc, render_result_md(doc))
    doc["_path"] = str(target / "result.json") if published else None
    if status == "failed" and isinstance(error, dict) and error.get("type") == "KeyboardInterrupt":
        raise KeyboardInterrupt
    return doc
