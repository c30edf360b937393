"""RunContext: what an exercise's ``run(config, ctx)`` uses to report what it measured."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.progress import track

from lab.errors import SkipExercise
from lab.schema import Metric, Table, check_method

if TYPE_CHECKING:
    from lab.artifacts import Artifact, ArtifactKind, Recipe

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """numpy / torch scalars -> python numbers, so results stay JSON."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunContext:
    """Collects metrics, tables, findings, models, data and artifacts during one run.

    ``smoke``: this is a smoke run (``lab run --smoke``): the profile's code path with tiny stand-in
    models (``lab.tiny_models``) and the exercise's ``smoke`` sizes, on whatever device is here.
    An exercise uses it to relax checks that depend on the real scale (a few steps cannot move a
    policy as far as a full epoch) and to record what the stand-ins replaced; the GPU-only switches
    themselves come from ``lab.device.current()``, which reads the same flag.
    """

    ARTIFACT_ROLES = ("used", "built", "published", "kept")

    def __init__(
        self, exercise_id: str, profile: str, out_dir: Path, quiet: bool = False, run_id: str = "", smoke: bool = False
    ):
        self.exercise_id = exercise_id
        self.profile = profile
        self.smoke = smoke
        self.out_dir = out_dir
        self.quiet = quiet
        self.run_id = run_id
        self.metrics: dict[str, Metric] = {}
        self.tables: dict[str, Table] = {}
        self.findings: list[str] = []
        self.failure_modes: list[str] = []
        self.models: list[dict[str, Any]] = []
        self.data: list[dict[str, Any]] = []
        self.artifacts: list[str] = []
        self.stored_artifacts: list[dict[str, Any]] = []
        self.method: str | None = None  # set_method: overrides the exercise's declared method
        self.method_note: str | None = None

    # --- what was measured -------------------------------------------------------------
    def metric(
        self,
        name: str,
        value: Any,
        unit: str = "",
        higher_is_better: bool | None = None,
        description: str = "",
    ) -> None:
        self.metrics[name] = Metric(
            value=_plain(value), unit=unit, higher_is_better=higher_is_better, description=description
        )

    def table(self, name: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], title: str = "") -> None:
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise ValueError(f"table {name!r} row {i} has {len(row)} cells, expected {len(columns)}")
        self.tables[name] = Table(
            title=title or name, columns=list(columns), rows=[[_plain(c) for c in r] for r in rows]
        )

    def finding(self, text: str) -> None:
        self.findings.append(text)

    def failure_mode(self, text: str) -> None:
        self.failure_modes.append(text)

    def set_method(self, method: str, note: str | None = None) -> None:
        """This run's method vs the seed's ("same" | "scaled" | "substitute: <what>"), when it
        depends on config; ``note`` says what the method cannot show here."""
        self.method = check_method(method, self.exercise_id)
        if note is not None:
            self.method_note = note

    # --- conditions ----------------------------------------------------------------------
    def model(self, id: str, **fields: Any) -> None:
        """Record a model used: revision or sha256, dtype, n_params, quantization, adapter..."""
        base = dict(id=id, revision=None, sha256=None, dtype=None, n_params=None, quantization=None, adapter=None)
        base.update({k: _plain(v) for k, v in fields.items()})
        self.models.append(base)

    def dataset(self, id: str, n: int, sha256: str | None, **fields: Any) -> None:
        self.data.append(dict(id=id, n=n, sha256=sha256, **fields))

    def artifact(self, filename: str) -> Path:
        """Path to write an artifact (PNG, markdown) that is kept next to result.json."""
        if "/" in filename or filename.startswith("."):
            raise ValueError(f"artifact name {filename!r} must be a plain file name")
        if filename not in self.artifacts:
            self.artifacts.append(filename)
        return self.out_dir / filename

    # --- trained artifacts (lab/artifacts.py) ------------------------------------------------
    @property
    def producer(self) -> dict[str, str]:
        """What an artifact stored by this run records as its producer."""
        return {"exercise": self.exercise_id, "profile": self.profile, "run_id": self.run_id}

    def load_artifact(self, kind: ArtifactKind) -> Artifact:
        """The profile's stored artifact of ``kind``; never trains (MissingArtifact names the command)."""
        from lab import artifacts  # noqa: PLC0415 (import cycle: lab imports this module)

        found = artifacts.load(kind, self.profile)
        self.record_artifact(found, "used")
        return found

    def require_artifact(self, kind: ArtifactKind) -> Artifact:
        """The profile's stored artifact of ``kind``, trained here first if it is missing — explicitly:
        the run logs it, adds a finding and records the artifact as "built"."""
        from lab import artifacts  # noqa: PLC0415 (import cycle: lab imports this module)

        found = artifacts.ensure(
            kind, self.profile, self, producer=self.producer, on_built=lambda a: self.record_artifact(a, "built")
        )
        self.record_artifact(found, "used")
        return found

    def build_artifact(self, recipe: Recipe, make) -> Artifact:
        """The stored artifact of ``recipe``, made here by ``make(folder)`` if missing (recorded as
        "built", with a finding); for recipes of the run's own (e.g. changed by --set)."""
        from lab.artifacts import default_store  # noqa: PLC0415 (import cycle: lab imports this module)

        found, built = default_store().build(recipe, make, producer=self.producer)
        self.record_artifact(found, "built" if built else "used")
        return found

    def publish_artifact(self, recipe: Recipe, folder: Path, **meta) -> Artifact:
        """Store ``folder`` (built by this run) as ``recipe``'s artifact, recorded as "published", or
        as "kept" when the store already held that recipe. ``meta``: metrics, flags, build_s."""
        from lab.artifacts import default_store  # noqa: PLC0415 (import cycle: lab imports this module)

        stored, new = default_store().publish(recipe, folder, producer=self.producer, **meta)
        self.record_artifact(stored, "published" if new else "kept")
        return stored

    def record_artifact(self, artifact: Artifact, role: str) -> None:
        """Name a stored artifact in the result (id + recipe hash; see lab.schema for the roles)."""
        if role not in self.ARTIFACT_ROLES:
            raise ValueError(f"artifact role {role!r}: expected one of {self.ARTIFACT_ROLES}")
        entry = {**artifact.describe(), "role": role}
        if any(e["id"] == entry["id"] for e in self.stored_artifacts):  # "built" already implies "used"
            return
        self.stored_artifacts.append(entry)
        if role == "built":
            took = artifact.meta.get("build_s")
            self.finding(
                f"{artifact.id} was not in the artifact store, so this run made it first "
                f"(recipe {artifact.recipe.sha256[:12]}"
                + (f", {took:.0f} s" if took is not None else "")
                + "); later runs reuse it."
            )

    def skip(self, reason: str) -> None:
        raise SkipExercise(reason)

    # --- progress ------------------------------------------------------------------------
    def progress(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a rich progress bar (silent when quiet, e.g. under pytest)."""
        if self.quiet:
            yield from items
            return

        yield from track(items, description=description, total=total, transient=True)

    def log(self, message: str) -> None:
        if not self.quiet:
            Console(stderr=True).print(f"[dim]{self.exercise_id}[/dim] {message}")
