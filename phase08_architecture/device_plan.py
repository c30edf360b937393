"""Where ``from_pretrained(..., device_map="auto")`` will put a model, computed before any weight exists.

The a100 profile loads Mixtral 8x7B in NF4 on one 80 GB card. Under transformers 5.24 that does
not fit: the experts are fused 3D parameters (``MixtralExperts``), not ``nn.Linear``, so
bitsandbytes leaves them in bf16 (≈ 91 GB in all), and the 4-bit quantizer lowers the GPU budget by
10% for its buffers. Whatever does not fit is offloaded to CPU RAM — silently, and ~10x slower.

This module runs transformers' own placement on a *meta* model of the published config: the same
quantizer (its ``Linear4bit`` replacement and per-parameter sizes), the same max-memory adjustment
and accelerate's ``infer_auto_device_map`` (``transformers.integrations.accelerate._get_device_map``).
No GPU and no weights are needed, so a smoke run on a laptop states the offload a real A100 run
will have, and the real run's result states it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phase08_architecture.model_configs import hf_config, load_config

GIB = 1024**3


def nf4_moe_config():
    """The a100 profile's BitsAndBytesConfig for Mixtral: NF4, double-quant, bf16 compute; CPU offload
    allowed, because under transformers 5 the bf16 experts do not all fit (see ``plan``)."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from transformers import BitsAndBytesConfig  # noqa: PLC0415 (heavy: transformers loads on first use)

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
        llm_int8_enable_fp32_cpu_offload=True,
    )


@dataclass(frozen=True)
class DevicePlan:
    device_map: dict[str, Any]  # module name -> 0 | "cpu" | "disk", as from_pretrained would place it
    total_bytes: int  # the model as loaded (NF4 Linear weights at 0.5 byte/param, the rest bf16)
    gpu_bytes: int
    offload_bytes: int  # placed on "cpu" or "disk"
    gpu_budget_bytes: int  # what the quantizer lets accelerate place on GPU 0 (90% of the max_memory given)

    @property
    def offloaded(self) -> list[str]:
        return [name for name, dev in self.device_map.items() if dev in ("cpu", "disk")]


def plan(config_name: str, gpu_max_memory_gib: float, cpu_max_memory_gib: float = 120.0) -> DevicePlan:
    """transformers 5.24's ``device_map="auto"`` placement of ``config_name`` loaded in NF4 with bf16
    weights, under ``max_memory={0: gpu_max_memory_gib GiB, "cpu": cpu_max_memory_gib GiB}``."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 (heavy: transformers loads on first use)
    from transformers.integrations.accelerate import _get_device_map, compute_module_sizes  # noqa: PLC0415 (heavy: transformers loads on first use)
    from transformers.quantizers import AutoHfQuantizer  # noqa: PLC0415 (heavy: transformers loads on first use)

    if gpu_max_memory_gib <= 0:
        raise ValueError(f"gpu_max_memory_gib must be > 0, got {gpu_max_memory_gib}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(load_config(config_name)), dtype=torch.bfloat16)
    quantizer = AutoHfQuantizer.from_config(nf4_moe_config(), pre_quantized=False)
    quantizer.preprocess_model(model, device_map="auto")  # nn.Linear -> Linear4bit, as from_pretrained does
    max_memory = {0: int(gpu_max_memory_gib * GIB), "cpu": int(cpu_max_memory_gib * GIB)}
    device_map = _get_device_map(model, "auto", max_memory, quantizer)
    sizes, _ = compute_module_sizes(model, quantizer)
    on_gpu = sum(sizes[name] for name, dev in device_map.items() if dev not in ("cpu", "disk"))
    offload = sum(sizes[name] for name, dev in device_map.items() if dev in ("cpu", "disk"))
    budget = int(quantizer.adjust_max_memory({0: max_memory[0]})[0])
    return DevicePlan(dict(device_map), int(sizes[""]), int(on_gpu), int(offload), budget)


def offloaded_bytes(model) -> int:
    """Bytes of a loaded model's parameters and buffers that sit off the GPU (its measured offload)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != "cuda")
