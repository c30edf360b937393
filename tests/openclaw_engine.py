"""What the two OpenClaw end-to-end tests share: a corpus, a job store on the embedded PostgreSQL, the
real engine API and Phase 14's scripted model on loopback ports, a narrow OpenClaw setup pointed at
them, and the engine worker that publishes the job OpenClaw started."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def openclaw_before_the_engine(tmp_path: Path, namespace: str) -> Iterator[tuple[JobStore, runner.Setup]]:
    """(store, setup) while the engine API and OpenClaw's scripted model serve; the store is dropped after."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "vectors.md").write_text(
        "# Vector databases\nA vector database stores embeddings and answers nearest-"
        "neighbour queries with an index such as HNSW.\n"
    )
    store = JobStore(namespace=f"{namespace}_{uuid.uuid4().hex[:8]}")
    try:
        with (
            serving_app(create_app(store, corpus=str(corpus)), name="engine-api") as engine_url,
            scripted_model("content-engine") as model_server,
        ):
            yield (
                store,
                runner.make_setup(
                    tmp_path / "openclaw",
                    base_url=model_server.url,
                    api_key="sk-test-unused",
                    model="scripted",
                    context_window=200_000,
                    narrow=True,
                    env={"CONTENT_ENGINE_URL": engine_url},
                ),
            )
    finally:
        store.drop()
        store.close()


def publish_and_check(store: JobStore, job_id: str, tmp_path: Path) -> None:
    """An engine worker (its LLM: Phase 16's scripted server) takes the job OpenClaw started and publishes
    it once, with citations."""
    with scripted_server() as (url, _):
        engine = Engine(
            store,
            from_spec(f"openai:scripted@{url}"),
            deploy_for(tmp_path / "site"),
            EngineSettings(corpus=str(tmp_path / "corpus"), k=1),
        )
        engine.work(job_id=job_id)
    done = store.get(job_id)
    assert done.state == "published" and store.publications_count() == {job_id: 1}
    assert json.loads(json.dumps(store.detail(job_id)))["citations"]
