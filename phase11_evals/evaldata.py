"""The Phase 11 data as typed, validated objects: eval set, rubrics, calibration set, contamination pairs.

Everything an eval depends on lives in ``phase11_evals/data/`` as YAML and is loaded here with
strict checks: a malformed file fails with its name, the item id and the field, never silently.
Each loaded object carries a sha256 over its canonical JSON so results can record exactly which
instrument produced them (lm-evaluation-harness habit: hash inputs rather than trust names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.hashing import json_sha256
from phase10_alignment.rubric_judge import Dimension, Rubric
from phase11_evals.editor_gate import DIMENSIONS, FLAG

DATA_DIR = Path(__file__).parent / "data"
RUBRIC_VERSIONS = ("1.0", "1.1")


class EvalDataError(ValueError):
    """A data file is malformed; the message names the file, the item and the field."""


def canonical_sha256(obj: Any) -> str:
    return json_sha256(obj, ascii_only=False)


def _load_yaml(path: Path) -> dict[str, Any]:

    if not path.exists():
        raise EvalDataError(f"{path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise EvalDataError(f"{path.name}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise EvalDataError(f"{path.name}: expected a mapping at the top level")
    return doc


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise EvalDataError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise EvalDataError(f"{where}: field '{key}' must be a non-empty {kind.__name__}, got {value!r}")
    return value


# --- eval set -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    category: str
    prompt: str
    key_facts: str


@dataclass(frozen=True)
class EvalSet:
    name: str
    version: str
    categories: tuple[str, ...]
    prompts: tuple[EvalPrompt, ...]
    sha256: str

    def by_id(self, prompt_id: str) -> EvalPrompt:
        for p in self.prompts:
            if p.id == prompt_id:
                return p
        raise KeyError(f"eval set {self.name} v{self.version} has no prompt {prompt_id!r}")

    def in_category(self, category: str) -> list[EvalPrompt]:
        return [p for p in self.prompts if p.category == category]

    def subset(self, per_category: int | None) -> list[EvalPrompt]:
        """The first ``per_category`` prompts of each category in file order (all when None)."""
        if per_category is None:
            return list(self.prompts)
        return [p for c in self.categories for p in self.in_category(c)[:per_category]]


def load_eval_set(path: Path = DATA_DIR / "eval_set.yaml") -> EvalSet:
    doc = _load_yaml(path)
    name = _field(doc, "name", str, path.name)
    version = _field(doc, "version", str, path.name)
    categories = tuple(_field(doc, "categories", list, path.name))
    items = _field(doc, "prompts", list, path.name)
    prompts, seen = [], set()
    for i, raw in enumerate(items):
        where = f"{path.name}: prompts[{i}]" + (f" (id {raw.get('id')})" if isinstance(raw, dict) else "")
        p = EvalPrompt(*(_field(raw, k, str, where) for k in ("id", "category", "prompt", "key_facts")))
        if p.id in seen:
            raise EvalDataError(f"{where}: duplicate id {p.id!r}")
        if p.category not in categories:
            raise EvalDataError(f"{where}: field 'category' = {p.category!r} is not one of {list(categories)}")
        seen.add(p.id)
        prompts.append(p)
    empty = [c for c in categories if not any(p.category == c for p in prompts)]
    if empty:
        raise EvalDataError(f"{path.name}: categories with no prompts: {empty}")
    content = {
        "name": name,
        "version": version,
        "categories": list(categories),
        "prompts": [p.__dict__ for p in prompts],
    }
    return EvalSet(name, version, categories, tuple(prompts), canonical_sha256(content))


# --- rubrics ------------------------------------------------------------------------------------------


def load_rubric(version: str, data_dir: Path = DATA_DIR) -> Rubric:
    """Rubric v1.0 / v1.1 from ``data/rubrics/v<version>.yaml`` as a Phase 10 ``Rubric``."""
    path = data_dir / "rubrics" / f"v{version}.yaml"
    doc = _load_yaml(path)
    if str(doc.get("version")) != version:
        raise EvalDataError(f"{path.name}: field 'version' = {doc.get('version')!r}, expected {version!r}")
    dims = []
    for i, raw in enumerate(_field(doc, "dimensions", list, path.name)):
        where = f"{path.name}: dimensions[{i}]"
        anchors = _field(raw, "anchors", dict, where)
        if sorted(anchors) != [1, 2, 3, 4, 5]:
            raise EvalDataError(f"{where}: field 'anchors' must have exactly the keys 1..5, got {sorted(anchors)}")
        dims.append(
            Dimension(
                name=_field(raw, "name", str, where),
                description=_field(raw, "description", str, where),
                anchors={int(k): str(v) for k, v in anchors.items()},
            )
        )
    names = tuple(d.name for d in dims)
    if names != DIMENSIONS:
        raise EvalDataError(f"{path.name}: dimensions must be {list(DIMENSIONS)} in that order, got {list(names)}")
    flags = tuple(doc.get("flags") or ())
    if flags != (FLAG,):
        raise EvalDataError(f"{path.name}: field 'flags' must be [{FLAG}], got {list(flags)}")
    return Rubric(
        name=_field(doc, "name", str, path.name),
        version=version,
        dimensions=tuple(dims),
        flags=flags,
        instructions=str(doc.get("instructions") or "").strip(),
    )


# --- calibration set ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationItem:
    id: str
    prompt_id: str
    response: str
    scores: dict[str, int]  # dimension -> reference score 1..5
    flag: bool  # reference confident_hallucination
    rationales: dict[str, str]  # dimension or flag -> one-line reason for the reference


@dataclass(frozen=True)
class CalibrationSet:
    name: str
    version: str
    labeller: str
    items: tuple[CalibrationItem, ...]
    sha256: str


def load_calibration(eval_set: EvalSet, path: Path = DATA_DIR / "calibration.yaml") -> CalibrationSet:
    doc = _load_yaml(path)
    items, seen = [], set()
    for i, raw in enumerate(_field(doc, "items", list, path.name)):
        where = f"{path.name}: items[{i}]" + (f" (id {raw.get('id')})" if isinstance(raw, dict) else "")
        item_id = _field(raw, "id", str, where)
        if item_id in seen:
            raise EvalDataError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        prompt_id = _field(raw, "prompt_id", str, where)
        try:
            eval_set.by_id(prompt_id)
        except KeyError:
            raise EvalDataError(f"{where}: field 'prompt_id' = {prompt_id!r} is not in the eval set") from None
        ref = _field(raw, "reference", dict, where)
        scores, rationales = {}, {}
        for dim in DIMENSIONS:
            pair = _field(ref, dim, list, f"{where} reference")
            if (
                len(pair) != 2
                or isinstance(pair[0], bool)
                or pair[0] not in (1, 2, 3, 4, 5)
                or not str(pair[1]).strip()
            ):
                raise EvalDataError(f"{where}: field 'reference.{dim}' must be [score 1..5, rationale], got {pair!r}")
            scores[dim], rationales[dim] = int(pair[0]), str(pair[1])
        pair = _field(ref, FLAG, list, f"{where} reference")
        if len(pair) != 2 or not isinstance(pair[0], bool) or not str(pair[1]).strip():
            raise EvalDataError(f"{where}: field 'reference.{FLAG}' must be [true/false, rationale], got {pair!r}")
        rationales[FLAG] = str(pair[1])
        items.append(
            CalibrationItem(item_id, prompt_id, _field(raw, "response", str, where), scores, pair[0], rationales)
        )
    content = {k: doc.get(k) for k in ("name", "version", "labeller", "items")}
    return CalibrationSet(
        _field(doc, "name", str, path.name),
        _field(doc, "version", str, path.name),
        _field(doc, "labeller", str, path.name),
        tuple(items),
        canonical_sha256(content),
    )


# --- contamination pairs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicReference:
    """A published answer text a model could have memorized (never one written for this repo)."""

    text: str
    source: str  # where it is published (URL or dataset + row)
    licence: str


@dataclass(frozen=True)
class ContaminationPair:
    original: EvalPrompt
    rephrased: str
    public_reference: PublicReference | None = None  # the verbatim check runs only against one


def _public_reference(raw: Any, where: str) -> PublicReference | None:
    if not isinstance(raw, dict) or raw.get("public_reference") is None:
        return None
    ref = _field(raw, "public_reference", dict, where)
    return PublicReference(*(_field(ref, k, str, f"{where} public_reference") for k in ("text", "source", "licence")))


def load_contamination_pairs(
    eval_set: EvalSet, path: Path = DATA_DIR / "contamination_pairs.yaml"
) -> tuple[list[ContaminationPair], str]:
    """The pairs and the sha256 of the file's canonical content."""
    doc = _load_yaml(path)
    pairs = []
    for i, raw in enumerate(_field(doc, "pairs", list, path.name)):
        where = f"{path.name}: pairs[{i}]"
        original_id = _field(raw, "original_id", str, where)
        try:
            original = eval_set.by_id(original_id)
        except KeyError:
            raise EvalDataError(f"{where}: field 'original_id' = {original_id!r} is not in the eval set") from None
        rephrased = _field(raw, "rephrased", str, where)
        if rephrased.strip().lower() == original.prompt.strip().lower():
            raise EvalDataError(f"{where}: field 'rephrased' is identical to the original prompt")
        pairs.append(ContaminationPair(original, rephrased, _public_reference(raw, where)))
    return pairs, canonical_sha256({k: doc.get(k) for k in ("name", "version", "pairs")})
