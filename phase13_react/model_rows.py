"""The models an agentic exercise runs: the agent model, and the base model's row beside it.

Phases 13–16 measure agents on the embedded model tuned to act (``local:smollm2-135m-agent``, Phase 13's
tool-use adapter) and show the untuned base model next to it, so every agent rate reads as a
before/after. ``--llm`` (or a profile's ``llm``) replaces the agent model — a hosted or served model —
and ``baseline_llm`` names the row beside it (none on the a100 profile: the seed's model alone).
Metrics carry the row's label (``..._agent``, ``..._base``); tables name the spec.
"""

from __future__ import annotations

from lab.llm import DEFAULT_SPEC
from lab.models import AGENT_LLM

AGENT_SPEC = f"local:{AGENT_LLM}"
BASE_SPEC = DEFAULT_SPEC
LABELS = ("agent", "base")


def model_rows(llm: str | None, baseline_llm: str | None) -> list[tuple[str, str]]:
    """``[("agent", spec), ("base", spec)]``: the model under test (``llm``, else $LAB_LLM, else the tuned
    agent model), then the baseline unless it is absent or the same model."""
    import os

    agent = llm or os.environ.get("LAB_LLM") or AGENT_SPEC
    rows = [("agent", agent)]
    if baseline_llm and baseline_llm != agent:
        rows.append(("base", baseline_llm))
    return rows
