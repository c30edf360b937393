"""The Phase 13 research agent as a LangGraph ``StateGraph``, checkpointed in PostgreSQL.

    graph = build_graph(chat_model(url, key, model), Toolbox(RESEARCH_TOOLS), checkpointer=saver)
    graph.invoke(initial_state(question), thread(thread_id), durability="sync")

The shape is the Phase 13 loop drawn as a graph: ``agent`` (one model turn) → ``tools`` (run the
calls it asked for) → ``agent`` …, a conditional edge deciding after each model turn, and a step
budget in the typed state. What LangGraph adds is the checkpointer: after every super-step (one node
here) the whole state is written under the thread id, so any process can continue a thread, a node
can pause the graph for a human (``interrupt``) and any earlier checkpoint can be replayed.

Three deliberate choices:

- The model is reached over HTTP through ``lab serve`` with LangChain's ``ChatOpenAI``, so the same
  graph runs on the embedded model, any OpenAI-compatible server, or whatever ``--llm`` is served.
- Tools are the Phase 13 ``Tool`` objects, shown to the model as LangChain tools (their pydantic
  argument models), but executed by ``phase13_react.tools.Toolbox``: every failure comes back as an
  outcome-named observation, exactly as in the raw loop, so the two are comparable call for call.
- Every node that finishes writes one row to ``p14_node_executions`` (thread, node, graph step, turn,
  process id) — a side effect outside the checkpoint, which is how a test can see whether a resumed
  process ran a finished node again.

``durability="sync"`` (used by ``run_thread``) writes each checkpoint before the next node starts;
LangGraph's default (``"async"``) overlaps the write with the next node, so a kill can lose the
newest checkpoint and repeat a node.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable
from typing import Annotated, Any, TypedDict, get_type_hints

from lab import db
from lab.llm.base import ToolCall
from lab.migrations import Migration, Schema, migrate
from phase13_react.loop import FINAL_ANSWER, FINAL_ANSWER_TOOL, NATIVE_SYSTEM
from phase13_react.tools import Toolbox

NODE_LOG_V1 = (
    """CREATE TABLE IF NOT EXISTS p14_node_executions (
    id        bigserial PRIMARY KEY,
    thread_id text NOT NULL,
    node      text NOT NULL,
    step      integer NOT NULL,
    pid       integer NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
)""",
    # turn: messages in the state when the node started: the same logical execution has the same turn on
    # any branch, where the graph step of a fork from an older checkpoint is numbered anew
    "ALTER TABLE p14_node_executions ADD COLUMN IF NOT EXISTS turn integer",
    """CREATE TABLE IF NOT EXISTS p14_published (
    thread_id text PRIMARY KEY,
    answer    text NOT NULL,
    decided   text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
)""",
)


def schema():
    """The node-execution log and the published answers, with their migrations (``lab.migrations``;
    versions in ``p14_schema_migrations``, beside LangGraph's own ``checkpoint_migrations``). Version 1
    is the schema as the code before migrations created it, so a database it made is adopted as it is."""

    return Schema(
        "p14",
        "phase14.node_log",
        tables=("p14_node_executions", "p14_published"),
        migrations=(Migration(1, "node executions and published answers", NODE_LOG_V1),),
    )


class ResearchState(TypedDict, total=False):
    """The graph's typed state: the conversation plus what the edges decide on."""

    messages: list  # the chat so far; build_graph gives it LangGraph's add_messages reducer
    question: str
    steps: int  # model turns taken (the budget counts these)
    max_steps: int
    answer: str | None
    stop_reason: str | None  # answer | max_steps | rejected
    outcomes: Annotated[list[str], operator.add]  # one per tool call: ok, invalid_arguments, ...
    decision: str | None  # the human's verdict at the approval interrupt


def database_url() -> str:
    """Where checkpoints live: ``LAB_CRDB_URL`` when given (CockroachDB speaks the same wire), else
    ``LAB_DATABASE_URL`` / the embedded PostgreSQL (``lab.db``)."""

    return db.crdb_url() or db.database_url()


def open_saver(url: str):
    """A ``PostgresSaver`` on its own autocommit connection, its tables created (idempotent), plus the
    node-execution log (migrated to its latest version). Close it with ``saver.conn.close()``."""
    import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)
    from langgraph.checkpoint.postgres import PostgresSaver  # noqa: PLC0415 (langgraph loads only on the path that uses it)
    from psycopg.rows import dict_row  # noqa: PLC0415 (psycopg loads only on the path that uses it)

    conn = psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row)
    try:
        saver = PostgresSaver(conn)
        saver.setup()
        migrate(url, schema())
    except BaseException:
        conn.close()
        raise
    return saver


def chat_model(base_url: str, api_key: str, model: str, max_tokens: int = 256):
    """LangChain's OpenAI chat client pointed at ``lab serve`` (``base_url`` ends in ``/v1``)."""
    from langchain_openai import ChatOpenAI  # noqa: PLC0415 (langchain_openai loads only on the path that uses it)

    return ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=1,
        timeout=600,
    )


def as_langchain_tools(toolbox: Toolbox) -> list:
    """The Phase 13 tools as LangChain tools: same name, description and pydantic argument model, and
    a call runs through the Toolbox (timeouts, retries, the observation text the raw loop shows)."""
    from langchain_core.tools import StructuredTool  # noqa: PLC0415 (langchain_core loads only on the path that uses it)

    def runner(name: str):
        return lambda **kwargs: toolbox.execute(ToolCall(f"lc_{name}", name, kwargs)).content

    return [
        StructuredTool.from_function(func=runner(t.name), name=t.name, description=t.description, args_schema=t.params)
        for t in toolbox.tools.values()
    ]


FINAL_ANSWER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": FINAL_ANSWER_TOOL["name"],
        "description": FINAL_ANSWER_TOOL["description"],
        "parameters": FINAL_ANSWER_TOOL["input_schema"],
    },
}


def _log_node(saver, config: dict, node: str, state) -> None:
    meta = config.get("metadata") or {}
    with saver.lock:  # the saver's connection: its own writes may be in flight on another thread
        saver.conn.execute(
            "INSERT INTO p14_node_executions (thread_id, node, step, pid, turn) VALUES (%s, %s, %s, %s, %s)",
            (
                config["configurable"]["thread_id"],
                node,
                int(meta.get("langgraph_step", -1)),
                os.getpid(),
                len(state.get("messages", [])),
            ),
        )


def build_graph(
    model, toolbox: Toolbox, *, checkpointer, system: str | None = None, approval: bool = False, min_tool_steps: int = 0
):
    """Compile the research graph. ``approval=True`` adds ``review`` (an ``interrupt`` asking a human to
    approve how the run ended) before ``publish`` (the side effect: the answer is written to
    ``p14_published``); a run that ran out of budget is reviewed too, so the human sees that as well.
    ``min_tool_steps`` withholds final_answer until that many tool results are in (the crash demo uses
    it so that a model which answers at once still leaves finished nodes to kill after)."""
    from langchain_core.messages import AIMessage, SystemMessage, ToolMessage  # noqa: PLC0415 (langchain_core loads only on the path that uses it)
    from langgraph.graph import END, START, StateGraph  # noqa: PLC0415 (langgraph loads only on the path that uses it)
    from langgraph.graph.message import add_messages  # noqa: PLC0415 (langgraph loads only on the path that uses it)
    from langgraph.types import interrupt  # noqa: PLC0415 (langgraph loads only on the path that uses it)

    fields = {**get_type_hints(ResearchState, include_extras=True), "messages": Annotated[list, add_messages]}
    State = TypedDict("State", fields, total=False)  # ResearchState, with LangGraph's message reducer

    research = as_langchain_tools(toolbox)
    bound = model.bind_tools([*research, FINAL_ANSWER_TOOL_OPENAI], tool_choice="required", parallel_tool_calls=False)
    must_research = model.bind_tools(research, tool_choice="required", parallel_tool_calls=False)

    def agent(state, config) -> dict:
        researched = sum(isinstance(m, ToolMessage) for m in state["messages"])
        llm = bound if researched >= min_tool_steps else must_research
        reply: AIMessage = llm.invoke([SystemMessage(system or NATIVE_SYSTEM), *state["messages"]])
        update: dict[str, Any] = {"messages": [reply], "steps": state.get("steps", 0) + 1}
        final = [c for c in reply.tool_calls if c["name"] == FINAL_ANSWER]
        if final and isinstance(final[0]["args"].get("answer"), str):
            update.update(answer=final[0]["args"]["answer"], stop_reason="answer")
        elif not reply.tool_calls and reply.content:
            update.update(answer=str(reply.content), stop_reason="answer")
        _log_node(checkpointer, config, "agent", state)
        return update

    def tools(state, config) -> dict:
        last = state["messages"][-1]
        results, outcomes = [], []
        for bad in getattr(last, "invalid_tool_calls", []):  # arguments that were not a JSON object
            results.append(
                ToolMessage(
                    content=f"Error: arguments of {bad.get('name')} are not one JSON object: {bad.get('error')}",
                    tool_call_id=bad.get("id") or "invalid",
                    name=bad.get("name"),
                )
            )
            outcomes.append("invalid_arguments")
        for c in last.tool_calls:
            if c["name"] == FINAL_ANSWER:  # reached only with unusable arguments
                content, outcome = (
                    'Error: final_answer takes one JSON object {"answer": "<text>"}.',
                    "invalid_arguments",
                )
            else:
                obs = toolbox.execute(ToolCall(c["id"] or c["name"], c["name"], dict(c["args"] or {})))
                content, outcome = obs.content, obs.outcome
            results.append(ToolMessage(content=content, tool_call_id=c["id"] or c["name"], name=c["name"]))
            outcomes.append(outcome)
        _log_node(checkpointer, config, "tools", state)
        return {"messages": results, "outcomes": outcomes}

    def route(state) -> str:
        if state.get("answer") is not None:
            return "review" if approval else END
        if state.get("steps", 0) >= state.get("max_steps", 8):
            return "out_of_budget"
        return "tools"

    def out_of_budget(state, config) -> dict:
        _log_node(checkpointer, config, "out_of_budget", state)
        return {"stop_reason": "max_steps"}

    graph = StateGraph(State)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_node("out_of_budget", out_of_budget)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges(
        "agent", route, ["tools", "out_of_budget", "review", END] if approval else ["tools", "out_of_budget", END]
    )
    graph.add_edge("tools", "agent")
    graph.add_edge("out_of_budget", "review" if approval else END)

    if approval:

        def review(state, config) -> dict:
            # Pauses the graph: the checkpoint holds everything, this process may exit. The value given
            # to Command(resume=...) in any later process becomes interrupt()'s return value.
            decision = interrupt(
                {
                    "question": state["question"],
                    "answer": state.get("answer"),
                    "stop_reason": state.get("stop_reason"),
                    "ask": "publish this answer? reply 'approve' or 'reject'",
                }
            )
            _log_node(checkpointer, config, "review", state)
            return {"decision": str(decision)}

        def publish(state, config) -> dict:
            if state.get("decision") == "approve":  # the side effect, keyed by thread: a re-run cannot double it
                answer = state.get("answer") or f"(no answer: {state.get('stop_reason')})"
                with checkpointer.lock:
                    checkpointer.conn.execute(
                        "INSERT INTO p14_published (thread_id, answer, decided) VALUES (%s, %s, %s) "
                        "ON CONFLICT (thread_id) DO NOTHING",
                        (config["configurable"]["thread_id"], answer, "approve"),
                    )
            _log_node(checkpointer, config, "publish", state)
            return {} if state.get("decision") == "approve" else {"stop_reason": "rejected"}

        graph.add_node("review", review)
        graph.add_node("publish", publish)
        graph.add_edge("review", "publish")
        graph.add_edge("publish", END)
    return graph.compile(checkpointer=checkpointer)


def initial_state(question: str, max_steps: int) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage  # noqa: PLC0415 (langchain_core loads only on the path that uses it)

    return {
        "messages": [HumanMessage(question)],
        "question": question,
        "steps": 0,
        "max_steps": max_steps,
        "answer": None,
        "stop_reason": None,
        "outcomes": [],
        "decision": None,
    }


def thread(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def run_thread(graph, thread_id: str, state: Any) -> dict[str, Any]:
    """Run (``state`` = an initial state), continue (``None``) or resume an interrupt (a ``Command``)
    ``thread_id`` until it ends or pauses; every checkpoint is written before the next node starts."""
    return graph.invoke(state, thread(thread_id), durability="sync")


def usage_of(values: dict[str, Any]) -> tuple[int, int]:
    """(input, output) tokens of every model turn in a thread's state, as the server reported them."""
    ins = outs = 0
    for m in values.get("messages", []):
        usage = getattr(m, "usage_metadata", None) or {}
        ins, outs = ins + usage.get("input_tokens", 0), outs + usage.get("output_tokens", 0)
    return ins, outs


def checkpoint_stats(conn, thread_id: str) -> dict[str, int]:
    """How many checkpoints a thread has and the bytes they occupy (checkpoint rows, channel blobs,
    pending writes) in the database."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) AS n,"
        " (SELECT coalesce(sum(octet_length(checkpoint::text) + octet_length(metadata::text)), 0)"
        "  FROM checkpoints WHERE thread_id = %(t)s) AS cp,"
        " (SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_blobs WHERE thread_id = %(t)s) AS bl,"
        " (SELECT coalesce(sum(octet_length(blob)), 0) FROM checkpoint_writes WHERE thread_id = %(t)s) AS wr",
        {"t": thread_id},
    ).fetchone()
    return {"checkpoints": int(row["n"]), "bytes": int(row["cp"] + row["bl"] + row["wr"])}


def node_executions(conn, thread_id: str) -> list[dict[str, Any]]:
    """Every finished node execution of a thread, in order: node, graph step, process id."""
    return conn.execute(
        "SELECT node, step, pid, turn FROM p14_node_executions WHERE thread_id = %s ORDER BY id", (thread_id,)
    ).fetchall()


def reexecuted(executions: Iterable[dict[str, Any]], before_pid: int, after_pids: Iterable[int]) -> int:
    """Node executions by the later processes of a (node, turn) the killed process had already finished
    (the turn, not the graph step: a fork from an older checkpoint numbers its steps anew)."""
    done = {(e["node"], e["turn"]) for e in executions if e["pid"] == before_pid}
    later = set(after_pids)
    return sum(1 for e in executions if e["pid"] in later and (e["node"], e["turn"]) in done)


def summary(values: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able outcome of a thread's state (answer, stop reason, steps, tokens, tool outcomes)."""
    ins, outs = usage_of(values)
    return {
        "answer": values.get("answer"),
        "stop_reason": values.get("stop_reason"),
        "steps": values.get("steps", 0),
        "input_tokens": ins,
        "output_tokens": outs,
        "outcomes": list(values.get("outcomes", [])),
        "decision": values.get("decision"),
    }


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str)
