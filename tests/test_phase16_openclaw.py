"""OpenClaw as the engine's orchestrator, for real: message → pinned OpenClaw → content-engine skill →
the REAL engine API (``phase16_capstone.api.create_app`` on a loopback port, embedded PostgreSQL) →
a job in the engine's store → an engine worker publishes it.

The model behind OpenClaw is Phase 14's scripted OpenAI-wire control (``scripted_model``): it follows
OpenClaw's skill instructions literally (read SKILL.md, exec the start command, answer). The embedded
135M model does not use the skill (results/phase14/openclaw_skill), so a real-model turn would test
the model, not the path. The engine's own LLM is Phase 16's scripted server. One OpenClaw turn
(about a minute on a loaded CPU). Skipped when Node/OpenClaw are not installed (``make setup``).
"""

import pytest
from openclaw_engine import needs_openclaw, openclaw_before_the_engine, publish_and_check  # tests/openclaw_engine.py

from phase14_frameworks import openclaw_runner as runner


@pytest.mark.slow
@needs_openclaw
def test_a_message_to_openclaw_starts_a_real_engine_job_that_gets_published(tmp_path):
    with openclaw_before_the_engine(tmp_path, "p16oc") as (store, setup):
        turn = runner.run_turn(setup, "Start a content-engine job about vector databases.", timeout_s=300)
        assert turn.exit_code == 0, (turn.error, turn.stderr_tail)
        assert "exec" in turn.tools_used

        jobs = store.list_jobs()
        assert [(j.topic, j.source, j.state) for j in jobs] == [("vector databases", "api", "queued")]
        job = jobs[0]
        assert job.id in turn.reply  # the agent's answer carries the job the engine created
        publish_and_check(store, job.id, tmp_path)
