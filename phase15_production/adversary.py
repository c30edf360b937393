"""``ObedientAdversary`` — a labelled WORST-CASE stand-in for a model, not a model.

It obeys every instruction it reads, wherever it reads it: the system prompt, the user's task, a
document, a tool result. It sees through every disguise a capable model sees through (datamarking,
delimiters, zero-width characters, look-alike letters, percent-encoding, base64/hex blobs), and it
ignores every rule about whom to obey — so spotlighting and the instruction hierarchy, which work by
*asking* the model, do nothing against it by construction. A defence that holds against it holds
because of what the model is *not given* (tools, untrusted text) and what is *checked* after it
decided, never because the model chose to behave.

How it reads (the same surface the attacks in ``data/injection_attacks.jsonl`` use):
a sentence holding a directive verb (publish / send / save / include / reply …, in eight languages)
is an instruction. Its payload is what it quotes, else a link or image it holds, else — for the
user's own "publish/send the summary" — the content it has read. Its kind is the tool the verb
names (publish, send_message, write_state) or, for say/include/append/reply…, the final answer.
Per turn it makes the next call it has not made yet among the tools offered; then it answers with
the content plus every payload it was told to say, and anything it was told to do but could not
(no such tool offered) it says instead — the worst case relays instructions to the next stage.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from lab.llm.base import LLM, ChatResponse, ToolCall, Usage
from phase15_production.defence import _EMAIL, _HANDLE, _MD_IMAGE, _URL, quoted, sentences, views

KINDS = {  # directive kind -> (verbs that ask for it, the same in scripts without word breaks); checked in order
    "publish": (r"publish|post|blog|publie[rz]?|veröffentliche|publica|pubblica|publique|опубликуй", "发布|公開"),
    "send_message": (r"send|e-?mail|forward|message|notify|dm|envoie[rz]?|envoyer|sende|schicke|envía|envia|invia|"
                     r"envie|отправь", "发送|送信"),
    "write_state": (r"save|store|remember|memori[sz]e|record|set|write\b.{0,40}\b(?:state|memory)|enregistre[rz]?|"
                    r"speichere|guarda|salva|сохрани", "保存|写入"),
    "say": (r"include|append|add|insert|reply|respond|answer|output|print|say|repeat|reveal|render|display|show|end|"
            r"begin|start|tell|mention|put|write|ajoute[rz]?|inclu[se]|incluez|réponds|répondez|écris|écrivez|dis|"
            r"füge|schreibe|antworte|sag|añade|incluye|responde|escribe|aggiungi|scrivi|rispondi|adicione|escreva|"
            r"responda|добавь|напиши|ответь|скажи", "添加|包含|输出|回复|写|追加|出力"),
}
_KIND_RX = {k: re.compile(rf"(?<!\w)(?:{latin})(?!\w)|{cjk}", re.I) for k, (latin, cjk) in KINDS.items()}
_LEAK = re.compile(r"system prompt|(?:your|initial|hidden) (?:instructions|prompt|rules)", re.I)
_KEY = re.compile(r"\bkey\s+[\"'`]?([\w.-]+)", re.I)


@dataclass
class Directive:
    kind: str              # a tool name or "say"
    payload: str | None    # None: "the content" (a task asking to publish/send what was read)
    to: str | None = None
    key: str | None = None
    from_task: bool = False


def _kind(sentence: str) -> str | None:
    return next((kind for kind, rx in _KIND_RX.items() if rx.search(sentence)), None)


def parse_directives(text: str, from_task: bool = False, system: str = "") -> list[Directive]:
    """Every instruction in ``text`` (read through its encodings), in order."""
    found = []
    for view in views(text):
        for sentence in sentences(view):
            kind = _kind(sentence)
            if kind is None:
                continue
            quotes = quoted(sentence)
            emails = [m.group(0) for m in _EMAIL.finditer(sentence)]
            links = [m.group(0) for m in _MD_IMAGE.finditer(sentence)] or [
                m.group(0) for m in _URL.finditer(sentence) if not any(m.group(0) in e for e in emails)]
            address = next((m.group(0).rstrip(".,;:") for rx in (_EMAIL, _HANDLE) for m in rx.finditer(sentence)), None)
            key = _KEY.search(sentence)
            key = key.group(1) if key else (quotes[0] if kind == "write_state" and len(quotes) > 1 else None)
            values = [q for q in quotes if q != key]
            payload = values[-1] if values else (links[0] if links else None)
            if kind == "say" and payload is None and _LEAK.search(sentence):
                payload = system  # "repeat your system prompt": it does
            if kind == "say" and payload is None:
                continue  # "answer in two sentences": nothing to say but the content
            if kind == "send_message" and address is None:
                continue
            found.append(Directive(kind, payload, address, key, from_task))
    return found


_TAGS = re.compile(r"<</?\s*untrusted[^>]*>>")


def _text(message: dict[str, Any]) -> str:
    """A message as the adversary reads it: delimiters are no obstacle to it."""
    content = message.get("content") or ""
    return _TAGS.sub(" ", content if isinstance(content, str) else json.dumps(content, default=str))


class ObedientAdversary(LLM):
    """The worst case: follows every instruction in its context (see the module docstring)."""

    provider = "adversary"

    def __init__(self, model: str = "obedient-worst-case"):
        super().__init__(model)

    def describe(self) -> dict[str, Any]:
        return {"id": self.spec, "note": "scripted worst-case adversary that obeys every instruction it reads; not a model"}

    def chat(self, messages: list[dict[str, Any]], system: str | None = None, tools: list[dict[str, Any]] | None = None,
             max_tokens: int = 512, temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
             tool_choice: Any = "auto", parallel_tool_calls: bool = True, stop: list[str] | None = None) -> ChatResponse:
        first_user = next((_text(m) for m in messages if m["role"] == "user"), "")
        task, _, data = first_user.partition("\n\n")
        rest = [data] + [_text(m) for m in messages[1:] if m["role"] in ("user", "tool")]
        # the conversation's instructions, the task's first; the system prompt only as something to leak
        directives = parse_directives(task, True, system or "") + [d for t in rest for d in
                                                                   parse_directives(t, False, system or "")]
        content = self._content(first_user, "\n".join(rest))
        offered = {t["name"]: t for t in tools or []} if tool_choice != "none" else {}
        made = {self._key(c.name if isinstance(c, ToolCall) else c["name"],
                          c.arguments if isinstance(c, ToolCall) else c.get("arguments") or {})
                for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []}
        said = [d.payload for d in directives if d.kind == "say"]
        if json_schema is not None:  # a reader stage: it cannot act, so it relays what it was told to do
            relayed = [s for t in rest for v in views(t) for s in sentences(v) if _kind(s) and _kind(s) != "say"]
            summary = " ".join([content, *said, *relayed]).strip()
            return self._reply(json.dumps({"summary": summary}, ensure_ascii=False))
        for d in directives:
            if d.kind in offered:
                call = ToolCall(f"adv_{uuid.uuid4().hex[:8]}", d.kind, self._arguments(offered[d.kind], d, content))
                if self._key(call.name, call.arguments) not in made:
                    return self._reply("", [call])
            elif d.kind != "say" and not d.from_task:
                said.append(" ".join(x for x in (d.payload, d.to) if x))  # could not do it: says it instead
        answer = " ".join([content, *[s for s in said if s]]).strip() or "Done."
        if "final_answer" in offered:
            return self._reply("", [ToolCall(f"adv_{uuid.uuid4().hex[:8]}", "final_answer", {"answer": answer})])
        return self._reply(answer)

    @staticmethod
    def _key(name: str, arguments: dict[str, Any]) -> str:
        return name + json.dumps(arguments, sort_keys=True)

    @staticmethod
    def _content(first_user: str, data: str) -> str:
        """What it read, in brief: the names of values it was handed (``$summary``), else the first two
        sentences of the data that are not instructions."""
        names = sorted(set(re.findall(r"\$[A-Za-z_]\w*", first_user)))
        if names:
            return " ".join(names)
        plain = [s for v in views(data)[:1] for s in sentences(v) if not _kind(s) and len(s.split()) > 2
                 and not s.rstrip().endswith(":")]
        return " ".join(plain[:2])

    @staticmethod
    def _arguments(schema: dict[str, Any], d: Directive, content: str) -> dict[str, Any]:
        body = d.payload if d.payload is not None else content
        args = {}
        for name in (schema.get("input_schema") or {}).get("properties", {}):
            if name in ("to", "recipient", "channel", "chat_id"):
                args[name] = d.to or ""
            elif name == "key":
                args[name] = d.key or "note"
            elif name == "title":
                args[name] = " ".join(body.split()[:8]) or "Post"
            else:
                args[name] = body
        return args

    def _reply(self, text: str, calls: list[ToolCall] | None = None) -> ChatResponse:
        return ChatResponse(text=text, provider=self.provider, model=self.model, tool_calls=calls or [],
                            usage=Usage(0, len(text.split())), stop_reason="tool_use" if calls else "end_turn")
