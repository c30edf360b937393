"""The models an agentic exercise runs, and how its result names them.

Phases 13–16 measure agents on the embedded model tuned to act (``lab.models.AGENT_SPEC``, Phase 13's
tool-use adapter) by default, and show the untuned base model's row beside it (``model_rows``), so
every agent rate reads as a before/after. ``--llm`` (or a profile's ``llm``) replaces the agent model
and ``baseline_llm`` names the row beside it (none on the a100 profile: the seed's model alone).
Metrics carry the row's label (``..._agent``, ``..._base``); tables name the spec.

Why: the a100 profiles of Phases 13–16 promise the seed's kind of model, a capable open one
(Llama 3.1 8B Instruct) behind an OpenAI-compatible server on the GPU box — vLLM from its own venv
(``make vllm``) or ``lab serve``, which ``lab.llm.server.ensure_server`` starts when nothing answers.
Whatever actually answered is recorded (server, served model id) in the result's models, and the
a100 result keeps its declared method only when Llama 3.1 8B is what ran; anything else (a smoke run
on the embedded chat model, a server holding another model) is labelled ``substitute: <what ran>``.
The cpu profile's method already says "scaled" (a small model by design) and is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lab.llm import DEFAULT_SPEC, from_spec
from lab.llm.server import ensure_server
from lab.models import AGENT_SPEC

if TYPE_CHECKING:
    from lab import RunContext
    from lab.llm import LLM
    from lab.llm.server import Served

# AGENT_SPEC (lab.models): the default agent model, the embedded chat model tuned to act; BASE_SPEC: that model untuned
BASE_SPEC = DEFAULT_SPEC
A100_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
A100_URL = "http://127.0.0.1:8000/v1"
A100_LLM = f"openai:{A100_MODEL}@{A100_URL}"  # the a100 profiles' `llm`: found there, or lab serve started there


@contextmanager
def agent_llm(
    ctx: RunContext, spec: str | None, *, labels_method: bool = True, describe: bool = True, **model_fields: Any
) -> Iterator[tuple[LLM, Served]]:
    """``(client, what answered)`` for ``spec`` (None: $LAB_LLM, else the tuned agent model), its server
    found or started for the block; records the model with its server in ``ctx``. ``labels_method``:
    on the a100 profile, a model other than Llama 3.1 8B turns the method into a substitute (False
    for exercises whose method is their own, with no seed model to match); ``describe=False`` records the
    spec without asking the client (a local model's description loads it, which a caller that only hands
    the spec to worker processes should not pay for)."""

    with ensure_server(spec or os.environ.get("LAB_LLM") or AGENT_SPEC, log=ctx.log) as served:
        llm = from_spec(served.spec)
        ctx.model(**{**(llm.describe() if describe else {"id": llm.spec}), **served.provenance(), **model_fields})
        if labels_method and ctx.profile == "a100" and not served.runs(A100_MODEL):
            ctx.set_method(
                f"substitute: {served.model} ({served.server}) in place of {A100_MODEL}",
                f"the a100 profile means {A100_MODEL}; {served.model} answered, so no figure here is "
                "the seed's model's",
            )
        yield llm, served


def model_rows(llm: str | None, baseline_llm: str | None) -> list[tuple[str, str]]:
    """``[("agent", spec), ("base", spec)]``: the model under test (``llm``, else $LAB_LLM, else the tuned
    agent model), then the baseline unless it is absent or the same model."""
    agent = llm or os.environ.get("LAB_LLM") or AGENT_SPEC
    return [("agent", agent)] + ([("base", baseline_llm)] if baseline_llm and baseline_llm != agent else [])
