"""`lab serve`: any ``lab.llm`` provider behind OpenAI- and Anthropic-compatible HTTP endpoints.

    GET  /v1/models                 the chat models and the embedding models served
    POST /v1/chat/completions       OpenAI Chat Completions (tools, tool_choice, response_format, stream)
    POST /v1/embeddings             OpenAI Embeddings over sentence-transformers models
    POST /v1/messages               Anthropic Messages (tools, tool_use/tool_result, stream events)
    GET  /health                    liveness, no key needed

A thin wire layer: requests are validated by the pydantic models of each wire format
(``openai_protocol``, ``anthropic_protocol``), turned into one ``LLM.chat`` / ``LLM.stream`` call
and the ``ChatResponse`` turned back; ``lab.llm`` is the only thing that talks to models.
Each model runs as many generations at a time as it decodes together (one, or several sequences
batched per step on the llama.cpp engine) behind a bounded queue (``scheduling``), off the event loop.
Before a request waits for the model it is checked (``limits``: the body's size as it arrives, valid
Unicode text, JSON schemas a grammar can hold) and prepared (``LLM.prepare``: the prompt's length, the
grammar compiled in a worker with a timeout), so a request the model cannot serve never holds it.
Errors come back in the caller's wire format with the right status and no stack trace; the
server log has the trace under the request id (``x-request-id`` / ``request-id`` headers).
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lab import models
from lab.errors import LabError
from lab.llm import DEFAULT_SPEC, from_spec
from lab.llm.base import LLM, ChatResponse, InvalidRequestError, LLMError, normalize_tool_choice
from lab.models import DEFAULT_EMBEDDER, load_embedder
from lab.serve import anthropic_protocol as ap
from lab.serve import openai_protocol as op
from lab.serve.errors import APIError, UnsupportedField, bad_request
from lab.serve.limits import MAX_BODY_BYTES, limited, too_large
from lab.serve.scheduling import ModelQueue, StreamRun

log = logging.getLogger("lab.serve")

DEFAULT_EMBEDDERS = (DEFAULT_EMBEDDER,)
DEFAULT_MAX_QUEUE = 8
GRAMMAR_TIMEOUT_S = 20.0  # how long a request may wait for its grammar to compile (outside the model slot)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# --- request ids and errors --------------------------------------------------------------------


class GatewayMiddleware:
    """Every request gets an id (``request.state.request_id``, returned as a header); with an API
    key set, every ``/v1`` request must carry it, checked before the body is even read; a body
    declared larger than ``MAX_BODY_BYTES`` is refused unread, and one sent without a length (chunked)
    as soon as it passes the limit (``limits.limited``)."""

    def __init__(self, app, server: Server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = f"req_{uuid.uuid4().hex[:24]}"
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + [
                    (b"x-request-id", rid.encode()),
                    (b"request-id", rid.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        request = Request(scope)
        if scope["path"].startswith("/v1") and not self.server.key_ok(request):
            err = APIError(
                401,
                "missing or invalid API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                code="invalid_api_key",
            )
            return await error_response(request, err)(scope, receive, send_with_id)
        size = request.headers.get("content-length", "0")
        if not size.isdigit() or int(size) > MAX_BODY_BYTES:
            err = APIError(413, too_large(size), code="request_too_large")
            return await error_response(request, err)(scope, receive, send_with_id)
        await self.app(scope, limited(receive), send_with_id)


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "req_unknown"


def is_anthropic(request: Request) -> bool:
    return request.url.path.rstrip("/").startswith("/v1/messages")


def error_response(request: Request, err: APIError) -> JSONResponse:
    body = ap.error_body(err, request_id(request)) if is_anthropic(request) else op.error_body(err)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "any", "union"}


def field_path(loc: Iterable[Any]) -> str:
    """``("body", "messages", 0, "content", "list[ContentPart]", 1)`` -> ``messages.0.content``:
    the request's own field names and indexes, up to the first union-member tag pydantic adds."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if i == 0 and item == "body":
            continue
        if isinstance(item, int):
            parts.append(str(item))
        elif item.isidentifier() and item.islower() and item not in _TYPE_TAGS:
            parts.append(item)
        else:
            break
    return ".".join(parts)


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return bad_request(None, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return bad_request(
            None, f"the request body is not valid JSON ({detail})" if detail else "the request body is not valid JSON"
        )
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, UnsupportedField):
        return bad_request(cause.field, f"{cause.field}: {cause}")
    param = field_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if tuple(first.get("loc", ())) == ("body",):
        return bad_request(None, f"request body: {message} (send a JSON object)")
    more = len({field_path(e.get("loc", ())) for e in errors} - {param})
    suffix = f" (and {more} more invalid field{'s' if more > 1 else ''})" if more else ""
    return bad_request(param or None, f"{param}: {message}{suffix}" if param else message + suffix)


# --- the served models -------------------------------------------------------------------------


class Embedders:
    """Sentence-transformers models served by name, each loaded once (on first use)."""

    def __init__(self, names: Iterable[str], max_waiting: int):

        self.names = list(dict.fromkeys(names))
        self._aliases: dict[str, str] = {}
        for name in self.names:
            self._aliases[name] = name
            for spec in models.EMBEDDED.values():  # the embedded embedder answers to its key and its hub id
                if name in (spec.key, spec.hub_id):
                    self._aliases.setdefault(spec.key, name)
                    self._aliases.setdefault(spec.hub_id, name)
        self.queues = {name: ModelQueue(name, max_waiting) for name in self.names}
        self._models: dict[str, Any] = {}
        self._load_lock = threading.Lock()

    def resolve(self, name: str) -> str | None:
        return self._aliases.get(name)

    def _model(self, name: str):
        with self._load_lock:
            if name not in self._models:
                self._models[name] = load_embedder(name)
            return self._models[name]

    def encode(self, name: str, texts: list[str], dimensions: int | None) -> tuple[Any, int]:
        """(float32 array n x d, tokens read); runs in a worker thread."""
        try:
            model = self._model(name)
        except LabError as exc:
            raise APIError(
                500, f"embedding model {name!r} could not be loaded: {exc}", code="model_unavailable"
            ) from None
        dim = (
            model.get_embedding_dimension()
            if hasattr(model, "get_embedding_dimension")
            else model.get_sentence_embedding_dimension()
        )
        if dimensions is not None and dimensions != dim:
            raise bad_request(
                "dimensions",
                f"dimensions: {name} returns {dim}-dimensional embeddings; omit 'dimensions' or send {dim}",
            )
        tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        vectors = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype("<f4"), sum(len(t) for t in tokens)


@dataclass
class ChatModel:
    """One served chat model: the client, the names requests may use for it, its own queue."""

    llm: LLM
    names: list[str]
    queue: ModelQueue


class Server:
    """What the routes share: the chat models (each with its names and queue), the embedders, the key.
    The first model is the default one (``/health`` names it; ``model_names`` are extra names for it)."""

    def __init__(
        self,
        llms: LLM | Sequence[LLM],
        *,
        api_key: str | None,
        max_queue: int,
        embedders: Iterable[str],
        default_max_tokens: int,
        model_names: Iterable[str] = (),
        grammar_timeout_s: float = GRAMMAR_TIMEOUT_S,
    ):
        llms = [llms] if isinstance(llms, LLM) else list(llms)
        self.grammar_timeout_s = grammar_timeout_s
        self.models: list[ChatModel] = []
        taken: set[str] = set()
        for i, llm in enumerate(llms):
            names = [
                n for n in dict.fromkeys([llm.model, *(model_names if i == 0 else ()), llm.spec]) if n not in taken
            ]
            taken |= set(names)
            self.models.append(ChatModel(llm, names, ModelQueue(llm.model, max_queue, parallel=llm.parallel_requests)))
        self.names = [n for m in self.models for n in m.names]
        self.embedders = Embedders(embedders, max_queue)
        self.default_max_tokens = default_max_tokens
        self._key = api_key.encode() if api_key else None
        self.created = int(time.time())

    # --- checks
    def key_ok(self, request: Request) -> bool:
        if self._key is None:
            return True
        given = [request.headers.get("x-api-key", "")]
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given.append(token.strip())
        # constant-time comparisons, every candidate compared (no early exit on the first match)
        ok = [hmac.compare_digest(g.encode(), self._key) for g in given]
        return any(ok)

    def model(self, name: str) -> ChatModel:
        """The chat model a request names (a 404 naming the served ones otherwise)."""
        for model in self.models:
            if name in model.names:
                return model
        raise APIError(
            404,
            f"model {name!r} is not served here; chat models: {', '.join(self.names)}",
            param="model",
            code="model_not_found",
        )

    def check_tools(self, kwargs: dict[str, Any]) -> None:
        try:
            normalize_tool_choice(kwargs["tool_choice"], kwargs["tools"])
        except ValueError as exc:
            message = str(exc) if str(exc).startswith("tool_choice") else f"tool_choice: {exc}"
            raise bad_request("tool_choice", message) from None

    # --- errors from the model layer
    def api_error(self, exc: BaseException, rid: str, model: ChatModel | None = None) -> APIError:
        """An exception from the model layer as the HTTP error the client gets (logged here)."""
        model = model or self.models[0]
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, InvalidRequestError):  # the caller's arguments (a schema, a tool_choice), not the model
            return bad_request(None, str(exc))
        if isinstance(exc, LLMError):
            log.warning("request %s: %s", rid, exc)
            if exc.status == 413:
                return APIError(413, str(exc), param="messages", code="context_length_exceeded")
            if exc.status in (400, 404, 422):
                return APIError(400, f"the model's provider rejected the request: {exc}", code="upstream_rejected")
            if exc.status in (429, 503, 529):
                return APIError(
                    503,
                    f"the model's provider is overloaded: {exc}",
                    code="upstream_overloaded",
                    headers={"Retry-After": str(model.queue.retry_after_s())},
                )
            status = 500 if model.llm.provider == "local" else 502
            return APIError(status, f"the model failed: {exc}", code="model_error")
        log.error("request %s failed", rid, exc_info=(type(exc), exc, exc.__traceback__))
        return APIError(
            500, f"internal server error (request id {rid}); the server log has the details", code="internal_error"
        )

    # --- running the model
    async def off_loop(self, work: Callable[[], Any], rid: str, model: ChatModel | None = None) -> Any:
        """``work()`` in a worker thread; what it raises comes back as the HTTP error the client gets."""
        try:
            return await run_in_threadpool(work)
        except Exception as exc:  # an APIError passes through api_error unchanged
            raise self.api_error(exc, rid, model) from None

    async def prepare(self, model: ChatModel, kwargs: dict[str, Any], rid: str) -> None:
        """The model's work that needs no slot (tokenizing, compiling a grammar: ``LLM.prepare``), done
        before the request waits for one: a request the model cannot serve is refused without ever
        holding it, and a slow grammar holds no one else up."""
        await self.off_loop(lambda: model.llm.prepare(**kwargs, timeout_s=self.grammar_timeout_s), rid, model)

    async def chat(self, model: ChatModel, kwargs: dict[str, Any], rid: str) -> ChatResponse:
        await self.prepare(model, kwargs, rid)
        slot = await model.queue.acquire()
        try:
            return await self.off_loop(lambda: model.llm.chat(**kwargs), rid, model)
        finally:
            slot.release()

    async def stream(self, model: ChatModel, kwargs: dict[str, Any], rid: str) -> tuple[StreamRun, Any]:
        """Start a stream and wait for its first item, so that an early failure is still an HTTP status."""
        await self.prepare(model, kwargs, rid)
        slot = await model.queue.acquire()
        try:
            run = StreamRun(slot, lambda: model.llm.stream(**kwargs))
        except BaseException:
            slot.release()
            raise
        try:
            first = await run.next()
        except StopAsyncIteration:
            first = None
        except Exception as exc:
            raise self.api_error(exc, rid, model) from None
        return run, first


async def items(run: StreamRun, first: Any):
    """The stream's items: ``first`` (already fetched), then the rest."""
    if first is not None:
        yield first
    while True:
        try:
            yield await run.next()
        except StopAsyncIteration:
            return


def final_reply(reply: ChatResponse | None) -> ChatResponse:
    if reply is None:
        raise RuntimeError("the model's stream ended without its final ChatResponse")
    return reply


# --- the app -----------------------------------------------------------------------------------


def create_app(
    llm: LLM | Sequence[LLM],
    *,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    embedders: Iterable[str] = DEFAULT_EMBEDDERS,
    default_max_tokens: int = 512,
    model_names: Iterable[str] = (),
    grammar_timeout_s: float = GRAMMAR_TIMEOUT_S,
) -> FastAPI:
    """The ASGI app serving ``llm`` — one chat model or several, the first the default — and ``embedders``.
    Each chat model answers to its ``model`` and its ``spec``; ``model_names`` are extra names for the first.
    A request whose grammar takes longer than ``grammar_timeout_s`` to compile is refused (400)."""
    server = Server(
        llm,
        api_key=api_key,
        max_queue=max_queue,
        embedders=embedders,
        default_max_tokens=default_max_tokens,
        model_names=model_names,
        grammar_timeout_s=grammar_timeout_s,
    )
    app = FastAPI(title="lab serve", description=__doc__, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(GatewayMiddleware, server=server)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(request, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        code = "request_too_large" if exc.status_code == 413 else None  # a body cut off as it arrived
        return error_response(request, APIError(exc.status_code, message, code=code, headers=exc.headers))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return error_response(request, server.api_error(exc, request_id(request)))

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": server.models[0].llm.model,
            "waiting_or_running": sum(m.queue.admitted for m in server.models),
        }

    v1 = APIRouter(prefix="/v1")

    @v1.get("/models")
    async def list_models() -> op.ModelList:
        ids = [*(m.names[0] for m in server.models), *server.embedders.names]
        return op.ModelList(data=[op.ModelCard(id=i, created=server.created) for i in ids])

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> op.ModelCard:
        if model_id not in server.names and server.embedders.resolve(model_id) is None:
            server.model(model_id)  # raises the 404 naming what is served
        return op.ModelCard(id=model_id, created=server.created)

    @v1.post("/chat/completions")
    async def chat_completions(body: op.ChatCompletionRequest, request: Request):
        rid = request_id(request)
        model = server.model(body.model)
        kwargs = op.to_chat_kwargs(body, server.default_max_tokens)
        server.check_tools(kwargs)
        if not body.stream:
            reply = await server.chat(model, kwargs, rid)
            return op.chat_response(reply, op.completion_id(), int(time.time())).model_dump()
        run, first = await server.stream(model, kwargs, rid)
        writer = op.ChunkWriter(
            model.llm.model, include_usage=bool(body.stream_options and body.stream_options.include_usage)
        )

        async def sse():
            reply = None
            try:
                yield writer.role()
                async for item in items(run, first):
                    if isinstance(item, ChatResponse):
                        reply = item
                    elif item:
                        yield writer.text(item)
                reply = final_reply(reply)
                for line in writer.tool_calls(reply) + writer.finish(reply):
                    yield line
            except Exception as exc:  # headers are sent: the error becomes the last event
                yield writer.error(server.api_error(exc, rid, model))
            finally:
                run.stop()

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(run.stop)
        )

    @v1.post("/embeddings")
    async def embeddings(body: op.EmbeddingRequest, request: Request):
        name = server.embedders.resolve(body.model)
        if name is None:
            raise APIError(
                404,
                f"embedding model {body.model!r} is not served here; embedding models: "
                f"{', '.join(server.embedders.names) or 'none'} (start with --embedder NAME)",
                param="model",
                code="model_not_found",
            )
        slot = await server.embedders.queues[name].acquire()
        try:
            vectors, n_tokens = await server.off_loop(
                lambda: server.embedders.encode(name, body.texts, body.dimensions), request_id(request)
            )
        finally:
            slot.release()
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
        else:
            data = [v.tolist() for v in vectors]
        return op.EmbeddingResponse(
            data=[op.EmbeddingData(index=i, embedding=e) for i, e in enumerate(data)],
            model=body.model,
            usage=op.EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens),
        ).model_dump()

    @v1.post("/messages")
    async def messages(body: ap.MessagesRequest, request: Request):
        rid = request_id(request)
        model = server.model(body.model)
        kwargs = ap.to_chat_kwargs(body)
        server.check_tools(kwargs)
        if not body.stream:
            reply = await server.chat(model, kwargs, rid)
            return ap.messages_response(reply, ap.message_id()).model_dump()
        input_tokens = await server.off_loop(lambda: model.llm.count_tokens(**kwargs), rid, model)
        run, first = await server.stream(model, kwargs, rid)
        writer = ap.EventWriter(model.llm.model)

        async def sse():
            reply = None
            try:
                yield writer.start(input_tokens)
                async for item in items(run, first):
                    if isinstance(item, ChatResponse):
                        reply = item
                    elif item:
                        for line in writer.text(item):
                            yield line
                for line in writer.finish(final_reply(reply)):
                    yield line
            except Exception as exc:
                yield writer.error(server.api_error(exc, rid, model), rid)
            finally:
                run.stop()

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(run.stop)
        )

    app.include_router(v1)
    return app


def default_specs() -> list[str]:
    """What ``lab serve`` serves without ``--llm``: $LAB_LLM, else the embedded chat model and, beside it, the
    tool-tuned agent model (``lab.models.AGENT_LLM``) when its adapter is published (``PUBLISHED_ADAPTERS``)."""

    if os.environ.get("LAB_LLM"):
        return [os.environ["LAB_LLM"]]
    published = (models.PUBLISHED_ADAPTERS[models.AGENT_LLM] / "adapter_config.json").is_file()
    return [DEFAULT_SPEC] + ([models.AGENT_SPEC] if published else [])


def serve(
    specs: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 8088,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    embedders: Iterable[str] = DEFAULT_EMBEDDERS,
    say: Callable[[str], None] = print,
) -> None:
    """Serve in the foreground until Ctrl-C (what ``lab serve`` runs): ``specs`` (the first is the default
    model), else ``default_specs()``."""
    import uvicorn  # noqa: PLC0415 (uvicorn loads only on the path that uses it)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    llms = [from_spec(spec) for spec in (list(specs) or default_specs())]
    app = create_app(llms, api_key=api_key, max_queue=max_queue, embedders=embedders)
    base = f"http://{host}:{port}"
    for llm in llms:
        info = llm.describe()  # a local model loads now, not on the first request
        engine = f" on {info['engine']}" if info.get("engine") else ""
        say(f"lab serve: {info.get('id', llm.spec)}{engine} as model {llm.model!r}")
    say(f"  embedders: {', '.join(embedders) or 'none'}")
    say(f"  OpenAI:    {base}/v1  (chat/completions, embeddings, models)")
    say(f"  Anthropic: {base}     (v1/messages)")
    say("  API key:   " + ("required (Authorization: Bearer or x-api-key)" if api_key else "none"))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        say(f"  warning: listening on {host} without --api-key: anyone who can reach this port can use the model")
    uvicorn.run(app, host=host, port=port, log_level="info")
