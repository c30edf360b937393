"""USD per million tokens (input, output), so every run can report its cost.

Public list prices when this table was written; edit here when they change. A local model costs
0 in API fees (its compute is the hardware you rent, which results record separately). A hosted
model not listed here (e.g. one you serve with vLLM) reports cost None rather than a guess.
"""

from __future__ import annotations

# When the table below was last edited: list prices move; a cost projection names the date it used.
PRICES_AS_OF = "2026-11-25"

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku-latest": (0.8, 4.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
}


def cost_usd(provider: str, model: str, input_tokens: int, output_tokens: int) -> float | None:
    if provider == "local":
        return 0.0
    price = PRICES_PER_MTOK.get(model)
    if price is None:
        # dated snapshots ("claude-sonnet-4-5-20250929") price like their family; the longest
        # family name wins, so "gpt-4o-mini-2024-07-18" is not priced as "gpt-4o"
        families = [name for name in PRICES_PER_MTOK if model.startswith(name + "-")]
        price = PRICES_PER_MTOK[max(families, key=len)] if families else None
    if price is None:
        return None
    return round((input_tokens * price[0] + output_tokens * price[1]) / 1e6, 8)
