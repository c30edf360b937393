"""Trained artifacts keyed by the recipe that made them: one store for every phase.

An artifact is a folder some computation produced and later runs read: a LoRA adapter, a built
dataset, cached generations, later indexes and checkpoints. Its *recipe* is everything that
determines its content (base model, data hash, steps, learning rate, seed, trainer version...), and
its id is ``<name>/<first 16 hex digits of sha256(recipe)>``, a path relative to the store. A recipe
change therefore yields a new artifact, never a stale one, and results name artifacts by id and
recipe hash, never by a path on the machine that ran them.

What the store guarantees:

- **Loading never trains.** ``load`` returns a stored artifact or raises ``MissingArtifact`` with the
  command that builds it. Only ``build``/``publish`` write, and only ``ensure`` trains on demand —
  called explicitly by an exercise (``RunContext.require_artifact``, which records that it trained)
  or by ``lab artifacts build``.
- **Atomic writes.** A build happens in a staging folder beside its target and is renamed into
  place together with its ``artifact.json`` (recipe, created_at, producer, metrics, flags).
- **One build per recipe at a time**, across processes (a file lock): parallel runs never train the
  same artifact twice; the second waits and then finds it.
- **Flags travel with the artifact.** A producer can mark an artifact (e.g. ``noop``: training left
  the weights where they started); a kind lists the flags its loaders refuse.

Layout::

    <store>/<name>/<hash16>/...        the artifact's files
    <store>/<name>/<hash16>/artifact.json
    <store>/<name>/.<hash16>.lock      held while building

The store lives in ``$LAB_ARTIFACTS``, else ``<lab cache>/artifacts`` (never in git).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from lab.atomic import file_lock, publish_dir, staged
from lab.device import smoke_active
from lab.errors import ConfigError, MissingArtifact, UnusableArtifact
from lab.hashing import json_sha256
from lab.paths import cache_dir
from lab.tiny_models import TINY_VERSION

META_FILE = "artifact.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class Reporter(Protocol):
    """Where a build reports progress: a RunContext, or the console for ``lab artifacts build``."""

    quiet: bool

    def log(self, message: str) -> None: ...


@dataclass(frozen=True)
class Recipe:
    """What determines an artifact's content. ``command`` builds it when it is missing (None: only
    the run that asks for it builds it, e.g. a recipe changed by ``--set``)."""

    name: str
    params: Mapping[str, Any]
    command: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"artifact name {self.name!r}: use lowercase letters, digits, '.', '_' or '-'")

    @property
    def sha256(self) -> str:
        return json_sha256({"name": self.name, "params": dict(self.params)})

    @property
    def id(self) -> str:
        return f"{self.name}/{self.sha256[:16]}"


@dataclass(frozen=True)
class Artifact:
    """A stored artifact: its recipe, its folder and the metadata written when it was stored."""

    recipe: Recipe
    path: Path
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.recipe.id

    @property
    def params(self) -> Mapping[str, Any]:
        return self.recipe.params

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.meta.get("metrics", {})

    @property
    def flags(self) -> Mapping[str, str]:
        return self.meta.get("flags", {})

    def describe(self) -> dict[str, Any]:
        """How results name it: id and recipe hash (never the local path)."""
        return {"id": self.id, "recipe_sha256": self.recipe.sha256}

    def refuse_flags(self, flags: tuple[str, ...]) -> None:
        """Raise UnusableArtifact if the artifact carries one of ``flags``."""
        bad = {f: self.flags[f] for f in flags if f in self.flags}
        if bad:
            reasons = "; ".join(f"{f}: {why}" for f, why in bad.items())
            raise UnusableArtifact(
                f"artifact {self.id} is flagged {', '.join(bad)} ({reasons}); "
                "change its recipe (e.g. steps or learning rate) to train a usable one"
            )


@dataclass(frozen=True)
class ArtifactKind:
    """A kind of artifact exercises need or produce, e.g. "the profile's SFT adapter".

    ``params(profile)`` gives the recipe the profile uses (cheap: no model load), ``build(profile,
    folder, reporter)`` trains exactly that recipe into ``folder`` and may return
    ``{"metrics": {...}, "flags": {...}}``; ``needs`` are built first; loaders refuse artifacts that
    carry one of ``reject_flags``.
    """

    name: str
    params: Callable[[str], Mapping[str, Any]]
    build: Callable[[str, Path, Reporter], Mapping[str, Any] | None]
    needs: tuple[ArtifactKind, ...] = ()
    reject_flags: tuple[str, ...] = ()
    description: str = ""

    def recipe(self, profile: str) -> Recipe:
        return Recipe(self.name, dict(self.params(profile)), f"lab artifacts build {self.name} --profile {profile}")


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ArtifactStore:
    """Artifacts under one root folder (see the module docstring for the rules and layout)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, recipe: Recipe) -> Path:
        return self.root / recipe.name / recipe.sha256[:16]

    def _lock(self, recipe: Recipe) -> Path:
        return self.root / recipe.name / f".{recipe.sha256[:16]}.lock"

    def find(self, recipe: Recipe) -> Artifact | None:
        """The stored artifact of this recipe, or None. Never builds anything."""
        folder = self.path(recipe)
        meta_path = folder / META_FILE
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("recipe_sha256") != recipe.sha256:
            raise ValueError(
                f"{meta_path}: recipe_sha256 {meta.get('recipe_sha256')!r} does not match "
                f"{recipe.sha256} (a corrupted store entry: delete the folder)"
            )
        return Artifact(recipe, folder, meta)

    def load(self, recipe: Recipe, reject_flags: tuple[str, ...] = ()) -> Artifact:
        """The stored artifact, or MissingArtifact naming the command that builds it. Never trains."""
        found = self.find(recipe)
        if found is None:
            how = (
                f"build it with `{recipe.command}`"
                if recipe.command
                else "it is built by the run that uses this recipe"
            )
            raise MissingArtifact(f"artifact {recipe.id} is not in the artifact store: {how}")
        found.refuse_flags(reject_flags)
        return found

    def staging(self, recipe: Recipe) -> contextlib.AbstractContextManager[Path]:
        """An empty folder to build this recipe into, beside its final place; hand it to ``publish``
        inside the ``with`` block. Removed on the way out unless it was published (a failed build
        leaves nothing behind)."""
        return staged(self.path(recipe))

    def publish(
        self,
        recipe: Recipe,
        folder: Path,
        *,
        producer: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        flags: Mapping[str, str] | None = None,
        build_s: float | None = None,
    ) -> tuple[Artifact, bool]:
        """Store a folder built in ``staging(recipe)``; returns (artifact, stored). If the recipe is
        already stored the existing artifact is kept (same recipe, same content) and ``folder`` removed."""
        with file_lock(self._lock(recipe)):
            existing = self.find(recipe)
            if existing is not None:
                shutil.rmtree(folder, ignore_errors=True)
                return existing, False
            return self._commit(recipe, folder, producer, metrics, flags, build_s), True

    def build(
        self,
        recipe: Recipe,
        make: Callable[[Path], Mapping[str, Any] | None],
        *,
        producer: Mapping[str, Any] | None = None,
    ) -> tuple[Artifact, bool]:
        """The stored artifact of ``recipe``, running ``make(folder)`` first if it is missing.

        Returns (artifact, built). Holds the recipe's lock while building, so a concurrent process
        asking for the same recipe waits and then gets this build instead of training again.
        """
        with file_lock(self._lock(recipe)):
            existing = self.find(recipe)
            if existing is not None:
                return existing, False
            with self.staging(recipe) as folder:
                started = time.perf_counter()
                info = dict(make(folder) or {})
                unknown = set(info) - {"metrics", "flags"}
                if unknown:
                    raise ValueError(f"{recipe.id}: a build returns metrics/flags only, got {sorted(unknown)}")
                return self._commit(
                    recipe, folder, producer, info.get("metrics"), info.get("flags"), time.perf_counter() - started
                ), True

    def _commit(self, recipe: Recipe, folder: Path, producer, metrics, flags, build_s) -> Artifact:
        """Write artifact.json into the staging folder and rename it into place (lock held)."""
        meta = {
            "id": recipe.id,
            "name": recipe.name,
            "recipe_sha256": recipe.sha256,
            "recipe": dict(recipe.params),
            "created_at": _utc_now(),
            "producer": dict(producer or {}),
            "build_s": None if build_s is None else round(build_s, 1),
            "metrics": dict(metrics or {}),
            "flags": dict(flags or {}),
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
        if not publish_dir(folder, self.path(recipe)):
            raise RuntimeError(f"{recipe.id}: appeared in the store while its lock was held")
        return Artifact(recipe, self.path(recipe), meta)

    def list(self) -> list[Artifact]:
        """Every stored artifact, by name then creation time."""
        found = []
        for meta_path in sorted(self.root.glob(f"*/*/{META_FILE}")):
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            found.append(Artifact(Recipe(meta["name"], meta["recipe"]), meta_path.parent, meta))
        return sorted(found, key=lambda a: (a.recipe.name, a.meta.get("created_at", "")))


def default_store() -> ArtifactStore:
    """The store this process uses: ``$LAB_ARTIFACTS`` or ``<lab cache>/artifacts``.

    A smoke run (``lab.device.smoke_active``) gets a store of its own beside it (``<root>-smoke/tiny-v<N>``):
    its adapters are trained on tiny stand-in models under the a100 recipes' names, and must never be
    found by a real a100 run, nor outlive the stand-ins they were trained on.
    """
    env = os.environ.get("LAB_ARTIFACTS")
    root = Path(env) if env else cache_dir() / "artifacts"
    if smoke_active():
        root = root.with_name(root.name + "-smoke") / f"tiny-v{TINY_VERSION}"
    return ArtifactStore(root)


def load(kind: ArtifactKind, profile: str, store: ArtifactStore | None = None) -> Artifact:
    """The profile's artifact of ``kind`` (MissingArtifact with the build command if absent). Never trains."""
    return (store or default_store()).load(kind.recipe(profile), kind.reject_flags)


def ensure(
    kind: ArtifactKind,
    profile: str,
    reporter: Reporter,
    *,
    store: ArtifactStore | None = None,
    producer: Mapping[str, Any] | None = None,
    on_built: Callable[[Artifact], None] | None = None,
) -> Artifact:
    """The profile's artifact of ``kind``, trained first (its needs too) if it is missing.

    Explicit by design: the caller asked to train, ``reporter`` says so, ``on_built`` is told about
    every artifact trained on the way (so a result can record it).
    """
    store = store or default_store()
    for need in kind.needs:
        ensure(need, profile, reporter, store=store, producer=producer, on_built=on_built)
    recipe = kind.recipe(profile)
    found = store.find(recipe)
    if found is None:
        reporter.log(f"{recipe.id} is not in the artifact store: training it now (recipe {recipe.sha256[:12]})")
        found, built = store.build(recipe, lambda folder: kind.build(profile, folder, reporter), producer=producer)
        if built and on_built is not None:
            on_built(found)
    found.refuse_flags(kind.reject_flags)
    return found


def kind_named(name: str, kinds) -> ArtifactKind:
    """The kind called ``name`` among ``kinds`` (ConfigError listing the known names otherwise)."""
    for kind in kinds:
        if kind.name == name:
            return kind
    known = ", ".join(sorted({k.name for k in kinds})) or "none"
    raise ConfigError(f"unknown artifact {name!r}; known: {known}")


class ConsoleReporter:
    """A Reporter that prints to stderr (``lab artifacts build``)."""

    quiet = False

    def log(self, message: str) -> None:

        Console(stderr=True).print(f"[dim]artifacts[/dim] {message}")
