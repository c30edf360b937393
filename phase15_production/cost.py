"""What a span, an agent and a run cost: measured token counts × a price.

Two ways a model is paid for, and one function shape for both (a *pricer*: span record → USD or None):

- hosted: USD per million input / output tokens from the dated table in ``lab.llm.prices``
  (``PRICES_AS_OF`` says when it was last edited). ``hosted_pricer("gpt-4o")`` re-prices any span's
  tokens as if that model had served them: the same trace, priced under several providers.
- self-hosted: you rent the GPU by the hour, so a token costs ``$/GPU-hour ÷ tokens per second``.
  ``SelfHosted`` takes a decode rate (output tokens/s) and optionally a prefill rate (prompt
  tokens/s): a call occupies the GPU for ``input/prefill + output/decode`` seconds. The rates are
  single-stream measurements unless you give a batched server's aggregate throughput, so this is the
  cost of a GPU serving one request at a time — an upper bound for a busy server that batches.

Traces give the token counts (``gen_ai.usage.*`` on ``chat`` spans, ``phase15_production.telemetry``);
``cost_by_agent`` rolls them up to the ``invoke_agent`` span each call belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.llm.prices import PRICES_AS_OF, PRICES_PER_MTOK, cost_usd
from phase15_production.telemetry import RUN_ID, SPAN_KIND, span_usage

A100_USD_PER_HOUR = 1.50  # the seed's rate for one rented A100
Pricer = Callable[[dict[str, Any]], "float | None"]

__all__ = [
    "A100_USD_PER_HOUR",
    "PRICES_AS_OF",
    "SelfHosted",
    "hosted_pricer",
    "span_cost",
    "cost_by_agent",
    "run_cost",
    "hosted_price",
]


def hosted_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for a listed model or a dated snapshot of one."""
    if cost_usd("hosted", model, 1_000_000, 0) is None:
        return None
    return cost_usd("hosted", model, 1_000_000, 0), cost_usd("hosted", model, 0, 1_000_000)


def span_cost(span: dict[str, Any]) -> float | None:
    """The cost a model-call span reports (``lab.cost_usd``, set by lab.llm), else its model's list price
    (a local model: 0 in API fees); None for a span that is not a model call or an unpriced model."""
    usage = span_usage(span)
    if usage is None:
        return None
    a = span["attributes"]
    if a.get("lab.cost_usd") is not None:
        return float(a["lab.cost_usd"])
    model = a.get("gen_ai.response.model") or a.get("gen_ai.request.model") or ""
    return cost_usd(a.get("gen_ai.system") or "", model, *usage)


def hosted_pricer(model: str) -> Pricer:
    """Price every model call's tokens at ``model``'s list price (a ConfigError-worthy None if unlisted)."""
    if hosted_price(model) is None:
        raise ValueError(f"no list price for {model!r} in lab/llm/prices.py (known: {', '.join(PRICES_PER_MTOK)})")

    def price(span: dict[str, Any]) -> float | None:
        usage = span_usage(span)
        return None if usage is None else cost_usd("hosted", model, *usage)

    return price


@dataclass(frozen=True)
class SelfHosted:
    """A model on a GPU rented by the hour; ``method`` says where the rates came from."""

    name: str
    usd_per_hour: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float | None = None
    method: str = ""

    def __post_init__(self):
        if (
            self.usd_per_hour < 0
            or self.decode_tokens_per_s <= 0
            or (self.prefill_tokens_per_s is not None and self.prefill_tokens_per_s <= 0)
        ):
            raise ValueError(
                f"{self.name}: $/h must be >= 0 and tokens/s > 0 (got {self.usd_per_hour}, "
                f"{self.decode_tokens_per_s}, {self.prefill_tokens_per_s})"
            )

    def seconds(self, input_tokens: int, output_tokens: int) -> float:
        """GPU seconds one call occupies."""
        prefill = input_tokens / self.prefill_tokens_per_s if self.prefill_tokens_per_s else 0.0
        return prefill + output_tokens / self.decode_tokens_per_s

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return self.usd_per_hour / 3600 * self.seconds(input_tokens, output_tokens)

    def pricer(self) -> Pricer:
        def price(span: dict[str, Any]) -> float | None:
            usage = span_usage(span)
            return None if usage is None else self.cost(*usage)

        return price


def _agent_of(spans: list[dict[str, Any]]) -> dict[str, str]:
    """span id → name of the nearest enclosing agent span ("(no agent)" outside any)."""
    by_id = {s["span_id"]: s for s in spans}
    found: dict[str, str] = {}

    def agent(span_id: str | None) -> str:
        if span_id is None or span_id not in by_id:
            return "(no agent)"
        if span_id not in found:
            s = by_id[span_id]
            name = s["attributes"].get("gen_ai.agent.name") if s["attributes"].get(SPAN_KIND) == "agent" else None
            found[span_id] = name or agent(s["parent_id"])
        return found[span_id]

    return {s["span_id"]: agent(s["span_id"]) for s in spans}


def _model_calls(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model-call spans, excluding one nested in another (an SDK instrumentation span under our chat span)."""
    by_id = {s["span_id"]: s for s in spans}

    def nested(s: dict) -> bool:
        parent = by_id.get(s["parent_id"])
        while parent is not None:
            if span_usage(parent) is not None:
                return True
            parent = by_id.get(parent["parent_id"])
        return False

    return [s for s in spans if span_usage(s) is not None and not nested(s)]


def cost_by_agent(spans: list[dict[str, Any]], pricer: Pricer = span_cost) -> dict[str, dict[str, Any]]:
    """agent name → {calls, input, output, cost, seconds}: one row per agent over every run in ``spans``.

    ``cost`` is None when any of the agent's calls could not be priced (never a silent 0).
    """
    agents = _agent_of(spans)
    rows: dict[str, dict[str, Any]] = {}
    for s in _model_calls(spans):
        row = rows.setdefault(agents[s["span_id"]], {"calls": 0, "input": 0, "output": 0, "cost": 0.0, "seconds": 0.0})
        tokens_in, tokens_out = span_usage(s)
        price = pricer(s)
        row["calls"] += 1
        row["input"] += tokens_in
        row["output"] += tokens_out
        row["seconds"] += s["duration_s"] or 0.0
        row["cost"] = None if row["cost"] is None or price is None else row["cost"] + price
    return rows


def run_cost(spans: list[dict[str, Any]], pricer: Pricer = span_cost) -> dict[str, float | None]:
    """run id → cost of its model calls (None when a call could not be priced)."""
    run_of_trace = {s["trace_id"]: s["attributes"][RUN_ID] for s in spans if s["attributes"].get(RUN_ID)}
    totals: dict[str, float | None] = {}
    for s in _model_calls(spans):
        run = run_of_trace.get(s["trace_id"], s["trace_id"])
        price = pricer(s)
        current = totals.get(run, 0.0)
        totals[run] = None if current is None or price is None else current + price
    return totals
