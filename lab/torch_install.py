"""Which torch build `make setup` installs: one this machine can run, chosen before the venv has packages.

PyPI's Linux torch 2.13.0 is the CUDA 13.0 build: it needs an NVIDIA driver >= 580, so on an A100
with a CUDA 12.x driver ``torch.cuda.is_available()`` is False, and on a laptop it pulls gigabytes
of nvidia-* wheels for nothing. So the build is chosen here, from the machine:

- an NVIDIA GPU (``nvidia-smi`` answers): the newest CUDA variant PyTorch publishes that the
  installed driver supports (``DRIVER_TABLE``), from PyTorch's index for that variant;
- no NVIDIA GPU: the CPU build. If pip is already configured to serve a CPU torch (a find-links
  folder or a local index holding ``torch-<version>+cpu``, as on the machines this lab is built and
  tested on) that one is pinned and nothing is downloaded; else PyTorch's CPU index;
- macOS: PyPI's torch (CPU/MPS; PyTorch publishes no other macOS build).

``TORCH_VARIANT`` (auto | cpu | cu126 | cu128 | cu130) and ``TORCH_INDEX_URL`` override the choice
and the index. The requirement is pinned with its local label (``torch==2.13.0+cu128``), so pip can
only pick that build and fails rather than fall back to another one.

This file runs as a script with the system or bare-venv python (``python3 lab/torch_install.py
--print-pip-args``), so it imports the standard library only and nothing else from ``lab``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

PYTORCH_INDEX = "https://download.pytorch.org/whl"
DEFAULT_VERSION = "2.13.0"


@dataclass(frozen=True)
class CudaVariant:
    name: str  # PyTorch's wheel label and index folder, e.g. "cu128"
    cuda: str  # the CUDA toolkit it bundles
    toolkit_driver: tuple[int, ...]  # the driver that toolkit release ships with (full support)
    compat_driver: tuple[int, ...]  # the floor under CUDA minor-version compatibility (same major)


# The CUDA builds PyTorch publishes for torch 2.13 on Linux, newest first, with NVIDIA's minimum Linux
# driver versions. Sources: CUDA Toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions"
# (12.6 GA >= 560.28.03, 12.8 GA >= 570.26, 13.0 GA >= 580.65.06) and NVIDIA's "Minor Version
# Compatibility" page (docs.nvidia.com/deploy/cuda-compatibility: CUDA 12.x runs on drivers >= 525,
# 13.x on >= 580; for 12.x the release notes give 525.60.13). PyTorch's wheels bundle their CUDA
# runtime and rely on that compatibility, and they carry SASS for the A100/H100 (sm_80/sm_90).
DRIVER_TABLE = (
    CudaVariant("cu130", "13.0", (580, 65, 6), (580, 65, 6)),
    CudaVariant("cu128", "12.8", (570, 26), (525, 60, 13)),
    CudaVariant("cu126", "12.6", (560, 28, 3), (525, 60, 13)),
)
VARIANTS = ("auto", "cpu", *(v.name for v in DRIVER_TABLE))


class InstallError(Exception):
    """No torch build fits (or a setting is wrong); the message says what to do."""


def parse_version(text: str) -> tuple[int, ...]:
    """ "535.104.05" -> (535, 104, 5)."""
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:
        raise InstallError(f"nvidia-smi reported driver version {text!r}, which is not N.N[.N]") from None


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(f"{part:02d}" if i == 2 else str(part) for i, part in enumerate(version))


def variant_for_driver(driver: tuple[int, ...]) -> CudaVariant:
    """The newest published variant the driver fully supports, else the oldest 12.x one it runs under
    minor-version compatibility; InstallError when the driver is older than every floor."""
    for variant in DRIVER_TABLE:
        if driver >= variant.toolkit_driver:
            return variant
    for variant in reversed(DRIVER_TABLE):
        if driver >= variant.compat_driver:
            return variant
    floor = min(v.compat_driver for v in DRIVER_TABLE)
    raise InstallError(
        f"NVIDIA driver {dotted(driver)} is older than every CUDA build of torch "
        f"(the oldest, {DRIVER_TABLE[-1].name}, needs >= {dotted(floor)}): upgrade the driver, or install "
        "the CPU build with `make setup TORCH_VARIANT=cpu`"
    )


def min_driver(cuda: str) -> tuple[int, ...] | None:
    """The oldest driver that runs torch built for CUDA ``cuda`` ("12.8"): the floor of its major
    release under minor-version compatibility (None: a CUDA release this table does not know)."""
    floors = [v.compat_driver for v in DRIVER_TABLE if v.cuda.split(".")[0] == cuda.split(".")[0]]
    return min(floors) if floors else None


def query_nvidia_smi() -> str | None:
    """nvidia-smi's driver version line(s), or None when there is no nvidia-smi (no NVIDIA GPU here)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(
            f"nvidia-smi is installed but did not answer ({exc}); fix the driver, "
            "or choose the build with TORCH_VARIANT=cpu|cu126|cu128|cu130"
        ) from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise InstallError(
            f"nvidia-smi is installed but failed ({why[0] if why else f'exit {done.returncode}'}): "
            "the NVIDIA driver is not usable; fix it, or choose the build with "
            "TORCH_VARIANT=cpu|cu126|cu128|cu130"
        )
    return done.stdout


def driver_of(smi_output: str) -> tuple[tuple[int, ...], str]:
    """(driver version, GPU names) from ``nvidia-smi --query-gpu=driver_version,name --format=csv,noheader``."""
    rows = [line.split(",", 1) for line in smi_output.strip().splitlines() if line.strip()]
    if not rows:
        raise InstallError("nvidia-smi listed no GPU; choose the build with TORCH_VARIANT=cpu|cu126|cu128|cu130")
    driver = parse_version(rows[0][0])
    return driver, ", ".join(r[1].strip() for r in rows if len(r) > 1)


def query_pip_config() -> str:
    """``pip config list`` of the pip this python runs (its config files and PIP_* variables)."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def pip_sources(config_list: str) -> list[str]:
    """find-links and index URLs from ``pip config list`` lines like ``global.find-links='/opt/wheels'``."""
    found = []
    for line in config_list.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.rsplit(".", 1)[-1] in ("find-links", "index-url", "extra-index-url"):
            found += value.strip().strip("'\"").split()
    return found


def _local_dir(source: str) -> Path | None:
    if source.startswith("file://"):
        return Path(unquote(urlparse(source).path))
    return Path(source) if "://" not in source else None


def serves_cpu_torch(source: str, version: str, listdir: Callable[[Path], list[str]]) -> bool:
    """Does this find-links folder / index hold ``torch-<version>+cpu``? Remote sources other than
    PyTorch's CPU index are not asked (no network here)."""
    if source.rstrip("/") == f"{PYTORCH_INDEX}/cpu":
        return True
    folder = _local_dir(source)
    if folder is None:
        return False
    wanted = f"torch-{version}+cpu-"
    names = listdir(folder) + listdir(folder / "torch")  # a find-links folder, or a simple index's project page
    return any(unquote(name).startswith(wanted) for name in names)


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def pip_args(
    version: str = DEFAULT_VERSION,
    variant: str = "auto",
    index_url: str = "",
    *,
    platform: str = sys.platform,
    smi: Callable[[], str | None] = query_nvidia_smi,
    pip_config: Callable[[], str] = query_pip_config,
    listdir: Callable[[Path], list[str]] = _listdir,
) -> tuple[list[str], str]:
    """(arguments for ``pip install``, why this build) for this machine.

    ``smi``, ``pip_config`` and ``listdir`` read the machine; tests pass their own.
    """
    if variant not in VARIANTS:
        raise InstallError(f"TORCH_VARIANT={variant!r}: choose one of {', '.join(VARIANTS)}")
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        raise InstallError(f"TORCH_VERSION={version!r}: expected a release number such as {DEFAULT_VERSION}")
    if platform == "darwin":
        if variant not in ("auto", "cpu"):
            raise InstallError(f"TORCH_VARIANT={variant}: PyTorch publishes no CUDA build for macOS")
        return [
            f"torch=={version}",
            *(["--index-url", index_url] if index_url else []),
        ], "macOS: PyPI's torch (CPU and Apple GPU)"
    why = f"TORCH_VARIANT={variant}"
    if variant == "auto":
        smi_output = smi()
        if smi_output is None:
            variant, why = "cpu", "no NVIDIA GPU (no nvidia-smi)"
        else:
            driver, names = driver_of(smi_output)
            chosen = variant_for_driver(driver)
            variant = chosen.name
            why = (
                f"{names or 'NVIDIA GPU'}, driver {dotted(driver)}: {chosen.name} (CUDA {chosen.cuda}) is the "
                f"newest build this driver runs"
            )
    spec = f"torch=={version}+{variant}"
    if index_url:
        return [spec, "--extra-index-url", index_url], f"{why}; index TORCH_INDEX_URL={index_url}"
    if variant == "cpu":
        local = [s for s in pip_sources(pip_config()) if serves_cpu_torch(s, version, listdir)]
        if local:
            return [spec], f"{why}; pip is configured to serve it ({local[0]})"
    # PyTorch's index for the build; the extra (not only) index: torch's dependencies still come from PyPI
    return [spec, "--extra-index-url", f"{PYTORCH_INDEX}/{variant}"], why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--version", default=os.environ.get("TORCH_VERSION") or DEFAULT_VERSION)
    parser.add_argument("--variant", default=os.environ.get("TORCH_VARIANT") or "auto", help=" | ".join(VARIANTS))
    parser.add_argument("--index-url", default=os.environ.get("TORCH_INDEX_URL") or "")
    parser.add_argument("--print-pip-args", action="store_true", help="print the `pip install` arguments only")
    args = parser.parse_args(argv)
    try:
        install_args, why = pip_args(args.version, args.variant or "auto", args.index_url)
    except InstallError as exc:
        print(f"error: torch install: {exc}", file=sys.stderr)
        return 2
    print(f"torch build: {install_args[0]} ({why})", file=sys.stderr)
    print(" ".join(install_args) if args.print_pip_args else f"pip install {' '.join(install_args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
