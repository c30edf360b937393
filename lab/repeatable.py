"""Training that repeats on CPU: the same seed, data and settings give the same losses and weights,
bit for bit, whatever ran earlier in the process.

What made two CPU trainings with one recipe differ, and what this module fixes:

- the random state when new weights are drawn (LoRA's A matrices, a reward head): anything that drew
  from torch's global generator earlier in the process shifted it. ``repeatable(seed)`` seeds it right
  before the draw;
- kernels: torch's deterministic mode makes it choose deterministic implementations where it has
  them (``torch.use_deterministic_algorithms``; ``warn_only``, so an op without one warns rather
  than stops a run). Data order and dropout are already seeded: trl/transformers' Trainer from
  ``seed``/``data_seed``, hand-written loops from a ``torch.Generator``.

What it cannot fix: another CPU (instruction set, BLAS code path, thread count) adds in another
order, so the same recipe trained on another machine ends a little elsewhere. Figures that are
compared after regeneration (the Phase 13 research tasks) are compared within a stated tolerance
(``phase13_react.tasks.TRAINED_TOLERANCE``). On CUDA nothing is switched: deterministic cuBLAS needs
``CUBLAS_WORKSPACE_CONFIG`` before the first CUDA call, a choice for the whole process.
"""

from __future__ import annotations


def repeatable(seed: int) -> None:
    """Seed torch's global generator and, on CPU, turn on deterministic kernels for the rest of the process."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    torch.manual_seed(seed)
    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)
