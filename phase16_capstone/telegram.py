"""Telegram: a webhook ``Update`` in, a job out; a reply in the chat when the job ends.

In: Telegram POSTs each ``Update`` to our webhook with the header
``X-Telegram-Bot-Api-Secret-Token`` set to the ``secret_token`` given to ``setWebhook``; anything
without it is not Telegram (``check_secret``). Only a ``message`` with text asks for a post; its
text — ``/publish <topic>`` or plain text — is untrusted and goes through ``untrusted.admit``. An
``edited_message`` makes no job (an edit is not a new request, and a job already made from the
original keeps its topic); other kinds of Update neither. Telegram retries a delivery it did not see
acknowledged, so the ``update_id`` is the idempotency key (a UNIQUE column of the job store).

python-telegram-bot's ``Update.de_json`` converts, it does not validate: it takes ``"message": "hi"``
or a chat id of ``"abc"`` as given, and the job store's BIGINT columns then fail. So the fields the
engine reads are validated by a narrow pydantic model (``Update``): strict integers within the
store's BIGINT range, text a string of valid Unicode (no lone UTF-16 surrogate: JSON's ``"\\ud800"``
parses to one, and no UTF-8 database or log can hold it). ``parse_update`` raises ``UpdateError``
(malformed, the field named) or ``IgnoredUpdate`` (well formed, asks for no post); the webhook
acknowledges both.

Out: python-telegram-bot's ``Bot`` sends the reply. It talks to any Bot API base URL
(``ENGINE_TELEGRAM_API``: Telegram's by default; a local Bot API server, or the fake one the tests
run), with the token from ``ENGINE_TELEGRAM_TOKEN``. The token is part of every Bot API URL, so
httpx's and PTB's own request logs (which print URLs) are held at WARNING and errors are redacted
before they are stored. ``send`` returns Telegram's message id (the job store records it with the
reply) and raises ``ReplyFailed``, which says whether trying again can help (``permanent``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError, field_validator

from lab.results import redact
from phase16_capstone.untrusted import TOPIC, UntrustedInputError, admit, valid_unicode

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
DEFAULT_API = "https://api.telegram.org/bot"
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")  # what setWebhook accepts as secret_token
_COMMAND = re.compile(r"^/publish(?:@\w+)?(?:\s+|$)", re.I)


INT64 = 1 << 63  # the job store's BIGINT columns (update_id, chat_id) hold -INT64 .. INT64 - 1


class UpdateError(ValueError):
    """The body is not a well-formed Telegram Update; the message names the field. Acknowledged (a
    2xx: Telegram re-delivers anything else forever) and recorded, never a job."""


class IgnoredUpdate(UpdateError):
    """A well-formed Update that asks for no post (a sticker, another command, an edit): acknowledged, no job."""


class ReplyFailed(RuntimeError):
    """A chat reply did not go through (the message is redacted). ``permanent``: Telegram refused it
    (bot blocked, chat unknown, bad token), so trying again cannot help; otherwise it may (timeout,
    network, flood wait, a 5xx)."""

    def __init__(self, message: str, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


class Chat(BaseModel):
    id: StrictInt = Field(ge=-INT64, lt=INT64)


class Message(BaseModel):
    chat: Chat
    text: StrictStr | None = None

    @field_validator("text")
    @classmethod
    def _unicode(cls, text: str | None) -> str | None:
        if text is not None and not valid_unicode(text):
            raise ValueError("not valid Unicode (a lone UTF-16 surrogate)")
        return text


class Update(BaseModel):
    """The fields of a Telegram Update the engine reads (any other field is left alone)."""

    update_id: StrictInt = Field(ge=0, lt=INT64)
    message: Message | None = None


def webhook_secret() -> str | None:
    """ENGINE_TELEGRAM_SECRET, validated as Telegram's secret_token; None when unset (webhook off)."""
    secret = os.environ.get("ENGINE_TELEGRAM_SECRET") or None
    if secret is not None and not _SECRET.fullmatch(secret):
        raise ValueError(
            "ENGINE_TELEGRAM_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and - "
            "(what Telegram's setWebhook accepts)"
        )
    return secret


def check_secret(expected: str, given: str | None) -> int | None:
    """None when the header matches; else the HTTP status to answer (401 missing, 403 wrong)."""
    if not given:
        return 401
    return None if hmac.compare_digest(given.encode(), expected.encode()) else 403


@dataclass(frozen=True)
class Request:
    update_id: int
    chat_id: int
    topic: str


def parse_update(data: Any) -> Request:
    """The job request in a Telegram ``Update``; else UpdateError (malformed) or IgnoredUpdate (no post asked)."""
    if not isinstance(data, dict):
        raise UpdateError("the body must be a Telegram Update JSON object")
    try:
        update = Update.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UpdateError(f"field '{'.'.join(str(p) for p in first['loc'])}': {first['msg']}") from None
    message = update.message
    if message is None:
        kind = "an edited message is not a new request" if "edited_message" in data else "the Update carries no message"
        raise IgnoredUpdate(f"{kind}: send the topic as a new message")
    text = message.text
    if not text:
        raise IgnoredUpdate("the message has no text: send the topic as text")
    if text.startswith("/") and not _COMMAND.match(text):
        raise IgnoredUpdate(f"unknown command {text.split()[0][:32]!r}: use /publish <topic> or plain text")
    topic = _COMMAND.sub("", text, count=1)
    try:
        topic = admit(topic, TOPIC, f"telegram:chat:{message.chat.id}")
    except UntrustedInputError:  # only emptiness is left to refuse: the model checked the rest
        raise IgnoredUpdate("no topic given: use /publish <topic>") from None
    return Request(update.update_id, message.chat.id, topic)


WITHHELD = "Job {id} ended {state}; the details are withheld from this chat (the output check refused them)."


def reply_text(job, reviewed: bool | None = True) -> str:
    """What the chat reads when its job ends (never the output check's reason: it may quote the payload);
    ``reviewed`` False: the Editor's approval came from a judge that had not passed calibration."""
    if job.state == "published" and reviewed is False:
        return (
            f"Published UNREVIEWED (the Editor's judge has not passed calibration, so its approval is not a "
            f"review): {job.topic}\n{job.post_url}"
        )
    if job.state == "published":
        return f"Published: {job.topic}\n{job.post_url}"
    if job.state == "escalated" and (job.error or "").startswith("output check:"):
        return (
            f"Not published: the output check held the draft (it may carry instructions from a source); "
            f"it waits for a human (job {job.id})."
        )
    if job.state == "escalated":
        return (
            f"Not published: the Editor rejected the draft after {job.revisions} revision(s); "
            f"it waits for a human (job {job.id})."
        )
    return f"Failed: {job.topic} (job {job.id}): {(job.error or 'unknown error')[:200]}"


def api_base(url: str | None = None) -> str:
    """PTB's base_url: the Bot API root + '/bot' (the token is appended to it)."""
    url = (url or os.environ.get("ENGINE_TELEGRAM_API") or DEFAULT_API).rstrip("/")
    return url if url.endswith("/bot") or "{token}" in url else url + "/bot"


class Replier:
    """Sends chat replies with python-telegram-bot (one short-lived event loop per reply)."""

    def __init__(self, token: str, base_url: str | None = None):
        if not token:
            raise ValueError("a Telegram bot token is needed (ENGINE_TELEGRAM_TOKEN)")
        self._token = token
        self.base_url = api_base(base_url)
        for name in ("httpx", "telegram"):  # their INFO/DEBUG lines print Bot API URLs, token included
            logging.getLogger(name).setLevel(logging.WARNING)

    @classmethod
    def from_env(cls) -> Replier | None:
        token = os.environ.get("ENGINE_TELEGRAM_TOKEN")
        return cls(token) if token else None

    def redact(self, text: str) -> str:

        return redact(text.replace(self._token, "[REDACTED]"))

    def send(self, chat_id: int, text: str) -> int:
        """Send ``text`` to the chat; Telegram's id of the message sent, or ReplyFailed."""

        from telegram import Bot  # noqa: PLC0415 (telegram loads only on the path that uses it)
        from telegram.error import BadRequest, ChatMigrated, EndPointNotFound, Forbidden, InvalidToken  # noqa: PLC0415 (telegram loads only on the path that uses it)

        async def go():
            async with Bot(self._token, base_url=self.base_url) as bot:
                return (await bot.send_message(chat_id=chat_id, text=text)).message_id

        try:
            return asyncio.run(go())
        except Exception as exc:  # noqa: BLE001 — any PTB/httpx failure: report it without the token
            permanent = isinstance(exc, (BadRequest, ChatMigrated, EndPointNotFound, Forbidden, InvalidToken))
            raise ReplyFailed(self.redact(f"{type(exc).__name__}: {exc}"), permanent) from None
