"""`lab doctor`'s a100 checks: what must hold before a rented GPU's hours are spent.

Each check is a pure function of the values it reads (nvidia-smi's answer, torch's CUDA version, free
bytes, an access check, an HTTP probe), so the tests pass their own; ``a100_checks()`` reads the real
ones. Each returns a ``Check``: (name, ok / missing / optional, detail). On a machine without a usable
GPU (``required=False``) what only the a100 profile needs is reported as optional, never missing.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lab import models, registry, torch_install
from lab.llm import DEFAULT_SPEC
from lab.models import hub_access_problem

Check = tuple[str, bool | None, str]

# Download size of the a100 profiles' hub models: parameter count x bytes per parameter of the weights
# the repo ships (safetensors; bf16 = 2 bytes, all-mpnet's fp32 = 4). Counts from the model cards and the
# meta-device count of the published configs (phase08_architecture/sizing.py computes the same for the README's
# sizing table; tests/test_phase08_sizing.py holds them equal). Tokenizers and configs add < 0.1 GB.
MODEL_DOWNLOAD_BYTES = {
    "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248 * 2,  # 16.1 GB
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 46_702_792_704 * 2,  # 93.4 GB
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400 * 2,  # 2.5 GB
    "sentence-transformers/all-mpnet-base-v2": 109_486_464 * 4,  # 0.4 GB
}
GATED = ("meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1")
SERVED_PREFIXES = ("openai:", "anthropic:")  # models served elsewhere: nothing to download here


def driver_check(smi_output: str | None, torch_cuda: str | None, smi_error: str = "") -> Check:
    """Does the NVIDIA driver run the CUDA build torch was installed as (torch.version.cuda)?
    ``smi_output``: nvidia-smi's CSV answer, None without nvidia-smi; ``smi_error``: why it failed."""
    name = "NVIDIA driver / torch CUDA"
    if smi_error:
        return name, False, smi_error
    if smi_output is None:
        if torch_cuda:
            return name, False, f"torch is the CUDA {torch_cuda} build but there is no nvidia-smi (no NVIDIA driver)"
        return name, None, "no NVIDIA GPU (no nvidia-smi); torch is the CPU build: the cpu profile runs"
    try:
        driver, gpus = torch_install.driver_of(smi_output)
    except torch_install.InstallError as exc:
        return name, False, str(exc)
    shown = torch_install.dotted(driver)
    if not torch_cuda:
        return (
            name,
            False,
            (
                f"{gpus}, driver {shown}, but torch is the CPU build: "
                "reinstall with `make clean-venv setup` (it picks the CUDA build)"
            ),
        )
    need = torch_install.min_driver(torch_cuda)
    if need is None:
        return name, None, f"{gpus}, driver {shown}; torch CUDA {torch_cuda}: no driver floor known for it"
    ok = driver >= need
    floor = torch_install.dotted(need)
    return (
        name,
        ok,
        (
            f"{gpus}, driver {shown}; torch built for CUDA {torch_cuda} needs >= {floor}"
            + ("" if ok else ": upgrade the driver, or `make clean-venv setup` to get a build it runs")
        ),
    )


def bitsandbytes_check(backend: str | None, native_loaded: bool, error: str = "") -> Check:
    """bitsandbytes' backend (QLoRA / NF4 needs CUDA on the a100 profile) and whether its library loaded."""
    if backend is None:
        return "bitsandbytes backend", False, f"not importable: {error or 'not installed'}"
    if backend.upper() == "CUDA":
        return (
            "bitsandbytes backend",
            native_loaded,
            "cuda" + ("" if native_loaded else f": its CUDA library did not load ({error})"),
        )
    return "bitsandbytes backend", None, f"{backend.lower()}: NF4 runs on CPU (slow); the a100 profile needs cuda"


def a100_model_ids(profile_values: Iterable) -> list[str]:
    """Hub ids among the a100 profiles' config values (``local:<id>`` included; served specs are not)."""
    found = []
    for value in profile_values:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, str) or v.startswith(SERVED_PREFIXES):
                continue
            v = v.removeprefix("local:")
            if v.count("/") == 1 and " " not in v and not v.startswith((".", "/", "~")) and v not in found:
                found.append(v)
    return found


def disk_check(
    model_ids: list[str], cached: Callable[[str], bool], free_bytes: int, where: str, required: bool = True
) -> Check:
    """Free disk where the HF cache lives vs what the a100 models not yet fully cached will download."""
    missing = [m for m in model_ids if not cached(m)]
    unknown = [m for m in missing if m not in MODEL_DOWNLOAD_BYTES]
    need = sum(MODEL_DOWNLOAD_BYTES.get(m, 0) for m in missing)
    detail = (
        f"{free_bytes / 1e9:.0f} GB free in {where}; the a100 models still to download need "
        f"{need / 1e9:.1f} GB ({len(missing)} of {len(model_ids)} not fully cached)"
    )
    if unknown:
        detail += f"; size unknown: {', '.join(unknown)}"
    enough = free_bytes >= need
    return (
        "disk for a100 models",
        enough or (False if required else None),
        detail + ("" if enough else ": free space first"),
    )


def gated_checks(token: str | None, access: Callable[[str], None]) -> Iterator[Check]:
    """Can HF_TOKEN read each gated repo? ``access(repo)`` raises as huggingface_hub.auth_check does.
    Without a token nothing is asked (that is reported, not failed)."""

    for repo in GATED:
        name = f"access {repo}"
        if not token:
            yield name, None, "HF_TOKEN not set: the a100 profile cannot download this gated model"
            continue
        try:
            access(repo)
        except Exception as exc:
            yield name, False, hub_access_problem(repo, exc) or f"{type(exc).__name__}: {exc}"
        else:
            yield name, True, "HF_TOKEN can read it"


def endpoint_checks(
    a100_specs: Iterable[str], env_spec: str | None, probe: Callable[[str], str | None], required: bool = True
) -> Iterator[Check]:
    """The LLM endpoints Phases 13-16 will call: the a100 configs' ``llm`` (a served model), and
    --llm / $LAB_LLM (else the embedded model) for the exercises without one. ``probe(url)`` returns
    None when a server answers there, else why not."""

    for spec in dict.fromkeys(a100_specs):
        provider, _, rest = spec.partition(":")
        url = rest.partition("@")[2]
        if provider == "openai" and url:
            why = probe(url)
            yield (
                f"endpoint {spec}",
                True if why is None else (False if required else None),
                "answers (phase13 a100 configs)"
                if why is None
                else f"no server at {url} ({why}): start the model server before the phase 13 a100 runs",
            )
        else:
            yield f"endpoint {spec}", None, "used by the a100 configs"
    chosen = env_spec or DEFAULT_SPEC
    source = "$LAB_LLM" if env_spec else "the default (no --llm / LAB_LLM)"
    yield "LLM for phases 13-16", None, f"{chosen}: {source}, for exercises whose config names no llm"


def http_probe(base_url: str, timeout_s: float = 3.0) -> str | None:
    """None if an OpenAI-compatible server answers GET <base_url>/models, else why not."""

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:  # it answered: a server is there (maybe wanting a key)
        return None if exc.code in (401, 403) else f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def _driver(torch_cuda: str | None) -> Check:
    try:
        return driver_check(torch_install.query_nvidia_smi(), torch_cuda)
    except torch_install.InstallError as exc:
        return driver_check(None, torch_cuda, smi_error=str(exc))


def _bitsandbytes() -> Check:
    try:
        from bitsandbytes import cextension  # noqa: PLC0415 (heavy: bitsandbytes loads on first use)
    except Exception as exc:  # an import that fails in any way is the finding
        return bitsandbytes_check(None, False, f"{type(exc).__name__}: {exc}")
    loaded = not isinstance(cextension.lib, cextension.ErrorHandlerMockBNBNativeLibrary)
    return bitsandbytes_check(cextension.BNB_BACKEND, loaded)


def _a100_profiles() -> list[tuple[str, dict]]:

    return [
        (ex.id, dict(ex.profiles["a100"])) for p in registry.phases() for ex in p.exercises if "a100" in ex.profiles
    ]


def _free(path: Path) -> tuple[int, str]:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free, str(path)


def a100_checks(torch_cuda: str | None, gpu: bool) -> Iterator[Check]:
    """The checks above on this machine's real values (``gpu``: torch sees a CUDA device)."""
    from huggingface_hub import auth_check, constants  # noqa: PLC0415 (heavy: huggingface_hub loads on first use)

    yield _driver(torch_cuda)
    yield _bitsandbytes()
    profiles = _a100_profiles()
    ids = a100_model_ids(v for _, cfg in profiles for v in cfg.values())
    free, where = _free(Path(constants.HF_HUB_CACHE))
    yield disk_check(ids, models.fully_cached, free, where, required=gpu)
    token = os.environ.get("HF_TOKEN")
    yield from gated_checks(token, lambda repo: auth_check(repo, token=token))
    specs = [
        cfg["llm"]
        for ex_id, cfg in profiles
        if isinstance(cfg.get("llm"), str) and ex_id.split(".")[0] in ("phase13", "phase14", "phase15", "phase16")
    ]
    yield from endpoint_checks(specs, os.environ.get("LAB_LLM") or None, http_probe, required=gpu)
