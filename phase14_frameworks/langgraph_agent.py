"""14.1 — The Phase 13 research agent as a LangGraph graph, with checkpoints that outlive the process.

Phase 13 wrote the loop by hand and persisted one row per step. Here the same agent (same tools,
same final_answer convention, same model behind ``lab serve``) is a LangGraph ``StateGraph``
(``langgraph_research``): typed state, an ``agent`` node, a ``tools`` node, a conditional edge and a
step budget, compiled with a ``PostgresSaver`` that writes the whole state after every node.

What the checkpointer buys, each shown across SEPARATE processes (``langgraph_worker``):

1. Crash recovery: a worker is killed with SIGKILL once the thread has a few checkpoints; a fresh
   worker continues the same thread id. Every finished node logs (node, graph step, pid) to a table,
   so ``nodes_reexecuted_after_crash`` counts finished nodes the second process ran again (must be 0).
2. Human in the loop: with ``approval`` the graph stops at ``interrupt()`` before its side effect
   (publishing the answer); the worker exits; a later worker resumes it with ``Command(resume=...)``.
3. Time travel: ``get_state_history`` lists every checkpoint of a thread; invoking from an earlier
   one re-runs only what came after it (a fork), never the nodes before.

Then the task set: the Phase 13 research questions, each on its own thread; success, steps, tokens
(counted at the server), checkpoints and their bytes per run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from statistics import mean

from lab import Exercise, ExerciseConfig, RunContext
from phase13_react.served import A100_LLM

API_KEY = "sk-lab-p14"  # loopback-only key between the run and its own lab serve


class Config(ExerciseConfig):
    llm: str | None = None  # lab.llm spec served through lab serve; default $LAB_LLM or the embedded SmolLM2
    tasks: str | None = None  # Phase 13 task file (JSONL); default: the Phase 13 research task set
    n_tasks: int = 4  # first n tasks of the set (0 = all)
    tools: list[str] = []  # Phase 13 research tools offered ([] = all)
    max_steps: int = 6  # model turns per task
    max_tokens: int = 256
    crash_demo: bool = True
    crash_after_checkpoints: int = 4  # kill the worker once the thread has this many checkpoints
    crash_min_tool_steps: int = 2  # the crash run must use tools before answering (else 135M answers at once)
    approval_demo: bool = True
    time_travel: bool = True
    worker_timeout_s: float = 900.0


def worker_cmd(url: str, model: str, thread_id: str, cfg: Config, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "phase14_frameworks.langgraph_worker", "--base-url", f"{url}/v1",
           "--api-key", API_KEY, "--model", model, "--thread", thread_id, "--max-steps", str(cfg.max_steps),
           "--max-tokens", str(cfg.max_tokens), "--tools", ",".join(cfg.tools), *extra]
    return cmd


def events(stdout: str) -> dict[str, dict]:
    """The worker's JSON lines by event name (the last of each)."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            found[record["event"]] = record
    return found


def run_worker(cmd: list[str], timeout_s: float) -> tuple[dict[str, dict], float]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"langgraph worker failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return events(done.stdout), time.perf_counter() - started


def crash_and_resume(url: str, model: str, question: str, cfg: Config, conn) -> dict:
    """Start a worker, SIGKILL it after ``crash_after_checkpoints`` checkpoints, continue in a new one."""
    from phase14_frameworks import langgraph_research as lr

    thread_id = f"p14-crash-{uuid.uuid4().hex[:8]}"
    first = subprocess.Popen(worker_cmd(url, model, thread_id, cfg, "--question", question,
                                        "--min-tool-steps", str(cfg.crash_min_tool_steps)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + cfg.worker_timeout_s
    while first.poll() is None and time.monotonic() < deadline:
        if lr.checkpoint_stats(conn, thread_id)["checkpoints"] >= cfg.crash_after_checkpoints:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    first.wait(timeout=60)
    killed = first.returncode == -signal.SIGKILL
    before = lr.checkpoint_stats(conn, thread_id)["checkpoints"]
    executions_before = lr.node_executions(conn, thread_id)
    second, wall = run_worker(worker_cmd(url, model, thread_id, cfg, "--continue", "--min-tool-steps",
                                         str(cfg.crash_min_tool_steps)), cfg.worker_timeout_s)
    executions = lr.node_executions(conn, thread_id)
    later = {e["pid"] for e in executions} - {first.pid}
    return {"thread": thread_id, "killed_mid_run": killed and bool(second["loaded"]["next"]),
            "checkpoints_at_kill": before,
            "nodes_done_before_kill": len(executions_before), "nodes_run_after": len(executions) - len(executions_before),
            "reexecuted": lr.reexecuted(executions, first.pid, later),
            "loaded": second["loaded"], "done": second["done"], "resume_wall_s": wall}


def approval_across_processes(url: str, model: str, question: str, cfg: Config, conn) -> dict:
    """Run to the approval interrupt in one worker; resume it with a human decision in another."""
    from phase14_frameworks import langgraph_research as lr

    thread_id = f"p14-approval-{uuid.uuid4().hex[:8]}"
    paused, _ = run_worker(worker_cmd(url, model, thread_id, cfg, "--approval", "--question", question),
                           cfg.worker_timeout_s)
    published_before = conn.execute("SELECT count(*) AS n FROM p14_published WHERE thread_id = %s",
                                     (thread_id,)).fetchone()["n"]
    resumed, _ = run_worker(worker_cmd(url, model, thread_id, cfg, "--approval", "--decision", "approve"),
                            cfg.worker_timeout_s)
    published = conn.execute("SELECT count(*) AS n FROM p14_published WHERE thread_id = %s",
                             (thread_id,)).fetchone()["n"]
    runs = lr.node_executions(conn, thread_id)
    return {"thread": thread_id, "paused": "paused" in paused, "published_before": published_before,
            "published_after": published, "decision": resumed.get("done", {}).get("decision"),
            "agent_nodes_after_resume": sum(1 for e in runs if e["pid"] == resumed["loaded"]["pid"]
                                            and e["node"] in ("agent", "tools"))}


def time_travel(graph, conn, thread_id: str) -> dict:
    """Replay a finished thread from an earlier checkpoint (the second time it was about to call the
    model, else the first): only nodes after that checkpoint run again, on a new branch."""
    from phase14_frameworks import langgraph_research as lr

    history = list(graph.get_state_history(lr.thread(thread_id)))
    before = [h for h in reversed(history) if h.next == ("agent",)]
    fork = before[1] if len(before) > 1 else before[0]
    fork_step = fork.metadata.get("step", -1)
    mark = len(lr.node_executions(conn, thread_id))
    values = graph.invoke(None, fork.config, durability="sync")
    replayed = lr.node_executions(conn, thread_id)[mark:]
    return {"fork_step": fork_step, "checkpoints_before": len(history),
            "checkpoints_after": len(list(graph.get_state_history(lr.thread(thread_id)))),
            "nodes_replayed": len(replayed), "nodes_before_fork_rerun": sum(e["step"] <= fork_step for e in replayed),
            "answer_original": history[0].values.get("answer"), "answer_replayed": values.get("answer")}


def run(cfg: Config, ctx: RunContext) -> None:
    from phase13_react.served import agent_llm

    with agent_llm(ctx, cfg.llm) as (llm, _):
        run_graph(cfg, ctx, llm)


def run_graph(cfg: Config, ctx: RunContext, llm) -> None:
    from lab.serve.background import serving
    from phase13_react.research_tools import RESEARCH_TOOLS
    from lab.hashing import sha256_file
    from phase13_react.tasks import TASKS_FILE, check, load_tasks
    from phase13_react.tools import Toolbox
    from phase14_frameworks import langgraph_research as lr
    from phase14_frameworks.metered import MeteredLLM

    tasks = load_tasks(cfg.tasks)
    chosen = tasks[:cfg.n_tasks] if cfg.n_tasks else tasks
    ctx.dataset(cfg.tasks or "phase13_react/data/research_tasks.jsonl", n=len(chosen),
                sha256=sha256_file(Path(cfg.tasks or TASKS_FILE)))
    toolbox = Toolbox([t for t in RESEARCH_TOOLS if not cfg.tools or t.name in cfg.tools])
    metered = MeteredLLM(llm)
    url_db = lr.database_url()
    saver = lr.open_saver(url_db)
    conn = saver.conn
    rows, per_task = [], []
    with serving(metered, api_key=API_KEY) as url:
        graph = lr.build_graph(lr.chat_model(f"{url}/v1", API_KEY, metered.model, cfg.max_tokens), toolbox,
                               checkpointer=saver)
        for task in ctx.progress(chosen, "LangGraph over the task set"):
            thread_id = f"p14-lg-{ctx.run_id or 'run'}-{task.id}-{uuid.uuid4().hex[:6]}"
            mark, started = metered.mark(), time.perf_counter()
            values = lr.run_thread(graph, thread_id, lr.initial_state(task.question, cfg.max_steps))
            wall = time.perf_counter() - started
            s, used, cp = lr.summary(values), metered.totals(mark), lr.checkpoint_stats(conn, thread_id)
            ok = check(task, s["answer"])
            per_task.append({"thread": thread_id, "ok": ok, "wall": wall, **s, **cp, **used})
            rows.append([task.id, ok, s["stop_reason"], s["steps"], used["calls"],
                         used["input_tokens"] + used["output_tokens"], cp["checkpoints"], cp["bytes"], round(wall, 2),
                         (s["answer"] or "")[:120]])
        ctx.table("tasks", rows, ["task", "success", "stop", "steps", "LLM calls", "tokens", "checkpoints",
                                  "checkpoint bytes", "wall s", "answer"], title="Research tasks through LangGraph")
        n = len(per_task)
        ctx.metric("success_rate", sum(t["ok"] for t in per_task) / n, "fraction", True)
        ctx.metric("steps_per_task", mean(t["steps"] for t in per_task), "model turns", None)
        ctx.metric("llm_calls_per_task", mean(t["calls"] for t in per_task), "calls", False)
        ctx.metric("tokens_per_task", mean(t["input_tokens"] + t["output_tokens"] for t in per_task), "tokens", False,
                   "prompt + completion, counted at lab serve")
        ctx.metric("checkpoints_per_run", mean(t["checkpoints"] for t in per_task), "checkpoints", None)
        ctx.metric("checkpoint_bytes_per_run", mean(t["bytes"] for t in per_task), "bytes", False,
                   "checkpoint rows + channel blobs + pending writes in PostgreSQL")
        ctx.metric("wall_s_per_task", mean(t["wall"] for t in per_task), "s", False)
        stops = {r: sum(t["stop_reason"] == r for t in per_task) for r in ("answer", "max_steps")}
        outcomes = [o for t in per_task for o in t["outcomes"] if o != "ok"]
        ctx.finding(f"{sum(t['ok'] for t in per_task)}/{n} tasks answered correctly; {stops['answer']} ended with an "
                    f"answer, {stops['max_steps']} ran out of the {cfg.max_steps}-turn budget; each thread left "
                    f"{mean(t['checkpoints'] for t in per_task):.1f} checkpoints "
                    f"({mean(t['bytes'] for t in per_task) / 1024:.1f} KiB) on average.")
        if outcomes:
            ctx.failure_mode("tool-call outcomes other than ok over the task set: "
                             + ", ".join(f"{o} ×{outcomes.count(o)}" for o in sorted(set(outcomes))))
        if stops["max_steps"]:
            ctx.failure_mode(f"{stops['max_steps']}/{n} threads used the whole step budget without a final answer")

        question = chosen[0].question
        if cfg.crash_demo:
            crash = crash_and_resume(url, metered.model, question, cfg, conn)
            ctx.metric("nodes_reexecuted_after_crash", crash["reexecuted"], "node executions", False,
                       "finished nodes the resumed process ran again (must be 0)")
            ctx.metric("resume_latency_s", crash["loaded"]["since_start_s"], "s", False,
                       "fresh process start until the thread's checkpoint is loaded (imports included)")
            ctx.metric("checkpoint_load_s", crash["loaded"]["load_s"], "s", False,
                       "open the saver, build the graph, read the latest checkpoint")
            ctx.metric("killed_mid_run", crash["killed_mid_run"], "", None,
                       "SIGKILL landed while the thread still had nodes to run")
            ctx.table("crash", [[k, v] for k, v in crash.items() if k not in ("loaded", "done")]
                      + [["steps after resume", crash["done"]["steps"]], ["stop after resume", crash["done"]["stop_reason"]]],
                      ["what", "value"], title="SIGKILL mid-run, continued by a fresh process")
            if crash["killed_mid_run"]:
                ctx.finding(f"Killed with SIGKILL at {crash['checkpoints_at_kill']} checkpoints after "
                            f"{crash['nodes_done_before_kill']} finished nodes; a fresh process loaded the thread in "
                            f"{crash['loaded']['load_s']:.2f} s ({crash['loaded']['since_start_s']:.1f} s from process "
                            f"start), ran {crash['nodes_run_after']} more nodes and re-executed "
                            f"{crash['reexecuted']} finished ones.")
            else:
                ctx.failure_mode(f"the crash worker's thread was complete before the kill at "
                                 f"{cfg.crash_after_checkpoints} checkpoints: nothing was killed mid-run")
        if cfg.approval_demo:
            appr = approval_across_processes(url, metered.model, question, cfg, conn)
            ctx.metric("approval_paused", appr["paused"], "", None, "the first process stopped at interrupt()")
            ctx.metric("published_after_approval", appr["published_after"] - appr["published_before"], "rows", None)
            ctx.finding(f"Approval interrupt: the first process {'paused' if appr['paused'] else 'did NOT pause'} before "
                        f"publishing ({appr['published_before']} rows published); a second process resumed it with "
                        f"decision {appr['decision']!r} → {appr['published_after']} row(s) published, "
                        f"{appr['agent_nodes_after_resume']} agent/tool nodes re-run.")
        if cfg.time_travel:
            tt = time_travel(graph, conn, per_task[0]["thread"])
            ctx.metric("replay_nodes_before_fork_rerun", tt["nodes_before_fork_rerun"], "node executions", False)
            ctx.finding(f"Time travel: replaying task {chosen[0].id}'s thread from the checkpoint at graph step "
                        f"{tt['fork_step']} ran {tt['nodes_replayed']} nodes ({tt['nodes_before_fork_rerun']} from "
                        f"before the fork), history grew {tt['checkpoints_before']} → {tt['checkpoints_after']} "
                        f"checkpoints; answer {'unchanged' if tt['answer_original'] == tt['answer_replayed'] else 'changed'}.")
    server = conn.execute("SELECT version() AS v").fetchone()["v"].split(",")[0]
    ctx.finding(f"Checkpoints stored in {server} through langgraph-checkpoint-postgres.")
    conn.close()


EXERCISE = Exercise(
    id="phase14.langgraph_agent",
    title="The research agent as a LangGraph graph: PostgreSQL checkpoints, crash resume, approval, time travel",
    run=run,
    config_cls=Config,
    profiles={"cpu": {"n_tasks": 2, "max_steps": 4}, "a100": {"n_tasks": 0, "max_steps": 8, "llm": A100_LLM}},
    tiny={"n_tasks": 1, "max_steps": 3, "tools": ["calculator"], "max_tokens": 64},
    smoke={"n_tasks": 1, "max_steps": 3, "tools": ["calculator"], "max_tokens": 64},
    summary_metrics=("success_rate", "nodes_reexecuted_after_crash", "checkpoints_per_run", "resume_latency_s"),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
