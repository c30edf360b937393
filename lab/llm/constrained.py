"""Structured generation for local models: tool calls and JSON replies that are valid by construction.

A 135M model asked for JSON by prompt alone writes broken JSON, unknown tool names and missing
fields. Constrained decoding fixes that at the source: a grammar compiled from the JSON schema
masks, at every step, each token that could not continue a valid reply, so whatever the model
picks parses and validates. The grammar engine is xgrammar (what vLLM and SGLang use): its matcher
masks the logits inside the decoding loop that both local engines share (``lab.llm.engine``), so
transformers and llama.cpp decode under the same grammars; nothing here is a hand-written grammar engine.

Tool calls use the Hermes / Qwen format that open chat models are trained on::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and xgrammar's built-in structural tag for it: with ``tool_choice="auto"`` the model writes free
text and, once it opens ``<tool_call>``, the name must be one of the tools and the arguments must
match that tool's schema; ``required`` / a named tool force the call from the first token.

A grammar bounds the *shape* of a reply, not its length: a small model happily loops inside a
free string, an array or an unbounded number until the token budget runs out, and a cut-off reply
is not valid JSON. So every free element is bounded before compiling (``bounded_schema``): strings
get a ``maxLength`` (a ``pattern``, which xgrammar will not combine with one, gets its unbounded
repeats capped instead), arrays a ``maxItems``, numbers a range, free-keyed objects a
``maxProperties``. The bounded schema accepts a subset of what the original accepts, so every reply
still validates against the schema the caller gave. (A ``format`` string such as ``email`` stays
unbounded: xgrammar offers no way to bound it; prefer a pattern in tool schemas.)
Bounds come in ``BOUNDS`` levels: the first is generous; when a reply still hits the budget inside
the grammar, the local provider decodes it again one level tighter (the last level allows only as
many items and characters as the schema demands at minimum, plus a little). If even that runs out
the reply is reported as cut off (``stop_reason="max_tokens"``) and carries no tool call: a
truncated call is never passed on as a call.

Every schema is checked before it is compiled (``check_schema``): one deeper or larger than
``MAX_SCHEMA_DEPTH`` / ``MAX_SCHEMA_VALUES``, or holding a keyword xgrammar compiles past without
enforcing (``not``, ``if``/``then``/``else``, ``uniqueItems``, ``contains``, ``dependentRequired``, a
second ``allOf`` branch, ...), is an ``InvalidRequestError`` naming the limit or the keyword and where
it is: a reply that could break the caller's schema is refused up front, never promised. Grammars
compile in worker threads (``Grammars.compiled``, with a timeout), so a server can compile a
request's grammar before it waits for the model and refuse one that takes too long.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from lab.llm.base import InvalidRequestError, ToolCall

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE = "<tool_response>\n{}\n</tool_response>"
_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.S)


@dataclass(frozen=True)
class Bounds:
    """Limits given to the free elements of a schema (see the module docstring)."""

    string_chars: int
    array_items: int
    number_abs: int
    pattern_repeat: int  # what an unbounded regex quantifier (+, *, {m,}) may repeat


# Level 0 is generous enough for real arguments (a search query, a path, a short paragraph);
# the later levels are the retries of a reply that ran out of budget.
BOUNDS = (Bounds(160, 6, 10**9, 48), Bounds(32, 2, 10**6, 12), Bounds(8, 0, 10**3, 3))
ANY_DEPTH = 2  # how deep an untyped value ("any JSON") may nest once bounded
KEY_MAX_CHARS = 32  # the length of a free object key
WHITESPACE_MAX = 2  # consecutive whitespace inside tool-call JSON: "{\n  " but not a whitespace loop

_FIXED_STRINGS = ("enum", "const", "pattern", "format")  # shapes xgrammar will not combine with maxLength

# What one schema may be before it is compiled. A grammar grows with the schema and xgrammar's
# compile time grows faster (1,000 optional properties in one object take seconds): past these the
# schema is refused, and the compile timeout (``Grammars.compiled``) catches what stays inside them.
MAX_SCHEMA_DEPTH = 64  # JSON nesting levels (objects and arrays); ~30 levels of nested objects
MAX_SCHEMA_VALUES = 10_000  # JSON values in all (objects, arrays, strings, numbers, ...)

# Keywords xgrammar (0.2) compiles past without enforcing them: a reply under the grammar could break
# them. tests/test_constrained.py checks that each is still ignored, so this list follows xgrammar.
# (oneOf passes: xgrammar holds it as anyOf only where branches may overlap, which a discriminated
# union's do not; patternProperties and propertyNames are enforced.)
UNENFORCED = {
    **dict.fromkeys(
        ("if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies"), "list the cases with anyOf"
    ),
    **dict.fromkeys(("contains", "minContains", "maxContains"), "describe every item with 'items'"),
    **dict.fromkeys(("$dynamicRef", "$dynamicAnchor"), "use $ref to '#/$defs/...'"),
    "not": "exclude the values another way (enum, anyOf)",
}
# the string formats xgrammar enforces (others, e.g. idn-email, iri, regex, are ignored)
FORMATS = (
    "date",
    "date-time",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "json-pointer",
    "relative-json-pointer",
    "time",
    "uri",
    "uri-reference",
    "uri-template",
    "uuid",
)
# keyword -> how its value holds subschemas (everything else in a schema is data: enum, const, default, ...)
_SUBSCHEMA_KEYWORDS = {
    **dict.fromkeys(
        (
            "items",
            "additionalProperties",
            "propertyNames",
            "unevaluatedProperties",
            "unevaluatedItems",
            "additionalItems",
            "not",
            "if",
            "then",
            "else",
            "contains",
        ),
        "schema",
    ),
    **dict.fromkeys(("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"), "map"),
    **dict.fromkeys(("allOf", "anyOf", "oneOf", "prefixItems"), "list"),
}


def check_schema(schema: Any, name: str | None = None) -> None:
    """Refuse a schema a grammar should not be compiled from: an InvalidRequestError naming the limit it
    passes (``MAX_SCHEMA_DEPTH``, ``MAX_SCHEMA_VALUES``) or the keyword xgrammar would not enforce and
    where it is (``properties.age.not``), after ``name`` (the caller's name for the schema) if given.
    Walks the schema once, without recursion."""

    def refuse(problem: str) -> InvalidRequestError:
        return InvalidRequestError(f"{name}: {problem}" if name else problem)

    stack: list[tuple[Any, tuple[str, ...], int, str]] = [(schema, (), 1, "schema")]  # value, path, depth, role
    values = 1
    while stack:
        node, path, depth, role = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise refuse(
                f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels of JSON objects and arrays "
                "(the limit for compiling one into a grammar)"
            )
        values += len(node)
        if values > MAX_SCHEMA_VALUES:
            raise refuse(
                f"the schema holds more than {MAX_SCHEMA_VALUES} JSON values (the limit for compiling "
                "one into a grammar)"
            )
        in_schema = role == "schema" and isinstance(node, dict)
        if in_schema and isinstance(node, dict) and (problem := _unenforced(node)) is not None:
            keyword, advice = problem
            raise refuse(
                f"keyword {keyword!r} (at {'.'.join((*path, keyword))}) is not enforced by the grammar "
                f"engine, so a reply could break it: {advice}"
            )
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if in_schema:  # what the keyword's value holds: a schema, schemas by name or in a list, or data
                kind = _SUBSCHEMA_KEYWORDS.get(str(key), "data")
                kind = "list" if kind == "schema" and isinstance(child, list) else kind  # draft-4 tuple items
            else:
                kind = "schema" if role in ("map", "list") else "data"
            stack.append((child, (*path, str(key)), depth + 1, kind))


def _unenforced(node: dict[str, Any]) -> tuple[str, str] | None:
    """(keyword, what to do instead) for the first keyword of this schema node xgrammar would drop."""
    for keyword in node:
        if keyword in UNENFORCED:
            return keyword, UNENFORCED[keyword]
    kinds = node.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds} if isinstance(kinds, str) else set()
    if node.get("uniqueItems") is True:
        return "uniqueItems", "drop it and remove duplicates after parsing"
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        return "allOf", "only one allOf branch is enforced: merge the branches into one schema"
    ref = node.get("$ref")
    if isinstance(ref, str) and ref != "#" and not ref.startswith("#/"):
        return "$ref", f"only references inside the schema ('#/$defs/...') are resolved, not {ref[:80]!r}"
    if "format" in node and node["format"] not in FORMATS:
        return "format", f"{str(node['format'])[:40]!r} is not one of the enforced formats ({', '.join(FORMATS)})"
    if "multipleOf" in node and (not kinds or "number" in kinds):
        return "multipleOf", "it is enforced on type 'integer' only"
    for keyword in ("minLength", "maxLength"):
        if keyword in node and ("pattern" in node or "format" in node):
            return keyword, "beside a pattern or format the length is dropped: write the length into the pattern"
    properties: dict[str, Any] = node["properties"] if isinstance(node.get("properties"), dict) else {}
    required: list[Any] = node["required"] if isinstance(node.get("required"), list) else []
    missing = [k for k in required if k not in properties]
    if missing:
        return "required", (
            f"it names {str(missing[0])[:40]!r}, which this object's 'properties' does not define; "
            "only defined properties can be required"
        )
    return None


def tools_prompt(tools: list[dict[str, Any]]) -> str:
    """The system-prompt section that lists the tools, in the Hermes wording models are trained on."""
    listing = "\n".join(
        json.dumps(
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
                },
            }
        )
        for t in tools
    )
    return (
        "You may call one or more functions to assist with the user query.\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listing}\n</tools>\n"
        "For each function call, return a json object with function name and arguments within "
        f"{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def render_tool_call(call: ToolCall) -> str:
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': call.name, 'arguments': call.arguments})}\n{TOOL_CALL_CLOSE}"


def bounded_schema(schema: dict[str, Any], bounds: Bounds = BOUNDS[0]) -> dict[str, Any]:
    """A copy of ``schema`` whose free strings, arrays and numbers are bounded (see module docstring).

    An explicit ``maxLength`` / ``maxItems`` / range is kept when it is tighter; ``minLength`` and
    ``minItems`` always win, so the result never contradicts the caller's schema.
    """

    def bound(node: Any) -> Any:
        if isinstance(node, list):
            return [bound(n) for n in node]
        if node is True or node == {}:  # any JSON value: a bounded stand-in
            return bound(_any_json(ANY_DEPTH))
        if not isinstance(node, dict):
            return node
        node = {k: bound(v) if k not in ("enum", "const", "default", "examples") else v for k, v in node.items()}
        kinds = node.get("type")
        kinds = set(kinds) if isinstance(kinds, list) else {kinds} if isinstance(kinds, str) else set()
        if "object" in kinds and not node.get("properties") and node.get("additionalProperties", True) is not False:
            # free keys: bound how many, and what each value may be
            node["additionalProperties"] = bound(node.get("additionalProperties", True))
            node["maxProperties"] = max(
                min(node.get("maxProperties", bounds.array_items), bounds.array_items), node.get("minProperties", 0)
            )
            node.setdefault("propertyNames", {"maxLength": min(KEY_MAX_CHARS, bounds.string_chars)})
        if "string" in kinds and not any(k in node for k in _FIXED_STRINGS):
            node["maxLength"] = max(
                min(node.get("maxLength", bounds.string_chars), bounds.string_chars), node.get("minLength", 0)
            )
        if isinstance(node.get("pattern"), str):  # a pattern ignores maxLength: bound its repeats instead
            node["pattern"] = bounded_pattern(node["pattern"], bounds.pattern_repeat)
        if "array" in kinds:
            node["maxItems"] = max(
                min(node.get("maxItems", bounds.array_items), bounds.array_items), node.get("minItems", 0)
            )
        if kinds & {"integer", "number"} and "enum" not in node and "const" not in node:
            if "minimum" not in node:  # an open end gets a bound; a range the caller gave is kept
                node["minimum"] = (
                    -bounds.number_abs if "maximum" not in node else node["maximum"] - 2 * bounds.number_abs
                )
            node.setdefault("maximum", node["minimum"] + 2 * bounds.number_abs)
        return node

    return bound(copy.deepcopy(schema))


_OPEN_REPEAT = re.compile(r"\{(\d+),\}")


def bounded_pattern(pattern: str, limit: int) -> str:
    """``pattern`` with every unbounded quantifier capped at ``limit`` repeats (``+`` -> ``{1,limit}``,
    ``*`` -> ``{0,limit}``, ``{m,}`` -> ``{m,max(m,limit)}``): it matches a subset of what the original
    matches, so a string generated under it still validates. Escapes and character classes are
    copied as they are."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]":  # a literal "]" first in the class
                out.append("[]")
                i += 2
                continue
        elif ch in "+*" and out and out[-1] not in ("(", "|"):
            out.append(f"{{{1 if ch == '+' else 0},{limit}}}")
            i += 1
            continue
        elif ch == "{" and (m := _OPEN_REPEAT.match(pattern, i)):
            low = int(m.group(1))
            out.append(f"{{{low},{max(low, limit)}}}")
            i = m.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _any_json(depth: int) -> dict[str, Any]:
    """A schema for "any JSON value" whose nesting stops at ``depth`` (bounded_schema bounds the rest)."""
    alternatives: list[dict[str, Any]] = [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]
    if depth > 0:
        alternatives += [
            {"type": "array", "items": _any_json(depth - 1)},
            {"type": "object", "additionalProperties": _any_json(depth - 1)},
        ]
    return {"anyOf": alternatives}


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> tuple[str, list[ToolCall]]:
    """(text before the first call, the calls) from a Hermes-format reply.

    Under a grammar every block parses; without one (the prompt-only baseline) a block that is not
    a JSON object naming a known tool with object arguments is not a call — it stays in the text.
    A small model often repeats a call word for word; the repeat is dropped (asking twice in one
    turn for the same result is never useful, and a side-effecting tool must not run twice).
    """
    names = {t["name"] for t in tools}
    calls: list[ToolCall] = []
    seen: set[str] = set()
    for block in _CALL_BLOCK.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(call, dict) and call.get("name") in names and isinstance(call.get("arguments", {}), dict):
            key = json.dumps([call["name"], call.get("arguments") or {}], sort_keys=True)
            if key not in seen:
                seen.add(key)
                calls.append(ToolCall(f"call_{uuid.uuid4().hex[:12]}", call["name"], call.get("arguments") or {}))
    head = text.split(TOOL_CALL_OPEN, 1)[0] if calls else text
    return head.strip(), calls


def repeated_call_at(text: str) -> int | None:
    """Where the last complete ``<tool_call>`` block of ``text`` starts, when it repeats an earlier block
    (same name and arguments, key order aside); else None. Decoding stops there: a model that repeats
    its call would otherwise fill the token budget with copies that ``parse_tool_calls`` drops anyway."""
    blocks = list(_CALL_BLOCK.finditer(text))
    if len(blocks) < 2:
        return None

    def key(block: str) -> str:
        try:
            return json.dumps(json.loads(block), sort_keys=True)
        except json.JSONDecodeError:
            return block

    last = key(blocks[-1].group(1))
    return blocks[-1].start() if any(key(b.group(1)) == last for b in blocks[:-1]) else None


@dataclass(frozen=True)
class Constraint:
    """What one request constrains: the tool calls (mode auto/required/named) and/or a JSON reply."""

    tools: tuple[str, ...] = ()  # canonical JSON of each offered tool, for the compile cache key
    mode: str = "none"  # auto | required | named | none
    name: str | None = None  # the forced tool when mode == "named"
    parallel: bool = True
    json_schema: str | None = None  # canonical JSON of the reply schema
    level: int = 0  # index into BOUNDS: how tightly free elements are bounded

    @classmethod
    def of(cls, tools, mode: str, name: str | None, parallel: bool, json_schema) -> Constraint:
        return cls(
            tools=tuple(json.dumps(t, sort_keys=True) for t in tools or ()) if mode != "none" else (),
            mode=mode if tools else "none",
            name=name,
            parallel=parallel,
            json_schema=json.dumps(json_schema, sort_keys=True) if json_schema is not None else None,
        )

    @property
    def active(self) -> bool:
        return self.mode != "none" or self.json_schema is not None

    @property
    def subject(self) -> str:
        """What the grammar holds the reply to, in the caller's words (for error messages)."""
        if self.mode == "none":
            return "json_schema"
        return "tools and json_schema" if self.json_schema is not None else "tools"

    @property
    def forces_call(self) -> bool:
        return self.mode in ("required", "named")

    def tighter(self) -> Constraint | None:
        """The same constraint one bounds level tighter (and one call only), or None at the last level."""
        if self.level + 1 >= len(BOUNDS):
            return None
        return Constraint(self.tools, self.mode, self.name, False, self.json_schema, self.level + 1)


class GrammarMask:
    """One request's grammar state: masks each step's logits and follows the chosen tokens (the
    ``TokenMask`` every engine's decoding loop takes; one per request, as xgrammar's matcher is)."""

    def __init__(self, compiled, vocab_size: int):
        import xgrammar as xgr  # noqa: PLC0415 (heavy: xgrammar loads on first use)

        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def apply(self, logits) -> None:
        import xgrammar as xgr  # noqa: PLC0415 (heavy: xgrammar loads on first use)

        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits.view(1, -1), self._bitmask)

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):  # only a masked-in token can be chosen: a bug if it happens
            raise RuntimeError(f"the grammar refused token {token}, which its own mask allowed")

    @property
    def done(self) -> bool:
        return self._matcher.is_terminated()


class Grammars:
    """Compiles constraints to xgrammar grammars for one tokenizer, in ``WORKERS`` threads of its own
    (xgrammar lets go of the GIL while it compiles), so that a caller can wait with a timeout; the last
    ``CACHED`` compiled grammars are kept (behind a server every client's schema is a new one, so the
    cache is bounded). Request threads share it: the cache and the compiles in flight sit behind a lock."""

    CACHED = 64
    WORKERS = 2

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr  # noqa: PLC0415 (heavy: xgrammar loads on first use)

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)  # the cache below is the bounded one
        self._cache: OrderedDict[Constraint, Any] = OrderedDict()
        self._compiling: dict[Constraint, Future] = {}
        self._lock = threading.Lock()
        self._workers = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="lab-grammar")
        self._vocab_size = vocab_size

    def mask(self, constraint: Constraint) -> GrammarMask:
        """A fresh token mask for one request under ``constraint`` (compiled once, then cached)."""
        return GrammarMask(self.compiled(constraint), self._vocab_size)

    def compiled(self, constraint: Constraint, timeout_s: float | None = None):
        """The compiled grammar of ``constraint``: from the cache, or from a worker (a compile that another
        request started for the same constraint is shared). An InvalidRequestError when the schema is
        refused, does not compile, or takes longer than ``timeout_s``; that compile still finishes in its
        worker and is cached (xgrammar cannot stop one half-way)."""
        with self._lock:
            if constraint in self._cache:
                self._cache.move_to_end(constraint)
                return self._cache[constraint]
            future = self._compiling.get(constraint)
            if future is None:
                future = self._compiling[constraint] = self._workers.submit(self._compile_and_keep, constraint)
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            raise InvalidRequestError(
                f"the grammar for the {constraint.subject} did not compile within {timeout_s:g} s, the limit on "
                "compiling one: simplify the schema (fewer optional properties or anyOf branches)"
            ) from None

    def _compile_and_keep(self, constraint: Constraint):
        try:
            grammar = self._compile(constraint)
            with self._lock:
                self._cache[constraint] = grammar
                if len(self._cache) > self.CACHED:
                    self._cache.popitem(last=False)
            return grammar
        finally:
            with self._lock:
                del self._compiling[constraint]

    def _compile(self, c: Constraint):
        import xgrammar as xgr  # noqa: PLC0415 (heavy: xgrammar loads on first use)

        tools = [json.loads(t) for t in c.tools]
        for t in tools:
            check_schema(t.get("input_schema") or {}, f"tool {t['name']!r} input_schema")
        if c.json_schema is not None:
            check_schema(json.loads(c.json_schema), "json_schema")
        bounds = BOUNDS[c.level]
        reply_schema = bounded_schema(json.loads(c.json_schema), bounds) if c.json_schema is not None else None
        if c.mode == "none":
            try:
                return self._compiler.compile_json_schema(json.dumps(reply_schema), any_whitespace=False)
            except Exception as exc:  # xgrammar's own error names the unsupported keyword
                raise InvalidRequestError(f"json_schema cannot be compiled to a grammar: {_reason(exc)}") from None
        openai_tools: list[Any] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": bounded_schema(t.get("input_schema") or {"type": "object", "properties": {}}, bounds),
                },
            }
            for t in tools
        ]
        try:
            from xgrammar.structural_tag import JSONSchemaFormat, OrFormat, StructuralTag, TagsWithSeparatorFormat  # noqa: PLC0415 (heavy: xgrammar loads on first use)

            def tag(choice: Any):
                return xgr.get_model_structural_tag(
                    "qwen_3",
                    tools=openai_tools,
                    tool_choice=choice,
                    reasoning="disabled",
                    parallel_tool_calls=c.parallel,
                    max_whitespace_cnt=WHITESPACE_MAX,
                ).format

            if c.mode == "named":  # exactly one call of that tool, then the end
                fmt = tag({"type": "function", "function": {"name": c.name}})
            else:  # calls from the first token on, one per line, then the end (no trailing prose)
                forced = TagsWithSeparatorFormat(
                    tags=tag("required").tags, separator="\n", at_least_one=True, stop_after_first=not c.parallel
                )
                if c.mode == "required":
                    fmt = forced
                elif reply_schema is not None:  # auto with a reply schema: that JSON, or tool calls
                    fmt = OrFormat(
                        elements=[JSONSchemaFormat(json_schema=reply_schema, max_whitespace_cnt=WHITESPACE_MAX), forced]
                    )
                else:  # auto: free text; once the model opens <tool_call> the call is constrained
                    fmt = tag("auto")
            return self._compiler.compile_structural_tag(StructuralTag(format=fmt))
        except Exception as exc:
            raise InvalidRequestError(f"{c.subject} cannot be compiled to a grammar: {_reason(exc)}") from None


# xgrammar starts its messages with a time and its own source file ("[04:41:24] /project/cpp/x.cc:4950: ")
_SOURCE_REF = re.compile(r"\[\d{2}:\d{2}:\d{2}\]\s*|(?:[\w.-]*/)+[\w.-]+\.(?:cc|cpp|h|hpp|py|pyx)(?::\d+)*:?\s*")


def _reason(exc: Exception) -> str:
    """The grammar engine's reason for refusing a schema, without its source files: the caller needs
    the reason; where in xgrammar it was found is the server log's business."""
    return " ".join(_SOURCE_REF.sub("", str(exc)).split())[:300] or type(exc).__name__
