"""Phase 16 tracing: each job one trace whose id is the job's stored trace id, spans in the local store.

The engine's LLM is the scripted OpenAI-compatible server; the database the embedded PostgreSQL.
"""

import uuid

from lab.llm import from_spec
from phase15_production.telemetry import SpanStore
from phase15_production.trace_view import cli
from phase16_capstone.engine import Engine, EngineSettings, deploy_for
from phase16_capstone.job_store import JobStore
from phase16_capstone.scripted_llm import scripted_server


def test_a_job_is_one_trace_with_the_stored_id_stage_and_chat_spans_and_the_audit_page_shows_it(tmp_path, capsys):

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "hyde.md").write_text("# HyDE\nHyDE embeds a hypothetical answer instead of the question.\n")
    spans_path = tmp_path / "spans.jsonl"
    store = JobStore(namespace=f"p16tr_{uuid.uuid4().hex[:8]}")
    try:
        with scripted_server(reject_first=1) as (url, _):
            engine = Engine(
                store,
                from_spec(f"openai:scripted@{url}"),
                deploy_for(tmp_path / "site"),
                EngineSettings(corpus=str(corpus), k=1, traces=str(spans_path)),
            )
            job, _ = store.create_job("how HyDE helps retrieval", "cli", corpus=str(corpus))
            engine.work(job_id=job.id)
        job = store.get(job.id)
        assert job.state == "published"

        spans = SpanStore(spans_path).spans(job.id)  # found by run id = job id
        assert {s["trace_id"] for s in spans} == {job.trace_id}
        names = [s["name"] for s in spans]
        assert names.count("invoke_workflow content-engine") == 1
        stages = [s["name"] for s in sorted(spans, key=lambda s: s["start_ns"]) if s["name"].startswith("invoke_agent")]
        assert stages == [
            "invoke_agent researching",
            "invoke_agent writing",
            "invoke_agent editing",
            "invoke_agent writing",
            "invoke_agent editing",
            "invoke_agent publishing",
        ]
        chats = [s for s in spans if s["attributes"].get("lab.span.kind") == "chat"]
        assert len(chats) >= 4 and all(s["attributes"]["lab.run.id"] == job.id for s in chats)
        by_id = {s["span_id"]: s for s in spans}
        assert all(by_id[c["parent_id"]]["name"].startswith("invoke_agent") for c in chats)

        post = store.publication(job.id)["post"]
        assert post["trace_id"] == job.trace_id
        audit = next((tmp_path / "site" / "audit").glob("*.html")).read_text()
        assert job.trace_id in audit

        assert cli([job.id, "--store", str(spans_path)]) == 0  # `lab traces <job id>` renders the tree
        assert "invoke_agent publishing" in capsys.readouterr().out
    finally:
        store.drop()
        store.close()
