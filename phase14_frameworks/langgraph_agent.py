"""14.1 — The Phase 13 research agent as a LangGraph graph, with checkpoints that outlive the process.

Phase 13 wrote the loop by hand and persisted one row per step. Here the same agent (same tools,
same final_answer convention, same model behind ``lab serve``) is a LangGraph ``StateGraph``
(``langgraph_research``): typed state, an ``agent`` node, a ``tools`` node, a conditional edge and a
step budget, compiled with a ``PostgresSaver`` that writes the whole state after every node.

What the checkpointer buys, each shown across SEPARATE processes (``langgraph_worker``):

1. Crash recovery: a worker is killed with SIGKILL once the thread has k checkpoints, for several k
   (``crash_points``: k = 1 lands in the first model call — mid-node —, later ones mid-node or between
   nodes, wherever the poll finds the process); a fresh worker continues the same thread id. Every
   finished node logs (node, graph step, pid) to a table, so ``nodes_reexecuted_after_crash`` counts
   finished nodes the second process ran again, summed over the kills (must be 0). Its negative
   control, ``nodes_reexecuted_control``: the same kill, continued from an OLDER checkpoint (as if the
   newer ones were lost) — the counter must read > 0, or it could not see a re-execution at all.
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
from lab.hashing import sha256_file
from lab.serve.background import serving
from phase13_react.research_tools import RESEARCH_TOOLS
from phase13_react.served import A100_LLM, agent_llm
from phase13_react.tasks import TASKS_FILE, check, load_tasks
from phase13_react.tools import Toolbox
from phase14_frameworks import langgraph_research as lr
from phase14_frameworks.metered import RecordingLLM

API_KEY = "sk-lab-p14"  # loopback-only key between the run and its own lab serve


class Config(ExerciseConfig):
    llm: str | None = None  # lab.llm spec served through lab serve; default $LAB_LLM or the embedded SmolLM2
    tasks: str | None = None  # Phase 13 task file (JSONL); default: the Phase 13 research task set
    n_tasks: int = 4  # first n tasks of the set (0 = all)
    tools: list[str] = []  # Phase 13 research tools offered ([] = all)
    max_steps: int = 6  # model turns per task
    max_tokens: int = 256
    crash_demo: bool = True
    crash_points: list[int] = [1, 2, 3, 4, 5]  # one kill per entry: once the thread has this many checkpoints
    control_back: int = 2  # the control continues from the checkpoint this many before the latest
    crash_min_tool_steps: int = 2  # the crash run must use tools before answering (else 135M answers at once)
    approval_demo: bool = True
    time_travel: bool = True
    worker_timeout_s: float = 900.0


def worker_cmd(url: str, model: str, thread_id: str, cfg: Config, *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "phase14_frameworks.langgraph_worker",
        "--base-url",
        f"{url}/v1",
        "--api-key",
        API_KEY,
        "--model",
        model,
        "--thread",
        thread_id,
        "--max-steps",
        str(cfg.max_steps),
        "--max-tokens",
        str(cfg.max_tokens),
        "--tools",
        ",".join(cfg.tools),
        *extra,
    ]
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


def crash_and_resume(url: str, model: str, question: str, cfg: Config, conn, after: int, back: int = 0) -> dict:
    """Start a worker, SIGKILL it once the thread has ``after`` checkpoints, continue in a new one (from
    the latest checkpoint, or with ``back`` from the one ``back`` before it: the negative control)."""

    thread_id = f"p14-crash-{uuid.uuid4().hex[:8]}"
    first = subprocess.Popen(
        worker_cmd(
            url, model, thread_id, cfg, "--question", question, "--min-tool-steps", str(cfg.crash_min_tool_steps)
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    deadline = time.monotonic() + cfg.worker_timeout_s
    while first.poll() is None and time.monotonic() < deadline:
        if lr.checkpoint_stats(conn, thread_id)["checkpoints"] >= after:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    first.wait(timeout=60)
    killed = first.returncode == -signal.SIGKILL
    before = lr.checkpoint_stats(conn, thread_id)["checkpoints"]
    executions_before = lr.node_executions(conn, thread_id)
    how = ["--from-older", str(back)] if back else ["--continue"]
    second, wall = run_worker(
        worker_cmd(url, model, thread_id, cfg, *how, "--min-tool-steps", str(cfg.crash_min_tool_steps)),
        cfg.worker_timeout_s,
    )
    executions = lr.node_executions(conn, thread_id)
    later = {e["pid"] for e in executions} - {first.pid}
    return {
        "thread": thread_id,
        "kill_after_checkpoints": after,
        "killed_mid_run": killed and bool(second["loaded"]["next"]),
        "checkpoints_at_kill": before,
        "nodes_done_before_kill": len(executions_before),
        "nodes_run_after": len(executions) - len(executions_before),
        "reexecuted": lr.reexecuted(executions, first.pid, later),
        "loaded": second["loaded"],
        "done": second["done"],
        "resume_wall_s": wall,
    }


def crash_demo(ctx: RunContext, cfg: Config, url: str, model: str, question: str, conn) -> None:
    """One SIGKILL per crash point, each continued by a fresh process; then the negative control."""
    crashes = [crash_and_resume(url, model, question, cfg, conn, after) for after in cfg.crash_points]
    mid = [c for c in crashes if c["killed_mid_run"]]
    ctx.metric(
        "nodes_reexecuted_after_crash",
        sum(c["reexecuted"] for c in crashes),
        "node executions",
        False,
        f"finished nodes the resumed processes ran again, over {len(crashes)} kills (must be 0)",
    )
    ctx.metric(
        "kills_mid_run",
        len(mid),
        "kills",
        True,
        f"of {len(crashes)} SIGKILLs, those that landed while the thread still had nodes to run",
    )
    ctx.metric("killed_mid_run", bool(mid), "", None, "at least one SIGKILL landed mid-run")
    if mid:
        ctx.metric(
            "resume_latency_s",
            max(c["loaded"]["since_start_s"] for c in mid),
            "s",
            False,
            "fresh process start until the thread's checkpoint is loaded (imports included), max over kills",
        )
        ctx.metric(
            "checkpoint_load_s",
            max(c["loaded"]["load_s"] for c in mid),
            "s",
            False,
            "open the saver, build the graph, read the latest checkpoint, max over kills",
        )
    ctx.table(
        "crash",
        [
            [
                c["kill_after_checkpoints"],
                c["checkpoints_at_kill"],
                c["killed_mid_run"],
                c["nodes_done_before_kill"],
                c["nodes_run_after"],
                c["reexecuted"],
                c["done"]["steps"],
                c["done"]["stop_reason"],
                round(c["resume_wall_s"], 2),
            ]
            for c in crashes
        ],
        [
            "kill once checkpoints >=",
            "checkpoints at kill",
            "killed mid-run",
            "nodes done before kill",
            "nodes run after",
            "finished nodes re-executed",
            "steps after resume",
            "stop after resume",
            "resume wall s",
        ],
        title="SIGKILL at several points of a run, each continued by a fresh process",
    )
    for c in crashes:
        if not c["killed_mid_run"]:
            ctx.failure_mode(
                f"the kill at {c['kill_after_checkpoints']} checkpoints found the thread already "
                "complete: nothing was killed mid-run"
            )
    if mid:
        ctx.finding(
            f"{len(mid)} of {len(crashes)} SIGKILLs landed mid-run (after {', '.join(str(c['checkpoints_at_kill']) for c in mid)} "
            f"checkpoints); fresh processes loaded each thread and re-executed "
            f"{sum(c['reexecuted'] for c in crashes)} finished node(s)."
        )
    if cfg.control_back:
        control = crash_and_resume(url, model, question, cfg, conn, max(cfg.crash_points), back=cfg.control_back)
        ctx.metric(
            "nodes_reexecuted_control",
            control["reexecuted"],
            "node executions",
            True,
            f"negative control: killed at {control['checkpoints_at_kill']} checkpoints, continued from the "
            f"checkpoint {cfg.control_back} before the latest; must be > 0",
        )
        if control["reexecuted"] == 0:
            ctx.failure_mode("the negative control read 0: the re-execution counter cannot see a re-run node")


def approval_across_processes(url: str, model: str, question: str, cfg: Config, conn) -> dict:
    """Run to the approval interrupt in one worker; resume it with a human decision in another."""

    thread_id = f"p14-approval-{uuid.uuid4().hex[:8]}"
    paused, _ = run_worker(
        worker_cmd(url, model, thread_id, cfg, "--approval", "--question", question), cfg.worker_timeout_s
    )
    published_before = conn.execute(
        "SELECT count(*) AS n FROM p14_published WHERE thread_id = %s", (thread_id,)
    ).fetchone()["n"]
    resumed, _ = run_worker(
        worker_cmd(url, model, thread_id, cfg, "--approval", "--decision", "approve"), cfg.worker_timeout_s
    )
    published = conn.execute("SELECT count(*) AS n FROM p14_published WHERE thread_id = %s", (thread_id,)).fetchone()[
        "n"
    ]
    runs = lr.node_executions(conn, thread_id)
    return {
        "thread": thread_id,
        "paused": "paused" in paused,
        "published_before": published_before,
        "published_after": published,
        "decision": resumed.get("done", {}).get("decision"),
        "agent_nodes_after_resume": sum(
            1 for e in runs if e["pid"] == resumed["loaded"]["pid"] and e["node"] in ("agent", "tools")
        ),
    }


def time_travel(graph, conn, thread_id: str) -> dict:
    """Replay a finished thread from an earlier checkpoint (the second time it was about to call the
    model, else the first): only nodes after that checkpoint run again, on a new branch."""

    history = list(graph.get_state_history(lr.thread(thread_id)))
    before = [h for h in reversed(history) if h.next == ("agent",)]
    fork = before[1] if len(before) > 1 else before[0]
    fork_step = fork.metadata.get("step", -1)
    mark = len(lr.node_executions(conn, thread_id))
    values = graph.invoke(None, fork.config, durability="sync")
    replayed = lr.node_executions(conn, thread_id)[mark:]
    return {
        "fork_step": fork_step,
        "checkpoints_before": len(history),
        "checkpoints_after": len(list(graph.get_state_history(lr.thread(thread_id)))),
        "nodes_replayed": len(replayed),
        "nodes_before_fork_rerun": sum(e["step"] <= fork_step for e in replayed),
        "answer_original": history[0].values.get("answer"),
        "answer_replayed": values.get("answer"),
    }


def run(cfg: Config, ctx: RunContext) -> None:

    with agent_llm(ctx, cfg.llm) as (llm, _):
        run_graph(cfg, ctx, llm)


def run_graph(cfg: Config, ctx: RunContext, llm) -> None:

    tasks = load_tasks(cfg.tasks)
    chosen = tasks[: cfg.n_tasks] if cfg.n_tasks else tasks
    ctx.dataset(
        cfg.tasks or "phase13_react/data/research_tasks.jsonl",
        n=len(chosen),
        sha256=sha256_file(Path(cfg.tasks or TASKS_FILE)),
    )
    toolbox = Toolbox([t for t in RESEARCH_TOOLS if not cfg.tools or t.name in cfg.tools])
    metered = RecordingLLM(llm)
    url_db = lr.database_url()
    saver = lr.open_saver(url_db)
    conn = saver.conn
    rows, per_task = [], []
    with serving(metered, api_key=API_KEY) as url:
        graph = lr.build_graph(
            lr.chat_model(f"{url}/v1", API_KEY, metered.model, cfg.max_tokens), toolbox, checkpointer=saver
        )
        for task in ctx.progress(chosen, "LangGraph over the task set"):
            thread_id = f"p14-lg-{ctx.run_id or 'run'}-{task.id}-{uuid.uuid4().hex[:6]}"
            mark, started = metered.mark(), time.perf_counter()
            values = lr.run_thread(graph, thread_id, lr.initial_state(task.question, cfg.max_steps))
            wall = time.perf_counter() - started
            s, used, cp = lr.summary(values), metered.totals(mark), lr.checkpoint_stats(conn, thread_id)
            ok = check(task, s["answer"])
            per_task.append({"thread": thread_id, "ok": ok, "wall": wall, **s, **cp, **used})
            rows.append(
                [
                    task.id,
                    ok,
                    s["stop_reason"],
                    s["steps"],
                    used["calls"],
                    used["input_tokens"] + used["output_tokens"],
                    cp["checkpoints"],
                    cp["bytes"],
                    round(wall, 2),
                    (s["answer"] or "")[:120],
                ]
            )
        ctx.table(
            "tasks",
            rows,
            [
                "task",
                "success",
                "stop",
                "steps",
                "LLM calls",
                "tokens",
                "checkpoints",
                "checkpoint bytes",
                "wall s",
                "answer",
            ],
            title="Research tasks through LangGraph",
        )
        n = len(per_task)
        ctx.metric("success_rate", sum(t["ok"] for t in per_task) / n, "fraction", True)
        ctx.metric("steps_per_task", mean(t["steps"] for t in per_task), "model turns", None)
        ctx.metric("llm_calls_per_task", mean(t["calls"] for t in per_task), "calls", False)
        ctx.metric(
            "tokens_per_task",
            mean(t["input_tokens"] + t["output_tokens"] for t in per_task),
            "tokens",
            False,
            "prompt + completion, counted at lab serve",
        )
        ctx.metric("checkpoints_per_run", mean(t["checkpoints"] for t in per_task), "checkpoints", None)
        ctx.metric(
            "checkpoint_bytes_per_run",
            mean(t["bytes"] for t in per_task),
            "bytes",
            False,
            "checkpoint rows + channel blobs + pending writes in PostgreSQL",
        )
        ctx.metric("wall_s_per_task", mean(t["wall"] for t in per_task), "s", False)
        stops = {r: sum(t["stop_reason"] == r for t in per_task) for r in ("answer", "max_steps")}
        outcomes = [o for t in per_task for o in t["outcomes"] if o != "ok"]
        ctx.finding(
            f"{sum(t['ok'] for t in per_task)}/{n} tasks answered correctly; {stops['answer']} ended with an "
            f"answer, {stops['max_steps']} ran out of the {cfg.max_steps}-turn budget; each thread left "
            f"{mean(t['checkpoints'] for t in per_task):.1f} checkpoints "
            f"({mean(t['bytes'] for t in per_task) / 1024:.1f} KiB) on average."
        )
        if outcomes:
            ctx.failure_mode(
                "tool-call outcomes other than ok over the task set: "
                + ", ".join(f"{o} ×{outcomes.count(o)}" for o in sorted(set(outcomes)))
            )
        if stops["max_steps"]:
            ctx.failure_mode(f"{stops['max_steps']}/{n} threads used the whole step budget without a final answer")

        question = chosen[0].question
        if cfg.crash_demo:
            crash_demo(ctx, cfg, url, metered.model, question, conn)
        if cfg.approval_demo:
            appr = approval_across_processes(url, metered.model, question, cfg, conn)
            ctx.metric("approval_paused", appr["paused"], "", None, "the first process stopped at interrupt()")
            ctx.metric("published_after_approval", appr["published_after"] - appr["published_before"], "rows", None)
            ctx.finding(
                f"Approval interrupt: the first process {'paused' if appr['paused'] else 'did NOT pause'} before "
                f"publishing ({appr['published_before']} rows published); a second process resumed it with "
                f"decision {appr['decision']!r} → {appr['published_after']} row(s) published, "
                f"{appr['agent_nodes_after_resume']} agent/tool nodes re-run."
            )
        if cfg.time_travel:
            tt = time_travel(graph, conn, per_task[0]["thread"])
            ctx.metric("replay_nodes_before_fork_rerun", tt["nodes_before_fork_rerun"], "node executions", False)
            ctx.finding(
                f"Time travel: replaying task {chosen[0].id}'s thread from the checkpoint at graph step "
                f"{tt['fork_step']} ran {tt['nodes_replayed']} nodes ({tt['nodes_before_fork_rerun']} from "
                f"before the fork), history grew {tt['checkpoints_before']} → {tt['checkpoints_after']} "
                f"checkpoints; answer {'unchanged' if tt['answer_original'] == tt['answer_replayed'] else 'changed'}."
            )
    server = conn.execute("SELECT version() AS v").fetchone()["v"].split(",")[0]
    ctx.finding(f"Checkpoints stored in {server} through langgraph-checkpoint-postgres.")
    conn.close()


EXERCISE = Exercise(
    id="phase14.langgraph_agent",
    title="The research agent as a LangGraph graph: PostgreSQL checkpoints, crash resume, approval, time travel",
    run=run,
    config_cls=Config,
    profiles={"cpu": {"n_tasks": 2, "max_steps": 4}, "a100": {"n_tasks": 0, "max_steps": 8, "llm": A100_LLM}},
    tiny={"n_tasks": 1, "max_steps": 3, "tools": ["calculator"], "max_tokens": 64, "crash_points": [2, 4]},
    smoke={"n_tasks": 1, "max_steps": 3, "tools": ["calculator"], "max_tokens": 64, "crash_points": [2, 4]},
    summary_metrics=(
        "success_rate",
        "nodes_reexecuted_after_crash",
        "nodes_reexecuted_control",
        "kills_mid_run",
        "checkpoints_per_run",
        "resume_latency_s",
    ),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
