"""A local chat model (default: the embedded SmolLM2-135M-Instruct), on the fastest engine that runs it.

The provider speaks chat; an engine (``lab.llm.engine``) runs the forward passes: llama.cpp for
GGUF models on a CPU (the embedded SmolLM2 as Q8_0, a ``.gguf`` file, a LoRA adapter on either),
transformers for any other Hugging Face model or on a GPU. ``describe()`` names the engine a run
used; ``LAB_LOCAL_ENGINE`` (or ``LocalLLM(..., engine=...)``) forces one.

Small local models have no native tool calling or structured output. Tools are listed in the
system prompt in the Hermes format open models are trained on, and generation is constrained by
a grammar (``lab.llm.constrained``, xgrammar) whenever a reply has a shape to keep: a forced tool
call (``tool_choice="required"`` or a named tool), the tool-call branch under ``"auto"``, or a JSON
reply (``json_schema``). ``LocalLLM(..., constrained=False)`` keeps the same prompt without the
grammar: the prompt-only baseline that ``benchmarks/tool_calls.py`` compares against.

Greedy decoding at temperature 0 keeps runs repeatable. ``stream`` yields text as it is decoded.
Both engines keep recent KV caches, so an agent resending its growing conversation, or a judge
asking one question per rubric dimension, only pays for the tokens after the shared prefix.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lab.llm import gguf_models
from lab.llm.base import (
    LLM,
    ChatResponse,
    PromptTooLongError,
    ToolCall,
    Usage,
    json_instruction,
    normalize_tool_choice,
    tool_calls_of,
)
from lab.llm.constrained import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE,
    Constraint,
    Grammars,
    parse_tool_calls,
    render_tool_call,
    repeated_call_at,
    tools_prompt,
)
from lab.llm.engine import Engine, select_engine
from lab.llm.hf_engine import TransformersEngine
from lab.llm.llamacpp_engine import LlamaCppEngine
from lab.llm.prices import cost_usd


@dataclass
class _Request:
    """One prepared generation: prompt tokens, decoding arguments and what the reply must look like."""

    ids: list[int]
    max_tokens: int
    temperature: float
    constraint: Constraint
    tools: list[dict[str, Any]]
    stop: list[str]
    grammar: bool  # decoded under the constraint's grammar

    @property
    def n_in(self) -> int:
        return len(self.ids)

    @property
    def streams_text(self) -> bool:
        """A forced tool call has no text to stream; everything else streams as it decodes."""
        return not self.constraint.forces_call

    def constrained_by(self, constraint: Constraint) -> _Request:
        """This request decoded under another constraint (a tighter retry)."""
        return _Request(self.ids, self.max_tokens, self.temperature, constraint, self.tools, self.stop, True)


def chat_turns(
    messages: list[dict[str, Any]], system: str | None = None, extra_system: Sequence[str] = ()
) -> list[dict[str, str]]:
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
            turns.append(
                {"role": "assistant", "content": "\n".join(filter(None, [text] + [render_tool_call(c) for c in calls]))}
            )
        else:
            turns.append({"role": role, "content": text})
    systems += list(extra_system)
    return ([{"role": "system", "content": "\n\n".join(systems)}] if systems else []) + turns


class LocalLLM(LLM):
    provider = "local"
    scores_choices = True  # choice_probs reads the next-token distribution of its own forward pass

    def __init__(self, model: str, constrained: bool = True, engine: str | None = None):
        super().__init__(model)
        self.constrained = constrained
        self.engine_request = engine
        self._engine: Engine | None = None
        self._grammars: Grammars | None = None
        self._loading = threading.Lock()  # two threads asking first must not load the model twice

    @property
    def engine(self) -> Engine:
        """The engine running this model, loaded on first use."""
        if self._engine is None:
            with self._loading:
                if self._engine is None:
                    self._engine = self._open_engine()
        return self._engine

    @property
    def engine_name(self) -> str:
        """The engine this model runs on, known without loading it (a parent process records what the
        workers it starts will run)."""
        if self._engine is not None:
            return self._engine.name

        return select_engine(gguf_models.plan(self.model) is not None, self.engine_request)

    def _open_engine(self) -> Engine:

        if self.engine_name == "llama.cpp":
            route = gguf_models.plan(self.model)
            assert route is not None  # select_engine picks llama.cpp only for a model with a GGUF plan
            path, weights = route.gguf()
            return LlamaCppEngine(path, route.tokenizer(), lora=route.lora(), weights=weights)

        return TransformersEngine(self.model)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def context_window(self) -> int:
        """Tokens the model attends over (prompt + reply); longer prompts are refused, not truncated."""
        return self.engine.context_window

    @property
    def parallel_requests(self) -> int:  # type: ignore[override]  # the engine's batch size, known once it loads
        return self.engine.parallel

    @property
    def grammars(self) -> Grammars:
        if self._grammars is None:
            with self._loading:
                if self._grammars is None:
                    self._grammars = Grammars(self.engine.tokenizer, self.engine.vocab_size)
        return self._grammars

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.spec,
            **self.engine.describe(),
            "constrained_decoding": "xgrammar" if self.constrained else None,
        }

    # --- prompt -------------------------------------------------------------------------------

    @functools.cached_property
    def max_prompt_chars(self) -> int:
        """Characters past which a prompt cannot fit the context window, whatever it says: no token stands
        for more characters than the vocabulary's longest token is spelled with (a byte-level vocabulary
        spells each byte as one character; SmolLM2's longest token is 81). A longer prompt is refused
        before it is tokenized: 5 MB of text took seconds and 600 MB to tokenize, only to be refused."""
        return self.context_window * max(map(len, self.tokenizer.get_vocab()))

    def _prompt(self, messages, system=None, tools=None, json_schema=None, tool_choice="auto"):
        """(prompt token ids, the tools offered, tool-choice mode, forced tool name) of one request."""
        mode, name = normalize_tool_choice(tool_choice, tools)
        offered = [t for t in tools or [] if mode != "named" or t["name"] == name] if mode != "none" else []
        extra = ([tools_prompt(offered)] if offered else []) + ([json_instruction(json_schema)] if json_schema else [])
        turns = chat_turns(messages, system, extra)
        chars = sum(len(t["content"]) for t in turns)
        if chars > self.max_prompt_chars:
            raise PromptTooLongError(
                f"{self.spec}: the prompt is {chars} characters; the model's context window of "
                f"{self.context_window} tokens holds at most {self.max_prompt_chars} characters"
            )
        ids = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(ids["input_ids"]), offered, mode, name

    def count_tokens(self, messages, system=None, tools=None, json_schema=None, tool_choice="auto", **_) -> int:
        return len(self._prompt(messages, system, tools, json_schema, tool_choice)[0])

    def prepare(self, messages, *, timeout_s=None, **kwargs) -> None:
        """Tokenize the prompt and compile the grammar of a call before it runs (see ``LLM.prepare``)."""
        self._prepare(messages, **kwargs, grammar_timeout_s=timeout_s)

    def _prepare(
        self,
        messages,
        system=None,
        tools=None,
        max_tokens=512,
        temperature=0.0,
        json_schema=None,
        tool_choice="auto",
        parallel_tool_calls=True,
        stop=None,
        grammar_timeout_s=None,
    ) -> _Request:
        ids, offered, mode, name = self._prompt(messages, system, tools, json_schema, tool_choice)
        if len(ids) >= self.context_window:
            # worded as OpenAI's servers word it, so clients that recover from an overflow (OpenClaw compacts
            # and retries) recognise it: "... exceeds the model's maximum context length of N tokens"
            raise PromptTooLongError(
                f"{self.spec}: the prompt is {len(ids)} tokens, which exceeds the model's maximum "
                f"context length of {self.context_window} tokens (its context window)"
            )
        constraint = Constraint.of(offered, mode if offered else "none", name, parallel_tool_calls, json_schema)
        grammar = self.constrained and constraint.active
        if grammar:
            self.grammars.compiled(constraint, grammar_timeout_s)  # now: a schema it cannot take is the caller's 400
        return _Request(
            ids,
            min(max_tokens, self.context_window - len(ids)),
            temperature,
            constraint,
            offered,
            [] if grammar else list(stop or []),  # a stop string could cut a constrained reply in two
            grammar,
        )

    # --- decoding -----------------------------------------------------------------------------

    def _decode(self, req: _Request) -> Generator[tuple[str, list[int]], None, None]:
        """(the reply's text so far, its token ids) after each token; ends early at a stop string, and
        at a tool call that repeats an earlier one of the same reply (yielding the text without it).
        Closing it stops the engine at once."""
        mask = self.grammars.mask(req.constraint) if req.grammar else None
        tokens = self.engine.generate(req.ids, req.max_tokens, req.temperature, mask)
        new: list[int] = []
        try:
            for token in tokens:
                new.append(token)
                raw = self.tokenizer.decode(new, skip_special_tokens=True)
                if req.tools and raw.rstrip().endswith(TOOL_CALL_CLOSE) and (at := repeated_call_at(raw)) is not None:
                    yield raw[:at], new
                    return
                yield raw, new
                if req.stop and _cut_at_stop(raw, req.stop)[1] is not None:
                    return
        finally:
            tokens.close()

    def _response(self, req: _Request, raw: str, new_ids: list[int], latency: float) -> ChatResponse:
        """The reply; a grammar-bound reply that did not reach its end token was cut off by the budget."""
        text, stopped = _cut_at_stop(raw.strip(), req.stop)
        calls: list[ToolCall] = []
        if req.tools:  # only complete <tool_call> blocks count: under a grammar each one validates
            text, calls = parse_tool_calls(text, req.tools)
        ended = bool(new_ids) and new_ids[-1] in self.engine.end_ids
        stop = "tool_use" if calls else "stop_sequence" if stopped else "end_turn" if ended else "max_tokens"
        n_out = len(new_ids)
        return ChatResponse(
            text=text,
            provider=self.provider,
            model=self.model,
            tool_calls=calls,
            usage=Usage(req.n_in, n_out),
            latency_s=latency,
            cost_usd=cost_usd("local", self.model, req.n_in, n_out),
            stop_reason=stop,
            stop_sequence=stopped if stop == "stop_sequence" else None,
        )

    def chat(
        self,
        messages,
        system=None,
        tools=None,
        max_tokens=512,
        temperature=0.0,
        json_schema=None,
        tool_choice="auto",
        parallel_tool_calls=True,
        stop=None,
    ) -> ChatResponse:
        """One reply. A grammar-bound reply cut off by the budget is decoded again with tighter bounds
        (``constrained.BOUNDS``); usage and latency count every attempt."""
        req = self._prepare(
            messages, system, tools, max_tokens, temperature, json_schema, tool_choice, parallel_tool_calls, stop
        )
        spent_tokens, spent_s = 0, 0.0
        while True:
            start = time.perf_counter()
            last = deque(self._decode(req), maxlen=1)  # run the decode to its end, keep its final state
            raw, new = last[0] if last else ("", [])
            reply = self._response(req, raw, new, time.perf_counter() - start)
            tighter = req.constraint.tighter() if _cut_inside_grammar(reply, req) else None
            if tighter is None:
                break
            spent_tokens, spent_s = spent_tokens + reply.usage.output_tokens, spent_s + reply.latency_s
            req = req.constrained_by(tighter)
        reply.usage.output_tokens += spent_tokens
        reply.latency_s += spent_s
        return reply

    def stream(  # type: ignore[override]  # chat's keywords, which the base takes as **kwargs
        self,
        messages,
        system=None,
        tools=None,
        max_tokens=512,
        temperature=0.0,
        json_schema=None,
        tool_choice="auto",
        parallel_tool_calls=True,
        stop=None,
    ) -> Iterator[str | ChatResponse]:
        """Text deltas as the model decodes, then the ChatResponse.

        What is released is exactly what the final reply's ``text`` holds: leading and trailing
        whitespace, an incomplete character, a possible start of ``<tool_call>`` and of a stop
        string are held back until the following tokens show what they are. Closing the iterator
        stops generation.
        """
        req = self._prepare(
            messages, system, tools, max_tokens, temperature, json_schema, tool_choice, parallel_tool_calls, stop
        )
        if not req.streams_text:  # a forced call comes whole (and may need a tighter retry): no deltas
            yield self.chat(
                messages, system, tools, max_tokens, temperature, json_schema, tool_choice, parallel_tool_calls, stop
            )
            return
        start = time.perf_counter()
        raw, new, released = "", list[int](), 0
        decoding = self._decode(req)
        try:
            for raw, new in decoding:  # noqa: B007 (new: the tokens so far, read after the loop)
                safe = _releasable(raw, req)
                if len(safe) > released:
                    yield safe[released:]
                    released = len(safe)
        finally:
            decoding.close()
        reply = self._response(req, raw, new, time.perf_counter() - start)
        if len(reply.text) > released:  # what was held back and turned out to be text
            yield reply.text[released:]
        yield reply

    # --- judges -------------------------------------------------------------------------------

    def choice_probs(
        self, messages, choices: list[str], system: str | None = None, prefix: str = "", use_prefix_cache: bool = True
    ) -> dict[str, float]:
        """Probability of each single-token choice as the next token of the assistant's reply.

        Constrained choice for small local models that cannot be relied on to emit valid JSON:
        e.g. a judge reads P("1".."5") for one rubric dimension instead of parsing free text.
        ``prefix`` is text already placed at the start of the assistant turn ("Score: ").

        A judge asks one such question per rubric dimension, each sharing a long prompt prefix with
        earlier calls: the engine starts from the longest cached prefix, so a call only runs the
        tokens after it (``use_prefix_cache=False`` runs the full prompt); ``prefix_cache_stats``
        counts the saving.
        """
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        tok = self.tokenizer
        turns = chat_turns(messages, system)
        prompt = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) + prefix
        ids = tok(prompt).input_ids
        choice_ids = []
        for choice in choices:
            toks = tok.encode(choice, add_special_tokens=False)
            if len(toks) != 1:
                raise ValueError(f"choice {choice!r} is {len(toks)} tokens; choices must be single tokens")
            choice_ids.append(toks[0])
        logits = self.engine.next_logits(ids, use_cache=use_prefix_cache)
        probs = torch.softmax(logits[choice_ids].float(), dim=-1).tolist()
        return dict(zip(choices, probs))

    @property
    def prefix_cache_stats(self) -> dict[str, int]:
        """Prompt tokens computed vs requested since the last ``reset_prefix_cache`` (all calls)."""
        return self.engine.prefix_stats.as_dict()

    def reset_prefix_cache(self) -> None:
        self.engine.reset_prefix_cache()


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """(``text`` up to the first stop string, that string): decoding stops after it, the APIs omit it."""
    hits = sorted((i, s) for s in stops if (i := text.find(s)) >= 0)
    return (text[: hits[0][0]].rstrip(), hits[0][1]) if hits else (text, None)


def _cut_inside_grammar(reply: ChatResponse, req: _Request) -> bool:
    """Did the budget end a reply whose shape the grammar holds (a call, or a JSON reply) half-way?"""
    if not req.grammar or reply.stop_reason != "max_tokens" or reply.tool_calls:
        return False
    return req.constraint.forces_call or req.constraint.json_schema is not None or TOOL_CALL_OPEN in reply.text


def _releasable(raw: str, req: _Request) -> str:
    """The prefix of a partial reply that the final reply's text is sure to start with."""
    text = raw.lstrip()
    end = len(text.rstrip("\ufffd"))  # a character whose bytes have not all been decoded yet
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
