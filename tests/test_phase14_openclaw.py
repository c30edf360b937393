"""Phase 14 — OpenClaw and the content-engine skill.

The skill's command is tested against the engine-API double (its wire contract); the skill is
loaded by the real, pinned OpenClaw (``openclaw skills list``); and the exercise's tiny run makes
exactly two real OpenClaw turns: one against ``lab serve`` with the embedded model, one against a
scripted OpenAI-wire model (the control that exercises read → exec → POST /jobs). OpenClaw is a
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

from lab import runner
from lab.toolchain import node_bin, openclaw_bin
from phase14_frameworks import openclaw_runner
from phase14_frameworks.engine_double import EngineDouble
from phase14_frameworks.model_recorder import Exchange, parse_reply
from phase14_frameworks.openclaw_runner import SKILLS_DIR, read_front_matter
from phase14_frameworks.scripted_model import next_step, skill_location, topic_of

SKILL_DIR = SKILLS_DIR / "content-engine"
SCRIPT = SKILL_DIR / "scripts" / "content_engine.py"
needs_openclaw = pytest.mark.skipif(node_bin() is None or openclaw_bin() is None,
                                    reason="Node/OpenClaw not installed in <venv>/node (run `make setup`)")


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
    import httpx

    _, url = engine
    reply = httpx.post(f"{url}/jobs", json={"topic": ""})
    assert reply.status_code == 422 and "topic" in reply.text


# --- the pieces the exercise measures with (no OpenClaw needed) ----------------------------------

def test_recorder_reads_a_streamed_tool_call():
    ex = Exchange({"messages": [{"role": "system", "content": "<name>a&amp;b</name>"}, {"role": "user", "content": "hi"}],
                   "tools": [{"type": "function", "function": {"name": "exec", "parameters": {}}}]})
    stream = (b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"exec","arguments":"{\\"comm"}}]}}]}\n\n'
              b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"and\\": 1}"}}]}}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":7}}\n\ndata: [DONE]\n\n')
    parse_reply(ex, stream, "text/event-stream")
    assert ex.reply_tool_calls == [{"name": "exec", "arguments": '{"command": 1}'}]
    assert ex.usage == {"prompt_tokens": 7} and ex.tool_names == ["exec"] and ex.mentions("<name>a&b</name>")


def test_scripted_model_follows_the_skill_catalog():
    system = ("<available_skills>\n  <skill>\n    <name>content-engine</name>\n    <description>x</description>\n"
              "    <location>/w/skills/content-engine/SKILL.md</location>\n  </skill>\n</available_skills>")
    assert skill_location(system, "content-engine") == "/w/skills/content-engine/SKILL.md"
    assert topic_of("Start a content-engine job about vector databases.\n\nRuntime: ...") == "vector databases"
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "Write about RAG."}]}
    assert next_step(body, "content-engine") == {"name": "read", "arguments": {"path": "/w/skills/content-engine/SKILL.md"}}
    body["messages"].append({"role": "tool", "content": "skill text"})
    command = next_step(body, "content-engine")["arguments"]["command"]
    assert command == "python3 /w/skills/content-engine/scripts/content_engine.py start RAG"


def test_strace_log_parsing(tmp_path):
    log = tmp_path / "s.log"
    log.write_text('12 connect(20, {sa_family=AF_INET, sin_port=htons(8088), sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
                   '13 connect(21, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = 0\n'
                   '14 connect(22, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
                   'inet_pton(AF_INET6, "2606:4700::1", &sin6_addr), sin6_scope_id=0}, 28) = -1\n')
    found = openclaw_runner.connect_destinations(log)
    assert found == ["127.0.0.1:8088", "unix:/run/x.sock", "2606:4700::1:443"]
    assert [openclaw_runner.is_loopback(d) for d in found] == [True, True, False]


# --- real OpenClaw ------------------------------------------------------------------------------

@needs_openclaw
def test_openclaw_loads_the_skill_from_an_isolated_workspace(tmp_path):
    setup = openclaw_runner.make_setup(tmp_path, base_url="http://127.0.0.1:9", api_key="sk-unused",
                                       model="m", context_window=8192, narrow=True)
    config = json.loads(setup.config.read_text())
    assert config["update"] == {"checkOnStart": False} and config["telemetry"] == {"enabled": False}
    skills = {s["name"]: s for s in openclaw_runner.skills_list(setup)}
    ours = skills["content-engine"]
    assert ours["eligible"] and ours["modelVisible"] and ours["source"] == "openclaw-workspace"
    assert ours["description"] == read_front_matter(SKILL_DIR / "SKILL.md")["description"]
    assert not any(setup.home.iterdir())  # nothing written to the isolated HOME: state went to its own folder


@needs_openclaw
def test_two_real_turns_real_model_and_control(tmp_path):
    """The exercise's tiny run: one turn of the embedded model through lab serve, one scripted control."""
    from phase14_frameworks.openclaw_skill import EXERCISE

    doc = runner.execute(EXERCISE, "cpu", dict(EXERCISE.tiny), out=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("error")
    tables = doc["tables"]
    versions = dict(tables["toolchain"]["rows"])
    assert versions["openclaw"].startswith("OpenClaw 2026.") and versions["node"].startswith("v")
    turns = {row[0]: dict(zip(tables["turns"]["columns"], row)) for row in tables["turns"]["rows"]}
    narrow, control = turns["narrow"], turns["control"]
    # the real model's turn: OpenClaw reached lab serve and sent the skill catalog; what it did is recorded
    assert narrow["exit"] in (0, 1, 2) and narrow["model requests"] >= 1
    assert narrow["description in prompt"] is True and doc["metrics"]["skill_visible"]["value"] == 1
    assert narrow["system prompt tokens"] > 0
    offered = dict((row[0], row[1]) for row in tables["tools_offered"]["rows"])["narrow"].split(", ")
    assert {"read", "exec"} <= set(offered) and "write" not in offered  # tool policy reached the request
    # the control turn used the skill end to end: read SKILL.md, exec the script, the API got POST /jobs
    assert control["exit"] == 0 and control["read SKILL.md"] is True and control["skill command ran"] is True
    assert doc["metrics"]["control_skill_command_ran"]["value"] == 1
    prompt = (Path(doc["_path"]).parent / "system_prompt_narrow.txt").read_text()
    assert "<name>content-engine</name>" in prompt
    if shutil.which("strace"):
        assert doc["metrics"]["non_loopback_connects"]["value"] == 0


def test_front_matter_parses_as_yaml_mapping():
    import yaml

    text = (SKILL_DIR / "SKILL.md").read_text()
    assert isinstance(yaml.safe_load(text.split("---")[1]), dict)
    assert Path(SCRIPT).stat().st_mode & 0o111  # executable, as a skill script is run directly too
