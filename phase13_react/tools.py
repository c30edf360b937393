"""Tools are plain Python functions; their JSON schema is derived from the signature.

    @tool(timeout_s=5)
    def calculator(expression: str) -> float:
        "Evaluate an arithmetic expression such as (3 + 4) * 2."
        ...

    box = Toolbox([calculator, search])
    box.schemas()                 # Anthropic-style {"name", "description", "input_schema"} for lab.llm
    box.execute(tool_call)        # an Observation: never raises, whatever the model asked for

Everything that can go wrong when a model asks for a tool comes back as an ``Observation`` whose
``outcome`` names it, so the loop can show it to the model and the result can count it:

- ``unknown_tool``       the model named a tool it was not offered (a hallucinated tool)
- ``invalid_arguments``  arguments that are not JSON, or that fail the tool's schema (names the field)
- ``tool_error``         the tool raised
- ``tool_timeout``       the tool ran past its ``timeout_s`` on every attempt
- ``empty_observation``  the tool returned nothing to look at

Transient failures (a timeout, ``TransientToolError``, a connection error) are retried with
jittered exponential backoff (tenacity) before they become an observation; a bug in the tool (any
other exception) is not retried. The schema comes from pydantic, the same validator that checks the
arguments, so the schema the model sees and the check its call faces cannot drift apart.
"""

from __future__ import annotations

import inspect
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from lab.llm.base import ToolCall

OUTCOMES = ("ok", "unknown_tool", "invalid_arguments", "tool_error", "tool_timeout", "empty_observation")
MAX_OBSERVATION_CHARS = 2000  # a tool result longer than this is cut: small context windows fill fast


class TransientToolError(Exception):
    """Raise from a tool for a failure worth retrying (a flaky backend), not for a bad request."""


class ToolTimeout(Exception):
    """The tool did not return within its ``timeout_s``."""


@dataclass(frozen=True)
class Tool:
    """A function the model may call: name, description, argument model and limits.

    ``privileged`` marks a side effect (publish, send, write state): Phase 15's defence withholds such
    tools from stages that read untrusted text.
    """

    name: str
    description: str
    fn: Callable[..., Any]
    params: type[BaseModel]
    timeout_s: float = 20.0
    privileged: bool = False

    def schema(self) -> dict[str, Any]:
        """The tool as ``lab.llm`` takes it (each provider converts it to its own wire format)."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": _clean(self.params.model_json_schema()),
        }

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments checked against the schema; a ValueError names every bad field."""
        try:
            return self.params.model_validate(arguments).model_dump()
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}" for e in err.errors()
            )
            raise ValueError(f"invalid arguments for {self.name}: {problems}") from None


def _clean(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's ``title`` keys: noise in a prompt, and they cost a small model tokens."""
    if isinstance(schema, dict):
        return {k: _clean(v) for k, v in schema.items() if k != "title" or not isinstance(v, str)}
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = 20.0,
    privileged: bool = False,
):
    """Make a ``Tool`` from a type-annotated function (usable as ``@tool`` or ``@tool(timeout_s=...)``).

    The description is the docstring's first paragraph; defaults become optional fields.
    """

    def make(func: Callable[..., Any]) -> Tool:
        fields: dict[str, Any] = {}
        for pname, param in inspect.signature(func).parameters.items():
            if param.annotation is inspect.Parameter.empty:
                raise TypeError(f"tool {func.__name__}: parameter {pname!r} needs a type annotation")
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (param.annotation, default)
        model = create_model(f"{func.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
        doc = (description or inspect.getdoc(func) or "").split("\n\n")[0].strip()
        if not doc:
            raise TypeError(f"tool {func.__name__}: give it a docstring or a description (the model reads it)")
        return Tool(name or func.__name__, doc, func, model, timeout_s, privileged)

    return make(fn) if fn is not None else make


@dataclass
class Observation:
    """What a tool call produced, as the model will see it, plus how it went."""

    tool_call_id: str
    name: str
    arguments: dict[str, Any]
    content: str
    outcome: str = "ok"
    attempts: int = 0
    latency_s: float = 0.0
    value: Any = field(default=None, repr=False)  # the tool's raw return value (not stored, not sent)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("value")
        return record


def _call_with_timeout(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s``.

    Python cannot kill a thread: a timed-out tool keeps running in the background, but the agent stops
    waiting for it, and a daemon thread never holds the process open at exit.
    """
    box: queue.Queue = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            box.put((True, fn(**kwargs)))
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            box.put((False, exc))

    threading.Thread(target=target, daemon=True, name=f"tool-{getattr(fn, '__name__', 'fn')}").start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        raise ToolTimeout(f"no result within {timeout_s:g} s") from None
    if not ok:
        raise value
    return value


def render(value: Any) -> str:
    """A tool's return value as observation text (JSON for structures), cut to a readable size."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) > MAX_OBSERVATION_CHARS:
        text = text[:MAX_OBSERVATION_CHARS] + f" …[cut: {len(text)} chars in all]"
    return text


def _is_empty(value: Any) -> bool:
    return value is None or (
        isinstance(value, (str, list, dict, tuple)) and not (value.strip() if isinstance(value, str) else value)
    )


class Toolbox:
    """The tools an agent is offered, and the one place their calls are executed."""

    def __init__(self, tools: Iterable[Tool], retries: int = 2, backoff_s: float = 0.2):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t
        self.retries, self.backoff_s = retries, backoff_s

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    def execute(self, call: ToolCall) -> Observation:
        """Run one call. Never raises: every failure is an observation with its outcome named."""
        obs = Observation(call.id, call.name, dict(call.arguments), "")
        started = time.perf_counter()
        try:
            obs.outcome, obs.content, obs.value = self._run(call, obs)
        finally:
            obs.latency_s = time.perf_counter() - started
        return obs

    def _run(self, call: ToolCall, obs: Observation) -> tuple[str, str, Any]:
        t = self.tools.get(call.name)
        if t is None:
            offered = ", ".join(self.tools) or "none"
            return "unknown_tool", f"Error: there is no tool named {call.name!r}. Tools you can call: {offered}.", None
        if call.arguments_error:
            return "invalid_arguments", f"Error: {call.arguments_error}. Send the arguments as one JSON object.", None
        try:
            kwargs = t.validate(call.arguments)
        except ValueError as exc:
            return "invalid_arguments", f"Error: {exc}. Fix the arguments and call {t.name} again.", None
        try:
            value = self._attempts(t, kwargs, obs)
        except ToolTimeout as exc:
            return (
                "tool_timeout",
                f"Error: {t.name} timed out ({exc}, {obs.attempts} attempts). Try another approach.",
                None,
            )
        except Exception as exc:  # the tool's own failure: the model sees it, the run goes on
            return "tool_error", f"Error: {t.name} failed: {type(exc).__name__}: {exc}", None
        if _is_empty(value):
            return (
                "empty_observation",
                f"{t.name} returned nothing for these arguments. Try different arguments or another tool.",
                value,
            )
        return "ok", render(value), value

    def _attempts(self, t: Tool, kwargs: dict[str, Any], obs: Observation) -> Any:

        retrying = Retrying(
            stop=stop_after_attempt(1 + self.retries),
            wait=wait_random_exponential(multiplier=self.backoff_s, max=max(self.backoff_s * 8, 0.001)),
            retry=retry_if_exception_type((ToolTimeout, TransientToolError, ConnectionError, TimeoutError)),
            reraise=True,
            before=lambda state: setattr(obs, "attempts", state.attempt_number),
        )
        return retrying(_call_with_timeout, t.fn, kwargs, t.timeout_s)
