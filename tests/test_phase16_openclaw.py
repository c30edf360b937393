"""OpenClaw as the engine's orchestrator, for real: message → pinned OpenClaw → content-engine skill →
the REAL engine API (``phase16_capstone.api.create_app`` on a loopback port, embedded PostgreSQL) →
a job in the engine's store → an engine worker publishes it.

The model behind OpenClaw is Phase 14's scripted OpenAI-wire control (``scripted_model``): it follows
OpenClaw's skill instructions literally (read SKILL.md, exec the start command, answer). The embedded
135M model does not use the skill (results/phase14/openclaw_skill), so a real-model turn would test
the model, not the path. The engine's own LLM is Phase 16's scripted server. One OpenClaw turn
(about a minute on a loaded CPU). Skipped when Node/OpenClaw are not installed (``make setup``).
"""

import json
import uuid

import pytest

from lab.llm import from_spec
from lab.serve.background import serving_app
from lab.toolchain import node_bin, openclaw_bin
from phase14_frameworks import openclaw_runner as runner
from phase14_frameworks.scripted_model import scripted_model
from phase16_capstone.api import create_app
from phase16_capstone.engine import Engine, EngineSettings, deploy_for
from phase16_capstone.job_store import JobStore
from phase16_capstone.scripted_llm import scripted_server

needs_openclaw = pytest.mark.skipif(
    node_bin() is None or openclaw_bin() is None,
    reason="Node/OpenClaw not installed in the project's node prefix (make setup)",
)


@pytest.mark.slow
@needs_openclaw
def test_a_message_to_openclaw_starts_a_real_engine_job_that_gets_published(tmp_path):

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "vectors.md").write_text(
        "# Vector databases\nA vector database stores embeddings and answers nearest-"
        "neighbour queries with an index such as HNSW.\n"
    )
    store = JobStore(namespace=f"p16oc_{uuid.uuid4().hex[:8]}")
    try:
        with (
            serving_app(create_app(store, corpus=str(corpus)), name="engine-api") as engine_url,
            scripted_model("content-engine") as model_server,
        ):
            setup = runner.make_setup(
                tmp_path / "openclaw",
                base_url=model_server.url,
                api_key="sk-test-unused",
                model="scripted",
                context_window=200_000,
                narrow=True,
                env={"CONTENT_ENGINE_URL": engine_url},
            )
            turn = runner.run_turn(setup, "Start a content-engine job about vector databases.", timeout_s=300)
        assert turn.exit_code == 0, (turn.error, turn.stderr_tail)
        assert "exec" in turn.tools_used

        jobs = store.list_jobs()
        assert [(j.topic, j.source, j.state) for j in jobs] == [("vector databases", "api", "queued")]
        job = jobs[0]
        assert job.id in turn.reply  # the agent's answer carries the job the engine created

        with scripted_server() as (url, _):  # an engine worker takes the job OpenClaw started
            engine = Engine(
                store,
                from_spec(f"openai:scripted@{url}"),
                deploy_for(tmp_path / "site"),
                EngineSettings(corpus=str(corpus), k=1),
            )
            engine.work(job_id=job.id)
        done = store.get(job.id)
        assert done.state == "published" and store.publications_count() == {job.id: 1}
        assert json.loads(json.dumps(store.detail(job.id)))["citations"]
    finally:
        store.drop()
        store.close()
