"""The embedded models are defined once (``lab.models.EMBEDDED_LLM``, ``EMBEDDED_EMBEDDER``, ``AGENT_LLM``):
code reads their records, behaviour follows their properties, never a spelled-out name. Fast: no model loads."""

import ast
from dataclasses import replace
from pathlib import Path

from lab import models
from lab.llm import DEFAULT_SPEC, gguf_models
from lab.paths import REPO_ROOT
from lab.serve.app import DEFAULT_EMBEDDERS
from phase13_react.served import AGENT_SPEC, BASE_SPEC


def test_the_defaults_are_the_records():

    assert models.EMBEDDED_LLM.key == models.DEFAULT_LLM and models.EMBEDDED_EMBEDDER.key == models.DEFAULT_EMBEDDER
    assert DEFAULT_SPEC == BASE_SPEC == f"local:{models.DEFAULT_LLM}"
    assert AGENT_SPEC == models.AGENT_SPEC == f"local:{models.AGENT_LLM}"
    assert DEFAULT_EMBEDDERS == (models.DEFAULT_EMBEDDER,)
    assert set(models.EMBEDDED) == {models.DEFAULT_LLM, models.DEFAULT_EMBEDDER}


def test_the_agent_model_is_named_after_the_chat_model_and_its_adapter_is_committed():
    assert models.DEFAULT_LLM.removesuffix("-instruct") + "-agent" == models.AGENT_LLM
    assert (models.PUBLISHED_ADAPTERS[models.AGENT_LLM] / "adapter_config.json").is_file()


def test_the_records_labels_are_what_method_strings_and_findings_say():
    llm = models.EMBEDDED_LLM
    assert llm.label == f"{llm.family}-{llm.size_label}" and llm.name == llm.hub_id.rsplit("/", 1)[-1]
    assert llm.label in llm.name and llm.member.endswith(f"{llm.name}.{llm.gguf_type}.gguf")
    assert llm.chat_template and llm.context_window and models.EMBEDDED_EMBEDDER.chat_template is None
    assert models.EMBEDDED_EMBEDDER.dim and models.EMBEDDED_EMBEDDER.gguf_type is None


def test_gguf_routing_follows_the_record_not_the_name(monkeypatch, tmp_path):
    """Another embedded GGUF chat model takes the same routes (llama.cpp plan, dequantized folder) by its
    properties alone; the embedder (no GGUF) takes none of them."""

    other = replace(models.EMBEDDED_LLM, key="other-chat-1b", hub_id="org/Other-Chat-1B", size_label="1B")
    monkeypatch.setattr(models, "EMBEDDED", {**models.EMBEDDED, other.key: other})
    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)
    for name in (other.key, other.hub_id):
        assert gguf_models.plan(name).base == other.key
        assert models.embedded(name) is other
    assert models.embedded_folder_key(str(tmp_path / "models" / "other-chat-1b-hf")) == other.key
    assert models.embedded_folder_key("/elsewhere/models/other-chat-1b-hf") == other.key  # by name, any machine
    assert (
        gguf_models.plan(models.DEFAULT_EMBEDDER) is None
        and models.transformers_folder(models.DEFAULT_EMBEDDER) is None
    )
    assert models.transformers_folder("org/not-embedded") is None
    assert models.embedded_folder_key(str(tmp_path / "models" / f"{models.DEFAULT_EMBEDDER}-hf")) is None


def _code_strings(path: Path):
    """(line, text) of every string constant in ``path`` that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_code_outside_lab_models_spells_an_embedded_models_name():
    """Changing an embedded model is a change of its record: config defaults, method strings, findings and
    model-specific branches read ``lab.models``. (Docstrings and comments are prose; tests pin values.)"""
    names = {models.AGENT_LLM, models.EMBEDDED_LLM.label, f"{models.EMBEDDED_LLM.size_label} "}
    for m in models.EMBEDDED.values():
        names |= {m.key, m.hub_id, m.name}
    found = []
    for path in sorted(REPO_ROOT.glob("*/**/*.py")):
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] in (".venv", "tests", "runs", "results") or rel == Path("lab/models.py"):
            continue
        found += [
            f"{rel}:{line}: {text[:80]!r}"
            for line, text in _code_strings(path)
            if any(n.lower() in text.lower() for n in names)
        ]
    assert not found, "\n".join(found)
