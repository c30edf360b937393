"""The one place that decides the a100 path's GPU-only switches, and whether this run is a smoke.

The a100 recipes train and run with switches a CPU run normally leaves off: bf16 autocast, the
paged 8-bit AdamW, gradient checkpointing, a ``device_map`` that puts the model on GPU 0, NF4 with
bf16 compute. Exercises ask ``current()`` for them instead of testing ``torch.cuda.is_available()``
themselves, so a **smoke run** (``lab run ... --profile a100 --smoke``) can switch all of them on
while running on a CPU: the smoke then exercises every line of the a100 path except the device
itself (bitsandbytes 0.50 runs NF4 and its 8-bit optimizers on CPU; a paged optimizer falls back
to unpaged there). Only ``device_map`` and "is this CUDA" stay tied to the hardware.

A smoke is visible process-wide through ``$LAB_SMOKE`` (set by ``lab.runner.execute`` while the
exercise runs, inherited by any process it starts), so model loaders deep in a phase
(``lab.models.resolve``) substitute tiny random models (``lab.tiny_models``) without every caller
passing a flag. Exercise code reads ``ctx.smoke``; helpers without a context read ``smoke_active()``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lab.errors import LabError

SMOKE_ENV = "LAB_SMOKE"


def smoke_active() -> bool:
    """Whether the exercise running in this process is a smoke run (``$LAB_SMOKE=1``)."""
    return os.environ.get(SMOKE_ENV) == "1"


@contextlib.contextmanager
def smoke_env(on: bool) -> Iterator[None]:
    """``$LAB_SMOKE=1`` while a smoke exercise runs (restored after); nothing when ``on`` is false."""
    previous = os.environ.get(SMOKE_ENV)
    if on:
        os.environ[SMOKE_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SMOKE_ENV, None)
        else:
            os.environ[SMOKE_ENV] = previous


def cuda_available() -> bool:
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    return torch.cuda.is_available()


class NoCudaDevice(LabError):
    """A command that must run on a GPU found none (``make gpu-smoke`` on a CPU machine)."""


def require_cuda(what: str) -> str:
    """The CUDA device's name, or NoCudaDevice naming ``what`` needed it (never a silent CPU fallback)."""
    if not cuda_available():
        raise NoCudaDevice(f"{what}: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine")
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    return torch.cuda.get_device_name(0)


@dataclass(frozen=True)
class Device:
    """The switches one run uses. ``gpu_path``: take the a100 recipe's GPU-only settings (on a GPU, or
    in a smoke on CPU); ``cuda``: the hardware really is a CUDA device."""

    cuda: bool
    smoke: bool

    @property
    def gpu_path(self) -> bool:
        return self.cuda or self.smoke

    @property
    def name(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def bf16(self) -> bool:
        """bf16 autocast in the trainer (the recipe's compute dtype)."""
        return self.gpu_path

    def compute_dtype(self):
        """NF4's matmul dtype: bf16 on the a100 path, fp32 on a plain CPU run (emulated bf16 was slower)."""
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        return torch.bfloat16 if self.gpu_path else torch.float32

    def weights_dtype(self):
        """Dtype of a full-precision base for inference/training: bf16 on the a100 path, else fp32."""
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        return torch.bfloat16 if self.gpu_path else torch.float32

    def gradient_checkpointing(self) -> bool:
        """Recompute activations in the backward: saves GPU memory; on a plain CPU run it only costs time."""
        return self.gpu_path

    def optimizer(self, quantized: bool = True) -> str:
        """The trainer's ``optim``: the recipe's paged 8-bit AdamW for a 4-bit (or any a100) run."""
        return "paged_adamw_8bit" if (self.gpu_path and quantized) else "adamw_torch"

    def device_map(self) -> dict[str, Any]:
        """Where ``from_pretrained`` puts the whole model: GPU 0, else the CPU (the one hardware switch)."""
        return {"": 0} if self.cuda else {"": "cpu"}

    def torch_device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def place(self, requested: str) -> str | None:
        """Where a profile's ``device`` setting really runs: "cuda..." stays itself on a GPU and becomes
        "cpu" in a smoke without one (the one thing a smoke substitutes); None: it cannot run here."""
        if not requested.startswith("cuda") or self.cuda:
            return requested
        return "cpu" if self.smoke else None

    def trainer_args(self, quantized: bool) -> dict[str, Any]:
        """The device-dependent TrainingArguments of the a100 recipe (trl's SFT/DPO configs)."""
        return dict(
            use_cpu=not self.cuda,
            bf16=self.bf16(),
            gradient_checkpointing=self.gradient_checkpointing(),
            optim=self.optimizer(quantized),
        )

    def gpu_only_reason(self, what: str) -> str | None:
        """Why ``what`` (an a100-only step) cannot run here, or None when it can (GPU, or a smoke)."""
        if self.gpu_path:
            return None
        return f"{what}: it needs a CUDA GPU (none here); `--smoke` runs the same code path with tiny models on CPU"


def quantization_label(config) -> str | None:
    """What a result records of a BitsAndBytesConfig (None: no quantization), e.g. "bnb nf4 4-bit
    double-quant, bfloat16 compute": a smoke test reads it to check the a100 recipe's NF4 ran."""
    if config is None:
        return None
    return (
        f"bnb {config.bnb_4bit_quant_type} 4-bit"
        + (" double-quant" if config.bnb_4bit_use_double_quant else "")
        + f", {str(config.bnb_4bit_compute_dtype).replace('torch.', '')} compute"
        + (", fp32 CPU offload allowed" if config.llm_int8_enable_fp32_cpu_offload else "")
    )


def current(smoke: bool | None = None) -> Device:
    """The device of this process; ``smoke`` defaults to ``$LAB_SMOKE``."""
    return Device(cuda=cuda_available(), smoke=smoke_active() if smoke is None else smoke)
