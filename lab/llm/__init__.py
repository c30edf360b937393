"""LLM clients selected by one spec string (``--llm`` / ``LAB_LLM``).

- ``local:<hf-id | dir | file.gguf>``: transformers on this machine (default: embedded SmolLM2-135M)
- ``anthropic:<model>``: the official Anthropic SDK (ANTHROPIC_API_KEY), tool use included;
  ``anthropic:<model>@<base_url>`` talks to a proxy or gateway instead of api.anthropic.com
- ``openai:<model>@<base_url>``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server);
  ``openai:<model>`` alone talks to api.openai.com (OPENAI_API_KEY)
"""

from __future__ import annotations

import os

from lab.errors import ConfigError
from lab.llm.base import LLM, ChatResponse, JSONReplyError, LLMError, ToolCall, Usage, parse_json_reply

DEFAULT_SPEC = "local:smollm2-135m-instruct"

__all__ = ["LLM", "ChatResponse", "JSONReplyError", "LLMError", "ToolCall", "Usage", "from_spec",
           "parse_json_reply", "DEFAULT_SPEC"]

_CACHE: dict[str, LLM] = {}


def from_spec(spec: str | None = None) -> LLM:
    """Build (once per process) the client for ``spec``, else $LAB_LLM, else the embedded SmolLM2."""
    spec = spec or os.environ.get("LAB_LLM") or DEFAULT_SPEC
    if spec in _CACHE:
        return _CACHE[spec]
    provider, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"LLM spec {spec!r}: expected provider:model (local:, anthropic:, openai:)")
    if provider == "local":
        from lab.llm.local import LocalLLM

        client: LLM = LocalLLM(rest)
    elif provider == "anthropic":
        from lab.llm.anthropic_client import AnthropicLLM

        model, _, base_url = rest.partition("@")
        client = AnthropicLLM(model, base_url=base_url or None)
    elif provider == "openai":
        from lab.llm.openai_client import OpenAILLM

        model, _, base_url = rest.partition("@")
        client = OpenAILLM(model, base_url=base_url or None)
    else:
        raise ConfigError(f"LLM spec {spec!r}: unknown provider {provider!r} (local, anthropic, openai)")
    _CACHE[spec] = client
    return client
