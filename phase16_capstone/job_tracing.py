"""Each job one trace: Phase 15's tracing around the engine, the job's stored trace id as the OTel trace id.

The job store gives every job a 32-hex ``trace_id`` when it is created. A worker running the job opens
Phase 15's ``run_span`` (``invoke_workflow content-engine``, ``lab.run.id`` = the job id) as the child of
a remote parent carrying THAT trace id, so every attempt — a resumed job on another worker or machine
too — lands in the same trace, and the id on the audit page (``PostRecord.trace_id``) and in
``GET /jobs/{id}`` is the one a collector shows. Inside: one ``invoke_agent <stage>`` span per stage
and one ``chat`` span per LLM call (Phase 15's ``TracedLLM``, with its redaction of keys and tokens).
``lab traces <job id>`` renders the tree from the local span store.

The engine wraps its model in ``TracedLLM`` itself: a wrapper forwards the whole ``LLM`` interface, so a
local model's ``choice_probs`` (the Phase 10 judge's probability method) still reaches the judge,
untraced: the judge's forward passes are metered per stage, not spanned.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phase15_production.telemetry import agent_span, configure_tracing, default_store_path, run_span

WORKFLOW = "content-engine"
_TRACINGS: dict[str, object] = {}
_LOCK = threading.Lock()


def tracing_for(store: str | Path | None = None):
    """One Phase 15 ``Tracing`` per span store per process (the exporters are process-global: a second
    one on the same store would write every span twice)."""
    key = str(Path(store) if store else default_store_path())
    with _LOCK:
        if key not in _TRACINGS:
            _TRACINGS[key] = configure_tracing(key)
        return _TRACINGS[key]


@contextmanager
def job_trace(job) -> Iterator[object]:
    """The run span of one worker's pass over ``job``, inside the job's own trace."""
    from opentelemetry import context, trace  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

    parent = SpanContext(
        trace_id=int(job.trace_id, 16),
        span_id=random.getrandbits(64) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        with run_span(WORKFLOW, run_id=job.id) as span:
            span.set_attribute("lab.job.topic", job.topic[:200])
            span.set_attribute("lab.job.attempt", job.attempts)
            yield span
    finally:
        context.detach(token)


def stage_span(stage: str):
    return agent_span(stage)
