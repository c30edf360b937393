"""A local transformers chat model (default: the embedded SmolLM2-135M-Instruct).

Small local models have no native tool calling or structured output, so both are done by prompt:
tools are listed in the system prompt and a reply of the form ``{"tool": name, "arguments": {...}}``
becomes a ToolCall; a JSON schema is appended as an instruction and parsed by the caller.
Greedy decoding at temperature 0 keeps runs repeatable.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from lab.llm.base import (
    LLM, ChatResponse, JSONReplyError, ToolCall, Usage, json_instruction, parse_json_reply, tool_calls_of,
)
from lab.llm.prices import cost_usd


class LocalLLM(LLM):
    provider = "local"

    def __init__(self, model: str):
        super().__init__(model)
        self._model = None
        self._tok = None

    def _load(self):
        if self._model is None:
            import torch

            from lab import models

            path = Path(self.model).expanduser()
            if path.suffix == ".gguf" and path.exists():
                from transformers import AutoModelForCausalLM, AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                self._model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            else:
                dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
                self._model, self._tok = models.load_causal_lm(self.model, dtype=dtype)
                if torch.cuda.is_available():
                    self._model.to("cuda")
            self._model.eval()
        return self._model, self._tok

    @property
    def tokenizer(self):
        return self._load()[1]

    def describe(self) -> dict[str, Any]:
        model, _ = self._load()
        return {
            "id": self.spec,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "n_params": sum(p.numel() for p in model.parameters()),
            "quantization": "Q4_1 GGUF, dequantized" if "smollm2" in self.model.lower() else None,
        }

    def _system_prompt(self, system: str | None, tools, json_schema) -> str | None:
        parts = [system] if system else []
        if tools:
            listing = "\n".join(
                f"- {t['name']}: {t.get('description', '')} arguments schema: {json.dumps(t.get('input_schema', {}))}"
                for t in tools
            )
            parts.append(
                "You can call these tools:\n" + listing + "\nTo call one, reply with only "
                '{"tool": "<name>", "arguments": {...}}. Otherwise reply with your answer.'
            )
        if json_schema:
            parts.append(json_instruction(json_schema))
        return "\n\n".join(parts) or None

    @staticmethod
    def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Tool requests/results become ordinary turns the chat template understands."""
        out = []
        for m in messages:
            if m["role"] == "tool":
                out.append({"role": "user", "content": f"Tool {m.get('name', '')} returned: {m['content']}"})
            elif m.get("tool_calls"):
                calls = [{"tool": c.name, "arguments": c.arguments} for c in tool_calls_of(m)]
                out.append({"role": "assistant", "content": json.dumps(calls[0] if len(calls) == 1 else calls)})
            else:
                out.append({"role": m["role"], "content": str(m["content"])})
        return out

    def chat(self, messages, system=None, tools=None, max_tokens=512, temperature=0.0, json_schema=None) -> ChatResponse:
        import torch

        model, tok = self._load()
        sys_prompt = self._system_prompt(system, tools, json_schema)
        turns = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + self._plain_messages(messages)
        inputs = tok.apply_chat_template(turns, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        n_in = inputs["input_ids"].shape[1]
        pad = tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_tokens, pad_token_id=pad)
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs)
        latency = time.perf_counter() - start
        new = out[0, n_in:]
        text = tok.decode(new, skip_special_tokens=True).strip()
        n_out = int(new.shape[0])
        stop = "max_tokens" if n_out >= max_tokens else "end_turn"
        calls = self._tool_calls(text, tools)
        return ChatResponse(
            text=text, provider=self.provider, model=self.model, tool_calls=calls,
            usage=Usage(n_in, n_out), latency_s=latency, cost_usd=cost_usd("local", self.model, n_in, n_out),
            stop_reason="tool_use" if calls else stop,
        )

    def choice_probs(self, messages, choices: list[str], system: str | None = None, prefix: str = "",
                     use_prefix_cache: bool = True) -> dict[str, float]:
        """Probability of each single-token choice as the next token of the assistant's reply.

        Constrained choice for small local models that cannot be relied on to emit valid JSON:
        e.g. a judge reads P("1".."5") for one rubric dimension instead of parsing free text.
        ``prefix`` is text already placed at the start of the assistant turn ("Score: ").

        A judge asks one such question per rubric dimension, each sharing long prompt prefixes with
        earlier calls, so the KV caches of the last ``PREFIX_SLOTS`` calls are kept and a new call
        only runs the tokens after its longest cached common prefix (same logits as a full forward
        pass; ``use_prefix_cache=False`` runs the full pass). ``prefix_cache_stats`` counts the saving.
        """
        import torch

        model, tok = self._load()
        turns = ([{"role": "system", "content": system}] if system else []) + self._plain_messages(messages)
        prompt = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) + prefix
        ids = tok(prompt).input_ids
        choice_ids = []
        for choice in choices:
            toks = tok.encode(choice, add_special_tokens=False)
            if len(toks) != 1:
                raise ValueError(f"choice {choice!r} is {len(toks)} tokens; choices must be single tokens")
            choice_ids.append(toks[0])
        with torch.inference_mode():
            if use_prefix_cache:
                logits = self._cached_next_logits(model, ids)
            else:
                logits = model(torch.tensor([ids], device=model.device)).logits[0, -1]
        probs = torch.softmax(logits[choice_ids].float(), dim=-1).tolist()
        return dict(zip(choices, probs))

    PREFIX_SLOTS = 12

    def reset_prefix_cache(self) -> None:
        self._prefix_entries: list[tuple[list[int], Any]] = []  # (token ids, DynamicCache), most recent last
        self.prefix_cache_stats = {"computed": 0, "requested": 0}  # tokens run vs tokens a full pass runs

    def _cached_next_logits(self, model, ids: list[int]):
        import copy

        import torch
        from transformers import DynamicCache

        if not hasattr(self, "_prefix_entries"):
            self.reset_prefix_cache()
        entries = self._prefix_entries
        best, common = None, 0
        for k, (cached_ids, _) in enumerate(entries):
            n = _common_prefix(cached_ids, ids)
            if n > common:
                best, common = k, n
        common = min(common, len(ids) - 1)  # at least one new token, to get the next-token logits
        if best is None or common == 0:
            cache, common = DynamicCache(), 0
        elif common == len(entries[best][0]):  # a pure extension: grow that entry in place
            cache = entries.pop(best)[1]
        else:  # a partial match: copy, so the entry stays usable for the calls that match it fully
            cached_ids, cached = entries[best]
            cache = copy.deepcopy(cached)
            cache.crop(common - len(cached_ids))
        if len(entries) >= self.PREFIX_SLOTS:
            entries.pop(0)
        out = model(torch.tensor([ids[common:]], device=model.device), cache=cache, use_cache=True)
        entries.append((list(ids), cache))  # the DynamicCache was extended in place
        self.prefix_cache_stats["computed"] += len(ids) - common
        self.prefix_cache_stats["requested"] += len(ids)
        return out.logits[0, -1]

    @staticmethod
    def _tool_calls(text: str, tools) -> list[ToolCall]:
        if not tools:
            return []
        try:
            reply = parse_json_reply(text)
        except JSONReplyError:  # a plain-text answer, not a tool call
            return []
        names = {t["name"] for t in tools}
        if isinstance(reply, dict) and reply.get("tool") in names and isinstance(reply.get("arguments", {}), dict):
            return [ToolCall(id=f"local-{uuid.uuid4().hex[:8]}", name=reply["tool"], arguments=reply.get("arguments", {}))]
        return []


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
