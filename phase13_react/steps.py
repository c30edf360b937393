"""An agent run is a list of step records; everything else is derived from them.

The loop appends a ``Step`` as each model turn finishes; the state store persists the same record,
the chat messages for the next turn are replayed from the records (so a resumed run sees exactly
what the killed one saw), and the result JSON counts outcomes from them. One record, four readers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.llm.base import ToolCall

STOP_REASONS = ("answer", "max_steps", "repeated_action", "model_error")


@dataclass
class Step:
    """One model turn: what it said, the calls it asked for, what they returned, what it cost.

    ``error`` names a turn that failed as a whole (``parse_error``: a text-format reply that follows
    no format; ``empty_reply``; ``model_error``: the provider failed); ``feedback`` is the text the
    model is shown about it on the next turn.
    """

    index: int
    model_text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    answer: str | None = None
    citations: list[str] = field(default_factory=list)  # the sources a final answer cites
    error: str | None = None
    feedback: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(c["id"], c["name"], dict(c.get("arguments") or {}), c.get("raw_arguments"))
            for c in self.tool_calls
        ]

    def outcomes(self) -> list[str]:
        """Every outcome this step recorded: one per observation, plus the step's own error."""
        return [o["outcome"] for o in self.observations] + ([self.error] if self.error else [])

    @property
    def valid(self) -> bool:
        """A step the loop could act on as asked: an answer, or calls that all ran."""
        return self.error is None and all(o["outcome"] in ("ok", "empty_observation") for o in self.observations)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Step:
        return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})


@dataclass
class AgentRun:
    """A finished (or stopped) run: its steps, the answer if any, and why it stopped."""

    task: str
    steps: list[Step]
    answer: str | None
    stop_reason: str
    resumed_from: int = 0  # steps loaded from a previous process (not re-executed)

    @property
    def citations(self) -> list[str]:
        """What the answer cites (the last step's citations; empty without an answer)."""
        return self.steps[-1].citations if self.steps and self.answer is not None else []

    @property
    def tool_calls(self) -> int:
        return sum(len(s.tool_calls) for s in self.steps)

    @property
    def input_tokens(self) -> int:
        return sum(s.input_tokens for s in self.steps)

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.steps)

    @property
    def cost_usd(self) -> float | None:
        costs = [s.cost_usd for s in self.steps if s.cost_usd is not None]
        return sum(costs) if costs else None

    def outcome_counts(self) -> Counter:
        """Failure modes seen in the run (``ok`` excluded), plus ``max_steps`` when the budget ran out
        (the other stop reasons are already outcomes of the step that caused them)."""
        counts = Counter(o for s in self.steps for o in s.outcomes() if o != "ok")
        if self.stop_reason == "max_steps":
            counts["max_steps"] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "answer": self.answer,
            "stop_reason": self.stop_reason,
            "resumed_from": self.resumed_from,
            "steps": [s.to_dict() for s in self.steps],
        }
