"""The engine's scripted model: its tiny runs and tests talk HTTP to it.

A wire double, not a mock: the engine runs unchanged (``--llm openai:scripted@<url>``), through the
``openai`` SDK and ``lab.llm``, over a real socket to ``lab.llm.scripted_server`` — only the model's
*replies* are scripted here, so a run takes seconds and its outcome is known in advance. It answers
each chat completion by recognising which stage is asking:

- HyDE (the Phase 12 hypothesis prompt): a short passage echoing the question;
- the Writer: two sentences ending with the ``[n]`` of the source it was shown;
- the Editor's judge (a ``json_schema`` verdict request): scores 2 (REJECT) for the first
  ``reject_first`` reviews of each topic, then 4 (APPROVE); a topic containing the word
  ``escalate`` is always scored 2, so the job ends ESCALATED after the revision limit.

``delay_s`` slows every reply (the load exercise needs jobs long enough to kill a worker mid-job).
Counts per stage are kept in ``script.calls``; usage is counted in words; ``GET /v1/models`` is a 404.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lab.llm.scripted_server import Reply, ScriptedServer, say

_TOPIC = re.compile(r"Question:\n.*?about: (.*?)\n", re.S)
_SOURCE = re.compile(r"Source \[(\d+)\]")


class EngineScript:
    """The script: each request body answered by the stage it comes from (``reply``), counted in ``calls``."""

    def __init__(self, reject_first: int = 0, delay_s: float = 0.0):
        self.reject_first, self.delay_s = reject_first, delay_s
        self.calls = {"hyde": 0, "writer": 0, "judge": 0, "other": 0}
        self.reviews: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request: dict) -> Reply:
        return say(self.reply(request), delay_s=self.delay_s)

    def reply(self, request: dict) -> str:
        messages = request.get("messages") or []
        system = next((m["content"] for m in messages if m.get("role") == "system"), "") or ""
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "") or ""
        if request.get("response_format") or "evaluator" in system:
            return self._verdict("\n".join(m.get("content") or "" for m in messages))
        if "factual passage" in system:
            self._count("hyde")
            return f"A short passage about {user.strip()[:120]}: it explains the mechanism and its trade-offs."
        source = _SOURCE.search(user)
        if source:
            self._count("writer")
            n = source.group(1)
            return (
                f"This sentence states a fact from the source [{n}]. "
                f"A second sentence explains why it matters to engineers [{n}]."
            )
        self._count("other")
        return "OK."

    def _count(self, kind: str) -> int:
        with self._lock:
            self.calls[kind] += 1
            return self.calls[kind]

    def _verdict(self, text: str) -> str:
        self._count("judge")
        match = _TOPIC.search(text)
        topic = match.group(1).strip() if match else ""
        with self._lock:
            seen = self.reviews.get(topic, 0)
            self.reviews[topic] = seen + 1
        passing = "escalate" not in topic.lower() and seen >= self.reject_first
        score = 4 if passing else 2
        return json.dumps(
            {
                "reasoning": "scripted verdict: " + ("clear and cited" if passing else "too vague"),
                "scores": {
                    d: score for d in ("technical_accuracy", "calibration", "mechanistic_depth", "audience_calibration")
                },
                "flags": {"confident_hallucination": False},
            }
        )


@contextmanager
def scripted_server(reject_first: int = 0, delay_s: float = 0.0) -> Iterator[tuple[str, EngineScript]]:
    """``(base_url, script)``: the OpenAI base URL (``http://127.0.0.1:PORT/v1``) and the script's counters."""
    script = EngineScript(reject_first, delay_s)
    with ScriptedServer(script, models=None) as server:
        yield server.openai_url, script
