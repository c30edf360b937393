"""lab.llm.server.ensure_server (find or start the model server) and how a result names what answered."""

from __future__ import annotations

import socket

import pytest

from lab.context import RunContext
from lab.errors import MissingResource
from lab.llm import from_spec
from lab.llm.scripted_server import ScriptedServer, say
from lab.llm.server import ensure_server, probe, same_model
from lab.runner import with_llm
from phase13_react.research_agent import EXERCISE
from phase13_react.served import A100_MODEL, agent_llm
from phase16_capstone.scripted_llm import scripted_server

VLLM_CARD = {"id": A100_MODEL, "owned_by": "vllm", "root": A100_MODEL, "parent": None, "max_model_len": 16384}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_finds_a_vllm_server_and_keeps_the_spec():
    with ScriptedServer([say("hi")], models=[VLLM_CARD]) as srv:
        spec = f"openai:{A100_MODEL}@{srv.openai_url}"
        with ensure_server(spec) as served:
            assert (served.server, served.model, served.spec, served.started_here) == ("vLLM", A100_MODEL, spec, False)
            assert served.runs(A100_MODEL)


def test_a_server_holding_another_model_is_used_under_that_models_name():
    with ScriptedServer(
        [say("hi")],
        models=[{"id": "smollm2-135m-instruct", "owned_by": "lab"}, {"id": "all-minilm-l6-v2", "owned_by": "lab"}],
    ) as srv:
        with ensure_server(f"openai:{A100_MODEL}@{srv.openai_url}") as served:
            assert (served.server, served.model) == ("lab serve", "smollm2-135m-instruct")
            assert served.spec == f"openai:smollm2-135m-instruct@{srv.openai_url}"  # requests name what is served
            assert not served.runs(A100_MODEL)


def test_method_is_kept_only_when_the_seeds_model_answered(tmp_path):
    cards = {"llama": [VLLM_CARD], "other": [{"id": "Qwen/Qwen2.5-7B-Instruct", "owned_by": "vllm"}]}
    seen = {}
    for name, models in cards.items():
        for profile in ("a100", "cpu"):
            ctx = RunContext("phase13.react_loop", profile, tmp_path, quiet=True)
            with ScriptedServer([say("hi")], models=models) as srv:
                with agent_llm(ctx, f"openai:{A100_MODEL}@{srv.openai_url}") as (llm, _):
                    assert llm.chat([{"role": "user", "content": "x"}]).text == "hi"
            seen[name, profile] = ctx.method
            assert ctx.models[0]["server"] == "vLLM" and ctx.models[0]["served_model"] == models[0]["id"]
    assert seen["llama", "a100"] is None  # the declared method ("same") stands
    assert seen["other", "a100"] == (
        "substitute: Qwen/Qwen2.5-7B-Instruct (vLLM) in place of meta-llama/Llama-3.1-8B-Instruct"
    )
    assert seen["llama", "cpu"] is seen["other", "cpu"] is None  # the cpu profile says "scaled" by itself


def test_specs_without_an_endpoint_need_no_server():
    with ensure_server("local:smollm2-135m-instruct") as served:
        assert (served.server, served.model, served.base_url) == ("in-process", "smollm2-135m-instruct", None)
    with ensure_server("anthropic:claude-sonnet-4-5") as served:
        assert served.server == "hosted"


def test_nothing_answering_and_no_start_names_both_ways_to_start_one():
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert probe(url) is None
    with pytest.raises(MissingResource, match="make vllm"):
        with ensure_server(f"openai:{A100_MODEL}@{url}", start=False):
            pass


def test_same_model_ignores_owner_and_folder():
    assert same_model("/models/Llama-3.1-8B-Instruct", A100_MODEL)
    assert not same_model("meta-llama/Llama-3.1-70B-Instruct", A100_MODEL)


def test_llm_flag_replaces_the_profiles_model_but_not_an_explicit_set():

    assert with_llm(EXERCISE, "a100", {}, "local:x") == {"llm": "local:x"}
    assert with_llm(EXERCISE, "a100", {"llm": "local:y"}, "local:x") == {"llm": "local:y"}
    assert with_llm(EXERCISE, "cpu", {}, "local:x") == {}  # cpu names no model: the exercise reads $LAB_LLM


def test_starts_lab_serve_on_loopback_when_nothing_answers():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with ensure_server(
        f"openai:smollm2-135m-instruct@{url}", serve_spec="local:smollm2-135m-instruct", start_timeout_s=300
    ) as served:
        assert (served.server, served.model, served.started_here) == ("lab serve", "smollm2-135m-instruct", True)

        reply = from_spec(served.spec).chat([{"role": "user", "content": "Say hi."}], max_tokens=4)
        assert reply.usage.output_tokens > 0
    assert probe(url) is None  # the server started here stops with the block


def test_a_server_without_a_model_list_is_used_but_never_counted_as_the_seeds_model():

    with scripted_server() as (url, _):  # speaks chat completions only: GET /v1/models is a 404
        with ensure_server(f"openai:{A100_MODEL}@{url}") as served:
            assert served.spec == f"openai:{A100_MODEL}@{url}" and not served.runs(A100_MODEL)
            assert served.model.endswith("(unverified)")
