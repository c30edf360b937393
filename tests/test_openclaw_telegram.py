"""The seed's path end to end, through OpenClaw's own Telegram channel: a Telegram message → the pinned
OpenClaw gateway (its Telegram channel long-polling a local Bot API double, ``channels.telegram.apiRoot``)
→ the agent runs the content-engine skill → the REAL engine API (``phase16_capstone.api``, embedded
PostgreSQL) creates the job → an engine worker publishes it → OpenClaw's reply, carrying the job,
comes back to the chat through the Bot API.

The Bot API is ``tests/fake_telegram.py`` (a double of Telegram's wire protocol: getUpdates,
sendMessage, ...); OpenClaw's model is Phase 14's scripted OpenAI-wire control, which follows the skill
instructions literally (the embedded 135M model's skill use is measured in phase14.openclaw_skill, so a
real-model turn here would test the model, not the path). The engine's own LLM is Phase 16's scripted
server. The gateway takes one to two minutes to start on a loaded CPU: one slow test.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fake_telegram import FakeBotAPI  # tests/fake_telegram.py

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
READER = 4242
DEADLINE_S = 540


def wait_for(condition, what: str, proc, log, deadline: float) -> None:
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"the OpenClaw gateway exited ({proc.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
@needs_openclaw
def test_a_telegram_message_through_openclaws_channel_publishes_a_post_and_gets_a_reply(tmp_path):

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "vectors.md").write_text(
        "# Vector databases\nA vector database stores embeddings and answers nearest-"
        "neighbour queries with an index such as HNSW.\n"
    )
    store = JobStore(namespace=f"p14tg_{uuid.uuid4().hex[:8]}")
    bot_api = FakeBotAPI()
    deadline = time.monotonic() + DEADLINE_S
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
            runner.add_telegram_channel(setup, api_root=bot_api.url, bot_token="123456:TEST-TOKEN", allow_from=[READER])
            log = tmp_path / "gateway.log"
            with runner.gateway(setup, log) as proc:
                polling = lambda: any(p.endswith("/getUpdates") for p in bot_api.paths)  # noqa: E731
                wait_for(polling, "the Telegram channel to poll the Bot API double", proc, log, deadline)
                assert all(p.startswith("/bot123456:TEST-TOKEN/") for p in bot_api.paths)  # apiRoot + /bot<TOKEN>
                bot_api.deliver(READER, "Start a content-engine job about vector databases.")
                wait_for(lambda: store.list_jobs(), "the skill to create a job in the engine", proc, log, deadline)
                job = store.list_jobs()[0]
                wait_for(
                    lambda: any(job.id in t for t in bot_api.to(READER)),
                    "OpenClaw's reply with the job",
                    proc,
                    log,
                    deadline,
                )
        assert [(j.topic, j.source, j.state) for j in store.list_jobs()] == [("vector databases", "api", "queued")]

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
        assert [m for m in bot_api.sent if int(m["chat_id"]) != READER] == []  # nobody else was written to
    finally:
        bot_api.close()
        store.drop()
        store.close()
