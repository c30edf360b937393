"""One process that runs, continues or resumes one LangGraph research thread, then exits.

The crash-recovery lesson needs separate processes — one to kill with SIGKILL, a fresh one to carry
on — so ``phase14.langgraph_agent`` (and its tests) start this module with ``subprocess``:

    python -m phase14_frameworks.langgraph_worker --base-url URL/v1 --api-key K --model M \
        --thread T --question "..." [--continue | --decision approve] [--approval] [--tools calculator]

It prints JSON lines: ``{"event": "loaded", ...}`` once the thread's checkpoint is read (how far
the thread got, how long loading took), then ``{"event": "done", ...}`` with the thread's summary
(or ``"paused"`` at an approval interrupt). Everything it knows comes from the database: nothing is
handed over from the killed process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from phase13_react.research_tools import RESEARCH_TOOLS
from phase13_react.tools import Toolbox
from phase14_frameworks import langgraph_research as lr

STARTED = time.perf_counter()


def toolbox(names: str):

    wanted = [n for n in names.split(",") if n]
    known = {t.name: t for t in RESEARCH_TOOLS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"--tools: unknown tool(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return Toolbox([known[n] for n in wanted] if wanted else RESEARCH_TOOLS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", default=os.environ.get("LAB_SERVE_API_KEY", "sk-local"))
    p.add_argument("--model", required=True)
    p.add_argument("--thread", required=True)
    p.add_argument("--question", default="")
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--tools", default="", help="comma-separated Phase 13 research tools (default: all)")
    p.add_argument("--approval", action="store_true", help="interrupt for a human before publishing")
    p.add_argument("--min-tool-steps", type=int, default=0, help="tool results required before final_answer")
    p.add_argument("--db-url", default=None)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--continue", dest="cont", action="store_true", help="continue from the last checkpoint")
    how.add_argument("--decision", default=None, help="resume an approval interrupt with this decision")
    how.add_argument(
        "--from-older",
        type=int,
        default=0,
        metavar="N",
        help="continue from the checkpoint N before the latest (the crash test's negative control: "
        "as if the newer checkpoints were lost)",
    )
    args = p.parse_args(argv)

    from langgraph.types import Command  # noqa: PLC0415 (langgraph loads only on the path that uses it)

    loading = time.perf_counter()
    saver = lr.open_saver(args.db_url or lr.database_url())
    graph = lr.build_graph(
        lr.chat_model(args.base_url, args.api_key, args.model, args.max_tokens),
        toolbox(args.tools),
        checkpointer=saver,
        approval=args.approval,
        min_tool_steps=args.min_tool_steps,
    )
    snapshot = graph.get_state(lr.thread(args.thread))
    print(
        lr.dumps(
            {
                "event": "loaded",
                "pid": os.getpid(),
                "checkpoint_found": bool(snapshot.values),
                "steps_done": snapshot.values.get("steps", 0),
                "next": list(snapshot.next),
                "load_s": time.perf_counter() - loading,
                "since_start_s": time.perf_counter() - STARTED,
            }
        ),
        flush=True,
    )
    if args.decision is not None:
        state = Command(resume=args.decision)
    elif args.cont or args.from_older:
        state = None
    else:
        if not args.question:
            raise SystemExit("--question is required for a new thread")
        state = lr.initial_state(args.question, args.max_steps)
    if args.from_older:
        older = list(graph.get_state_history(lr.thread(args.thread)))[args.from_older]  # newest first
        values = graph.invoke(None, older.config, durability="sync")
    else:
        values = lr.run_thread(graph, args.thread, state)
    paused = bool(graph.get_state(lr.thread(args.thread)).next)
    print(
        lr.dumps(
            {
                "event": "paused" if paused else "done",
                "pid": os.getpid(),
                **lr.summary(values),
                **lr.checkpoint_stats(saver.conn, args.thread),
            }
        ),
        flush=True,
    )
    saver.conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
