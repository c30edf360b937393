"""LLM clients selected by one spec string (``--llm`` / ``LAB_LLM``).

- ``local:<hf-id | dir | file.gguf>``: on this machine (default: the embedded chat model, ``lab.models.EMBEDDED_LLM``)
- ``anthropic:<model>``: the official Anthropic SDK (ANTHROPIC_API_KEY), tool use included;
  ``anthropic:<model>@<base_url>`` talks to a proxy or gateway instead of api.anthropic.com
- ``openai:<model>@<base_url>``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server);
  ``openai:<model>`` alone talks to api.openai.com (OPENAI_API_KEY)
"""

from __future__ import annotations

import os
from importlib.util import find_spec

from lab.errors import ConfigError, MissingResource
from lab.llm.base import LLM, CapabilityError, ChatResponse, JSONReplyError, LLMError, ToolCall, Usage, parse_json_reply
from lab.llm.wrapper import LLMWrapper
from lab.models import EMBEDDED_LLM

DEFAULT_SPEC = EMBEDDED_LLM.spec

__all__ = [
    "LLM",
    "LLMWrapper",
    "CapabilityError",
    "ChatResponse",
    "JSONReplyError",
    "LLMError",
    "ToolCall",
    "Usage",
    "check_spec",
    "from_spec",
    "parse_json_reply",
    "DEFAULT_SPEC",
]

_CACHE: dict[str, LLM] = {}


def _parse(spec: str) -> tuple[str, str, str | None]:
    """(provider, model, base_url or None) of ``provider:model[@base_url]``; ConfigError if malformed."""
    provider, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"LLM spec {spec!r}: expected provider:model (local:, anthropic:, openai:)")
    if provider not in ("local", "anthropic", "openai"):
        raise ConfigError(f"LLM spec {spec!r}: unknown provider {provider!r} (local, anthropic, openai)")
    if provider == "local":
        return provider, rest, None
    model, _, base_url = rest.partition("@")
    if not model:
        raise ConfigError(f"LLM spec {spec!r}: no model name before '@'")
    return provider, model, base_url or None


def _hosted_class(provider: str):
    """The client class of a hosted provider (its module imports the SDK only when a client is built)."""
    if provider == "anthropic":
        from lab.llm.anthropic_client import AnthropicLLM  # noqa: PLC0415 (import cycle: lab.llm.anthropic_client imports this module)

        return AnthropicLLM
    from lab.llm.openai_client import OpenAILLM  # noqa: PLC0415 (import cycle: lab.llm.openai_client imports this module)

    return OpenAILLM


def check_spec(spec: str | None = None) -> None:
    """Raise now what building ``spec``'s client would raise later: a malformed spec (ConfigError), a
    hosted provider's SDK or API key missing (MissingResource). Builds nothing and sends nothing, so an
    exercise checks its hosted judge before it loads a model and pays for GPU time."""
    spec = spec or os.environ.get("LAB_LLM") or DEFAULT_SPEC
    provider, _, base_url = _parse(spec)
    if provider == "local":
        return

    if find_spec(provider) is None:
        raise MissingResource(f"{spec}: the {provider} SDK is not installed; run `make setup`")
    if provider == "openai" and base_url:  # an OpenAI-compatible server of your own takes any key
        return
    key_env = _hosted_class(provider).key_env
    if not os.environ.get(key_env):
        raise MissingResource(f"{spec}: {key_env} is not set; export it, or choose a local model")


def from_spec(spec: str | None = None) -> LLM:
    """Build (once per process) the client for ``spec``, else $LAB_LLM, else the embedded chat model."""
    spec = spec or os.environ.get("LAB_LLM") or DEFAULT_SPEC
    if spec in _CACHE:
        return _CACHE[spec]
    provider, model, base_url = _parse(spec)
    if provider == "local":
        from lab.llm.local import LocalLLM  # noqa: PLC0415 (import cycle: lab.llm.local imports this module)

        client: LLM = LocalLLM(model)
    else:
        client = _hosted_class(provider)(model, base_url=base_url)
    _CACHE[spec] = client
    return client
