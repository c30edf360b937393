"""The two local engines behind ``local:`` models: the shared decoding loop, how an engine is chosen,
llama.cpp's sequences (concurrent calls batched, a full KV cache), and LoRA adapters converted once."""

import json
import threading

import pytest
import torch

from lab import models
from lab.artifacts import default_store
from lab.errors import ConfigError
from lab.llm.base import LLMError
from lab.llm.engine import LLAMA_CPP_NOTE, Engine, engine_runs, generation_note, select_engine
from lab.llm.gguf_models import plan
from lab.llm.llamacpp_engine import LlamaCppEngine
from lab.llm.local import LocalLLM

# --- the decoding loop every engine shares ------------------------------------------------------------


class ScriptedEngine(Engine):
    """Logits that make token ``k`` the argmax at step ``k``; records what the loop asked for."""

    name = "scripted"

    def __init__(self, script: list[int], vocab: int = 8, end: int = 7):
        super().__init__(tokenizer=None, context_window=64, vocab_size=vocab, end_ids={end})
        self.script, self.fed, self.finished = script, [], 0

    def _logits(self, step: int):
        logits = torch.zeros(self.vocab_size)
        logits[self.script[step]] = 1.0
        return logits

    def _start(self, ids, use_cache=True):
        self.fed.append(list(ids))
        return {"step": 0}, self._logits(0)

    def _advance(self, seq, token):
        self.fed.append([token])
        seq["step"] += 1
        return self._logits(seq["step"])

    def _finish(self, seq):
        self.finished += 1

    def reset_prefix_cache(self):
        pass

    def describe(self):
        return {"engine": self.name}


class OnlyEvenTokens:
    """A grammar stand-in: odd tokens are masked out; done after three tokens."""

    def __init__(self):
        self.accepted = []

    def apply(self, logits):
        logits[1::2] = float("-inf")

    def accept(self, token):
        self.accepted.append(token)

    @property
    def done(self):
        return len(self.accepted) == 3


def test_generate_is_greedy_stops_at_an_end_token_and_feeds_each_token_once():
    engine = ScriptedEngine([3, 5, 7, 1])
    assert list(engine.generate([1, 2], max_tokens=10)) == [3, 5, 7]  # the end token is yielded, then it stops
    assert engine.fed == [[1, 2], [3], [5]] and engine.finished == 1


def test_generate_respects_max_tokens_the_mask_and_closing_early():
    engine = ScriptedEngine([3, 5, 1, 2, 4, 6])
    assert list(engine.generate([0], max_tokens=2)) == [3, 5]
    mask = OnlyEvenTokens()
    assert list(ScriptedEngine([3, 5, 1, 2, 4]).generate([0], max_tokens=10, mask=mask)) == [0, 0, 0]
    assert mask.accepted == [0, 0, 0]  # odd argmaxes masked: the best allowed token is 0; done after three
    engine = ScriptedEngine([2, 4, 6, 2, 4])
    tokens = engine.generate([0], max_tokens=10)
    assert next(tokens) == 2
    tokens.close()
    assert engine.finished == 1  # closing the iterator frees the sequence


def test_the_llama_cpp_note_follows_the_run_that_generated_on_it_not_the_process():
    engine = ScriptedEngine([3, 7])
    engine.name = "llama.cpp"
    before = engine_runs()
    assert generation_note([], before) is None  # loaded earlier in the process, unused by this run
    list(engine.generate([0], max_tokens=4))
    assert generation_note([], before) == LLAMA_CPP_NOTE
    after = engine_runs()
    assert generation_note([], after) is None  # the next run starts clean
    engine.next_logits([0])
    assert generation_note([], after) == LLAMA_CPP_NOTE  # a judge's read counts too
    assert generation_note([{"engine": "llama.cpp 0.3.36 (Q8_0 GGUF)"}], after) == LLAMA_CPP_NOTE


def test_engine_selection_follows_the_model_the_machine_and_the_override(monkeypatch):
    monkeypatch.delenv("LAB_LOCAL_ENGINE", raising=False)
    assert select_engine(gguf_able=False) == "transformers"
    assert select_engine(gguf_able=True, requested="transformers") == "transformers"
    monkeypatch.setenv("LAB_LOCAL_ENGINE", "vllm")
    with pytest.raises(ConfigError, match="LAB_LOCAL_ENGINE='vllm'"):
        select_engine(gguf_able=True)
    monkeypatch.setenv("LAB_LOCAL_ENGINE", "llama.cpp")
    with pytest.raises(ConfigError, match="runs GGUF models"):
        select_engine(gguf_able=False)
    monkeypatch.setattr("lab.llm.engine.llama_cpp_unavailable", lambda: "this CPU lacks avx2")
    with pytest.raises(ConfigError, match="this CPU lacks avx2"):
        select_engine(gguf_able=True)
    monkeypatch.delenv("LAB_LOCAL_ENGINE")
    assert select_engine(gguf_able=True) == "transformers"  # auto falls back, never fails


def test_a_local_model_names_its_engine_without_loading_it(monkeypatch):
    monkeypatch.setattr("lab.llm.engine.llama_cpp_unavailable", lambda: None)
    monkeypatch.delenv("LAB_LOCAL_ENGINE", raising=False)
    llm = LocalLLM("smollm2-135m-instruct")
    assert llm.engine_name == "llama.cpp" and llm._engine is None  # what a parent records for its workers
    assert LocalLLM("smollm2-135m-instruct", engine="transformers").engine_name == "transformers"
    assert LocalLLM("meta-llama/Llama-3.1-8B-Instruct").engine_name == "transformers"


def test_which_models_have_a_gguf_route(tmp_path):

    assert plan("smollm2-135m-instruct").base == "smollm2-135m-instruct"
    assert plan("HuggingFaceTB/SmolLM2-135M-Instruct").base == "smollm2-135m-instruct"
    assert plan("meta-llama/Llama-3.1-8B-Instruct") is None
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert plan(str(gguf)).base == str(gguf)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/elsewhere/llm-systems-lab/models/smollm2-135m-instruct-hf"})
    )
    assert plan(str(adapter)).adapter == adapter  # trained on the embedded folder, on another machine
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}))
    assert plan(str(adapter)) is None


# --- llama.cpp: several sequences in one KV cache ------------------------------------------------------


@pytest.fixture(scope="module")
def fast():
    return LocalLLM("smollm2-135m-instruct", engine="llama.cpp")


def teacher_forced(engine, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """The log-probabilities the engine gives before each of ``tokens``, fed one by one."""
    seq, logits = engine._start(prompt, use_cache=False)
    out = []
    try:
        for token in tokens:
            out.append(torch.log_softmax(logits, -1))
            logits = engine._advance(seq, token)
    finally:
        engine._finish(seq)
    return out


@pytest.mark.slow
def test_concurrent_sequences_are_batched_without_crosstalk(fast):
    """Three threads decode at once: their steps share llama_decode batches, and each sequence gets
    the distributions it gets alone (equal up to llama.cpp's batch-size-dependent rounding; a mixed-up
    sequence or position would be off by whole nats)."""
    engine, tok = fast.engine, fast.tokenizer
    prompts = [
        fast._prompt([{"role": "user", "content": p}])[0]
        for p in ("Write a haiku about the sea.", "List three uses of Python.", "Say hello in French.")
    ]
    forced = tok("The quick brown fox jumps over the lazy dog and keeps running", add_special_tokens=False).input_ids
    alone = [teacher_forced(engine, p, forced) for p in prompts]
    together, batches = [None] * 3, []
    decode = engine._decode

    def counting(entries):
        batches.append(len(entries))
        return decode(entries)

    engine._decode = counting
    try:
        threads = [
            threading.Thread(target=lambda k=k: together.__setitem__(k, teacher_forced(engine, prompts[k], forced)))
            for k in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del engine._decode
    assert max(batches) > 1  # some steps decoded several sequences in one llama_decode
    kl = [float((x.exp() * (x - y)).sum()) for a, b in zip(alone, together) for x, y in zip(a, b)]  # per step
    assert max(kl) < 0.1 and sum(kl) / len(kl) < 0.02, kl
    assert fast.parallel_requests > 1


@pytest.mark.slow
def test_finished_sequences_leave_the_kv_cache_as_snapshots_and_come_back(fast):
    """Four 200-token prompts in a 512-token cache: each finished one moves out into the snapshot
    store, so they all fit one after another; asking again restores the stored prefix (nothing is
    recomputed but the last token); a prompt larger than the cache is a clear error."""

    small = LlamaCppEngine(fast.engine.gguf, fast.tokenizer, weights="Q8_0", kv_tokens=512)
    words = fast.tokenizer("alpha beta gamma delta " * 200, add_special_tokens=False).input_ids
    first = [small.next_logits([k] + words[:200]) for k in range(4)]
    assert len(small._snapshots) == 4 and small.prefix_stats.computed == 4 * 201
    again = small.next_logits([0] + words[:200])
    assert small.prefix_stats.computed == 4 * 201 + 1  # restored: only the last token ran
    a, b = torch.log_softmax(first[0], -1), torch.log_softmax(again, -1)
    assert float((a.exp() * (a - b)).sum()) < 0.02
    with pytest.raises(LLMError, match=r"KV cache \(512 tokens\) is full: \d+ new tokens do not fit"):
        small.next_logits(words[:600])


# --- LoRA adapters: converted once, applied by llama.cpp -------------------------------------------


@pytest.mark.slow
def test_a_peft_adapter_runs_on_llama_cpp_converted_once_and_matches_transformers(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (heavy: peft loads on first use)

    monkeypatch.setenv("LAB_ARTIFACTS", str(tmp_path / "store"))
    folder = models.hf_folder()
    model, tok = models.load_causal_lm()
    torch.manual_seed(0)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
    )
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(folder)

    msgs = [{"role": "user", "content": "Name three rivers in Europe."}]
    fast, slow = LocalLLM(str(adapter)), LocalLLM(str(adapter), engine="transformers")
    assert fast.describe()["adapter"] == "LoRA (GGUF)" and fast.describe()["engine"].startswith("llama.cpp")
    ids = fast._prompt(msgs)[0]
    a = torch.log_softmax(fast.engine.next_logits(ids), -1)
    b = torch.log_softmax(slow.engine.next_logits(ids), -1)
    base = torch.log_softmax(LocalLLM("smollm2-135m-instruct", engine="llama.cpp").engine.next_logits(ids), -1)
    kl = float((b.exp() * (b - a)).sum())
    assert kl < 0.05 and int(a.argmax()) == int(b.argmax())
    assert float((b.exp() * (b - base)).sum()) > 10 * kl  # the adapter really changed the model

    assert LocalLLM(str(adapter)).engine is not None  # a second client: the stored conversion is reused
    stored = [a for a in default_store().list() if a.recipe.name == "llm.gguf-lora"]
    assert len(stored) == 1
