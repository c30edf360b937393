"""Reading traces back: a run's spans as a tree with latency, tokens and cost per span (``lab traces``).

    lab traces                      # the runs in the span store
    lab traces 3f2a9c               # one run (run id, trace id or a unique prefix) as a tree
    lab traces 3f2a9c --store results/phase15/tracing/cpu/spans.jsonl

Tokens and cost of a span that is not itself a model call are the sums over its subtree, so the
``invoke_agent`` line shows what that agent spent; cost is what ``phase15_production.cost.span_cost``
says (the cost lab.llm reported, else the model's list price; a local model costs 0 in API fees).
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from lab.errors import LabError
from phase15_production.cost import span_cost
from phase15_production.telemetry import RUN_ID, TRACER_NAME, SpanStore, default_store_path, span_usage


def children_of(spans: list[dict[str, Any]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """(roots, parent span id → children), each list in start order."""
    ids = {s["span_id"] for s in spans}
    kids: dict[str, list[dict]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: s["start_ns"]):
        if s["parent_id"] in ids:
            kids.setdefault(s["parent_id"], []).append(s)
        else:
            roots.append(s)
    return roots, kids


def subtree_totals(span: dict, kids: dict[str, list[dict]], price) -> dict[str, Any]:
    """Tokens and cost of a span: its own if it is a model call, else the sum of its children's.

    Stopping at the first model-call span is what keeps an instrumentation span nested under our
    ``chat`` span (both carry the same usage) from being counted twice.
    """
    own = span_usage(span)
    if own is not None:
        return {"input": own[0], "output": own[1], "cost": price(span), "calls": 1}
    total = {"input": 0, "output": 0, "cost": 0.0, "calls": 0}
    for child in kids.get(span["span_id"], []):
        sub = subtree_totals(child, kids, price)
        for key in ("input", "output", "calls"):
            total[key] += sub[key]
        total["cost"] = None if total["cost"] is None or sub["cost"] is None else total["cost"] + sub["cost"]
    return total


def render_tree(spans: list[dict[str, Any]], price=None):
    """A rich Tree of the run: per span its latency, tokens (in → out) and cost."""

    price = price or span_cost
    roots, kids = children_of(spans)

    def label(s: dict) -> str:
        t = subtree_totals(s, kids, price)
        a = s["attributes"]
        bits = [f"[bold]{s['name']}[/bold]", f"{(s['duration_s'] or 0) * 1000:.0f} ms"]
        if t["calls"]:
            bits.append(f"{t['input']:,}→{t['output']:,} tok")
            bits.append("cost n/a" if t["cost"] is None else f"${t['cost']:.6f}")
        if a.get("lab.tool.outcome"):
            bits.append(a["lab.tool.outcome"])
        if s["status"] == "ERROR":
            bits.append(f"[red]ERROR {s.get('status_description') or ''}[/red]")
        if s.get("scope") and s["scope"] != TRACER_NAME:
            bits.append(f"[dim]({s['scope']})[/dim]")
        return "  ".join(bits)

    def add(node, s: dict) -> None:
        branch = node.add(label(s))
        for child in kids.get(s["span_id"], []):
            add(branch, child)

    run_ids = {s["attributes"].get(RUN_ID) for s in spans} - {None}
    tree = Tree(f"run {', '.join(sorted(run_ids)) or roots[0]['trace_id']}")
    for root in roots:
        add(tree, root)
    return tree


def tree_text(spans: list[dict[str, Any]], width: int = 140) -> str:
    """The tree as plain text (for artifacts and tests)."""

    console = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    console.print(render_tree(spans))
    return console.export_text()


def cli(argv: list[str]) -> int:
    """List the runs in the span store, or render one run as a tree with latency, tokens and cost per span."""

    parser = argparse.ArgumentParser(prog="lab traces", description=cli.__doc__)
    parser.add_argument("run_id", nargs="?", help="run id (or trace id, or a unique prefix); none: list runs")
    parser.add_argument("--store", help=f"span store (JSONL); default $LAB_TRACES or {default_store_path()}")
    args = parser.parse_args(argv)
    console = Console()
    store = SpanStore(args.store)
    try:
        if args.run_id:
            console.print(render_tree(store.spans(args.run_id)))
            return 0
        runs = store.runs()
    except LabError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        return 2
    if not runs:
        console.print(f"no runs in {store.path}")
        return 0

    table = Table("run id", "root span", "started (UTC)", "duration s", "spans", title=str(store.path))
    for r in runs:
        started = datetime.fromtimestamp(r["start_ns"] / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(r["run_id"], r["name"], started, f"{r['duration_s'] or 0:.2f}", str(r["spans"]))
    console.print(table)
    return 0
