"""Phase 14 — OpenClaw and the content-engine skill.

The skill's command is tested against the engine-API double (its wire contract); the skill is
loaded by the real, pinned OpenClaw (``openclaw skills list``); and the exercise's tiny run makes
three real OpenClaw turns: the default configuration and the narrow one against ``lab serve`` with
the tuned agent model (the default's first request does not fit the 8,192-token window: its outcome
is ``context_overflow``), and one against a scripted OpenAI-wire model (the control that exercises
read → exec → POST /jobs). OpenClaw is a
subprocess: the in-process offline guard does not cover it, so the tiny run traces its connect()
calls with strace (when installed) and the test asserts they all stay on this machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab import runner
from lab.toolchain import node_bin, openclaw_bin
from phase14_frameworks import openclaw_runner
from phase14_frameworks import openclaw_skill as oc
from phase14_frameworks.engine_double import EngineDouble
from phase14_frameworks.model_recorder import Exchange, parse_reply
from phase14_frameworks.openclaw_runner import SKILLS_DIR, TurnRecord, read_front_matter
from phase14_frameworks.openclaw_skill import EXERCISE, OUTCOMES, Config, model_slug, model_specs, outcome
from phase14_frameworks.scripted_model import next_step, skill_location, topic_of

SKILL_DIR = SKILLS_DIR / "content-engine"
SCRIPT = SKILL_DIR / "scripts" / "content_engine.py"
needs_openclaw = pytest.mark.skipif(
    node_bin() is None or openclaw_bin() is None, reason="Node/OpenClaw not installed in <venv>/node (run `make setup`)"
)


def cli(*args: str, url: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"} | ({"CONTENT_ENGINE_URL": url} if url else {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


# --- the skill's files --------------------------------------------------------------------------


def test_front_matter_has_what_openclaw_reads():
    meta = read_front_matter(SKILL_DIR / "SKILL.md")
    assert meta["name"] == SKILL_DIR.name == "content-engine"
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", meta["name"])
    description = meta["description"]
    assert isinstance(description, str) and "\n" not in description
    # OpenClaw keeps descriptions to one line under 160 chars, and cuts them to 60 + "..." when the
    # prompt is large for the model's window (skill-contract: truncateSkillDescription): stay whole
    assert len(description) <= 60
    body = (SKILL_DIR / "SKILL.md").read_text()
    assert "scripts/content_engine.py start" in body and "scripts/content_engine.py status" in body


def test_front_matter_errors_name_the_file(tmp_path):
    bad = tmp_path / "SKILL.md"
    bad.write_text("# no front matter\n")
    with pytest.raises(ValueError, match=str(bad)):
        read_front_matter(bad)


def test_skill_script_imports_nothing_from_the_project():
    imports = re.findall(r"^(?:from|import) (\S+)", SCRIPT.read_text(), re.M)
    assert imports and not [m for m in imports if m.split(".")[0].startswith(("phase", "lab"))]


# --- the skill's command against the engine API double ------------------------------------------


@pytest.fixture(scope="module")
def engine():
    double = EngineDouble()
    with double.serving() as url:
        yield double, url


def test_start_then_status(engine):
    double, url = engine
    started = cli("start", "vector", "databases", url=url)
    assert started.returncode == 0, started.stderr
    job = json.loads(started.stdout)
    assert job["state"] == "queued" and job["topic"] == "vector databases"
    assert double.posts[-1] == {"topic": "vector databases"}
    status = cli("status", job["id"], url=url)
    assert status.returncode == 0 and json.loads(status.stdout)["id"] == job["id"]


def test_unknown_job_is_a_clear_error(engine):
    _, url = engine
    done = cli("status", "job-9999", url=url)
    assert done.returncode == 1
    assert "HTTP 404" in done.stderr and "job-9999" in done.stderr and "Traceback" not in done.stderr


def test_engine_refusal_names_the_field(engine):
    double, url = engine
    before = len(double.posts)
    done = cli("start", "x" * 600, url=url)  # the script refuses before sending
    assert done.returncode == 2 and "at most 500" in done.stderr
    assert len(double.posts) == before


def test_unreachable_engine_says_where_it_looked():
    done = cli("start", "anything", url="http://127.0.0.1:9")
    assert done.returncode == 3
    assert "cannot reach the content engine at http://127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr


def test_bad_url_setting_is_a_usage_error():
    done = cli("start", "anything", url="ftp://example.invalid")
    assert done.returncode == 2 and "CONTENT_ENGINE_URL" in done.stderr


def test_engine_double_rejects_an_empty_topic(engine):
    import httpx  # noqa: PLC0415 (httpx loads only on the path that uses it)

    _, url = engine
    reply = httpx.post(f"{url}/jobs", json={"topic": ""})
    assert reply.status_code == 422 and "topic" in reply.text


# --- the pieces the exercise measures with (no OpenClaw needed) ----------------------------------


def test_recorder_reads_a_streamed_tool_call():
    ex = Exchange(
        {
            "messages": [{"role": "system", "content": "<name>a&amp;b</name>"}, {"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "exec", "parameters": {}}}],
        }
    )
    stream = (
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"exec","arguments":"{\\"comm"}}]}}]}\n\n'
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"and\\": 1}"}}]}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":7}}\n\ndata: [DONE]\n\n'
    )
    parse_reply(ex, stream, "text/event-stream")
    assert ex.reply_tool_calls == [{"name": "exec", "arguments": '{"command": 1}'}]
    assert ex.usage == {"prompt_tokens": 7} and ex.tool_names == ["exec"] and ex.mentions("<name>a&b</name>")


def test_scripted_model_follows_the_skill_catalog():
    system = (
        "<available_skills>\n  <skill>\n    <name>content-engine</name>\n    <description>x</description>\n"
        "    <location>/w/skills/content-engine/SKILL.md</location>\n  </skill>\n</available_skills>"
    )
    assert skill_location(system, "content-engine") == "/w/skills/content-engine/SKILL.md"
    assert topic_of("Start a content-engine job about vector databases.\n\nRuntime: ...") == "vector databases"
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "Write about RAG."}]}
    assert next_step(body, "content-engine") == {
        "name": "read",
        "arguments": {"path": "/w/skills/content-engine/SKILL.md"},
    }
    body["messages"].append({"role": "tool", "content": "skill text"})
    command = next_step(body, "content-engine")["arguments"]["command"]
    assert command == "python3 /w/skills/content-engine/scripts/content_engine.py start RAG"


def test_recorder_reads_a_refusal_for_context_length():
    ex = Exchange({"messages": []}, status=413)
    parse_reply(
        ex,
        b'{"error": {"message": "the prompt is 8200 tokens", "type": "invalid_request_error", '
        b'"param": "messages", "code": "context_length_exceeded"}}',
        "application/json",
    )
    assert ex.error_code == "context_length_exceeded" and ex.context_overflow
    too_big = Exchange({"messages": []}, status=413)
    parse_reply(too_big, b'{"error": {"message": "body over 8 MB", "code": "request_too_large"}}', "application/json")
    assert not too_big.context_overflow  # a body over the byte limit is not a prompt over the window


def test_the_narrow_configuration_offers_two_tools_and_stops_loops(tmp_path):
    """Narrow = tool policy (read, exec), Tool Search off (else its meta-tools come back beside them) and
    OpenClaw's loop guard on; the default configuration is OpenClaw's own (none of the three)."""

    def config(narrow):
        return openclaw_runner.openclaw_config(
            base_url="http://127.0.0.1:1",
            api_key="k",
            model="m",
            context_window=8192,
            max_tokens=64,
            workspace=tmp_path,
            narrow=narrow,
            skills=("content-engine",),
        )

    narrow = config(True)
    assert narrow["tools"] == {"allow": ["read", "exec"], "toolSearch": False, "loopDetection": {"enabled": True}}
    assert narrow["agents"]["defaults"]["skills"] == ["content-engine"]
    assert "tools" not in config(False) and "skills" not in config(False)["agents"]["defaults"]


def _turn(exit_code=0, status="ok", error=None):
    return TurnRecord(exit_code, status, "", 0, [], None, None, 1.0, error=error)


def test_each_turn_gets_one_outcome():

    refused = Exchange({}, status=413, error_code="context_length_exceeded")
    fine = Exchange({}, status=200)
    cases = [
        ((_turn(), [fine], True), "skill_ran"),
        ((_turn(1, "error", "LLM request failed"), [refused], False), "context_overflow"),  # not "no job"
        ((_turn(1, "error", "Context window exceeded for model"), [], False), "context_overflow"),
        # the first request fit; the model's calls and their results grew the turn past the window
        ((_turn(1, "error", "LLM request failed"), [fine, fine, refused], False), "history_overflow"),
        ((_turn(1, "error", "context window exceeded after compaction"), [fine], False), "history_overflow"),
        # OpenClaw's loop guard ended a turn of repeated calls (its words, from a recorded run)
        (
            (
                _turn(
                    1,
                    "error",
                    "OpenClaw stopped this run because tool-loop recovery encountered another critical loop.",
                ),
                [fine] * 52,
                False,
            ),
            "loop_stopped",
        ),
        ((_turn(2, "timeout"), [fine], False), "timeout"),
        ((_turn(1, "error", "connection refused"), [fine], False), "error"),
        ((_turn(), [fine], False), "no_job"),
    ]
    for args, want in cases:
        assert outcome(*args) == want, (args, want)
    assert {want for _, want in cases} == set(OUTCOMES)


def test_skill_use_is_a_rate_over_the_turns_that_fit():
    """Overflowing turns are counted apart and left out of the skill-use rate's n."""

    class Ctx:
        def __init__(self):
            self.metrics = {}

        def metric(self, name, value, *args, **kwargs):
            self.metrics[name] = value

        def __getattr__(self, name):
            return lambda *a, **k: None

    def turn(result):
        return {
            "message": "m",
            "turn": _turn(),
            "outcome": result,
            "requests": 1,
            "model_calls": [],
            "read_skill_file": False,
            "connects": None,
        }

    result = {
        "name": "default_agent",
        "variant": "default",
        "model": "local:smollm2-135m-agent",
        "slug": "agent",
        "turns": [turn("context_overflow")] * 3 + [turn("skill_ran"), turn("no_job"), turn("history_overflow")],
        "context_window": 8192,
        "system_prompt_chars": 100,
        "system_prompt_tokens": 30,
        "prompt_tokens": 8200,
        "tools_offered": 11,
        "tool_names": [],
        "tools_json_chars": 0,
        "skills_in_catalog": 1,
        "skill_name_in_prompt": True,
        "description_in_prompt": True,
    }
    ctx = Ctx()
    oc.report(ctx, [result], None)
    m = ctx.metrics
    assert m["context_overflow_default_agent"] == 3 and m["turns_default_agent"] == 6
    # a turn that fit and then outgrew the window is a skill miss the model had room to avoid
    assert m["history_overflow_default_agent"] == 1
    assert m["skill_use_default_agent"] == pytest.approx(1 / 3) and m["skill_use_default_agent_n"] == 3
    assert 0 < m["skill_use_default_agent_ci_low"] < 1 / 3 < m["skill_use_default_agent_ci_high"] < 1


def test_the_agent_model_runs_first_with_the_base_beside_it(monkeypatch):

    monkeypatch.delenv("LAB_LLM", raising=False)
    assert [model_slug(s) for s in model_specs(Config())] == ["agent", "base"]
    monkeypatch.setenv("LAB_LLM", "openai:gpt-4o@http://127.0.0.1:9/v1")  # --llm: that model alone
    assert [model_slug(s) for s in model_specs(Config())] == ["gpt_4o"]


def test_strace_log_parsing(tmp_path):
    log = tmp_path / "s.log"
    log.write_text(
        '12 connect(20, {sa_family=AF_INET, sin_port=htons(8088), sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
        '13 connect(21, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = 0\n'
        "14 connect(22, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), "
        'inet_pton(AF_INET6, "2606:4700::1", &sin6_addr), sin6_scope_id=0}, 28) = -1\n'
    )
    found = openclaw_runner.connect_destinations(log)
    assert found == ["127.0.0.1:8088", "unix:/run/x.sock", "2606:4700::1:443"]
    assert [openclaw_runner.is_loopback(d) for d in found] == [True, True, False]


# --- real OpenClaw ------------------------------------------------------------------------------


@needs_openclaw
def test_openclaw_loads_the_skill_from_an_isolated_workspace(tmp_path):
    setup = openclaw_runner.make_setup(
        tmp_path, base_url="http://127.0.0.1:9", api_key="sk-unused", model="m", context_window=8192, narrow=True
    )
    config = json.loads(setup.config.read_text())
    assert config["update"] == {"checkOnStart": False} and config["telemetry"] == {"enabled": False}
    skills = {s["name"]: s for s in openclaw_runner.skills_list(setup)}
    ours = skills["content-engine"]
    assert ours["eligible"] and ours["modelVisible"] and ours["source"] == "openclaw-workspace"
    assert ours["description"] == read_front_matter(SKILL_DIR / "SKILL.md")["description"]
    assert not any(setup.home.iterdir())  # nothing written to the isolated HOME: state went to its own folder


@pytest.mark.slow
@needs_openclaw
def test_tiny_run_overflow_counted_apart_and_control(tmp_path):
    """The exercise's tiny run: the tuned agent model in the default configuration (its first request is
    larger than the 8,192-token window: context_overflow, not a skill miss) and in the narrow one (its
    first request fits), and the scripted control."""

    doc = runner.execute(EXERCISE, "cpu", dict(EXERCISE.tiny), out=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("error")
    tables, m = doc["tables"], {k: v["value"] for k, v in doc["metrics"].items()}
    versions = dict(tables["toolchain"]["rows"])
    assert versions["openclaw"].startswith("OpenClaw 2026.") and versions["node"].startswith("v")
    configs = {row[0]: dict(zip(tables["configurations"]["columns"], row)) for row in tables["configurations"]["rows"]}
    # the default prompt sits right at the window and varies by ~20 tokens (OpenClaw writes a random temp
    # path into it about ten times), so which request of the turn crosses 8,192 is left to the outcome below
    assert configs["default"]["window declared"] == 8192
    assert configs["default"]["first request tokens"] > configs["narrow"]["first request tokens"]
    assert m["context_overflow_default_agent"] + m["history_overflow_default_agent"] == 1
    assert m["skill_use_default_agent_n"] == 1 - m["context_overflow_default_agent"]
    # the narrowed agent's first request fits, so its turn counts towards skill use whatever came after
    # (a later request may outgrow the window: history_overflow, a miss); each turn lands in one place
    assert configs["narrow"]["first request tokens"] < 8192
    assert m["context_overflow_narrow_agent"] == 0 and m["skill_use_narrow_agent_n"] == m["turns_narrow_agent"] == 1
    assert m["skill_visible"] == 1
    offered = dict((row[0], row[1]) for row in tables["tools_offered"]["rows"])["narrow_agent"].split(", ")
    assert sorted(offered) == ["exec", "read"]  # tool policy and toolSearch off reached the request
    turns = {row[0]: dict(zip(tables["turns"]["columns"], row)) for row in tables["turns"]["rows"]}
    assert turns["default_agent"]["outcome"] in ("context_overflow", "history_overflow")
    control = turns["control"]
    assert (
        control["outcome"] == "skill_ran" and control["read SKILL.md"] is True and m["control_skill_command_ran"] == 1
    )
    prompt = (Path(doc["_path"]).parent / "system_prompt_narrow_agent.txt").read_text()
    assert "<name>content-engine</name>" in prompt
    if shutil.which("strace"):
        assert m["non_loopback_connects"] == 0


def test_front_matter_parses_as_yaml_mapping():

    text = (SKILL_DIR / "SKILL.md").read_text()
    assert isinstance(yaml.safe_load(text.split("---")[1]), dict)
    assert Path(SCRIPT).stat().st_mode & 0o111  # executable, as a skill script is run directly too
