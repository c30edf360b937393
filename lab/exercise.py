"""The exercise contract: typed config per profile + one `run(config, ctx)` function.

Every exercise module (``phaseNN_x/<name>.py``) builds one ``Exercise`` and ends with::

    if __name__ == "__main__":
        from lab.cli import exercise_main

        exercise_main(EXERCISE)

so it runs as ``python -m phaseNN_x.name`` and through ``lab run``. This module is a declaration
only: it knows nothing of the runner or the CLI (they import it, never the other way round). Heavy
imports (torch, transformers, chromadb...) live inside the run function so importing is instant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lab.artifacts import ArtifactKind
from lab.errors import ConfigError
from lab.schema import check_method


class ExerciseConfig(BaseModel):
    """Base class for exercise configs: unknown keys are an error, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    seed: int = 0


@dataclass(frozen=True)
class Reference:
    """One figure the seed curriculum published, compared against the metric of the same name."""

    metric: str
    value: float | str
    unit: str = ""
    note: str = ""


@dataclass(frozen=True)
class Exercise:
    """A registered exercise: id ``phaseNN.name``, its profiles and the function that runs it.

    ``needs``: stored artifacts the profile's run reads (``lab run`` orders it after their
    producers and builds missing ones first); ``produces``: artifacts its canonical run stores.

    ``smoke``: config overrides a smoke run (``lab run ... --profile a100 --smoke``) applies on top of
    the a100 profile — data sizes, step and token counts, offline data sources, never the recipe's
    settings (quantization, optimizer, LoRA targets, learning rate), so the smoke runs the a100 code
    path at toy size. ``None``: the exercise declares no smoke (its a100 path needs something a CPU
    machine lacks, e.g. a model server); a smoke run then reports it as skipped and says so. A run
    reads ``ctx.smoke``; GPU-only switches come from ``lab.device.current()``.
    """

    id: str
    title: str
    run: Callable[..., None]
    config_cls: type[ExerciseConfig]
    profiles: Mapping[str, Mapping[str, Any]]
    tiny: Mapping[str, Any] = field(default_factory=dict)
    references: tuple[Reference, ...] = ()
    version: str = "1"
    summary_metrics: tuple[str, ...] = ()
    needs: tuple[ArtifactKind, ...] = ()
    produces: tuple[ArtifactKind, ...] = ()
    # profile -> "same" | "scaled" | "substitute: <what>" (lab.schema): how the profile's method
    # relates to the seed's; a run may refine it with ctx.set_method when it depends on config
    methods: Mapping[str, str] = field(default_factory=dict)
    # GPU profiles (lab.scheduler.GPU_PROFILES: a100) in which this exercise never touches the GPU
    # (data, databases): `lab run` may run it beside the one job that holds the GPU
    cpu_only: tuple[str, ...] = ()
    smoke: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if "." not in self.id or not self.id.startswith(("phase", "benchmarks.")):
            raise ValueError(f"exercise id {self.id!r} must look like 'phaseNN.name' (or 'benchmarks.name')")
        if "cpu" not in self.profiles:
            raise ValueError(f"exercise {self.id} must define a 'cpu' profile")
        if self.smoke is not None and "a100" not in self.profiles:
            raise ValueError(f"exercise {self.id}: smoke overrides apply to the 'a100' profile, which it lacks")
        for profile, method in self.methods.items():
            if profile not in self.profiles:
                raise ValueError(f"exercise {self.id}: methods names unknown profile {profile!r}")
            check_method(method, f"exercise {self.id} profile {profile}")
        for profile in self.cpu_only:
            if profile not in self.profiles:
                raise ValueError(f"exercise {self.id}: cpu_only names unknown profile {profile!r}")

    @property
    def phase(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.id.split(".", 1)[1]

    def seed(self, metric: str) -> float | str:
        """The seed's figure for ``metric``: finding text quotes it from the references, never by hand."""
        for ref in self.references:
            if ref.metric == metric:
                return ref.value
        raise KeyError(f"{self.id}: no seed reference for {metric!r}")

    def canonical_config(self, profile: str) -> ExerciseConfig:
        """The config of the profile's canonical run — in a smoke of the a100 profile
        (``lab.device.smoke_active``), with the exercise's smoke sizes: what an artifact kind computes
        its recipe from, so a smoke finds the adapters its own smoke runs stored."""
        from lab.device import smoke_active  # noqa: PLC0415 (import cycle: lab imports this module)

        smoke = profile == "a100" and self.smoke is not None and smoke_active()
        return self.config(profile, self.smoke if smoke else None)

    def config(self, profile: str = "cpu", overrides: Mapping[str, Any] | None = None) -> ExerciseConfig:
        """Resolve profile defaults + overrides into a validated config (errors name the key)."""
        if profile not in self.profiles:
            raise ConfigError(f"{self.id}: unknown profile {profile!r}; choose one of {sorted(self.profiles)}")
        values = {**self.profiles[profile], **(overrides or {})}
        unknown = sorted(set(values) - set(self.config_cls.model_fields))
        if unknown:
            raise ConfigError(
                f"{self.id}: unknown config key(s) {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(self.config_cls.model_fields))}"
            )
        try:
            return self.config_cls(**values)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"{self.id} (profile {profile}): invalid config: {problems}") from None
