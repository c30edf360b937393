"""`make setup`'s torch choice (lab/torch_install.py): the pip arguments for each kind of machine, with
nvidia-smi's answer, pip's config and the wheel folders injected (no real tool is run)."""

import subprocess
import sys
from pathlib import Path

import pytest

from lab import torch_install as ti
from lab.torch_install import InstallError, pip_args

ROOT = Path(__file__).resolve().parents[1]
CPU_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
PIP_WITH_WHEELS = (
    ":env:.find-links='/opt/wheels'\nglobal.find-links='/opt/wheels'\n"
    "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'\n"
)


def smi(driver: str, name: str = "NVIDIA A100-SXM4-80GB"):
    return lambda: f"{driver}, {name}\n"


def no_gpu():
    return None


def folders(listing: dict[str, list[str]]):
    return lambda folder: listing.get(str(folder), [])


def args(**kw):
    kw.setdefault("platform", "linux")
    kw.setdefault("pip_config", lambda: "")
    kw.setdefault("listdir", folders({}))
    return pip_args(**kw)[0]


def test_no_gpu_and_pip_serving_a_cpu_wheel_pins_it_with_no_extra_index():
    assert args(
        smi=no_gpu,
        pip_config=lambda: PIP_WITH_WHEELS,
        listdir=folders({"/opt/wheels": [CPU_WHEEL, "other-1.0-py3-none-any.whl"]}),
    ) == ["torch==2.13.0+cpu"]


def test_a_local_simple_index_holding_the_cpu_wheel_counts_too():
    config = "global.index-url='file:///srv/simple'\n"
    assert args(
        smi=no_gpu, pip_config=lambda: config, listdir=folders({"/srv/simple/torch": [CPU_WHEEL.replace("+", "%2B")]})
    ) == ["torch==2.13.0+cpu"]


def test_no_gpu_and_plain_pip_takes_pytorchs_cpu_index():
    assert args(smi=no_gpu, pip_config=lambda: "global.index-url='https://pypi.org/simple'\n") == [
        "torch==2.13.0+cpu",
        "--extra-index-url",
        "https://download.pytorch.org/whl/cpu",
    ]


def test_a_wheel_folder_with_another_torch_version_does_not_count():
    assert args(
        smi=no_gpu,
        pip_config=lambda: PIP_WITH_WHEELS,
        listdir=folders({"/opt/wheels": [CPU_WHEEL.replace("2.13.0", "2.12.0")]}),
    )[1:] == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


@pytest.mark.parametrize(
    "driver, variant",
    [
        ("535.104.05", "cu126"),  # a CUDA 12.2-era A100 driver: the 12.x builds run by minor-version compatibility
        ("560.35.03", "cu126"),
        ("570.124.06", "cu128"),
        ("580.65.06", "cu130"),
        ("595.10", "cu130"),
    ],
)
def test_the_driver_picks_the_newest_cuda_build_it_runs(driver, variant):
    assert args(smi=smi(driver)) == [
        f"torch==2.13.0+{variant}",
        "--extra-index-url",
        f"https://download.pytorch.org/whl/{variant}",
    ]


def test_a_driver_too_old_for_every_build_fails_early_and_says_what_to_do():
    with pytest.raises(InstallError, match=r"470\.82\.01 is older than every CUDA build.*TORCH_VARIANT=cpu"):
        args(smi=smi("470.82.01"))


def test_a_broken_nvidia_smi_answer_is_named():
    with pytest.raises(InstallError, match="not N.N"):
        args(smi=smi("N/A"))
    with pytest.raises(InstallError, match="listed no GPU"):
        args(smi=lambda: "\n")


def test_overrides_win_over_detection():
    never = lambda: pytest.fail("an explicit variant must not run nvidia-smi")  # noqa: E731
    assert args(variant="cu128", smi=never) == [
        "torch==2.13.0+cu128",
        "--extra-index-url",
        "https://download.pytorch.org/whl/cu128",
    ]
    assert args(variant="cpu", smi=never, index_url="https://mirror.example/whl/cpu") == [
        "torch==2.13.0+cpu",
        "--extra-index-url",
        "https://mirror.example/whl/cpu",
    ]
    assert args(smi=no_gpu, version="2.14.1") == [
        "torch==2.14.1+cpu",
        "--extra-index-url",
        "https://download.pytorch.org/whl/cpu",
    ]
    with pytest.raises(InstallError, match="TORCH_VARIANT='cu999'"):
        args(variant="cu999", smi=never)
    with pytest.raises(InstallError, match="TORCH_VERSION"):
        args(version="latest", smi=no_gpu)


def test_macos_takes_pypis_torch():
    assert args(platform="darwin", smi=no_gpu) == ["torch==2.13.0"]
    with pytest.raises(InstallError, match="macOS"):
        args(platform="darwin", variant="cu128", smi=no_gpu)


def test_pip_config_sources_are_read_from_every_scope():
    assert ti.pip_sources(PIP_WITH_WHEELS + "install.index-url=\"https://idx/simple\"\nglobal.cert='/x'\n") == [
        "/opt/wheels",
        "/opt/wheels",
        "file:///opt/pypi/simple",
        "file:///opt/pypi-more/simple",
        "https://idx/simple",
    ]


def test_runs_as_a_script_importing_nothing_from_lab(tmp_path):
    """`make setup` runs it with a bare venv's python: a copy outside the package must still work."""
    script = tmp_path / "torch_install.py"
    script.write_text((ROOT / "lab" / "torch_install.py").read_text())
    done = subprocess.run(
        [sys.executable, "-S", str(script), "--variant", "cu128", "--print-pip-args"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["torch==2.13.0+cu128", "--extra-index-url", "https://download.pytorch.org/whl/cu128"]
    bad = subprocess.run([sys.executable, "-S", str(script), "--variant", "rocm"], capture_output=True, text=True)
    assert bad.returncode == 2 and "TORCH_VARIANT='rocm'" in bad.stderr
