"""OpenTelemetry tracing for agents: every LLM call, tool call and agent step a span, nested per run.

    tracing = configure_tracing()                        # local span store (+ OTLP if OTEL_EXPORTER_OTLP_ENDPOINT)
    with run_span("content-engine") as root:             # invoke_workflow: the run, lab.run.id on every span
        run = traced_agent(llm, task, toolbox, agent="researcher", max_steps=4)
    tracing.close()                                      # flush; `lab traces` renders the run as a tree

Spans follow the OpenTelemetry GenAI semantic conventions, so any collector that understands them
(Langfuse, LangSmith, Phoenix) shows them as LLM traces:

- ``invoke_workflow <name>`` (the run) → ``invoke_agent <agent>`` → ``step <i>`` → ``chat <model>`` and
  ``execute_tool <tool>``; ``gen_ai.operation.name``, ``gen_ai.system``, ``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.agent.name``, ``gen_ai.tool.name``.
- Where the OpenAI SDK does the talking (``lab.llm.openai_client``), the maintained
  ``opentelemetry-instrumentation-openai`` adds its own ``openai.chat`` span under our ``chat`` span.

Why a span store of our own as well as OTLP: a trace you can only see with a collector running is a
trace you do not look at. Spans go to a JSONL file (``LAB_TRACES``, else ``runs/traces/spans.jsonl``)
through the same exporter interface OTLP uses, and to OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set. Both exporters sit behind one redaction step: API keys, ``Authorization``/Bearer values,
Telegram bot tokens and the values of secret-named environment variables never leave the process in a
span, whatever a prompt, a tool result or an exception message contained.

OpenTelemetry stays on for the whole process (never ``OTEL_SDK_DISABLED``): one SDK tracer provider,
set globally once (or the one already set), with a router processor to which each
``configure_tracing`` adds its exporters and ``close`` removes them.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.jsonl import read_jsonl
from lab.llm.base import LLM, ChatResponse, ToolCall
from lab.llm.wrapper import LLMWrapper
from lab.paths import SCRATCH_ROOT
from lab.results import REDACTED, redact
from phase13_react.loop import run_agent
from phase13_react.tools import Observation, Toolbox

TRACER_NAME = "phase15_production.tracing"
SERVICE_NAME = "llm-systems-lab"
MAX_CONTENT_CHARS = 1000  # prompt / completion / tool result text kept on a span
RUN_ID = "lab.run.id"
SPAN_KIND = "lab.span.kind"  # run | agent | step | chat | tool: what `lab traces` and the exercises count

# Stricter than lab.results.redact (which catches sk-/hf_ keys, URL passwords, secret-named fields):
# bearer values, header-style "x-api-key: ...", Telegram bot tokens (also inside /bot<token>/ URLs).
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_HEADER_SECRET = re.compile(
    r"(?i)\b(x-api-key|api[_-]?key|authorization|access[_-]?token|bot[_-]?token|secret)"
    r"(\"?\s*[:=]\s*\"?)([^\s\"',;}]{6,})"
)
_BOT_TOKEN = re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b")
_SECRET_ENV = re.compile(r"(?i)(api_?key|token|secret|password|passwd|auth)")

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("lab_run_id", default=None)


def _secret_env_values() -> list[str]:
    """Values of secret-named environment variables (ANTHROPIC_API_KEY, TELEGRAM_BOT_TOKEN...), longest first."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str) -> str:
    """Blank every secret this module knows how to recognise in free text."""
    for value in _secret_env_values():
        text = text.replace(value, REDACTED)
    text = redact(text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _HEADER_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _BOT_TOKEN.sub(REDACTED, text)


def redact_attributes(attributes: dict[str, Any] | None) -> dict[str, Any]:
    """Span/event attributes with secrets blanked: secret-named string keys wholesale, any text by pattern."""
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if isinstance(value, str):
            value = redact(value, key)
            out[key] = value if value == REDACTED else redact_text(value)
        elif isinstance(value, (list, tuple)):
            out[key] = tuple(redact_text(v) if isinstance(v, str) else v for v in value)
        else:
            out[key] = value
    return out


def redacted_span(span):
    """A copy of a finished span with secrets blanked in attributes, events and status (spans are immutable)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)
    from opentelemetry.trace import Status  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

    events = [Event(e.name, redact_attributes(dict(e.attributes or {})), e.timestamp) for e in span.events]
    status = Status(span.status.status_code, redact_text(span.status.description) if span.status.description else None)
    return ReadableSpan(
        name=redact_text(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=redact_attributes(dict(span.attributes or {})),
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def span_record(span) -> dict[str, Any]:
    """One finished span as a JSON-able dict: the local store's line format."""
    return {
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else "",
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "duration_s": round((span.end_time - span.start_time) / 1e9, 6) if span.end_time else None,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in (span.attributes or {}).items()},
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events
        ],
    }


# --- exporters -------------------------------------------------------------------------------------------


def default_store_path() -> Path:

    return Path(os.environ.get("LAB_TRACES") or SCRATCH_ROOT / "traces" / "spans.jsonl")


class SpanStore:
    """The local span store: one JSON line per finished span, appended; read back whole."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_store_path()
        self._lock = threading.Lock()

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)  # one write per batch: lines of concurrent writers do not interleave mid-line

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path) if self.path.exists() else []

    def runs(self) -> list[dict[str, Any]]:
        """One summary per run (trace), oldest first: run id, root name, start, duration, span count."""
        by_trace: dict[str, list[dict]] = {}
        for r in self.records():
            by_trace.setdefault(r["trace_id"], []).append(r)
        summaries = []
        for trace_id, spans in by_trace.items():
            ids = {s["span_id"] for s in spans}
            root = min((s for s in spans if s["parent_id"] not in ids), key=lambda s: s["start_ns"])
            summaries.append(
                {
                    "run_id": root["attributes"].get(RUN_ID) or trace_id,
                    "trace_id": trace_id,
                    "name": root["name"],
                    "start_ns": root["start_ns"],
                    "duration_s": root["duration_s"],
                    "spans": len(spans),
                }
            )
        return sorted(summaries, key=lambda s: s["start_ns"])

    def spans(self, run_id: str) -> list[dict[str, Any]]:
        """Every span of the run (its traces), matched by run id, trace id, or a unique prefix of either."""
        runs = self.runs()
        exact = [r for r in runs if run_id in (r["run_id"], r["trace_id"])]
        found = exact or [r for r in runs if r["run_id"].startswith(run_id) or r["trace_id"].startswith(run_id)]
        if not found:
            raise ConfigError(f"no run {run_id!r} in {self.path} ({len(runs)} run(s); `lab traces` lists them)")
        if len({r["run_id"] for r in found}) > 1:
            raise ConfigError(f"run id prefix {run_id!r} matches {len(found)} runs in {self.path}: give more of it")
        traces = {r["trace_id"] for r in runs if r["run_id"] == found[0]["run_id"]}
        return [r for r in self.records() if r["trace_id"] in traces]


class _RedactingExporter:
    """Wraps any SpanExporter: spans are redacted before they leave; exported spans are counted."""

    def __init__(self, inner):
        self.inner, self.exported, self.failed = inner, 0, 0

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        result = self.inner.export([redacted_span(s) for s in spans])
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return getattr(self.inner, "force_flush", lambda *_: True)(timeout_millis)


class StoreExporter:
    """SpanExporter writing span records to a ``SpanStore``."""

    def __init__(self, store: SpanStore):
        self.store = store

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        self.store.append([span_record(s) for s in spans])
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# --- the process-wide provider and its router -------------------------------------------------------------


class _Router:
    """A SpanProcessor forwarding to the processors of every open ``Tracing`` (added and removed at will)."""

    def __init__(self):
        self.processors: list = []
        self._lock = threading.Lock()

    def on_start(self, span, parent_context=None) -> None:
        for p in list(self.processors):
            p.on_start(span, parent_context=parent_context)

    def on_end(self, span) -> None:
        for p in list(self.processors):
            p.on_end(span)

    def _on_ending(self, span) -> None:
        for p in list(self.processors):
            p._on_ending(span)

    def shutdown(self) -> None:
        for p in list(self.processors):
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in list(self.processors))

    def add(self, processor) -> None:
        with self._lock:
            self.processors = [*self.processors, processor]

    def remove(self, processor) -> None:
        with self._lock:
            self.processors = [p for p in self.processors if p is not processor]


_ROUTER: _Router | None = None
_SETUP_LOCK = threading.Lock()


def _router():
    """The router on the global SDK tracer provider (created and set once; a provider set by someone else is reused)."""
    global _ROUTER
    from opentelemetry import trace  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

    with _SETUP_LOCK:
        if _ROUTER is not None:
            return _ROUTER
        if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            raise ConfigError(
                "OTEL_SDK_DISABLED=true switches OpenTelemetry off for the whole process, so no span "
                "would be recorded; unset it (silence a framework with its own switch, as lab.toolchain.quiet_frameworks does)"
            )
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
            trace.set_tracer_provider(provider)
            provider = trace.get_tracer_provider()
        _ROUTER = _Router()
        provider.add_span_processor(_ROUTER)
        _instrument_openai(provider)
        return _ROUTER


def _instrument_openai(provider) -> None:
    """The maintained OpenAI SDK instrumentation, once per process: its spans nest under ours."""
    try:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)
    except ImportError:  # the agents extra is not installed: our own spans still cover every call
        return
    instrumentor = OpenAIInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


class Tracing:
    """What ``configure_tracing`` set up: its exporters (with export counts) until ``close``."""

    def __init__(self, store: SpanStore, otlp_endpoint: str | None):
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        self.store, self.otlp_endpoint = store, otlp_endpoint
        self.local = _RedactingExporter(StoreExporter(store))
        # the local store is written synchronously: a run's spans are on disk when the run returns
        self._processors = [SimpleSpanProcessor(self.local)]
        self.otlp = None
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

            self.otlp = _RedactingExporter(OTLPSpanExporter(endpoint=otlp_endpoint, timeout=10))
            self._processors.append(BatchSpanProcessor(self.otlp, schedule_delay_millis=500))
        self._router = _router()
        for p in self._processors:
            self._router.add(p)

    def flush(self) -> None:
        for p in self._processors:
            p.force_flush()

    def counts(self) -> dict[str, int]:
        """Spans exported so far: local, otlp (and otlp_failed)."""
        out = {"local": self.local.exported}
        if self.otlp is not None:
            out.update(otlp=self.otlp.exported, otlp_failed=self.otlp.failed)
        return out

    def close(self) -> None:
        self.flush()
        for p in self._processors:
            self._router.remove(p)
            p.shutdown()

    def __enter__(self) -> Tracing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def configure_tracing(store: str | Path | None = None, otlp_endpoint: str | None = None) -> Tracing:
    """Start exporting spans: to the local store (``store`` or the default path) and, when ``otlp_endpoint``
    or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, to that collector over OTLP/HTTP (``/v1/traces``)."""
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    elif endpoint and otlp_endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return Tracing(SpanStore(store), endpoint)


# --- spans ------------------------------------------------------------------------------------------------


def _tracer():
    from opentelemetry import trace  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

    return trace.get_tracer(TRACER_NAME)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + f"…[{len(text)} chars]"


def _common(kind: str) -> dict[str, Any]:
    run_id = _run_id.get()
    return {SPAN_KIND: kind, **({RUN_ID: run_id} if run_id else {})}


@contextmanager
def run_span(name: str, run_id: str | None = None) -> Iterator[Any]:
    """The root of a run (``invoke_workflow``): every span opened inside carries its ``lab.run.id``."""
    run_id = run_id or uuid.uuid4().hex[:12]
    token = _run_id.set(run_id)
    try:
        attributes = {**_common("run"), "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": name}
        with _tracer().start_as_current_span(f"invoke_workflow {name}", attributes=attributes) as span:
            yield span
    finally:
        _run_id.reset(token)


@contextmanager
def agent_span(name: str, run_id: str | None = None) -> Iterator[Any]:
    """One agent's part of a run (``invoke_agent``). Outside a ``run_span`` it is the run's root itself."""
    token = _run_id.set(run_id or _run_id.get() or uuid.uuid4().hex[:12])
    try:
        attributes = {**_common("agent"), "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name}
        with _tracer().start_as_current_span(f"invoke_agent {name}", attributes=attributes) as span:
            yield span
    finally:
        _run_id.reset(token)


def current_run_id() -> str | None:
    return _run_id.get()


@contextmanager
def tool_span(name: str, call_id: str | None = None, arguments: dict | None = None) -> Iterator[Any]:
    """An ``execute_tool`` span; the caller sets the outcome (``traced`` Toolbox does)."""
    attributes = {
        **_common("tool"),
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.type": "function",
    }
    if call_id:
        attributes["gen_ai.tool.call.id"] = call_id
    if arguments is not None:
        attributes["gen_ai.tool.call.arguments"] = _clip(json.dumps(arguments, default=str, ensure_ascii=False))
    with _tracer().start_as_current_span(f"execute_tool {name}", attributes=attributes) as span:
        yield span


def _messages_text(messages: list[dict[str, Any]], system: str | None) -> str:
    turns = ([{"role": "system", "content": system}] if system else []) + [
        {"role": m.get("role"), "content": m.get("content")} for m in messages
    ]
    return _clip(json.dumps(turns, default=str, ensure_ascii=False))


class TracedLLM(LLMWrapper):
    """Any ``lab.llm`` client, each ``chat``/``stream`` a GenAI ``chat`` span (a drop-in: an ``LLMWrapper``,
    the rest of the interface forwarded). ``choice_probs`` passes through unspanned: one forward pass
    that reads probabilities, not a chat."""

    def __init__(self, inner: LLM, capture_content: bool = True, before_call=None):
        super().__init__(inner)
        self.capture_content = capture_content
        self._before_call = before_call  # the step tracker opens the step span here

    def _start(self, messages, kwargs):
        from opentelemetry import trace  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        if self._before_call is not None:
            self._before_call()
        attributes = {
            **_common("chat"),
            "gen_ai.operation.name": "chat",
            "gen_ai.system": self.provider,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": self.model,
            "gen_ai.request.max_tokens": kwargs.get("max_tokens", 512),
            "gen_ai.request.temperature": kwargs.get("temperature", 0.0),
        }
        if kwargs.get("tools"):
            attributes["gen_ai.request.tools"] = tuple(t["name"] for t in kwargs["tools"])
            attributes["lab.request.tool_choice"] = json.dumps(kwargs.get("tool_choice", "auto"))
        if self.capture_content:
            attributes["gen_ai.input.messages"] = _messages_text(messages, kwargs.get("system"))
        return _tracer().start_span(f"chat {self.model}", kind=trace.SpanKind.CLIENT, attributes=attributes)

    @staticmethod
    def _fail(span, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.set_attribute("error.type", type(exc).__name__)

    def _finish(self, span, reply: ChatResponse) -> None:
        span.set_attributes(
            {
                "gen_ai.response.model": reply.model,
                "gen_ai.usage.input_tokens": reply.usage.input_tokens,
                "gen_ai.usage.output_tokens": reply.usage.output_tokens,
                "gen_ai.response.finish_reasons": (reply.stop_reason or "unknown",),
                "lab.latency_s": reply.latency_s,
                "lab.tool_calls": len(reply.tool_calls),
            }
        )
        if reply.cost_usd is not None:
            span.set_attribute("lab.cost_usd", reply.cost_usd)
        if self.capture_content:
            out = {
                "text": reply.text,
                "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
            }
            span.set_attribute("gen_ai.output.messages", _clip(json.dumps(out, default=str, ensure_ascii=False)))

    def chat(self, messages, **kwargs) -> ChatResponse:
        from opentelemetry import trace  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        span = self._start(messages, kwargs)
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                reply = self.inner.chat(messages, **kwargs)
            except BaseException as exc:
                self._fail(span, exc)
                raise
            self._finish(span, reply)
            return reply

    def stream(self, messages, **kwargs):
        from opentelemetry import trace  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        span = self._start(messages, {**kwargs, "stream": True})
        span.set_attribute("gen_ai.request.stream", True)
        inner = self.inner.stream(messages, **kwargs)
        try:
            while True:
                with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                    try:
                        item = next(inner)
                    except StopIteration:
                        return
                if isinstance(item, ChatResponse):
                    self._finish(span, item)
                yield item
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                self._fail(span, exc)
            raise
        finally:
            inner.close()
            span.end()


class TracedToolbox(Toolbox):
    """A Toolbox whose every ``execute`` is an ``execute_tool`` span (delegating to the toolbox it wraps)."""

    def __init__(self, inner: Toolbox, capture_content: bool = True):
        super().__init__(inner.tools.values(), inner.retries, inner.backoff_s)
        self.inner, self.capture_content = inner, capture_content

    def execute(self, call: ToolCall) -> Observation:
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        arguments = call.arguments if call.raw_arguments is None else {"_raw": call.raw_arguments}
        with tool_span(call.name, call.id, arguments if self.capture_content else None) as span:
            obs = self.inner.execute(call)
            span.set_attributes(
                {"lab.tool.outcome": obs.outcome, "lab.tool.attempts": obs.attempts, "lab.latency_s": obs.latency_s}
            )
            if self.capture_content:
                span.set_attribute("gen_ai.tool.call.result", _clip(obs.content))
            if obs.outcome not in ("ok", "empty_observation"):
                span.set_status(Status(StatusCode.ERROR, obs.outcome))
                span.set_attribute("error.type", obs.outcome)
            return obs


class _StepSpans:
    """One ``step <i>`` span per loop turn: opened when the turn's model call starts, closed by ``on_step``.

    The loop is synchronous, so the span is made current between the two (attach/detach in one thread):
    the turn's ``chat`` and ``execute_tool`` spans nest under it without touching phase 13's loop.
    """

    def __init__(self, agent: str, first_index: int):
        self.agent, self.next_index = agent, first_index
        self.span, self.token = None, None

    def begin(self) -> None:
        from opentelemetry import context, trace  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        if self.span is not None:
            return
        attributes = {**_common("step"), "gen_ai.agent.name": self.agent, "lab.step.index": self.next_index}
        self.span = _tracer().start_span(f"step {self.next_index}", attributes=attributes)
        self.token = context.attach(trace.set_span_in_context(self.span))

    def finish(self, step) -> None:
        from opentelemetry import context  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        self.begin()
        self.span.update_name(f"step {step.index}")
        self.span.set_attributes(
            {
                "lab.step.index": step.index,
                "lab.step.tool_calls": len(step.tool_calls),
                "lab.step.outcomes": tuple(step.outcomes()) or ("ok",),
                "lab.step.answered": step.answer is not None,
            }
        )
        if step.error:
            self.span.set_status(Status(StatusCode.ERROR, step.error))
        context.detach(self.token)
        self.span.end()
        self.span, self.token = None, None
        self.next_index = step.index + 1

    def abort(self, exc: BaseException) -> None:
        from opentelemetry import context  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

        if self.span is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            context.detach(self.token)
            self.span.end()
            self.span = None


def traced_agent(
    llm: LLM,
    task: str,
    toolbox: Toolbox,
    *,
    agent: str,
    run_id: str | None = None,
    capture_content: bool = True,
    **loop_kwargs: Any,
):
    """``phase13_react.loop.run_agent`` inside an ``invoke_agent`` span, a span per step, LLM call and tool
    call. The loop itself is unchanged: tracing enters through the LLM, the toolbox and ``on_step``."""

    prior = list(loop_kwargs.get("prior_steps", ()))
    user_on_step = loop_kwargs.pop("on_step", None)
    steps = _StepSpans(agent, len(prior))

    def on_step(step) -> None:
        steps.finish(step)
        if user_on_step is not None:
            user_on_step(step)

    with agent_span(agent, run_id) as span:
        traced_llm = TracedLLM(llm, capture_content, before_call=steps.begin)
        try:
            run = run_agent(traced_llm, task, TracedToolbox(toolbox, capture_content), on_step=on_step, **loop_kwargs)
        except BaseException as exc:
            steps.abort(exc)
            raise
        span.set_attributes(
            {
                "lab.agent.stop_reason": run.stop_reason,
                "lab.agent.steps": len(run.steps),
                "gen_ai.usage.input_tokens": run.input_tokens,
                "gen_ai.usage.output_tokens": run.output_tokens,
            }
        )
        return run


# --- reading a span record back ----------------------------------------------------------------------------


def span_usage(span: dict[str, Any]) -> tuple[int, int] | None:
    """(input, output) tokens a chat span reports itself, else None."""
    a = span["attributes"]
    if a.get(SPAN_KIND) == "chat" or (a.get("gen_ai.operation.name") == "chat" and "gen_ai.usage.input_tokens" in a):
        return int(a.get("gen_ai.usage.input_tokens") or 0), int(a.get("gen_ai.usage.output_tokens") or 0)
    return None
