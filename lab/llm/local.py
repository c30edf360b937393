"""A local transformers chat model (default: the embedded SmolLM2-135M-Instruct).

Small local models have no native tool calling or structured output. Tools are listed in the
system prompt in the Hermes format open models are trained on, and generation is constrained by
a grammar (``lab.llm.constrained``, xgrammar) whenever a reply has a shape to keep: a forced tool
call (``tool_choice="required"`` or a named tool), the tool-call branch under ``"auto"``, or a JSON
reply (``json_schema``). ``LocalLLM(..., constrained=False)`` keeps the same prompt without the
grammar: the prompt-only baseline that ``benchmarks/tool_calls.py`` compares against.

Greedy decoding at temperature 0 keeps runs repeatable. ``stream`` yields text as it is decoded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lab.llm.base import (
    LLM, ChatResponse, PromptTooLongError, ToolCall, Usage, json_instruction, normalize_tool_choice, tool_calls_of,
)
from lab.llm.constrained import (
    TOOL_CALL_OPEN, TOOL_RESPONSE, Constraint, Grammars, parse_tool_calls, render_tool_call, tools_prompt,
)
from lab.llm.prices import cost_usd


@dataclass
class _Request:
    """One prepared generation: model inputs, decoding arguments and what the reply must look like."""

    inputs: dict
    gen_kwargs: dict
    constraint: Constraint
    tools: list[dict[str, Any]]
    stop: list[str]
    processors: list = field(default_factory=list)

    @property
    def n_in(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def streams_text(self) -> bool:
        """A forced tool call has no text to stream; everything else streams as it decodes."""
        return not self.constraint.forces_call

    def constrained_by(self, constraint: Constraint, grammars: Grammars) -> "_Request":
        """This request decoded under another constraint (a tighter retry)."""
        processors = [grammars.logits_processor(constraint)]
        return _Request(self.inputs, {**self.gen_kwargs, "logits_processor": processors}, constraint, self.tools,
                        self.stop, processors)


class LocalLLM(LLM):
    provider = "local"

    def __init__(self, model: str, constrained: bool = True):
        super().__init__(model)
        self.constrained = constrained
        self._model = None
        self._tok = None
        self._grammars: Grammars | None = None
        # one generation at a time per model: callers in several threads (a server and an exercise in
        # one process) queue here instead of interleaving two generate() calls on one model
        self._busy = threading.RLock()

    def _load(self):
        if self._model is not None:  # loaded: no need to wait for a generation that holds the lock
            return self._model, self._tok
        with self._busy:  # two threads asking first must not load the model twice
            return self._load_once()

    def _load_once(self):
        if self._model is None:
            import torch

            from lab import models

            path = Path(self.model).expanduser()
            if path.suffix == ".gguf" and path.exists():
                from transformers import AutoModelForCausalLM, AutoTokenizer

                tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            else:
                dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
                model, tok = models.load_causal_lm(self.model, dtype=dtype)
                if torch.cuda.is_available():
                    model.to("cuda")
            model.eval()
            # published last, model after tokenizer: _load's lock-free path sees both ready or neither
            self._tok, self._model = tok, model
        return self._model, self._tok

    @property
    def tokenizer(self):
        return self._load()[1]

    @property
    def context_window(self) -> int:
        """Tokens the model attends over (prompt + reply); longer prompts are refused, not truncated."""
        config = self._load()[0].config
        return int(getattr(config, "max_position_embeddings", 0) or 2048)

    def describe(self) -> dict[str, Any]:
        model, _ = self._load()
        return {
            "id": self.spec,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "n_params": sum(p.numel() for p in model.parameters()),
            "quantization": "Q4_1 GGUF, dequantized" if "smollm2" in self.model.lower() else None,
            "constrained_decoding": "xgrammar" if self.constrained else None,
        }

    # --- prompt -------------------------------------------------------------------------------

    @staticmethod
    def _chat_turns(messages: list[dict[str, Any]], system: str | None = None,
                    extra_system: list[str] = ()) -> list[dict[str, str]]:
        """Our messages as the plain turns a chat template understands.

        System texts (the ``system`` argument, system turns, the tool listing) become one system turn;
        assistant tool calls are written as ``<tool_call>`` blocks and tool results as a user turn of
        ``<tool_response>`` blocks (consecutive results share one turn), as Hermes-format models expect.
        """
        systems = [system] if system else []
        turns: list[dict[str, str]] = []
        for m in messages:
            role, content = m["role"], m.get("content")
            text = content if isinstance(content, str) else json.dumps(content) if content is not None else ""
            if role == "system":
                systems.append(text)
            elif role == "tool":
                block = TOOL_RESPONSE.format(text)
                if turns and turns[-1]["role"] == "user" and turns[-1]["content"].startswith("<tool_response>"):
                    turns[-1]["content"] += "\n" + block
                else:
                    turns.append({"role": "user", "content": block})
            elif role == "assistant" and (calls := tool_calls_of(m)):
                turns.append({"role": "assistant",
                              "content": "\n".join(filter(None, [text] + [render_tool_call(c) for c in calls]))})
            else:
                turns.append({"role": role, "content": text})
        systems += list(extra_system)
        return ([{"role": "system", "content": "\n\n".join(systems)}] if systems else []) + turns

    def _prompt(self, messages, system=None, tools=None, json_schema=None, tool_choice="auto"):
        """(model inputs, the tools offered, tool-choice mode, forced tool name) of one request."""
        mode, name = normalize_tool_choice(tool_choice, tools)
        offered = [t for t in tools or [] if mode != "named" or t["name"] == name] if mode != "none" else []
        extra = ([tools_prompt(offered)] if offered else []) + ([json_instruction(json_schema)] if json_schema else [])
        model, tok = self._load()
        turns = self._chat_turns(messages, system, extra)
        inputs = tok.apply_chat_template(turns, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return {k: v.to(model.device) for k, v in inputs.items()}, offered, mode, name

    def count_tokens(self, messages, system=None, tools=None, json_schema=None, tool_choice="auto", **_) -> int:
        return int(self._prompt(messages, system, tools, json_schema, tool_choice)[0]["input_ids"].shape[1])

    def _prepare(self, messages, system, tools, max_tokens, temperature, json_schema, tool_choice,
                 parallel_tool_calls, stop) -> _Request:
        inputs, offered, mode, name = self._prompt(messages, system, tools, json_schema, tool_choice)
        model, tok = self._load()
        n_in = int(inputs["input_ids"].shape[1])
        if n_in >= self.context_window:
            raise PromptTooLongError(f"{self.spec}: the prompt is {n_in} tokens; the model's context window is "
                                     f"{self.context_window} tokens")
        max_tokens = min(max_tokens, self.context_window - n_in)
        constraint = Constraint.of(offered, mode if offered else "none", name, parallel_tool_calls, json_schema)
        pad = tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_tokens, pad_token_id=pad)
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        processors = []
        if self.constrained and constraint.active:
            if self._grammars is None:
                self._grammars = Grammars(tok, model.config.vocab_size)
            processors = [self._grammars.logits_processor(constraint)]
            gen_kwargs["logits_processor"] = processors
            stop = None  # a stop string could cut a constrained reply in two: the grammar ends it
        if stop:
            gen_kwargs.update(stop_strings=list(stop), tokenizer=tok)
        return _Request(inputs, gen_kwargs, constraint, offered, list(stop or []), processors)

    # --- reply --------------------------------------------------------------------------------

    def _response(self, req: _Request, raw: str, new_ids: list[int], latency: float) -> ChatResponse:
        """The reply; a grammar-bound reply that did not reach its end token was cut off by the budget."""
        text, stopped = _cut_at_stop(raw.strip(), req.stop)
        calls: list[ToolCall] = []
        if req.tools:  # only complete <tool_call> blocks count: under a grammar each one validates
            text, calls = parse_tool_calls(text, req.tools)
        ended = bool(new_ids) and new_ids[-1] in self._end_ids
        stop = "tool_use" if calls else "stop_sequence" if stopped else "end_turn" if ended else "max_tokens"
        n_out = len(new_ids)
        return ChatResponse(
            text=text, provider=self.provider, model=self.model, tool_calls=calls,
            usage=Usage(req.n_in, n_out), latency_s=latency,
            cost_usd=cost_usd("local", self.model, req.n_in, n_out), stop_reason=stop,
            stop_sequence=stopped if stop == "stop_sequence" else None,
        )

    @property
    def _end_ids(self) -> set[int]:
        model, tok = self._load()
        ids = model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids]) | {tok.eos_token_id}
        return {i for i in ids if i is not None}

    def chat(self, messages, system=None, tools=None, max_tokens=512, temperature=0.0, json_schema=None,
             tool_choice="auto", parallel_tool_calls=True, stop=None) -> ChatResponse:
        """One reply. A grammar-bound reply cut off by the budget is decoded again with tighter bounds
        (``constrained.BOUNDS``); usage and latency count every attempt."""
        import torch

        req = self._prepare(messages, system, tools, max_tokens, temperature, json_schema, tool_choice,
                            parallel_tool_calls, stop)
        model, tok = self._load()
        spent_tokens, spent_s = 0, 0.0
        while True:
            start = time.perf_counter()
            with self._busy, torch.inference_mode():
                out = model.generate(**req.inputs, **req.gen_kwargs)
            new = out[0, req.n_in:].tolist()
            reply = self._response(req, tok.decode(new, skip_special_tokens=True), new, time.perf_counter() - start)
            tighter = req.constraint.tighter() if _cut_inside_grammar(reply, req) else None
            if tighter is None:
                break
            spent_tokens, spent_s = spent_tokens + reply.usage.output_tokens, spent_s + reply.latency_s
            req = req.constrained_by(tighter, self._grammars)
        reply.usage.output_tokens += spent_tokens
        reply.latency_s += spent_s
        return reply

    def stream(self, messages, system=None, tools=None, max_tokens=512, temperature=0.0, json_schema=None,
               tool_choice="auto", parallel_tool_calls=True, stop=None) -> Iterator[str | ChatResponse]:
        """Text deltas while the model decodes (in a worker thread), then the ChatResponse.

        What is released is exactly what the final reply's ``text`` holds: leading and trailing
        whitespace, a possible start of ``<tool_call>`` and of a stop string are held back until
        the following tokens show what they are. Closing the iterator stops generation.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        req = self._prepare(messages, system, tools, max_tokens, temperature, json_schema, tool_choice,
                            parallel_tool_calls, stop)
        if not req.streams_text:  # a forced call comes whole (and may need a tighter retry): no deltas
            yield self.chat(messages, system, tools, max_tokens, temperature, json_schema, tool_choice,
                            parallel_tool_calls, stop)
            return
        model, tok = self._load()
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                with self._busy, torch.inference_mode():
                    outcome["ids"] = model.generate(**req.inputs, **req.gen_kwargs, streamer=streamer,
                                                    stopping_criteria=StoppingCriteriaList([Cancelled()]))
            except BaseException as exc:  # re-raised in the caller's thread below
                outcome["error"] = exc
                streamer.end()

        start = time.perf_counter()
        worker = threading.Thread(target=generate, name="local-llm-generate", daemon=True)
        worker.start()
        raw, released = "", 0
        try:
            for piece in streamer:
                raw += piece
                if req.streams_text:
                    safe = _releasable(raw, req)
                    if len(safe) > released:
                        yield safe[released:]
                        released = len(safe)
        finally:
            cancel.set()  # a no-op when generation already ended; stops it when the caller left early
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        reply = self._response(req, raw, outcome["ids"][0, req.n_in:].tolist(), time.perf_counter() - start)
        if req.streams_text and len(reply.text) > released:  # what was held back and turned out to be text
            yield reply.text[released:]
        yield reply

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
        Either way only the last position is projected onto the vocabulary (``logits_to_keep=1``).
        """
        import torch

        model, tok = self._load()
        turns = self._chat_turns(messages, system)
        prompt = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) + prefix
        ids = tok(prompt).input_ids
        choice_ids = []
        for choice in choices:
            toks = tok.encode(choice, add_special_tokens=False)
            if len(toks) != 1:
                raise ValueError(f"choice {choice!r} is {len(toks)} tokens; choices must be single tokens")
            choice_ids.append(toks[0])
        with self._busy, torch.inference_mode():
            if use_prefix_cache:
                logits = self._cached_next_logits(model, ids)
            else:
                logits = model(torch.tensor([ids], device=model.device), **_last_logit_only(model)).logits[0, -1]
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
        out = model(torch.tensor([ids[common:]], device=model.device), cache=cache, use_cache=True,
                    **_last_logit_only(model))
        entries.append((list(ids), cache))  # the DynamicCache was extended in place
        self.prefix_cache_stats["computed"] += len(ids) - common
        self.prefix_cache_stats["requested"] += len(ids)
        return out.logits[0, -1]


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """(``text`` up to the first stop string, that string): transformers stops after it, the APIs omit it."""
    hits = sorted((i, s) for s in stops if (i := text.find(s)) >= 0)
    return (text[: hits[0][0]].rstrip(), hits[0][1]) if hits else (text, None)


def _cut_inside_grammar(reply: ChatResponse, req: _Request) -> bool:
    """Did the budget end a reply whose shape the grammar holds (a call, or a JSON reply) half-way?"""
    if not req.processors or reply.stop_reason != "max_tokens" or reply.tool_calls:
        return False
    return req.constraint.forces_call or req.constraint.json_schema is not None or TOOL_CALL_OPEN in reply.text


def _releasable(raw: str, req: _Request) -> str:
    """The prefix of a partial reply that the final reply's text is sure to start with."""
    text = raw.lstrip()
    end = len(text)
    for marker in ([TOOL_CALL_OPEN] if req.tools else []) + req.stop:
        at = text.find(marker)
        if at >= 0:
            end = min(end, at)
            continue
        for k in range(min(len(marker) - 1, len(text)), 0, -1):  # a possible start of the marker
            if text.endswith(marker[:k]):
                end = min(end, len(text) - k)
                break
    return text[:end].rstrip()


def _last_logit_only(model) -> dict[str, int]:
    """``logits_to_keep=1`` where the model's forward takes it: only the next token's logits are read,
    and projecting every prompt position onto the vocabulary (49k rows for SmolLM2) costs about a
    fifth of a 135M model's forward pass for nothing."""
    import inspect

    takes = getattr(model, "_lab_takes_logits_to_keep", None)
    if takes is None:
        takes = "logits_to_keep" in inspect.signature(model.forward).parameters
        model._lab_takes_logits_to_keep = takes
    return {"logits_to_keep": 1} if takes else {}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
