"""RunContext: what an exercise's ``run(config, ctx)`` uses to report what it measured."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

from lab.errors import SkipExercise
from lab.schema import Metric, Table, check_method

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """numpy / torch scalars -> python numbers, so results stay JSON."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunContext:
    """Collects metrics, tables, findings, models, data and artifacts during one run."""

    def __init__(self, exercise_id: str, profile: str, out_dir: Path, quiet: bool = False):
        self.exercise_id = exercise_id
        self.profile = profile
        self.out_dir = out_dir
        self.quiet = quiet
        self.metrics: dict[str, Metric] = {}
        self.tables: dict[str, Table] = {}
        self.findings: list[str] = []
        self.failure_modes: list[str] = []
        self.models: list[dict[str, Any]] = []
        self.data: list[dict[str, Any]] = []
        self.artifacts: list[str] = []
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

    def skip(self, reason: str) -> None:
        raise SkipExercise(reason)

    # --- progress ------------------------------------------------------------------------
    def progress(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a rich progress bar (silent when quiet, e.g. under pytest)."""
        if self.quiet:
            yield from items
            return
        from rich.progress import track

        yield from track(items, description=description, total=total, transient=True)

    def log(self, message: str) -> None:
        if not self.quiet:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]{self.exercise_id}[/dim] {message}")
