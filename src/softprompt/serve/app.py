"""The HTTP app: prompt management, classification, OpenAI-compatible completions, health and metrics.

One frozen backbone, a `PromptBank` kept in step with a prompt folder, and a `DynamicBatcher` that batches rows
of concurrent requests across prompts. Every error is JSON, `{"error": {"message", "type", "code"}}`, the shape
OpenAI clients parse.

Examples:
    >>> app = create_app(PromptBank(load_backbone("smollm2-135m")), "prompts/")   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                               # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, AsyncIterator

from fastapi import Depends, FastAPI, Query
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..clients.vllm import VLLMClient, VLLMError, require_input_embeddings
from ..errors import ConfigError, IncompatiblePromptError, PromptFileError, StorageError
from ..inference.bank import PromptBank, UnknownPromptError
from ..inference.batch import Generation, Request, fields_of
from ..kinds.table import kind_of
from ..protocols import Capability, Servable, TaskType
from ..version import __version__
from .batcher import DynamicBatcher, Work
from .directory import NAME_SCHEMA, PromptDirectory, check_name
from .metrics import Metrics
from .schemas import ChatBody, ClassifyBody, CompletionBody, error_responses
from .vllm_engine import VLLMEngine

STATIC = Path(__file__).parent / "static"  # the playground page and the vendored Swagger UI / ReDoc assets


@dataclass(frozen=True)
class ServeSettings:
    """Server limits and batching. Every limit names its CLI flag in the error it causes."""

    admin_token: str | None = None   # bearer token for POST/DELETE /v1/prompts; None turns those endpoints off
    max_batch_rows: int = 32         # rows per backbone batch
    batch_wait_ms: float = 10.0      # how long the oldest row waits for company
    mix_prompts: bool = True         # False: a batch holds one prompt's rows (the baseline of the load test)
    max_body_bytes: int = 4 << 20    # request body (JSON or an uploaded prompt file)
    max_inputs: int = 64             # inputs (x n choices) per request
    max_input_tokens: int = 512      # tokens per input text
    max_new_tokens: int = 256        # generated tokens per choice
    reload_interval: float = 2.0     # seconds between prompt-folder scans; 0 = never rescan


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status, "param": None}}, status)


_ERRORS: list[tuple[type[Exception], int, str]] = [
    (UnknownPromptError, 404, "not_found"),
    (IncompatiblePromptError, 409, "incompatible_prompt"),
    (PromptFileError, 422, "invalid_prompt_file"),
    (VLLMError, 502, "upstream_error"),  # --engine vllm: the vLLM server failed or refused a row
    (ConfigError, 422, "invalid_request_error"),
    (StorageError, 507, "insufficient_storage"),
]


def create_app(bank: PromptBank, prompts: str | Path, settings: ServeSettings = ServeSettings(),
               vllm: VLLMClient | None = None) -> FastAPI:
    """The server's app. `vllm`: run every row on that vLLM server (`--engine vllm`) instead of this process's
    backbone (the default, `--engine torch`)."""
    metrics = Metrics()
    metrics.watch_cache(bank.cache_budget)

    def prepare(model: Servable) -> None:
        kind_of(model).require(Capability.SERVE, "this server")  # before anything reads text-model parts
        if vllm is not None:
            require_input_embeddings(model)  # deep prompts and other kinds: one line, the file is not served
        model.widen_for_inputs(settings.max_input_tokens)  # no input the server accepts is cut

    directory = PromptDirectory(bank, prompts, prepare=prepare)
    directory.scan()
    batcher: DynamicBatcher | VLLMEngine
    if vllm is not None:
        batcher = VLLMEngine(vllm, metrics)
    else:
        batcher = DynamicBatcher(bank.backbone, metrics, max_rows=settings.max_batch_rows,
                                 wait_ms=settings.batch_wait_ms, mix_prompts=settings.mix_prompts)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        directory.watch(settings.reload_interval)
        yield
        directory.close()
        batcher.stop()
        if isinstance(batcher, VLLMEngine):
            await batcher.aclose()

    app = FastAPI(title="softprompt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Soft prompts on one frozen backbone: classify, complete, manage prompts.")
    app.state.bank, app.state.directory, app.state.batcher, app.state.metrics = bank, directory, batcher, metrics

    # ---- errors, limits, metrics ---------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: HttpRequest, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind)

    for kind, status, name in _ERRORS:
        async def handler(_: HttpRequest, exc: Exception, status: int = status, name: str = name) -> JSONResponse:
            return _error(status, str(exc), name)
        app.add_exception_handler(kind, handler)

    @app.exception_handler(ClientGone)
    async def _gone(_: HttpRequest, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the metrics count it

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        return _error(422, f"invalid request body: {problems}", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")
        response.headers.update(exc.headers or {})  # a 405 keeps the Allow header RFC 9110 requires
        return response

    @app.middleware("http")
    async def _limits_and_metrics(request: HttpRequest, call_next):
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if request.method in ("POST", "PUT") and length is None and "chunked" in request.headers.get(
                "transfer-encoding", ""):
            response: Response = _error(411, "send a Content-Length header", "length_required")
        elif length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            response = _error(413, f"request body of {length} bytes is over the limit of {settings.max_body_bytes} "
                                   "bytes (--max-body-bytes)", "request_too_large")
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # noqa: BLE001 -- a bug still answers JSON
                response = _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        status = str(response.status_code)
        metrics.requests.labels(endpoint, status).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, status).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def require_admin(request: HttpRequest) -> None:
        if not settings.admin_token:
            raise ApiError(403, "prompt uploads and deletions are off: start the server with --admin-token "
                                "(or SOFTPROMPT_ADMIN_TOKEN)", "permission_denied")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given, expected = token.strip().encode("utf-8", "surrogateescape"), settings.admin_token.encode("utf-8")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):  # bytes: any header compares
            raise ApiError(401, "missing or wrong admin token: send 'Authorization: Bearer <token>'",
                           "authentication_error")

    # ---- the playground and the API docs, from files in the package (no CDN: they work offline) --------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title="softprompt API",
                                   swagger_js_url="static/vendor/swagger-ui-bundle.js",
                                   swagger_css_url="static/vendor/swagger-ui.css",
                                   swagger_favicon_url="static/vendor/favicon-32x32.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="openapi.json", title="softprompt API",
                              redoc_js_url="static/vendor/redoc.standalone.js",
                              redoc_favicon_url="static/vendor/favicon-32x32.png", with_google_fonts=False)

    # ---- health, metrics, prompts --------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "backbone": bank.backbone.name, "prompts": len(bank),
                "engine": "vllm" if vllm is not None else "torch"}

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}})
    def prometheus() -> Response:
        metrics.prompts.set(len(bank))
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/prompts", responses=error_responses(413))
    def list_prompts() -> dict[str, Any]:
        return {"object": "list", "data": [_describe(name, bank.get(name)) for name in bank.names()],
                "not_loaded": directory.not_loaded()}

    @app.post("/v1/prompts", status_code=201, dependencies=[Depends(require_admin)],
              responses=error_responses(401, 403, 409, 411, 413, 422, 507),
              openapi_extra={"requestBody": {"required": True, "description": "the prompt file's bytes", "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}}}}})
    async def upload_prompt(request: HttpRequest, name: Annotated[str, Query(
            description="the prompt's name (its file in the folder is NAME.safetensors)",
            json_schema_extra=NAME_SCHEMA)]) -> JSONResponse:
        check_name(name)
        data = await request.body()
        if len(data) > settings.max_body_bytes:
            raise ApiError(413, f"prompt file over {settings.max_body_bytes} bytes (--max-body-bytes)",
                           "request_too_large")
        if not data:
            raise ApiError(422, "empty body: send the prompt's .safetensors bytes as the request body")
        model, replaced = await asyncio.to_thread(directory.install, name, data)
        return JSONResponse({**_describe(name, model), "replaced": replaced}, 200 if replaced else 201)

    @app.delete("/v1/prompts/{name}", dependencies=[Depends(require_admin)],
                responses=error_responses(401, 403, 404, 413, 422))
    def delete_prompt(name: str) -> dict[str, Any]:
        directory.delete(name)
        return {"deleted": name}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "softprompt"}
                                           for name in bank.names()]}

    # ---- classification ------------------------------------------------------------------------------------
    @app.post("/v1/classify", responses=error_responses(404, 411, 413, 422))
    async def classify(body: ClassifyBody, request: HttpRequest) -> dict[str, Any]:
        model = bank.get(body.prompt)
        if model.task is not TaskType.CLASSIFICATION:
            raise ConfigError(f"prompt '{body.prompt}' is a generation prompt: use /v1/completions")
        _check_inputs(model, body.inputs, settings)
        works = _submit(batcher, [Request(model, x, "classify") for x in body.inputs])
        results = await _results(request, batcher, works)
        return {"prompt": body.prompt, "results": [{"label": r.label, "scores": r.scores} for r in results]}

    # ---- OpenAI-compatible completions ---------------------------------------------------------------------
    @app.post("/v1/completions", responses=error_responses(404, 411, 413, 422))
    async def completions(body: CompletionBody, request: HttpRequest):
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        return await _complete(request, body, texts, max_tokens, chat=False)

    @app.post("/v1/chat/completions", responses=error_responses(404, 411, 413, 422))
    async def chat_completions(body: ChatBody, request: HttpRequest):
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise ApiError(422, "messages hold no 'user' message: its content fills the prompt's input field")
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await _complete(request, body, [users[-1].text()],
                               settings.max_new_tokens if limit is None else limit, chat=True)

    async def _complete(request: HttpRequest, body: CompletionBody | ChatBody, texts: list[str], max_tokens: int,
                        chat: bool):
        model = bank.get(body.model)
        if max_tokens > settings.max_new_tokens:
            raise ApiError(422, f"max_tokens {max_tokens} is over this server's limit of {settings.max_new_tokens} "
                                "(--max-new-tokens)")
        _check_inputs(model, [t for t in texts for _ in range(body.n)], settings)
        stream = asyncio.Queue() if body.stream else None
        requests = []
        for text in texts:
            for choice in range(body.n):
                seed = None if body.seed is None else body.seed + choice
                requests.append(Request(model, text, "generate", max_new_tokens=max_tokens,
                                        temperature=body.temperature, top_p=body.top_p, stop=body.stop_list(),
                                        seed=seed))
        works = _submit(batcher, requests, stream)
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": body.model}
        if stream is not None:
            return StreamingResponse(_events(head, works, stream, chat, batcher), media_type="text/event-stream")
        results: list[Generation] = await _results(request, batcher, works)
        choices = [({"index": i, "message": {"role": "assistant", "content": r.text}, "finish_reason": r.finish_reason}
                    if chat else {"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason})
                   for i, r in enumerate(results)]
        prompt_tokens = sum(r.prompt_tokens for r in results[:: body.n])
        completion_tokens = sum(r.completion_tokens for r in results)
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


def _describe(name: str, model: Servable) -> dict[str, Any]:
    return {"name": name, "object": "prompt", "task": model.task.value,
            "labels": list(model.labels) if model.task is TaskType.CLASSIFICATION else None,
            "num_virtual_tokens": model.prompt.num_virtual_tokens, "template": model.template_source,
            "backbone": model.backbone.name}


def _check_inputs(model: Servable, inputs: list, settings: ServeSettings) -> None:
    if len(inputs) > settings.max_inputs:
        raise ApiError(413, f"{len(inputs)} inputs in one request; the limit is {settings.max_inputs} "
                            "(--max-inputs): split the request", "request_too_large")
    tokenizer = model.backbone.tokenizer
    for index, inputs_row in enumerate(inputs):
        for field, text in fields_of(model, inputs_row).items():
            count = len(tokenizer(str(text), add_special_tokens=False).input_ids)
            if count > settings.max_input_tokens:
                raise ApiError(413, f"input {index} field '{field}' has {count} tokens; the limit is "
                                    f"{settings.max_input_tokens} (--max-input-tokens)", "request_too_large")


def _submit(batcher: DynamicBatcher, requests: list[Request], stream: asyncio.Queue | None = None) -> list[Work]:
    loop = asyncio.get_running_loop()
    works = []
    for index, req in enumerate(requests):
        if stream is not None:
            req.on_text = lambda text, i=index: loop.call_soon_threadsafe(stream.put_nowait, (i, text))
        model = req.model
        columns = model.row_columns(fields_of(model, req.inputs))
        works.append(Work(req, loop, loop.create_future(), stream, index, columns))
    batcher.submit(works)
    return works


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _disconnected(request: HttpRequest) -> None:
    """Returns when the client closes the connection (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _results(request: HttpRequest, batcher: DynamicBatcher, works: list[Work]) -> list[Any]:
    """The rows' results, in order. If the client goes away first, its rows are abandoned (a queued row never
    runs, a generating one stops at its next token) and `ClientGone` ends the request."""
    gathered = asyncio.gather(*(w.future for w in works))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if gathered.done():
            return gathered.result()
        batcher.abandon(works)
        gathered.cancel()
        raise ClientGone
    finally:
        watcher.cancel()


async def _events(head: dict[str, Any], works: list[Work], stream: asyncio.Queue, chat: bool,
                  batcher: DynamicBatcher) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. A client that stops reading
    mid-stream has its rows abandoned (Starlette cancels this generator when the client disconnects)."""
    try:
        async for event in _event_lines(head, works, stream, chat):
            yield event
    finally:
        batcher.abandon(works)  # nothing left to abandon after [DONE]


async def _event_lines(head: dict[str, Any], works: list[Work], stream: asyncio.Queue,
                       chat: bool) -> AsyncIterator[str]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps({**head, 'object': kind, 'choices': [choice]})}\n\n"

    if chat:
        for work in works:
            yield chunk(work.index, None, None, first=True)
    open_rows = len(works)
    while open_rows:
        index, text = await stream.get()
        if text is not None:
            yield chunk(index, text, None)
            continue
        open_rows -= 1
        work = works[index]
        if work.future.exception() is not None:
            error = work.future.exception()
            yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error', 'code': 500}})}\n\n"
            continue
        yield chunk(index, None, work.future.result().finish_reason)
    yield "data: [DONE]\n\n"
