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

import time

import pytest
from fake_telegram import FakeBotAPI  # tests/fake_telegram.py
from openclaw_engine import needs_openclaw, openclaw_before_the_engine, publish_and_check  # tests/openclaw_engine.py

from phase14_frameworks import openclaw_runner as runner

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
    bot_api = FakeBotAPI()
    deadline = time.monotonic() + DEADLINE_S
    try:
        with openclaw_before_the_engine(tmp_path, "p14tg") as (store, setup):
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
            jobs = [(j.topic, j.source, j.state) for j in store.list_jobs()]
            assert jobs == [("vector databases", "api", "queued")]
            publish_and_check(store, job.id, tmp_path)
            assert [m for m in bot_api.sent if int(m["chat_id"]) != READER] == []  # nobody else was written to
    finally:
        bot_api.close()
